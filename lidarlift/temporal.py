"""Temporal propagation: keyframe pseudo-labels carried to the intermediate LiDAR sweeps (rule ``temporal``).

nuScenes labels one sweep in ten (2 Hz keyframes, 20 Hz sweeps); the other nine are linked to the
keyframes by the ego poses. For each keyframe ``j`` of a shard, every sweep between keyframe ``j - 1``
and keyframe ``j`` (the manifest's ``intermediate_sweeps``) takes labels from both neighbouring
keyframes (one side before the first keyframe):

1. **Static structure** (ego-motion compensated). Sweep and keyframe points are taken to the global
   frame through their own ego poses. A sweep point looks up the keyframe points nearest to it: on the
   ground (the keyframe's presegment ground points) in the horizontal plane, within a height of
   ``ground_height_m``; elsewhere in 3D. A keyframe point reaches as far as ``gate_beams`` of its own
   beam footprint -- the gap between its beam and the next, ``spacing x range`` on a surface facing the
   sensor, ``spacing x range / sin(grazing angle)`` on the ground (the ring spacing) -- with the beam
   spacing measured from the keyframe (:mod:`lidarlift.scan`), so the gate holds for any scanner.
2. **Moving things**. The keyframes' pre-segments carrying a thing label are matched between
   consecutive keyframes (same class, within ``max_speed``, translation fitted by a few ICP steps and
   accepted when the residual is within ``match_beams`` beam footprints; mutual best matches only).
   A matched segment moves at constant velocity: its keyframe points are moved to the sweep's time
   before the look-up (interpolated between the keyframes, extrapolated before the first one).
   Segments without a match stay where the keyframe saw them (the nearest keyframe in time decides).
3. **Decision per side**. The ``neighbours`` nearest keyframe points of each kind (ground, still,
   moving) are ranked by distance over gate; of those within their gates the nearest must be labelled
   and every labelled one must agree (so a sweep point at the foot of a wall, within reach of both the
   road and the wall, gets no label); labelled ones that disagree make the side a *conflict*, an
   unlabelled nearest point an *abstention*, no point within a gate *unseen*.
4. **Both keyframes**. Agreeing sides give the label with confidence ``1 - (1 - c_prev)(1 - c_next)``;
   disagreeing sides (or a conflict on either side) give none; one side alone gives its label with
   ``single_weight x c``. A side's confidence is ``c_key x (1 - d / 2) x (1 - gap / 2)``: the keyframe
   label's own confidence, the distance ``d`` as a share of the gate, and the time ``gap`` to that
   keyframe as a share of the keyframe interval. Labels below ``min_confidence`` are not kept.

Reads the shard's ``pseudolabels`` store (one EM round) and ``presegment`` store and the LiDAR files;
writes the ``temporal`` store (:data:`lidarlift.artifacts.STORES`) and stats. No ground truth is read
here: :mod:`lidarlift.evaluate.temporal` scores the store against the synthetic world's sweep truth.
The M-step trains on the stored labels as extra sweeps (:func:`lidarlift.model.data.temporal_refs`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from lidarlift import artifacts as A
from lidarlift.classes import LabelSpace, label_space
from lidarlift.manifest import LidarFrame, Manifest, SampleRecord, as_matrix
from lidarlift.scan import ScanResolution, read_sweep

log = logging.getLogger(__name__)

#: ``source`` codes of the temporal store: what decided a sweep point's label.
TEMPORAL_SOURCES: dict[int, str] = {
    0: "unseen",  # no keyframe point within its gate (or only abstentions)
    1: "both",  # both neighbouring keyframes agree
    2: "previous",  # only the previous keyframe labels it
    3: "next",  # only the next keyframe labels it
    4: "conflict",  # the keyframes (or one keyframe's neighbours) disagree: no label
    5: "low_confidence",  # a label below min_confidence: not kept
}
SOURCE_CODE = {name: code for code, name in TEMPORAL_SOURCES.items()}
#: Grazing angles below this (sine) count as this when the ground footprint is computed: beyond
#: ~37 m from a sensor 1.84 m above the ground the ring spacing is taken as constant.
_MIN_GRAZING_SIN = 0.05
#: ICP steps of a segment match.
_ICP_STEPS = 4


class TemporalError(RuntimeError):
    """Inputs of the temporal stage disagree (stores from other keyframes, point counts)."""


@dataclass(frozen=True)
class TemporalParams:
    """The ``temporal`` config section (defaults and meaning: config/schema.yaml)."""

    enabled: bool
    gate_beams: float
    ground_height_m: float
    neighbours: int
    max_speed: float
    match_beams: float
    min_segment_points: int
    single_weight: float
    min_confidence: float
    beam_spacing_deg: float | None

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> "TemporalParams":
        from lidarlift.config import typed

        return typed(cls, "temporal", cfg)


# ----------------------------------------------------------------------------------------------- keyframes

@dataclass
class Keyframe:
    """One keyframe's labelled points in the shard's global frame (minus the shard origin).

    xyz: (N, 3) float64; label (N,) uint8 0..K; confidence (N,) float32; ground (N,) bool; segment_id
    (N,) int32 (-1 none); footprint (N,) float64 m, one beam's gap on the surface at the point;
    velocity (N, 3) float64 m/s (0 where the point's segment is not matched as moving); time s;
    sensor (3,) the LiDAR's position; beam (N,) float64 rad, each point's angular spacing."""

    token: str
    time: float
    xyz: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    ground: np.ndarray
    segment_id: np.ndarray
    footprint: np.ndarray
    sensor: np.ndarray
    velocity: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.xyz)


def lidar_to_global(frame: LidarFrame) -> np.ndarray:
    """(4, 4) float64: the frame's lidar -> ego (at its timestamp) -> global."""
    return as_matrix(frame.ego_to_global) @ as_matrix(frame.lidar_to_ego)


def footprint(xyz_lidar: np.ndarray, ground: np.ndarray, scan: ScanResolution) -> np.ndarray:
    """(N,) float64 m: the gap between a point's beam and the next one on the surface it hit.

    ``xyz_lidar`` (N, >=3) sensor frame; ``ground`` (N,) bool. Off the ground ``spacing x range`` (a
    surface facing the sensor); on the ground ``spacing x range / sin(grazing)`` with ``sin(grazing) =
    -z / range`` (the ring spacing; at least :data:`_MIN_GRAZING_SIN`)."""
    xyz = np.asarray(xyz_lidar, np.float64)[:, :3]
    rng = np.linalg.norm(xyz, axis=1)
    gap = scan.spacing(xyz) * rng
    sin_g = np.clip(-xyz[:, 2] / np.maximum(rng, 1e-6), _MIN_GRAZING_SIN, 1.0)
    return np.where(ground, gap / sin_g, gap)


def make_keyframe(token: str, timestamp_us: int, xyz_lidar: np.ndarray, to_global: np.ndarray, label: np.ndarray,
                  confidence: np.ndarray, ground: np.ndarray, segment_id: np.ndarray, scan: ScanResolution,
                  origin: np.ndarray) -> Keyframe:
    """A :class:`Keyframe` from its lidar-frame points (N, >=3), (4, 4) ``to_global`` and per-point stores."""
    xyz = np.asarray(xyz_lidar, np.float64)[:, :3]
    xyz_g = xyz @ to_global[:3, :3].T + to_global[:3, 3] - origin
    return Keyframe(token, timestamp_us * 1e-6, xyz_g, np.asarray(label, np.uint8), np.asarray(confidence, np.float32),
                    np.asarray(ground, bool), np.asarray(segment_id, np.int32), footprint(xyz, ground, scan),
                    to_global[:3, 3] - origin)


# ----------------------------------------------------------------------------------------- moving things

def _segments(kf: Keyframe, space: LabelSpace, min_points: int) -> dict[int, tuple[np.ndarray, int]]:
    """{segment id: (point rows, thing class)} of the keyframe's segments whose labelled points are
    mostly of one thing class and that have at least ``min_points`` points."""
    out: dict[int, tuple[np.ndarray, int]] = {}
    sel = np.flatnonzero((kf.segment_id >= 0) & ~kf.ground)
    if not len(sel):
        return out
    order = sel[np.argsort(kf.segment_id[sel], kind="stable")]
    ids, starts = np.unique(kf.segment_id[order], return_index=True)
    bounds = np.r_[starts, len(order)]
    things = space.thing_mask
    for i, seg in enumerate(ids):
        rows = order[bounds[i]:bounds[i + 1]]
        if len(rows) < min_points:
            continue
        lab = kf.label[rows]
        lab = lab[lab > 0]
        if not len(lab):
            continue
        counts = np.bincount(lab, minlength=space.num_classes + 1)
        c = int(np.argmax(counts))
        if things[c] and counts[c] * 2 > len(lab):
            out[int(seg)] = (rows, c)
    return out


def _fit_translation(src: np.ndarray, tree: cKDTree, dst: np.ndarray, d0: np.ndarray) -> tuple[np.ndarray, float]:
    """Translation taking ``src`` (M, 3) onto the points of ``tree`` (``dst``), from ``d0``: a few ICP
    steps with the median residual (robust to the parts one keyframe sees and the other does not).
    Returns (d (3,), median distance after)."""
    d = np.asarray(d0, np.float64).copy()
    for _ in range(_ICP_STEPS):
        _, idx = tree.query(src + d)
        d += np.median(dst[idx] - (src + d), axis=0)
    dist, _ = tree.query(src + d)
    return d, float(np.median(dist))


def match_segments(a: Keyframe, b: Keyframe, space: LabelSpace, p: TemporalParams) -> list[tuple[int, int, np.ndarray]]:
    """Thing segments of keyframe ``a`` matched to those of the later keyframe ``b``: [(segment of a,
    segment of b, translation (3,) m from a to b)], mutual best matches of the same class whose fitted
    translation leaves a median residual within ``match_beams`` beam footprints (at the segment's range)."""
    dt = b.time - a.time
    sa, sb = _segments(a, space, p.min_segment_points), _segments(b, space, p.min_segment_points)
    if not sa or not sb or dt <= 0:
        return []
    cb = {s: b.xyz[rows].mean(0) for s, (rows, _) in sb.items()}
    reach = p.max_speed * dt
    trees: dict[int, cKDTree] = {}
    scores: dict[tuple[int, int], tuple[float, np.ndarray]] = {}
    for s_a, (rows_a, cls) in sa.items():
        src = a.xyz[rows_a]
        ca = src.mean(0)
        gate = p.match_beams * float(np.median(a.footprint[rows_a]))
        for s_b, (rows_b, cls_b) in sb.items():
            if cls_b != cls or np.linalg.norm((cb[s_b] - ca)[:2]) > reach + 2.0 * gate + _extent(src):
                continue
            tree = trees.get(s_b)
            if tree is None:
                tree = trees[s_b] = cKDTree(b.xyz[rows_b])
            dst = b.xyz[rows_b]
            best = None
            for d0 in (np.zeros(3), cb[s_b] - ca):  # staying put, or the centroids' shift
                d, res = _fit_translation(src, tree, dst, d0)
                if np.linalg.norm(d[:2]) <= reach + gate and (best is None or res < best[0]):
                    best = (res, d)
            if best is not None and best[0] <= gate:
                scores[(s_a, s_b)] = best
    best_a: dict[int, tuple[float, int]] = {}
    best_b: dict[int, tuple[float, int]] = {}
    for (s_a, s_b), (res, _) in scores.items():
        if s_a not in best_a or res < best_a[s_a][0]:
            best_a[s_a] = (res, s_b)
        if s_b not in best_b or res < best_b[s_b][0]:
            best_b[s_b] = (res, s_a)
    return [(s_a, s_b, scores[(s_a, s_b)][1]) for s_a, (_, s_b) in best_a.items() if best_b[s_b][1] == s_a]


def _extent(xyz: np.ndarray) -> float:
    """Horizontal half-diagonal (m) of a point set's bounding box."""
    span = xyz[:, :2].max(0) - xyz[:, :2].min(0)
    return 0.5 * float(np.hypot(*span))


def assign_velocities(keyframes: list[Keyframe], space: LabelSpace, p: TemporalParams) -> list[int]:
    """Set every keyframe's per-point ``velocity`` (m/s) from the segment matches with its neighbours
    (the mean where a segment is matched on both sides); translations within one gate of zero are taken
    as standing still. Returns the number of moving segments per keyframe."""
    sums = [np.zeros((k.n, 3)) for k in keyframes]
    counts = [np.zeros(k.n) for k in keyframes]
    for j in range(len(keyframes) - 1):
        a, b = keyframes[j], keyframes[j + 1]
        for s_a, s_b, d in match_segments(a, b, space, p):
            rows_a = np.flatnonzero(a.segment_id == s_a)
            rows_b = np.flatnonzero(b.segment_id == s_b)
            gate = p.gate_beams * float(np.median(a.footprint[rows_a]))
            v = np.zeros(3) if np.linalg.norm(d) <= gate else d / (b.time - a.time)
            for kf, rows in ((j, rows_a), (j + 1, rows_b)):
                sums[kf][rows] += v
                counts[kf][rows] += 1
    moving = []
    for k, s, c in zip(keyframes, sums, counts):
        k.velocity = s / np.maximum(c, 1)[:, None]
        mv = np.linalg.norm(k.velocity, axis=1) > 0
        moving.append(int(len(np.unique(k.segment_id[mv]))))
    return moving


# ------------------------------------------------------------------------------------------- look-up

#: Per-side outcomes of :func:`side_labels`.
UNSEEN, LABELLED, ABSTAIN, CONFLICT = 0, 1, 2, 3


@dataclass
class SideLabels:
    """What one keyframe says about each sweep point: ``state`` (M,) uint8 (UNSEEN, LABELLED, ABSTAIN,
    CONFLICT), ``label`` (M,) uint8, ``confidence`` (M,) float64 (the keyframe label's), ``distance``
    (M,) float64 share of the gate of the nearest point, ``moved`` (M,) bool (the nearest point moved)."""

    state: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    distance: np.ndarray
    moved: np.ndarray


class KeyframeIndex:
    """Search structures of one keyframe: its ground points in the horizontal plane, its still
    non-ground points in 3D (built once), its moving points (moved to each query's time)."""

    def __init__(self, kf: Keyframe, p: TemporalParams):
        self.kf, self.p = kf, p
        vel = kf.velocity if kf.velocity is not None else np.zeros((kf.n, 3))
        moving = np.linalg.norm(vel, axis=1) > 0
        self.ground_rows = np.flatnonzero(kf.ground)
        self.still_rows = np.flatnonzero(~kf.ground & ~moving)
        self.moving_rows = np.flatnonzero(~kf.ground & moving)
        self.velocity = vel
        self.ground_tree = cKDTree(kf.xyz[self.ground_rows, :2]) if len(self.ground_rows) else None
        self.still_tree = cKDTree(kf.xyz[self.still_rows]) if len(self.still_rows) else None

    def _candidates(self, q: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(distance share of gate (M, C), keyframe row (M, C), -1 = none) of the candidate neighbours."""
        k, p, kf = self.p.neighbours, self.p, self.kf
        m = len(q)
        parts_d, parts_r = [], []

        def take(tree: cKDTree | None, pts: np.ndarray, rows: np.ndarray, query: np.ndarray, ground: bool) -> None:
            if tree is None or not len(rows):
                return
            kk = min(k, len(rows))
            _, idx = tree.query(query, k=kk)
            idx = idx.reshape(m, kk)
            r = rows[idx]
            gate = p.gate_beams * kf.footprint[r]
            if ground:
                dxy = np.linalg.norm(q[:, None, :2] - pts[idx][..., :2], axis=2)
                dz = np.abs(q[:, None, 2] - pts[idx][..., 2])
                share = np.maximum(dxy / gate, dz / p.ground_height_m)
            else:
                share = np.linalg.norm(q[:, None, :] - pts[idx], axis=2) / gate
            parts_d.append(share)
            parts_r.append(r)

        take(self.ground_tree, kf.xyz[self.ground_rows], self.ground_rows, q[:, :2], True)
        take(self.still_tree, kf.xyz[self.still_rows], self.still_rows, q, False)
        if len(self.moving_rows):
            moved = kf.xyz[self.moving_rows] + self.velocity[self.moving_rows] * (t - kf.time)
            take(cKDTree(moved), moved, self.moving_rows, q, False)
        if not parts_d:
            return np.full((m, 1), np.inf), np.full((m, 1), -1)
        return np.concatenate(parts_d, 1), np.concatenate(parts_r, 1)

    def side_labels(self, q: np.ndarray, t: float) -> SideLabels:
        """What this keyframe says about sweep points ``q`` (M, 3) (global frame minus the shard origin)
        captured at time ``t`` (s)."""
        kf = self.kf
        share, rows = self._candidates(q, t)  # the nearest of each kind (ground, still, moving) agree or conflict
        order = np.argsort(share, axis=1, kind="stable")
        share = np.take_along_axis(share, order, 1)
        rows = np.take_along_axis(rows, order, 1)
        valid = share <= 1.0
        lab = np.where(valid, kf.label[np.maximum(rows, 0)], 0).astype(np.int64)
        first = lab[:, 0]
        labelled = lab > 0
        agree = np.all(~labelled | (lab == first[:, None]), axis=1)
        state = np.full(len(q), UNSEEN, np.uint8)
        state[valid[:, 0]] = ABSTAIN
        state[valid[:, 0] & (first > 0) & agree] = LABELLED
        state[valid[:, 0] & labelled.any(1) & ~agree] = CONFLICT
        nearest = np.maximum(rows[:, 0], 0)
        moved = np.linalg.norm(self.velocity[nearest], axis=1) > 0
        return SideLabels(state, np.where(state == LABELLED, first, 0).astype(np.uint8),
                          kf.confidence[nearest].astype(np.float64), share[:, 0], moved & valid[:, 0])


def combine(prev: SideLabels | None, nxt: SideLabels | None, gap_prev: float, gap_next: float,
            p: TemporalParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both keyframes' words on a sweep's points -> (label (M,) uint8, confidence (M,) float32, source
    (M,) uint8 (:data:`TEMPORAL_SOURCES`), moved (M,) bool). ``gap_*``: the sweep's time from that keyframe
    as a share of the keyframe interval (the module docstring has the rule)."""
    sides = [(s, g) for s, g in ((prev, gap_prev), (nxt, gap_next)) if s is not None]
    m = len(sides[0][0].state)

    def conf(s: SideLabels, gap: float) -> np.ndarray:
        return s.confidence * (1.0 - 0.5 * np.clip(s.distance, 0, 1)) * (1.0 - 0.5 * min(max(gap, 0.0), 1.0))

    lp = prev.state == LABELLED if prev is not None else np.zeros(m, bool)
    ln = nxt.state == LABELLED if nxt is not None else np.zeros(m, bool)
    cp = conf(prev, gap_prev) if prev is not None else np.zeros(m)
    cn = conf(nxt, gap_next) if nxt is not None else np.zeros(m)
    lab_p = prev.label if prev is not None else np.zeros(m, np.uint8)
    lab_n = nxt.label if nxt is not None else np.zeros(m, np.uint8)
    conflict = np.zeros(m, bool)
    for s, _ in sides:
        conflict |= s.state == CONFLICT
    conflict |= lp & ln & (lab_p != lab_n)
    both = lp & ln & ~conflict
    only_p = lp & ~ln & ~conflict
    only_n = ln & ~lp & ~conflict
    label = np.zeros(m, np.uint8)
    confidence = np.zeros(m, np.float64)
    source = np.full(m, SOURCE_CODE["unseen"], np.uint8)
    label[both] = lab_p[both]
    confidence[both] = 1.0 - (1.0 - cp[both]) * (1.0 - cn[both])
    source[both] = SOURCE_CODE["both"]
    label[only_p] = lab_p[only_p]
    confidence[only_p] = p.single_weight * cp[only_p]
    source[only_p] = SOURCE_CODE["previous"]
    label[only_n] = lab_n[only_n]
    confidence[only_n] = p.single_weight * cn[only_n]
    source[only_n] = SOURCE_CODE["next"]
    source[conflict] = SOURCE_CODE["conflict"]
    low = (label > 0) & (confidence < p.min_confidence)
    source[low] = SOURCE_CODE["low_confidence"]
    label[low] = 0
    confidence[label == 0] = 0.0
    moved = np.zeros(m, bool)
    if prev is not None:
        moved |= prev.moved & (both | only_p)
    if nxt is not None:
        moved |= nxt.moved & (both | only_n)
    return label, confidence.astype(np.float32), source, moved & (label > 0)


# ---------------------------------------------------------------------------------------------- a shard

@dataclass
class SweepLabels:
    """The labels of one intermediate sweep: ``keyframe`` (index in the shard it precedes), its frame,
    and per point (M,) ``label`` uint8, ``confidence`` float32, ``source`` uint8, ``moved`` bool."""

    keyframe: int
    frame: LidarFrame
    label: np.ndarray
    confidence: np.ndarray
    source: np.ndarray
    moved: np.ndarray


def keyframe_interval(samples: list[SampleRecord]) -> float:
    """Median seconds between consecutive keyframes (0.5 s where there is one keyframe)."""
    ts = np.array([s.lidar.timestamp for s in samples], np.float64) * 1e-6
    gaps = np.diff(ts)
    gaps = gaps[gaps > 0]
    return float(np.median(gaps)) if len(gaps) else 0.5


def label_sweeps(manifest: Manifest, samples: list[SampleRecord], keyframes: list[Keyframe | None],
                 p: TemporalParams, origin: np.ndarray) -> list[SweepLabels]:
    """Labels of every intermediate sweep of ``samples`` (one shard, in order) from the ``keyframes``
    (None: a keyframe skipped upstream: its neighbours' sweeps are labelled from the other side only,
    its own sweeps get no label from it). Sweeps come in keyframe order, each keyframe's in time order."""
    from lidarlift.datasets.readers import read_lidar

    interval = keyframe_interval(samples)
    index: dict[int, KeyframeIndex] = {}

    def idx(j: int) -> KeyframeIndex | None:
        if j < 0 or j >= len(keyframes) or keyframes[j] is None:
            return None
        if j not in index:
            index[j] = KeyframeIndex(keyframes[j], p)
            index.pop(j - 2, None)  # keyframes are visited in order: two back is done with
        return index[j]

    out: list[SweepLabels] = []
    for j, sample in enumerate(samples):
        prev_i, next_i = idx(j - 1), idx(j)
        t_prev = prev_i.kf.time if prev_i else None
        t_next = next_i.kf.time if next_i else None
        span = (t_next - t_prev) if (t_prev is not None and t_next is not None) else interval
        for frame in sorted(sample.intermediate_sweeps, key=lambda f: f.timestamp):
            pts = read_lidar(manifest.resolve(frame.path), frame.fmt, sample=frame.token)
            m = len(pts)
            if prev_i is None and next_i is None:
                out.append(SweepLabels(j, frame, np.zeros(m, np.uint8), np.zeros(m, np.float32),
                                       np.zeros(m, np.uint8), np.zeros(m, bool)))
                continue
            t = frame.timestamp * 1e-6
            tg = lidar_to_global(frame)
            q = pts[:, :3].astype(np.float64) @ tg[:3, :3].T + tg[:3, 3] - origin
            sp = prev_i.side_labels(q, t) if prev_i else None
            sn = next_i.side_labels(q, t) if next_i else None
            gap_p = (t - t_prev) / span if t_prev is not None else 1.0
            gap_n = (t_next - t) / span if t_next is not None else 1.0
            out.append(SweepLabels(j, frame, *combine(sp, sn, gap_p, gap_n, p)))
    return out


def load_keyframes(manifest: Manifest, samples: list[SampleRecord], pseudolabels: str | Path, presegment: str | Path,
                   p: TemporalParams, origin: np.ndarray) -> tuple[list[Keyframe | None], list[dict[str, str]]]:
    """The shard's keyframes with their pseudo-labels (one round) and pre-segments; None for a keyframe the
    upstream stages skipped (zero rows), listed in the returned skipped records."""
    tokens = [s.token for s in samples]
    g_pl, g_ps = A.open_store(pseudolabels, "pseudolabels"), A.open_store(presegment, "presegment")
    for g, path, stage in ((g_pl, pseudolabels, "pseudolabels"), (g_ps, presegment, "presegment")):
        if list(g.attrs["sample_tokens"]) != tokens:
            raise TemporalError(f"{stage} store {path} holds other keyframes than the manifest's shard (stale store? "
                                f"re-run '{stage}')")
    off_pl, off_ps = A.read(g_pl, "point_offsets").astype(np.int64), A.read(g_ps, "point_offsets").astype(np.int64)
    label, conf = A.read(g_pl, "label"), A.read(g_pl, "confidence")
    ground, seg = A.read(g_ps, "ground"), A.read(g_ps, "segment_id")
    out: list[Keyframe | None] = []
    skipped: list[dict[str, str]] = []
    for s, sample in enumerate(samples):
        a, b = A.sample_slice(off_pl, s), A.sample_slice(off_ps, s)
        n = a.stop - a.start
        if n == 0 or b.stop - b.start == 0:
            skipped.append({"sample": sample.token,
                            "reason": "no points in the pseudolabels or presegment store (skipped upstream)"})
            out.append(None)
            continue
        pts, scan = read_sweep(manifest.resolve(sample.lidar.path), sample.lidar.fmt, sample.token, p.beam_spacing_deg)
        if len(pts) != n or b.stop - b.start != n:
            raise TemporalError(f"sample {sample.token}: {len(pts)} points in {sample.lidar.path}, {n} in the pseudolabels "
                                f"store {pseudolabels}, {b.stop - b.start} in the presegment store {presegment}")
        out.append(make_keyframe(sample.token, sample.lidar.timestamp, pts, lidar_to_global(sample.lidar),
                                 label[a], conf[a], ground[b], seg[b], scan, origin))
    return out, skipped


def run_shard(manifest_path: str | Path, shard: str, round: int, pseudolabels: str | Path, presegment: str | Path,
              out_store: str | Path, stats_path: str | Path | None, cfg: dict[str, Any] | None) -> dict[str, Any]:
    """Label the intermediate sweeps of one shard from one EM round's pseudo-labels; write the ``temporal``
    store and the stats (counts and seconds, no quality: :mod:`lidarlift.evaluate.temporal`). Returns the stats."""
    from lidarlift.workflow import write_json

    t0 = time.perf_counter()
    p = TemporalParams.from_config(cfg)
    manifest = Manifest.from_json(manifest_path)
    space = label_space(manifest.label_space)
    samples = manifest.shard_samples(shard)
    if manifest.kind == "nuscenes" and not any(s.intermediate_sweeps for s in samples) and any(s.prev_sweeps for s in samples):
        raise TemporalError(f"manifest {manifest_path} lists no intermediate sweeps for shard {shard} although the "
                            f"dataset has sweeps: it was made before they were listed; re-run the 'manifest' rule")
    origin = as_matrix(samples[0].lidar.ego_to_global)[:3, 3].copy()
    keyframes, skipped = load_keyframes(manifest, samples, pseudolabels, presegment, p, origin)
    present = [k for k in keyframes if k is not None]
    moving = assign_velocities(present, space, p)
    t_prep = time.perf_counter() - t0
    sweeps = label_sweeps(manifest, samples, keyframes, p, origin)
    t_label = time.perf_counter() - t0 - t_prep
    counts = [len(s.label) for s in sweeps]
    cat = (lambda name, dt: np.concatenate([getattr(s, name) for s in sweeps]) if sweeps else np.zeros(0, dt))
    label, source = cat("label", np.uint8), cat("source", np.uint8)
    kf_labelled = int(sum(int((k.label > 0).sum()) for k in present))
    with A.write_store(out_store, "temporal", shard=shard, sample_tokens=[s.token for s in samples], params=dict(cfg or {}),
                       round=round, label_space=space.name, sweep_tokens=[s.frame.token for s in sweeps],
                       sources={str(k): v for k, v in TEMPORAL_SOURCES.items()}, keyframe_labelled=kf_labelled,
                       keyframe_points=int(sum(k.n for k in present))) as g:
        A.put(g, "sweep_offsets", A.offsets_from_counts(counts))
        A.put(g, "keyframe_index", np.array([s.keyframe for s in sweeps], np.int32))
        A.put(g, "timestamp", np.array([s.frame.timestamp for s in sweeps], np.int64))
        A.put(g, "label", label)
        A.put(g, "confidence", cat("confidence", np.float32))
        A.put(g, "source", source)
        A.put(g, "moved", cat("moved", bool))
    stats = {
        "kind": "temporal", "shard": shard, "round": round, "split": manifest.split_of(shard), "keyframes": len(samples),
        "sweeps": len(sweeps), "points": int(label.size), "labelled": int((label > 0).sum()),
        "keyframe_labelled": kf_labelled, "moving_segments": int(sum(moving)),
        "by_source": {name: int((source == code).sum()) for code, name in TEMPORAL_SOURCES.items()},
        "skipped": skipped,
        "seconds": {"prepare": round_(t_prep), "label": round_(t_label), "total": round_(time.perf_counter() - t0)},
    }
    if stats_path is not None:
        write_json(stats_path, stats)
    log.info("shard %s round %d: %d sweeps, %d of %d points labelled (%.2f per labelled keyframe point), %d moving "
             "segments, %.1f s", shard, round, len(sweeps), stats["labelled"], stats["points"],
             stats["labelled"] / max(kf_labelled, 1), stats["moving_segments"], time.perf_counter() - t0)
    return stats


def round_(x: float) -> float:
    return float(f"{x:.3f}")


__all__ = ["TemporalParams", "Keyframe", "KeyframeIndex", "SideLabels", "SweepLabels", "TEMPORAL_SOURCES",
           "assign_velocities", "combine", "footprint", "label_sweeps", "load_keyframes", "make_keyframe",
           "match_segments", "run_shard"]
