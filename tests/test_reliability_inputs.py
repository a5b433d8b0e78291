"""Inputs never vanish (issue 23): a class folder that cannot be read or holds no image is an error naming it (or,
with ``--skip-empty-classes``, a warning and a class list that says so); the class list a detector saves is the one
it was fitted on; ``tagood score DIR`` with an unreadable sub-folder refuses instead of scoring fewer images; a
benchmark's IND splits agree on their classes; a read-only cache is read without its lock or work folder.
Real images (Fashion-MNIST PNGs), the real backbone."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from image_folders import fashion_folder, folder_config
from tagood import data
from tagood.cli.main import app
from tagood.errors import ConfigError

runner = CliRunner()


def _run(args: list) -> object:
    return runner.invoke(app, [str(a) for a in args], terminal_width=200)


@pytest.fixture(scope="module")
def imgs(tmp_path_factory):
    return fashion_folder(tmp_path_factory.mktemp("imgs") / "f", {"coat": 4, "shoe": 7, "bag": 8}, 6)


def _unreadable(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``folder`` cannot be listed, as a ``chmod 000`` folder is for a user (root ignores permissions)."""
    real = os.scandir

    def scandir(path=".", *a, **k):
        if os.path.abspath(os.fspath(path)) == str(folder):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "scandir", scandir)


def test_empty_class_folder_is_an_error_or_a_skipped_class(imgs, tmp_path, caplog):
    root = tmp_path / "f"
    shutil.copytree(imgs, root)
    (root / "hat").mkdir()  # an empty class folder: the detector would know a class it never saw
    with pytest.raises(data.DataSourceError, match=f"class folder {root / 'hat'} holds no image file.*--skip-empty-classes"):
        data.FolderSource(root)
    with caplog.at_level("WARNING"):
        src = data.FolderSource(root, skip_empty_classes=True)
    assert src.class_names == ["bag", "coat", "shoe"] and src.skipped_classes == [("hat", "holds no image file")]
    assert "'hat' holds no image file; left out of the class list" in caplog.text
    assert sorted({s.label for s in src.samples}) == [0, 1, 2] and len(src) == 18
    given = data.FolderSource(root, classes=["bag", "coat", "hat", "shoe"])  # a given class may lack images here
    assert given.class_names == ["bag", "coat", "hat", "shoe"] and sorted({s.label for s in given.samples}) == [0, 1, 3]


def test_unreadable_folders_are_errors_naming_them(imgs, tmp_path, monkeypatch):
    root = tmp_path / "f"
    shutil.copytree(imgs, root)
    (root / "coat" / "more").mkdir()
    shutil.copy(root / "coat" / "000.png", root / "coat" / "more" / "x.png")
    _unreadable(monkeypatch, root / "bag")
    with pytest.raises(data.DataSourceError, match=f"class folder {root / 'bag'} cannot be read \\(Permission denied\\)"):
        data.FolderSource(root)
    src = data.FolderSource(root, skip_empty_classes=True)
    assert src.class_names == ["coat", "shoe"] and src.skipped_classes == [("bag", "cannot be read (Permission denied)")]
    monkeypatch.undo()
    _unreadable(monkeypatch, root / "coat" / "more")  # a folder below a class folder: its images would vanish
    for kw in ({}, {"skip_empty_classes": True}):
        with pytest.raises(data.DataSourceError, match=f"cannot read the folder\\(s\\) {root / 'coat' / 'more'}"):
            data.FolderSource(root, **kw)


def test_fit_saves_the_classes_it_was_fitted_on(imgs, tmp_path, tagood_home):
    root = tmp_path / "f"
    shutil.copytree(imgs, root)
    (root / "hat").mkdir()
    args = ["fit", root, "--out", tmp_path / "d", "--cache", tmp_path / "c", "--methods", "tagood[epochs=1]"]
    r = _run(args)
    assert r.exit_code == 2 and f"class folder {root / 'hat'} holds no image file" in r.output, r.output
    assert not (tmp_path / "d").exists() and not (tmp_path / "c").exists()  # refused before any work
    r = _run([*args, "--skip-empty-classes"])
    assert r.exit_code == 0 and "saved tagood[epochs=1] (3 classes" in r.output, r.output
    assert "class folder 'hat' holds no image file: left out" in r.output
    meta = json.loads((tmp_path / "d" / "tagood.json").read_text())
    assert meta["classes"] == ["bag", "coat", "shoe"] and any("'hat'" in w for w in meta["warnings"])
    from tagood import detectors

    assert len(detectors.load(tmp_path / "d").centres) == len(meta["classes"])  # the centres are the classes saved


def test_score_refuses_a_folder_with_an_unreadable_sub_folder(imgs, tmp_path, tagood_home, monkeypatch):
    r = _run(["fit", imgs, "--out", tmp_path / "d", "--cache", tmp_path / "c", "--methods", "knn[k=3]"])
    assert r.exit_code == 0, r.output
    batch = tmp_path / "batch"
    shutil.copytree(imgs, batch)
    (batch / "empty").mkdir()  # nothing to score in it: passed over
    r = _run(["score", tmp_path / "d", batch, "--out", tmp_path / "s.csv", "--cache", tmp_path / "c"])
    assert r.exit_code == 0 and "scored 18 images" in r.output, r.output
    _unreadable(monkeypatch, batch / "shoe")
    r = _run(["score", tmp_path / "d", batch, "--out", tmp_path / "s2.csv", "--cache", tmp_path / "c"])
    assert r.exit_code == 2 and f"class folder {batch / 'shoe'} cannot be read (Permission denied)" in r.output, r.output
    assert "make it readable" in r.output and not (tmp_path / "s2.csv").exists()


def test_a_chmod_000_class_folder_for_real(imgs, tmp_path, tagood_home):
    """The same with the operating system's own refusal (a subprocess that file permissions apply to)."""
    from unprivileged import tagood

    root = tmp_path / "f"
    shutil.copytree(imgs, root)
    os.chmod(root / "bag", 0)
    try:
        r = tagood(["extract", root, "--cache", tmp_path / "c", "--fields", "features"])
        assert r.returncode == 2 and f"class folder {root / 'bag'} cannot be read (Permission denied)" in r.stdout, \
            r.stdout + r.stderr
        r = tagood(["extract", root, "--cache", tmp_path / "c", "--fields", "features", "--skip-empty-classes"])
        assert r.returncode == 0 and "12 samples cached" in r.stdout, r.stdout + r.stderr
        assert "'bag' cannot be read (Permission denied); left out of the class list" in r.stdout + r.stderr
    finally:
        os.chmod(root / "bag", 0o755)


def test_one_class_folder(imgs, tmp_path, tagood_home):
    one = tmp_path / "one"
    shutil.copytree(imgs / "coat", one / "coat")
    r = _run(["fit", one, "--out", tmp_path / "d", "--cache", tmp_path / "c", "--methods", "knn[k=3]"])
    assert r.exit_code == 0 and "has one class folder (coat): knn[k=3] is fitted on it as one IND class" in r.output
    r = _run(["fit", one, "--out", tmp_path / "d2", "--cache", tmp_path / "c", "--methods", "energy"])
    assert r.exit_code == 2 and "which needs at least 2 (its scores would be constant)" in r.output, r.output


def test_benchmark_ind_splits_must_agree(imgs, tmp_path):
    from tagood.bench.config import check_ind_splits

    train = data.FolderSource(imgs)
    sub = tmp_path / "sub"
    shutil.copytree(imgs / "coat", sub / "coat")
    shutil.copytree(imgs / "shoe", sub / "shoe")
    test = check_ind_splits(train, data.FolderSource(sub))  # test/{coat, shoe}: coat is 1 and shoe 2, as in train
    assert test.class_names == ["bag", "coat", "shoe"] and [s.label for s in test.samples] == [1] * 6 + [2] * 6
    assert data.FolderSource(sub).samples[6].label == 1  # what the test folder alone says: shoe = 1 (bag in train)
    extra = tmp_path / "extra"
    shutil.copytree(sub, extra)
    shutil.copytree(imgs / "bag", extra / "hat")
    with pytest.raises(ConfigError, match="has class\\(es\\) 'hat' that the training split"):
        check_ind_splits(train, data.FolderSource(extra))
    with pytest.raises(ConfigError, match="has 1 labelled class \\(coat\\); a benchmark needs at least 2"):
        check_ind_splits(data.FolderSource(sub, classes=["coat"]), data.FolderSource(sub))


def test_bench_refuses_a_test_class_train_lacks_and_a_method_twice(imgs, tmp_path):
    shutil.copytree(imgs, tmp_path / "train")
    shutil.copytree(imgs, tmp_path / "test")
    shutil.copytree(imgs / "bag", tmp_path / "test" / "hat")
    shutil.copytree(imgs / "bag", tmp_path / "ood" / "x")
    cfg = folder_config(tmp_path / "b.toml", ["msp", "knn[k=3]"])
    r = _run(["bench", cfg, "--out", tmp_path / "o", "--cache", tmp_path / "c"])
    assert r.exit_code == 2 and "the IND test split 'test' has class(es) 'hat'" in r.output, r.output
    assert not (tmp_path / "c").exists()
    twice = folder_config(tmp_path / "t.toml", ["msp", "knn[k=3]", "knn[k = 3]"])
    r = _run(["bench", twice, "--out", tmp_path / "o", "--cache", tmp_path / "c"])
    assert r.exit_code == 2 and "methods names knn[k = 3] more than once" in r.output, r.output
    knn = folder_config(tmp_path / "k.toml", ["knn"])  # k = 50 on 18 training images: refused, not clipped
    shutil.rmtree(tmp_path / "test" / "hat")
    r = _run(["bench", knn, "--out", tmp_path / "o", "--cache", tmp_path / "c"])
    assert r.exit_code == 2 and "option k=50 exceeds the 18 IND training samples; use knn[k=18] or fewer" in r.output
    assert not (tmp_path / "c").exists()
    empty = tmp_path / "e.toml"
    empty.write_text(cfg.read_text().replace('methods = ["msp", "knn[k=3]"]', "methods = []"))
    r = _run(["bench", empty, "--out", tmp_path / "o", "--cache", tmp_path / "c"])
    assert r.exit_code == 2 and "key 'methods': list should have at least 1 item" in r.output, r.output


def test_bench_on_a_read_only_cache_reads_it_without_lock_or_work_folder(tmp_path, tagood_home):
    """A complete cache that this process may not write (a shared, read-only cache): used as it is, checked."""
    from unprivileged import tagood

    for split, offset in (("train", 0), ("test", 10)):
        fashion_folder(tmp_path / split, {"coat": 4, "shoe": 7}, 8, offset=offset)
    fashion_folder(tmp_path / "ood", {"x": 1}, 8)
    cfg = folder_config(tmp_path / "b.toml", ["msp", "tagood[epochs=1]"])
    cache = tmp_path / "cache"
    r = _run(["bench", cfg, "--out", tmp_path / "o1", "--cache", cache])
    assert r.exit_code == 0 and (cache / "work").is_dir(), r.output
    want = json.loads((tmp_path / "o1" / "results.json").read_text())["rows"]
    for p in [cache, *cache.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        r = tagood(["bench", cfg, "--out", tmp_path / "o2", "--cache", cache])
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        assert "cache hit (read-only cache, not locked)" in r.stdout + r.stderr
    finally:
        for p in [cache, *cache.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    got = json.loads((tmp_path / "o2" / "results.json").read_text())["rows"]
    assert [(r["method"], r["ood"]) for r in got] == [(r["method"], r["ood"]) for r in want]
    np.testing.assert_allclose([r["auroc"] for r in got], [r["auroc"] for r in want], atol=1e-6)
