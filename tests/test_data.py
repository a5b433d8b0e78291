"""Image sources on real data and real files: decoding, errors, list files, packaged sets, subsets, fingerprints.

Jigsaw and clutter sources are tested in test_clutter.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tagood import data
from tagood.data import DataSourceError, ImageDecodeError


@pytest.fixture(scope="module")
def fashion_test():
    return data.fashion_mnist("test")


def _photo() -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("flower.jpg"))


@pytest.mark.parametrize("mode,ext", [("L", ".png"), ("P", ".gif"), ("CMYK", ".jpg"), ("RGBA", ".png"), ("LA", ".png"),
                                      ("I;16", ".png"), ("RGB", ".tiff"), ("1", ".bmp")])
def test_modes_convert_to_rgb(tmp_path, mode, ext):
    src = _photo().resize((64, 48))
    img = src.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(src.convert("L")).astype(np.uint16) * 257)
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
    with pytest.raises(DataSourceError, match="none of the 2 paths"):  # nothing listed exists: not a list file?
        data.ListFileSource(lf, tmp_path)
    (tmp_path / "c.png").write_bytes(b"")
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


# ---------------------------------------------------------------- more modes and decode errors


def test_palette_transparency_float_and_16bit_tiff(tmp_path):
    src = _photo().resize((40, 30))
    d = tmp_path / "c"
    d.mkdir()
    pal = src.convert("P", palette=Image.ADAPTIVE, colors=16)
    key = int(np.asarray(pal)[0, 0])
    pal.save(d / "t.gif", transparency=key)  # palette entry `key` is transparent
    grey = np.asarray(src.convert("L"))
    Image.fromarray(grey.astype(np.float32) / 255.0, "F").save(d / "f.tiff")
    Image.fromarray(grey.astype(np.uint16) * 257).save(d / "w.tif")
    s = data.FolderSource(tmp_path)
    names = [p.rsplit("/", 1)[1] for p in (x.ident for x in s.samples)]
    assert names == ["f.tiff", "t.gif", "w.tif"]  # sorted, deterministic
    gif = np.asarray(s.load(1))
    transparent = np.asarray(Image.open(d / "t.gif")) == key
    assert transparent.any() and (gif[transparent] == 255).all()  # composited on white
    for k in (0, 2):
        out = s.load(k)
        assert out.mode == "RGB"
        np.testing.assert_allclose(np.asarray(out)[..., 1], grey, atol=1)


def test_to_rgb_alpha_and_wide_modes_in_memory():
    la = Image.merge("LA", (Image.new("L", (2, 1), 0), Image.frombytes("L", (2, 1), bytes([255, 0]))))
    assert np.asarray(data.to_rgb(la)).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([10, 20, 30] * 256)
    pa = pal.convert("PA")
    pa.putalpha(Image.frombytes("L", (2, 1), bytes([255, 0])))
    assert np.asarray(data.to_rgb(pa)).tolist() == [[[10, 20, 30], [255, 255, 255]]]
    dark = Image.fromarray(np.full((2, 2), 1000, np.int32), "I")  # 16-bit data held in mode I: fixed 0..65535 scale
    assert np.asarray(data.to_rgb(dark)).max() == round(1000 / 65535 * 255)
    small = Image.fromarray(np.full((2, 2), 100, np.int32), "I")  # 8-bit range stays as is
    assert np.asarray(data.to_rgb(small)).max() == 100
    assert data.to_rgb(Image.new("CMYK", (3, 3), (0, 255, 255, 0))).getpixel((1, 1)) == (255, 0, 0)


def test_open_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found") as e:
        data.open_image(tmp_path / "missing.png")
    assert e.value.ident == str(tmp_path / "missing.png")
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageDecodeError, match="dir.jpg"):
        data.open_image(tmp_path / "dir.jpg")
    png = tmp_path / "cut.png"
    _photo().resize((64, 64)).save(png)
    png.write_bytes(png.read_bytes()[:300])
    with pytest.raises(ImageDecodeError, match="cut.png"):
        data.open_image(png)


# ---------------------------------------------------------------- folder and list sources


def test_folder_labels_nested_and_given_classes(tmp_path):
    img = _photo().resize((8, 8))
    for rel in ("b/x/1.png", "b/2.JPG", "a/3.png", ".hidden/4.png", "a/notes.txt"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        img.save(p, format="PNG") if p.suffix != ".txt" else p.write_text("x")
    s = data.FolderSource(tmp_path)
    assert s.class_names == ["a", "b"]
    assert [(x.ident[len(str(tmp_path)) + 1 :], x.label) for x in s.samples] == [("a/3.png", 0), ("b/2.JPG", 1), ("b/x/1.png", 1)]
    t = data.FolderSource(tmp_path, classes=["b", "a", "z"])  # a given class list fixes the label order
    assert sorted((x.ident[-5:], x.label) for x in t.samples) == [("1.png", 0), ("2.JPG", 0), ("3.png", 1)]
    only_b = data.FolderSource(tmp_path, classes=["b"])
    assert {x.label for x in only_b.samples} == {0} and len(only_b) == 2
    with pytest.raises(DataSourceError, match="class folder .*b holds no image file"):  # b has no .txt (issue 23)
        data.FolderSource(tmp_path, extensions=(".txt",))
    assert len(data.FolderSource(tmp_path, extensions=(".txt",), skip_empty_classes=True)) == 1


def test_list_file_label_range_and_absolute_paths(tmp_path):
    lf = tmp_path / "l.txt"
    _photo().save(tmp_path / "p.jpg")
    lf.write_text(f"  p.jpg 1  \n{tmp_path / 'p.jpg'}\n")
    s = data.ListFileSource(lf, tmp_path, class_names=["x", "y"])
    assert [x.ident for x in s.samples] == [str(tmp_path / "p.jpg")] * 2 and s.load(1).mode == "RGB"
    lf.write_text("# header\np.jpg 2\n")
    with pytest.raises(DataSourceError, match=r"l.txt:2: label 2 out of range"):
        data.ListFileSource(lf, tmp_path, class_names=["x", "y"])
    lf.write_text("p.jpg -3\n")
    with pytest.raises(DataSourceError, match="l.txt:1"):
        data.ListFileSource(lf, tmp_path)
    lf.write_text("# only a comment\n\n")
    with pytest.raises(DataSourceError, match="lists no images"):
        data.ListFileSource(lf, tmp_path)
    with pytest.raises(DataSourceError, match="does not exist"):
        data.ListFileSource(tmp_path / "none.txt", tmp_path)
    with pytest.raises(DataSourceError, match="does not exist"):
        data.ListFileSource(lf, tmp_path / "no-root")


def test_file_source_fingerprints(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    img = _photo().resize((8, 8))
    for k in range(3):
        img.save(d / f"{k}.png")
    fp = data.FolderSource(tmp_path).fingerprint()
    assert data.FolderSource(tmp_path).fingerprint() == fp  # rebuilt: same
    img.save(d / "3.png")
    fp4 = data.FolderSource(tmp_path).fingerprint()
    assert fp4 != fp
    (d / "3.png").rename(d / "4.png")
    assert data.FolderSource(tmp_path).fingerprint() not in (fp, fp4)
    lf = tmp_path / "l.txt"
    lf.write_text("c/0.png 0\nc/1.png 1\n")
    a = data.ListFileSource(lf, tmp_path).fingerprint()
    lf.write_text("# reordered comments do not matter\nc/0.png 0\n\nc/1.png 1\n")
    assert data.ListFileSource(lf, tmp_path).fingerprint() == a
    lf.write_text("c/0.png 0\nc/1.png 0\n")
    assert data.ListFileSource(lf, tmp_path).fingerprint() != a


# ---------------------------------------------------------------- packaged sets, IDX, arrays


def test_fashion_dir_from_env_and_truncated_idx(tmp_path, monkeypatch):
    real = data.fashion_mnist("test")
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / f).symlink_to(f"/usr/share/datasets/fashion-mnist/{f}")
    monkeypatch.setenv("TAGOOD_FASHION_MNIST", str(tmp_path))
    viaenv = data.fashion_mnist("test")
    assert viaenv.fingerprint() == real.fingerprint() and len(viaenv) == 10000
    assert np.bincount(viaenv.labels).tolist() == [1000] * 10
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (2).to_bytes(4, "big") * 2
                                                 + bytes(7))
    (bad / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes(5))
    with pytest.raises(DataSourceError, match="truncated"):
        data.fashion_mnist("test", root=bad)
    with pytest.raises(ValueError, match="split"):
        data.fashion_mnist("val")


def test_read_idx_roundtrip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in a.shape) + a.tobytes())
    np.testing.assert_array_equal(data.read_idx(p), a)


def test_array_source_validation_and_rgb():
    with pytest.raises(DataSourceError, match="uint8"):
        data.ArraySource(np.zeros((2, 4, 4), np.float32), [0, 1], "f")
    with pytest.raises(DataSourceError, match="labels"):
        data.ArraySource(np.zeros((2, 4, 4), np.uint8), [0], "f")
    rgb = np.random.default_rng(0).integers(0, 256, (3, 5, 6, 3), dtype=np.uint8)
    s = data.ArraySource(rgb, [0, 0, 1], "rgb")
    np.testing.assert_array_equal(np.asarray(s.load(2)), rgb[2])
    assert s.samples[2].ident == "rgb:2"
    digits = data.sklearn_digits()
    assert digits.images.shape == (1797, 8, 8) and digits.images.min() == 0


# ---------------------------------------------------------------- subsets (property-based)


_labels = st.lists(st.integers(-1, 4), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(labels=_labels, n=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_subsample_per_class_properties(labels, n, seed):
    src = data.ArraySource(np.zeros((len(labels), 2, 2), np.uint8), labels, "p")
    lab = np.array(labels)
    if not (lab >= 0).any():
        with pytest.raises(DataSourceError):
            data.subsample_per_class(src, n, seed=seed)
        return
    sub = data.subsample_per_class(src, n, seed=seed)
    idx = sub.indices
    assert np.all(np.diff(idx) > 0)  # order stable, no repeats
    assert [s.label for s in sub.samples] == lab[idx].tolist()
    for c in np.unique(lab[lab >= 0]):
        assert (lab[idx] == c).sum() == min(n, (lab == c).sum())
    assert (lab[idx] >= 0).all()
    again = data.subsample_per_class(src, n, seed=seed)
    assert again.indices.tolist() == idx.tolist() and again.fingerprint() == sub.fingerprint()


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 50), n=st.integers(1, 60), seed=st.integers(0, 2**16))
def test_subsample_properties(size, n, seed):
    src = data.ArraySource(np.zeros((size, 2, 2), np.uint8), [0] * size, "p")
    sub = data.subsample(src, n, seed=seed)
    assert len(sub) == min(n, size)
    ids = [s.ident for s in sub.samples]
    assert len(set(ids)) == len(ids) and ids == sorted(ids, key=lambda x: int(x.split(":")[1]))
    assert [s.ident for s in data.subsample(src, n, seed=seed).samples] == ids


def test_small_class_warns_and_takes_all(fashion_test, caplog):
    few = data.SubsetSource(fashion_test, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    counts = np.bincount([s.label for s in few.samples], minlength=10)
    with caplog.at_level("WARNING", logger="tagood.data.subset"):
        sub = data.subsample_per_class(few, 2, seed=0, classes=[int(np.argmax(counts)), int(np.argmin(counts))])
    assert "taking all" in caplog.text
    assert len(sub) == min(2, counts.max()) + min(2, counts.min())


def test_select_classes_relabels_in_given_order(fashion_test):
    s = data.select_classes(fashion_test, [7, 2])
    assert s.class_names == ["Sneaker", "Pullover"]
    orig = {s_.ident: s_.label for s_ in fashion_test.samples}
    assert all({7: 0, 2: 1}[orig[x.ident]] == x.label for x in s.samples) and len(s) == 2000
    np.testing.assert_array_equal(np.asarray(s.load(0)), np.asarray(fashion_test.load(int(s.indices[0]))))
    with pytest.raises(DataSourceError, match="no samples"):
        data.select_classes(data.ArraySource(np.zeros((2, 2, 2), np.uint8), [0, 1], "t"), [5])


def test_subset_fingerprint_depends_on_parent_and_indices():
    imgs = np.zeros((4, 3, 3), np.uint8)
    p1 = data.ArraySource(imgs, [0, 1, 0, 1], "x")
    p2 = data.ArraySource(imgs + 1, [0, 1, 0, 1], "x")
    a = data.SubsetSource(p1, [0, 2]).fingerprint()
    assert data.SubsetSource(p1, [0, 2]).fingerprint() == a
    assert data.SubsetSource(p2, [0, 2]).fingerprint() != a  # parent content changed
    assert data.SubsetSource(p1, [2, 0]).fingerprint() != a  # order is part of the identity
    assert data.SubsetSource(p1, [0, 2], labels=[1, 1]).fingerprint() != a
    with pytest.raises(DataSourceError, match="out of range"):
        data.SubsetSource(p1, [4])
    with pytest.raises(DataSourceError, match="empty"):
        data.SubsetSource(p1, [])
