"""GPU leases for training and prediction jobs, taken before torch or spconv can touch CUDA.

Light on purpose (no torch import): the workflow scripts lease first, then import the model code,
so that ``CUDA_VISIBLE_DEVICES`` set by :mod:`lidarlift.gpu` is what CUDA sees when it initialises.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("lidarlift.model.devices")


@contextmanager
def leased_gpus(k: int) -> Iterator[int]:
    """Lease ``k`` GPUs through :mod:`lidarlift.gpu` for the block and yield how many processes to run
    (``k``, or 1 on the CPU). ``k`` = 0, or no ``lidarlift.gpu`` module, runs on the CPU."""
    if k <= 0:
        yield 1
        return
    try:
        from lidarlift.gpu import lease_gpus
    except ImportError:
        log.warning("train.gpus is %d but lidarlift.gpu is not installed: running on the CPU", k)
        yield 1
        return
    lease = lease_gpus(k)
    try:
        yield len(lease.devices)
    finally:
        lease.release(restore_env=True)
