"""Write the ``scenes`` benchmark (or a smaller draw of it) as plain image folders plus a benchmark config.

For running the benchmark where the Debian stamp and dataset packages are not installed (a GPU node, a
cluster): the folders need nothing but the images. Layout: ``OUT/train/<class>/NNNN.jpg``,
``OUT/test/<class>/NNNN.jpg``, ``OUT/<ood set>/NNNN.jpg``, and ``OUT/bench.toml`` naming them (run it with
``tagood bench OUT/bench.toml``). JPEG quality 92; the scenes are the same draws as the built-in
benchmark with the same counts and seed.

    .venv/bin/python scripts/scene_folders.py OUT [--train 200] [--test 50] [--ood 300] [--methods msp,energy,tagood]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tagood.data.scenes import scene_splits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=200, help="training scenes per IND class")
    p.add_argument("--test", type=int, default=50, help="test scenes per IND class")
    p.add_argument("--ood", type=int, default=300, help="scenes per OOD set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="", help="comma-separated methods for bench.toml (default: the config's default)")
    a = p.parse_args()
    parts = scene_splits(a.train, a.test, a.ood, seed=a.seed)
    for name, src in parts.items():
        names = src.class_names
        for i in range(len(src)):
            label = src.samples[i].label
            d = a.out / name / (names[label] if name in ("train", "test") and names else "")
            d.mkdir(parents=True, exist_ok=True)
            src.load(i).convert("RGB").save(d / f"{i:04d}.jpg", quality=92)
    lines = []
    if a.methods:
        lines.append("methods = [" + ", ".join(f'"{m}"' for m in a.methods.split(",")) + "]")
    lines += ['[train]', 'type = "folder"', 'root = "train"', '[test]', 'type = "folder"', 'root = "test"']
    for name in parts:
        if name not in ("train", "test"):
            lines += [f'[ood.{name}]', 'type = "folder"', f'root = "{name}"']
    (a.out / "bench.toml").write_text("\n".join(lines) + "\n")
    print(f"wrote {sum(len(s) for s in parts.values())} images and {a.out / 'bench.toml'}")


if __name__ == "__main__":
    main()
