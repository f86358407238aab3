"""Quality of superpixels against the 2D truth (summary key ``superpixels``).

Per image, at full image resolution (the working-resolution label map is upsampled at pixel centres,
:func:`lidarlift.superpixels.upsample_labels`). The ground-truth segment of a pixel is its instance key
where it has one, else its class (0..K; sky and ignored classes share class 0):
- boundary recall: ground-truth boundary pixels (pixels whose right or lower neighbour lies in another
  segment) with a superpixel boundary pixel (same rule) within ``boundary_tolerance`` px (Euclidean);
- undersegmentation error, Neubert & Protzel's corrected form:
  ``UE = (1 / N) * sum_S sum_G min(|S & G|, |S - G|)`` over superpixels S and ground-truth segments G
  that overlap S, N = number of pixels; every pixel leaking out of a segment counts once, the smaller
  side of each overlap.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lidarlift.evaluate.counts import ratio
from lidarlift.superpixels import upsample_labels


def segment_key(label: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """Ground-truth segment of each pixel: its instance key where > 0, else its class (int64)."""
    return np.where(instance > 0, instance, label.astype(np.int64))


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour belongs to another segment."""
    b = np.zeros(seg.shape, bool)
    b[:, :-1] |= seg[:, :-1] != seg[:, 1:]
    b[:-1, :] |= seg[:-1, :] != seg[1:, :]
    return b


def boundary_recall_counts(sp: np.ndarray, gt: np.ndarray, tolerance: float = 2.0,
                           valid: np.ndarray | None = None) -> tuple[int, int]:
    """(recalled, total) ground-truth boundary pixels with a superpixel boundary within ``tolerance`` px.

    ``sp`` and ``gt``: (H, W) integer maps at the same resolution; ``valid``: optional (H, W) bool of
    pixels to count.
    """
    import cv2

    gt_b = boundary_map(gt)
    if valid is not None:
        gt_b &= valid
    total = int(gt_b.sum())
    if total == 0:
        return 0, 0
    sp_b = boundary_map(sp)
    # distance of every pixel to the nearest superpixel boundary pixel (0 on boundary pixels)
    dist = cv2.distanceTransform((~sp_b).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return int((dist[gt_b] <= tolerance).sum()), total


def undersegmentation_counts(sp: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> tuple[int, int]:
    """(leak, N): ``sum_S sum_G min(|S & G|, |S - G|)`` and the pixel count N (corrected UE = leak / N).

    ``sp`` and ``gt``: (H, W) integer maps at the same resolution; pixels outside ``valid`` are left out.
    """
    sp = sp.ravel()
    gt = gt.ravel()
    if valid is not None:
        sp, gt = sp[valid.ravel()], gt[valid.ravel()]
    if sp.size == 0:
        return 0, 0
    _, s_idx = np.unique(sp, return_inverse=True)
    _, g_idx = np.unique(gt, return_inverse=True)
    n_g = int(g_idx.max()) + 1
    pair, counts = np.unique(s_idx.astype(np.int64) * n_g + g_idx, return_counts=True)
    area = np.bincount(s_idx)[pair // n_g]
    return int(np.minimum(counts, area - counts).sum()), int(sp.size)


def image_metrics(sp: np.ndarray, label: np.ndarray, instance: np.ndarray, tolerance: float = 2.0) -> dict[str, int]:
    """Counts of one image: ``sp`` (h, w) working-resolution ids; truth (H, W) at full resolution."""
    H, W = label.shape
    full = upsample_labels(sp, W, H)
    gt = segment_key(label, instance)
    recalled, total = boundary_recall_counts(full, gt, tolerance)
    leak, n = undersegmentation_counts(full, gt)
    return {"recalled_boundary_pixels": recalled, "gt_boundary_pixels": total,
            "undersegmentation_leak": leak, "truth_pixels": n}


def superpixel_figures(c: dict[str, Any]) -> dict[str, Any]:
    """The summary figures from summed :func:`image_metrics` counts."""
    return {
        "boundary_recall": ratio(c.get("recalled_boundary_pixels", 0), c.get("gt_boundary_pixels", 0)),
        "undersegmentation_error": ratio(c.get("undersegmentation_leak", 0), c.get("truth_pixels", 0)),
        "images_with_truth": c.get("images_with_truth", 0),
    }
