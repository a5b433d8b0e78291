"""CLIP dual encoders (Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", ICML 2021) loaded from the user's disk.

Two checkpoint formats:

* a local Hugging Face ``CLIPModel`` directory (``config.json``, weights, tokenizer files and,
  when present, ``preprocessor_config.json``), loaded with ``transformers`` and
  ``local_files_only=True`` (never downloads);
* an open_clip checkpoint file plus its architecture name, only when the optional ``open_clip``
  package is importable (``pip install open_clip_torch``).

Both give a :class:`DualEncoder`: ``encode_images(batch) -> (B,E)`` and
``encode_texts(texts) -> (T,E)``, L2-normalised float32 numpy; ``logit_scale`` (the learned
temperature, 100 for the released OpenAI models); ``preprocess(image) -> (3,H,W)``; and
``patch_tokens(batch) -> (B,P,E)`` projected patch tokens (see :meth:`CLIPDualEncoder.patch_tokens`).
The vision-language OOD methods (MCM, GL-MCM, NegLabel, KR-NFT) build on this protocol; the dense
tagger over a text vocabulary is :class:`tagood.backbones.clip_tagger.CLIPDenseTagger`.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tagood.backbones.prompts import DEFAULT_TEMPLATE
from tagood.backbones.weights_hash import state_hash
from tagood.core.numeric import l2_normalize
from tagood.core.types import DualEncoder
from tagood.errors import CheckpointError
from tagood.runtime.optional import require
from tagood.runtime.progress import progress_bar

__all__ = ["CLIPDualEncoder", "CLIPLoadError", "ClipTransform", "DualEncoder", "OpenCLIPDualEncoder", "load_clip",
           "load_open_clip"]

log = logging.getLogger(__name__)

#: CLIP's image normalisation (openai/CLIP ``_transform``), RGB.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_PIL_RESAMPLE = {0: Image.Resampling.NEAREST, 1: Image.Resampling.LANCZOS, 2: Image.Resampling.BILINEAR,
                 3: Image.Resampling.BICUBIC, 4: Image.Resampling.BOX, 5: Image.Resampling.HAMMING}


class CLIPLoadError(CheckpointError):
    """A CLIP checkpoint could not be loaded; the message names the path and what to do."""


def _rgb(values: Any, key: str, path: Path) -> tuple[float, float, float]:
    """One float per RGB channel from the preprocessing config's ``key`` (``image_mean`` / ``image_std``)."""
    v = tuple(float(x) for x in values)
    if len(v) != 3:
        raise CLIPLoadError(f"{path}: {key} has {len(v)} values, not one per RGB channel; fix or delete the file")
    return v[0], v[1], v[2]


@dataclass(frozen=True)
class ClipTransform:
    """CLIP preprocessing: resize the shorter side to ``resize`` (bicubic by default), centre crop
    ``crop`` = (height, width), scale to [0,1], normalise with ``mean``/``std``."""

    resize: int = 224
    crop: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: int = 3  # PIL / HF code: 3 = bicubic
    center_crop: bool = True

    @property
    def id(self) -> str:
        """A string naming the exact transform (part of the feature-cache key)."""
        m = ",".join(f"{v:.4f}" for v in self.mean)
        s = ",".join(f"{v:.4f}" for v in self.std)
        crop = f"crop{self.crop[0]}x{self.crop[1]}" if self.center_crop else "nocrop"
        return f"rgb-short{self.resize}-r{self.resample}-{crop}-mean{m}-std{s}"

    @property
    def size(self) -> tuple[int, int]:
        """Output (height, width)."""
        return self.crop if self.center_crop else (self.resize, self.resize)

    @classmethod
    def from_preprocessor_config(cls, path: str | Path) -> ClipTransform:
        """Read a Hugging Face ``preprocessor_config.json`` (``size``, ``crop_size``, ``image_mean``,
        ``image_std``, ``resample``, ``do_center_crop``); missing keys keep CLIP's defaults."""
        path = Path(path)
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CLIPLoadError(f"cannot read the CLIP preprocessing config {path}: {e}; fix or delete the file") from e
        size = cfg.get("size", 224)
        if isinstance(size, dict):
            size = size.get("shortest_edge", size.get("height", 224))
        crop = cfg.get("crop_size", size)
        if isinstance(crop, dict):
            crop = (int(crop.get("height", size)), int(crop.get("width", size)))
        else:
            crop = (int(crop), int(crop))
        return cls(
            resize=int(size),
            crop=crop,
            mean=_rgb(cfg.get("image_mean", CLIP_MEAN), "image_mean", path),
            std=_rgb(cfg.get("image_std", CLIP_STD), "image_std", path),
            resample=int(cfg.get("resample", 3)),
            center_crop=bool(cfg.get("do_center_crop", True)),
        )

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 ``(3, H, W)``."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        # as openai/CLIP's torchvision transform: the long side is floored, the crop offset rounded
        # (Hugging Face's processor floors the offset: at most a one-pixel shift for odd margins)
        nw, nh = (self.resize, int(self.resize * h / w)) if w <= h else (int(self.resize * w / h), self.resize)
        img = image.resize((nw, nh), _PIL_RESAMPLE.get(self.resample, Image.Resampling.BICUBIC))
        if self.center_crop:
            ch, cw = self.crop
            left, top = round((nw - cw) / 2.0), round((nh - ch) / 2.0)
            img = img.crop((left, top, left + cw, top + ch))
        a: np.ndarray = np.asarray(img, dtype=np.float32) / 255.0
        a = (a - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return a.transpose(2, 0, 1).copy()


def vit_block_norm(h: torch.Tensor) -> torch.Tensor:
    """FeatureNorm (Yu et al., "Block Selection Method for Using Feature Norm in Out-of-Distribution
    Detection", CVPR 2023) of a ViT block output ``h (B, 1+P, C)``: over the P patch tokens (the
    spatial positions; the class token is left out), the L2 norm of each channel of ReLU(h),
    averaged over the C channels -> (B,)."""
    return torch.relu(h[:, 1:]).norm(dim=1).mean(dim=1).float()


def _as_tensor(batch: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(batch, dtype=np.float32) if not isinstance(batch, torch.Tensor) else batch)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a preprocessed image batch of shape (B,3,H,W), got {tuple(x.shape)}")
    return x.to(device=device, dtype=dtype)


class _EncoderIdentity:
    """``id`` / ``transform_id`` / ``logit_scale`` of a CLIP-family encoder holding ``name``, ``transform``, ``model``."""

    name: str
    transform: ClipTransform
    model: Any

    @property
    def id(self) -> str:
        """The model's name (``clip-hf:<dir>``, ``open_clip:<arch>``); with ``weights_hash`` and ``transform_id``
        it keys caches."""
        return self.name

    @property
    def transform_id(self) -> str:
        return self.transform.id

    @property
    def logit_scale(self) -> float:
        """exp(learned log temperature); 100 for the released OpenAI CLIP models."""
        return float(self.model.logit_scale.detach().exp().cpu())


class CLIPDualEncoder(_EncoderIdentity):
    """A Hugging Face ``CLIPModel`` as a :class:`DualEncoder` (inference only, batched, on ``device``).

    Build it with :meth:`from_pretrained` (a local directory) or from an in-memory model.
    """

    def __init__(self, model: Any, tokenizer: Any, transform: ClipTransform | None = None, device: str = "cpu",
                 batch_size: int = 64, name: str = "clip", weights_hash: str = "", dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.eval().to(device=self.device, dtype=dtype)
        self.tokenizer = tokenizer
        self.transform = transform or ClipTransform()
        self.batch_size = int(batch_size)
        self.name = name
        self.weights_hash = weights_hash or state_hash(self.model.state_dict())
        self.embed_dim = int(model.config.projection_dim)
        vc = model.config.vision_config
        self.patch_size = int(vc.patch_size)
        self.image_size = int(vc.image_size)
        self.max_text_len = int(model.config.text_config.max_position_embeddings)
        self._layer_takes_causal: bool | None = None

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", batch_size: int = 64,
                        dtype: torch.dtype = torch.float32) -> CLIPDualEncoder:
        """Load a local Hugging Face CLIP directory (``save_pretrained`` layout), never downloading.

        The tokenizer is read from the same directory; the preprocessing from its
        ``preprocessor_config.json`` when present, else CLIP's defaults (224, bicubic, CLIP mean/std).
        """
        tf = require("transformers", extra="clip", purpose="CLIP from a Hugging Face directory")
        AutoTokenizer, CLIPModel, CLIPVisionConfig = tf.AutoTokenizer, tf.CLIPModel, tf.CLIPVisionConfig

        p = Path(path)
        if not p.is_dir() or not (p / "config.json").is_file():
            raise CLIPLoadError(
                f"{p} is not a Hugging Face CLIP directory (no config.json); pass the folder written by "
                "CLIPModel.save_pretrained (e.g. a local copy of openai/clip-vit-base-patch16), or an open_clip "
                "checkpoint file together with its architecture name"
            )
        if not any(p.glob("*.safetensors")):  # refuse a pickle before transformers could unpickle it
            pickles = sorted(f.name for f in p.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
            raise CLIPLoadError(
                f"{p}: no model.safetensors" + (f"; the weights are only in {', '.join(pickles)}, a pickle file, which can run "
                                                "code when it is loaded" if pickles else "") +
                ". tagood reads CLIP weights from safetensors only: convert them once on a trusted machine "
                "(CLIPModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True))")
        try:  # use_safetensors=True: transformers never falls back to a pickled pytorch_model.bin
            model = CLIPModel.from_pretrained(str(p), local_files_only=True, use_safetensors=True)
        except Exception as e:  # noqa: BLE001 - safetensors' own SafetensorError is no OSError / ValueError
            if not isinstance(e, (OSError, ValueError, KeyError, TypeError, RuntimeError)) and \
                    type(e).__name__ != "SafetensorError":
                raise
            files = ", ".join(sorted(f.name for f in p.glob("*.safetensors")))
            raise CLIPLoadError(f"cannot load the CLIP model in {p} ({files}): {type(e).__name__}: {e}; the weights file "
                                "is damaged, empty or not a safetensors file: save the model again with "
                                "CLIPModel.save_pretrained(DIR, safe_serialization=True)") from e
        if not ((p / "tokenizer.json").is_file() or ((p / "vocab.json").is_file() and (p / "merges.txt").is_file())):
            raise CLIPLoadError(f"no CLIP tokenizer in {p} (tokenizer.json, or vocab.json + merges.txt); save the tokenizer "
                                "beside the model (CLIPTokenizer.save_pretrained into the same folder)")
        try:
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CLIPLoadError(
                f"cannot load the CLIP tokenizer in {p}: {e}; save the tokenizer beside the model "
                "(CLIPTokenizer.save_pretrained into the same folder)"
            ) from e
        pp = p / "preprocessor_config.json"
        vision = model.config.vision_config
        size = vision.image_size if isinstance(vision, CLIPVisionConfig) else None
        if not isinstance(size, int):
            raise CLIPLoadError(f"{p / 'config.json'}: vision_config.image_size is {size!r}, not one number; "
                                "pass a CLIP directory saved by CLIPModel.save_pretrained")
        transform = ClipTransform.from_preprocessor_config(pp) if pp.is_file() else ClipTransform(
            resize=size, crop=(size, size))
        enc = cls(model, tok, transform, device=device, batch_size=batch_size, name=f"clip-hf:{p.name}",
                  weights_hash=state_hash(model.state_dict()), dtype=dtype)
        log.info("loaded CLIP from %s (embed %d, patch %d, image %d)", p, enc.embed_dim, enc.patch_size, enc.image_size)
        return enc

    # -- properties ------------------------------------------------------------------------------
    @property
    def n_patches(self) -> int:
        h, w = self.transform.size
        return (h // self.patch_size) * (w // self.patch_size)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 ``(3,H,W)`` with this model's preprocessing."""
        return self.transform(image)

    # -- text ------------------------------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (T,E) L2-normalised text embeddings (float32), batched."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        out = []
        step = self.batch_size * 4
        with torch.inference_mode(), progress_bar("encode texts", len(texts), enabled=len(texts) > 4 * step) as advance:
            for a in range(0, len(texts), step):
                enc = self.tokenizer(texts[a : a + step], padding=True, truncation=True,
                                     max_length=self.max_text_len, return_tensors="pt")
                ids = enc["input_ids"].to(self.device)
                mask = enc["attention_mask"].to(self.device)
                h = self.model.text_model(input_ids=ids, attention_mask=mask).pooler_output
                out.append(self.model.text_projection(h).float().cpu().numpy())
                advance(len(ids))
        return l2_normalize(np.concatenate(out), dtype=np.float32)

    def encode_prompts(self, names: Sequence[str], templates: Sequence[str] = (DEFAULT_TEMPLATE,)) -> np.ndarray:
        """One embedding per name: each template filled with the name (``{}`` placeholder), encoded
        and normalised, averaged over templates and normalised again (CLIP's prompt ensembling)."""
        templates = list(templates)
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"every prompt template needs a '{{}}' placeholder, got {templates}")
        texts = [t.format(n) for n in names for t in templates]
        e = self.encode_texts(texts).reshape(len(names), len(templates), -1)
        return l2_normalize(e.mean(axis=1), dtype=np.float32)

    # -- images ----------------------------------------------------------------------------------
    def _last_hidden(self, x: torch.Tensor, norms: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Vision tower up to the input of its last block: (hidden before last block, its output).
        ``norms``: when a list, each block's FeatureNorm (B,) of its patch tokens is appended
        (:func:`vit_block_norm`)."""
        vm = self.model.vision_model
        h = vm.pre_layrnorm(vm.embeddings(x))
        layers = vm.encoder.layers
        for layer in layers[:-1]:
            h = self._run_layer(layer, h)
            if norms is not None:
                norms.append(vit_block_norm(h))
        out = self._run_layer(layers[-1], h)
        if norms is not None:
            norms.append(vit_block_norm(out))
        return h, out

    @property
    def n_blocks(self) -> int:
        """Number of transformer blocks of the vision tower (12 for ViT-B/16)."""
        return len(self.model.vision_model.encoder.layers)

    def image_embeds_torch(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable preprocessed images (B,3,H,W) -> L2-normalised image embeddings (B,E), the same
        computation as :meth:`encode_images` with autograd (ODIN's input gradients)."""
        p = next(self.model.parameters())
        _, out = self._last_hidden(x.to(p.device, p.dtype))
        e = self._project(out[:, 0]).float()
        return e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def _run_layer(self, layer: Any, h: torch.Tensor) -> torch.Tensor:
        """One vision block without masks (older transformers also take a causal mask, and return tuples)."""
        if self._layer_takes_causal is None:
            self._layer_takes_causal = "causal_attention_mask" in inspect.signature(layer.forward).parameters
        out = layer(h, None, None) if self._layer_takes_causal else layer(h, None)
        return out[0] if isinstance(out, tuple) else out

    def _value_path(self, h: torch.Tensor) -> torch.Tensor:
        """MaskCLIP dense path of the last block: attention replaced by each token attending only to
        itself (value embedding -> output projection), then the block's residual and MLP as usual."""
        last = self.model.vision_model.encoder.layers[-1]
        attn = last.self_attn
        v = attn.out_proj(attn.v_proj(last.layer_norm1(h)))
        y = h + v
        return y + last.mlp(last.layer_norm2(y))

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        vm = self.model.vision_model
        return self.model.visual_projection(vm.post_layernorm(tokens))

    def _embed(self, batch: Any, want_patches: bool, dense: str,
               norms_out: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        x_all = _as_tensor(batch, torch.device("cpu"), torch.float32)
        imgs, patches = [], []
        with torch.inference_mode():
            for a in range(0, len(x_all), self.batch_size):
                x = x_all[a : a + self.batch_size].to(self.device, self.dtype)
                norms: list[torch.Tensor] | None = [] if norms_out is not None else None
                h, out = self._last_hidden(x, norms)
                if norms_out is not None and norms:
                    norms_out.append(torch.stack(norms, 1).float().cpu().numpy())
                imgs.append(self._project(out[:, 0]).float().cpu().numpy())
                if want_patches:
                    src = self._value_path(h) if dense == "value" else out
                    patches.append(self._project(src[:, 1:]).float().cpu().numpy())
        img = l2_normalize(np.concatenate(imgs), dtype=np.float32) if imgs else np.zeros((0, self.embed_dim), np.float32)
        pt = None
        if want_patches:
            pt = np.concatenate(patches) if patches else np.zeros((0, self.n_patches, self.embed_dim), np.float32)
        return img, pt

    def encode_images(self, batch: Any) -> np.ndarray:
        """Preprocessed images (B,3,H,W) -> (B,E) L2-normalised image embeddings (float32)."""
        return self._embed(batch, False, "value")[0]

    def patch_tokens(self, batch: Any, dense: str = "value", normalize: bool = False) -> np.ndarray:
        """Preprocessed images (B,3,H,W) -> (B,P,E) projected patch tokens (row-major patch grid).

        ``dense="value"`` (default): MaskCLIP (Zhou, Loy & Dai, "Extract Free Dense Labels from
        CLIP", ECCV 2022): the last block's attention is replaced by the value path, so each patch
        keeps its own content instead of the global mixing that makes CLIP's last-layer patch tokens
        nearly identical to the class token; then ``post_layernorm`` and ``visual_projection``.
        ``dense="tokens"``: the ordinary last-layer patch tokens through ``post_layernorm`` and
        ``visual_projection`` (what GL-MCM / LoCoOp use as local features).
        ``normalize=True`` L2-normalises each token.
        """
        if dense not in ("value", "tokens"):
            raise ValueError(f"dense must be 'value' or 'tokens', got {dense!r}")
        pt = self._embed(batch, True, dense)[1]
        assert pt is not None
        return l2_normalize(pt, dtype=np.float32) if normalize else pt

    def encode_images_and_patches(self, batch: Any, dense: str = "value") -> tuple[np.ndarray, np.ndarray]:
        """One forward: (B,E) normalised image embeddings and (B,P,E) projected patch tokens."""
        if dense not in ("value", "tokens"):
            raise ValueError(f"dense must be 'value' or 'tokens', got {dense!r}")
        img, pt = self._embed(batch, True, dense)
        assert pt is not None
        return img, pt

    def encode_images_patches_norms(self, batch: Any, dense: str = "value") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One forward: image embeddings (B,E), patch tokens (B,P,E) and every block's FeatureNorm
        (B, n_blocks) (:func:`vit_block_norm`)."""
        if dense not in ("value", "tokens"):
            raise ValueError(f"dense must be 'value' or 'tokens', got {dense!r}")
        norms: list[np.ndarray] = []
        img, pt = self._embed(batch, True, dense, norms)
        assert pt is not None
        bn = np.concatenate(norms) if norms else np.zeros((0, self.n_blocks), np.float32)
        return img, pt, bn


class OpenCLIPDualEncoder(_EncoderIdentity):
    """An open_clip model as a :class:`DualEncoder` (needs the optional ``open_clip`` package).

    ``patch_tokens`` returns the last-layer patch tokens after ``ln_post`` and the visual
    projection (open_clip's ``output_tokens``), for ViT architectures.
    """

    def __init__(self, model: Any, tokenizer: Any, transform: ClipTransform, device: str = "cpu", batch_size: int = 64,
                 name: str = "open_clip", weights_hash: str = "") -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.transform = transform
        self.batch_size = int(batch_size)
        self.name = name
        self.weights_hash = weights_hash
        with torch.inference_mode():
            self.embed_dim = int(self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1])


    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.transform(image)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = []
        with torch.inference_mode():
            for a in range(0, len(texts), self.batch_size * 4):
                tokens = self.tokenizer(texts[a : a + self.batch_size * 4]).to(self.device)
                out.append(self.model.encode_text(tokens).float().cpu().numpy())
        return l2_normalize(np.concatenate(out), dtype=np.float32) if out else np.zeros((0, self.embed_dim), np.float32)

    def encode_prompts(self, names: Sequence[str], templates: Sequence[str] = (DEFAULT_TEMPLATE,)) -> np.ndarray:
        texts = [t.format(n) for n in names for t in templates]
        return l2_normalize(self.encode_texts(texts).reshape(len(names), len(templates), -1).mean(axis=1), dtype=np.float32)

    def encode_images(self, batch: Any) -> np.ndarray:
        x_all = _as_tensor(batch, torch.device("cpu"), torch.float32)
        out = []
        with torch.inference_mode():
            for a in range(0, len(x_all), self.batch_size):
                out.append(self.model.encode_image(x_all[a : a + self.batch_size].to(self.device)).float().cpu().numpy())
        return l2_normalize(np.concatenate(out), dtype=np.float32) if out else np.zeros((0, self.embed_dim), np.float32)

    def patch_tokens(self, batch: Any, normalize: bool = False) -> np.ndarray:
        visual = self.model.visual
        if not hasattr(visual, "output_tokens") or getattr(visual, "proj", None) is None:
            raise CLIPLoadError(f"{self.name}: patch tokens need an open_clip ViT with a projection; this visual tower has none")
        x_all = _as_tensor(batch, torch.device("cpu"), torch.float32)
        out = []
        prev = visual.output_tokens
        visual.output_tokens = True
        try:
            with torch.inference_mode():
                for a in range(0, len(x_all), self.batch_size):
                    _, tokens = visual(x_all[a : a + self.batch_size].to(self.device))
                    if tokens.shape[-1] != self.embed_dim:
                        tokens = tokens @ visual.proj
                    out.append(tokens.float().cpu().numpy())
        finally:
            visual.output_tokens = prev
        pt = np.concatenate(out)
        return l2_normalize(pt, dtype=np.float32) if normalize else pt


def load_open_clip(checkpoint: str | Path, arch: str, device: str = "cpu", batch_size: int = 64) -> OpenCLIPDualEncoder:
    """Load an open_clip checkpoint file (``arch`` e.g. ``"ViT-B-16"``) without downloading anything."""
    open_clip = require("open_clip", extra="openclip", purpose=f"the open_clip checkpoint {checkpoint}")
    p = Path(checkpoint)
    if not p.is_file():
        raise CLIPLoadError(f"open_clip checkpoint {p} does not exist")
    model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=str(p), device=device)
    tok = open_clip.get_tokenizer(arch)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(getattr(model.visual, "image_mean", None) or CLIP_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or CLIP_STD)
    return OpenCLIPDualEncoder(model, tok, ClipTransform(resize=size, crop=(size, size), mean=mean, std=std),
                               device=device, batch_size=batch_size, name=f"open_clip:{arch}",
                               weights_hash=state_hash(model.state_dict()))


def load_clip(path: str | Path, arch: str | None = None, device: str = "cpu",
              batch_size: int = 64) -> CLIPDualEncoder | OpenCLIPDualEncoder:
    """Load CLIP from ``path``: a Hugging Face CLIP directory, or an open_clip checkpoint file
    (``arch`` required; needs the ``open_clip`` package)."""
    p = Path(path)
    if p.is_dir():
        return CLIPDualEncoder.from_pretrained(p, device=device, batch_size=batch_size)
    if not p.exists():
        raise CLIPLoadError(f"CLIP checkpoint {p} does not exist; pass a Hugging Face CLIP directory or an open_clip file")
    if arch is None:
        raise CLIPLoadError(
            f"{p} is a file: open_clip checkpoints need their architecture name (e.g. arch='ViT-B-16'); "
            "a Hugging Face CLIP model is a directory with config.json"
        )
    return load_open_clip(p, arch, device=device, batch_size=batch_size)
