"""Data-parallel extraction over a device list (`--device cuda:0,cuda:1`): one replica per device, batches
split between them, outputs joined in order. Exercised here with CPU replicas ("cpu,cpu"): the splitting,
threading and joining are the same code a GPU list runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from image_folders import fashion_folder
from tagood.backbones.multi import MultiDeviceBackbone, join_outputs, parse_devices, primary_device
from tagood.backbones.ram import load_ram
from tagood.bench.models import build_backbone
from tagood.cache import CacheReader
from tagood.cli import app
from tagood.data import FolderSource
from tagood.extract import extract_split
from tagood.types import ModelOutput
from tiny_models import write_tiny_ram


def test_parse_devices() -> None:
    assert parse_devices("cpu") == ["cpu"]
    assert parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    assert primary_device("cuda:1,cuda:0") == "cuda:1"
    with pytest.raises(ValueError, match="bad device list"):
        parse_devices("cuda:0,,cuda:1")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            parse_devices("cuda:all")


def test_join_outputs_keeps_order_fields_and_extra() -> None:
    a = ModelOutput(features=np.ones((2, 3)), tag_ids=np.array([[1], [2]]), extra={"x": np.zeros((2, 4))})
    b = ModelOutput(features=2 * np.ones((1, 3)), tag_ids=np.array([[3]]), extra={"x": np.ones((1, 4))})
    j = join_outputs([a, b])
    assert j.present() == ["features", "tag_ids"] and j.tokens is None
    np.testing.assert_array_equal(j.features[:, 0], [1, 1, 2])
    np.testing.assert_array_equal(j.tag_ids[:, 0], [1, 2, 3])
    np.testing.assert_array_equal(j.extra["x"][:, 0], [0, 0, 1])


@pytest.fixture(scope="module")
def ram_files(tmp_path_factory):
    return write_tiny_ram(tmp_path_factory.mktemp("ram-multi"))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_ram_replicas_equal_one_device(ram_files, n: int) -> None:
    one = load_ram(ram_files.checkpoint, ram_files.tag_list, ram_files.thresholds, top_k_tags=4, cross_attention=True)
    multi = build_backbone({"name": "ram", "checkpoint": str(ram_files.checkpoint), "tag_list": str(ram_files.tag_list),
                            "thresholds": str(ram_files.thresholds), "top_k_tags": 4, "cross_attention": True}, device="cpu,cpu,cpu")
    assert isinstance(multi, MultiDeviceBackbone) and multi.n_devices == 3
    assert (multi.id, multi.weights_hash, multi.transform_id) == (one.id, one.weights_hash, one.transform_id)
    assert multi.tag_names == one.tag_names and multi.attend == multi.replicas[0].attend  # the rest from replica 0
    x = np.random.default_rng(n).standard_normal((n, 3, 64, 64)).astype(np.float32)
    got, want = multi.forward(x), one.forward(x)
    assert got.present() == want.present()
    for f in want.present():
        np.testing.assert_allclose(getattr(got, f), getattr(want, f), atol=2e-5, rtol=1e-5, err_msg=f)
    np.testing.assert_allclose(got.extra["cross_attention"], want.extra["cross_attention"], atol=2e-5)
    multi.close()


def test_replicas_must_match(ram_files) -> None:
    a = load_ram(ram_files.checkpoint, ram_files.tag_list, top_k_tags=4)
    b = load_ram(ram_files.checkpoint, ram_files.tag_list, top_k_tags=4, resize="crop")
    with pytest.raises(ValueError, match="same backbone"):
        MultiDeviceBackbone([a, b])


def test_extraction_on_a_device_list_fills_the_same_cache(tmp_path, tagood_home) -> None:
    """Real EfficientNet-Lite0 on real images: the same cache entry (key) and the same values as one device,
    and the CLI takes the list."""
    fashion_folder(tmp_path / "imgs", {"bag": 8, "sandal": 5}, 9)
    src = FolderSource(tmp_path / "imgs")
    one = extract_split(src, build_backbone({}, device="cpu"), tmp_path / "c1", split="s", batch_size=4, progress=False)
    multi_bb = build_backbone({}, device="cpu,cpu")
    two = extract_split(src, multi_bb, tmp_path / "c2", split="s", batch_size=7, progress=False)
    assert one.dir.name == two.dir.name  # same cache key
    fields = ["features", "logits", "tokens", "tag_probs", "tag_attention"]
    a, b = one.to_featureset(fields), two.to_featureset(fields)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(b.features, a.features, atol=1e-3)
    np.testing.assert_allclose(b.tokens.values, a.tokens.values, atol=1e-3)
    np.testing.assert_array_equal(b.tag_attention.ids, a.tag_attention.ids)

    r = CliRunner().invoke(app, ["extract", str(tmp_path / "imgs"), "--cache", str(tmp_path / "c3"), "--device", "cpu,cpu",
                                 "--batch-size", "3"], terminal_width=200)
    assert r.exit_code == 0, r.output
    three = CacheReader(next((tmp_path / "c3").glob("images-*")))
    np.testing.assert_allclose(three.to_featureset(["features"]).features, a.features, atol=1e-3)


def test_benchmark_run_on_a_device_list_scores_like_one_device(tmp_path, tagood_home, backbone) -> None:
    from tagood.bench import runner
    from tagood.bench.config import builtin

    cfg = builtin("fashion", quick=True)
    cfg.ood = {"mnist": cfg.ood["mnist"]}
    _, one = runner.run(cfg, cache_root=tmp_path / "c1", methods=["msp", "knn"], progress=False, backbone=backbone)
    _, two = runner.run(cfg, cache_root=tmp_path / "c2", methods=["msp", "knn"], progress=False, device="cpu,cpu")
    assert two.backbone.n_devices == 2 and two.context.device == "cpu" and not two.errors
    for m in ("msp", "knn"):
        np.testing.assert_allclose(two.scores[m]["mnist"], one.scores[m]["mnist"], atol=1e-4, err_msg=m)


def test_clip_dual_encoder_on_a_device_list_equals_one_device(tmp_path) -> None:
    """CLIP for the vision-language methods on `cpu,cpu`: image and patch embeddings split between the replicas
    equal one device's; texts go to the first replica."""
    pytest.importorskip("transformers")
    from tiny_models import write_tiny_clip

    from tagood.vlm import build_dual_encoder

    path = write_tiny_clip(tmp_path / "clip")
    one = build_dual_encoder({"name": "clip", "path": str(path)}, device="cpu")
    two = build_dual_encoder({"name": "clip", "path": str(path)}, device="cpu,cpu")
    assert two.encoder.n_devices == 2 and two.id == one.id and two.batch_size == 2 * one.batch_size
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    (i1, p1), (i2, p2) = one.encode_images_and_patches(x), two.encode_images_and_patches(x)
    np.testing.assert_allclose(i2, i1, atol=1e-5)
    np.testing.assert_allclose(p2, p1, atol=1e-5)
    np.testing.assert_allclose(two.encode_images(x), one.encode_images(x), atol=1e-5)
    np.testing.assert_allclose(two.encode_texts(["a photo of a cat."]), one.encode_texts(["a photo of a cat."]), atol=1e-6)
