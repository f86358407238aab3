"""Workarounds for two defects of the spconv 2.3.8 CPU wheel, applied once by :func:`install`.

1. Backward calls ``torch.cuda.current_stream()`` even for CPU tensors, which raises on a CPU-only
   torch build. The CPU kernels ignore the stream, so the getter returns 0 when torch has no CUDA.
2. With more than one intra-op thread the CPU kernels return wrong rows and wrong gradients
   (upstream traveller59/spconv#679). Every ``spconv.pytorch.ops`` call on CPU tensors runs with
   ``torch.set_num_threads(1)``; the dense layers between them keep the caller's thread count.

tests/test_model_spconv.py compares forward and gradients with a dense ``conv3d`` at two threads so
neither defect can come back silently.
"""
from __future__ import annotations

import functools
import sys
import threading
from typing import Any, Callable

import torch

#: ``spconv.pytorch.ops`` functions that run kernels on tensors (the size helpers need no guard).
_KERNEL_OPS = (
    "get_indice_pairs", "get_indice_pairs_implicit_gemm", "indice_conv", "indice_conv_backward",
    "implicit_gemm", "implicit_gemm_backward", "indice_maxpool", "indice_maxpool_backward",
    "indice_maxpool_implicit_gemm", "indice_maxpool_implicit_gemm_backward",
    "indice_avgpool_implicit_gemm", "indice_avgpool_implicit_gemm_backward", "global_pool_rearrange",
    "maximum_value_int_",
)

_lock = threading.Lock()
_installed = False


def _stream_or_zero() -> int:
    """CUDA stream handle where torch has CUDA, else 0 (what spconv's CPU kernels expect)."""
    if torch.cuda.is_available():
        return torch.cuda.current_stream().cuda_stream
    return 0


def _on_cpu(args: tuple, kwargs: dict) -> bool:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a.device.type == "cpu"
    return False


def single_threaded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` with one intra-op thread when its first tensor argument is on the CPU."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _on_cpu(args, kwargs):
            return fn(*args, **kwargs)
        threads = torch.get_num_threads()
        if threads == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    wrapper.__lidarlift_single_threaded__ = True  # type: ignore[attr-defined]
    return wrapper


def install() -> None:
    """Apply both workarounds (idempotent). Safe on GPU builds: CUDA tensors are not touched."""
    global _installed
    with _lock:
        if _installed:
            return
        import spconv.pytorch  # noqa: F401 - loads the modules patched below
        from spconv.pytorch import cppcore, ops

        original = cppcore.get_current_stream
        for name, module in list(sys.modules.items()):
            if name.startswith("spconv") and getattr(module, "get_current_stream", None) is original:
                module.get_current_stream = _stream_or_zero
        for name in _KERNEL_OPS:
            fn = getattr(ops, name, None)
            if fn is not None and not getattr(fn, "__lidarlift_single_threaded__", False):
                setattr(ops, name, single_threaded(fn))
        _installed = True


def installed() -> bool:
    return _installed
