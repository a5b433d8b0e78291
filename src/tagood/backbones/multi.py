"""Left only for :mod:`tagood.bench.runner` and :mod:`tagood.fitscore`, which still import ``primary_device``;
to be deleted once they call :func:`tagood.backbones.factory.single_device`.

The thread-replica path (one backbone replica per device of ``cuda:0,cuda:1`` in one process) is gone:
several GPUs are driven by one process each, ``torchrun --nproc-per-node N -m tagood ...``
(:mod:`tagood.distributed`). A device list is a ``ValueError`` saying so.
"""

from __future__ import annotations

from tagood.backbones.factory import single_device as primary_device

__all__ = ["primary_device"]
