"""Data-parallel extraction on several devices: one backbone replica per device, each batch split
between them.

``--device cuda:0,cuda:1`` (or ``cuda:all``) makes :func:`tagood.bench.models.build_backbone` load
one replica per device and wrap them in :class:`MultiDeviceBackbone`. A batch is cut into one
contiguous part per replica; the parts run at the same time in threads (torch releases the GIL
while a device computes) and their outputs are joined in order, so the feature cache is the same
as with one device (same cache key: same architecture, weights and preprocessing). Everything
after extraction (IND head, detector training, ODIN's gradients, the dual encoder) runs on the
first device, :func:`primary_device`, except a CLIP dual encoder's image passes, which are split the
same way (:class:`MultiDeviceEncoder`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from tagood.types import ModelOutput

log = logging.getLogger(__name__)


def parse_devices(device: str) -> list[str]:
    """``"cuda:0,cuda:1"`` -> ``["cuda:0", "cuda:1"]``; ``"cuda:all"`` -> every visible CUDA device;
    a single device -> a list of one. Raises ``ValueError`` for an empty entry or no visible GPU."""
    parts = [p.strip() for p in str(device).split(",")]
    if any(not p for p in parts):
        raise ValueError(f"bad device list {device!r}: use e.g. 'cuda:0,cuda:1' or 'cuda:all'")
    if parts == ["cuda:all"]:
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise ValueError("--device cuda:all: no CUDA device is visible")
        return [f"cuda:{i}" for i in range(n)]
    return parts


def primary_device(device: str) -> str:
    """The device that runs everything but the extraction: the first of a device list."""
    return parse_devices(device)[0]


class MultiDeviceBackbone:
    """The :class:`tagood.types.Backbone` protocol over replicas of one backbone on several devices.

    Attributes other than the protocol's (``tag_names``, ``cam``, ``attend``, ``tag_thresholds``,
    ``torch_module``, ...) come from the first replica."""

    #: what the replicas are, and the attributes they must share (one model on several devices)
    KIND, SAME = "backbone", ("id", "weights_hash", "transform_id", "outputs")

    def __init__(self, replicas: Sequence[Any]) -> None:
        if not replicas:
            raise ValueError(f"{type(self).__name__} needs at least one replica")
        if any(self._identity(r) != self._identity(replicas[0]) for r in replicas[1:]):
            raise ValueError(f"{type(self).__name__} replicas must be the same {self.KIND} ({', '.join(self.SAME)})")
        self.replicas = list(replicas)
        self._pool = ThreadPoolExecutor(max_workers=len(self.replicas), thread_name_prefix="tagood-device")

    def _identity(self, replica: Any) -> tuple[Any, ...]:
        return tuple(tuple(v) if isinstance(v, list) else v for v in (getattr(replica, a, None) for a in self.SAME))

    @property
    def n_devices(self) -> int:
        return len(self.replicas)

    def __getattr__(self, name: str) -> Any:
        if name == "replicas":  # not set yet (during unpickling / a failed __init__)
            raise AttributeError(name)
        return getattr(self.replicas[0], name)

    def preprocess(self, image: Any) -> np.ndarray:
        return self.replicas[0].preprocess(image)

    def _split(self, method: str, batch: Any, **kw: Any) -> list[Any]:
        """``replica.method(part, **kw)`` for contiguous parts of ``batch``, one per replica, run at the
        same time; the results in batch order."""
        bounds = np.linspace(0, len(batch), min(len(self.replicas), max(len(batch), 1)) + 1).astype(int)
        jobs = [self._pool.submit(getattr(r, method), batch[a:b], **kw)
                for r, a, b in zip(self.replicas, bounds[:-1], bounds[1:]) if b > a]
        return [j.result() for j in jobs]

    def forward(self, batch: np.ndarray) -> ModelOutput:
        """``(B,3,H,W)`` -> the replicas' outputs for contiguous parts of the batch, joined in order."""
        outs = self._split("forward", batch)
        return outs[0] if len(outs) == 1 else join_outputs(outs)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class MultiDeviceEncoder(MultiDeviceBackbone):
    """A dual encoder (:class:`tagood.types.DualEncoder`) over replicas on several devices: image batches
    (``encode_images``, ``patch_tokens``, ``encode_images_and_patches``) are split between them; texts
    and everything else go to the first replica."""

    KIND, SAME = "encoder", ("id", "weights_hash", "transform_id")

    def encode_images(self, batch: Any) -> np.ndarray:
        return np.concatenate(self._split("encode_images", batch))

    def patch_tokens(self, batch: Any, **kw: Any) -> np.ndarray:
        return np.concatenate(self._split("patch_tokens", batch, **kw))

    def encode_images_and_patches(self, batch: Any, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        parts = self._split("encode_images_and_patches", batch, **kw)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def join_outputs(outs: Sequence[ModelOutput]) -> ModelOutput:
    """Concatenate ModelOutputs of consecutive parts of a batch along the batch axis (fields and ``extra``)."""
    def cat(values: list[Any]) -> Any:
        if values[0] is None:
            return None
        return np.concatenate([np.asarray(v) for v in values])

    fields = {name: cat([getattr(o, name) for o in outs]) for name in outs[0].present()}
    extra = {k: cat([o.extra[k] for o in outs]) for k in outs[0].extra}
    return ModelOutput(**fields, extra=extra)


def build_on_devices(build: Callable[[str], Any], device: str, wrap: Callable[[list[Any]], Any] = MultiDeviceBackbone) -> Any:
    """``build(device)`` for one device, or ``wrap`` (:class:`MultiDeviceBackbone`, :class:`MultiDeviceEncoder`)
    of one replica per device."""
    devices = parse_devices(device)
    if len(devices) == 1:
        return build(devices[0])
    if len(set(devices)) != len(devices):
        log.warning("device list %s names a device twice: its replicas share that device", devices)
    log.info("loading one replica on each of %s", ", ".join(devices))
    return wrap([build(d) for d in devices])
