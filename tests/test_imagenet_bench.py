"""The ImageNet benchmark layout run end to end through `tagood bench` with tiny RAM and tiny CLIP
models saved in their official layouts (real weights cannot be downloaded here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from tagood.assets import imagenet_wnids
from tagood.cli.main import app
from tiny_models import write_tiny_clip, write_tiny_ram

runner = CliRunner()


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    from sklearn.datasets import load_sample_image

    root = tmp_path_factory.mktemp("imagenet_mini")
    photos = [load_sample_image(n) for n in ("china.jpg", "flower.jpg")]
    k = 0

    def tile() -> Image.Image:
        nonlocal k
        a = photos[k % 2]
        k += 1
        y, x = (k * 29) % 300, (k * 47) % 500
        return Image.fromarray(a[y : y + 96, x : x + 120])

    wn = imagenet_wnids()
    for split, per in (("train", 6), ("val", 3)):
        for c in (0, 1, 2):
            d = root / "data" / "imagenet" / split / wn[c]
            d.mkdir(parents=True)
            for j in range(per):
                tile().save(d / f"{j}.JPEG", format="JPEG")
    for name in ("iNaturalist", "dtd"):
        d = root / "data" / name / "images"
        d.mkdir(parents=True)
        for j in range(4):
            tile().save(d / f"{j}.jpg")
    write_tiny_ram(root / "ram")
    write_tiny_clip(root / "clip")
    return root


def _config(root: Path, backbone: str, methods: list[str]) -> Path:
    parts = "\n".join(
        f'[{sec}]\ntype = "imagenet"\nroot = "data"\npart = "{part}"'
        for sec, part in (("train", "train"), ("test", "val"), ("ood.inaturalist", "inaturalist"), ("ood.textures", "textures"))
    )
    p = root / f"{backbone.split(chr(10))[0].split('=')[-1].strip().strip(chr(34))}.toml"
    p.write_text(f'name = "imagenet-mini"\nmethods = {json.dumps(methods)}\n[backbone]\n{backbone}\n{parts}\n')
    return p


@pytest.mark.parametrize("backbone,methods", [
    ('name = "ram"\ncheckpoint = "ram/ram_tiny.pth"\ntag_list = "ram/ram_tag_list.txt"\n'
     'thresholds = "ram/ram_tag_list_threshold.txt"',
     ["msp", "energy", "knn[k=3]", "vim", "tagscore[tag_threshold=0.001]", "cs[tag_threshold=0.001]",
      "tagood[tag_threshold=0.001,epochs=2]"]),
    ('name = "clip"\npath = "clip"', ["msp", "knn[k=3]", "cs[tag_threshold=0.0001]", "tagood[tag_threshold=0.0001,epochs=2]"]),
])
def test_imagenet_benchmark_end_to_end(mini, backbone, methods, tagood_home):
    cfg = _config(mini, backbone, methods)
    out = mini / ("out-" + cfg.stem)
    r = runner.invoke(app, ["bench", str(cfg), "--out", str(out), "--cache", str(mini / "cache")], terminal_width=200)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert {row["method"] for row in res["rows"]} == set(methods)
    assert {row["ood"] for row in res["rows"]} == {"inaturalist", "textures", "average"}
    assert res["meta"]["sizes"] == {"train": 18, "test": 9, "inaturalist": 4, "textures": 4}


def test_convert_ram_cli(mini):
    out = mini / "ram_converted"
    r = runner.invoke(app, ["convert", "ram", str(mini / "ram" / "ram_tiny.pth"), "--out", str(out),
                            "--tags", str(mini / "ram" / "ram_tag_list.txt"),
                            "--thresholds", str(mini / "ram" / "ram_tag_list_threshold.txt")],
                      terminal_width=200)
    assert r.exit_code == 0, r.output
    assert (out / "config.json").exists() and "MiB" in r.output
    from tagood.backbones.ram import load_ram

    a = load_ram(mini / "ram" / "ram_tiny.pth", mini / "ram" / "ram_tag_list.txt", mini / "ram" / "ram_tag_list_threshold.txt")
    b = load_ram(out)
    assert a.weights_hash == b.weights_hash


def test_bench_imagenet_command_with_ram_flags(mini, tagood_home):
    out = mini / "out-flags"
    r = runner.invoke(app, ["bench", "imagenet", "--root", str(mini / "data"), "--tagger", "ram",
                            "--checkpoint", str(mini / "ram" / "ram_tiny.pth"), "--tags", str(mini / "ram" / "ram_tag_list.txt"),
                            "--thresholds", str(mini / "ram" / "ram_tag_list_threshold.txt"),
                            "--methods", "msp,vim,cs[tag_threshold=0.001]", "--out", str(out), "--cache", str(mini / "cache")],
                      terminal_width=200)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert {row["ood"] for row in res["rows"]} == {"inaturalist", "textures", "average"}
    assert res["meta"]["backbone"]["id"].startswith("ram")
    bad = runner.invoke(app, ["bench", "imagenet", "--root", str(mini / "data"), "--tagger", "ram"], terminal_width=200)
    assert bad.exit_code == 2 and "--checkpoint" in bad.output


def test_bench_imagenet_streamed_equals_in_memory(mini, tagood_home):
    """`--stream-above-gb 0` streams every split from the cache (as ImageNet train would be): same table."""
    args = ["bench", "imagenet", "--root", str(mini / "data"), "--tagger", "ram",
            "--checkpoint", str(mini / "ram" / "ram_tiny.pth"), "--tags", str(mini / "ram" / "ram_tag_list.txt"),
            "--thresholds", str(mini / "ram" / "ram_tag_list_threshold.txt"),
            "--methods", "energy,tagscore[tag_threshold=0.001],cs[tag_threshold=0.001],tagood[tag_threshold=0.001,epochs=2]",
            "--cache", str(mini / "cache-stream")]
    tables = {}
    for flag in ("-1", "0"):
        out = mini / f"out-stream{flag}"
        r = runner.invoke(app, [*args, "--out", str(out), "--stream-above-gb", flag], terminal_width=200)
        assert r.exit_code == 0, r.output
        res = json.loads((out / "results.json").read_text())
        assert not res["meta"].get("errors")
        assert bool(res["meta"]["streamed"]) == (flag == "0")
        tables[flag] = {(row["method"], row["ood"]): (row["auroc"], row["fpr95"]) for row in res["rows"]}
    assert tables["0"].keys() == tables["-1"].keys() and len(tables["0"]) == 4 * 3
    for key, (auroc, fpr) in tables["-1"].items():
        assert tables["0"][key] == pytest.approx((auroc, fpr), abs=1e-6), key


def test_bench_imagenet_runs_the_vision_language_methods_on_clip(mini, tagood_home):
    """`--tagger clip`: MCM, GL-MCM, NegLabel, CSP, AdaNeg, LoCoOp and KR-NFT score with the CLIP from disk (tiny, random)."""
    from tagood.bench.config import VLM, imagenet

    cfg = imagenet(mini / "data", {"name": "clip", "path": str(mini / "clip")})
    assert set(VLM) <= set(cfg.methods) and cfg.options.dual_encoder["name"] == "clip"
    assert not set(VLM) & set(imagenet(mini / "data", {"name": "ram", "checkpoint": "x"}).methods)  # no CLIP, no VLM rows
    # csp: the tiny random CLIP puts every text within cosine 0.95 of an IND prompt, so CSP's near-duplicate cut is lifted
    methods = ("mcm,glmcm,neglabel[max_candidates=300,n_neg=50],csp[max_candidates=300,max_sim=1.01],"
               "adaneg[max_candidates=300,n_neg=50,batch_size=4],locoop[epochs=2],"
               "krnft[max_candidates=300,n_neg=50,n_crops=4,k_in=1,k_out=1,epochs=1]")
    out = mini / "out-vlm"
    r = runner.invoke(app, ["bench", "imagenet", "--root", str(mini / "data"), "--tagger", "clip", "--clip", str(mini / "clip"),
                            "--methods", methods, "--out", str(out), "--cache", str(mini / "cache")], terminal_width=200)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert not res["meta"]["errors"], res["meta"]["errors"]
    got = {row["method"].split("[")[0] for row in res["rows"]}
    assert got == set(VLM)
    assert all(0.0 <= row["auroc"] <= 100.0 for row in res["rows"])
    # AdaNeg is test-time: scored on one seeded stream of IND test + OOD images, reported apart, its order recorded
    tt = {row["method"].split("[")[0] for row in res["rows"] if row.get("test_time")}
    assert tt == {"adaneg"}
    (spec, rec), = res["meta"]["streams"].items()
    order = rec["streams"]["joint"]["order"]
    sizes = res["meta"]["sizes"]
    assert len(order) == sizes["test"] + sum(sizes[s] for s in res["meta"]["config"]["ood"])
    assert "Test-time methods" in (out / "results.md").read_text() and "test-time methods" in r.output
