"""Propagation of click labels over one keyframe: the IUPC rule set (baseline) and ours.

Both return a :class:`Labels` record: per point a class (or 0), a confidence, an instance id for thing
labels, a candidate-class bitmask and the source that decided it (``lidarlift.artifacts.SOURCES``).

**IUPC rule set** (``propagation: iupc``), as IUPC's label preparation applies it: inside the cameras'
field of view, a ground cell or a non-ground pre-segment whose clicks name one class gives that class to
all its points; one whose clicks name several classes gives all its points the set of those classes
(IUPC's "negative label": every other class is excluded); everything else stays unknown.

**Ours** (``propagation: ours``): seeded propagation over an evidence graph of the keyframe's points.

- Edges: each point's k nearest neighbours, plus the azimuth-nearest point on the LiDAR beam above and
  below (k nearest neighbours alone stay on one beam where beams are metres apart, as on the ground).
- Edge cost: the log-odds that the two points differ in class, a naive-Bayes sum of calibrated cues
  (:data:`LOG_ODDS`, per edge kind ground-ground / object-object / mixed): distance in units of the
  LiDAR's range-dependent spacing, height step (kerbs) and intensity change between ground points,
  colour change in the images, superpixel change, 2D mask change and pre-segment change between
  non-ground points.
- For every point and every seed group (each thing click alone, all clicks of one stuff class
  together) the minimax path cost -- the weakest link of the best path, exact on the minimum spanning
  tree, obtained for all points at once from the single-linkage merge tree. Flat (ground) classes
  travel only over ground points and the others only over non-ground points (plus one step across),
  so a click whose ground flag is wrong cannot carry its class through the wrong structure.
- A point takes the class of its nearest group when that cost is at most ``label_cost`` and every
  other class is at least ``margin`` (``margin_flat`` for ground classes) further; thing labels get
  the instance of their nearest click. Otherwise the classes within ``candidate_cost`` form its
  candidate set (two or more), else the ground / non-ground prior (flat classes / the others).
  Clicks always keep their own class.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial import cKDTree

from lidarlift.classes import LabelSpace, candidate_bit

#: source codes (lidarlift.artifacts.SOURCES)
NONE, CLICK, PROPAGATED, CANDIDATES, NETWORK, IMAGE2D, GROUND = 0, 1, 2, 3, 4, 5, 6

#: the flat (ground) classes of each label space, for the ground / non-ground candidate prior
FLAT_CLASSES: dict[str, tuple[str, ...]] = {
    "nuscenes16": ("driveable_surface", "other_flat", "sidewalk", "terrain"),
    "semantickitti19": ("road", "parking", "sidewalk", "other-ground", "terrain"),
}


@dataclass
class Labels:
    """Pseudo-labels of one keyframe (N points), the arrays of the ``pseudolabels`` store.

    ``label`` (N,) uint8 1..K or 0; ``confidence`` (N,) float32; ``instance_id`` (N,) int32 (0 = none);
    ``candidate_mask`` (N,) uint32 (bit c-1: class c possible); ``source`` (N,) uint8; ``round`` (N,) uint8.
    """

    label: np.ndarray
    confidence: np.ndarray
    instance_id: np.ndarray
    candidate_mask: np.ndarray
    source: np.ndarray
    round: np.ndarray

    @staticmethod
    def unknown(n: int, num_classes: int) -> "Labels":
        return Labels(np.zeros(n, np.uint8), np.zeros(n, np.float32), np.zeros(n, np.int32),
                      np.full(n, (1 << num_classes) - 1, np.uint32), np.zeros(n, np.uint8), np.zeros(n, np.uint8))

    def copy(self) -> "Labels":
        return Labels(*(getattr(self, f.name).copy() for f in fields(self)))

    def set_clicks(self, point_index: np.ndarray, label: np.ndarray) -> None:
        """Clicks always win: their class, confidence 1, a single-class candidate set, source click."""
        self.label[point_index] = label
        self.confidence[point_index] = 1.0
        self.candidate_mask[point_index] = candidate_bit(label)
        self.source[point_index] = CLICK
        self.round[point_index] = 0


def _groups(members: np.ndarray, keys: np.ndarray) -> list[np.ndarray]:
    """Split ``members`` (point indices) by ``keys`` (their group key), one array per key."""
    if len(members) == 0:
        return []
    order = np.argsort(keys, kind="stable")
    members, keys = members[order], keys[order]
    return np.split(members, np.flatnonzero(np.diff(keys)) + 1)


def iupc_propagate(n: int, click_index: np.ndarray, click_label: np.ndarray, ground: np.ndarray,
                   segment_id: np.ndarray, ground_cell: np.ndarray, fov: np.ndarray, space: LabelSpace) -> Labels:
    """IUPC's rule set on one keyframe.

    Args:
        n: points of the keyframe.
        click_index: (m,) int64 clicked rows; ``click_label`` (m,) uint8 their classes.
        ground, segment_id, ground_cell: (N,) the ``presegment`` store's arrays for the keyframe.
        fov: (N,) bool the point projects into some camera (``associate`` ``in_image`` of any camera).
    """
    out = Labels.unknown(n, space.num_classes)
    clicked = np.zeros(n, np.uint8)
    clicked[click_index] = click_label
    instance = 0
    for members, source in (
        (np.flatnonzero(ground & fov & (ground_cell >= 0)), GROUND),
        (np.flatnonzero(~ground & fov & (segment_id >= 0)), PROPAGATED),
    ):
        keys = ground_cell[members] if source == GROUND else segment_id[members]
        for group in _groups(members, keys):
            classes = np.unique(clicked[group])
            classes = classes[classes > 0]
            if len(classes) == 1:
                c = int(classes[0])
                out.label[group] = c
                out.confidence[group] = 1.0
                out.candidate_mask[group] = candidate_bit(c)
                out.source[group] = source
                if space.thing_mask[c]:
                    instance += 1
                    out.instance_id[group] = instance
            elif len(classes) > 1:
                out.candidate_mask[group] = np.bitwise_or.reduce(candidate_bit(classes))
                out.source[group] = CANDIDATES
    out.set_clicks(click_index, click_label)
    for i, c in zip(click_index, click_label):  # a thing click outside any propagated group is its own instance
        if space.thing_mask[c] and out.instance_id[i] == 0:
            instance += 1
            out.instance_id[i] = instance
    return out


# ----------------------------------------------------------------------------------------------
# ours: evidence graph + minimax propagation


#: Evidence of a class change along an edge, as log-odds: per edge kind (both ground, both non-ground,
#: mixed) a prior and, per cue, a piecewise-linear log-likelihood ratio (knots, values) of "the two
#: points differ in class" -- a naive-Bayes sum. Set from the cue statistics of the synthetic world's
#: training scenes (scene-0061, -0553, -0655; ~2.3 M edges): e.g. a height step of 5 cm between two
#: ground points is 3.6 nats of evidence (kerbs), two points in different 2D masks 5 nats, two points
#: a quarter of the LiDAR spacing apart on one object -3 nats. Config weights scale each cue.
LOG_ODDS: dict[str, dict[str, Any]] = {
    "ground": {
        "prior": -3.35,
        "distance": ([0, 0.25, 0.5, 1, 1.5, 2, 3], [-2.3, -0.6, 0.2, 0.8, 1.2, 1.35, 2.2]),
        "height": ([0, 0.01, 0.02, 0.05, 0.1, 0.2], [-0.8, 0.25, 2.45, 3.6, 4.0, 6.0]),
        "intensity": ([0, 1, 2, 4, 8], [-1.5, -1.25, -0.15, 3.0, 3.7]),
        "color": ([0, 0.5, 5, 10, 20, 40], [-3.5, -2.1, -0.6, 1.0, 2.0, 2.1]),
        "superpixel": (0.6, -0.9),  # (some camera: different superpixels, one superpixel)
    },
    "object": {
        "prior": -4.3,
        "distance": ([0, 0.25, 0.5, 1, 1.5, 2, 3], [-5.7, -3.2, -1.5, 0.95, 2.35, 3.1, 5.3]),
        "intensity": ([0, 1, 2, 4, 8, 16], [-1.75, -1.45, -0.15, 1.8, 1.3, 2.0]),
        "color": ([0, 0.5, 5, 10, 20, 40], [-4.0, -2.75, -0.3, 0.9, 1.5, 2.15]),
        "superpixel": (0.45, -1.4),
        "mask": (5.0, -1.45, 0.5),  # (different masks, one mask, both in masks but never together)
        "segment": (4.9, -1.3, 3.9),  # (two pre-segments, one, a noise point)
    },
    "mixed": {
        "prior": 0.45,
        "distance": ([0, 0.25, 0.5, 1, 1.5, 2, 3], [-4.0, -0.8, -0.7, 0.4, 1.3, 2.35, 2.4]),
        "intensity": ([0, 1, 2, 4, 8, 16], [-1.8, -1.5, -0.55, 1.0, 0.8, 2.0]),
        "color": ([0, 0.5, 5, 10, 20, 40], [-3.4, -2.4, -1.0, 0.0, 0.8, 1.1]),
        "superpixel": (0.3, -1.35),
    },
}


@dataclass(frozen=True)
class GraphParams:
    """The evidence graph and the thresholds of our propagation (config ``pseudolabels.ours``).

    Edge costs are log-odds that the two points differ in class (:data:`LOG_ODDS`); ``w_*`` scale
    each cue (0 switches it off); thresholds are in the same units (nats).
    """

    knn: int = 10
    range_coef: float = 0.04  # distances are measured in units of max(range_coef * range, min_scale_m)
    min_scale_m: float = 0.5
    max_edge: float = 3.0  # edges longer than this many units are dropped (ground-ground: max_ground_edge_m)
    max_ground_edge_m: float = 8.0  # longest edge between two ground points of neighbouring beams
    slope_tolerance: float = 0.02  # ground slope (rise / run) not counted as a height step
    w_distance: float = 1.0
    w_height: float = 1.0
    w_intensity: float = 1.0
    w_color: float = 1.0
    w_superpixel: float = 0.5  # correlated with colour: half weight
    w_mask: float = 2.0  # masks follow the pre-segments in the weight-free default; SAM masks separate touching objects
    w_segment: float = 1.0
    label_cost: float = -1.0  # a point is labelled when its best path's weakest link is below this ...
    margin: float = 1.0  # ... and every other class needs at least this much more
    margin_flat: float | None = 2.0  # the margin for flat (ground) classes (None: ``margin``)
    candidate_cost: float = 1.0  # unlabelled: classes reachable below this form the candidate set
    ground_prior: bool = True  # unlabelled ground points: candidates = flat classes; non-ground: the rest
    family_barrier: bool = True  # flat classes never cross object-object edges, the others never ground-ground
    open_candidates: bool = True  # candidate sets also keep the classes nobody clicked in the keyframe

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> "GraphParams":
        cfg = dict(cfg or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"config section pseudolabels.ours: unknown keys {unknown}; known: {sorted(names)}")
        p = cls(**cfg)
        if p.knn < 1:
            raise ValueError(f"config key pseudolabels.ours.knn: must be >= 1, got {p.knn}")
        if p.label_cost > p.candidate_cost:
            raise ValueError("config keys pseudolabels.ours.label_cost / candidate_cost: need label_cost <= candidate_cost")
        if p.margin < 0:
            raise ValueError(f"config key pseudolabels.ours.margin: must be >= 0, got {p.margin}")
        return p


@dataclass
class Evidence:
    """What our propagation and refinement read about one keyframe (N points, C cameras).

    ``xyz`` (N, 3) float32 lidar frame; ``intensity`` (N,) float32 or None; ``ground`` (N,) bool;
    ``segment_id`` (N,) int32 (-1 noise/ground); ``ground_cell`` (N,) int32; ``fov`` (N,) bool (in
    some image); ``mask`` / ``superpixel`` (N, C) int32 id of the 2D mask / superpixel under the point
    in each camera where the point is visible (-1 elsewhere), or None when the stage is absent;
    ``ring`` (N,) int the LiDAR beam of the point (ordered by elevation), or None; ``color`` (N, 3)
    float32 CIE-Lab colour of the point in the cameras that see it (NaN where none), or None.
    """

    xyz: np.ndarray
    ground: np.ndarray
    segment_id: np.ndarray
    ground_cell: np.ndarray
    fov: np.ndarray
    mask: np.ndarray | None = None
    superpixel: np.ndarray | None = None
    intensity: np.ndarray | None = None
    ring: np.ndarray | None = None
    color: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.xyz)


def _view_change(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E,) bool 'some camera sees both in different regions', (E,) bool 'some camera sees both in one'."""
    both = (a >= 0) & (b >= 0)
    return (both & (a != b)).any(axis=1), (both & (a == b)).any(axis=1)


def knn_edges(xyz: np.ndarray, k: int, range_coef: float, min_scale: float, max_edge: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected k-NN edges (i < j) with their length in units of the range-adaptive scale."""
    n = len(xyz)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    k = min(k, n - 1)
    dist, nb = cKDTree(xyz).query(xyz, k=k + 1)
    i = np.repeat(np.arange(n), k)
    j = nb[:, 1:].reshape(-1)
    d = dist[:, 1:].reshape(-1)
    ok = np.isfinite(d) & (j < n)
    i, j, d = i[ok], j[ok], d[ok]
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    key = lo * n + hi
    key, first = np.unique(key, return_index=True)
    i, j, d = lo[first], hi[first], d[first]
    rng = np.linalg.norm(xyz, axis=1)
    scale = np.maximum(range_coef * np.maximum(rng[i], rng[j]), min_scale)
    rel = d / scale
    keep = rel <= max_edge
    return i[keep], j[keep], rel[keep].astype(np.float32)


def ring_edges(xyz: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges (i < j) from every point to the azimuth-nearest point of the beam above and below.

    A spinning LiDAR's k nearest neighbours all lie on the point's own beam where the beams are far
    apart (on the ground at 20 m they are ~5 m apart, the points on a beam ~0.1 m): these edges tie
    the beams together as a range image does. ``ring`` (N,) int beam index ordered by elevation.
    """
    az = np.arctan2(xyz[:, 1], xyz[:, 0])
    rings = np.unique(ring)
    members = {}
    for r in rings:
        idx = np.flatnonzero(ring == r)
        members[r] = idx[np.argsort(az[idx], kind="stable")]
    ei, ej = [], []
    for lo, hi in zip(rings[:-1], rings[1:]):
        for src, dst in ((members[lo], members[hi]), (members[hi], members[lo])):
            if len(src) == 0 or len(dst) == 0:
                continue
            da = az[dst]
            pos = np.searchsorted(da, az[src])
            left, right = dst[(pos - 1) % len(dst)], dst[pos % len(dst)]
            dl = np.abs(np.angle(np.exp(1j * (az[left] - az[src]))))
            dr = np.abs(np.angle(np.exp(1j * (az[right] - az[src]))))
            ei.append(src)
            ej.append(np.where(dl <= dr, left, right))
    if not ei:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(ei), np.concatenate(ej)
    return np.minimum(i, j), np.maximum(i, j)


def estimate_rings(xyz: np.ndarray, gap_deg: float = 0.15) -> np.ndarray:
    """Beam index (ordered by elevation) of each point where the file has none: elevations sorted and
    split where consecutive ones are more than ``gap_deg`` apart."""
    el = np.degrees(np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1])))
    order = np.argsort(el)
    cuts = np.concatenate([[0], np.cumsum(np.diff(el[order]) > gap_deg)])
    out = np.empty(len(xyz), np.int64)
    out[order] = cuts
    return out


def _table(values: np.ndarray, table: tuple[list[float], list[float]]) -> np.ndarray:
    return np.interp(values, table[0], table[1]).astype(np.float32)


def edge_costs(ev: Evidence, p: GraphParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The evidence graph of a keyframe: edges (i, j) and their cost (E,) float32, the log-odds that
    the two points differ in class (:data:`LOG_ODDS`, scaled by the ``w_*`` of ``p``)."""
    n = len(ev.xyz)
    i, j, rel = knn_edges(ev.xyz, p.knn, p.range_coef, p.min_scale_m, p.max_edge)
    rng = np.linalg.norm(ev.xyz, axis=1)
    if ev.ring is not None and n > 1:
        ri, rj = ring_edges(ev.xyz, ev.ring)
        scale = np.maximum(p.range_coef * np.maximum(rng[ri], rng[rj]), p.min_scale_m)
        d = np.linalg.norm(ev.xyz[ri] - ev.xyz[rj], axis=1)
        flat = ev.ground[ri] & ev.ground[rj]
        r_rel = d / scale
        keep = np.where(flat, d <= p.max_ground_edge_m, r_rel <= p.max_edge)
        key = np.concatenate([i * n + j, ri[keep] * n + rj[keep]])
        key, first = np.unique(key, return_index=True)
        i, j = key // n, key % n
        rel = np.concatenate([rel, r_rel[keep].astype(np.float32)])[first]
    gi, gj = ev.ground[i], ev.ground[j]
    kinds = {"ground": gi & gj, "object": ~gi & ~gj, "mixed": gi != gj}
    cost = np.zeros(len(i), np.float32)
    sp_differ = sp_same = None
    if ev.superpixel is not None:
        sp_differ, sp_same = _view_change(ev.superpixel[i], ev.superpixel[j])
    de = np.linalg.norm(ev.color[i] - ev.color[j], axis=1) if ev.color is not None else None
    di = np.abs(ev.intensity[i] - ev.intensity[j]) if ev.intensity is not None else None
    for kind, sel in kinds.items():
        if not sel.any():
            continue
        t = LOG_ODDS[kind]
        c = np.full(int(sel.sum()), t["prior"], np.float32)
        if kind == "ground":  # ground beams are far apart by design: distance counts only within the LiDAR spacing
            c += p.w_distance * _table(np.minimum(rel[sel], 3.0), t["distance"])
            a, b = i[sel], j[sel]
            d_xy = np.hypot(ev.xyz[a, 0] - ev.xyz[b, 0], ev.xyz[a, 1] - ev.xyz[b, 1])
            dz = np.maximum(np.abs(ev.xyz[a, 2] - ev.xyz[b, 2]) - p.slope_tolerance * d_xy, 0.0)
            c += p.w_height * _table(dz, t["height"])
        else:
            c += p.w_distance * _table(rel[sel], t["distance"])
        if di is not None and p.w_intensity:
            c += p.w_intensity * _table(di[sel], t["intensity"])
        if de is not None and p.w_color:
            x = de[sel]
            c += p.w_color * np.where(np.isfinite(x), _table(np.nan_to_num(x), t["color"]), 0.0)
        if sp_differ is not None and p.w_superpixel:
            on, off = t["superpixel"]
            c += p.w_superpixel * np.where(sp_differ[sel], on, np.where(sp_same[sel], off, 0.0))
        if kind == "object":
            a, b = i[sel], j[sel]
            if ev.mask is not None and p.w_mask:
                differ, same = _view_change(ev.mask[a], ev.mask[b])
                covered = (ev.mask >= 0).any(axis=1)
                unknown = ~differ & ~same & covered[a] & covered[b]
                on, off, unk = t["mask"]
                c += p.w_mask * np.where(differ, on, np.where(same, off, np.where(unknown, unk, 0.0)))
            if p.w_segment:
                sa, sb = ev.segment_id[a], ev.segment_id[b]
                on, off, noise = t["segment"]
                c += p.w_segment * np.where((sa < 0) | (sb < 0), noise, np.where(sa != sb, on, off))
        cost[sel] = c
    return i, j, cost


def minimax_to_groups(n: int, i: np.ndarray, j: np.ndarray, cost: np.ndarray, seed_point: np.ndarray,
                      seed_group: np.ndarray, n_groups: int, max_cost: float = np.inf) -> np.ndarray:
    """(n, G) float32: for every point and seed group, the minimax path cost to the group's seeds.

    Minimax (bottleneck) path costs are exact on the minimum spanning tree; the merge tree of
    single linkage (Kruskal order) gives them all at once: a point reaches group g at the height of the
    lowest merge that joins its cluster with a cluster holding a seed of g. Costs above ``max_cost``
    are never needed and come back as inf. Seeds get -inf to their own group.
    """
    out = np.full((n, n_groups), np.inf, np.float32)
    if n == 0 or n_groups == 0:
        return out
    keep = np.isfinite(cost) & (cost <= max_cost)
    a, b, c = np.minimum(i, j)[keep], np.maximum(i, j)[keep], cost[keep].astype(np.float64)
    # the spanning tree needs positive weights (it drops explicit zeros): shift, which keeps the order
    shift = (1e-3 - float(c.min())) if len(c) else 0.0
    order = np.lexsort((c, b, a))  # duplicate edges: keep the cheapest (a sparse matrix would sum them)
    a, b, c = a[order], b[order], c[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    graph = coo_matrix((c[first] + shift, (a[first], b[first])), shape=(n, n)).tocsr()
    mst = minimum_spanning_tree(graph).tocoo()
    order = np.argsort(mst.data, kind="stable")
    ti, tj, tc = mst.row[order], mst.col[order], (mst.data[order] - shift).astype(np.float32)

    m = len(tc)
    uf = list(range(n))
    node_of = list(range(n))  # union-find root -> merge-tree node
    left = np.empty(m, np.int64)
    right = np.empty(m, np.int64)

    def find(x: int) -> int:
        root = x
        while uf[root] != root:
            root = uf[root]
        while uf[x] != root:
            uf[x], x = root, uf[x]
        return root

    for k, (a, b) in enumerate(zip(ti.tolist(), tj.tolist())):
        ra, rb = find(a), find(b)
        left[k], right[k] = node_of[ra], node_of[rb]
        uf[rb] = ra
        node_of[ra] = n + k

    has = np.zeros((n + m, n_groups), bool)
    has[seed_point, seed_group] = True
    for k in range(m):
        has[n + k] = has[left[k]] | has[right[k]]
    val = np.full((n + m, n_groups), np.inf, np.float32)
    for k in range(m - 1, -1, -1):
        h, a, b, v = tc[k], left[k], right[k], val[n + k]
        val[a] = np.where(has[b], h, v)
        val[b] = np.where(has[a], h, v)
    out[:] = val[:n]
    out[seed_point, seed_group] = -np.inf
    return out


def prior_mask(ground: np.ndarray, space: LabelSpace) -> np.ndarray:
    """(N,) uint32: flat classes for ground points, all other classes for non-ground points."""
    flat = FLAT_CLASSES.get(space.name, ())
    flat_bits = np.uint32(sum(1 << (space.index(c) - 1) for c in flat))
    full = np.uint32(space.all_candidates)
    if not flat_bits:
        return np.full(len(ground), full, np.uint32)
    return np.where(ground, flat_bits, full & ~flat_bits).astype(np.uint32)


def ours_propagate(ev: Evidence, click_index: np.ndarray, click_label: np.ndarray, space: LabelSpace,
                   p: GraphParams) -> Labels:
    """Our propagation on one keyframe (see the module doc)."""
    n, k = ev.n, space.num_classes
    out = Labels.unknown(n, k)
    if p.ground_prior:
        out.candidate_mask[:] = prior_mask(ev.ground, space)
    if len(click_index) == 0 or n == 0:
        out.source[out.candidate_mask != space.all_candidates] = CANDIDATES
        return out
    thing = space.thing_mask
    # seed groups: each thing click alone (its own instance), all clicks of one stuff class together
    group_class: list[int] = []
    seed_group = np.empty(len(click_index), np.int64)
    stuff_group: dict[int, int] = {}
    for s, c in enumerate(click_label.tolist()):
        if thing[c]:
            seed_group[s] = len(group_class)
            group_class.append(c)
        else:
            if c not in stuff_group:
                stuff_group[c] = len(group_class)
                group_class.append(c)
            seed_group[s] = stuff_group[c]
    group_class_arr = np.asarray(group_class, np.int64)
    i, j, cost = edge_costs(ev, p)
    # flat classes travel over ground, the others over objects: a click whose ground flag is wrong (a
    # road point in a car's pre-segment) then cannot carry its class through the wrong structure
    flat = np.zeros(k + 1, bool)
    flat[[space.index(c) for c in FLAT_CLASSES.get(space.name, ())]] = True
    both_ground = ev.ground[i] & ev.ground[j]
    both_object = ~ev.ground[i] & ~ev.ground[j]
    dist = np.full((n, len(group_class)), np.inf, np.float32)
    for family, blocked in ((flat[group_class_arr], both_object), (~flat[group_class_arr], both_ground)):
        groups = np.flatnonzero(family)
        if len(groups) == 0:
            continue
        seeds = np.isin(seed_group, groups)
        remap = np.full(len(group_class), -1)
        remap[groups] = np.arange(len(groups))
        c = np.where(blocked, np.float32(np.inf), cost) if p.family_barrier else cost
        dist[:, groups] = minimax_to_groups(n, i, j, c, click_index[seeds], remap[seed_group[seeds]], len(groups),
                                            p.candidate_cost)

    classes = np.unique(group_class_arr)
    per_class = np.stack([dist[:, group_class_arr == c].min(axis=1) for c in classes], axis=1)  # (N, Kc)
    order = np.argsort(per_class, axis=1)
    best = order[:, 0]
    d1 = per_class[np.arange(n), best]
    d2 = per_class[np.arange(n), order[:, 1]] if len(classes) > 1 else np.full(n, np.inf, np.float32)
    lab = classes[best]
    margin = np.where(flat[lab], p.margin_flat if p.margin_flat is not None else p.margin, p.margin)
    with np.errstate(invalid="ignore"):
        labelled = (d1 <= p.label_cost) & (d2 - d1 >= margin)
    out.label[labelled] = lab[labelled]
    with np.errstate(over="ignore", invalid="ignore"):  # (1 - P(weakest link crosses a class change)) x P(margin)
        conf = (1.0 / (1.0 + np.exp(d1[labelled]))) * (1.0 / (1.0 + np.exp(-(d2[labelled] - d1[labelled]))))
    out.confidence[labelled] = np.nan_to_num(conf, nan=1.0).astype(np.float32)
    out.candidate_mask[labelled] = candidate_bit(lab[labelled])
    out.source[labelled] = PROPAGATED
    # thing instances: the nearest click of the label's class
    gi = np.argmin(np.where(group_class_arr[None, :] == lab[:, None], dist, np.inf), axis=1)
    is_thing = labelled & thing[lab]
    out.instance_id[is_thing] = gi[is_thing] + 1
    # candidate sets: classes within candidate_cost where no label was given
    rest = ~labelled
    near = per_class[rest] <= p.candidate_cost
    bits = candidate_bit(classes).astype(np.uint32)
    near_mask = np.bitwise_or.reduce(np.where(near, bits[None, :], np.uint32(0)), axis=1).astype(np.uint32)
    several = near.sum(axis=1) >= 2
    cand = out.candidate_mask[rest]
    if p.open_candidates:  # the annotator clicked each class somewhere, not each object: unclicked classes stay possible
        unclicked = np.uint32(space.all_candidates) & ~np.bitwise_or.reduce(bits)
        near_mask = (near_mask | unclicked) & (cand if p.ground_prior else np.uint32(space.all_candidates))
    cand = np.where(several, near_mask, cand)
    out.candidate_mask[rest] = cand
    out.source[rest] = np.where(cand != space.all_candidates, CANDIDATES, NONE)
    out.set_clicks(click_index, click_label)
    for s, (ci, c) in enumerate(zip(click_index, click_label)):
        if thing[c]:
            out.instance_id[ci] = seed_group[s] + 1
    return out
