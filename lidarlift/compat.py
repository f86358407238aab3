"""Make torchvision (and so segment-anything) importable on a CPU-only torch.

The only torchvision wheel for torch 2.13 (0.28.0) is a CUDA build. On a CPU torch its C++ extension
does not load, so ``import torchvision`` fails with ``operator torchvision::nms does not exist``
(its fake-tensor registrations need the op) and ``torchvision.ops.nms`` refuses to run
(``_assert_has_ops``). :func:`ensure_torchvision` defines ``torchvision::nms`` (and the ``qnms``
schema torchvision also registers) with a pure-torch CPU kernel *before* torchvision is imported,
then lets ``torchvision.ops.boxes`` use it. Other torchvision C++ ops (roi_align, ...) stay
unavailable; lidarlift uses none of them.

On a CUDA build of torch, or whenever torchvision's own extension is loaded, nothing is changed.
Call :func:`ensure_torchvision` before ``import torchvision`` / ``import segment_anything``.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import torch

_lock = threading.Lock()
_state: dict[str, object] = {"done": False, "patched": False}
_library: list[torch.library.Library] = []  # keep the Library alive (dropping it unregisters the op)


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, the semantics of ``torchvision.ops.nms``.

    boxes: (N, 4) float, (x1, y1, x2, y2); scores: (N,) float. Returns (K,) int64 indices of the kept
    boxes in decreasing score order; a box is dropped when its IoU with a kept, higher-scoring box is
    strictly greater than ``iou_threshold``. Works on any device (used as the CPU kernel).
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    b = boxes.float()
    order = torch.argsort(scores.float(), descending=True, stable=True)
    b = b[order]
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    keep = torch.zeros(n, dtype=torch.bool)
    suppressed = torch.zeros(n, dtype=torch.bool)
    chunk = 2048  # bounds the IoU block at chunk x n floats
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        lt = torch.maximum(b[start:stop, None, :2], b[None, :, :2])
        rb = torch.minimum(b[start:stop, None, 2:], b[None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        iou = inter / (area[start:stop, None] + area[None, :] - inter).clamp(min=1e-12)
        over = (iou > iou_threshold).cpu().numpy()
        sup = suppressed.numpy()
        kp = keep.numpy()
        for i in range(start, stop):
            if sup[i]:
                continue
            kp[i] = True
            row = over[i - start]
            row[: i + 1] = False
            sup |= row
    return order[keep.to(order.device)].to(torch.int64)


def _torchvision_has_native_ops() -> bool:
    """True when torchvision's C++ extension is (or can be) loaded into this torch."""
    if _op_exists("torchvision::nms") and not _library:
        return True
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False  # no torchvision at all: registering the op is harmless
    for folder in spec.submodule_search_locations:
        for lib in sorted([*Path(folder).glob("_C*.so"), *Path(folder).glob("_C*.pyd")]):
            try:
                torch.ops.load_library(str(lib))  # what torchvision itself does on import
                return True
            except (OSError, ImportError, RuntimeError):
                return False
    return False


def _op_exists(qualname: str) -> bool:
    ns, name = qualname.split("::")
    try:
        getattr(getattr(torch.ops, ns), name)
        return True
    except (AttributeError, RuntimeError):
        return False


def ensure_torchvision() -> bool:
    """Register a CPU ``torchvision::nms`` when torch has no CUDA and torchvision's own ops are missing.

    Returns True when the pure-torch kernel is in use. Idempotent and thread-safe. Must run before
    torchvision is first imported (segment-anything imports it); raises RuntimeError naming the
    problem if torchvision was already imported without its ops.
    """
    with _lock:
        if _state["done"]:
            return bool(_state["patched"])
        if torch.version.cuda is not None or _torchvision_has_native_ops():
            _state["done"] = True  # a CUDA torch (or a matching torchvision build): leave everything alone
            return False
        if "torchvision" in sys.modules and not _op_exists("torchvision::nms"):
            raise RuntimeError(
                "torchvision was imported before lidarlift.compat.ensure_torchvision(): on a CPU-only torch "
                "call ensure_torchvision() (or import lidarlift.masks) before importing torchvision or segment_anything")
        if not _op_exists("torchvision::nms"):
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.impl("nms", nms_reference, "CPU")
            if not _op_exists("torchvision::qnms"):
                lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _library.append(lib)
        import torchvision.ops.boxes as tv_boxes

        # torchvision.ops.nms asserts that its C++ extension loaded; our op stands in for it.
        tv_boxes._assert_has_ops = lambda: None
        _state.update(done=True, patched=True)
        return True
