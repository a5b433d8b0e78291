"""Reading official RAM / RAM++ checkpoints, and converting them to a small safetensors folder.

The released ``ram_swin_large_14m.pth`` (5.6 GB) is ``{"model": state_dict}`` holding the tagger
(``visual_encoder``, ``image_proj``, ``label_embed``, ``wordvec_proj``, ``tagging_head``, ``fc``)
plus modules the tagger never runs (``tag_encoder``, ``text_decoder``: Tag2Text-style captioning).
:func:`tagger_state_dict` keeps the tagger's keys, drops the rest (logged by prefix), and drops
buffers this package recomputes (Swin ``relative_position_index`` and ``attn_mask``). Loading
checks the keys exactly: a tagger key missing from the file, a key under a tagger module that the
tagger does not have, or a shape mismatch is an error naming the key and the file.

:func:`convert_ram` writes only the tagger: ``model.safetensors`` (fp32, or fp16 on request),
``config.json`` (architecture, weights hash, file names), ``tags.txt`` and ``thresholds.txt``.
``load_ram(folder)`` reads that directly (memory-mapped safetensors, no pickle).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tagood.backbones.ram_head import HeadConfig
from tagood.backbones.ram_model import RAMConfig, RAMModel
from tagood.backbones.ram_swin import SwinConfig
from tagood.backbones.weights_hash import state_hash
from tagood.errors import CheckpointError
from tagood.runtime.fileio import atomic_directory

log = logging.getLogger(__name__)

FORMAT = "tagood-ram"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TAGS_FILE = "tags.txt"
THRESHOLDS_FILE = "thresholds.txt"
#: RAM's default tag threshold (``RAM(threshold=0.68)``), used when no per-tag file is given.
DEFAULT_THRESHOLD = 0.68

#: Top-level modules of the tagger; keys under any other prefix are not needed and are dropped.
TAGGER_MODULES = ("visual_encoder", "image_proj", "label_embed", "wordvec_proj", "tagging_head", "fc", "reweight_scale")
#: Keys under tagger modules that the tagger does not use: recomputed Swin buffers, the BERT
#: embeddings / self-attention / pooler that RAM deletes from its tagging head.
_NOT_USED = re.compile(
    r"^visual_encoder\..*\.(relative_position_index|attn_mask)$"
    r"|^visual_encoder\.head\."
    r"|^tagging_head\.(embeddings|pooler)\."
    r"|^tagging_head\.encoder\.layer\.\d+\.attention\."
)


class RAMCheckpointError(CheckpointError):
    """A RAM checkpoint or its side files do not fit the tagger; the message names the file and key."""


# -- side files ---------------------------------------------------------------------------------
def read_tag_list(path: str | Path) -> list[str]:
    """Tag names, one per line (RAM's ``ram_tag_list.txt``); a trailing empty line is ignored."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise RAMCheckpointError(f"cannot read the RAM tag list {p}: {e}") from e
    except UnicodeDecodeError:
        raise RAMCheckpointError(f"the RAM tag list {p} is not UTF-8 text; pass ram_tag_list.txt (one tag per line)") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise RAMCheckpointError(f"the RAM tag list {p} is empty; pass ram_tag_list.txt (one tag per line)")
    return [line.strip() for line in lines]


def read_thresholds(path: str | Path, num_tags: int) -> np.ndarray:
    """Per-tag thresholds, one float per line (RAM's ``ram_tag_list_threshold.txt``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise RAMCheckpointError(f"cannot read the RAM threshold file {p}: {e.strerror or type(e).__name__}") from None
    except UnicodeDecodeError:
        raise RAMCheckpointError(f"the RAM threshold file {p} is not UTF-8 text; pass ram_tag_list_threshold.txt "
                                 "(one number per line)") from None
    values = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            v = float(line)
        except ValueError:  # the message names the line, never quotes it (the file may be anything)
            raise RAMCheckpointError(f"the RAM threshold file {p}, line {n}: not a number; the file must hold one "
                                     "number per line (ram_tag_list_threshold.txt)") from None
        if not np.isfinite(v):
            raise RAMCheckpointError(f"the RAM threshold file {p}, line {n}: not a finite number (NaN or infinity)")
        values.append(v)
    thr = np.array(values, dtype=np.float32)
    if len(thr) != num_tags:
        raise RAMCheckpointError(f"the RAM threshold file {p} has {len(thr)} values but the tag list has {num_tags} tags; "
                                 "pass the threshold file that belongs to this tag list")
    return thr


# -- checkpoint reading -------------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)["model"]`` (or a bare state dict)."""
    p = Path(path)
    if not p.is_file():
        raise RAMCheckpointError(f"RAM checkpoint {p} does not exist; pass the .pth file (e.g. ram_swin_large_14m.pth) "
                                 "or a folder written by `tagood convert ram`")
    try:
        try:  # memory-mapped: only the tagger's tensors are ever read from disk
            obj = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        size = p.stat().st_size
        what = "it is empty" if size == 0 else f"{type(e).__name__}: {str(e)[:200] or 'damaged or truncated'}"
        raise RAMCheckpointError(f"cannot read RAM checkpoint {p} ({what}); pass the official .pth file (download it "
                                 "again if it is truncated) or a folder written by `tagood convert ram`") from e
    sd = obj.get("model", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise RAMCheckpointError(f"{p} is not a RAM checkpoint: expected a state dict or a dict with a 'model' state dict")
    return dict(sd)


def tagger_state_dict(sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tagger's keys of an official state dict; logs what was dropped, by prefix."""
    out: dict[str, torch.Tensor] = {}
    dropped: Counter[str] = Counter()
    for k, v in sd.items():
        k = k.removeprefix("module.")
        if k.startswith("vision_multi."):  # older checkpoints name the tagging head this way
            k = "tagging_head." + k[len("vision_multi."):]
        top = k.split(".", 1)[0]
        if top not in TAGGER_MODULES:
            dropped[top + "."] += 1
        elif m := _NOT_USED.match(k):
            dropped[re.sub(r"\.\d+\.", ".*.", m.group(0))] += 1
        else:
            out[k] = v
    if dropped:
        log.info("%s: dropped %d keys the tagger does not use: %s", source, sum(dropped.values()),
                 ", ".join(f"{p} ({n})" for p, n in sorted(dropped.items())))
    return out


def _count(sd: Mapping[str, Any], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in sd if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def _need(sd: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in sd:
        raise RAMCheckpointError(f"{source}: missing key '{key}' that the RAM tagger needs; is this a RAM checkpoint?")
    return sd[key]


def infer_config(sd: Mapping[str, torch.Tensor], num_tags: int, image_size: int | None = None, head_heads: int = 4,
                 source: str = "checkpoint") -> RAMConfig:
    """The architecture a tagger state dict implies (tensor shapes); ``image_size`` when given, else
    from the shifted-window masks if the file has them, else "final stage = one window" (true for
    RAM's Swin-L/384 and Swin-B/384). The head's number of attention heads is not visible in the
    weights: ``head_heads`` (RAM: 4)."""
    pw = _need(sd, "visual_encoder.patch_embed.proj.weight", source)
    embed, patch = int(pw.shape[0]), int(pw.shape[-1])
    n_stages = _count(sd, r"^visual_encoder\.layers\.(\d+)\.")
    if n_stages == 0:
        raise RAMCheckpointError(f"{source}: no 'visual_encoder.layers.*' keys; not a Swin RAM checkpoint")
    depths = tuple(_count(sd, rf"^visual_encoder\.layers\.{i}\.blocks\.(\d+)\.") for i in range(n_stages))
    tables = [_need(sd, f"visual_encoder.layers.{i}.blocks.0.attn.relative_position_bias_table", source) for i in range(n_stages)]
    heads = tuple(int(t.shape[1]) for t in tables)
    window = (round(math.sqrt(tables[0].shape[0])) + 1) // 2
    if image_size is None:
        mask = sd.get("visual_encoder.layers.0.blocks.1.attn_mask")
        if mask is not None:
            res = round(math.sqrt(mask.shape[0])) * window
        else:
            w_last = (round(math.sqrt(tables[-1].shape[0])) + 1) // 2
            res = w_last * 2 ** (n_stages - 1)
        image_size = res * patch
    le = _need(sd, "label_embed", source)
    rows, width = int(le.shape[0]), int(le.shape[1])
    d = 1
    if "reweight_scale" in sd:  # RAM++: several description embeddings per tag
        if rows % num_tags:
            raise RAMCheckpointError(f"{source}: label_embed has {rows} rows, not a multiple of the {num_tags} tags "
                                     "of the tag list")
        d = rows // num_tags
    elif rows != num_tags:
        raise RAMCheckpointError(f"{source}: label_embed has {rows} tags but the tag list has {num_tags}; "
                                 "pass the tag list that belongs to this checkpoint")
    hidden = int(_need(sd, "wordvec_proj.weight", source).shape[0])
    n_layers = _count(sd, r"^tagging_head\.encoder\.layer\.(\d+)\.")
    inter = int(_need(sd, "tagging_head.encoder.layer.0.intermediate.dense.weight", source).shape[0])
    enc_w = int(_need(sd, "tagging_head.encoder.layer.0.crossattention.self.key.weight", source).shape[1])
    return RAMConfig(
        swin=SwinConfig(img_size=int(image_size), patch_size=patch, embed_dim=embed, depths=depths, num_heads=heads,
                        window_size=window),
        head=HeadConfig(hidden_size=hidden, num_heads=head_heads, num_layers=n_layers, intermediate_size=inter,
                        encoder_width=enc_w),
        num_tags=num_tags, embed_dim=width, descriptions_per_tag=d,
    )


def load_into(model: RAMModel, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``sd`` into ``model``; every key must match exactly (names and shapes)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing:
        raise RAMCheckpointError(f"{source}: missing key '{missing[0]}' (and {len(missing) - 1} more) that the RAM tagger needs"
                                 if len(missing) > 1 else f"{source}: missing key '{missing[0]}' that the RAM tagger needs")
    if unexpected:
        raise RAMCheckpointError(f"{source}: unexpected key '{unexpected[0]}'"
                                 + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
                                 + " under a tagger module; the checkpoint's architecture differs from the configured one")
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        k, got, want = bad[0]
        raise RAMCheckpointError(f"{source}: shape mismatch for '{k}': file has {got}, the tagger expects {want}"
                                 + (f" (and {len(bad) - 1} more mismatches)" if len(bad) > 1 else ""))
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(sd[k].to(v.dtype))


# -- conversion ---------------------------------------------------------------------------------
def convert_ram(checkpoint: str | Path, out_dir: str | Path, tag_list: str | Path, thresholds: str | Path | None = None,
                fp16: bool = False, config: RAMConfig | None = None, image_size: int | None = None) -> Path:
    """Write the tagger of an official RAM checkpoint to ``out_dir`` (see module docstring).

    Returns ``out_dir``. The folder is written to a temporary sibling and renamed, so a crash never
    leaves a half-written folder behind; an existing non-empty ``out_dir`` is an error.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise RAMCheckpointError(f"output folder {out} exists and is not empty; choose another --out or delete it")
    tags = read_tag_list(tag_list)
    thr = read_thresholds(thresholds, len(tags)) if thresholds is not None else None
    source = str(checkpoint)
    sd = tagger_state_dict(read_state_dict(checkpoint), source)
    cfg = config or infer_config(sd, len(tags), image_size=image_size, source=source)
    model = RAMModel(cfg)
    load_into(model, sd, source)  # validates names and shapes before anything is written
    dtype = torch.float16 if fp16 else torch.float32
    weights = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict(), "dtype": str(dtype).replace("torch.", ""),
        "weights_sha256": state_hash(weights), "source": Path(checkpoint).name,
        "tag_list": TAGS_FILE, "thresholds": THRESHOLDS_FILE if thr is not None else None,
    }
    with atomic_directory(out) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
        (tmp / TAGS_FILE).write_text("\n".join(tags) + "\n", encoding="utf-8")
        if thr is not None:
            (tmp / THRESHOLDS_FILE).write_text("\n".join(f"{float(t):g}" for t in thr) + "\n", encoding="utf-8")
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("converted %s -> %s (%s, %.1f MB)", checkpoint, out, meta["dtype"], (out / WEIGHTS_FILE).stat().st_size / 1e6)
    return out


def read_converted(folder: str | Path) -> tuple[RAMConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Config, weights (memory-mapped via safetensors) and metadata of a converted folder."""
    d = Path(folder)
    cfg_path = d / CONFIG_FILE
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RAMCheckpointError(f"cannot read {cfg_path}: {e}; convert the checkpoint again with `tagood convert ram`") from e
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > FORMAT_VERSION:
        raise RAMCheckpointError(f"{cfg_path} is not a {FORMAT} v{FORMAT_VERSION} folder (format={meta.get('format')!r}, "
                                 f"version={meta.get('version')!r}); convert the checkpoint again")
    from safetensors.torch import load_file

    wpath = d / WEIGHTS_FILE
    if not wpath.is_file():
        raise RAMCheckpointError(f"{wpath} is missing; convert the checkpoint again with `tagood convert ram`")
    try:
        weights = load_file(str(wpath))
    except Exception as e:  # noqa: BLE001 - safetensors' own SafetensorError is no OSError / ValueError
        if not isinstance(e, (OSError, ValueError)) and type(e).__name__ != "SafetensorError":
            raise
        raise RAMCheckpointError(f"{wpath} is damaged, empty or not a safetensors file ({type(e).__name__}: {e}); "
                                 "convert the checkpoint again with `tagood convert ram`") from e
    try:
        cfg = RAMConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise RAMCheckpointError(f"{cfg_path}: its 'config' is missing or invalid ({type(e).__name__}: {e}); convert "
                                 "the checkpoint again with `tagood convert ram`") from e
    return cfg, weights, meta
