"""Image sources on real data and real files: decoding, errors, subsampling, fingerprints, jigsaw, clutter."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tagood import data
from tagood.data import DataSourceError, ImageDecodeError


@pytest.fixture(scope="module")
def fashion_test():
    return data.fashion_mnist("test")


def _photo() -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("flower.jpg"))


@pytest.mark.parametrize("mode,ext", [("L", ".png"), ("P", ".gif"), ("CMYK", ".jpg"), ("RGBA", ".png"), ("LA", ".png"), ("I;16", ".png"), ("RGB", ".tiff"), ("1", ".bmp")])
def test_modes_convert_to_rgb(tmp_path, mode, ext):
    src = _photo().resize((64, 48))
    img = src.convert(mode) if mode != "I;16" else Image.fromarray((np.asarray(src.convert("L")).astype(np.uint16) * 257))
    p = tmp_path / "c" / f"x{ext}"
    p.parent.mkdir()
    img.save(p)
    out = data.FolderSource(tmp_path).load(0)
    assert out.mode == "RGB" and out.size == (64, 48)
    if mode in ("L", "I;16"):  # grey levels survive
        np.testing.assert_allclose(np.asarray(out)[..., 0], np.asarray(src.convert("L")), atol=1)


def test_alpha_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255
    a[:2, :, 3] = 255  # top half opaque red, bottom transparent
    (tmp_path / "c").mkdir()
    Image.fromarray(a, "RGBA").save(tmp_path / "c" / "a.png")
    out = np.asarray(data.FolderSource(tmp_path).load(0))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[3, 3]) == (255, 255, 255)


def test_corrupt_files_raise_decode_error_naming_file(tmp_path):
    d = tmp_path / "cls"
    d.mkdir()
    _photo().save(d / "good.jpg")
    raw = (d / "good.jpg").read_bytes()
    (d / "trunc.jpg").write_bytes(raw[: len(raw) // 3])
    (d / "text.jpg").write_text("not an image")
    src = data.FolderSource(tmp_path)
    assert len(src) == 3
    names = [s.ident for s in src.samples]
    src.load(names.index(str(d / "good.jpg")))
    for bad in ("trunc.jpg", "text.jpg"):
        with pytest.raises(ImageDecodeError, match=bad):
            src.load(names.index(str(d / bad)))


def test_jpeg_draft_keeps_min_size(tmp_path):
    (tmp_path / "c").mkdir()
    _photo().save(tmp_path / "c" / "big.jpg")  # 640x427
    img = data.FolderSource(tmp_path, min_size=100).load(0)
    assert min(img.size) >= 100 and img.size[0] < 640


def test_folder_and_list_errors(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        data.FolderSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no images"):
        data.FolderSource(tmp_path / "empty")
    lf = tmp_path / "list.txt"
    lf.write_text("# comment\n\na/b.png 3\nc.png\n")
    src = data.ListFileSource(lf, tmp_path)
    assert [(s.ident, s.label) for s in src.samples] == [(str(tmp_path / "a/b.png"), 3), (str(tmp_path / "c.png"), -1)]
    with pytest.raises(ImageDecodeError, match="not found"):
        src.load(0)  # a listed but missing file fails only at load
    lf.write_text("a.png x\n")
    with pytest.raises(DataSourceError, match="list.txt:1"):
        data.ListFileSource(lf, tmp_path)


def test_packaged_sets():
    m, d = data.mnist5k(), data.sklearn_digits()
    assert len(m) == 5000 and m.load(0).size == (28, 28)
    assert len(d) == 1797 and d.images.max() == 255
    f = data.fashion_mnist("train")
    assert len(f) == 60000 and f.class_names[9] == "Ankle boot"
    with pytest.raises(DataSourceError, match="dataset-fashion-mnist"):
        data.fashion_mnist("test", root="/nonexistent")


def test_bad_idx_file(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x09\x03garbage")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DataSourceError, match="magic"):
        data.fashion_mnist("test", root=tmp_path)


def test_subsampling_is_seeded_and_per_class(fashion_test):
    six = data.select_classes(fashion_test, range(6))
    a = data.subsample_per_class(six, 20, seed=1)
    b = data.subsample_per_class(six, 20, seed=1)
    c = data.subsample_per_class(six, 20, seed=2)
    assert [s.ident for s in a.samples] == [s.ident for s in b.samples] != [s.ident for s in c.samples]
    assert np.bincount([s.label for s in a.samples]).tolist() == [20] * 6
    assert a.class_names == fashion_test.class_names[:6]
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    near = data.select_classes(fashion_test, [6, 7], relabel=False)
    assert {s.label for s in near.samples} == {6, 7}


def test_fingerprint_tracks_content():
    imgs = np.zeros((3, 4, 4), np.uint8)
    a = data.ArraySource(imgs, [0, 1, 2], "x")
    imgs2 = imgs.copy()
    imgs2[1, 2, 2] = 1
    assert a.fingerprint() == data.ArraySource(imgs.copy(), [0, 1, 2], "x").fingerprint()
    assert a.fingerprint() != data.ArraySource(imgs2, [0, 1, 2], "x").fingerprint()
    assert a.fingerprint() != data.ArraySource(imgs, [0, 1, 1], "x").fingerprint()


def test_jigsaw_is_a_deterministic_patch_permutation(fashion_test):
    j = data.JigsawSource(data.subsample(fashion_test, 5, seed=0), grid=3, seed=0)
    orig = np.asarray(j.parent.load(2).resize((27, 27), Image.BILINEAR))
    out = np.asarray(j.load(2))
    assert out.shape == (27, 27, 3)

    def patches(a):
        return sorted(a[r : r + 9, c : c + 9].tobytes() for r in range(0, 27, 9) for c in range(0, 27, 9))

    assert patches(out) == patches(orig) and not np.array_equal(out, orig)
    np.testing.assert_array_equal(out, np.asarray(j.load(2)))


def test_clutter_scenes():
    s = data.fashion_clutter_splits(4, 3, 8, seed=0)
    assert len(s["train"]) == 24 and len(s["test"]) == 18 and len(s["clutter-near"]) == 8 and len(s["clutter-only"]) == 8
    assert {x.label for x in s["train"].samples} == set(range(6))
    assert {x.label for x in s["clutter-near"].samples} == {-1}
    t = s["test"]
    a, b = np.asarray(t.load(1)), np.asarray(t.load(1))
    np.testing.assert_array_equal(a, b)
    lay = t.layout(1)
    x0, y0, x1, y1 = lay["object"]
    obj = a[y0:y1, x0:x1]
    item = np.asarray(t.objects.load(1).convert("L").resize((x1 - x0, y1 - y0), Image.BILINEAR), dtype=float)
    assert np.corrcoef(obj[..., 0].ravel().astype(float), item.ravel())[0, 1] > 0.95  # the box holds the object
    for _, box in lay["clutter"]:  # clutter stays outside the object box
        assert box[2] <= x0 or box[0] >= x1 or box[3] <= y0 or box[1] >= y1
    only = s["clutter-only"]
    assert only.layout(0)["object"] is None and np.asarray(only.load(0)).max() > 0
    # train and test clutter come from disjoint MNIST images
    assert s["train"].clutter.indices.max() < s["test"].clutter.indices.min()
