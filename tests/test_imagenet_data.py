"""ImageNet benchmark layout on a miniature tree of real image files, and the name-matched RAM vocabulary."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from tagood.assets import imagenet_classes, imagenet_wnids
from tagood.data import DataSourceError
from tagood.data.imagenet import (
    EXPECTED_COUNTS,
    OOD_SETS,
    available_ood_sets,
    imagenet_source,
    imagenet_train_source,
    ood_source,
    ram_vocabulary_for_imagenet,
)


def _photo_tiles(n: int) -> list[Image.Image]:
    from sklearn.datasets import load_sample_image

    a = load_sample_image("flower.jpg")
    return [Image.fromarray(a[(i * 37) % 300 : (i * 37) % 300 + 64, (i * 53) % 500 : (i * 53) % 500 + 80]) for i in range(n)]


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    tiles = iter(_photo_tiles(40))
    wn = imagenet_wnids()
    for split, per in (("train", 3), ("val", 2)):
        for c in (0, 1, 999):
            d = root / "imagenet" / split / wn[c]
            d.mkdir(parents=True)
            for k in range(per):
                next(tiles).save(d / f"{split}_{c}_{k}.JPEG", format="JPEG")
    # OOD sets with differently spelt folder names, nesting, and one list-file set
    for folder, n in (("iNaturalist/images", 3), ("SUN", 2), ("Places", 2), ("OpenImage-O/a/b", 2)):
        d = root / folder
        d.mkdir(parents=True)
        for k in range(n):
            next(tiles).save(d / f"img{k}.jpg")
    for c in (5, 6):  # ImageNet-O's folders are ImageNet wnids, yet its images are OOD
        d = root / "imagenet-o" / wn[c]
        d.mkdir(parents=True)
        next(tiles).save(d / "x.png")
    (root / "imagenet-o" / "README.txt").write_text("not an image")
    dtd = root / "dtd" / "images" / "banded"
    dtd.mkdir(parents=True)
    for k in range(3):
        next(tiles).save(dtd / f"banded_{k}.jpg")
    (root / "textures.txt").write_text("images/banded/banded_0.jpg\nimages/banded/banded_2.jpg\n")
    return root


def test_val_and_train_from_wnid_folders(bench_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        val = imagenet_source(bench_root, "val")
    assert len(val) == 6
    assert sorted({s.label for s in val.samples}) == [0, 1, 999]
    assert val.class_names == imagenet_classes()
    assert val.load(0).mode == "RGB"
    # the count check warns with both numbers, it does not fail
    assert "found 6 images" in caplog.text and "50000" in caplog.text
    train = imagenet_train_source(bench_root, check=False)
    assert len(train) == 9 and train.name == "imagenet-train"
    assert all(Path(s.ident).parent.name == imagenet_wnids()[s.label] for s in train.samples)
    assert imagenet_source(bench_root, "test", check=False).fingerprint() == val.fingerprint()


def test_val_from_list_file(bench_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "imagenet").mkdir(parents=True)
    (root / "imagenet" / "val").symlink_to(bench_root / "imagenet" / "val")
    wn = imagenet_wnids()
    (root / "imagenet" / "val.txt").write_text(f"val/{wn[1]}/val_1_0.JPEG 1\nval/{wn[999]}/val_999_1.JPEG 999\n")
    src = imagenet_source(root, "val", check=False)
    assert [s.label for s in src.samples] == [1, 999]
    (root / "imagenet" / "val.txt").write_text(f"val/{wn[1]}/val_1_0.JPEG\n")
    with pytest.raises(DataSourceError, match="0..999"):
        imagenet_source(root, "val", check=False)


def test_ood_sets(bench_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert available_ood_sets(bench_root) == list(OOD_SETS)
    sizes = {"inaturalist": 3, "sun": 2, "places": 2, "openimage_o": 2, "imagenet_o": 2, "textures": 2}
    for part in OOD_SETS:
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            src = ood_source(bench_root, part)
        assert len(src) == sizes[part], part
        assert all(s.label == -1 for s in src.samples), part
        assert src.name == part and src.class_names is None
        assert str(EXPECTED_COUNTS[part]) in caplog.text
    # list file wins over the folder, paths relative to the folder of the same set
    tex = ood_source(bench_root, "textures", check=False)
    assert [Path(s.ident).name for s in tex.samples] == ["banded_0.jpg", "banded_2.jpg"]
    assert tex.load(1).size == (80, 64)
    assert imagenet_source(bench_root, "OpenImage-O", check=False).name == "openimage_o"


def test_missing_parts_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="imagenet"):
        imagenet_source(tmp_path, "val")
    (tmp_path / "imagenet").mkdir()
    with pytest.raises(DataSourceError, match="val.txt"):
        imagenet_source(tmp_path, "val")
    with pytest.raises(DataSourceError, match="SUN not found"):
        ood_source(tmp_path, "sun")
    with pytest.raises(ValueError, match="unknown"):
        imagenet_source(tmp_path, "cifar")
    assert available_ood_sets(tmp_path) == []


def test_vocabulary_matching_levels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WNSEARCHDIR", raising=False)
    tags = ["dog", "goldfish", "shark", "white", "swan", "black", "cat", "tabby", "fish", "snake", "golden retriever"]
    classes = ["goldfish", "great white shark", "black swan", "tabby cat", "Golden Retriever", "tench", "green mamba", "zzz"]
    syn = [["goldfish"], ["great white shark", "white shark"], ["black swan"], ["tabby", "tabby cat"], ["golden retriever"],
           ["tench", "Tinca tinca"], ["green mamba"], ["zzz"]]
    v = ram_vocabulary_for_imagenet(tags, classes, synonyms=syn)
    named = [tags[i] if i >= 0 else None for i in v]
    # exact, ending (head noun, never the modifier), ending, synonym, exact (case), none, none, none
    assert named == ["goldfish", "shark", "swan", "tabby", "golden retriever", None, None, None]
    # hypernym level from a WordNet 3.0 data.noun file (tiny, same format)
    wn = tmp_path / "wn"
    wn.mkdir()
    (wn / "data.noun").write_text(
        "  1 This is a license header line\n"
        "01440764 05 n 02 tench 0 Tinca_tinca 0 001 @ 01439121 n 0000 | a fish\n"
        "01439121 05 n 01 cyprinid 0 001 @ 02512053 n 0000 | carp family\n"
        "02512053 05 n 01 fish 0 000 | any fish\n"
        "01749939 05 n 02 green_mamba 0 mamba 0 001 @ 01726692 n 0000 | a mamba\n"
        "01726692 05 n 02 snake 0 serpent 0 000 | a snake\n"
    )
    v2 = ram_vocabulary_for_imagenet(tags, classes, synonyms=syn,
                                     wnids=["n1", "n2", "n3", "n4", "n5", "n01440764", "n01749939", "n9"], wordnet_dir=wn)
    assert [tags[i] if i >= 0 else None for i in v2][5:] == ["fish", "snake", None]


def test_vocabulary_for_the_1000_classes_uses_packaged_synonyms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WNSEARCHDIR", raising=False)
    tags = ["fish", "shark", "goldfish", "tiger shark", "hammerhead", "electric ray"]
    v = ram_vocabulary_for_imagenet(tags, imagenet_classes())
    assert len(v) == 1000
    names = imagenet_classes()
    got = {names[c]: tags[i] for c, i in enumerate(v) if i >= 0}
    assert got["goldfish"] == "goldfish" and got["great white shark"] == "shark" and got["tiger shark"] == "tiger shark"
    assert got["hammerhead shark"] == "hammerhead"  # a WordNet synonym matches before any ending
    assert got["electric ray"] == "electric ray"
    assert "tench" not in got  # only a WordNet hypernym would give "fish", and no WordNet folder is given here
