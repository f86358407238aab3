"""Active clicks: which keyframe points to click next, chosen from the evidence alone (no ground truth).

Protocol ``active`` (``pseudolabels.clicks.protocol``) spends the click budget of each keyframe (the
budget protocol's ``share``, drawn the same way: :func:`lidarlift.pseudolabels.clicks.click_count`) in
``active_rounds`` rounds. Each round runs our propagation (:func:`.propagate.ours_propagate`) with the
clicks answered so far and weighs the regions a click could go to by the points it would label or
correct (its *value*):

- **open regions** (value: their points): connected unlabelled points over the evidence graph's edges
  cheaper than the propagation's ``label_cost``, within one family (ground or not) and one appearance
  -- what one click there labels. Reason ``unreached`` (no clicked class reaches them) or
  ``candidates`` (several do, none wins). With no clicks yet, round 1's regions are the keyframe's
  structure itself: the first round is a spread over the largest pre-segments and ground patches.
- **labelled regions** (the same connectivity over labelled points): a label that travelled inside one
  may have crossed a class change the graph hardly shows (a road into a kerbless pavement, touching
  objects). A region whose class was never clicked on its appearance took it from elsewhere (reason
  ``uncertain``, value :data:`UNSEEN_WEIGHT` x points); the others are worth :data:`SPREAD_WEIGHT` x
  points plus :data:`LEAK_WEIGHT` x the propagation's doubt (1 - confidence), shared by D'Hondt over the
  clicks they hold, the uniform protocol's rule (reason ``spread``).
- **disagreement** (only with a network's prediction, ``predict`` store ``pred``): labelled regions
  whose class the network contradicts (reason ``disagree``; regions then also keep to one predicted class).

*Appearance*: k-means of each family's points on height over the local ground, intensity and image
colour (:func:`appearance_clusters`; one cluster per flat class of the label space on the ground), the
cue that tells the flat classes apart where the graph lets a label through.

A round's clicks go to the highest values (D'Hondt: a region's k-th click this round is worth its value
/ k, except that an open ground region gets one click a round: whether it holds a second class shows in
the next round's propagation), except a share of them (:data:`NOVEL_SHARE` of the round's
clicks, at least one in every round of more than one click, from the first round on) which goes to
**novel units** instead: the open points of one non-ground pre-segment (the ``presegment`` store's
``segment_id``), of at least :data:`NOVEL_MIN_POINTS` points and at most :data:`OBJECT_MAX_M` across
(an object one stands next to: cone, pedestrian, bicycle, motorcycle, pole; cars, walls and hedges are
reached by the value ranking), outside the regions this round's other clicks take. They are chosen
greedily (k-centre) by their distance in a shape and look space (extents up and across, height of the
base over the ground, range, mean intensity and image colour) from every pre-segment clicked so far
and every non-ground region taken this round, times their points to the power
:data:`NOVEL_SIZE_POWER`, so that small objects of rare classes, which no size ranking reaches, get
clicks, and a few-point fragment (an outlier of shape by noise alone) does not win over a pedestrian.
A unit that *stands alone* counts :data:`ALONE_WEIGHT` times: the non-ground points linked within
:data:`OBJECT_LINK_M` (or :data:`OBJECT_LINK_BEAMS` beams at their range) form objects, and a unit whose
object is at most :data:`OBJECT_MAX_M` across is a whole small object (a motorcycle, a pedestrian, a
cone), not a piece of a car, a trailer or a barrier row that the value ranking reaches anyway.
A region's first click lands on its medoid (the member with the least summed distance to the others),
further ones on the member farthest from its clicks weighted by its doubt, never on a random point.
Regions holding a point answered ``ignore`` are not proposed again. The choice is deterministic (seeded
by the config seed and the sample token).

The constants below were set on the tuning world (seed 5: ``bench/bench_clicks.py --seed 5 --work
/tmp/clicks_tune``), never on the bench world (seed 11): ``NOVEL_SHARE`` 0.2 against 0.1, 0.3 and 0.4
(0.3 again with the two rules that follow); ``ALONE_WEIGHT`` 1.25 against 1 (no such weight), 1.5, 2
and 3, the most correctly labelled points at 0.05 % with a motorcycle reached at 0.1 %;
``OBJECT_LINK_M`` and ``OBJECT_LINK_BEAMS`` by eye on seed 5's cars (not swept); one click a round for
open ground regions against their later clicks weighted 1 (plain D'Hondt), 0.5 and 0.25 and against
one click a round for every open region.
"""
from __future__ import annotations

import heapq
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lidarlift.classes import LabelSpace

from . import clicks as ck
from .propagate import Evidence, GraphParams, Labels, distance_unit, edge_costs, ours_propagate, prior_mask

log = logging.getLogger(__name__)

REASONS = ("unreached", "candidates", "uncertain", "spread", "disagree", "novel")

#: open regions smaller than this many points are not worth a click (the budget protocol's default
#: ``min_region_points``)
MIN_REGION_POINTS = 5
#: value of a labelled point of a structure region (D'Hondt over the clicks it holds) against an open point
SPREAD_WEIGHT = 0.03
#: a labelled point's doubt (1 - confidence) times this is the chance its label is wrong
LEAK_WEIGHT = 1.0
#: further clicks in a region go to the farthest member weighted by (this + its doubt)
DOUBT_FLOOR = 0.05
#: share of each round's clicks that goes to novel non-ground regions (core-set in shape space)
NOVEL_SHARE = 0.2
#: a novel unit (the open points of one non-ground pre-segment) needs this many points ...
NOVEL_MIN_POINTS = 8
#: ... and at most this horizontal extent (m, along its main axis): an object one stands next to
#: (cone, pedestrian, bicycle, motorcycle, pole, bollard), not a car, a wall or a hedge, which the
#: value ranking reaches by their size
OBJECT_MAX_M = 3.0
#: a novel unit's worth is its distance in shape and look space times its points to this power
NOVEL_SIZE_POWER = 0.5
#: non-ground points closer than this (m) are one object (Euclidean clustering): a novel unit whose object
#: is at most OBJECT_MAX_M across *stands alone* (a cone, a pedestrian, a motorcycle) and counts more
#: than a unit that is a fragment of something larger (a car, a trailer, a wall: the value ranking
#: reaches those)
OBJECT_LINK_M = 0.5
#: ... or this many beams at the point's range, if more (the rings of a far object lie a beam apart)
OBJECT_LINK_BEAMS = 1.5
#: a novel unit that stands alone is worth this many times one that is a fragment
ALONE_WEIGHT = 1.25
#: appearance clusters of non-ground points (the ground gets one per flat class of the label space)
OBJECT_APPEARANCES = 1
#: value of a labelled point whose class was never clicked on its appearance, against an open point
UNSEEN_WEIGHT = 1.0
#: radius (m) of the local ground a point's height is measured against
LOCAL_GROUND_M = 5.0
#: points the medoid is computed on (a seeded subsample of larger regions)
MEDOID_SAMPLE = 256


@dataclass
class Proposals:
    """Points proposed for clicking in one keyframe: ``point_index`` (n,) int64 rows, ``xyz`` (n, 3)
    float32 lidar frame, ``reason`` (n,) str (:data:`REASONS`), ``region_points`` (n,) int64 the size
    of the open region each stands for."""

    point_index: np.ndarray
    xyz: np.ndarray
    reason: list[str]
    region_points: np.ndarray

    def __len__(self) -> int:
        return len(self.point_index)


def round_budgets(total: int, rounds: int) -> list[int]:
    """Clicks per round: ``total`` split as evenly as possible, the earlier rounds taking the remainder."""
    base, extra = divmod(int(total), int(rounds))
    return [base + (r < extra) for r in range(rounds)]


class KeyframeChooser:
    """The chooser of one keyframe: the evidence graph is built once, each :meth:`propose` re-runs the
    propagation with the clicks answered so far.

    Args:
        ev: the keyframe's evidence (:func:`.stage.load_shard`).
        space: the label space.
        graph: our propagation's parameters (config ``pseudolabels.ours``).
        rng: the chooser's random stream (:func:`lidarlift.pseudolabels.clicks.click_rng`); it only breaks
            ties and draws the medoid subsample.
        prediction: (N,) uint8 class 1..K of a round-0 network (``predict`` store ``pred``), or None.
    """

    def __init__(self, ev: Evidence, space: LabelSpace, graph: GraphParams, rng: np.random.Generator,
                 prediction: np.ndarray | None = None):
        self.ev, self.space, self.graph, self.rng = ev, space, graph, rng
        if prediction is not None and len(prediction) != ev.n:
            raise ValueError(f"prediction has {len(prediction)} points, the keyframe {ev.n}")
        self.prediction = None if prediction is None else np.asarray(prediction, np.int64)
        i, j, cost = edge_costs(ev, graph) if ev.n > 1 else (np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.float32),)
        # a click labels what it reaches below label_cost, within its family (ground or not)
        keep = (cost <= graph.label_cost) & (ev.ground[i] == ev.ground[j])
        self.i, self.j, self.cost = i[keep], j[keep], cost[keep]
        self.prior = prior_mask(ev.ground, space)
        # regions never join points of two ground appearances (or two predicted classes): the ground
        # classes touch without a boundary the graph sees everywhere (a kerb gap is enough for a leak)
        n_flat = int(space.flat_mask.sum())
        self.appearance = appearance_clusters(ev, n_flat, OBJECT_APPEARANCES, int(rng.integers(1 << 31)))
        self.same = self.appearance + (0 if self.prediction is None else (n_flat + OBJECT_APPEARANCES + 1) * self.prediction)
        # structure regions: what the evidence joins below label_cost (static: the graph does not change)
        self.structure = self._components(np.ones(ev.n, bool), self.same)
        beam = distance_unit(ev, graph) / graph.scale_beams if ev.n else np.zeros(0)
        self.objects = object_clusters(ev.xyz, ~ev.ground, np.maximum(OBJECT_LINK_M, OBJECT_LINK_BEAMS * beam))
        self._object_extent: dict[int, float] = {}

    # --- regions ------------------------------------------------------------------------------

    def _components(self, member: np.ndarray, same: np.ndarray | None = None, edge: np.ndarray | None = None) -> np.ndarray:
        """(N,) int64 component of each ``member`` point over the cheap edges (-1 elsewhere); ``same``
        (N,) int: edges also need equal values at both ends; ``edge`` (E,) bool: only these edges."""
        n = self.ev.n
        keep = member[self.i] & member[self.j]
        if edge is not None:
            keep &= edge
        if same is not None:
            keep &= same[self.i] == same[self.j]
        g = coo_matrix((np.ones(int(keep.sum()), np.int8), (self.i[keep], self.j[keep])), shape=(n, n))
        _, comp = connected_components(g, directed=False)
        return np.where(member, comp, -1).astype(np.int64)

    def _medoid(self, members: np.ndarray) -> int:
        if len(members) > MEDOID_SAMPLE:
            members = np.sort(self.rng.choice(members, MEDOID_SAMPLE, replace=False))
        p = self.ev.xyz[members].astype(np.float64)
        d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)).sum(1)
        return int(members[np.argmin(d)])

    def _shape(self, members: np.ndarray) -> np.ndarray:
        """Shape and look of a non-ground region: log extent up, log extents across (major, minor, along
        the main axes), height of its base over the nearest ground, log range, and its mean intensity
        and image colour (CIE a, b) in units of the keyframe's non-ground spread (0 where unseen)."""
        p = self.ev.xyz[members].astype(np.float64)
        up = np.ptp(p[:, 2])
        across = _extents(p[:, :2])
        base = p[:, 2].min() - self._ground_z(p[:, :2].mean(0))
        r = float(np.linalg.norm(p[:, :2].mean(0)))
        return np.r_[np.log(0.1 + up), np.log(0.1 + across), np.clip(base, -1, 3), 0.5 * np.log(1 + r),
                     self._look(members)]

    def _look(self, members: np.ndarray) -> np.ndarray:
        """Mean intensity and colour (a, b) of ``members``, standardised over the keyframe's non-ground
        points; 0 for a cue the keyframe lacks or no camera sees."""
        if not hasattr(self, "_look_cols"):
            ev, rest = self.ev, ~self.ev.ground
            cols = []
            if ev.intensity is not None:
                cols.append(ev.intensity.astype(np.float64))
            if ev.color is not None:
                cols += [ev.color[:, 1].astype(np.float64), ev.color[:, 2].astype(np.float64)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                f = np.stack(cols, 1) if cols else np.zeros((ev.n, 0))
                mu, sd = np.nanmean(f[rest], 0), np.nanstd(f[rest], 0)
                self._look_cols = (f - mu) / np.where(sd > 0, sd, 1.0)
        out = np.zeros(3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no camera sees the region: NaN -> 0
            m = np.nanmean(self._look_cols[members], 0) if self._look_cols.shape[1] else np.zeros(0)
        out[: len(m)] = np.nan_to_num(m)
        return out

    def _ground_z(self, xy: np.ndarray) -> float:
        if not hasattr(self, "_ground_tree"):
            from scipy.spatial import cKDTree

            g = np.flatnonzero(self.ev.ground)
            self._ground_tree = cKDTree(self.ev.xyz[g, :2]) if len(g) else None
            self._ground_height = self.ev.xyz[g, 2] if len(g) else None
        if self._ground_tree is None:
            return float(self.ev.xyz[:, 2].min())
        _, k = self._ground_tree.query(xy, k=min(8, len(self._ground_height)))
        return float(np.median(self._ground_height[np.atleast_1d(k)]))

    # --- one round ----------------------------------------------------------------------------

    def propose(self, clicks: ck.SampleClicks, n: int, min_novel: int = 0) -> tuple[Proposals, Labels]:
        """Up to ``n`` points to click next, given the clicks answered so far (and the rows answered
        ``ignore``), at least ``min_novel`` of them novel where there are (:data:`NOVEL_SHARE`);
        returns them and the propagation they were chosen from."""
        ev, space = self.ev, self.space
        labels = ours_propagate(ev, clicks.point_index, clicks.label, space, self.graph)
        if n <= 0 or ev.n == 0:
            return _empty(), labels
        asked = np.zeros(ev.n, bool)
        asked[clicks.asked] = True
        open_ = labels.label == 0
        ambiguous = labels.candidate_mask != self.prior
        # open regions: one click each labels them (value: their points)
        comp = self._components(open_, self.same)
        blocked = np.zeros(ev.n + 1, bool)
        blocked[comp[clicks.ignored]] = True  # the annotator said: no class here
        cands: list[Candidate] = []
        for members in _group(comp):
            if blocked[comp[members[0]]]:
                continue
            members = members[~asked[members]]
            if len(members) >= MIN_REGION_POINTS:
                reason = "candidates" if ambiguous[members].mean() > 0.5 else "unreached"
                cands.append(Candidate(members, reason, float(len(members)), ground=bool(ev.ground[members[0]])))
        # labelled structure regions: a label that travelled far inside one may have crossed a class
        # change the evidence hardly shows (touching objects, a road into a kerbless pavement). Value:
        # their size (the uniform protocol's D'Hondt rule) and the propagation's own doubt (1 -
        # confidence), over the clicks they hold; placed far from those clicks where the doubt is
        lab = ~open_ & ~asked
        doubt = 1.0 - labels.confidence.astype(np.float64)
        # the classes clicked on each ground appearance: a ground region whose label is none of its
        # appearance's clicked classes took it from another appearance
        seen = {(int(a), int(c)) for a, c in zip(self.appearance[clicks.point_index], clicks.label)}
        for members in _group(np.where(lab, self.structure, -1)):
            if len(members) >= MIN_REGION_POINTS:
                region = self.structure[members[0]]
                inside = clicks.point_index[self.structure[clicks.point_index] == region]
                a, c = int(self.appearance[members[0]]), int(np.bincount(labels.label[members]).argmax())
                if (a, c) not in seen:
                    cands.append(Candidate(members, "uncertain", UNSEEN_WEIGHT * len(members), inside, doubt=doubt[members]))
                    continue
                value = SPREAD_WEIGHT * len(members) + LEAK_WEIGHT * float(doubt[members].sum())
                reason = "uncertain" if LEAK_WEIGHT * doubt[members].sum() > SPREAD_WEIGHT * len(members) else "spread"
                cands.append(Candidate(members, reason, value, inside, doubt=doubt[members]))
        if self.prediction is not None:  # labelled regions the network contradicts
            wrong = lab & (self.prediction != labels.label)
            for members in _group(self._components(wrong, self.same)):
                if len(members) >= MIN_REGION_POINTS:
                    cands.append(Candidate(members, "disagree", float(len(members))))
        if not cands:
            return _empty(), labels
        n_novel = min(max(int(round(NOVEL_SHARE * n)), min_novel), n)
        ranked = _dhondt(cands, n, self.rng)
        picks = ranked[: n - n_novel]
        taken = np.zeros(ev.n, bool)
        for c, _ in picks:
            taken[cands[c].members] = True
        units = self._novel_units(open_ & ~asked, comp, blocked, taken)
        novel = self._novel(units, [cands[c].members for c, _ in picks], clicks, n - len(picks))
        cands += [units[u] for u in novel]
        novel_ids = set(range(len(cands) - len(novel), len(cands)))
        picks += [(c, 0) for c in sorted(novel_ids)]
        # nothing novel left: the next best by value
        picks += ranked[n - n_novel:][: n - len(picks)]
        idx, reason, size = [], [], []
        for c, k in picks:
            cand = cands[c]
            idx.append(self._place(cand, k))
            reason.append(cand.reason)
            size.append(len(cand.members))
        idx = np.asarray(idx, np.int64)
        return Proposals(idx, ev.xyz[idx].astype(np.float32), reason, np.asarray(size, np.int64)), labels

    def _place(self, cand: "Candidate", k: int) -> int:
        """The ``k``-th new click (0-based) of a candidate region: its medoid when it holds no click yet,
        else the member farthest from the clicks it holds (and this round's), weighted by its doubt."""
        if len(cand.clicked) == 0 and k == 0:
            cand.placed.append(self._medoid(cand.members))
            return cand.placed[-1]
        ref = self.ev.xyz[np.r_[cand.clicked, cand.placed].astype(np.int64)]
        p = self.ev.xyz[cand.members]
        d = np.min(np.linalg.norm(p[:, None, :] - ref[None, :, :], axis=2), axis=1)
        if cand.doubt is not None:
            d = d * (DOUBT_FLOOR + cand.doubt)
        cand.placed.append(int(cand.members[np.argmax(d)]))
        return cand.placed[-1]

    def _novel_units(self, open_: np.ndarray, comp: np.ndarray, blocked: np.ndarray, taken: np.ndarray) -> list["Candidate"]:
        """Novel units: the open points (``open_``, not asked) of each non-ground pre-segment, outside
        the regions answered ``ignore`` (``blocked`` by open component) and those this round's ranked
        clicks take (``taken``), of at least :data:`NOVEL_MIN_POINTS` points and at most
        :data:`OBJECT_MAX_M` across."""
        ev = self.ev
        free = open_ & ~ev.ground & (ev.segment_id >= 0) & ~taken
        free &= ~blocked[np.where(comp >= 0, comp, ev.n)]
        out = []
        for members in _group(np.where(free, ev.segment_id, -1).astype(np.int64)):
            if len(members) >= NOVEL_MIN_POINTS and _extents(ev.xyz[members, :2].astype(np.float64))[0] <= OBJECT_MAX_M:
                out.append(Candidate(members, "novel", float(len(members)), alone=self._alone(members)))
        return out

    def _alone(self, members: np.ndarray) -> bool:
        """Whether the object (:func:`object_clusters`) holding most of ``members`` is at most
        :data:`OBJECT_MAX_M` across: the unit stands alone, not a fragment of something larger."""
        obj = int(np.bincount(self.objects[members]).argmax())
        if obj not in self._object_extent:
            rows = np.flatnonzero(self.objects == obj)
            self._object_extent[obj] = float(_extents(self.ev.xyz[rows, :2].astype(np.float64))[0])
        return self._object_extent[obj] <= OBJECT_MAX_M

    def _novel(self, units: list["Candidate"], taken: list[np.ndarray], clicks: ck.SampleClicks, k: int) -> list[int]:
        """Up to ``k`` novel units (indices into ``units``) by k-centre (farthest first) in shape and look
        space (:meth:`_shape`), away from the pre-segments clicked so far and the non-ground regions
        ``taken`` by this round's other clicks."""
        ev = self.ev
        if k <= 0 or not units:
            return []
        shapes = np.stack([self._shape(u.members) for u in units])
        ref = [self._shape(m) for m in taken if not ev.ground[m[0]]]
        ref += [self._shape(np.flatnonzero(ev.segment_id == seg))
                for seg in np.unique(ev.segment_id[clicks.point_index]) if seg >= 0]
        chosen: list[int] = []
        alone = np.array([u.alone for u in units], bool)
        if not ref:  # nothing to be unlike yet: the largest first
            chosen.append(int(np.argmax([len(u.members) for u in units])))
            ref = [shapes[chosen[0]]]
        d = np.min(np.linalg.norm(shapes[:, None, :] - np.asarray(ref)[None], axis=2), axis=1)
        d[chosen] = -np.inf
        # a click's worth: how unlike everything clicked the unit is, times the points it labels
        # (to the power NOVEL_SIZE_POWER: a few-point fragment is an outlier of shape by noise alone)
        size = np.array([len(u.members) for u in units], np.float64) ** NOVEL_SIZE_POWER
        # a unit that stands alone counts more: a fragment of a larger thing is reached by the value ranking
        size = size * np.where(alone, ALONE_WEIGHT, 1.0)
        while len(chosen) < min(k, len(units)):
            best = int(np.argmax(d * size + 1e-9 * self.rng.random(len(d))))
            chosen.append(best)
            d = np.minimum(d, np.linalg.norm(shapes - shapes[best], axis=1))
            d[best] = -np.inf
        return chosen


def _extents(xy: np.ndarray) -> np.ndarray:
    """(2,) horizontal extents (m) of (n, 2) points along their main axes, major first."""
    if len(xy) < 2:
        return np.zeros(2)
    xy = xy - xy.mean(0)
    _, _, vt = np.linalg.svd(xy, full_matrices=False)
    proj = xy @ vt.T
    return np.ptp(proj, axis=0) if proj.shape[1] == 2 else np.r_[np.ptp(proj[:, 0]), 0.0]


def object_clusters(xyz: np.ndarray, member: np.ndarray, link_m: np.ndarray) -> np.ndarray:
    """(N,) int64 object of each ``member`` point: connected components of the members linked to one
    within its ``link_m`` (N,) m; non-members get their own ids (one each), so they never join an object."""
    from scipy.spatial import cKDTree

    n = len(xyz)
    rows = np.flatnonzero(member)
    out = np.arange(n, dtype=np.int64) + n
    if len(rows):
        p = xyz[rows].astype(np.float64)
        nb = cKDTree(p).query_ball_point(p, np.broadcast_to(np.asarray(link_m, np.float64), (n,))[rows])
        j = np.concatenate([np.asarray(b, np.int64) for b in nb])
        i = np.repeat(np.arange(len(rows)), [len(b) for b in nb])
        g = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(len(rows), len(rows)))
        out[rows] = connected_components(g, directed=False)[1]
    return out


def appearance_clusters(ev: Evidence, n_ground: int, n_object: int, seed: int) -> np.ndarray:
    """(N,) int64 appearance cluster of each point: k-means, within ground points (``n_ground`` clusters,
    ids 0..) and within the others (``n_object``, ids after the ground's), of the points' height over the
    local ground (median ground height within :data:`LOCAL_GROUND_M`), intensity and image colour (CIE
    a, b where a camera sees it), each averaged over the point's nearest neighbours of its family and
    scaled to unit spread. A family with one cluster (or too few points) is one cluster."""
    from scipy.spatial import cKDTree
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    out = np.zeros(ev.n, np.int64)
    g = np.flatnonzero(ev.ground)
    ground_xy, ground_z = ev.xyz[g, :2].astype(np.float64), ev.xyz[g, 2].astype(np.float64)
    if len(g):
        coarse = np.arange(0, len(g), max(1, len(g) // 2000))
        local = np.array([np.median(ground_z[i]) for i in cKDTree(ground_xy).query_ball_point(ground_xy[coarse], LOCAL_GROUND_M)])
        coarse_tree = cKDTree(ground_xy[coarse])
    first = 0
    for family, k in ((ev.ground, n_ground), (~ev.ground, n_object)):
        rows = np.flatnonzero(family)
        out[rows] = first
        if k > 1 and len(rows) >= 4 * k:
            xyz = ev.xyz[rows].astype(np.float64)
            cols = [xyz[:, 2] - (local[coarse_tree.query(xyz[:, :2])[1]] if len(g) else 0.0)]
            if ev.intensity is not None:
                cols.append(ev.intensity[rows].astype(np.float64))
            if ev.color is not None:
                cols += [ev.color[rows, 1].astype(np.float64), ev.color[rows, 2].astype(np.float64)]
            f = np.stack(cols, axis=1)
            _, nb = cKDTree(xyz).query(xyz, k=min(12, len(rows)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # colour is NaN where no camera sees a point
                warnings.simplefilter("ignore", ConvergenceWarning)  # a uniform surface has fewer appearances
                f = np.nanmean(f[nb], axis=1)
                f = np.nan_to_num((f - np.nanmean(f, axis=0)) / (np.nanstd(f, axis=0) + 1e-9))
                out[rows] = first + KMeans(k, n_init=4, random_state=seed).fit_predict(f)
        first += max(k, 1)
    return out


@dataclass
class Candidate:
    """A region a click may go to: ``members`` (m,) int64 rows it may be placed on, ``reason``, ``value``
    (expected points labelled or corrected by its first click), ``clicked`` rows it already holds."""

    members: np.ndarray
    reason: str
    value: float
    clicked: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    doubt: np.ndarray | None = None  # (m,) of the members, for placing further clicks
    alone: bool = False  # a novel unit that stands alone (:meth:`KeyframeChooser._alone`)
    ground: bool = False  # an open region of ground points: one click a round (:func:`_dhondt`)
    placed: list[int] = field(default_factory=list)


def _dhondt(cands: list[Candidate], n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` picks (candidate index, its k-th click this round): the highest value / (clicks held + k + 1)
    (D'Hondt: a large open region may hold two classes the graph joins, so it may get a second click
    before the next round), a ``disagree`` region and an open ground region at most once (the ground
    appearances already split the ground where its look changes; whether a ground region holds a second
    class shows in the next round's propagation, and its further clicks did better elsewhere on the
    tuning world); ties broken at random."""
    if n <= 0:
        return []
    tie = rng.random(len(cands))
    heap = [(-c.value / (len(c.clicked) + 1), tie[i], i, 0) for i, c in enumerate(cands)]
    heapq.heapify(heap)
    out = []
    while heap and len(out) < n:
        _, t, i, k = heapq.heappop(heap)
        out.append((i, k))
        c = cands[i]
        if c.reason != "disagree" and not c.ground and k + 1 < len(c.members):
            heapq.heappush(heap, (-c.value / (len(c.clicked) + k + 2), t, i, k + 1))
    return out


def _group(comp: np.ndarray) -> list[np.ndarray]:
    """Members (point rows) of each component id >= 0."""
    rows = np.flatnonzero(comp >= 0)
    if len(rows) == 0:
        return []
    order = np.argsort(comp[rows], kind="stable")
    rows = rows[order]
    return np.split(rows, np.flatnonzero(np.diff(comp[rows])) + 1)


def _empty() -> Proposals:
    return Proposals(np.zeros(0, np.int64), np.zeros((0, 3), np.float32), [], np.zeros(0, np.int64))


Answer = Callable[[dict[str, Proposals]], dict[str, ck.SampleClicks]]


def click_rounds(choosers: dict[str, KeyframeChooser], budgets: dict[str, int], rounds: int, answer: Answer,
                 clicks: dict[str, ck.SampleClicks] | None = None) -> dict[str, ck.SampleClicks]:
    """Spend each keyframe's budget in ``rounds`` rounds: propose, ``answer`` (every keyframe of the round
    at once: sample token -> proposals in, token -> answered clicks out), merge. ``clicks``: answered
    before (kept, not counted against the budget). Returns token -> every answered click."""
    clicks = {t: (clicks or {}).get(t, ck.SampleClicks.empty()) for t in choosers}
    per_round = {t: round_budgets(budgets[t], rounds) for t in choosers}
    for r in range(rounds):
        # every round asks about the most unusual open object at least, so rare classes get a chance
        proposals = {t: ch.propose(clicks[t], per_round[t][r], min_novel=int(per_round[t][r] > 1))[0]
                     for t, ch in choosers.items()}
        proposals = {t: p for t, p in proposals.items() if len(p)}
        if not proposals:
            break
        answered = answer(proposals)
        for t, a in answered.items():
            clicks[t] = clicks[t].merged(a)
        log.info("active round %d: %d points asked", r + 1, sum(len(p) for p in proposals.values()))
    return clicks


def next_clicks(manifest_path: str | Path, shards: list[str], stores: Callable[[str], dict[str, Any]], share: float,
                out_path: str | Path, cfg: dict[str, Any], answered: list[str | Path] = (),
                predict: Callable[[str], str | None] | None = None) -> dict[str, int]:
    """The person's path: write the next-clicks file (:func:`lidarlift.pseudolabels.clicks.write_next_clicks`)
    of ``shards`` for a round of ``share`` of each keyframe's points, given the clicks files answered so
    far (``answered``; the next-clicks files of earlier rounds, filled in, are such files).

    ``stores(shard)``: the shard's associate, presegment, superpixels and masks store paths;
    ``predict(shard)``: its predict store (network's ``pred``) or None; ``cfg``: the ``pseudolabels``
    config section (``clicks.seed`` and ``ours``). Returns {sample token: points proposed}.
    """
    from lidarlift import artifacts as A
    from lidarlift.classes import label_space
    from lidarlift.manifest import Manifest

    from .stage import ClickParams, load_shard

    manifest = Manifest.from_json(manifest_path)
    space = label_space(manifest.label_space)
    graph = GraphParams.from_config(cfg.get("ours"))
    seed = ClickParams.from_config({k: v for k, v in (cfg.get("clicks") or {}).items()}).seed
    proposals: dict[str, Proposals] = {}
    for shard in shards:
        data = load_shard(manifest, shard, **stores(shard), colours=graph.w_color > 0)
        counts = {d.record.token: d.evidence.n for d in data}
        done = {t: ck.SampleClicks.empty() for t in counts}
        for path in answered:
            for t, c in ck.read_clicks(path, space, counts, known_tokens=[s.token for s in manifest.samples]).items():
                done[t] = done[t].merged(c)
        pred_path = predict(shard) if predict else None
        pred = None
        if pred_path:
            g = A.open_store(pred_path, "predict")
            off, pred_all = A.read(g, "point_offsets").astype(np.int64), A.read(g, "pred")
        for s, d in enumerate(data):
            t = d.record.token
            if pred_path:
                pred = pred_all[A.sample_slice(off, s)]
            rng = ck.click_rng(seed, t)
            n = ck.click_count(share, d.evidence.n, rng)
            proposals[t] = KeyframeChooser(d.evidence, space, graph, rng, pred).propose(done[t], n, min_novel=int(n > 1))[0]
    ck.write_next_clicks(out_path, {t: (p.point_index, p.xyz, p.reason) for t, p in proposals.items()}, space)
    return {t: len(p) for t, p in proposals.items()}
