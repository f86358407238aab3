"""Mask quality against 2D ground-truth instances (summary key ``masks``; the synthetic world's 2D truth).

For every thing instance of an image (class in the label space's things, instance key > 0, at least
``min_area`` pixels at the stored resolution): its best IoU over the image's masks as they stand in
the label map (after overlaps were resolved). Per-shard metrics keep sums and counts so that the
summary divides only once.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lidarlift.evaluate.counts import ratio


def resize_nearest(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) array to (h, w), sampling pixel centres."""
    H, W = a.shape
    h, w = hw
    if (H, W) == (h, w):
        return a
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return a[rows[:, None], cols[None, :]]


def best_iou_per_instance(mask_labels: np.ndarray, gt_instance: np.ndarray, gt_label: np.ndarray,
                          thing_mask: np.ndarray, min_area: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU of each thing instance over the masks of one image.

    mask_labels: (h, w) int32 mask index, -1 none. gt_instance: (h, w) int64 instance key, 0 = none.
    gt_label: (h, w) uint8 class 1..K. thing_mask: (K + 1,) bool. Returns (best_iou (n,) float64,
    class (n,) int64) for the n thing instances with at least ``min_area`` pixels.
    """
    inst = gt_instance.ravel()
    on = inst > 0
    if not on.any():
        return np.zeros(0), np.zeros(0, np.int64)
    keys, inv = np.unique(inst[on], return_inverse=True)
    n = len(keys)
    cls = np.zeros(n, np.int64)
    labels_on = gt_label.ravel()[on].astype(np.int64)
    # class of an instance: majority class of its pixels
    k1 = int(labels_on.max()) + 1 if labels_on.size else 1
    cc = np.bincount(inv * k1 + labels_on, minlength=n * k1).reshape(n, k1)
    cls = cc.argmax(1)
    inst_area = np.bincount(inv, minlength=n)
    thing = np.asarray(thing_mask, bool)
    keep = (cls < len(thing)) & thing[np.minimum(cls, len(thing) - 1)] & (inst_area >= min_area)
    m_all = mask_labels.ravel().astype(np.int64)
    n_masks = int(m_all.max()) + 1 if m_all.size else 0
    if n_masks <= 0:
        return np.zeros(int(keep.sum())), cls[keep]
    mask_area = np.bincount(m_all[m_all >= 0], minlength=n_masks)
    m_on = m_all[on]
    has = m_on >= 0
    inter = np.bincount(inv[has] * n_masks + m_on[has], minlength=n * n_masks).reshape(n, n_masks)
    union = inst_area[:, None] + mask_area[None, :] - inter
    iou = inter / np.maximum(union, 1)
    best = iou.max(1)
    return best[keep], cls[keep]


def image_metrics(mask_labels: np.ndarray, gt_instance: np.ndarray, gt_label: np.ndarray, thing_mask: np.ndarray,
                  min_area: int, class_names: tuple[str, ...]) -> dict:
    """Counts of one image: thing_instances, sum_best_iou, covered_iou50, and the same per class name."""
    best, cls = best_iou_per_instance(mask_labels, gt_instance, gt_label, thing_mask, min_area)
    per_class: dict[str, list[float]] = {}
    for c in np.unique(cls):
        sel = cls == c
        per_class[class_names[int(c) - 1]] = [int(sel.sum()), float(best[sel].sum()), int((best[sel] >= 0.5).sum())]
    return {"thing_instances": int(best.size), "sum_best_iou": float(best.sum()),
            "covered_iou50": int((best >= 0.5).sum()), "per_class": per_class}


def merge_counts(items: list[dict]) -> dict:
    """Sum image (or shard) counts from :func:`image_metrics`."""
    out = {"thing_instances": 0, "sum_best_iou": 0.0, "covered_iou50": 0, "per_class": {}}
    for it in items:
        out["thing_instances"] += it.get("thing_instances", 0)
        out["sum_best_iou"] += it.get("sum_best_iou", 0.0)
        out["covered_iou50"] += it.get("covered_iou50", 0)
        for name, (n, s, c) in it.get("per_class", {}).items():
            acc = out["per_class"].setdefault(name, [0, 0.0, 0])
            acc[0] += n
            acc[1] += s
            acc[2] += c
    return out


def mask_figures(c: dict) -> dict[str, Any]:
    """The summary figures from summed counts: mean best IoU over thing instances, the share of
    instances with a mask of IoU >= 0.5, and the same per class."""
    n = c.get("thing_instances", 0)
    per_class = {name: {"instances": v[0], "mean_best_iou": ratio(v[1], v[0]), "recall_iou50": ratio(v[2], v[0])}
                 for name, v in sorted(c.get("per_class", {}).items())}
    return {"mean_best_iou_things": ratio(c.get("sum_best_iou", 0.0), n),
            "instance_recall_iou50": ratio(c.get("covered_iou50", 0), n),
            "thing_instances": n, "images_with_truth": c.get("images_with_truth", 0), "per_class": per_class}
