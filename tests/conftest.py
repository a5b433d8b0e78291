"""Shared fixtures: the real EfficientNet-Lite0 backbone (ONNX export cached per session) and real images."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tagood_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("tagood_home")
    os.environ["TAGOOD_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def backbone(tagood_home):
    from tagood.backbones.efficientnet import EfficientNetLite0

    return EfficientNetLite0(cache_dir=tagood_home / "onnx")


@pytest.fixture(scope="session")
def photos():
    from PIL import Image
    from sklearn.datasets import load_sample_image

    return {n: Image.fromarray(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")}
