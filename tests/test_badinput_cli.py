"""Bad input at the command line: every case exits 2 with one clear message (no traceback), or gives the
right result with a report line. Real images (Fashion-MNIST PNGs, scikit-learn photos), the real backbone."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from image_folders import fashion_folder
from tagood.cli.main import app

runner = CliRunner()


def _run(args: list[str]):
    return runner.invoke(app, [str(a) for a in args], terminal_width=200)


def _no_traceback(r) -> None:
    """No traceback, and no "unexpected error" (a bug's message): every case here is a user's error or a result."""
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), r.output
    assert "unexpected error" not in r.output, r.output


@pytest.fixture(scope="module")
def imgs(tmp_path_factory):
    return fashion_folder(tmp_path_factory.mktemp("imgs") / "f", {"coat": 4, "shoe": 7}, 6)


@pytest.fixture(scope="module")
def detector(tmp_path_factory, imgs, tagood_home):
    d = tmp_path_factory.mktemp("det") / "det"
    r = _run(["fit", imgs, "--out", d, "--methods", "tagood[epochs=1]", "--cache", d.parent / "cache"])
    assert r.exit_code == 0, r.output
    return d


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_device_without_gpu(imgs, tmp_path):
    r = _run(["extract", imgs, "--cache", tmp_path / "c", "--device", "cuda:0"])
    assert r.exit_code == 2 and "no CUDA GPU is visible" in r.output
    _no_traceback(r)


def test_device_banana(imgs, tmp_path, detector):
    for cmd in (["extract", imgs, "--cache", tmp_path / "c"], ["fit", imgs, "--out", tmp_path / "d"],
                ["score", detector, imgs, "--out", tmp_path / "s.csv"], ["demo", "--quick"]):
        r = _run([*cmd, "--device", "banana"])
        assert r.exit_code == 2 and "--device 'banana' is not a device" in r.output, r.output
        _no_traceback(r)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("bs", ["0", "-3"])
def test_bad_batch_size_leaves_no_cache_entry(imgs, tmp_path, bs):
    r = _run(["extract", imgs, "--cache", tmp_path / "c", "--batch-size", bs])
    assert r.exit_code == 2 and "batch-size" in r.output
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("how", ["truncate", "header", "empty", "text"])
def test_tampered_detector_safetensors(detector, imgs, tmp_path, how):
    d = tmp_path / "det"
    shutil.copytree(detector, d)
    files = sorted(d.glob("*.safetensors"))
    assert files
    for f in files:
        b = f.read_bytes()
        f.write_bytes({"truncate": b[: len(b) // 2], "header": b[:8] + b"\x00garbage" + b[16:], "empty": b"",
                       "text": b"not a safetensors file at all"}[how])
    r = _run(["score", d, imgs, "--out", tmp_path / "s.csv", "--cache", tmp_path / "c"])
    assert r.exit_code == 2 and "is damaged or not a safetensors file" in r.output and files[0].name in r.output, r.output
    _no_traceback(r)


@pytest.mark.parametrize("value", ["NaN", "-Infinity", "Infinity", '"high"', "null"])
def test_non_finite_threshold_in_saved_detector(detector, imgs, tmp_path, value):
    d = tmp_path / "det"
    shutil.copytree(detector, d)
    text = (d / "tagood.json").read_text()
    meta = json.loads(text)
    (d / "tagood.json").write_text(text.replace(f'"threshold": {json.dumps(meta["threshold"])}', f'"threshold": {value}'))
    r = _run(["score", d, imgs, "--out", tmp_path / "s.csv"])
    assert r.exit_code == 2 and "'threshold' must be a finite number" in r.output, r.output
    (d / "tagood.json").write_text(text[: len(text) // 3])
    r = _run(["score", d, imgs, "--out", tmp_path / "s.csv"])
    assert r.exit_code == 2 and "is not valid JSON" in r.output


def test_clip_pickle_is_refused_before_unpickling(imgs, tmp_path):
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip"}))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (clip / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    for cmd in (["extract", imgs, "--cache", tmp_path / "c"], ["fit", imgs, "--out", tmp_path / "d", "--methods", "krnft"]):
        r = _run([*cmd, "--backbone", "clip", "--clip", clip])
        assert r.exit_code == 2 and "pytorch_model.bin, a pickle file" in r.output, r.output
        _no_traceback(r)
    assert not marker.exists()


def _broken_folder(root: Path, classes: dict[str, int]) -> Path:
    for c, n in classes.items():
        (root / c).mkdir(parents=True)
        for j in range(n):
            (root / c / f"{j}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_all_inputs_fail_to_decode(detector, tmp_path):
    bad = _broken_folder(tmp_path / "bad", {"a": 3, "b": 2})
    r = _run(["score", detector, bad, "--out", tmp_path / "s.csv", "--cache", tmp_path / "c"])
    assert r.exit_code == 2 and "none of the 5 images" in r.output and "could be decoded" in r.output, r.output
    r = _run(["fit", bad, "--out", tmp_path / "d", "--cache", tmp_path / "c"])
    assert r.exit_code == 2 and "none of the 5 images" in r.output
    _no_traceback(r)


def test_class_losing_all_its_images(imgs, tmp_path):
    root = tmp_path / "f"
    shutil.copytree(imgs, root)
    _broken_folder(root, {"dress": 3})
    r = _run(["fit", root, "--out", tmp_path / "d", "--cache", tmp_path / "c", "--methods", "tagood[epochs=1]"])
    assert r.exit_code == 2 and "every image of class 'dress' failed to decode" in r.output, r.output


@pytest.mark.timeout(300)
def test_fifo_named_jpg_does_not_hang(detector, imgs, tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    good = imgs / "coat" / "000.png"
    r = _run(["score", detector, fifo, good, "--out", tmp_path / "s.csv", "--cache", tmp_path / "c"])
    assert r.exit_code == 0 and "scored 1 images" in r.output and "is a FIFO" in r.output, r.output
    r = _run(["score", detector, fifo, "--out", tmp_path / "s.csv", "--cache", tmp_path / "c"])
    assert r.exit_code == 2 and "is a FIFO" in r.output


@pytest.mark.parametrize("contents", ["passwd", "secret"])
def test_list_file_contents_are_not_echoed(imgs, tmp_path, contents):
    if contents == "passwd":
        lf = Path("/etc/passwd")
        if not lf.is_file():
            pytest.skip("no /etc/passwd")
        secret = lf.read_text().splitlines()[0].split(":")[0] + ":"
    else:
        lf = tmp_path / "notes.txt"
        secret = "hunter2-api-key"
        lf.write_text(f"password {secret} is very secret\n")
    r = _run(["extract", imgs, "--list", lf, "--cache", tmp_path / "c"])
    assert r.exit_code == 2 and str(lf) in r.output, r.output
    assert secret not in r.output
    _no_traceback(r)


def test_dangling_symlinks_and_directories_named_like_images_are_reported(imgs, tmp_path, caplog):
    root = tmp_path / "f"
    shutil.copytree(imgs, root)
    (root / "coat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / "shoe" / "album.jpg").mkdir()
    with caplog.at_level("WARNING"):
        r = _run(["extract", root, "--cache", tmp_path / "c", "--fields", "features"])
    assert r.exit_code == 0, r.output
    text = caplog.text + r.output
    assert "skipped 1 dangling symbolic link" in text and "gone.png" in text
    assert "skipped 1 directory named like an image" in text and "album.jpg" in text
    assert "12 samples cached" in r.output


def test_debug_shows_the_traceback(tmp_path):
    from tagood.data import DataSourceError

    bad = _broken_folder(tmp_path / "bad", {"a": 2})
    r = _run(["extract", bad, "--cache", tmp_path / "c"])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith("none of the 2 images")
    _no_traceback(r)
    r = _run(["--debug", "extract", bad, "--cache", tmp_path / "c"])
    assert isinstance(r.exception, DataSourceError)


def test_cache_ls_verify_repair_rm(imgs, tmp_path):
    cache = tmp_path / "c"
    r = _run(["extract", imgs, "--cache", cache, "--fields", "features", "--commit-every", "4"])
    assert r.exit_code == 0, r.output
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    r = _run(["cache", "ls", "--cache", cache])
    assert r.exit_code == 0 and entry.name in r.output and "12/12" in r.output and "complete" in r.output
    r = _run(["cache", "verify", "--cache", cache])
    assert r.exit_code == 0 and "ok" in r.output and "(3 shards, 12 samples)" in r.output
    shard = entry / "shard-00001.safetensors"
    b = bytearray(shard.read_bytes())
    b[-5] ^= 0xFF
    shard.write_bytes(bytes(b))
    r = _run(["cache", "verify", "--cache", cache])
    assert r.exit_code == 1 and "shard-00001.safetensors: checksum mismatch" in r.output and "--repair" in r.output
    r = _run(["cache", "verify", "--repair", entry.name, "--cache", cache])
    assert r.exit_code == 0 and "repaired" in r.output, r.output
    assert not shard.exists()  # replaced by a freshly extracted shard under a new name
    r = _run(["cache", "verify", "--cache", cache])
    assert r.exit_code == 0 and "ok" in r.output
    (entry / "manifest.json").write_text("{")
    r = _run(["cache", "ls", "--cache", cache])
    assert r.exit_code == 0 and "damaged manifest" in r.output
    r = _run(["cache", "verify", "--repair", "--cache", cache])
    assert r.exit_code == 0 and "set aside" in r.output
    r = _run(["extract", imgs, "--cache", cache, "--fields", "features"])
    assert r.exit_code == 0 and "12 samples cached" in r.output
    r = _run(["cache", "rm", "nope", "--cache", cache])
    assert r.exit_code == 2 and "is not a cache entry" in r.output
    r = _run(["cache", "rm", "--all", "--cache", cache])
    assert r.exit_code == 0 and not any(p.is_dir() for p in cache.iterdir())


# -- schemas at the edge (issue 12, deliverable 5): every option and config key checked before any extraction --
@pytest.mark.parametrize("spec,needle", [
    ("knn[k=0]", "detector 'knn': option k is a number (default 50), got 0"),
    ("knn[k=2.7]", "option k is a number (default 50), got 2.7: input should be a valid integer"),
    ("react[percentile=150]", "option percentile is a number (default 90.0), got 150"),
    ("ash[percentile=100]", "option percentile is a number (default 90.0), got 100: input should be less than 100"),
    ("tagood[tau=nan]", "option tau is a number (default 0.5), got nan: must be a finite number"),
    ("tagood[epochs=-2]", "detector 'tagood': option epochs is a number (default 15), got -2"),
    ("tagood[epoch=3]", "has no option epoch (did you mean 'epochs'?)"),
    ("knnn", "unknown detector 'knnn' (did you mean 'knn'?)"),
])
def test_bad_method_options_exit_2_before_extraction(tmp_path, spec, needle):
    r = _run(["demo", "--quick", "--out", tmp_path / "o", "--cache", tmp_path / "c", "--methods", f"msp,{spec}"])
    assert r.exit_code == 2 and needle in r.output, r.output
    _no_traceback(r)
    assert not (tmp_path / "c").exists()  # nothing was extracted


def test_fit_with_bad_options_exits_2_before_extraction(imgs, tmp_path):
    for spec, needle in (("tagood[epochs=-2]", "option epochs"), ("cs[no_tag=maybe]", "option no_tag"),
                         ("krnft[k_in=0]", "option k_in")):
        r = _run(["fit", imgs, "--out", tmp_path / "d", "--methods", spec, "--cache", tmp_path / "c"])
        assert r.exit_code == 2 and needle in r.output, r.output
        _no_traceback(r)
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


_CONFIG = ('name = "t"\nmethods = ["msp"]\nseed = 0\n[train]\ntype = "folder"\nroot = "f"\nper_class = 3\n'
           '[test]\ntype = "folder"\nroot = "f"\n[ood.o]\ntype = "folder"\nroot = "f"\n')


@pytest.mark.parametrize("old,new,needle", [
    ("seed = 0", 'seed = "abc"', "key 'seed': input should be a valid integer"),
    ("per_class = 3", 'per_class = "many"', "key 'train.per_class': input should be a valid integer"),
    ('[test]\ntype = "folder"\nroot = "f"', '[test]\ntype = "folder"\nroot = 42',
     "key 'test.root': input should be a valid string"),
    ("seed = 0", "seed = 0\nbatch_size = 0", "key 'batch_size': input should be greater than or equal to 1"),
    ("seed = 0", "sede = 0", "unknown key 'sede' (did you mean 'seed'?)"),
    ('methods = ["msp"]', 'methods = ["msp", "knn[k=0]"]', "key 'methods[1]': detector 'knn': option k"),
    ('methods = ["msp"]', 'method = ["msp"]', "unknown key 'method' (did you mean 'methods'?)"),
])
def test_bad_toml_config_exits_2_naming_file_and_key(imgs, tmp_path, old, new, needle):
    assert old in _CONFIG
    cfg = tmp_path / "b.toml"
    cfg.write_text(_CONFIG.replace(old, new, 1).replace('root = "f"', f'root = "{imgs}"'))
    r = _run(["bench", cfg, "--out", tmp_path / "o", "--cache", tmp_path / "c"])
    assert r.exit_code == 2 and str(cfg) in r.output.replace("\n", "") and needle in r.output, r.output
    _no_traceback(r)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("edit,needle", [
    (lambda m: {**m, "treshold": m["threshold"]}, "unknown key 'treshold' (did you mean 'threshold'?)"),
    (lambda m: {k: v for k, v in m.items() if k != "classes"}, "missing key 'classes'"),
    (lambda m: {**m, "no_tag_rule": "hunter2-secret"}, "key 'no_tag_rule'"),
    (lambda m: {**m, "backbone": "hunter2-secret"}, "key 'backbone'"),
])
def test_saved_detector_json_schema(detector, imgs, tmp_path, edit, needle):
    d = tmp_path / "det"
    shutil.copytree(detector, d)
    meta = json.loads((d / "tagood.json").read_text())
    (d / "tagood.json").write_text(json.dumps(edit(meta)))
    r = _run(["score", d, imgs, "--out", tmp_path / "s.csv", "--cache", tmp_path / "c"])
    assert r.exit_code == 2 and "tagood.json" in r.output and needle in r.output, r.output
    assert "hunter2-secret" not in r.output
    _no_traceback(r)


def test_vocabulary_file_contents_are_not_echoed(imgs, tmp_path):
    passwd = Path("/etc/passwd")
    if not passwd.is_file():
        pytest.skip("no /etc/passwd")
    r = _run(["fit", imgs, "--out", tmp_path / "d", "--methods", f"tagood[epochs=1,vocabulary={passwd}]",
              "--cache", tmp_path / "c"])
    assert r.exit_code == 2 and str(passwd) in r.output and "no column 'class'" in r.output, r.output
    assert ":x:" not in r.output and passwd.read_text().splitlines()[0] not in r.output
    _no_traceback(r)


# -- issue 23: every reproduction exits 2 with one line naming the file or option, never "unexpected error" --------
def _case_files(root: Path) -> None:
    """The files the reproductions below read: an empty file, a pickle named model.safetensors, a 1-class folder, ..."""
    (root / "empty.bin").write_bytes(b"")
    (root / "tags.txt").write_text("cat\ndog\n")
    for name, content in (("clip-pickle", pickle.dumps({"weights": [1.0, 2.0]})), ("clip-empty", b"")):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps({"model_type": "clip"}))
        (root / name / "model.safetensors").write_bytes(content)


#: (argv with {imgs} / {tmp} / {det} / {one} / {cache} placeholders, text the one-line message must hold)
CLI_CASES = [
    (["extract", "{imgs}", "--cache", "{cache}", "--backbone", "ram"], "the ram backbone needs its weights: give --checkpoint"),
    (["extract", "{imgs}", "--cache", "{cache}", "--backbone", "clip"], "the clip backbone needs its weights: give --clip"),
    (["extract", "{imgs}", "--cache", "{cache}", "--backbone", "banana"], "unknown backbone 'banana' (--backbone)"),
    (["extract", "{imgs}", "--cache", "{cache}", "--backbone", "clip", "--clip", "{tmp}/clip-pickle"],
     "clip-pickle (model.safetensors)"),
    (["extract", "{imgs}", "--cache", "{cache}", "--backbone", "clip", "--clip", "{tmp}/clip-empty"],
     "is damaged, empty or not a safetensors file"),
    (["extract", "{imgs}", "--cache", "{cache}", "--backbone", "ram", "--checkpoint", "{tmp}/empty.bin", "--tags",
      "{tmp}/tags.txt"], "empty.bin (it is empty)"),
    (["extract", "{imgs}", "--cache", "{cache}", "--fields", "bogus"], "fields 'bogus' (--fields)"),
    (["demo", "--quick", "--out", "{tmp}/o", "--cache", "{cache}", "--methods", "knn[k=5,k=6]"],
     "option k is given twice in 'knn[k=5,k=6]'"),
    (["demo", "--quick", "--out", "{tmp}/o", "--cache", "{cache}", "--methods", "msp,msp"],
     "--methods names msp more than once"),
    (["fit", "{imgs}", "--out", "{tmp}/d", "--cache", "{cache}", "--methods", "knn[k=3]", "--stream-above-gb", "nan"],
     "--stream-above-gb nan is not a number"),
    (["fit", "{one}", "--out", "{tmp}/d", "--cache", "{cache}", "--methods", "msp"], "has one class folder (coat); msp"),
    (["fit", "{imgs}", "--out", "{tmp}/d", "--cache", "{cache}", "--methods", "knn[k=50]"],
     "option k=50 exceeds the 11 IND training samples"),
]


@pytest.mark.timeout(600)
def test_issue_reproductions_exit_2_with_one_clear_line(imgs, tmp_path, tagood_home):
    _case_files(tmp_path)
    one = fashion_folder(tmp_path / "one", {"coat": 4}, 6)
    outputs = []
    for argv, needle in CLI_CASES:
        args = [a.format(imgs=imgs, tmp=tmp_path, one=one, cache=tmp_path / "c") for a in argv]
        r = _run(args)
        outputs.append(r.output)
        assert r.exit_code == 2 and needle in r.output, (args, r.output)
        _no_traceback(r)
        assert not (tmp_path / "d").exists()  # refused before anything was written
    assert sum(o.count("unexpected error") for o in outputs) == 0


@pytest.mark.parametrize("var,value", [("TAGOOD_THREADS", "0"), ("TAGOOD_THREADS", "abc"), ("OMP_NUM_THREADS", "2.0"),
                                       ("OMP_NUM_THREADS", "abc")])
def test_bad_thread_variable_exits_2_naming_it(monkeypatch, var, value):
    monkeypatch.delenv("TAGOOD_THREADS", raising=False)
    monkeypatch.setenv(var, value)
    r = _run(["methods"])
    assert r.exit_code == 2 and f"the environment variable {var}={value!r}" in r.output, r.output
    assert "unexpected error" not in r.output and len(r.output.strip().splitlines()) == 1
    _no_traceback(r)
