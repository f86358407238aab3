"""GPU leases for training and prediction jobs: :func:`lidarlift.gpu.job_gpus` is the one leasing path
(the workflow scripts call it with the job's Snakemake resource gpu); :func:`leased_gpus` is its short
form for callers that only need the process count.

Light on purpose (no torch import): lease first, then import the model code, so that
``CUDA_VISIBLE_DEVICES`` set by :mod:`lidarlift.gpu` is what CUDA sees when it initialises.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lidarlift.gpu import job_gpus


@contextmanager
def leased_gpus(k: int) -> Iterator[int]:
    """:func:`lidarlift.gpu.job_gpus` for ``k`` devices; yields how many processes to run (``k``, or 1
    on the CPU, where the devices are hidden and CUDA is refused)."""
    with job_gpus(k) as job:
        yield job.processes
