"""Confusion counts and mIoU as the training summary reports them.

Labels are (N,) integers, class 1..K, 0 = ignore. A confusion matrix is (K+1, K+1) int64, rows =
ground truth, columns = prediction; points whose ground truth is 0 are not counted. The project's
mIoU averages ``TP / (TP + FP + FN)`` over the classes *present* in the ground truth (at least one
true point), which is what the devkit reports when every class with predictions also has ground
truth; the evaluation stage adds the official devkit numbers.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K+1, K+1) int64 counts of (ground truth, prediction) pairs; ground truth 0 rows stay zero."""
    gt = np.asarray(gt, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth has {gt.shape} points but prediction has {pred.shape}")
    keep = gt > 0
    n = num_classes + 1
    return np.bincount(gt[keep] * n + pred[keep], minlength=n * n).reshape(n, n).astype(np.int64)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """(K,) float64 IoU of classes 1..K; NaN for classes absent from the ground truth."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diagonal(cm)[1:].astype(np.float64)
    gt = cm[1:, :].sum(1).astype(np.float64)
    pred = cm[:, 1:].sum(0).astype(np.float64) - cm[0, 1:]  # predictions on ground-truth-ignore points do not count
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / union
    iou[gt == 0] = np.nan
    return iou


def miou(cm: np.ndarray) -> float | None:
    """Mean IoU over the classes present in the ground truth (None when there is none)."""
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else None


def chance_miou(cm: np.ndarray) -> float | None:
    """Expected mIoU of a predictor that guesses classes at random with the true class frequencies:
    IoU_c = p_c / (2 - p_c). The floor "well above chance" is measured against."""
    cm = np.asarray(cm, dtype=np.int64)
    gt = cm[1:, :].sum(1).astype(np.float64)
    if gt.sum() == 0:
        return None
    p = gt / gt.sum()
    present = gt > 0
    return float(np.mean(p[present] / (2 - p[present])))


def report(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """JSON-ready scores of a confusion matrix: miou, per-class IoU by name, present classes, counts."""
    iou = iou_per_class(cm)
    return {
        "miou": miou(cm),
        "iou": {c: (None if not np.isfinite(v) else float(v)) for c, v in zip(classes, iou)},
        "classes_present": [c for c, v in zip(classes, iou) if np.isfinite(v)],
        "points": int(np.asarray(cm)[1:, :].sum()),
        "accuracy": float(np.trace(np.asarray(cm)[1:, 1:]) / max(1, np.asarray(cm)[1:, :].sum())),
        "chance_miou": chance_miou(cm),
    }
