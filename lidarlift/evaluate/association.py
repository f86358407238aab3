"""Quality of the point-pixel association against the generator's truth (summary key ``association``).

Per keyframe (:func:`association_counts`), as counts summed over keyframes and shards, then divided
(:func:`association_figures`):
- visibility: the ``visible`` flag (and the raw ``in_image``) against the generator's per-point,
  per-camera visibility: TP / FP / FN over (point, camera) pairs;
- label transfer: over visible (and over in_image) pairs of points with a class, the share whose
  projected pixel carries the point's own (class, instance) in the 2D truth;
- hidden far ground: (point, camera) pairs of flat-class points at ``30 <= range < 50`` m that are in
  the image and visible by the truth, and how many of them the occlusion test marked hidden
  (``hidden_ground_30_50m``; a footprint too wide for the scanner's beam spacing hides far ground).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lidarlift.associate import pixel_index
from lidarlift.classes import LabelSpace
from lidarlift.evaluate.counts import ratio
from lidarlift.evaluate.truth import SampleTruth

FAR_GROUND_BAND_M = (30.0, 50.0)


def transfer_counts(uv: np.ndarray, flag: np.ndarray, point_label: np.ndarray, point_instance: np.ndarray,
                    image_label: np.ndarray, image_instance: np.ndarray) -> tuple[int, int]:
    """(pairs, correct) of one camera: label transfer from the 2D truth at the projected pixel.

    uv (N, 2) float32, flag (N,) bool pairs to count; point_label (N,) class 1..K (0 = ignore, not
    counted), point_instance (N,) int64 (0 = stuff); image_label, image_instance (H, W). Correct when
    the pixel's (class, instance) equals the point's (so stuff compares the class).
    """
    sel = flag & (point_label > 0)
    if not sel.any():
        return 0, 0
    h, w = image_label.shape
    px = pixel_index(uv[sel], w, h)
    u, v = px[:, 0], px[:, 1]
    ok = (image_label[v, u] == point_label[sel]) & (image_instance[v, u] == point_instance[sel])
    return int(sel.sum()), int(ok.sum())


def association_counts(uv: np.ndarray, in_image: np.ndarray, visible: np.ndarray, truth: SampleTruth,
                       space: LabelSpace) -> dict[str, int]:
    """Counts of one keyframe. uv (N, C, 2) float32, in_image / visible (N, C) bool (the associate store)."""
    c: dict[str, int] = {"samples": 1}
    vis = truth.visibility
    if vis is not None:
        if vis.shape != visible.shape:
            raise ValueError(f"sample {truth.sample.token}: visibility truth has shape {vis.shape}, "
                             f"the associate store {visible.shape}")
        c["truth_samples"] = 1
        for name, flag in (("vis", visible), ("in_image", in_image)):
            c[f"{name}_tp"] = int((flag & vis).sum())
            c[f"{name}_fp"] = int((flag & ~vis).sum())
            c[f"{name}_fn"] = int((~flag & vis).sum())
        if truth.available:
            lo, hi = FAR_GROUND_BAND_M
            far_ground = space.flat_mask[truth.label] & (truth.range >= lo) & (truth.range < hi)
            seen = in_image & vis & far_ground[:, None]
            c["far_ground_visible_pairs"] = int(seen.sum())
            c["far_ground_hidden_pairs"] = int((seen & ~visible).sum())
    if not truth.available:
        return c
    if truth.n != uv.shape[0]:
        raise ValueError(f"sample {truth.sample.token}: point truth has {truth.n} points, the associate store {uv.shape[0]}")
    images = [truth.image(k) for k in range(uv.shape[1])]
    if any(im is None for im in images):
        return c
    c["transfer_truth_samples"] = 1
    for k, (im_label, im_instance) in enumerate(images):
        for name, flag in (("visible", visible), ("in_image", in_image)):
            pairs, correct = transfer_counts(uv[:, k], flag[:, k], truth.label, truth.instance, im_label, im_instance)
            c[f"transfer_{name}_pairs"] = c.get(f"transfer_{name}_pairs", 0) + pairs
            c[f"transfer_{name}_correct"] = c.get(f"transfer_{name}_correct", 0) + correct
    return c


def association_figures(c: dict[str, Any]) -> dict[str, Any]:
    """The summary figures from summed counts (None where nothing was measured)."""
    g = c.get
    return {
        "visible_precision": ratio(g("vis_tp", 0), g("vis_tp", 0) + g("vis_fp", 0)),
        "visible_recall": ratio(g("vis_tp", 0), g("vis_tp", 0) + g("vis_fn", 0)),
        "transfer_accuracy": ratio(g("transfer_visible_correct", 0), g("transfer_visible_pairs", 0)),
        "transfer_accuracy_no_occlusion": ratio(g("transfer_in_image_correct", 0), g("transfer_in_image_pairs", 0)),
        "hidden_ground_30_50m": ratio(g("far_ground_hidden_pairs", 0), g("far_ground_visible_pairs", 0)),
        "in_image_precision": ratio(g("in_image_tp", 0), g("in_image_tp", 0) + g("in_image_fp", 0)),
        "in_image_recall": ratio(g("in_image_tp", 0), g("in_image_tp", 0) + g("in_image_fn", 0)),
        "samples_scored": g("samples", 0),
    }
