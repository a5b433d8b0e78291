"""A content hash of model weights, independent of the file format they were read from."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def state_hash(sd: Mapping[str, torch.Tensor]) -> str:
    """sha256 prefix (16 hex digits) over sorted key names, dtypes, shapes and bytes of a state dict.

    The same tensors give the same hash whether they came from a ``.pth``, a safetensors file or a
    Hugging Face folder, so a feature cache keyed by it survives a format conversion; a dtype change
    (fp32 -> fp16) changes it, as it changes the features.
    """
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # the array's buffer, no copy
    return h.hexdigest()[:16]
