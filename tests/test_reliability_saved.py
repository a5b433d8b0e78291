"""Saved detectors prove they are intact (issue 23, items 3 and 5): ``manifest.json`` records the hash of every file,
a fingerprint of the training split and the versions that wrote it, and every load checks it. Each tampering the
issue tried -- an edited value in ``config.json`` or ``tagood.json``, a flipped byte in the weights, weights from
another fit with the same shapes, weights cast to float16 -- is refused by ``tagood score`` and ``tagood.load``
with exit 2 and one message naming the file; a FIFO in place of any file is refused at once instead of hanging.
Real images (Fashion-MNIST PNGs), the real EfficientNet-Lite0 backbone, real files on disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from image_folders import fashion_folder
from tagood import detectors
from tagood.cli.main import app
from tagood.core.featureset import FeatureSet
from tagood.errors import CheckpointError

runner = CliRunner()


def _run(args: list[object]):
    return runner.invoke(app, [str(a) for a in args], terminal_width=200)


def _one_clear_line(r, *needles: str) -> None:
    """Exit 2, the needles in the message, no traceback and no "unexpected error"."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "unexpected error" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    for n in needles:
        assert n in r.output.replace("\n", ""), (n, r.output)


@pytest.fixture(scope="module")
def root(tmp_path_factory, tagood_home) -> Path:
    """Images, and two `tagood fit` detectors of one spec fitted with different seeds (same array shapes, other
    weights)."""
    root = tmp_path_factory.mktemp("h23a-saved")
    fashion_folder(root / "train", {"trouser": 1, "bag": 8, "sandal": 5}, 12, "train")
    fashion_folder(root / "new", {"trouser": 1, "coat": 4}, 3, offset=50)
    for seed in (0, 1):
        r = _run(["fit", root / "train", "--out", root / f"det{seed}", "--methods", "tagood[epochs=2]", "--cache",
                  root / "c", "--seed", seed])
        assert r.exit_code == 0, r.output
    return root


def _copy(root: Path, tmp_path: Path) -> Path:
    d = tmp_path / "det"
    shutil.copytree(root / "det0", d)
    return d


def _edit_json(name: str, edit: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    def apply(d: Path, root: Path) -> None:
        doc = json.loads((d / name).read_text())
        edit(doc)
        (d / name).write_text(json.dumps(doc, indent=1))
    return apply


def _flip_byte(d: Path, root: Path) -> None:
    p = d / "weights.safetensors"
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x01  # inside the last array's data: the header and every shape stay valid
    p.write_bytes(bytes(data))


def _weights_of_the_other_fit(d: Path, root: Path) -> None:
    shutil.copyfile(root / "det1" / "weights.safetensors", d / "weights.safetensors")


def _cast_to_fp16(d: Path, root: Path) -> None:
    """Every float32 array cast to float16, and config.json's array list edited to match."""
    from safetensors.numpy import load_file, save_file

    arrays = load_file(str(d / "weights.safetensors"))
    save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in arrays.items()},
              str(d / "weights.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    for info in cfg["arrays"].values():
        info["dtype"] = "float16" if info["dtype"] == "float32" else info["dtype"]
    (d / "config.json").write_text(json.dumps(cfg, indent=1))


def _set(*keys: str, value: object) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        for k in keys[:-1]:
            doc = doc[k]
        doc[keys[-1]] = value
    return edit


TAMPERING = {
    "options.tau = NaN": (_edit_json("config.json", _set("options", "tau", value=float("nan"))), "config.json"),
    "state.projector.dim = -5": (_edit_json("config.json", _set("state", "projector", "dim", value=-5)), "config.json"),
    "state.rule.threshold = 0.5": (_edit_json("config.json", _set("state", "rule", "threshold", value=0.5)),
                                   "config.json"),
    "a flipped byte in the weights": (_flip_byte, "weights.safetensors"),
    "weights of another fit, same shapes": (_weights_of_the_other_fit, "weights.safetensors"),
    "weights cast to float16": (_cast_to_fp16, "weights.safetensors"),
    "threshold = 1e308": (_edit_json("tagood.json", _set("threshold", value=1e308)), "tagood.json"),
    "threshold = 0": (_edit_json("tagood.json", _set("threshold", value=0.0)), "tagood.json"),
    "manifest.json removed": (lambda d, root: (d / "manifest.json").unlink(), "manifest.json not found"),
    "manifest.json edited": (_edit_json("manifest.json", _set("tagood_version", value="9.9")), "manifest.json"),
}


def test_intact_copy_scores_like_the_original(root, tmp_path):
    d = _copy(root, tmp_path)
    for det, out in ((root / "det0", tmp_path / "a.csv"), (d, tmp_path / "b.csv")):
        r = _run(["score", det, root / "new", "--out", out, "--cache", root / "c"])
        assert r.exit_code == 0, r.output
    assert (tmp_path / "a.csv").read_text().replace(str(d), "X") == (tmp_path / "b.csv").read_text().replace(str(d), "X")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "manifest.json", "tagood.json", "weights.safetensors"]


def test_same_shapes_in_the_two_fits(root):
    """The premise of "weights of another fit": a shape check alone cannot tell the two apart."""
    from safetensors.numpy import load_file

    a, b = (load_file(str(root / f"det{s}" / "weights.safetensors")) for s in (0, 1))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert any(not np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampered_detector_is_refused_by_score(root, tmp_path, case):
    tamper, needle = TAMPERING[case]
    d = _copy(root, tmp_path)
    tamper(d, root)
    r = _run(["score", d, root / "new", "--out", tmp_path / "s.csv", "--cache", root / "c"])
    _one_clear_line(r, needle)
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("case", [c for c, (_, needle) in TAMPERING.items() if not needle.startswith("tagood.json")])
def test_tampered_detector_is_refused_by_load(root, tmp_path, case):
    """``tagood.load`` (the library's load of the same folder) refuses the same tamperings, naming the file."""
    import tagood

    tamper, needle = TAMPERING[case]
    d = _copy(root, tmp_path)
    tamper(d, root)
    with pytest.raises(CheckpointError) as e:
        tagood.load(d)
    assert needle.split()[0] in str(e.value) and str(d) in str(e.value)


@pytest.mark.parametrize("name", ["config.json", "weights.safetensors", "tagood.json", "manifest.json"])
def test_fifo_in_a_saved_detector_is_refused_not_waited_on(root, tmp_path, name):
    """A FIFO with no writer in place of any file: `tagood score` exits 2 at once (a subprocess with a timeout, so a
    hang fails the test instead of the suite)."""
    d = _copy(root, tmp_path)
    (d / name).unlink()
    os.mkfifo(d / name)
    try:
        r = subprocess.run([sys.executable, "-m", "tagood", "score", str(d), str(root / "new"), "--out",
                            str(tmp_path / "s.csv"), "--cache", str(root / "c")],
                           capture_output=True, text=True, timeout=180, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        pytest.fail(f"`tagood score` hung on a FIFO in place of {name}")
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert f"{name} is a FIFO" in out.replace("\n", "") and "Traceback" not in out, out
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("name", ["config.json", "weights.safetensors", "manifest.json"])
def test_fifo_refused_by_load(tmp_path, name):
    d = _saved_knn(tmp_path)
    (d / name).unlink()
    os.mkfifo(d / name)
    code = (f"import tagood\ntry:\n    tagood.load({str(d)!r})\nexcept tagood.TagoodError as e:\n    print(e)\n"
            f"    raise SystemExit(2)\n")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tagood.load hung on a FIFO in place of {name}")
    assert r.returncode == 2 and f"{name} is a FIFO" in r.stdout, r.stdout + r.stderr


# -- the library format: det.save / tagood.load ---------------------------------------------------------------------
def _train(n: int = 60, dim: int = 8, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    return FeatureSet(features=rng.normal(size=(n, dim)).astype(np.float32), labels=np.arange(n) % 3)


def _saved_knn(tmp_path: Path, seed: int = 0, name: str = "knn") -> Path:
    return detectors.create("knn[k=3]").fit(_train(seed=seed)).save(tmp_path / name)


def test_manifest_records_files_fingerprint_and_versions(tmp_path):
    import tagood

    train = _train()
    det = detectors.create("knn[k=3]").fit(train, tagood.Context(class_names=["a", "b", "c"]))
    d = det.save(tmp_path / "knn")
    man = json.loads((d / "manifest.json").read_text())
    assert set(man["files"]) == {"config.json", "weights.safetensors"}
    import hashlib

    for name, rec in man["files"].items():
        data = (d / name).read_bytes()
        assert rec == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    fp = man["fitted_on"]
    assert fp["n"] == 60 and fp["n_classes"] == 3 and fp["classes"] == ["a", "b", "c"]
    assert fp["fields"]["features"] == {"dtype": "float32", "shape": [60, 8]} and fp["hashed"] == "features"
    assert fp["sha256"] == hashlib.sha256(np.ascontiguousarray(train.features).tobytes()).hexdigest()
    assert man["detector"] == "knn" and man["spec"] == "knn[k=3]" and man["options"]["k"] == 3
    assert man["versions"]["tagood"] == tagood.__version__ and "numpy" in man["versions"]
    back = tagood.load(d)
    assert back.fitted_on == fp
    # another training split, another fingerprint
    other = detectors.create("knn[k=3]").fit(_train(seed=1)).save(tmp_path / "knn1")
    assert json.loads((other / "manifest.json").read_text())["fitted_on"]["sha256"] != fp["sha256"]


def test_a_valid_but_changed_option_is_refused(tmp_path):
    """k = 3 -> 4 passes the option check (4 is a fine k): only the manifest can tell it is not what was saved."""
    import tagood

    d = _saved_knn(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["options"]["k"] = 4
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    with pytest.raises(CheckpointError, match=r"config\.json changed since the detector was saved"):
        tagood.load(d)


def test_file_added_after_the_save_is_refused(tmp_path):
    import tagood

    d = _saved_knn(tmp_path)
    (d / "tagood.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"tagood\.json is not recorded in .*manifest\.json"):
        tagood.load(d)


def test_folder_without_manifest_is_refused_and_seal_vouches_for_it(tmp_path):
    """A folder saved before manifests (or with manifest.json removed) is refused with what to do; ``seal`` is the
    deliberate way to vouch for a folder as it is."""
    import tagood
    from tagood.detectors import persist

    d = _saved_knn(tmp_path)
    ref = tagood.load(d).score(_train(n=5, seed=9))
    (d / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest.json not found.*fit the detector again"):
        tagood.load(d)
    persist.seal(d)
    np.testing.assert_array_equal(tagood.load(d).score(_train(n=5, seed=9)), ref)


def test_sealed_but_impossible_state_is_a_checkpoint_error(root, tmp_path):
    """Even a folder someone sealed after editing it never gives a traceback: ``projector.dim = -5`` is refused
    naming config.json."""
    import tagood
    from tagood.detectors import persist

    d = _copy(root, tmp_path)
    _edit_json("config.json", _set("state", "projector", "dim", value=-5))(d, root)
    persist.seal(d)
    with pytest.raises(CheckpointError, match=r"config\.json: its state does not fit tagood"):
        tagood.load(d)


def test_saved_files_share_one_mode(root):
    """weights.safetensors gets the permissions of every other file (issue 23 item 11: it was 0600)."""
    d = root / "det0"
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in d.iterdir()}
    assert len(set(modes.values())) == 1, modes


def test_refit_into_the_same_folder_leaves_no_stale_file(root, tmp_path):
    """A detector with an IND head (energy) refitted in place as one without (knn): the old head.safetensors and
    threshold go, the manifest covers exactly the new files, and the folder scores."""
    d = tmp_path / "det"
    for method in ("energy", "knn[k=3]"):
        r = _run(["fit", root / "train", "--out", d, "--methods", method, "--cache", root / "c"])
        assert r.exit_code == 0, r.output
        names = sorted(p.name for p in d.iterdir())
        assert ("head.safetensors" in names) == (method == "energy")
        assert sorted(json.loads((d / "manifest.json").read_text())["files"]) == [n for n in names if n != "manifest.json"]
    r = _run(["score", d, root / "new", "--out", tmp_path / "s.csv", "--cache", root / "c"])
    assert r.exit_code == 0, r.output
