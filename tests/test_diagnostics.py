"""Decomposition diagnostics (tagood.bench.diagnostics): pixel masks mapped onto token grids through the
backbone's crop box, per-split rows (no-tag fraction, kept tokens, mask precision / recall / IoU), the
no-tag warning, and their place in results.json / results.md."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagood.bench import diagnostics as dg
from tagood.bench.report import writers as report
from tagood.core.featureset import FeatureSet


# -- pixel mask -> token grid -------------------------------------------------------------------
def test_cell_coverage_of_hand_made_masks():
    m = np.zeros((8, 8), bool)
    m[:4, :4] = True  # the top-left quadrant
    np.testing.assert_allclose(dg.cell_coverage(m, (0, 0, 8, 8), (2, 2)), [[1, 0], [0, 0]])
    m[4:6, 4:8] = True  # half of the bottom-right cell
    cov = dg.cell_coverage(m, (0, 0, 8, 8), (2, 2))
    np.testing.assert_allclose(cov, [[1, 0], [0, 0.5]])
    np.testing.assert_array_equal(dg.mask_to_tokens(m, (0, 0, 8, 8), (2, 2)), [True, False, False, True])  # half counts
    m[5, 4] = False  # just under half
    np.testing.assert_array_equal(dg.mask_to_tokens(m, (0, 0, 8, 8), (2, 2)), [True, False, False, False])


def test_crop_box_maps_the_mask_onto_the_grid():
    # a 12 x 8 image whose centre 8 x 8 square is the crop; the object sits in the crop's top-right cell,
    # a second blob lies outside the crop and must not count
    m = np.zeros((8, 12), bool)
    m[0:4, 6:10] = True
    m[:, 0:2] = True
    cov = dg.cell_coverage(m, (2, 0, 10, 8), (2, 2))
    np.testing.assert_allclose(cov, [[0, 1], [0, 0]])
    # without the crop box the same mask would land elsewhere
    assert not np.allclose(dg.cell_coverage(m, (0, 0, 12, 8), (2, 2)), cov)
    # fractional box: one pixel covers a quarter of a 2 x 2 cell's corner pixel area
    one = np.zeros((5, 5), bool)
    one[0, 0] = True
    np.testing.assert_allclose(dg.cell_coverage(one, (0.5, 0.5, 4.5, 4.5), (1, 1)), [[0.25 / 16]])
    # the part of a cell outside the image counts as not object
    full = np.ones((4, 4), bool)
    np.testing.assert_allclose(dg.cell_coverage(full, (-4, 0, 4, 4), (1, 2)), [[0, 1]])


@settings(max_examples=60, deadline=None)
@given(h=st.integers(3, 20), w=st.integers(3, 20), rows=st.integers(1, 4), cols=st.integers(1, 4),
       left4=st.integers(-8, 12), top4=st.integers(-8, 12), cw4=st.integers(1, 12), ch4=st.integers(1, 12),
       seed=st.integers(0, 2**31 - 1))
def test_cell_coverage_equals_supersampled_count(h, w, rows, cols, left4, top4, cw4, ch4, seed):
    """On a quarter-pixel lattice the exact fractional coverage equals counting 4x4 sub-pixels."""
    m = np.random.default_rng(seed).random((h, w)) < 0.4
    left, top, cw, ch = left4 / 4, top4 / 4, cw4 / 4, ch4 / 4
    box = (left, top, left + cols * cw, top + rows * ch)
    got = dg.cell_coverage(m, box, (rows, cols))
    pad = 64
    up = np.zeros((4 * h + 2 * pad, 4 * w + 2 * pad), bool)
    up[pad:pad + 4 * h, pad:pad + 4 * w] = np.kron(m, np.ones((4, 4), bool))
    want = np.empty((rows, cols))
    for r in range(rows):
        for c in range(cols):
            y0, x0 = pad + top4 + r * ch4, pad + left4 + c * cw4
            want[r, c] = up[y0:y0 + ch4, x0:x0 + cw4].mean()
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_efficientnet_crop_box_on_a_real_backbone(backbone):
    """EfficientNet-Lite0 sees the centre 224/256 square of the short side: an object drawn on exactly the
    crop's top-left 1/7 x 1/7 becomes token 0, and the image border outside the crop counts for nothing."""
    w, h = 448, 256
    box, grid, n_prefix = backbone.token_geometry(w, h)
    assert grid == (7, 7) and n_prefix == 0
    left, top, right, bottom = box
    assert right - left == pytest.approx(224) and left == pytest.approx((448 - 224) / 2)
    m = np.zeros((h, w), bool)
    m[int(top):int(top) + 32, int(left):int(left) + 32] = True
    m[:, :int(left)] = True  # outside the crop
    tokens = dg.mask_to_tokens(m, box, grid)
    assert np.flatnonzero(tokens).tolist() == [0]


# -- rows ---------------------------------------------------------------------------------------
def _masks(obj, dis=None, grid=(2, 2), n_prefix=1):
    return dg.SplitMasks(np.asarray(obj, bool), None if dis is None else np.asarray(dis, bool), grid, n_prefix)


def test_decomposition_row_by_hand():
    # 4 images, 1 prefix token + a 2 x 2 grid; image 2 has no tag, image 3 is clutter-only (no object)
    kept = np.array([[1, 1, 1, 0, 0],
                     [0, 1, 0, 1, 1],
                     [1, 1, 1, 1, 1],
                     [1, 0, 0, 1, 0]], bool)
    has = np.array([True, True, False, True])
    obj = np.array([[1, 0, 0, 0],
                    [1, 1, 1, 1],
                    [1, 0, 0, 0],
                    [0, 0, 0, 0]], bool)
    dis = np.array([[0, 1, 0, 0],
                    [0, 0, 0, 0],
                    [0, 0, 0, 0],
                    [0, 0, 1, 0]], bool)
    r = dg.decomposition_row("cs", "test", kept, has, _masks(obj, dis))
    assert r["no_tag_fraction"] == 0.25 and r["n_images"] == 4
    assert r["tokens_per_image"] == pytest.approx((3 + 3 + 2) / 3)  # tagged images only, prefix included
    assert r["token_fraction"] == pytest.approx(8 / 3 / 5)
    # micro over images 0 and 1 (tagged, with object), spatial tokens only:
    # image 0: kept [1,1,0,0] vs obj [1,0,0,0] -> tp 1, fp 1, fn 0; image 1: kept [0,1,1,1] vs obj all -> tp 3, fn 1
    assert r["mask_images"] == 2
    assert r["mask_precision"] == pytest.approx(4 / 5)
    assert r["mask_recall"] == pytest.approx(4 / 5)
    assert r["mask_iou"] == pytest.approx(4 / 6)
    assert r["object_fraction"] == 0.75
    assert r["object_token_fraction"] == pytest.approx(5 / 8)  # object cells of images 0 and 1
    # kept spatial tokens of tagged images: 2 + 3 + 1 = 6, on distractors: image 0 token 1, image 3 token 2
    assert r["distractor_fraction"] == pytest.approx(2 / 6)
    line = dg.summary([r])[0]
    assert "no tag 25.0%" in line and "IoU 66.7% over 2 images" in line and "33.3% of kept tokens on distractors" in line


def test_rows_without_masks_and_with_a_mismatched_grid():
    kept = np.ones((3, 5), bool)
    r = dg.decomposition_row("tagood", "far", kept, np.array([True, False, False]))
    assert r["no_tag_fraction"] == pytest.approx(2 / 3) and r["tokens_per_image"] == 5 and "mask_iou" not in r
    r = dg.decomposition_row("tagood", "far", kept, np.array([False] * 3), _masks(np.ones((3, 9)), grid=(3, 3), n_prefix=0))
    assert r["tokens_per_image"] is None and "mask_iou" not in r and "grid" in r["mask_note"]
    # only clutter: no precision / recall / IoU, but the split's object fraction is 0
    r = dg.decomposition_row("cs", "clutter", kept, np.ones(3, bool), _masks(np.zeros((3, 4)), n_prefix=1))
    assert r["object_fraction"] == 0 and r["mask_images"] == 0 and r["mask_iou"] is None


class _Source:
    """A split's source with hand-made object masks (at a 12 x 8 resolution) for source indices 0..4."""

    def __init__(self, with_masks=True):
        self.with_masks = with_masks
        self.calls = 0

    def object_mask(self, i):
        self.calls += 1
        if not self.with_masks:
            return None
        m = np.zeros((8, 12), bool)
        if i % 2 == 0:  # even images: the object fills the crop's top-left cell
            m[0:4, 2:6] = True
        return m


class _Backbone:
    id = "fake"

    def token_geometry(self, width, height):
        side = min(width, height)
        left = (width - side) / 2
        return (left, 0.0, left + side, float(side)), (2, 2), 0


class _FakeTagDetector:
    """Stands for a fitted tag-based detector: keeps token 0 of every image, images 1 and 3 have no tag."""

    def __init__(self):
        self.hparams = {"no_tag": "ood"}
        self.seen = []

    def token_masks(self, data):
        self.seen.append(len(data))
        n = len(data)
        mask = np.zeros((n, 4), bool)
        mask[:, 0] = True
        has = np.ones(n, bool)
        has[1::2] = False
        return mask, has


def test_diagnose_maps_each_split_once_and_follows_source_indices():
    fs = FeatureSet(labels=np.zeros(3, np.int64))
    src = _Source()
    det = _FakeTagDetector()
    # feature rows are the source images 1, 2, 4 (images 0 and 3 failed to decode); the tagged rows 0 and 2
    # are images 1 (no object) and 4 (object): read by row number instead, both would hold an object
    rows = dg.diagnose([("cs", det), ("tagood", det), ("msp", object())],
                       {"test": dg.SplitInput(fs, src, [1, 2, 4]), "far": dg.SplitInput(fs, _Source(False), [0, 1, 2])},
                       _Backbone())
    assert [(r["method"], r["split"]) for r in rows] == [("cs", "test"), ("cs", "far"), ("tagood", "test"), ("tagood", "far")]
    assert src.calls == 4  # one probe + one per image, shared by both methods
    test = rows[0]
    assert test["no_tag_fraction"] == pytest.approx(1 / 3) and test["mask_images"] == 1
    assert test["object_fraction"] == pytest.approx(2 / 3)
    assert test["mask_precision"] == 1.0 and test["mask_recall"] == 1.0 and test["mask_iou"] == 1.0
    assert rows[1]["mask_note"] == "no object masks" and "mask_iou" not in rows[1]


def test_no_tag_warning_above_five_percent_only():
    rows = [{"method": "cs", "split": "test", "no_tag_fraction": 0.05},
            {"method": "tagood", "split": "test", "no_tag_fraction": 0.079},
            {"method": "tagood[no_tag=fallback]", "split": "test", "no_tag_fraction": 0.2},
            {"method": "tagood", "split": "near", "no_tag_fraction": 0.9}]
    w = dg.no_tag_warnings(rows, {"tagood": "ood", "tagood[no_tag=fallback]": "fallback"})
    assert len(w) == 2
    assert w[0].startswith("tagood: 7.9%") and "FPR95" in w[0]
    assert w[1].startswith("tagood[no_tag=fallback]: 20.0%") and "all their tokens" in w[1]
    assert "vocabulary does not cover them" in dg.no_tag_warnings(rows[1:2], {"tagood": "none"})[0]
    from tagood import detectors

    assert dg.no_tag_rule(detectors.create("tagood[no_tag=fallback]")) == "fallback"
    assert dg.no_tag_rule(detectors.create("cs[no_tag=ood]")) == "ood"
    assert dg.no_tag_rule(detectors.create("tagscore")) == "none"  # scores no-tag images from tag probabilities
    assert dg.no_tag_rule(detectors.create("msp")) is None


def test_results_json_and_markdown_show_diagnostics_and_warnings(tmp_path):
    rows = [{"method": "cs", "ood": "near", "auroc": 70.0, "fpr95": 80.0, "fpr95_ood_pos": 60.0, "aupr_in": 70.0,
             "aupr_out": 70.0}]
    diag = [dg.decomposition_row("cs", "test", np.array([[1, 1, 0, 0]], bool), np.array([True]),
                                 _masks([[1, 0, 0, 1]], n_prefix=0)),
            dg.decomposition_row("cs", "near", np.array([[1, 1, 1, 1]], bool), np.array([False]))]
    warn = dg.no_tag_warnings([{"method": "cs", "split": "test", "no_tag_fraction": 0.5}])
    res = report.build_results(rows, None, {"warnings": warn}, diag)
    paths = report.write_all(res, tmp_path)
    back = report.load(paths["json"])
    assert back["diagnostics"] == diag
    md = paths["md"].read_text()
    assert "Decomposition diagnostics" in md and "mask IoU %" in md
    assert "| cs | test | 0.0 | 2.0 | 50.0 | 100.0 | 50.0 | 50.0 | 50.0 | 33.3 |" in md
    assert "| cs | near | 100.0 | - | - | - | - | - | - | - |" in md
    assert "#### Warnings" in md and "50.0% of the IND test images" in md
    # a results document without diagnostics renders as before (no table)
    assert "Decomposition" not in report.to_markdown(report.build_results(rows, None, {}))


def test_runner_writes_diagnostics_of_real_scenes(tmp_path, backbone):
    """End to end on a small real-photo scenes run (real EfficientNet-Lite0, real stamps and masks): one row per
    (tag-based method, scored split), mask metrics where the scene has an object, the no-tag fraction equal to
    the share of IND test images scored NO_TAG_SCORE under rule no_tag=ood, and the table in results.md."""
    from tagood.bench import runner
    from tagood.bench.config import builtin
    from tagood.detectors.tagood.scores import NO_TAG_SCORE

    cfg = builtin("scenes", quick=True)
    small = {"n_train_per_class": 8, "n_test_per_class": 6, "n_ood": 24}
    cfg.train, cfg.test = {**cfg.train.model_dump(), **small}, {**cfg.test.model_dump(), **small}
    cfg.ood = {s: {**cfg.ood[s].model_dump(), **small} for s in ("scene-near", "scene-clutter")}
    results, state = runner.run(cfg, out_dir=tmp_path / "run", cache_root=tmp_path / "c", methods=["cs[no_tag=ood]", "msp"],
                                progress=False, backbone=backbone)
    assert not state.errors, state.errors
    diag = {(r["method"], r["split"]): r for r in results["diagnostics"]}
    assert set(diag) == {("cs[no_tag=ood]", s) for s in ("test", "scene-near", "scene-clutter")}
    test, clutter = diag["cs[no_tag=ood]", "test"], diag["cs[no_tag=ood]", "scene-clutter"]
    assert test["no_tag_fraction"] == pytest.approx(np.mean(state.scores["cs[no_tag=ood]"]["test"] >= NO_TAG_SCORE))
    assert test["object_fraction"] > 0.5 and test["mask_images"] > 0
    assert 0 < test["mask_precision"] <= 1 and 0 < test["mask_recall"] <= 1
    assert test["mask_iou"] <= min(test["mask_precision"], test["mask_recall"])
    assert 0 < test["object_token_fraction"] < 1
    assert clutter["object_fraction"] == 0 and clutter["mask_images"] == 0 and clutter["mask_iou"] is None
    assert clutter["distractor_fraction"] is not None and clutter["distractor_fraction"] > 0
    assert (test["no_tag_fraction"] > 0.05) == any(w.startswith("cs[no_tag=ood]:") for w in results["meta"]["warnings"])
    md = (tmp_path / "run" / "results.md").read_text()
    assert "| cs[no_tag=ood] | scene-clutter |" in md and "msp | test" not in md
