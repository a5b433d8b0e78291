"""Real image folders for CLI tests: Fashion-MNIST images written as PNG files, one sub-folder per class."""

from __future__ import annotations

from pathlib import Path

from tagood import data


def fashion_folder(root: Path, classes: dict[str, int], n: int, split: str = "test", offset: int = 0) -> Path:
    """Write ``n`` images of each Fashion-MNIST label as ``root/<name>/NNN.png`` (``classes``: name -> label),
    skipping the first ``offset`` of each label. Returns ``root``."""
    src = data.fashion_mnist(split)
    for name, label in classes.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        idx = [i for i, s in enumerate(src.samples) if s.label == label][offset : offset + n]
        for j, i in enumerate(idx):
            src.load(i).save(d / f"{j:03d}.png")
    return root


def folder_config(path: Path, methods: list[str], ood_set: str = "wear", name: str | None = None, options: str = "") -> Path:
    """Write a benchmark config at ``path`` over the folders ``train``, ``test`` (class sub-folders) and ``ood`` (one OOD
    set ``ood_set``) beside it; ``options``: extra TOML lines of an ``[options]`` table. Returns ``path``."""
    head = f'name = "{name}"\n' if name is not None else ""
    methods_toml = ", ".join(f'"{m}"' for m in methods)
    text = (f'{head}methods = [{methods_toml}]\n[train]\ntype = "folder"\nroot = "train"\n'
            f'[test]\ntype = "folder"\nroot = "test"\n[ood.{ood_set}]\ntype = "folder"\nroot = "ood"\n')
    path.write_text(text + (f"[options]\n{options}" if options else ""))
    return path
