"""Benchmark: loading a RAM tagger from the official ``.pth`` layout vs from the converted folder.

A randomly initialised RAM-shaped model (full 4585-tag vocabulary and tagging head, a narrower
Swin so it fits a small machine) is written as the official checkpoint does it: ``{"model": sd}``
with the tagger's keys, the Swin buffers, and unused text encoder/decoder weights ``--extra``
times the tagger's size (the released 5.6 GB file is mostly such weights). It is then converted
with :func:`tagood.backbones.ram.convert_ram` (fp32 and fp16) and both are loaded with
:func:`tagood.backbones.ram.load_ram` (best of ``--repeat``, page cache warm for both). Checks the
loaded taggers agree, prints file sizes, and the ratio load(.pth) / load(folder) last.

    python benchmarks/ram_convert.py [--extra 5] [--repeat 3] [--tiny]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tagood.backbones.ram import convert_ram, load_ram
from tagood.backbones.ram_head import HeadConfig
from tagood.backbones.ram_model import RAMConfig, RAMModel
from tagood.backbones.ram_swin import (
    SwinConfig,
    relative_position_index,
    shifted_window_mask,
)


def _config(tiny: bool) -> RAMConfig:
    if tiny:
        return RAMConfig(swin=SwinConfig(img_size=64, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=2),
                         head=HeadConfig(hidden_size=32, num_heads=4, intermediate_size=64, encoder_width=16),
                         num_tags=20, embed_dim=16)
    return RAMConfig(swin=SwinConfig(img_size=192, embed_dim=64, depths=(2, 2, 6, 2), num_heads=(2, 4, 8, 16), window_size=6),
                     head=HeadConfig(), num_tags=4585, embed_dim=512)


def _write_official(cfg: RAMConfig, path: Path, extra: float) -> None:
    g = torch.Generator().manual_seed(0)
    m = RAMModel(cfg)
    sd = {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in m.state_dict().items()}
    res = cfg.swin.img_size // cfg.swin.patch_size
    for i, depth in enumerate(cfg.swin.depths):
        r = res // 2**i
        w = min(cfg.swin.window_size, r)
        for j in range(depth):
            sd[f"visual_encoder.layers.{i}.blocks.{j}.attn.relative_position_index"] = relative_position_index(w)
            if j % 2 and r > w:
                sd[f"visual_encoder.layers.{i}.blocks.{j}.attn_mask"] = shifted_window_mask(r, r, w, w // 2)
    n_tagger = sum(v.numel() for v in m.state_dict().values())
    n_extra, k = int(extra * n_tagger), 0
    while n_extra > 0:  # BERT-like blocks of the unused text modules
        n = min(n_extra, 768 * 3072)
        sd[f"text_decoder.bert.encoder.layer.{k}.intermediate.dense.weight"] = torch.randn(n, generator=g)
        n_extra -= n
        k += 1
    torch.save({"model": sd}, path)


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--extra", type=float, default=5.0, help="unused text weights, as a multiple of the tagger's size")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="the tiny test model instead of the RAM-shaped one")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    cfg = _config(args.tiny)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        tags = d / "tags.txt"
        tags.write_text("\n".join(f"tag{i}" for i in range(cfg.num_tags)))
        thr = d / "thr.txt"
        thr.write_text("\n".join("0.7" for _ in range(cfg.num_tags)))
        pth = d / "ram.pth"
        _write_official(cfg, pth, args.extra)
        conv32 = convert_ram(pth, d / "conv32", tags, thr)
        conv16 = convert_ram(pth, d / "conv16", tags, thr, fp16=True)

        def size(p: Path) -> float:
            return (p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.iterdir())) / 1e6

        print(f"config: swin embed {cfg.swin.embed_dim} depths {cfg.swin.depths} at {cfg.swin.img_size}px, {cfg.num_tags} tags")
        print(f"official .pth: {size(pth):.1f} MB; converted fp32: {size(conv32):.1f} MB; fp16: {size(conv16):.1f} MB")
        t_pth = _best(lambda: load_ram(pth, tags, thr), args.repeat)
        t_32 = _best(lambda: load_ram(conv32), args.repeat)
        t_16 = _best(lambda: load_ram(conv16), args.repeat)
        a, b = load_ram(pth, tags, thr), load_ram(conv32)
        x = np.random.default_rng(0).standard_normal((1, 3, cfg.swin.img_size, cfg.swin.img_size)).astype(np.float32)
        same = np.array_equal(a.forward(x).tag_probs, b.forward(x).tag_probs)
        print(f"outputs identical (.pth vs fp32 folder): {same}")
        print(f"load .pth: {t_pth:.3f} s; load fp32 folder: {t_32:.3f} s; load fp16 folder: {t_16:.3f} s")
        print(f"size_ratio_fp16: {size(pth) / size(conv16):.1f}")
        print(f"load_time_ratio: {t_pth / t_32:.2f}")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
