"""KR-NFT scoring throughput: batched closed-form NFT vs batch size 1 (the public code's path, which
materialises the tuned text rows ``t'`` (R,E) for each image), on the same inputs.

Default: 2000 image embeddings, 1000 IND + 10,000 negative rows, E = 512, random (non-zero)
meta-networks. Checks the two give equal scores, then prints the ratio last:
``batched_vs_single: <ratio>x``. The single path is timed on a subset (``--single``) and scaled;
each path runs ``--repeats`` times and its best time is used. ``--device cuda`` runs both on a GPU.

Allocator: both paths allocate (R,E)- or (B,R)-sized float32 buffers (20-45 MB here) on every
image / chunk. With glibc's default dynamic thresholds such buffers are sometimes returned to the
kernel and page-faulted back on the next allocation, which made the batch-size-1 time vary 2-3x
between processes (7 to 22 ms per image measured, tracking the minor-fault count). By default
(``--malloc steady``) the benchmark first tells glibc (``mallopt``) to keep freed memory, so neither
path is timed on page faults; ``--malloc default`` leaves the allocator alone.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from tagood.detectors.vlm.krnft import KRNFT
from tagood.detectors.vlm.nft import NFT

log = logging.getLogger("krnft_bench")


def single_confidence(nft: NFT, v: torch.Tensor, tp: torch.Tensor, tn: torch.Tensor, scale: float) -> np.ndarray:
    """Batch size 1: for each image build t' (R,E), normalise, softmax over all rows, sum IND probabilities."""
    k = len(tp)
    out = np.empty(len(v))
    with torch.inference_mode():
        for i in range(len(v)):
            rows = nft.tuned_rows(v[i], tp, tn)
            logits = scale * rows @ torch.nn.functional.normalize(v[i], dim=0)
            out[i] = float(torch.softmax(logits.double(), dim=0)[:k].sum())
    return out


def steady_malloc() -> bool:
    """Ask glibc to serve large buffers from the heap and keep freed memory (no page faults per
    allocation). Returns False where this is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        # mmap only above 32 MiB (glibc's ceiling for this threshold); never trim the heap top below 1 GiB
        ok_mmap = libc.mallopt(m_mmap_threshold, ctypes.c_int(32 << 20))
        ok_trim = libc.mallopt(m_trim_threshold, ctypes.c_int(1 << 30))
        return bool(ok_mmap) and bool(ok_trim)
    except (OSError, AttributeError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--ind", type=int, default=1000)
    ap.add_argument("--neg", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--single", type=int, default=200, help="images timed on the batch-size-1 path (scaled to --n)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each path; the best of each is used")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--malloc", choices=("steady", "default"), default="steady",
                    help="steady: glibc keeps freed memory (see the module docstring); default: leave it alone")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.malloc == "steady" and not steady_malloc():
        log.info("mallopt unavailable (not glibc): allocator left at its defaults")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)  # the meta-networks' first layers
    g = torch.Generator().manual_seed(0)
    nft = NFT(a.dim, 32)
    with torch.no_grad():
        for p in nft.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    nft.eval()
    tp = torch.nn.functional.normalize(torch.randn(a.ind, a.dim, generator=g), dim=1)
    tn = torch.nn.functional.normalize(torch.randn(a.neg, a.dim, generator=g), dim=1)
    v = torch.nn.functional.normalize(torch.randn(a.n, a.dim, generator=g), dim=1)

    dev = torch.device(a.device)
    nft, tp_d, tn_d, v_d = nft.to(dev), tp.to(dev), tn.to(dev), v.to(dev)
    det = KRNFT(score_batch=a.batch)
    det.nft, det.text, det.neg_text, det.logit_scale, det.fitted = nft, tp.numpy(), tn.numpy(), 100.0, True
    det.confidence(v[:64].numpy())  # warm-up
    m = min(a.single, a.n)
    single_confidence(nft, v_d[:4], tp_d, tn_d, 100.0)  # warm-up
    t_batched = t_single = float("inf")
    for _ in range(a.repeats):  # best of each: the single path is memory-bound and its time varies ~2x run to run
        t0 = time.perf_counter()
        batched = det.confidence(v.numpy())
        t_batched = min(t_batched, time.perf_counter() - t0)
        t0 = time.perf_counter()
        single = single_confidence(nft, v_d[:m], tp_d, tn_d, 100.0)
        t_single = min(t_single, (time.perf_counter() - t0) * a.n / m)
    err = float(np.abs(single - batched[:m]).max())
    from tagood.detectors.vlm.nft import RowBank

    log.info("images %d, rows %d IND + %d neg, E=%d, threads %d, products: %s, malloc: %s", a.n, a.ind, a.neg, a.dim,
             a.threads, RowBank(tn[:2].to(dev)).backend, a.malloc)
    log.info("batched (chunks of %d): %.3f s  (%.0f img/s)", a.batch, t_batched, a.n / t_batched)
    log.info("batch size 1 (%d images timed, scaled): %.3f s  (%.0f img/s)", m, t_single, a.n / t_single)
    log.info("max |score difference| on the %d shared images: %.2e", m, err)
    if err > 1e-5:
        raise SystemExit(f"scores differ by {err:.2e}")
    print(f"batched_vs_single: {t_single / t_batched:.0f}x")


if __name__ == "__main__":
    main()
