"""Quality of pseudo-labels against point truth: the one implementation (summary key ``pseudolabels``).

Per keyframe (:func:`pseudolabel_counts`), summed over keyframes and shards, then divided
(:func:`pseudolabel_figures`). A point is *scored* when its true class is not ignore (0); a label on an
ignored point is neither right nor wrong.
- ``click_share``: clicked points among all points (the budget is a share of each keyframe's points);
- ``labelled_share``: labelled points among scored points; ``precision``: correct among them;
- ``miou`` / ``iou_per_class``: on the labelled scored points, in the label space's convention;
  ``per_class`` precision and recall (recall over every scored point of the class),
  ``min_class_recall`` over the classes present;
- candidate sets (unlabelled scored points whose candidate mask is narrower than every class):
  ``candidate_share``, ``mean_candidate_set_size``, ``candidate_contains_truth``;
- ``iupc_table``: IUPC's shares of all points -- sparse (clicks), propagated (labelled - clicks) and
  negative (candidate sets of two or more classes);
- ``by_source``: share, labelled share and precision per deciding source (lidarlift.artifacts.SOURCES);
- panoptic quality of the labels' instances (``pq_things``, ``sq_things``, ``rq_things``) where the store
  carries instance ids: per class with the devkit's matching (:class:`lidarlift.evaluate.metrics.PanopticAccumulator`),
  averaged over the thing classes that occur in the truth or the labels.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lidarlift.artifacts import SOURCES
from lidarlift.classes import LabelSpace
from lidarlift.evaluate.counts import ratio
from lidarlift.evaluate.metrics import PanopticAccumulator, confusion_matrix, semantic_report

CLICK_SOURCE = next(code for code, name in SOURCES.items() if name == "click")


def _popcount(mask: np.ndarray) -> np.ndarray:
    m = np.ascontiguousarray(mask, dtype=np.uint32)
    return np.unpackbits(m.view(np.uint8).reshape(-1, 4), axis=1).sum(axis=1).astype(np.int64)


def pseudolabel_counts(label: np.ndarray, candidate_mask: np.ndarray, source: np.ndarray, instance_id: np.ndarray,
                       truth: np.ndarray, truth_key: np.ndarray, space: LabelSpace, min_points: int = 15) -> dict[str, Any]:
    """Counts of one keyframe. ``label`` (N,) 0..K, ``candidate_mask`` (N,) uint32, ``source`` (N,) uint8,
    ``instance_id`` (N,) int (0 = none) from the pseudolabels store; ``truth`` (N,) 0..K and ``truth_key``
    (N,) int64 ground-truth segment keys (:attr:`lidarlift.evaluate.truth.SampleTruth.segment_key`)."""
    k = space.num_classes
    label = np.asarray(label, np.int64)
    truth = np.asarray(truth, np.int64)
    if label.shape != truth.shape:
        raise ValueError(f"pseudo-labels have {label.size} points, the ground truth {truth.size}")
    if label.size and (label.min() < 0 or label.max() > k):
        raise ValueError(f"pseudo-labels outside 0..{k} ({label.min()}..{label.max()})")
    scored = truth > 0
    has = label > 0
    lab = has & scored
    size = _popcount(candidate_mask)
    cand_any = ~has & (size > 0) & (size < k)
    cand = cand_any & scored
    in_set = (np.asarray(candidate_mask, np.uint32) >> np.maximum(truth - 1, 0).astype(np.uint32)) & 1
    source = np.asarray(source)
    by_source = {}
    for code in np.unique(source):
        sel = source == code
        by_source[SOURCES.get(int(code), f"source{int(code)}")] = {
            "points": int((sel & scored).sum()), "labelled": int((sel & lab).sum()),
            "correct": int((sel & lab & (label == truth)).sum())}
    out: dict[str, Any] = {
        "samples": 1,
        "points": int(label.size),
        "scored": int(scored.sum()),
        "clicks": int((source == CLICK_SOURCE).sum()),
        "labelled_any": int(has.sum()),
        "labelled": int(lab.sum()),
        "correct": int((lab & (label == truth)).sum()),
        "candidates": int(cand.sum()),
        "candidate_size_sum": int(size[cand].sum()),
        "candidates_contain_truth": int((cand & (in_set == 1)).sum()),
        "negative": int((cand_any & (size > 1)).sum()),
        "confusion": confusion_matrix(np.where(lab, truth, 0), np.where(lab, label, 0), k).tolist(),
        "class_true": np.bincount(truth[scored], minlength=k + 1).tolist(),
        "by_source": by_source,
        "panoptic": None,
    }
    inst = np.asarray(instance_id, np.int64)
    if (inst > 0).any():
        acc = PanopticAccumulator(space, min_points)
        acc.add(label, np.where(has, inst, 0), truth, truth_key)
        out["panoptic"] = acc.counts()
    return out


def pseudolabel_figures(c: dict[str, Any], space: LabelSpace, min_points: int = 15) -> dict[str, Any]:
    """The figures of summed :func:`pseudolabel_counts` (None where nothing was measured)."""
    if not c:
        return {}
    g = c.get
    n, scored = g("points", 0), g("scored", 0)
    cm = np.asarray(c["confusion"], np.int64)
    sem = semantic_report(cm, space)
    tp = np.diagonal(cm)[1:].astype(float)
    pred = cm[1:, 1:].sum(axis=0).astype(float)
    true = np.asarray(c["class_true"], float)[1:]
    recall = {name: ratio(tp[i], true[i]) for i, name in enumerate(space.classes)}
    present = [r for i, r in enumerate(recall.values()) if true[i] > 0]
    out: dict[str, Any] = {
        "points": n,
        "scored_points": scored,
        "click_share": ratio(g("clicks", 0), n),
        "labelled_share": ratio(g("labelled", 0), scored),
        "precision": ratio(g("correct", 0), g("labelled", 0)),
        "miou": sem["miou"],
        "iou_per_class": sem["iou_per_class"],
        "per_class": {name: {"precision": ratio(tp[i], pred[i]), "recall": recall[name], "labelled": int(pred[i])}
                      for i, name in enumerate(space.classes)},
        "min_class_recall": min(present) if present else None,
        "candidate_share": ratio(g("candidates", 0), scored),
        "mean_candidate_set_size": ratio(g("candidate_size_sum", 0), g("candidates", 0)),
        "candidate_contains_truth": ratio(g("candidates_contain_truth", 0), g("candidates", 0)),
        "iupc_table": {"sparse": ratio(g("clicks", 0), n),
                       "propagated": ratio(g("labelled_any", 0) - g("clicks", 0), n),
                       "negative": ratio(g("negative", 0), n)},
        "by_source": {name: {"share": ratio(v["points"], scored), "labelled_share": ratio(v["labelled"], scored),
                             "precision": ratio(v["correct"], v["labelled"])}
                      for name, v in sorted(c.get("by_source", {}).items())},
        "samples": g("samples", 0),
    }
    if c.get("panoptic"):
        # per class as the devkit's panoptic evaluator counts it; the mean over the thing classes that
        # occur (in the truth or the labels), since one world rarely holds every class
        pc = PanopticAccumulator.from_counts(space, min_points, c["panoptic"]).per_class()
        occur = space.thing_mask[1:] & ((pc["tp"] + pc["fp"] + pc["fn"]) > 0)
        for key in ("pq", "sq", "rq"):
            out[f"{key}_things"] = float(pc[key][occur].mean()) if occur.any() else None
        out["pq_per_class"] = {name: {k: float(pc[k][i]) for k in ("pq", "sq", "rq", "tp", "fp", "fn")}
                               for i, name in enumerate(space.classes) if occur[i]}
    return out
