"""Quality of pseudo-labels against ground truth, as counts (summed over keyframes and shards, then divided).

- :func:`label_counts`: per source (``lidarlift.artifacts.SOURCES``) the points, labelled points and
  correct labels; candidate sets (share, summed size, containing the true class); per-class true
  positives / predicted / true counts; IUPC's table (sparse / propagated / negative).
  A label is judged only where the truth is a class (truth 0 = ignore is neither right nor wrong);
  shares are of all points.
- :func:`panoptic_counts`: panoptic quality counts per thing class, as the SemanticKITTI / nuScenes
  panoptic evaluators count them: points whose truth is ignore are removed; per class, a predicted
  segment (class + instance id) and a true instance match when their IoU > 0.5; unmatched true
  instances with >= ``min_points`` points are false negatives, unmatched predicted segments with >=
  ``min_points`` points false positives. PQ = sum IoU(TP) / (TP + FP/2 + FN/2), SQ = sum IoU / TP,
  RQ = TP / (TP + FP/2 + FN/2).
- :func:`ratios`: the shares and precisions from summed counts.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lidarlift.artifacts import SOURCES
from lidarlift.classes import LabelSpace, candidates_to_sets

from .propagate import CLICK, Labels


def _popcount(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint64)
    return np.unpackbits(m.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1).astype(np.int64)


def label_counts(labels: Labels, truth: np.ndarray | None, space: LabelSpace, fov: np.ndarray | None = None) -> dict[str, Any]:
    """Counts of one keyframe's (or shard's) pseudo-labels against ``truth`` (N,) uint8 1..K (0 = ignore).

    Without truth only the coverage counts are filled.
    """
    k = space.num_classes
    n = len(labels.label)
    lab = labels.label.astype(np.int64)
    has = lab > 0
    size = _popcount(labels.candidate_mask)
    cand = ~has & (size > 0) & (size < k)
    out: dict[str, Any] = {
        "points": n,
        "fov_points": int(fov.sum()) if fov is not None else n,
        "clicks": int((labels.source == CLICK).sum()),
        "labelled": int(has.sum()),
        "candidates": int(cand.sum()),
        "candidate_size_sum": int(size[cand].sum()),
        "negative": int((cand & (size > 1)).sum()),
        "by_source": {},
    }
    if truth is not None:
        truth = truth.astype(np.int64)
        judged = has & (truth > 0)
        correct = judged & (lab == truth)
        in_set = candidates_to_sets(labels.candidate_mask, k)[np.arange(n), np.maximum(truth - 1, 0)]
        out.update({
            "judged": int(judged.sum()),
            "correct": int(correct.sum()),
            "candidates_judged": int((cand & (truth > 0)).sum()),
            "candidates_contain_truth": int((cand & (truth > 0) & in_set).sum()),
            "true_points": int((truth > 0).sum()),
            "class_tp": np.bincount(lab[correct], minlength=k + 1)[1:].tolist(),
            "class_pred": np.bincount(lab[judged], minlength=k + 1)[1:].tolist(),
            "class_true": np.bincount(truth[truth > 0], minlength=k + 1)[1:].tolist(),
        })
    for code, name in SOURCES.items():
        sel = labels.source == code
        if not sel.any():
            continue
        entry = {"points": int(sel.sum()), "labelled": int((sel & has).sum())}
        if truth is not None:
            entry["judged"] = int((sel & has & (truth > 0)).sum())
            entry["correct"] = int((sel & has & (truth > 0) & (lab == truth)).sum())
        out["by_source"][name] = entry
    return out


def add_counts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Sum two count dicts (numbers add, lists add element-wise, dicts recurse)."""
    out = dict(a)
    for key, v in b.items():
        if key not in out:
            out[key] = v
        elif isinstance(v, dict):
            out[key] = add_counts(out[key], v)
        elif isinstance(v, list):
            out[key] = [x + y for x, y in zip(out[key], v)]
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = out[key] + v
    return out


def _div(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def ratios(c: dict[str, Any], space: LabelSpace) -> dict[str, Any]:
    """Shares and precisions from summed :func:`label_counts`."""
    n = c.get("points", 0)
    out: dict[str, Any] = {
        "points": n,
        "click_share": _div(c.get("clicks", 0), n),
        "labelled_share": _div(c.get("labelled", 0), n),
        "precision": _div(c.get("correct", 0), c.get("judged", 0)),
        "candidate_share": _div(c.get("candidates", 0), n),
        "mean_candidate_set_size": _div(c.get("candidate_size_sum", 0), c.get("candidates", 0)),
        "candidate_contains_truth": _div(c.get("candidates_contain_truth", 0), c.get("candidates_judged", 0)),
        "iupc_table": {
            "sparse": _div(c.get("clicks", 0), n),
            "propagated": _div(c.get("labelled", 0) - c.get("clicks", 0), n),
            "negative": _div(c.get("negative", 0), n),
        },
        "by_source": {
            name: {
                "share": _div(s.get("points", 0), n),
                "labelled_share": _div(s.get("labelled", 0), n),
                "precision": _div(s.get("correct", 0), s.get("judged", 0)),
            }
            for name, s in c.get("by_source", {}).items()
        },
    }
    if "class_tp" in c:
        tp, pred, true = (np.asarray(c[k], float) for k in ("class_tp", "class_pred", "class_true"))
        out["per_class"] = {
            name: {"precision": _div(tp[i], pred[i]), "recall": _div(tp[i], true[i]), "labelled": int(pred[i])}
            for i, name in enumerate(space.classes)
        }
    return out


# ----------------------------------------------------------------------------------------------
# panoptic quality


def panoptic_counts(pred_label: np.ndarray, pred_instance: np.ndarray, true_label: np.ndarray,
                    true_instance: np.ndarray, classes: list[int], min_points: int = 15) -> dict[str, list[float]]:
    """PQ counts of one keyframe per class in ``classes``: ``tp``, ``fp``, ``fn``, ``iou_sum`` (lists).

    Args:
        pred_label: (N,) class 1..K (0 = none); ``pred_instance`` (N,) int instance id (0 = none: such
            thing points form no segment).
        true_label: (N,) 1..K (0 = ignore: these points are removed first); ``true_instance`` (N,) int
            instance key (0 = none).
    """
    keep = true_label > 0
    pl, pi = pred_label[keep].astype(np.int64), pred_instance[keep].astype(np.int64)
    tl, ti = true_label[keep].astype(np.int64), true_instance[keep].astype(np.int64)
    out = {"tp": [], "fp": [], "fn": [], "iou_sum": []}
    for c in classes:
        pm = (pl == c) & (pi > 0)
        tm = (tl == c) & (ti > 0)
        p_ids, p_inv, p_cnt = np.unique(pi[pm], return_inverse=True, return_counts=True)
        t_ids, t_inv, t_cnt = np.unique(ti[tm], return_inverse=True, return_counts=True)
        both = pm & tm
        tp = fp = fn = 0
        iou_sum = 0.0
        matched_p = np.zeros(len(p_ids), bool)
        matched_t = np.zeros(len(t_ids), bool)
        if both.any():
            pb = np.searchsorted(p_ids, pi[both])
            tb = np.searchsorted(t_ids, ti[both])
            pairs, inter = np.unique(pb * max(len(t_ids), 1) + tb, return_counts=True)
            pa, ta = pairs // max(len(t_ids), 1), pairs % max(len(t_ids), 1)
            iou = inter / (p_cnt[pa] + t_cnt[ta] - inter)
            hit = iou > 0.5
            tp = int(hit.sum())
            iou_sum = float(iou[hit].sum())
            matched_p[pa[hit]] = True
            matched_t[ta[hit]] = True
        fn = int(((t_cnt >= min_points) & ~matched_t).sum())
        fp = int(((p_cnt >= min_points) & ~matched_p).sum())
        out["tp"].append(tp)
        out["fp"].append(fp)
        out["fn"].append(fn)
        out["iou_sum"].append(iou_sum)
    return out


def panoptic_quality(c: dict[str, list[float]], names: list[str]) -> dict[str, Any]:
    """PQ / SQ / RQ per class and their means from summed :func:`panoptic_counts`."""
    per = {}
    pqs, sqs, rqs = [], [], []
    for i, name in enumerate(names):
        tp, fp, fn, iou = c["tp"][i], c["fp"][i], c["fn"][i], c["iou_sum"][i]
        denom = tp + 0.5 * fp + 0.5 * fn
        if denom == 0:
            per[name] = {"pq": None, "sq": None, "rq": None, "tp": tp, "fp": fp, "fn": fn}
            continue
        sq = iou / tp if tp else 0.0
        rq = tp / denom
        per[name] = {"pq": sq * rq, "sq": sq, "rq": rq, "tp": tp, "fp": fp, "fn": fn}
        pqs.append(sq * rq)
        sqs.append(sq)
        rqs.append(rq)
    mean = (lambda v: float(np.mean(v)) if v else None)
    return {"pq": mean(pqs), "sq": mean(sqs), "rq": mean(rqs), "per_class": per}
