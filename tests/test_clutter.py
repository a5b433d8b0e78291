"""Jigsaw pseudo-OOD images and cluttered scenes, on real Fashion-MNIST, MNIST-5k and photo data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tagood import data
from tagood.data import DataSourceError


@pytest.fixture(scope="module")
def fashion_test():
    return data.fashion_mnist("test")


@pytest.fixture(scope="module")
def splits():
    return data.fashion_clutter_splits(4, 3, 8, seed=0)


def _patches(a: np.ndarray, g: int) -> list[bytes]:
    ph, pw = a.shape[0] // g, a.shape[1] // g
    return sorted(a[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw].tobytes() for r in range(g) for c in range(g))


# ---------------------------------------------------------------- jigsaw


def test_jigsaw_is_a_deterministic_patch_permutation(fashion_test):
    j = data.JigsawSource(data.subsample(fashion_test, 5, seed=0), grid=3, seed=0)
    orig = np.asarray(j.parent.load(2).resize((27, 27), Image.BILINEAR))  # 28 -> 27, a multiple of 3
    out = np.asarray(j.load(2))
    assert out.shape == (27, 27, 3)
    assert _patches(out, 3) == _patches(orig, 3) and not np.array_equal(out, orig)
    np.testing.assert_array_equal(out, np.asarray(j.load(2)))
    rebuilt = data.JigsawSource(data.subsample(fashion_test, 5, seed=0), grid=3, seed=0)
    np.testing.assert_array_equal(out, np.asarray(rebuilt.load(2)))
    assert rebuilt.fingerprint() == j.fingerprint()
    assert {s.label for s in j.samples} == {-1} and len(j) == 5


def test_jigsaw_on_a_photo_grids_and_seeds(tmp_path):
    from sklearn.datasets import load_sample_image

    (tmp_path / "c").mkdir()
    Image.fromarray(load_sample_image("china.jpg")).save(tmp_path / "c" / "china.png")  # 640x427
    src = data.FolderSource(tmp_path, min_size=None)
    photo = np.asarray(src.load(0))
    for g in (2, 4):
        out = np.asarray(data.JigsawSource(src, grid=g).load(0))
        assert out.shape == (424 if g == 4 else 426, 640, 3)
        ref = (photo[: out.shape[0]] if out.shape[0] == photo.shape[0]
               else np.asarray(src.load(0).resize((640, out.shape[0]), Image.BILINEAR)))
        assert _patches(out, g) == _patches(ref, g) and not np.array_equal(out, ref)
    a, b = data.JigsawSource(src, seed=0), data.JigsawSource(src, seed=1)
    assert a.fingerprint() != b.fingerprint() != data.JigsawSource(src, grid=4, seed=1).fingerprint()
    with pytest.raises(ValueError, match="grid"):
        data.JigsawSource(src, grid=1)


def test_jigsaw_permutations_never_identity_and_vary():
    src = data.ArraySource(np.zeros((300, 6, 6), np.uint8), [0] * 300, "z")
    j = data.JigsawSource(src, grid=2, seed=3)  # 4! = 24 permutations: identity would come up often
    perms = [tuple(j.permutation(i)) for i in range(300)]
    assert (0, 1, 2, 3) not in perms and len(set(perms)) == 23


# ---------------------------------------------------------------- clutter


def test_clutter_splits_sizes_labels_and_disjoint_sources(splits):
    s = splits
    assert len(s["train"]) == 24 and len(s["test"]) == 18 and len(s["clutter-near"]) == 8 and len(s["clutter-only"]) == 8
    assert [x.label for x in s["train"].samples].count(0) == 4 and {x.label for x in s["train"].samples} == set(range(6))
    assert s["train"].class_names == data.FASHION_CLASSES[:6] == s["test"].class_names
    assert {x.label for x in s["clutter-near"].samples} == {-1} == {x.label for x in s["clutter-only"].samples}
    assert all(":fashion-mnist-train:" in x.ident for x in s["train"].samples)
    assert all(":fashion-mnist-test:" in x.ident for x in s["test"].samples + s["clutter-near"].samples)
    near_classes = {data.fashion_mnist("test").samples[int(x.ident.rsplit(":", 1)[1])].label for x in s["clutter-near"].samples}
    assert near_classes == {6, 7, 8, 9}
    # train and test clutter come from disjoint MNIST images
    assert s["train"].clutter.indices.max() < s["test"].clutter.indices.min()
    assert len({v.fingerprint() for v in s.values()}) == 4


def test_object_box_holds_the_object_and_clutter_stays_outside(splits):
    t = splits["test"]
    for i in range(len(t)):
        a = np.asarray(t.load(i))
        assert a.shape == (224, 224, 3) and (a[..., 0] == a[..., 1]).all()  # grey items on black
        lay = t.layout(i)
        x0, y0, x1, y1 = lay["object"]
        assert 0.45 * 224 - 1 <= x1 - x0 <= 0.7 * 224 and x1 - x0 == y1 - y0
        item = np.asarray(t.objects.load(i).convert("L").resize((x1 - x0, y1 - y0), Image.BILINEAR))
        np.testing.assert_allclose(a[y0:y1, x0:x1, 0], item, atol=1)  # alpha = intensity on black: exact copy
        assert 3 <= len(lay["clutter"]) <= 6
        ink = a[..., 0] > 0
        covered = np.zeros_like(ink)
        covered[y0:y1, x0:x1] = True
        for _, box in lay["clutter"]:
            assert box[2] <= x0 or box[0] >= x1 or box[3] <= y0 or box[1] >= y1
            covered[box[1] : box[3], box[0] : box[2]] = True
        assert not (ink & ~covered).any()  # nothing drawn outside the object and clutter boxes
        outside = np.ones_like(ink)
        outside[y0:y1, x0:x1] = False
        assert ink[outside].any()  # the clutter is visible


def test_clutter_only_has_no_object(splits):
    only = splits["clutter-only"]
    for i in range(len(only)):
        lay = only.layout(i)
        assert lay["object"] is None and lay["clutter"]
        a = np.asarray(only.load(i))[..., 0]
        mask = np.zeros(a.shape, bool)
        for _j, (x0, y0, x1, y1) in lay["clutter"]:
            mask[y0:y1, x0:x1] = True
        assert a.max() > 0 and not (a[~mask] > 0).any()
        # every clutter item is an MNIST digit from the test part
        j, (x0, y0, x1, y1) = lay["clutter"][-1]
        digit = np.asarray(only.clutter.load(j).convert("L").resize((x1 - x0, y1 - y0), Image.BILINEAR))
        assert np.array_equal(a[y0:y1, x0:x1] >= digit, np.ones_like(digit, bool))  # later items paint over earlier ones


def test_clutter_is_deterministic_and_seeded(splits):
    again = data.fashion_clutter_splits(4, 3, 8, seed=0)
    other = data.fashion_clutter_splits(4, 3, 8, seed=1)
    for k in ("test", "clutter-only"):
        assert again[k].fingerprint() == splits[k].fingerprint() != other[k].fingerprint()
        np.testing.assert_array_equal(np.asarray(again[k].load(5)), np.asarray(splits[k].load(5)))
        assert again[k].layout(5) == splits[k].layout(5) != other[k].layout(5)
    assert splits["test"].layout(0) != splits["test"].layout(1)


def test_colour_tints_keep_layout_and_alpha(splits):
    t = splits["test"]
    c = data.ClutterSource(t.objects, t.clutter, len(t), seed=t.seed, colour=True, name=t.name)
    assert c.layout(2) == t.layout(2) and c.fingerprint() != t.fingerprint()
    grey, col = np.asarray(t.load(2)).astype(int), np.asarray(c.load(2)).astype(int)
    assert ((grey[..., 0] > 0) == (col.max(axis=2) > 0)).mean() > 0.99  # same ink, now coloured
    x0, y0, x1, y1 = c.layout(2)["object"]
    obj = col[y0:y1, x0:x1].reshape(-1, 3)
    obj = obj[obj.max(axis=1) > 100]
    assert (obj.max(axis=1) - obj.min(axis=1)).mean() > 30  # saturated, not grey
    np.testing.assert_array_equal(col, np.asarray(c.load(2)).astype(int))


def test_rgb_objects_pasted_opaque(tmp_path, splits):
    from sklearn.datasets import load_sample_image

    (tmp_path / "c").mkdir()
    Image.fromarray(load_sample_image("flower.jpg")).resize((64, 64)).save(tmp_path / "c" / "f.png")
    objs = data.FolderSource(tmp_path)
    c = data.ClutterSource(objs, splits["test"].clutter, 3, seed=0, canvas=128)
    assert c.class_names == ["c"] and [s.label for s in c.samples] == [0, 0, 0]
    x0, y0, x1, y1 = c.layout(1)["object"]
    got = np.asarray(c.load(1))[y0:y1, x0:x1]
    want = np.asarray(objs.load(0).resize((x1 - x0, y1 - y0), Image.BILINEAR))
    np.testing.assert_array_equal(got, want)


def test_clutter_argument_errors(splits):
    cl = splits["test"].clutter
    with pytest.raises(DataSourceError, match="n must be"):
        data.ClutterSource(None, cl, 0)
    with pytest.raises(ValueError, match="object_scale"):
        data.ClutterSource(None, cl, 2, object_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="n_clutter"):
        data.ClutterSource(None, cl, 2, n_clutter=(4, 2))
