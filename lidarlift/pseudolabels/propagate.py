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
- Edge cost: the log-odds that the two points differ in class, a weighted naive-Bayes sum of cues
  (:data:`LOG_ODDS`, per edge kind ground-ground / object-object / mixed, read from
  ``log_odds.json``): distance in units of the scanner's own spacing at the point's range (its
  measured beam spacing, :mod:`lidarlift.scan`, so one default holds for 32, 64 and 128 beams),
  height step (kerbs) between ground points, intensity and colour change, superpixel change, 2D mask
  change and pre-segment change between non-ground points. The tables, the cue weights ``w_*`` and
  the thresholds below are fitted together on the tuning world only (``bench/fit_tuning.py``,
  :mod:`lidarlift.pseudolabels.fit`).
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

import json
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial import cKDTree

from lidarlift.classes import LabelSpace, candidate_bit

#: source codes (lidarlift.artifacts.SOURCES)
NONE, CLICK, PROPAGATED, CANDIDATES, NETWORK, IMAGE2D, GROUND = 0, 1, 2, 3, 4, 5, 6


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


#: The fitted log-odds tables (:func:`load_log_odds`): written by ``bench/fit_tuning.py`` on the tuning
#: world named in the file's header, never edited by hand.
LOG_ODDS_PATH = Path(__file__).with_name("log_odds.json")

#: edge kinds, by the ground flags of the two points
EDGE_KINDS = ("ground", "object", "mixed")
#: the cues of each edge kind: continuous ones take a piecewise-linear table over knots, categorical
#: ones one value per state (:data:`CUE_STATES`)
KIND_CUES: dict[str, tuple[str, ...]] = {
    "ground": ("distance", "height", "intensity", "color", "superpixel"),
    "object": ("distance", "intensity", "color", "superpixel", "mask", "segment"),
    "mixed": ("distance", "intensity", "color", "superpixel"),
}
CONTINUOUS_CUES = ("distance", "height", "intensity", "color")
#: states of the categorical cues, in the order of their codes in :class:`EdgeCues`
CUE_STATES: dict[str, tuple[str, ...]] = {
    "superpixel": ("unseen", "differ", "same"),  # no camera sees both / some sees them in two superpixels / in one
    "mask": ("unseen", "differ", "same", "apart"),  # ... in two masks / in one / both in masks, never in one view together
    "segment": ("differ", "same", "noise"),  # two pre-segments / one / either is a noise point
}


class LogOddsError(ValueError):
    """The log-odds file is missing a kind, cue or state, or its tables are malformed."""


def load_log_odds(path: str | Path = LOG_ODDS_PATH) -> dict[str, dict[str, Any]]:
    """The log-odds tables of ``path`` (``{"header": ..., "log_odds": {kind: table}}``).

    Per edge kind (:data:`EDGE_KINDS`) a ``prior`` (log-odds that two points joined by an edge of that
    kind differ in class) and per cue (:data:`KIND_CUES`) its log-likelihood ratio of "differ" against
    "same": ``{"knots": [...], "llr": [...], "unseen": v}`` for a continuous cue (linear between the
    knots, constant beyond them; ``unseen`` where the cue is not measured, e.g. colour outside every
    camera), ``{state: v}`` for a categorical one (:data:`CUE_STATES`). Raises :class:`LogOddsError`
    naming the file and the entry.
    """
    path = Path(path)
    try:
        tables = json.loads(path.read_text())["log_odds"]
    except (OSError, ValueError, KeyError) as e:
        raise LogOddsError(f"log-odds file {path}: cannot read its 'log_odds' tables ({e}); "
                           "re-make it with bench/fit_tuning.py") from e
    for kind in EDGE_KINDS:
        t = tables.get(kind)
        if not isinstance(t, dict) or not isinstance(t.get("prior"), (int, float)):
            raise LogOddsError(f"log-odds file {path}: kind {kind!r} needs a numeric 'prior'")
        for cue in KIND_CUES[kind]:
            c = t.get(cue)
            if cue in CONTINUOUS_CUES:
                ok = (isinstance(c, dict) and len(c.get("knots", ())) >= 2 and len(c["knots"]) == len(c.get("llr", ()))
                      and bool(np.all(np.diff(c["knots"]) > 0)) and "unseen" in c)
            else:
                ok = isinstance(c, dict) and set(c) == set(CUE_STATES[cue])
            if not ok:
                raise LogOddsError(f"log-odds file {path}: kind {kind!r} cue {cue!r} is malformed: {c!r}")
    return tables


@lru_cache(maxsize=1)
def default_log_odds() -> dict[str, dict[str, Any]]:
    """:data:`LOG_ODDS`, read from :data:`LOG_ODDS_PATH` on first use (so the fitting script runs
    where the file is missing)."""
    return load_log_odds(LOG_ODDS_PATH)


def __getattr__(name: str) -> Any:
    #: ``LOG_ODDS``: evidence of a class change along an edge, as log-odds: per edge kind (both ground,
    #: both non-ground, mixed) a prior and, per cue, a log-likelihood ratio of "the two points differ in
    #: class" -- a naive-Bayes sum. Fitted on the tuning world only (``bench/fit_tuning.py``; the world
    #: and the command are in the file's header); config weights ``w_*`` scale each cue.
    if name == "LOG_ODDS":
        return default_log_odds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class GraphParams:
    """The evidence graph and the thresholds of our propagation (config ``pseudolabels.ours``).

    Edge costs are log-odds that the two points differ in class (:data:`LOG_ODDS`); ``w_*`` scale
    each cue (0 switches it off); thresholds are in the same units (nats). Distances are in units of
    the scanner's own spacing: ``scale_beams`` beams (the sweep's measured angular spacing at the
    point, :mod:`lidarlift.scan`) at the point's range, the range taken as at least ``min_range_m``.
    The thresholds ``label_cost``, ``margin``, ``margin_flat`` and ``candidate_cost`` are fitted on the
    tuning world by ``bench/fit_tuning.py`` together with :data:`LOG_ODDS`.
    """

    knn: int
    scale_beams: float  # one distance unit: this many beams at the point's range (1.72 x 1.33 deg = 0.04 rad on 32 beams)
    min_range_m: float  # ... with the range at least this (nearer, range noise and the rig's size dominate)
    beam_spacing_deg: float | None  # None: measure the sweep's spacing (lidarlift.scan); a number: one beam = this
    max_edge: float  # edges longer than this many units are dropped (ground-ground: max_ground_edge_m)
    max_ground_edge_m: float  # longest edge between two ground points of neighbouring beams
    slope_tolerance: float  # ground slope (rise / run) not counted as a height step
    # cue weights and thresholds: fitted on the tuning world by bench/fit_tuning.py (which writes them into the schema)
    w_distance: float
    w_height: float
    w_intensity: float
    w_color: float
    w_superpixel: float
    w_mask: float
    w_segment: float
    label_cost: float  # a point is labelled when its best path's weakest link is below this ...
    margin: float  # ... and every other class needs at least this much more
    margin_flat: float | None  # the margin for flat (ground) classes (None: ``margin``)
    candidate_cost: float  # unlabelled: classes reachable below this form the candidate set
    ground_prior: bool  # unlabelled ground points: candidates = flat classes; non-ground: the rest
    family_barrier: bool  # flat classes never cross object-object edges, the others never ground-ground
    open_candidates: bool  # candidate sets also keep the classes nobody clicked in the keyframe

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None = None) -> "GraphParams":
        """From the section (missing keys take the schema's defaults); bad values raise ConfigError naming the key."""
        from lidarlift.config import ConfigError, typed

        p = typed(cls, "pseudolabels.ours", cfg)
        if p.label_cost > p.candidate_cost:
            raise ConfigError([f"config key pseudolabels.ours.label_cost: {p.label_cost!r} is above "
                               f"pseudolabels.ours.candidate_cost ({p.candidate_cost!r}); need label_cost <= candidate_cost"])
        return p


@dataclass
class Evidence:
    """What our propagation and refinement read about one keyframe (N points, C cameras).

    ``xyz`` (N, 3) float32 lidar frame; ``intensity`` (N,) float32 or None; ``ground`` (N,) bool;
    ``segment_id`` (N,) int32 (-1 noise/ground); ``ground_cell`` (N,) int32; ``fov`` (N,) bool (in
    some image); ``mask`` / ``superpixel`` (N, C) int32 id of the 2D mask / superpixel under the point
    in each camera where the point is visible (-1 elsewhere), or None when the stage is absent;
    ``ring`` (N,) int the LiDAR beam of the point (ordered by elevation), or None; ``color`` (N, 3)
    float32 CIE-Lab colour of the point in the cameras that see it (NaN where none), or None;
    ``spacing`` (N,) float rad the scanner's angular spacing at each point ("one beam",
    :meth:`lidarlift.scan.ScanResolution.spacing`), or None: measured from ``xyz`` and ``ring``.
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
    spacing: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.xyz)


def _view_state(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(E,) int8 per edge: 1 some camera sees both in different regions, else 2 some camera sees both
    in one region, else 0 (no camera sees both). ``a``, ``b`` (E, C) region ids (-1 = not seen)."""
    both = (a >= 0) & (b >= 0)
    differ, same = (both & (a != b)).any(axis=1), (both & (a == b)).any(axis=1)
    return np.where(differ, 1, np.where(same, 2, 0)).astype(np.int8)


def distance_unit(ev: Evidence, p: GraphParams) -> np.ndarray:
    """(N,) float64 m: each point's distance unit, ``scale_beams`` times its angular spacing (the sweep's
    measured "one beam", or ``beam_spacing_deg``) times its range (at least ``min_range_m``)."""
    from lidarlift.scan import resolve_resolution

    spacing = ev.spacing
    if spacing is None:
        spacing = resolve_resolution(ev.xyz, ev.ring, p.beam_spacing_deg).spacing(ev.xyz)
    rng = np.linalg.norm(ev.xyz, axis=1)
    return p.scale_beams * np.asarray(spacing, np.float64) * np.maximum(rng, p.min_range_m)


def knn_edges(xyz: np.ndarray, k: int, unit: np.ndarray, max_edge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected k-NN edges (i < j) with their length in units: ``unit`` (N,) m per point, the larger
    of the two ends'; edges longer than ``max_edge`` units are dropped."""
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
    rel = d / np.maximum(unit[i], unit[j])
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


@dataclass
class EdgeCues:
    """The evidence graph of a keyframe before it is weighed: E edges (i < j) and each cue's value.

    ``i``, ``j`` (E,) int64; ``kind`` (E,) int8 index into :data:`EDGE_KINDS`; ``distance`` (E,)
    float32 length in distance units (:func:`distance_unit`); ``height`` (E,) float32 m height step
    beyond the slope tolerance (ground edges; NaN elsewhere); ``intensity`` (E,) float32 absolute
    intensity change, ``color`` (E,) float32 CIE-Lab distance (NaN where no camera sees both), or None
    when the keyframe has none; ``superpixel``, ``mask`` (E,) int8 codes of :data:`CUE_STATES` (mask:
    object edges only, -1 elsewhere), or None without the stage; ``segment`` (E,) int8 (object edges;
    -1 elsewhere).
    """

    i: np.ndarray
    j: np.ndarray
    kind: np.ndarray
    distance: np.ndarray
    height: np.ndarray
    intensity: np.ndarray | None
    color: np.ndarray | None
    superpixel: np.ndarray | None
    mask: np.ndarray | None
    segment: np.ndarray

    def __len__(self) -> int:
        return len(self.i)


def edge_cues(ev: Evidence, p: GraphParams) -> EdgeCues:
    """The edges of a keyframe's evidence graph (k nearest neighbours plus the neighbouring beams) and
    their cue values (:class:`EdgeCues`)."""
    n = len(ev.xyz)
    unit = distance_unit(ev, p) if n else np.zeros(0)
    i, j, rel = knn_edges(ev.xyz, p.knn, unit, p.max_edge)
    if ev.ring is not None and n > 1:
        ri, rj = ring_edges(ev.xyz, ev.ring)
        d = np.linalg.norm(ev.xyz[ri] - ev.xyz[rj], axis=1)
        flat = ev.ground[ri] & ev.ground[rj]
        r_rel = d / np.maximum(unit[ri], unit[rj])
        keep = np.where(flat, d <= p.max_ground_edge_m, r_rel <= p.max_edge)
        key = np.concatenate([i * n + j, ri[keep] * n + rj[keep]])
        key, first = np.unique(key, return_index=True)
        i, j = key // n, key % n
        rel = np.concatenate([rel, r_rel[keep].astype(np.float32)])[first]
    gi, gj = ev.ground[i], ev.ground[j]
    kind = np.where(gi & gj, 0, np.where(~gi & ~gj, 1, 2)).astype(np.int8)
    height = np.full(len(i), np.nan, np.float32)
    g = kind == 0
    a, b = i[g], j[g]
    d_xy = np.hypot(ev.xyz[a, 0] - ev.xyz[b, 0], ev.xyz[a, 1] - ev.xyz[b, 1])
    height[g] = np.maximum(np.abs(ev.xyz[a, 2] - ev.xyz[b, 2]) - p.slope_tolerance * d_xy, 0.0)
    o = kind == 1
    a, b = i[o], j[o]
    segment = np.full(len(i), -1, np.int8)
    sa, sb = ev.segment_id[a], ev.segment_id[b]
    segment[o] = np.where((sa < 0) | (sb < 0), 2, np.where(sa != sb, 0, 1))
    mask = None
    if ev.mask is not None:
        mask = np.full(len(i), -1, np.int8)
        state = _view_state(ev.mask[a], ev.mask[b])
        covered = (ev.mask >= 0).any(axis=1)
        mask[o] = np.where((state == 0) & covered[a] & covered[b], 3, state)
    return EdgeCues(
        i=i, j=j, kind=kind, distance=rel.astype(np.float32), height=height,
        intensity=np.abs(ev.intensity[i] - ev.intensity[j]).astype(np.float32) if ev.intensity is not None else None,
        color=np.linalg.norm(ev.color[i] - ev.color[j], axis=1).astype(np.float32) if ev.color is not None else None,
        superpixel=_view_state(ev.superpixel[i], ev.superpixel[j]) if ev.superpixel is not None else None,
        mask=mask, segment=segment)


def cue_log_odds(cue: str, values: np.ndarray, table: dict[str, Any]) -> np.ndarray:
    """(E,) float32 log-likelihood ratio of one cue's ``values`` under its ``table``
    (:func:`load_log_odds`): continuous cues interpolated over the knots (NaN: the ``unseen`` value),
    categorical ones looked up by state code."""
    if cue in CONTINUOUS_CUES:
        x = np.asarray(values, np.float64)
        seen = np.isfinite(x)
        out = np.interp(np.where(seen, x, 0.0), table["knots"], table["llr"])
        return np.where(seen, out, table["unseen"]).astype(np.float32)
    lut = np.array([table[s] for s in CUE_STATES[cue]], np.float32)
    return lut[np.asarray(values, np.int64)]


#: every cue, in the column order of :func:`cue_matrix`
CUES = ("distance", "height", "intensity", "color", "superpixel", "mask", "segment")


def cue_matrix(cues: EdgeCues, log_odds: dict[str, dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Each edge's evidence under the tables ``log_odds``: (prior (E,) float32 of its kind, (E, len(CUES))
    float32 log-likelihood ratio of each cue of :data:`CUES`, 0 where the cue does not apply to the
    edge's kind or the keyframe lacks it)."""
    prior = np.zeros(len(cues), np.float32)
    llr = np.zeros((len(cues), len(CUES)), np.float32)
    for k, kind in enumerate(EDGE_KINDS):
        sel = cues.kind == k
        if not sel.any():
            continue
        t = log_odds[kind]
        prior[sel] = t["prior"]
        for cue in KIND_CUES[kind]:
            values = getattr(cues, cue)
            if values is not None:
                llr[sel, CUES.index(cue)] = cue_log_odds(cue, values[sel], t[cue])
    return prior, llr


def cue_weights(p: GraphParams) -> np.ndarray:
    """(len(CUES),) float32 the config weights ``w_*`` in the order of :data:`CUES`."""
    return np.array([getattr(p, f"w_{cue}") for cue in CUES], np.float32)


def edge_costs(ev: Evidence, p: GraphParams, log_odds: dict[str, dict[str, Any]] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The evidence graph of a keyframe: edges (i, j) and their cost (E,) float32, the log-odds that
    the two points differ in class: the kind's prior plus each cue's log-likelihood ratio scaled by its
    weight ``w_*`` of ``p`` (tables ``log_odds``, default :data:`LOG_ODDS`)."""
    cues = edge_cues(ev, p)
    prior, llr = cue_matrix(cues, default_log_odds() if log_odds is None else log_odds)
    return cues.i, cues.j, prior + llr @ cue_weights(p)


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
    flat_bits = np.uint32(sum(1 << (c - 1) for c in np.flatnonzero(space.flat_mask)))
    full = np.uint32(space.all_candidates)
    if not flat_bits:
        return np.full(len(ground), full, np.uint32)
    return np.where(ground, flat_bits, full & ~flat_bits).astype(np.uint32)


@dataclass
class SeedDistances:
    """Minimax path costs from every point to the clicks of one keyframe (N points, m clicks, G seed
    groups: each thing click alone, all clicks of one stuff class together; Kc clicked classes).

    ``group_class`` (G,) int64 class of each group; ``seed_group`` (m,) int64 group of each click;
    ``dist`` (N, G) float32 cost to each group; ``classes`` (Kc,) int64 sorted clicked classes;
    ``per_class`` (N, Kc) float32 cost to the nearest group of each class. Costs above the ``max_cost``
    they were computed with are inf.
    """

    group_class: np.ndarray
    seed_group: np.ndarray
    dist: np.ndarray
    classes: np.ndarray
    per_class: np.ndarray

    def best_two(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N,) the nearest class, its cost d1 and the second-nearest class's cost d2 (inf with one class)."""
        n = len(self.per_class)
        order = np.argsort(self.per_class, axis=1)
        d1 = self.per_class[np.arange(n), order[:, 0]]
        d2 = (self.per_class[np.arange(n), order[:, 1]] if len(self.classes) > 1
              else np.full(n, np.inf, np.float32))
        return self.classes[order[:, 0]], d1, d2


def seed_distances(ev: Evidence, click_index: np.ndarray, click_label: np.ndarray, space: LabelSpace,
                   p: GraphParams, max_cost: float | None = None,
                   log_odds: dict[str, dict[str, Any]] | None = None) -> SeedDistances:
    """The minimax costs of our propagation (:class:`SeedDistances`; at least one click), over the
    evidence graph of :func:`edge_costs`, computed up to ``max_cost`` (default ``p.candidate_cost``)."""
    n = ev.n
    thing = space.thing_mask
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
    i, j, cost = edge_costs(ev, p, log_odds)
    # flat classes travel over ground, the others over objects: a click whose ground flag is wrong (a
    # road point in a car's pre-segment) then cannot carry its class through the wrong structure
    flat = space.flat_mask
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
                                            p.candidate_cost if max_cost is None else max_cost)
    classes = np.unique(group_class_arr)
    per_class = np.stack([dist[:, group_class_arr == c].min(axis=1) for c in classes], axis=1)  # (N, Kc)
    return SeedDistances(group_class_arr, seed_group, dist, classes, per_class)


def labelled_mask(best: np.ndarray, d1: np.ndarray, d2: np.ndarray, space: LabelSpace, p: GraphParams) -> np.ndarray:
    """(N,) bool: the points that take their nearest class ``best`` (N,): its cost ``d1`` is at most
    ``label_cost`` and the second-nearest class's cost ``d2`` is ``margin`` (``margin_flat`` for flat
    classes) further, a ``d2`` beyond ``candidate_cost`` counting as unreachable."""
    flat_margin = p.margin_flat if p.margin_flat is not None else p.margin
    margin = np.where(space.flat_mask[best], flat_margin, p.margin)
    with np.errstate(invalid="ignore"):
        return (d1 <= p.label_cost) & ((d2 > p.candidate_cost) | (d2 - d1 >= margin))


def candidate_sets(per_class: np.ndarray, classes: np.ndarray, prior: np.ndarray, space: LabelSpace,
                   p: GraphParams) -> np.ndarray:
    """(N,) uint32 candidate masks of unlabelled points: the classes within ``candidate_cost`` when two
    or more are (with ``open_candidates`` also the classes nobody clicked, inside the ``prior`` when
    ``ground_prior``), else ``prior`` (N,) uint32. ``per_class`` (N, Kc) costs to the clicked ``classes``."""
    near = per_class <= p.candidate_cost
    bits = candidate_bit(classes).astype(np.uint32)
    near_mask = np.bitwise_or.reduce(np.where(near, bits[None, :], np.uint32(0)), axis=1).astype(np.uint32)
    several = near.sum(axis=1) >= 2
    if p.open_candidates:  # the annotator clicked each class somewhere, not each object: unclicked classes stay possible
        unclicked = np.uint32(space.all_candidates) & ~np.bitwise_or.reduce(bits)
        near_mask = (near_mask | unclicked) & (prior if p.ground_prior else np.uint32(space.all_candidates))
    return np.where(several, near_mask, prior).astype(np.uint32)


def ours_propagate(ev: Evidence, click_index: np.ndarray, click_label: np.ndarray, space: LabelSpace,
                   p: GraphParams, log_odds: dict[str, dict[str, Any]] | None = None) -> Labels:
    """Our propagation on one keyframe (see the module doc); ``log_odds`` default :data:`LOG_ODDS`."""
    n = ev.n
    out = Labels.unknown(n, space.num_classes)
    if p.ground_prior:
        out.candidate_mask[:] = prior_mask(ev.ground, space)
    if len(click_index) == 0 or n == 0:
        out.source[out.candidate_mask != space.all_candidates] = CANDIDATES
        return out
    thing = space.thing_mask
    sd = seed_distances(ev, click_index, click_label, space, p, log_odds=log_odds)
    classes, per_class = sd.classes, sd.per_class
    lab, d1, d2 = sd.best_two()
    labelled = labelled_mask(lab, d1, d2, space, p)
    out.label[labelled] = lab[labelled]
    with np.errstate(over="ignore", invalid="ignore"):  # (1 - P(weakest link crosses a class change)) x P(margin)
        conf = (1.0 / (1.0 + np.exp(d1[labelled]))) * (1.0 / (1.0 + np.exp(-(d2[labelled] - d1[labelled]))))
    out.confidence[labelled] = np.nan_to_num(conf, nan=1.0).astype(np.float32)
    out.candidate_mask[labelled] = candidate_bit(lab[labelled])
    out.source[labelled] = PROPAGATED
    # thing instances: the nearest click of the label's class
    gi = np.argmin(np.where(sd.group_class[None, :] == lab[:, None], sd.dist, np.inf), axis=1)
    is_thing = labelled & thing[lab]
    out.instance_id[is_thing] = gi[is_thing] + 1
    rest = ~labelled
    cand = candidate_sets(per_class[rest], classes, out.candidate_mask[rest], space, p)
    out.candidate_mask[rest] = cand
    out.source[rest] = np.where(cand != space.all_candidates, CANDIDATES, NONE)
    out.set_clicks(click_index, click_label)
    for s, (ci, c) in enumerate(zip(click_index, click_label)):
        if thing[c]:
            out.instance_id[ci] = sd.seed_group[s] + 1
    return out
