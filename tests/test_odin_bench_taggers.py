"""ODIN and FeatureNorm (TagOOD paper, Table 1) run end to end through `tagood bench` on the ImageNet layout
with tiny RAM and tiny CLIP taggers saved in their official layouts: ODIN back-propagates through the
tagger's ``torch_module()`` and the IND head, FeatureNorm selects a Swin / ViT block on jigsaw images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tagood.cli.main import app
from test_imagenet_bench import mini  # noqa: F401  (the module-scoped mini ImageNet layout)

runner = CliRunner()

TAGGERS = {
    "ram": 'name = "ram"\ncheckpoint = "ram/ram_tiny.pth"\ntag_list = "ram/ram_tag_list.txt"\n'
           'thresholds = "ram/ram_tag_list_threshold.txt"',
    "clip": 'name = "clip"\npath = "clip"',
}


@pytest.mark.slow  # ~1 min each on 2 shared cores (mini layout, extraction, ODIN through the tagger)
@pytest.mark.parametrize("tagger", ["ram", "clip"])
def test_odin_and_featurenorm_run_on_taggers(mini, tagger, tagood_home):  # noqa: F811
    parts = "\n".join(f'[{sec}]\ntype = "imagenet"\nroot = "data"\npart = "{part}"'
                      for sec, part in (("train", "train"), ("test", "val"), ("ood.inaturalist", "inaturalist"),
                                        ("ood.textures", "textures")))
    cfg = mini / f"odin-fn-{tagger}.toml"
    cfg.write_text(f'name = "imagenet-mini-{tagger}"\nmethods = ["msp", "odin", "featurenorm"]\n'
                   f'[pseudo_ood]\ntype = "jigsaw"\nof = "train"\nn = 12\n[backbone]\n{TAGGERS[tagger]}\n{parts}\n')
    out = mini / f"out-odin-fn-{tagger}"
    r = runner.invoke(app, ["bench", str(cfg), "--out", str(out), "--cache", str(mini / "cache")], terminal_width=200)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert not res["meta"]["errors"], res["meta"]["errors"]
    rows = {(row["method"], row["ood"]): row for row in res["rows"]}
    assert {m for m, _ in rows} == {"msp", "odin", "featurenorm"}
    scores = np.load(out / "scores.npz")
    # ODIN moved the scores away from plain MSP (at T = 1000 they are near -1/C, not MSP's values)
    assert not np.allclose(scores["score/odin/test"], scores["score/msp/test"])
    assert np.all(np.isfinite(scores["score/featurenorm/test"])) and np.all(scores["score/featurenorm/test"] <= 0)


def test_bench_imagenet_lists_odin_featurenorm_and_krnft_paper_settings(tmp_path):
    from tagood.bench.config import imagenet
    from tagood.bench.runner import create_detector

    (tmp_path / "dtd" / "images").mkdir(parents=True)  # one OOD set present (the layout of tagood.data.imagenet)
    (tmp_path / "dtd" / "images" / "0.jpg").write_bytes(b"")
    ram = imagenet(tmp_path, {"name": "ram", "checkpoint": "x"})
    assert {"odin", "featurenorm"} <= set(ram.methods)
    cfg = imagenet(tmp_path, {"name": "clip", "path": str(tmp_path / "clip")})
    det = create_detector("krnft", cfg)
    o = det.options
    assert (o.shots, o.n_crops, o.k_in, o.k_out, o.epochs, o.lr, o.meta_dim) == (4, 128, 32, 32, 3, 1e-5, 64)
    assert (o.preset, o.weight_decay, o.lr_schedule, o.n_neg, o.mining, o.n_groups) == (
        "paper", 0.01, "constant", 10500, "position", 10)
    assert create_detector("krnft[shots=16]", cfg).shots == 16  # a spec's own option still wins
    assert cfg.to_json()["options"]["method_defaults"]["krnft"]["preset"] == "paper"  # recorded in results.json meta
