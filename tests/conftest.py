"""Shared fixtures: the real EfficientNet-Lite0 backbone (ONNX export cached per session) and real images."""

from __future__ import annotations

import os

import pytest
import torch

THREADS = max(1, min(2, os.cpu_count() or 1))
torch.set_num_threads(THREADS)

#: what ``tagood.runtime.threads.configure`` (every in-process CLI call) writes to the environment for child processes
_CONFIGURED_ENV = ("TAGOOD_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")


@pytest.fixture(autouse=True)
def _thread_settings_do_not_leak():
    """Each test starts from the same thread settings: an in-process ``tagood`` CLI call sets the thread budget and,
    on a busy machine, ``OMP_WAIT_POLICY=PASSIVE`` in ``os.environ``, which every later test's subprocesses
    inherited (that made a torchrun exit abort appear in some orders of the suite only)."""
    saved = {k: os.environ.get(k) for k in _CONFIGURED_ENV}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)


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
