"""Fitting our propagation's constants (:mod:`lidarlift.pseudolabels.propagate`) from labelled data.

Three fits, all on the tuning world only (``bench/fit_tuning.py`` runs them and writes the results);
the caller hands in what ground truth says, nothing here reads it:

- **log-odds tables** (:func:`fit_log_odds`): per edge kind (ground / object / mixed) the prior
  log-odds that the two ends of an edge differ in class, and per cue its log-likelihood ratio of
  "differ" against "same" -- the naive-Bayes model that :func:`~.propagate.edge_costs` sums. Counts
  are accumulated by :class:`EdgeStats` over the edges that :func:`~.propagate.edge_cues` builds (the
  production graph). A continuous cue's value is spread over its two neighbouring knots with linear
  (hat) weights, so the table interpolated between the knots is the log-ratio of these soft
  histograms; NaN values count in the ``unseen`` bin; each bin is shrunk towards "no evidence" by
  :data:`SHRINK_EDGES` edges split in the kind's differ / same proportion.
- **cue weights** (:func:`fit_weights`): a logistic regression of "differ" on the cues' log-likelihood
  ratios, with an offset per edge kind (which becomes the kind's ``prior`` in the tables): cues that
  repeat each other (colour and superpixels; weight-free masks that follow the pre-segments) are not
  counted twice.
- **thresholds** (:func:`fit_thresholds`): ``label_cost``, ``margin``, ``margin_flat`` and
  ``candidate_cost`` on a grid: the largest labelled share whose precision is at least the target
  (pooled, and at least ``min_group_precision`` in every scene), among the candidate costs whose
  candidate sets contain the true class at least ``min_candidate_truth`` of the time. Labels and
  candidate sets are decided by the production functions (:func:`~.propagate.labelled_mask`,
  :func:`~.propagate.candidate_sets`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lidarlift.classes import LabelSpace

from .propagate import (CONTINUOUS_CUES, CUE_STATES, EDGE_KINDS, KIND_CUES, EdgeCues, GraphParams, candidate_sets,
                        labelled_mask, prior_mask)

#: Knots of the continuous cues' tables (distance in distance units, height step in m, intensity
#: change, CIE-Lab distance): a design choice, dense where the evidence changes fast.
KNOTS: dict[str, tuple[float, ...]] = {
    "distance": (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
    "height": (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
    "intensity": (0.0, 1.0, 2.0, 4.0, 8.0, 16.0),
    "color": (0.0, 0.5, 2.0, 5.0, 10.0, 20.0, 40.0),
}
#: Pseudo-edges per bin (split as the kind's differ / same edges are): a bin seen on few edges says
#: little, and an empty one says nothing (log-ratio 0).
SHRINK_EDGES = 20.0


def hat_weights(x: np.ndarray, knots: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation weights of values ``x`` (E,) over ``knots`` (K,): (lower knot (E,) int,
    its weight (E,) float, upper knot (E,) int); the upper knot's weight is 1 - the lower's. Values
    beyond the ends go wholly to the end knot (as ``np.interp`` holds the end value)."""
    k = np.asarray(knots, np.float64)
    xc = np.clip(np.asarray(x, np.float64), k[0], k[-1])
    hi = np.clip(np.searchsorted(k, xc, side="right"), 1, len(k) - 1)
    lo = hi - 1
    w_lo = (k[hi] - xc) / (k[hi] - k[lo])
    return lo, w_lo, hi


@dataclass
class EdgeStats:
    """Soft counts of edges whose ends differ / agree in class, per edge kind and cue (accumulated
    over keyframes with :meth:`add`). ``counts[kind][cue]``: (bins, 2) float64, column 0 same, 1
    differ; continuous cues have ``len(KNOTS[cue]) + 1`` bins (the last: unseen), categorical ones one
    per state; ``edges[kind]``: (2,) same / differ edges."""

    knots: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(KNOTS))
    counts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    edges: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in EDGE_KINDS:
            self.edges.setdefault(kind, np.zeros(2))
            self.counts.setdefault(kind, {c: np.zeros((self._bins(c), 2)) for c in KIND_CUES[kind]})

    def _bins(self, cue: str) -> int:
        return len(self.knots[cue]) + 1 if cue in CONTINUOUS_CUES else len(CUE_STATES[cue])

    def add(self, cues: EdgeCues, differ: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Count the edges of one keyframe: ``differ`` (E,) bool the ends' true classes differ; ``valid``
        (E,) bool the edges to count (both ends with a class), default all. Cues that are None (a stage
        absent) are not counted."""
        differ = np.asarray(differ, bool)
        valid = np.ones(len(differ), bool) if valid is None else np.asarray(valid, bool)
        for k, kind in enumerate(EDGE_KINDS):
            sel = valid & (cues.kind == k)
            col = differ[sel].astype(np.int64)
            self.edges[kind] += np.bincount(col, minlength=2)
            for cue in KIND_CUES[kind]:
                values = getattr(cues, cue)
                if values is None:
                    continue
                v = values[sel]
                table = self.counts[kind][cue]
                if cue in CONTINUOUS_CUES:
                    seen = np.isfinite(v)
                    lo, w, hi = hat_weights(v[seen], self.knots[cue])
                    np.add.at(table, (lo, col[seen]), w)
                    np.add.at(table, (hi, col[seen]), 1.0 - w)
                    np.add.at(table, (np.full(int((~seen).sum()), len(self.knots[cue])), col[~seen]), 1.0)
                else:
                    np.add.at(table, (v.astype(np.int64), col), 1.0)

    def summary(self) -> dict[str, dict[str, int]]:
        """Edges counted per kind: {kind: {"same", "differ"}}."""
        return {kind: {"same": int(e[0]), "differ": int(e[1])} for kind, e in self.edges.items()}


def _log_ratio(table: np.ndarray, edges: np.ndarray, shrink: float) -> np.ndarray:
    """(bins,) log p(bin | differ) / p(bin | same) of soft counts ``table`` (bins, 2), each bin shrunk
    by ``shrink`` pseudo-edges split as ``edges`` (2,) are (so an empty bin has ratio 0)."""
    share = edges / max(edges.sum(), 1.0)
    same = (table[:, 0] + shrink * share[0]) / (edges[0] + shrink * share[0] * len(table))
    differ = (table[:, 1] + shrink * share[1]) / (edges[1] + shrink * share[1] * len(table))
    return np.log(differ / same)


def fit_log_odds(stats: EdgeStats, shrink: float = SHRINK_EDGES, decimals: int = 3) -> dict[str, dict[str, Any]]:
    """The log-odds tables (the ``log_odds`` entry of :func:`~.propagate.load_log_odds`'s file) of the
    counted edges. Raises ValueError when a kind has no edge of either outcome (nothing to fit)."""
    out: dict[str, dict[str, Any]] = {}
    for kind in EDGE_KINDS:
        e = stats.edges[kind]
        if e.min() <= 0:
            raise ValueError(f"log-odds fit: edge kind {kind!r} has {int(e[0])} same-class and {int(e[1])} "
                             "different-class edges; the tuning world needs both")
        t: dict[str, Any] = {"prior": round(float(np.log(e[1] / e[0])), decimals)}
        for cue in KIND_CUES[kind]:
            llr = np.round(_log_ratio(stats.counts[kind][cue], e, shrink), decimals)
            if cue in CONTINUOUS_CUES:
                t[cue] = {"knots": list(stats.knots[cue]), "llr": [float(v) for v in llr[:-1]], "unseen": float(llr[-1])}
            else:
                t[cue] = {s: float(v) for s, v in zip(CUE_STATES[cue], llr)}
        out[kind] = t
    return out


# ----------------------------------------------------------------------------------------------
# thresholds


@dataclass
class ThresholdSample:
    """One keyframe's propagation outcome before the thresholds, with its truth (N points, Kc clicked
    classes). ``best`` (N,) nearest class, ``d1`` / ``d2`` (N,) costs of the nearest and second-nearest
    class (:meth:`~.propagate.SeedDistances.best_two`, computed up to at least the largest candidate
    cost tried); ``per_class`` (N, Kc) and ``classes`` (Kc,); ``ground`` (N,) bool; ``click`` (N,) bool
    clicked points (always labelled, with their true class); ``truth`` (N,) class 0..K (0: not scored);
    ``group``: the scene it belongs to (precision is also required per scene)."""

    best: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    per_class: np.ndarray
    classes: np.ndarray
    ground: np.ndarray
    click: np.ndarray
    truth: np.ndarray
    group: str = ""


@dataclass
class ThresholdFit:
    """The fitted thresholds and what they give on the tuning world (counts over scored points)."""

    label_cost: float
    margin: float
    margin_flat: float
    candidate_cost: float
    labelled_share: float
    precision: float
    candidate_contains_truth: float | None
    scored: int
    worst_group_precision: float

    def params(self) -> dict[str, float]:
        return {"label_cost": self.label_cost, "margin": self.margin, "margin_flat": self.margin_flat,
                "candidate_cost": self.candidate_cost}


#: The threshold grids (nats).
LABEL_COSTS = tuple(float(v) for v in np.arange(-6.0, 2.01, 0.25))
MARGINS = tuple(float(v) for v in np.arange(0.0, 6.01, 0.25))
CANDIDATE_STEPS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # candidate_cost - label_cost


def _outcomes(samples: list[ThresholdSample], groups: list[str], space: LabelSpace, p: GraphParams
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per group and margin in :data:`MARGINS`: (labelled, correct) counts of the scored, unclicked
    points whose nearest class is flat (row 0) / not flat (row 1) under ``p`` with that margin. Shapes
    (G, 2, M)."""
    lab = np.zeros((len(groups), 2, len(MARGINS)), np.int64)
    cor = np.zeros((len(groups), 2, len(MARGINS)), np.int64)
    for s in samples:
        g = groups.index(s.group)
        use = (s.truth > 0) & ~s.click
        flat = space.flat_mask[s.best]
        ok = s.best == s.truth
        for m, margin in enumerate(MARGINS):
            got = labelled_mask(s.best, s.d1, s.d2, space, replace(p, margin=margin, margin_flat=margin)) & use
            for row, part in enumerate((flat, ~flat)):
                lab[g, row, m] += int((got & part).sum())
                cor[g, row, m] += int((got & part & ok).sum())
    return lab, cor


def _candidate_truth(samples: list[ThresholdSample], space: LabelSpace, p: GraphParams) -> float | None:
    """Share of the scored, unlabelled points with a candidate set (more than none, fewer than all
    classes) whose set holds their true class, under ``p`` (as the evaluation counts it)."""
    hit = total = 0
    for s in samples:
        rest = ~(labelled_mask(s.best, s.d1, s.d2, space, p) | s.click) & (s.truth > 0)
        prior = prior_mask(s.ground[rest], space) if p.ground_prior else np.full(int(rest.sum()), space.all_candidates, np.uint32)
        cand = candidate_sets(s.per_class[rest], s.classes, prior, space, p)
        size = np.unpackbits(cand.view(np.uint8).reshape(-1, 4), axis=1).sum(axis=1)
        has_set = (size > 0) & (size < space.num_classes)
        truth = s.truth[rest]
        contains = (cand >> np.maximum(truth - 1, 0).astype(np.uint32)) & 1
        hit += int((has_set & (contains == 1)).sum())
        total += int(has_set.sum())
    return hit / total if total else None


def fit_thresholds(samples: list[ThresholdSample], space: LabelSpace, base: GraphParams,
                   min_precision: float = 0.99, min_candidate_truth: float = 0.95,
                   min_group_precision: float = 0.0) -> ThresholdFit:
    """The thresholds with the largest labelled share at precision >= ``min_precision`` over all
    samples and >= ``min_group_precision`` in each group (scene) (module doc).

    ``base`` gives every other parameter (``margin_flat`` must not be None). Raises ValueError when no
    grid point reaches the precision."""
    groups = sorted({s.group for s in samples})
    scored = sum(int((s.truth > 0).sum()) for s in samples)
    clicks = np.array([sum(int((s.click & (s.truth > 0)).sum()) for s in samples if s.group == g) for g in groups])
    best: ThresholdFit | None = None
    for lc in LABEL_COSTS:
        for step in CANDIDATE_STEPS:
            p = replace(base, label_cost=lc, candidate_cost=lc + step)
            lab, cor = _outcomes(samples, groups, space, p)
            # flat and non-flat points depend on their own margin only: every pair of margins at once,
            # per group (G, M_flat, M_other)
            g_lab = lab[:, 0, :, None] + lab[:, 1, None, :] + clicks[:, None, None]
            g_cor = cor[:, 0, :, None] + cor[:, 1, None, :] + clicks[:, None, None]
            n_lab, n_cor = g_lab.sum(axis=0), g_cor.sum(axis=0)
            ok = (n_cor >= min_precision * n_lab) & np.all(g_cor >= min_group_precision * g_lab, axis=0)
            if not ok.any():
                continue
            share = np.where(ok, n_lab, -1)
            mf, mn = np.unravel_index(int(np.argmax(share)), share.shape)
            if best is not None and n_lab[mf, mn] / scored <= best.labelled_share:
                continue
            p = replace(p, margin=MARGINS[mn], margin_flat=MARGINS[mf])
            truth = _candidate_truth(samples, space, p)
            if truth is not None and truth < min_candidate_truth:
                continue
            worst = float(np.min(g_cor[:, mf, mn] / np.maximum(g_lab[:, mf, mn], 1)))
            best = ThresholdFit(lc, MARGINS[mn], MARGINS[mf], lc + step, n_lab[mf, mn] / scored,
                                n_cor[mf, mn] / n_lab[mf, mn], truth, scored, worst)
    if best is None:
        raise ValueError(f"threshold fit: no grid point reaches precision {min_precision} with candidate sets "
                         f"holding the truth {min_candidate_truth} of the time")
    return best


# ----------------------------------------------------------------------------------------------
# cue weights


def fit_weights(prior: np.ndarray, llr: np.ndarray, kind: np.ndarray, differ: np.ndarray, l2: float = 1.0,
                iterations: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the cues and an offset per edge kind such that ``offset[kind] + llr @ weights`` is the
    calibrated log-odds of a class change (logistic regression on the naive-Bayes evidence, Newton's
    method): cues that repeat each other's evidence (colour and superpixels, masks that follow the
    pre-segments) get less than 1, so their sum is not counted twice.

    ``prior`` (E,) the naive-Bayes prior of each edge's kind (where the offsets start); ``llr`` (E, C)
    per-cue log-likelihood ratios (:func:`~.propagate.cue_matrix`); ``kind`` (E,) int index into
    :data:`~.propagate.EDGE_KINDS`; ``differ`` (E,) bool. A cue never seen (an all-zero column) keeps
    weight 1; a weight that would be negative is 0. Returns (offset (3,), weights (C,)) float64.
    """
    n_kind = len(EDGE_KINDS)
    y = np.asarray(differ, np.float64)
    seen = np.flatnonzero(np.abs(llr).max(axis=0) > 0) if len(llr) else np.zeros(0, np.int64)
    weights = np.ones(llr.shape[1])
    active = list(seen)
    while True:
        x = np.concatenate([np.eye(n_kind, dtype=np.float32)[kind], llr[:, active]], axis=1).astype(np.float64)
        beta = np.concatenate([[float(prior[kind == k][0]) if (kind == k).any() else 0.0 for k in range(n_kind)],
                               np.ones(len(active))])
        reg = np.r_[np.zeros(n_kind), np.full(len(active), l2)]
        centre = np.r_[np.zeros(n_kind), np.ones(len(active))]

        def loss(b: np.ndarray) -> float:  # negative log-likelihood + ridge towards naive Bayes (weights 1)
            z = x @ b
            return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(reg * (b - centre) ** 2))

        current = loss(beta)
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -50, 50)))
            grad = x.T @ (p - y) + reg * (beta - centre)
            hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(reg + 1e-6)
            step = np.linalg.solve(hess, grad)
            t = 1.0
            while t > 1e-4 and loss(beta - t * step) > current:  # damped Newton: never uphill
                t /= 2
            beta = beta - t * step
            new = loss(beta)
            if current - new < 1e-7 * max(abs(current), 1.0):
                current = new
                break
            current = new
        w = beta[n_kind:]
        if (w >= 0).all():
            break
        weights[[a for a, v in zip(active, w) if v < 0]] = 0.0
        active = [a for a, v in zip(active, w) if v >= 0]
    weights[active] = w
    return beta[:n_kind], weights
