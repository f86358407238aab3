"""E-step of EM rounds >= 1: new pseudo-labels from the previous round's network predictions.

Both methods start from round 0's labels (clicks, propagation or 2D lifting, which stay as they were,
with their round 0) and read the ``predict`` store of round ``r - 1`` (``logits`` (P, K), ``features``
(P, F)). Clicks always win.

**IUPC** (``estep.method: iupc``), as IUPC's ``NuScenesLCEstepRunner``: per keyframe, class
prototypes are the mean features of the clicked points; prototype scores are feature . prototype,
softmax over the clicked classes; a "dynamic threshold" keeps a label only if exactly one class
reaches ``max(floor, best score of that class in the keyframe - t)`` (t = ``prototype_margin`` 0.4 on
the prototype scores, ``classifier_margin`` 0.1 on the classifier's softmax); a thing label of the
classifier is dropped where the prototype label is another class; a label outside the point's
candidate set is dropped, and only points with a candidate set (IUPC's negative labels) get one.
Then ``confidence`` (config) is the least classifier probability a label needs.

**Ours** (``estep.method: ours``): the same agreement rule, but
- every unlabelled point whose candidate set holds at most ``max_candidates`` classes gets a label
  inside its set (on the synthetic world the CPU network's labels are ~98 % right where the set has
  2-4 classes -- the ground points' flat classes, or a few classes met in the graph -- but ~78 %
  where only the non-ground prior restricts it);
- prototypes from the clicked and the round-0 labelled points (many more than the clicks alone, so
  also without clicks in the annotation-free mode), and they must name the network's class;
- per-class probability thresholds calibrated on the shard: the lowest probability at which the
  network's labels agree with round 0's on the points round 0 labelled in ``calibration`` of the
  cases (:func:`calibrate`);
- a round-0 label (not a click) that the network contradicts with probability >= ``contradict``
  while the prototypes agree with the network becomes a candidate set of both classes (source
  ``candidates``), so an error of round 0 stops being trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lidarlift.classes import LabelSpace, candidate_bit, candidates_to_sets

from .propagate import CANDIDATES, CLICK, NETWORK, NONE, Labels

@dataclass(frozen=True)
class EStepParams:
    """Config ``pseudolabels.estep`` (defaults and meaning: config/schema.yaml)."""

    method: str
    prototype_margin: float
    classifier_margin: float
    floor: float
    confidence: float
    contradict: float
    agree: str  # ours: "all" = prototypes must name the class; "no_conflict" = must not name another
    max_candidates: int  # ours: only points with at most this many possible classes get a network label
    calibration: float | None  # ours: per-class thresholds where round-0 agreement reaches this (None: off)

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None = None) -> "EStepParams":
        """From the section (missing keys take the schema's defaults); bad values raise ConfigError naming the key."""
        from lidarlift.config import typed

        return typed(cls, "pseudolabels.estep", cfg)


def softmax(x: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """Row softmax of (N, K) ``x``; with ``allowed`` (N, K) or (K,) bool, other columns get 0."""
    x = x.astype(np.float64)
    if allowed is not None:
        x = np.where(allowed, x, -np.inf)
    m = np.max(x, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    return np.divide(e, s, out=np.zeros_like(e), where=s > 0)


def dynamic_threshold_label(score: np.ndarray, margin: float, floor: float = 0.5) -> np.ndarray:
    """IUPC's filter: (N,) int64 argmax class index 0..K-1, or -1 unless exactly one class reaches its
    threshold ``max(floor, max score of that class among the points predicting it - margin)``."""
    n, k = score.shape
    if n == 0:
        return np.zeros(0, np.int64)
    best = score.argmax(axis=1)
    top = score[np.arange(n), best]
    th = np.full(k, floor)
    peak = np.full(k, -np.inf)
    np.maximum.at(peak, best, top)
    th = np.maximum(th, np.where(np.isfinite(peak), peak - margin, floor))
    passing = (score >= th[None, :]).sum(axis=1)
    return np.where(passing == 1, best, -1)


def prototype_scores(features: np.ndarray, index: np.ndarray, label: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) prototype scores (feature . prototype, softmax over existing classes, 0 elsewhere) and the
    (K,) bool mask of classes with a prototype; prototypes = mean feature of ``index`` points per class."""
    f = features.astype(np.float64)
    protos = np.zeros((k, f.shape[1]))
    counts = np.bincount(label.astype(np.int64) - 1, minlength=k)[:k] if len(label) else np.zeros(k, np.int64)
    if len(index):
        np.add.at(protos, label.astype(np.int64) - 1, f[index])
    exist = counts > 0
    protos[exist] /= counts[exist, None]
    raw = f @ protos.T
    return np.where(exist[None, :], softmax(raw, exist), 0.0), exist


def calibrate(r0: list[Labels], logits: list[np.ndarray], k: int, target: float, min_points: int = 50) -> np.ndarray:
    """Per-class least network probability whose labels agree with round 0's often enough: (K,) float.

    On the points round 0 labelled (clicks and propagation, ~98 % precise), the network's predictions of
    class c with probability >= t agree with round 0 in a share that falls as t falls; the threshold of c
    is the lowest t keeping that share >= ``target`` over at least ``min_points`` points (inf: never).
    Optimistic, since the network was trained on those very labels -- hence a target above the
    precision wanted.
    """
    probs, preds, right = [], [], []
    for lab, lg in zip(r0, logits):
        sel = lab.label > 0
        if not sel.any():
            continue
        pr = softmax(lg[sel])
        top = pr.argmax(axis=1)
        probs.append(pr[np.arange(len(top)), top])
        preds.append(top)
        right.append(top == lab.label[sel].astype(np.int64) - 1)
    out = np.full(k, np.inf)
    if not probs:
        return out
    probs, preds, right = np.concatenate(probs), np.concatenate(preds), np.concatenate(right)
    for c in range(k):
        sel = preds == c
        if sel.sum() < min_points:
            continue
        order = np.argsort(-probs[sel], kind="stable")
        pr, ok = probs[sel][order], right[sel][order]
        precision = np.cumsum(ok) / np.arange(1, len(ok) + 1)
        good = np.flatnonzero((precision >= target) & (np.arange(1, len(ok) + 1) >= min_points))
        if len(good):
            out[c] = pr[good[-1]]
    return out


def estep(r0: Labels, logits: np.ndarray, features: np.ndarray, space: LabelSpace, p: EStepParams, round: int,
          thresholds: np.ndarray | None = None) -> Labels:
    """Round ``round`` pseudo-labels of one keyframe from round 0's and the network's predictions.

    Args:
        r0: round-0 labels of the keyframe (N points).
        logits: (N, K) float network logits (column c - 1 = class c); features: (N, F) float.
        thresholds: (K,) per-class least probability (ours: from :func:`calibrate` over the shard).
    """
    n, k = len(r0.label), space.num_classes
    out = r0.copy()
    if n == 0:
        return out
    thing = space.thing_mask[1:]
    clicks = np.flatnonzero(r0.source == CLICK)
    allowed = candidates_to_sets(r0.candidate_mask, k)
    prob = softmax(logits)
    proto_index = clicks if p.method == "iupc" else np.flatnonzero(r0.label > 0)
    proto, exist = prototype_scores(features, proto_index, r0.label[proto_index], k)
    emb = dynamic_threshold_label(proto, p.prototype_margin, p.floor) if exist.any() else np.full(n, -1)
    cls = dynamic_threshold_label(prob, p.classifier_margin, p.floor)
    ok = cls >= 0
    if p.method == "iupc":  # IUPC: a thing label needs the prototypes not to name another class
        ok &= ~((emb >= 0) & (emb != cls) & thing[np.maximum(cls, 0)])
    else:  # ours: every label needs the prototypes to name the same class
        ok &= (emb == cls) | ~exist[np.maximum(cls, 0)] if p.agree == "all" else ~((emb >= 0) & (emb != cls))
    top = prob[np.arange(n), np.maximum(cls, 0)]
    ok &= allowed[np.arange(n), np.maximum(cls, 0)] & (top >= p.confidence)
    if thresholds is not None:
        ok &= top >= thresholds[np.maximum(cls, 0)]
    if p.method == "iupc":
        target = (r0.label == 0) & (r0.source == CANDIDATES)
    else:
        target = (r0.label == 0) & (allowed.sum(axis=1) <= p.max_candidates)
    take = ok & target
    new = (cls + 1).astype(np.uint8)
    out.label[take] = new[take]
    out.confidence[take] = prob[take, cls[take]].astype(np.float32)
    out.candidate_mask[take] = candidate_bit(new[take])
    out.source[take] = NETWORK
    out.round[take] = round
    if p.method == "ours" and p.contradict < 1:
        # round-0 labels (not clicks) that the network and the prototypes both contradict
        full = softmax(logits)
        net = full.argmax(axis=1)
        lab0 = r0.label.astype(np.int64) - 1
        emb_full = proto.argmax(axis=1)
        bad = (r0.label > 0) & (r0.source != CLICK) & (net != lab0) & (full[np.arange(n), net] >= p.contradict) \
            & (emb_full == net) & exist[net]
        out.candidate_mask[bad] = (candidate_bit(r0.label[bad]) | candidate_bit(net[bad] + 1)).astype(np.uint32)
        out.label[bad] = 0
        out.confidence[bad] = 0.0
        out.source[bad] = CANDIDATES
        out.round[bad] = round
    out.source[(out.label == 0) & (out.source == NETWORK)] = NONE
    return out
