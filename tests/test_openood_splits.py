"""OpenOOD v1.5's ImageNet-1K splits on a miniature tree of real image files: SSB-hard and NINCO (near-OOD)
beside iNaturalist, Textures and OpenImage-O (far-OOD), their aliases and expected counts, the benchmark config
and run that pick them up, and the near / far / 4-set group averages."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tagood.assets import imagenet_wnids
from tagood.bench.groups import group_average_rows, imagenet_groups, is_group_row
from tagood.data.imagenet import (
    ALL_OOD_SETS,
    EXPECTED_COUNTS,
    MOS_4SET,
    OPENOOD_FAR,
    OPENOOD_NEAR,
    available_ood_sets,
    imagenet_source,
    ood_source,
)


def _tiles(n: int) -> list[Image.Image]:
    from sklearn.datasets import load_sample_image

    a = load_sample_image("china.jpg")
    return [Image.fromarray(a[(i * 31) % 300 : (i * 31) % 300 + 72, (i * 43) % 500 : (i * 43) % 500 + 90]) for i in range(n)]


@pytest.fixture(scope="module")
def openood_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageNet train/val (3 classes) and the five OpenOOD v1.5 OOD sets, spelt as their releases spell them."""
    root = tmp_path_factory.mktemp("openood")
    tiles = iter(_tiles(60))
    wn = imagenet_wnids()
    for split, per in (("train", 3), ("val", 2)):
        for c in (0, 1, 2):
            d = root / "imagenet" / split / wn[c]
            d.mkdir(parents=True)
            for k in range(per):
                next(tiles).save(d / f"{k}.JPEG", format="JPEG")
    layout = {"SSB_hard/n00000001": 2, "SSB_hard/n00000002": 2, "NINCO/amphiuma": 2, "NINCO/caracal": 1,
              "iNaturalist/images": 3, "openimage-o/images": 3, "textures/images/banded": 3}
    for folder, n in layout.items():
        d = root / folder
        d.mkdir(parents=True)
        for k in range(n):
            next(tiles).save(d / f"img{k}.jpg")
    return root


def test_openood_v15_ninco_and_ssb_hard_are_found_with_counts_and_aliases(openood_root: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    assert available_ood_sets(openood_root) == ["inaturalist", "textures", "openimage_o", "ssb_hard", "ninco"]
    assert ALL_OOD_SETS[-2:] == OPENOOD_NEAR == ("ssb_hard", "ninco")
    sizes = {"ssb_hard": 4, "ninco": 3}
    for part in OPENOOD_NEAR:
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            src = ood_source(openood_root, part)
        assert len(src) == sizes[part] and src.name == part
        assert all(s.label == -1 for s in src.samples)  # class folders of NINCO / SSB-hard are not IND labels
        assert f"{EXPECTED_COUNTS[part]}" in caplog.text and EXPECTED_COUNTS[part] in (49_000, 5_879)
        assert src.load(0).mode == "RGB"
    for alias in ("SSB-hard", "ssb", "ssbhard"):
        assert imagenet_source(openood_root, alias, check=False).name == "ssb_hard"
    assert imagenet_source(openood_root, "NINCO", check=False).name == "ninco"
    with pytest.raises(ValueError, match="ninco"):
        ood_source(openood_root, "ninco-v2")


def test_other_published_counts_are_not_warned_about(openood_root: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """OpenOOD v1.5's Textures (5,160) and OpenImage-O (15,869) lists are known versions, not a warning;
    any other count warns with the standard and the other published number."""
    root = tmp_path / "r"
    root.mkdir()
    (root / "textures").symlink_to(openood_root / "textures", target_is_directory=True)
    (root / "openimage_o").symlink_to(openood_root / "openimage-o", target_is_directory=True)
    files = ["images/banded/img0.jpg", "images/banded/img1.jpg", "images/banded/img2.jpg"]
    for part, n in (("textures", 5_160), ("openimage_o", 15_869)):
        (root / f"{part}.txt").write_text("\n".join(files[i % 3] if part == "textures" else f"images/img{i % 3}.jpg"
                                                    for i in range(n)) + "\n")
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            assert len(ood_source(root, part)) == n
        assert "found" not in caplog.text, part
    (root / "textures.txt").write_text("\n".join(files) + "\n")
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        ood_source(root, "textures")
    assert "found 3 images" in caplog.text and "5640" in caplog.text and "5160" in caplog.text


def test_imagenet_config_takes_near_and_far_sets_and_their_groups(openood_root: Path) -> None:
    from tagood.bench.config import imagenet

    cfg = imagenet(openood_root, {"name": "efficientnet-lite0"})
    assert list(cfg.ood) == ["inaturalist", "textures", "openimage_o", "ssb_hard", "ninco"]
    assert cfg.ood["ninco"].model_dump(exclude_none=True) == {
        "type": "imagenet", "root": str(openood_root.resolve()), "part": "ninco", "relabel": True, "ood_labels": False}
    assert cfg.options.ood_groups == {"near-average": list(OPENOOD_NEAR), "far-average": list(OPENOOD_FAR)}
    assert imagenet_groups(list(MOS_4SET) + ["openimage_o", "imagenet_o"]) == {
        "far-average": list(OPENOOD_FAR), "4set-average": list(MOS_4SET)}
    assert imagenet_groups(list(MOS_4SET)) == {}  # the 4-set alone is the "average" row


def test_ninco_benchmark_run_gives_near_and_far_averages(openood_root: Path, backbone, tmp_path: Path) -> None:
    """The config run end to end on real images through EfficientNet-Lite0: every near / far set is scored and
    the group rows are the means of their sets' rows."""
    from tagood.bench.config import imagenet
    from tagood.bench.runner import run

    cfg = imagenet(openood_root, {"name": "efficientnet-lite0"})
    cfg.batch_size = 8
    results, state = run(cfg, cache_root=tmp_path / "cache", progress=False, methods=["msp", "energy"], backbone=backbone)
    assert state.errors == {}
    assert {k: len(sp.features) for k, sp in state.splits.items()} == {
        "train": 9, "test": 6, "inaturalist": 3, "textures": 3, "openimage_o": 3, "ssb_hard": 4, "ninco": 3}
    rows = [r for r in results["rows"] if not is_group_row(r)]
    extra = group_average_rows(rows, cfg.options.ood_groups)
    # the runner writes the same group rows into results.json
    assert [r for r in results["rows"] if is_group_row(r)] == extra
    assert [(r["method"], r["ood"]) for r in extra] == [("msp", "near-average"), ("msp", "far-average"),
                                                        ("energy", "near-average"), ("energy", "far-average")]
    by = {(r["method"], r["ood"]): r for r in rows}
    for r in extra:
        members = cfg.options.ood_groups[r["ood"]]
        for k in ("auroc", "fpr95", "fpr95_ood_pos", "aupr_in", "aupr_out"):
            assert r[k] == pytest.approx(np.mean([by[(r["method"], m)][k] for m in members]))
    assert all(is_group_row(r) for r in extra) and not any(is_group_row(r) for r in rows)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True, min_size=0, max_size=4),
       st.lists(st.floats(0, 100), min_size=4, max_size=4))
def test_group_rows_are_means_of_complete_groups(present: list[str], vals: list[float]) -> None:
    metrics = ("auroc", "fpr95", "fpr95_ood_pos", "aupr_in", "aupr_out")
    rows = [{"method": "m", "ood": s, **{k: vals[i] + j for j, k in enumerate(metrics)}}
            for i, s in enumerate(present)]
    rows.append({"method": "m", "ood": "average", **dict.fromkeys(metrics, -1.0)})
    groups = {"x-average": ["a", "b"], "y-average": ["c"]}
    out = {r["ood"]: r for r in group_average_rows(rows, groups)}
    assert ("x-average" in out) == ({"a", "b"} <= set(present)) and ("y-average" in out) == ("c" in present)
    if "x-average" in out:
        ia, ib = present.index("a"), present.index("b")
        assert out["x-average"]["auroc"] == pytest.approx((vals[ia] + vals[ib]) / 2)
        assert out["x-average"]["aupr_out"] == pytest.approx((vals[ia] + vals[ib]) / 2 + 4)
