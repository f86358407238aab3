"""Segmentation and panoptic metrics with the official conventions, on plain arrays.

Three conventions, each reproduced exactly so the project's numbers equal the official tools':

- **nuScenes-lidarseg** (``nuscenes.eval.lidarseg.evaluate.LidarSegEval``): a (K+1, K+1) confusion
  matrix, rows = ground truth, columns = prediction, index 0 = ignore; row and column 0 are zeroed;
  ``IoU_c = TP / (TP + FP + FN)`` with the union cast to float32 as the devkit does; a class with an
  empty union has IoU NaN and is left out of the mean (``nanmean``).
- **SemanticKITTI** (semantic-kitti-api ``iouEval``, also the mIoU the panoptic evaluator prints): only
  the ground-truth-ignore row is zeroed (a prediction of 0 on a labelled point is a false negative);
  a class with an empty union has IoU 0 and still counts in the mean.
- **Panoptic quality** (``nuscenes.eval.panoptic.panoptic_seg_evaluator.PanopticEval``, from
  semantic-kitti-api): points whose ground truth is ignore are dropped; within each class, a
  predicted segment and a ground-truth segment match when their IoU > 0.5 (TP); unmatched
  ground-truth segments with >= ``min_points`` points are FN, unmatched predicted segments with
  >= ``min_points`` points are FP (matched segments count whatever their size);
  ``SQ_c = sum IoU / TP``, ``RQ_c = TP / (TP + FP/2 + FN/2)``, ``PQ_c = SQ_c RQ_c``; PQ / SQ / RQ are
  plain means over classes 1..K (a class with no segments at all scores 0). A segment is a
  (class, instance key) pair: every stuff class is one segment per scan, a thing point with
  instance key 0 belongs to its class's "no instance" segment, as in the devkit.

Labels everywhere: (N,) integer arrays, class 1..K, 0 = ignore.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from lidarlift.classes import LabelSpace

EPS = 1e-15  # the panoptic evaluator's epsilon


def _check_labels(name: str, labels: np.ndarray, num_classes: int, allow_zero: bool = True) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name}: expected a (N,) label array, got shape {labels.shape}")
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < (0 if allow_zero else 1) or hi > num_classes:
            raise ValueError(f"{name}: labels must lie in {0 if allow_zero else 1}..{num_classes}, got {lo}..{hi}")
    return labels.astype(np.int64, copy=False)


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K+1, K+1) int64 counts, rows = ground truth ``gt``, columns = prediction ``pred``.

    gt, pred: (N,) int, class 1..K, 0 = ignore/unlabelled. Nothing is zeroed here; the score
    functions apply their own convention.
    """
    gt = _check_labels("ground truth", gt, num_classes)
    pred = _check_labels("prediction", pred, num_classes)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth has {gt.size} points but prediction has {pred.size}")
    n = num_classes + 1
    return np.bincount(gt * n + pred, minlength=n * n).reshape(n, n).astype(np.int64)


def lidarseg_scores(cm: np.ndarray) -> dict[str, Any]:
    """LidarSegEval's numbers from a (K+1, K+1) confusion matrix (rows gt, cols pred).

    Returns ``iou`` (K,) float64 (NaN where a class has neither ground truth nor predictions),
    ``miou`` (nanmean over 1..K), ``freq_weighted_iou``.
    """
    conf = np.array(cm, dtype=np.int64, copy=True)
    conf[0, :] = 0
    conf[:, 0] = 0
    inter = np.diagonal(conf)
    union = conf.sum(axis=1) + conf.sum(axis=0) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union.astype(np.float32)  # float32 union: the devkit's own cast
    iou = iou[1:].astype(np.float64)
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    total = conf.sum()
    fw = float(np.nansum(conf.sum(axis=1)[1:] * iou) / total) if total else float("nan")
    return {"iou": iou, "miou": miou, "freq_weighted_iou": fw}


def semantickitti_scores(cm: np.ndarray) -> dict[str, Any]:
    """semantic-kitti-api's IoU from a (K+1, K+1) confusion matrix (rows gt, cols pred).

    Returns ``iou`` (K,) float64 (0 for a class with an empty union) and ``miou`` (mean over 1..K),
    ``accuracy`` (correct / labelled points).
    """
    conf = np.array(cm, dtype=np.float64, copy=True)
    conf[0, :] = 0  # ground-truth ignore
    tp = np.diagonal(conf)
    fp = conf.sum(axis=0) - tp
    fn = conf.sum(axis=1) - tp
    union = np.maximum(tp + fp + fn, EPS)
    iou = (tp / union)[1:]
    labelled = conf[1:].sum()
    return {"iou": iou, "miou": float(iou.mean()), "accuracy": float(tp[1:].sum() / labelled) if labelled else float("nan")}


def _segments(sem: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment index per point (-1 where sem == 0), and per segment its class and point count."""
    out = np.full(sem.shape, -1, np.int64)
    keep = sem > 0
    if not keep.any():
        return out, np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, key_inv = np.unique(key[keep], return_inverse=True)
    pair = sem[keep] * (int(key_inv.max()) + 1) + key_inv
    uniq, inv, counts = np.unique(pair, return_inverse=True, return_counts=True)
    out[keep] = inv
    return out, uniq // (int(key_inv.max()) + 1), counts


@dataclass
class PanopticAccumulator:
    """Sums of the panoptic evaluator over scans; ``add`` one scan at a time, then ``scores``.

    ``min_points``: the devkit's ``min_inst_points`` (15 for nuScenes).
    """

    space: LabelSpace
    min_points: int = 15
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)
    iou_sum: np.ndarray = field(init=False)
    confusion: np.ndarray = field(init=False)
    scans: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        n = self.space.num_classes + 1
        self.tp = np.zeros(n, np.int64)
        self.fp = np.zeros(n, np.int64)
        self.fn = np.zeros(n, np.int64)
        self.iou_sum = np.zeros(n, np.float64)
        self.confusion = np.zeros((n, n), np.int64)

    def add(self, pred_sem: np.ndarray, pred_inst: np.ndarray, gt_sem: np.ndarray, gt_inst: np.ndarray) -> None:
        """Add one scan.

        pred_sem, gt_sem: (N,) int class 1..K (0 = ignore); pred_inst, gt_inst: (N,) int instance
        keys (any non-negative integers; a segment is the pair (class, key), so stuff points may all
        carry 0 and ground truth may carry nuScenes' 1000 * fine class + id).
        """
        k = self.space.num_classes
        pred_sem = _check_labels("panoptic prediction", pred_sem, k)
        gt_sem = _check_labels("panoptic ground truth", gt_sem, k)
        pred_inst, gt_inst = np.asarray(pred_inst, np.int64), np.asarray(gt_inst, np.int64)
        if not (pred_sem.shape == gt_sem.shape == pred_inst.shape == gt_inst.shape):
            raise ValueError(f"panoptic arrays differ in length: pred {pred_sem.shape}/{pred_inst.shape}, gt {gt_sem.shape}/{gt_inst.shape}")
        self.scans += 1
        self.confusion += confusion_matrix(gt_sem, pred_sem, k)
        valid = gt_sem != 0
        ps, pi, gs, gi = pred_sem[valid], pred_inst[valid], gt_sem[valid], gt_inst[valid]
        p_seg, p_cls, p_area = _segments(ps, pi)
        g_seg, g_cls, g_area = _segments(gs, gi)
        both = (ps == gs) & (ps > 0)
        matched_p = np.zeros(p_cls.size, bool)
        matched_g = np.zeros(g_cls.size, bool)
        if both.any():
            pair = p_seg[both] * max(g_cls.size, 1) + g_seg[both]
            uniq, inter = np.unique(pair, return_counts=True)
            pj, gj = uniq // max(g_cls.size, 1), uniq % max(g_cls.size, 1)
            iou = inter / (p_area[pj] + g_area[gj] - inter).astype(np.float64)
            hit = iou > 0.5
            np.add.at(self.tp, p_cls[pj[hit]], 1)
            np.add.at(self.iou_sum, p_cls[pj[hit]], iou[hit])
            matched_p[pj[hit]] = True
            matched_g[gj[hit]] = True
        np.add.at(self.fn, g_cls[(g_area >= self.min_points) & ~matched_g], 1)
        np.add.at(self.fp, p_cls[(p_area >= self.min_points) & ~matched_p], 1)

    def counts(self) -> dict[str, Any]:
        """The accumulated sums as JSON counts (add them with :func:`lidarlift.evaluate.counts.add`)."""
        return {"scans": self.scans, "tp": self.tp.tolist(), "fp": self.fp.tolist(), "fn": self.fn.tolist(),
                "iou_sum": self.iou_sum.tolist(), "confusion": self.confusion.tolist()}

    @classmethod
    def from_counts(cls, space: LabelSpace, min_points: int, counts: dict[str, Any]) -> "PanopticAccumulator":
        """An accumulator holding summed :meth:`counts`."""
        acc = cls(space, min_points)
        acc.scans = int(counts["scans"])
        acc.tp, acc.fp, acc.fn = (np.asarray(counts[k], np.int64) for k in ("tp", "fp", "fn"))
        acc.iou_sum = np.asarray(counts["iou_sum"], np.float64)
        acc.confusion = np.asarray(counts["confusion"], np.int64)
        return acc

    def per_class(self) -> dict[str, np.ndarray]:
        """(K,) arrays ``pq``, ``sq``, ``rq``, ``tp``, ``fp``, ``fn``."""
        tp = self.tp.astype(np.float64)
        sq = self.iou_sum / np.maximum(tp, EPS)
        rq = tp / np.maximum(tp + 0.5 * self.fp + 0.5 * self.fn, EPS)
        return {"pq": (sq * rq)[1:], "sq": sq[1:], "rq": rq[1:], "tp": self.tp[1:], "fp": self.fp[1:], "fn": self.fn[1:]}

    def scores(self) -> dict[str, Any]:
        """PQ / SQ / RQ (means over 1..K) for all classes, things and stuff; PQ-dagger; the panoptic
        evaluator's own mIoU (SemanticKITTI convention); per-class arrays."""
        pc = self.per_class()
        things = self.space.thing_mask[1:]
        stuff = ~things
        kitti = semantickitti_scores(self.confusion)
        out: dict[str, Any] = {
            "pq": float(pc["pq"].mean()), "sq": float(pc["sq"].mean()), "rq": float(pc["rq"].mean()),
            "pq_things": _mean(pc["pq"][things]), "sq_things": _mean(pc["sq"][things]), "rq_things": _mean(pc["rq"][things]),
            "pq_stuff": _mean(pc["pq"][stuff]), "sq_stuff": _mean(pc["sq"][stuff]), "rq_stuff": _mean(pc["rq"][stuff]),
            "pq_dagger": float(np.mean(np.concatenate([pc["pq"][things], kitti["iou"][stuff]]))),
            "panoptic_miou": kitti["miou"],
            "per_class": pc,
        }
        return out


def chance_miou(cm: np.ndarray) -> float | None:
    """Expected mIoU of a predictor that draws classes at random with the true class frequencies
    ``p_c``: ``IoU_c = p_c / (2 - p_c)``, averaged over the classes present (the floor a network is
    "well above"). ``cm``: (K+1, K+1) confusion, rows = ground truth; row 0 (ignore) is left out."""
    gt = np.asarray(cm, np.float64)[1:, :].sum(axis=1)
    if gt.sum() == 0:
        return None
    p = gt[gt > 0] / gt.sum()
    return float(np.mean(p / (2 - p)))


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


# ---------------------------------------------------------------------------------------------
# Scores in the JSON layout of results/summary.json


def named(values: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
    """{class name: value}, NaN -> None (JSON has no NaN)."""
    return {n: _finite(v) for n, v in zip(names, np.asarray(values, dtype=np.float64))}


def _finite(v: Any) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def semantic_report(cm: np.ndarray, space: LabelSpace) -> dict[str, Any]:
    """Semantic numbers of a confusion matrix in the label space's official convention.

    nuScenes (16 classes): LidarSegEval's ``miou`` / ``iou_per_class`` / ``freq_weighted_iou``;
    SemanticKITTI (19 classes): semantic-kitti-api's ``miou`` / ``iou_per_class``. Both report
    ``accuracy`` on labelled points and the number of ``points`` scored.
    """
    kitti = semantickitti_scores(cm)
    if space.name == "semantickitti19":
        sem = {"miou": kitti["miou"], "iou_per_class": named(kitti["iou"], space.classes), "convention": "semantic-kitti-api"}
    else:
        ls = lidarseg_scores(cm)
        sem = {"miou": _finite(ls["miou"]), "iou_per_class": named(ls["iou"], space.classes),
               "freq_weighted_iou": _finite(ls["freq_weighted_iou"]), "convention": "nuscenes-lidarseg"}
    sem["accuracy"] = _finite(kitti["accuracy"])
    sem["points"] = int(np.asarray(cm)[1:].sum())
    return sem


def panoptic_report(acc: PanopticAccumulator) -> dict[str, Any]:
    """Panoptic numbers in summary layout (``pq``, ``sq``, ``rq``, ``pq_things``, ... and
    ``pq_per_class`` {name: {pq, sq, rq}})."""
    s = acc.scores()
    pc = s.pop("per_class")
    out = {k: _finite(v) for k, v in s.items()}
    out["pq_per_class"] = {
        name: {"pq": float(pc["pq"][i]), "sq": float(pc["sq"][i]), "rq": float(pc["rq"][i]),
               "tp": int(pc["tp"][i]), "fp": int(pc["fp"][i]), "fn": int(pc["fn"][i])}
        for i, name in enumerate(acc.space.classes)
    }
    out["min_inst_points"] = acc.min_points
    return out


def max_abs_diff(ours: Any, theirs: Any, path: str = "") -> tuple[float, str]:
    """Largest absolute difference between the numbers two nested dicts share, and where it is.

    Both None / NaN counts as equal; a number on one side and None / NaN on the other is ``inf``.
    Keys present on one side only are not compared.
    """
    if isinstance(ours, dict) and isinstance(theirs, dict):
        worst, where = 0.0, ""
        for key in ours.keys() & theirs.keys():
            d, w = max_abs_diff(ours[key], theirs[key], f"{path}.{key}" if path else str(key))
            if d > worst or (d == worst and not where):
                worst, where = d, w
        return worst, where
    if _is_number(ours) and _is_number(theirs):
        a, b = _nan(ours), _nan(theirs)
        if np.isnan(a) and np.isnan(b):
            return 0.0, path
        if np.isnan(a) or np.isnan(b):
            return float("inf"), path
        return abs(a - b), path
    return 0.0, ""


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float, np.number)) and not isinstance(v, bool))


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)
