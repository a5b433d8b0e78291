"""One device mechanism (issue 13): a process drives one device; several GPUs are one process each under
torchrun. A device list (``cuda:0,cuda:1``, ``cpu,cpu``) or ``cuda:all`` handed to the library's factories is a
``ValueError`` that names the torchrun command, raised before any model is loaded."""

from __future__ import annotations

import numpy as np
import pytest

from tagood.backbones.factory import build_backbone, build_dual_encoder, single_device
from tiny_models import write_tiny_ram

LISTS = ["cpu,cpu", "cuda:0,cuda:1", "cuda:0, cuda:1", "cuda:all", "cuda:0,", ""]


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "mps", " cpu "])
def test_one_device_passes(device: str) -> None:
    assert single_device(device) == device.strip()


@pytest.mark.parametrize("device", LISTS)
def test_device_lists_point_to_torchrun(device: str) -> None:
    with pytest.raises(ValueError, match=r"torchrun --nproc-per-node N -m tagood") as e:
        single_device(device)
    assert repr(device) in str(e.value) and "one process drives one device" in str(e.value)


@pytest.mark.parametrize("device", ["cpu,cpu", "cuda:all"])
def test_factories_refuse_a_device_list_before_loading(tmp_path, device: str) -> None:
    """A real tiny RAM checkpoint on disk: the list is refused, nothing is loaded (a spec pointing to a missing
    file would fail later with another error)."""
    files = write_tiny_ram(tmp_path / "ram")
    spec = {"name": "ram", "checkpoint": str(files.checkpoint), "tag_list": str(files.tag_list)}
    with pytest.raises(ValueError, match="torchrun"):
        build_backbone(spec, device=device)
    with pytest.raises(ValueError, match="torchrun"):
        build_backbone({"name": "ram", "checkpoint": str(tmp_path / "missing.pth")}, device=device)
    with pytest.raises(ValueError, match="torchrun"):
        build_dual_encoder({"name": "clip", "path": str(tmp_path / "no-clip")}, device=device)
    bb = build_backbone(spec, device="cpu")  # the same spec on one device loads and runs
    out = bb.forward(np.zeros((1, 3, 64, 64), np.float32))
    assert out.tag_probs is not None and out.tag_probs.shape[0] == 1


def test_thread_replica_module_is_gone() -> None:
    import importlib.util

    import tagood.backbones.factory as factory

    assert importlib.util.find_spec("tagood.backbones.multi") is None
    assert not [n for n in dir(factory) if "MultiDevice" in n or n == "build_on_devices"]
