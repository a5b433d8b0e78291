"""The decomposition ladder's rungs (issue 24): ``decompose=oracle`` for the tag-based detectors (the true object's
tokens, a diagnostic), its tokens from the source's masks, and its marking in the benchmark's results."""

from __future__ import annotations

import numpy as np
import pytest

from tagood.core.context import Context
from tagood.detectors.tagood import CS
from tagood.detectors.tagood.decompose import ORACLE_FIELD, mean_tokens, oracle_mask, select_tokens, token_mask
from tagood.errors import InputError
from tagood_data import toy_tagged


def _with_oracle(fs):
    """The toy split with oracle tokens: its true object tokens (those whose class-tag attention got the +5) but the
    first, so that they differ from what the tags' decomposition finds (all three) and the oracle is seen at work."""
    obj = np.asarray(fs.tag_attention.maps)[:, 0] > 1.0
    obj[np.arange(len(obj)), obj.argmax(axis=1)] = False
    return fs.with_(extra={ORACLE_FIELD: obj})


def test_oracle_mask_keeps_the_marked_tokens_and_all_of_an_unmarked_image():
    m, has = oracle_mask(np.array([[True, False, True], [False, False, False]]), 3)
    np.testing.assert_array_equal(m, [[True, False, True], [True, True, True]])
    assert has.all()
    with pytest.raises(ValueError, match="do not match"):
        oracle_mask(np.ones((2, 4), bool), 3)


def test_cs_oracle_scores_the_true_object_tokens_and_tags_stay_the_default():
    train, test = _with_oracle(toy_tagged(seed=0)), _with_oracle(toy_tagged(n_per=5, seed=1))
    ctx = Context(seed=0)
    tags = CS().fit(train, ctx)
    oracle = CS(decompose="oracle").fit(train, ctx)
    assert tags.options.decompose == "tags" and not tags.oracle and oracle.oracle
    # the default is the tags' decomposition, as before the option existed
    mask, has = tags.token_masks(test)
    want, want_has = token_mask(test.tag_attention.maps, tags.kept_tags(test), tags.tau)
    np.testing.assert_array_equal(mask, want)
    np.testing.assert_array_equal(has, want_has)
    # the oracle's tokens are the true ones, on training (its centres) and on test data
    omask, ohas = oracle.token_masks(test)
    np.testing.assert_array_equal(omask, test.extra[ORACLE_FIELD])
    assert ohas.all()
    feats = mean_tokens(select_tokens(train.tokens, train.extra[ORACLE_FIELD]))
    np.testing.assert_allclose(oracle.centres, np.stack([feats[train.labels == c].mean(0) for c in range(3)]), rtol=1e-5)
    assert not np.allclose(oracle.centres, tags.centres)
    # a split without oracle tokens is refused with the option named
    with pytest.raises(InputError, match="decompose=oracle"):
        oracle.score(toy_tagged(n_per=2, seed=2))


@pytest.mark.slow
def test_runner_adds_oracle_tokens_from_the_scene_masks_and_marks_the_rows(tmp_path, backbone):
    """On a small real scenes run, cs[decompose=oracle] keeps exactly the true object tokens of the IND test scenes
    (diagnostics: precision = recall = 1), the stand-in's on clutter scenes, and its results rows say oracle."""
    from tagood.bench import runner
    from tagood.bench.config import builtin

    cfg = builtin("scenes", quick=True)
    small = {"n_train_per_class": 6, "n_test_per_class": 4, "n_ood": 12}
    cfg.train, cfg.test = {**cfg.train.model_dump(), **small}, {**cfg.test.model_dump(), **small}
    cfg.ood = {"scene-clutter": {**cfg.ood["scene-clutter"].model_dump(), **small}}
    results, state = runner.run(cfg, out_dir=tmp_path / "run", cache_root=tmp_path / "c",
                                methods=["cs", "cs[decompose=oracle]"], progress=False, backbone=backbone)
    assert not state.errors, state.errors
    rows = {r["method"]: r for r in results["rows"]}
    assert rows["cs[decompose=oracle]"].get("oracle") is True and not rows["cs"].get("oracle")
    diag = {(r["method"], r["split"]): r for r in results["diagnostics"]}
    t = diag["cs[decompose=oracle]", "test"]
    assert t["mask_precision"] == pytest.approx(1.0) and t["mask_recall"] == pytest.approx(1.0)
    assert diag["cs", "test"]["mask_iou"] < 1.0
    # on clutter scenes the oracle keeps the stand-in distractor's tokens
    c = diag["cs[decompose=oracle]", "scene-clutter"]
    assert c["distractor_fraction"] > 0.9
    md = (tmp_path / "run" / "results.md").read_text()
    assert "decompose=oracle" in md


# -- object crops (objects=crop) -------------------------------------------------------------------------------------

def test_token_box_mask_box_and_square_box_by_hand():
    from tagood.extract.crops import mask_box, square_box, token_box

    geometry = ((16.0, 16.0, 240.0, 240.0), (7, 7), 0)  # Lite0 on a 256 x 256 scene: 32-pixel cells from 16
    mask = np.zeros(49, bool)
    mask[[8, 9, 16]] = True  # rows 1-2, columns 1-2
    assert token_box(mask, geometry) == (48.0, 48.0, 112.0, 112.0)
    assert token_box(np.zeros(49, bool), geometry) is None
    assert token_box(np.r_[True, mask], ((16.0, 16.0, 240.0, 240.0), (7, 7), 1)) == (48.0, 48.0, 112.0, 112.0)
    m = np.zeros((10, 20), bool)
    m[2:5, 3:11] = True
    assert mask_box(m) == (3.0, 2.0, 11.0, 5.0) and mask_box(np.zeros((3, 3), bool)) is None
    # padded by 10% of the longer side per side, made square around the centre, enlarged by 1 / keep
    assert square_box((100.0, 100.0, 150.0, 120.0), 256, 256, pad=0.1, keep=1.0) == (95, 80, 155, 140)
    x0, y0, x1, y1 = square_box((100.0, 100.0, 150.0, 120.0), 256, 256, pad=0.1, keep=0.875)
    assert x1 - x0 == y1 - y0 == round(60 / 0.875)
    # shifted inside the image, and shrunk to its shorter side when larger
    assert square_box((0.0, 0.0, 40.0, 40.0), 256, 256, pad=0.5) == (0, 0, 80, 80)
    assert square_box((0.0, 0.0, 250.0, 100.0), 256, 200, pad=0.2) == (25, 0, 225, 200)


@pytest.mark.usefixtures("backbone")
def test_crop_source_crops_real_scenes_and_keys_the_cache_by_its_boxes(backbone):
    pytest.importorskip("skimage")
    from test_scenes import HAVE_STAMPS

    if not HAVE_STAMPS:
        pytest.skip("Debian package tuxpaint-stamps-default not installed")
    from PIL import Image

    from tagood.data.scenes import scene_splits
    from tagood.extract.crops import CropSource, crop_keep, mask_box, square_box

    src = scene_splits(n_train_per_class=1, n_test_per_class=1, n_ood=2)["test"]
    assert crop_keep(backbone) == pytest.approx(224 / 256)
    boxes = [square_box(mask_box(src.object_mask(i)), 256, 256, keep=crop_keep(backbone)) for i in range(len(src))]
    crops = CropSource(src, boxes, what="oracle-crop")
    assert len(crops) == len(src) and [s.label for s in crops.samples] == [s.label for s in src.samples]
    want = src.load(0).crop(boxes[0]).resize((256, 256), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(np.asarray(crops.load(0)), np.asarray(want))
    # every crop holds its whole object box (the scenes' objects are large: a padded box is often the whole image)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        ox0, oy0, ox1, oy1 = mask_box(src.object_mask(i))
        assert x0 <= ox0 and y0 <= oy0 and ox1 <= x1 and oy1 <= y1 and x1 - x0 == y1 - y0
    other = CropSource(src, [None] * len(src), what="oracle-crop")
    assert other.fingerprint() != crops.fingerprint()
    assert np.asarray(other.load(1)).shape == (256, 256, 3)
    from tagood.data.source import DataSourceError

    with pytest.raises(DataSourceError, match="one per image"):
        CropSource(src, boxes[:1])


def test_ladder_table_picks_the_best_image_level_reference_and_pairs_every_rung():
    from tagood.bench.ladder import ladder_markdown, ladder_table
    from tagood.bench.report.writers import build_results
    from tagood.bench.scores import metric_rows

    rng = np.random.default_rng(0)
    ind = rng.normal(0, 1, 200)
    ood = {"near": rng.normal(0.5, 1, 150), "far": rng.normal(1.5, 1, 150)}
    noisy = {k: v + rng.normal(0, 2, len(v)) for k, v in {"test": ind, **ood}.items()}
    scores = {"energy": {"test": ind, **ood}, "msp": noisy, "cs": {k: -v for k, v in noisy.items()},
              "crop:energy": {"test": ind * 0.5, **{k: v + 0.5 for k, v in ood.items()}},
              "oracle-crop:energy": {"test": ind, **{k: v + 1.0 for k, v in ood.items()}}}
    rows = [r for m, per in scores.items() for r in metric_rows(m, per["test"], {k: per[k] for k in ood})]
    doc = ladder_table(build_results(rows, None, {}), scores, {"cs": 0.3, "crop": 0.5, "oracle-crop": 1.0}, list(ood),
                       n_boot=200)
    assert doc["reference"] == "energy"  # the best image-level method, not the noisy msp
    got = {r["method"]: r for r in doc["rungs"]}
    assert list(got) == ["energy", "cs", "crop:energy", "oracle-crop:energy"]
    assert "diff" not in got["energy"] and got["oracle-crop:energy"]["oracle"] and not got["crop:energy"]["oracle"]
    d = got["oracle-crop:energy"]["diff"]["average"]
    assert d["low"] > 0 and d["low"] <= d["diff"] <= d["high"]
    assert got["cs"]["diff"]["average"]["high"] < 0 and got["crop:energy"]["mask_iou"] == 0.5
    md = ladder_markdown(doc)
    assert md.split("\n\n")[0].count("\n") == 1 + len(doc["rungs"]) and "vs energy" in md
    assert "`crop:energy`" in md.split("\n\n")[1]


@pytest.mark.slow
def test_run_ladder_end_to_end_on_small_real_scenes(tmp_path, backbone):
    """A small real ladder run: every rung is scored, crops are cached like splits, oracle rows are marked, the chosen
    localisation and its held-out table are recorded, and the run folder answers `tagood metrics --compare`."""
    pytest.importorskip("skimage")
    import json

    from tagood.bench.compare import compare
    from tagood.bench.config import builtin
    from tagood.bench.ladder import LOCALISATION_GRID, run_ladder

    cfg = builtin("scenes", quick=True)
    small = {"n_train_per_class": 9, "n_test_per_class": 3, "n_ood": 9}
    cfg.train, cfg.test = {**cfg.train.model_dump(), **small}, {**cfg.test.model_dump(), **small}
    cfg.ood = {s: {**cfg.ood[s].model_dump(), **small} for s in cfg.ood}
    cache = tmp_path / "c"
    doc = run_ladder(cfg, tmp_path / "run", cache_root=cache, progress=False, backbone=backbone, n_boot=50)
    methods = [r["method"] for r in doc["rungs"]]
    assert methods[0] == doc["reference"] and "cs[decompose=oracle]" in methods
    assert {f"{k}:{doc['reference']}" for k in ("crop", "crop-tuned", "oracle-crop")} <= set(methods)
    loc = doc["meta"]["localisation"]
    assert len(loc["heldout_box_iou"]) == len(LOCALISATION_GRID)
    assert max(r["box_iou"] for r in loc["heldout_box_iou"]) == pytest.approx(
        next(r["box_iou"] for r in loc["heldout_box_iou"] if (r["tag_maps"], r["tau"]) == (loc["tag_maps"], loc["tau"])))
    for r in doc["rungs"]:
        assert r["oracle"] == ("oracle" in r["method"])
        assert set(r["auroc"]) == {"scene-near", "scene-clutter", "scene-far", "average"}
    oracle_crop = next(r for r in doc["rungs"] if r["method"].startswith("oracle-crop:"))
    assert oracle_crop["mask_iou"] == pytest.approx(1.0)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert all(r.get("oracle") for r in results["rows"] if "oracle" in r["method"])
    assert not any(r.get("oracle") for r in results["rows"] if "oracle" not in r["method"])
    assert (tmp_path / "run" / "ladder.md").read_text().startswith("| rung |")
    res = compare(tmp_path / "run", f"oracle-crop:{doc['reference']}", doc["reference"], n_boot=20)
    assert "average" in res.sets
    assert sum(1 for p in cache.iterdir() if "crop" in p.name) == 3 * 5  # 3 crop kinds x (train, test, 3 OOD sets)


def test_ladder_note_gives_the_share_of_the_oracle_crops_gain_when_no_rung_wins():
    from tagood.bench.ladder import ladder_note

    def row(method, diff, low, high, oracle=False):
        d = {"diff": diff, "low": low, "high": high}
        return {"method": method, "oracle": oracle, "diff": {"near": d, "average": d}}

    doc = {"reference": "energy", "sets": ["near", "average"],
           "rungs": [{"method": "energy", "oracle": False}, row("cs", -5.0, -8.0, -2.0), row("crop:energy", 1.0, -1.0, 3.0),
                     row("oracle-crop:energy", 4.0, 2.0, 6.0, oracle=True)]}
    note = ladder_note(doc)
    assert note.startswith("No rung") and "`crop:energy`" in note and "25% of the oracle crop's gain" in note
    doc["rungs"][2] = row("crop:energy", 2.0, 0.5, 3.5)
    assert ladder_note(doc).startswith("**Without ground truth") and "`near`" in ladder_note(doc)


def test_top_tag_keeps_the_single_most_likely_kept_tag_and_cs_uses_it():
    from tagood.core.types import TagAttention
    from tagood.detectors.tagood.decompose import top_tag

    attn = TagAttention(np.array([[3, 5, 7], [3, 5, 7], [3, 5, 7]]), np.zeros((3, 3, 4)))
    probs = np.zeros((3, 8))
    probs[:, 3], probs[:, 5], probs[:, 7] = [0.2, 0.9, 0.9], [0.6, 0.1, 0.3], [0.4, 0.5, 0.95]
    keep = np.array([[True, True, True], [True, False, True], [False, False, False]])
    np.testing.assert_array_equal(top_tag(keep, attn, probs), [[False, True, False], [True, False, False], [False] * 3])
    # CS with tag_maps=top decomposes each image with its most likely kept tag's attention alone
    train, test = toy_tagged(seed=0), toy_tagged(n_per=5, seed=1)
    ctx = Context(seed=0)
    top = CS(tag_maps="top", tag_threshold=0.0).fit(train, ctx)
    keep = top.kept_tags(test)
    mask, _ = top.token_masks(test)
    want, _ = token_mask(test.tag_attention.maps, top_tag(keep, test.tag_attention, test.tag_probs), top.tau)
    np.testing.assert_array_equal(mask, want)
