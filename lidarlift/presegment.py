"""Pre-segmentation of every keyframe: ground points, then segments of the non-ground points.

Stage ``presegment``: per shard, the ``presegment`` store (per keyframe point: ``ground``,
``segment_id`` unique within the keyframe with -1 = noise or ground, ``ground_cell`` the polar cell id of
ground points) and a metrics file. Methods (``presegment.method``, registry :data:`METHODS`):

- ``iupc`` — the baseline exactly as IUPC builds it: the keyframe and its 5 previous sweeps (moved into
  the keyframe lidar frame through the manifest's 4x4 transforms; used for ground fitting only) in polar
  cells of 5 m x 0.1 pi rad, an Open3D RANSAC plane per cell with IUPC's tests
  (:func:`lidarlift.ground.iupc_ground`), then ``hdbscan.HDBSCAN(min_cluster_size=5,
  cluster_selection_epsilon=0.5)`` on the non-ground keyframe xyz. One difference: IUPC runs on the
  points inside some camera's field of view; lidarlift runs on every keyframe point (the store covers all).
- ``fast`` (default) — a robust plane per polar cell, all sectors of a ring at once, ring by ring
  outwards with a continuity check and a structure test (:func:`lidarlift.ground.cell_plane_ground`),
  then :func:`range_components`: connected components of 0.2 m voxel centroids linked within
  ``max(0.3 m, 0.04 x range)`` (the link grows as the beams spread), every point taking its voxel's
  segment. :func:`voxel_hdbscan` (HDBSCAN on voxel centroids) and plain HDBSCAN are selectable as
  ``fast.cluster``; measured on the synthetic world, the components are both purer and less split
  than HDBSCAN, at a fraction of its time (bench/bench_presegment.py).

Metrics (against :func:`lidarlift.groundtruth.point_truth`; points whose true class is 0 = ignore are
left out of every count):
- ground precision / recall: predicted ground against the flat classes of the label space
  (nuScenes: driveable_surface, other_flat, sidewalk, terrain);
- segment purity: of the non-ground points that lie in a segment (segment_id >= 0), the share whose
  true key (instance key for things, class for stuff) is the majority key of their segment; the share of
  non-ground points left as noise is reported as ``noise_share``;
- split_instance_share: of the true thing instances with at least ``split_min_points`` keyframe points,
  the share *split*: their points that lie in segments fall into two or more segments that each hold at
  least ``split_min_share`` of those points (instances with no point in any segment count as
  ``lost``, not split);
- seconds per sweep: wall time of the method's compute (ground with the earlier sweeps it uses,
  clustering) on ``threads`` cores, CPU time as ``cpu_seconds_per_sweep``; reading the files and moving
  the earlier sweeps into the keyframe frame is reported apart as ``read_seconds_per_sweep``.
With ``compare_baseline`` the baseline runs on the same sweeps and its figures go under ``baseline``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import numpy as np

from lidarlift import artifacts as A
from lidarlift.datasets.readers import DatasetError, read_lidar
from lidarlift.ground import CellPlaneParams, IupcGroundParams, cell_plane_ground, iupc_ground, sweep_to_keyframe
from lidarlift.manifest import Manifest, SampleRecord, as_matrix
from lidarlift.workflow import write_json

log = logging.getLogger("lidarlift.presegment")

#: Flat (ground) classes of each label space, by name.
FLAT_CLASSES: dict[str, tuple[str, ...]] = {
    "nuscenes16": ("driveable_surface", "other_flat", "sidewalk", "terrain"),
    "semantickitti19": ("road", "parking", "sidewalk", "other-ground", "terrain"),
}


@dataclass
class HdbscanParams:
    """``hdbscan.HDBSCAN`` settings (IUPC: min_cluster_size 5, cluster_selection_epsilon 0.5)."""

    min_cluster_size: int = 5
    cluster_selection_epsilon: float = 0.5
    min_samples: int | None = None


@dataclass
class RangeComponentsParams:
    """Range-adaptive connected components of voxel centroids (optionally HDBSCAN on small leftovers)."""

    voxel: float = 0.2  # voxel edge (m); points of a voxel share its segment
    eps: float = 0.3  # voxels closer than this are connected (m) ...
    range_factor: float = 0.04  # ... or closer than this x range (~1.7x the 1.33 deg beam spacing of a 32-beam LiDAR)
    range_bands: int = 6  # range bands for the adaptive radius search
    min_points: int = 5  # components with fewer points are noise
    leftover_below: int = 0  # components with fewer points go to HDBSCAN together (0 = off: measured no better)
    leftover_hdbscan: HdbscanParams = field(default_factory=HdbscanParams)


@dataclass
class VoxelHdbscanParams:
    """HDBSCAN over voxel centroids, propagated to the points of each voxel."""

    voxel: float = 0.2
    hdbscan: HdbscanParams = field(default_factory=HdbscanParams)


@dataclass
class IupcParams:
    """The baseline (``presegment.iupc``)."""

    sweeps: int = 5  # earlier sweeps aggregated for ground fitting
    ground: IupcGroundParams = field(default_factory=IupcGroundParams)
    hdbscan: HdbscanParams = field(default_factory=HdbscanParams)


@dataclass
class FastParams:
    """lidarlift's default (``presegment.fast``)."""

    sweeps: int = 0  # earlier sweeps aggregated for ground fitting (measured: no gain on the synthetic world)
    ground: CellPlaneParams = field(default_factory=CellPlaneParams)
    cluster: str = "range_components"  # range_components | voxel_hdbscan | hdbscan
    range_components: RangeComponentsParams = field(default_factory=RangeComponentsParams)
    voxel_hdbscan: VoxelHdbscanParams = field(default_factory=VoxelHdbscanParams)
    hdbscan: HdbscanParams = field(default_factory=HdbscanParams)


@dataclass
class PresegmentParams:
    """The ``presegment`` config section."""

    method: str = "fast"
    compare_baseline: bool = True
    split_min_points: int = 10
    split_min_share: float = 0.1
    seed: int = 0
    iupc: IupcParams = field(default_factory=IupcParams)
    fast: FastParams = field(default_factory=FastParams)

    @staticmethod
    def from_config(cfg: dict[str, Any] | None) -> "PresegmentParams":
        p = _build(PresegmentParams, cfg or {}, "presegment")
        if p.method not in METHODS:
            raise ValueError(f"config key presegment.method: unknown method {p.method!r}; choose one of {sorted(METHODS)}")
        if p.fast.cluster not in CLUSTERERS:
            raise ValueError(f"config key presegment.fast.cluster: unknown {p.fast.cluster!r}; "
                             f"choose one of {sorted(CLUSTERERS)}")
        return p

    def sweeps_for(self, method: str) -> int:
        return self.iupc.sweeps if method == "iupc" else self.fast.sweeps


def _build(cls: type, cfg: dict[str, Any], where: str) -> Any:
    """A (nested) params dataclass from a config mapping; unknown keys raise naming the config key."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    bad = sorted(set(cfg) - names)
    if bad:
        raise ValueError(f"config section {where}: unknown keys {bad}; known: {sorted(names)}")
    kw = {}
    for k, v in cfg.items():
        t = hints.get(k)
        if dataclasses.is_dataclass(t):
            if not isinstance(v, dict):
                raise ValueError(f"config key {where}.{k} must be a mapping, got {v!r}")
            v = _build(t, dict(v), f"{where}.{k}")
        kw[k] = v
    return cls(**kw)


@dataclass
class Presegmentation:
    """Result for one keyframe of N points: ground (N,) bool, segment_id (N,) int32 (-1 = noise or ground),
    ground_cell (N,) int32 (-1 for non-ground points)."""

    ground: np.ndarray
    segment_id: np.ndarray
    ground_cell: np.ndarray

    @staticmethod
    def empty() -> "Presegmentation":
        return Presegmentation(np.zeros(0, bool), np.zeros(0, np.int32), np.zeros(0, np.int32))


# ------------------------------------------------------------------------------------------ clustering

def hdbscan_labels(xyz: np.ndarray, p: HdbscanParams, threads: int = 1) -> np.ndarray:
    """(M,) int32 HDBSCAN cluster per point of (M, 3) ``xyz`` (-1 = noise); fewer points than
    ``min_cluster_size`` are all noise."""
    import hdbscan

    if len(xyz) < max(2, p.min_cluster_size):
        return np.full(len(xyz), -1, np.int32)
    model = hdbscan.HDBSCAN(min_cluster_size=p.min_cluster_size, min_samples=p.min_samples,
                            cluster_selection_epsilon=p.cluster_selection_epsilon, core_dist_n_jobs=max(1, threads))
    return model.fit(np.asarray(xyz, np.float64)).labels_.astype(np.int32)


def voxelize(xyz: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inverse (M,) int64 voxel of each point, centroids (V, 3) float64, counts (V,) int64) of ``voxel`` m voxels."""
    xyz = np.asarray(xyz, np.float64)
    q = np.floor(xyz / voxel).astype(np.int64)
    q -= q.min(axis=0)
    span = q.max(axis=0) + 1
    key = (q[:, 0] * span[1] + q[:, 1]) * span[2] + q[:, 2]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    cent = np.stack([np.bincount(inverse, weights=xyz[:, k], minlength=len(counts)) for k in range(3)], 1)
    return inverse, cent / counts[:, None], counts


def voxel_hdbscan(xyz: np.ndarray, p: VoxelHdbscanParams, threads: int = 1) -> np.ndarray:
    """(M,) int32 segments of (M, 3) points: HDBSCAN over the centroids of ``voxel`` m voxels, propagated
    back to the points of each voxel (-1 = noise). ``min_cluster_size`` counts voxels."""
    if len(xyz) == 0:
        return np.zeros(0, np.int32)
    inverse, cent, _ = voxelize(xyz, p.voxel)
    return hdbscan_labels(cent, p.hdbscan, threads)[inverse]


def range_adaptive_pairs(xyz: np.ndarray, eps: float, range_factor: float, bands: int = 6) -> np.ndarray:
    """(E, 2) int64 index pairs of (V, 3) points closer than ``max(eps, range_factor * max(r_i, r_j))``,
    r = distance from the sensor; each pair at least once (duplicates possible)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(xyz)
    pairs = [tree.query_pairs(eps, output_type="ndarray").astype(np.int64)]
    radius = range_factor * np.linalg.norm(xyz, axis=1)
    far = np.flatnonzero(radius > eps)
    if len(far) and range_factor > 0:
        edges = np.geomspace(eps, radius[far].max() * (1 + 1e-9), max(1, bands) + 1)
        band = np.clip(np.searchsorted(edges, radius[far], side="left") - 1, 0, len(edges) - 2)
        for b in range(len(edges) - 1):
            rows = far[band == b]
            if len(rows) == 0:
                continue
            d = cKDTree(xyz[rows]).sparse_distance_matrix(tree, edges[b + 1], output_type="ndarray")
            i, j = rows[d["i"]], d["j"].astype(np.int64)
            keep = (d["v"] > eps) & (d["v"] <= np.maximum(radius[i], radius[j]))
            pairs.append(np.stack([i[keep], j[keep]], 1))
    return np.concatenate(pairs)


def range_components(xyz: np.ndarray, p: RangeComponentsParams, threads: int = 1) -> np.ndarray:
    """(M,) int32 segments of (M, 3) non-ground points (sensor at the origin), -1 = noise.

    Points go into ``voxel`` m voxels; voxel centroids closer than ``max(eps, range_factor * range)``
    are connected (the radius grows with range as the LiDAR's beams spread, so a far object whose scan
    lines lie 1 m apart stays whole, while near objects ``eps`` apart stay separate); connected
    components are the segments. With ``leftover_below`` > 0, components with fewer points are clustered
    again, all together, by HDBSCAN (so sparse fragments may still form segments; off by default, as it
    measured no better); what remains under ``min_points`` is noise.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(xyz) == 0:
        return np.zeros(0, np.int32)
    inverse, cent, counts = voxelize(xyz, p.voxel)
    pairs = range_adaptive_pairs(cent, p.eps, p.range_factor, p.range_bands)
    n = len(cent)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    size = np.bincount(comp, weights=counts)[comp]  # points per component, per voxel
    seg = comp[inverse].astype(np.int32)
    small = size[inverse] < max(p.leftover_below, p.min_points)
    seg[small] = -1
    if p.leftover_below > 0 and small.sum() >= p.leftover_hdbscan.min_cluster_size:
        left = np.flatnonzero(small)
        h = hdbscan_labels(xyz[left], p.leftover_hdbscan, threads)
        seg[left] = np.where(h >= 0, h + comp.max() + 1, -1)
    return _compact(seg)


def _compact(seg: np.ndarray) -> np.ndarray:
    """Renumber segment ids 0..k-1 (in order of first appearance of the sorted ids), keeping -1."""
    out = np.full(len(seg), -1, np.int32)
    keep = seg >= 0
    if keep.any():
        _, out[keep] = np.unique(seg[keep], return_inverse=True)
    return out


def _hdbscan_points(xyz: np.ndarray, p: HdbscanParams, threads: int = 1) -> np.ndarray:
    return hdbscan_labels(xyz, p, threads)


#: ``presegment.fast.cluster`` -> (function(xyz (M, 3), params, threads) -> (M,) int32, params attribute).
CLUSTERERS: dict[str, tuple[Callable[..., np.ndarray], str]] = {
    "range_components": (range_components, "range_components"),
    "voxel_hdbscan": (voxel_hdbscan, "voxel_hdbscan"),
    "hdbscan": (_hdbscan_points, "hdbscan"),
}


# ------------------------------------------------------------------------------------------ methods

def _with_segments(ground: np.ndarray, cell: np.ndarray, xyz: np.ndarray,
                   cluster: Callable[[np.ndarray], np.ndarray]) -> Presegmentation:
    seg = np.full(len(xyz), -1, np.int32)
    rest = np.flatnonzero(~ground)
    if len(rest):
        seg[rest] = cluster(xyz[rest])
    return Presegmentation(ground, seg, cell.astype(np.int32))


def iupc_presegment(xyz: np.ndarray, sweeps: list[np.ndarray], p: PresegmentParams, threads: int = 1) -> Presegmentation:
    """IUPC's pre-segmentation of (N, 3) keyframe points; ``sweeps`` (M_i, 3) in the keyframe lidar frame."""
    ground, cell = iupc_ground(xyz, sweeps, p.iupc.ground, seed=p.seed)
    return _with_segments(ground, cell, xyz, lambda pts: hdbscan_labels(pts, p.iupc.hdbscan, threads))


def fast_presegment(xyz: np.ndarray, sweeps: list[np.ndarray], p: PresegmentParams, threads: int = 1) -> Presegmentation:
    """lidarlift's default: ring-by-ring cell-plane ground, then ``fast.cluster`` (range-adaptive components)."""
    ground, cell = cell_plane_ground(xyz, sweeps, p.fast.ground)
    fn, attr = CLUSTERERS[p.fast.cluster]
    return _with_segments(ground, cell, xyz, lambda pts: fn(pts, getattr(p.fast, attr), threads))


#: ``presegment.method`` -> function(xyz (N, 3), sweeps [(M_i, 3)], params, threads) -> Presegmentation.
METHODS: dict[str, Callable[..., Presegmentation]] = {
    "iupc": iupc_presegment,
    "fast": fast_presegment,
}


def presegment(xyz: np.ndarray, sweeps: list[np.ndarray] | None = None, params: PresegmentParams | dict | None = None,
               method: str | None = None, threads: int = 1) -> Presegmentation:
    """Pre-segment one keyframe: (N, 3) points (keyframe lidar frame) and earlier sweeps (in that frame)."""
    p = params if isinstance(params, PresegmentParams) else PresegmentParams.from_config(params)
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise ValueError(f"presegment needs (N, 3) points, got shape {xyz.shape}")
    if not np.isfinite(xyz[:, :3]).all():
        raise ValueError("presegment: points with NaN or infinite coordinates")
    return METHODS[method or p.method](xyz[:, :3], list(sweeps or []), p, threads)


# ------------------------------------------------------------------------------------------ metrics

def flat_class_ids(space: str) -> np.ndarray:
    """1-based ids of the flat (ground) classes of a label space."""
    from lidarlift.classes import label_space

    ls = label_space(space)
    return np.array([ls.index(n) for n in FLAT_CLASSES[space]], np.int64)


def presegment_counts(result: Presegmentation, label: np.ndarray, instance: np.ndarray, space: str = "nuscenes16",
                      split_min_points: int = 10, split_min_share: float = 0.1) -> dict[str, int]:
    """Counts of one keyframe against truth ``label`` (N,) 1..K (0 ignore) and ``instance`` (N,) keys.

    See the module docstring for the definitions; ratios are taken after summing over keyframes.
    """
    from lidarlift.classes import label_space

    label = np.asarray(label, np.int64)
    instance = np.asarray(instance, np.int64)
    if len(label) != len(result.ground):
        raise ValueError(f"truth has {len(label)} points, the pre-segmentation {len(result.ground)}")
    valid = label > 0
    g, seg = result.ground[valid], result.segment_id[valid]
    lab, inst = label[valid], instance[valid]
    true_ground = np.isin(lab, flat_class_ids(space))
    out = {
        "points": int(valid.sum()),
        "ground_tp": int((g & true_ground).sum()),
        "ground_fp": int((g & ~true_ground).sum()),
        "ground_fn": int((~g & true_ground).sum()),
        "nonground_points": int((~g).sum()),
        "noise_points": int((~g & (seg < 0)).sum()),
    }
    key = np.where(inst > 0, inst, lab)
    in_seg = ~g & (seg >= 0)
    s, k = seg[in_seg].astype(np.int64), key[in_seg]
    out["segmented_points"] = int(in_seg.sum())
    out["segments"] = int(len(np.unique(s)))
    if s.size:
        _, k_idx = np.unique(k, return_inverse=True)
        n_k = int(k_idx.max()) + 1
        pair, cnt = np.unique(s * n_k + k_idx, return_counts=True)
        best = np.zeros(int(s.max()) + 1, np.int64)
        np.maximum.at(best, pair // n_k, cnt)
        out["pure_points"] = int(best.sum())
    else:
        out["pure_points"] = 0
    # split instances
    things = label_space(space).thing_mask
    is_thing = (inst > 0) & things[np.clip(lab, 0, len(things) - 1)]
    ids, total = np.unique(inst[is_thing], return_counts=True)
    eligible = ids[total >= split_min_points]
    split = lost = 0
    for i in eligible:
        mine = (inst == i) & in_seg
        n = int(mine.sum())
        if n == 0:
            lost += 1
            continue
        _, c = np.unique(seg[mine], return_counts=True)
        split += int((c >= split_min_share * n).sum() >= 2)
    out.update(instances=int(len(eligible)), instances_split=split, instances_lost=lost)
    return out


_COUNT_KEYS = ("points", "ground_tp", "ground_fp", "ground_fn", "nonground_points", "noise_points",
               "segmented_points", "segments", "pure_points", "instances", "instances_split", "instances_lost",
               "sweeps", "input_points", "seconds", "cpu_seconds", "read_seconds", "sweeps_with_truth")


def _ratio(a: float, b: float) -> float | None:
    return float(a) / b if b else None


def figures(c: dict[str, Any]) -> dict[str, Any]:
    """Summary figures from summed counts."""
    return {
        "ground_precision": _ratio(c.get("ground_tp", 0), c.get("ground_tp", 0) + c.get("ground_fp", 0)),
        "ground_recall": _ratio(c.get("ground_tp", 0), c.get("ground_tp", 0) + c.get("ground_fn", 0)),
        "segment_purity": _ratio(c.get("pure_points", 0), c.get("segmented_points", 0)),
        "split_instance_share": _ratio(c.get("instances_split", 0), c.get("instances", 0)),
        "lost_instance_share": _ratio(c.get("instances_lost", 0), c.get("instances", 0)),
        "noise_share": _ratio(c.get("noise_points", 0), c.get("nonground_points", 0)),
        "segments_per_sweep": _ratio(c.get("segments", 0), c.get("sweeps_with_truth", 0)),
        "seconds_per_sweep": _ratio(c.get("seconds", 0.0), c.get("sweeps", 0)),
        "cpu_seconds_per_sweep": _ratio(c.get("cpu_seconds", 0.0), c.get("sweeps", 0)),
        "read_seconds_per_sweep": _ratio(c.get("read_seconds", 0.0), c.get("sweeps", 0)),
        "points_per_sweep": _ratio(c.get("input_points", 0), c.get("sweeps", 0)),
    }


def _zero_counts() -> dict[str, Any]:
    return {k: (0.0 if "seconds" in k else 0) for k in _COUNT_KEYS}


def _add(acc: dict[str, Any], c: dict[str, Any]) -> None:
    for k, v in c.items():
        acc[k] = acc.get(k, 0) + v


# ------------------------------------------------------------------------------------------ stage

def _warm_up(methods: list[str]) -> None:
    """Import the libraries the methods use, so the first keyframe's timing holds no import time."""
    import hdbscan  # noqa: F401
    import scipy.sparse.csgraph  # noqa: F401
    import scipy.spatial  # noqa: F401

    if "iupc" in methods:
        import open3d  # noqa: F401


def read_sweeps(manifest: Manifest, sample: SampleRecord, n: int, policy: str = "error",
                skipped: list[dict[str, str]] | None = None) -> list[tuple[np.ndarray, float]]:
    """Up to ``n`` earlier sweeps of ``sample`` (nearest first), each ((M_i, 3) float32 in the keyframe lidar
    frame, seconds spent reading and moving it).

    A bad sweep raises the reader's DatasetError under policy 'error'; under 'skip' it is left out and
    ``{sample, file, reason}`` is appended to ``skipped``.
    """
    k_l2e, k_e2g = as_matrix(sample.lidar.lidar_to_ego), as_matrix(sample.lidar.ego_to_global)
    out = []
    for sw in sample.prev_sweeps[:n]:
        path = manifest.resolve(sw.path)
        t0 = time.perf_counter()
        try:
            pts = read_lidar(path, sw.fmt, sample.token)
        except DatasetError as e:
            if policy == "error":
                raise
            log.warning("leaving out a bad earlier sweep: %s", e)
            if skipped is not None:
                skipped.append({"sample": sample.token, "file": str(path), "reason": str(e)})
            continue
        moved = sweep_to_keyframe(pts[:, :3], as_matrix(sw.lidar_to_ego), as_matrix(sw.ego_to_global), k_l2e, k_e2g)
        out.append((moved, time.perf_counter() - t0))
    return out


def run_shard(manifest_path: str, shard: str, store_path: str, metrics_path: str,
              params: dict[str, Any] | None = None, bad_sample_policy: str = "error", threads: int = 1) -> dict[str, Any]:
    """Pre-segment every keyframe of ``shard``: writes the store (the configured method) and the metrics.

    ``bad_sample_policy``: 'error' raises the reader's DatasetError naming sample and file; 'skip' gives a
    keyframe whose own sweep is bad no rows in the store (as every stage does for a skipped keyframe) and
    leaves a bad earlier sweep out of the ground fit, recording each as ``{sample, file, reason}`` under
    ``skipped``. Seconds are the method's compute on ``threads`` cores (wall and CPU); reading the files and
    moving the earlier sweeps into the keyframe frame are counted apart (``read_seconds``).
    """
    from lidarlift.groundtruth import point_truth

    if bad_sample_policy not in ("error", "skip"):
        raise ValueError(f"config key dataset.bad_sample_policy: expected 'error' or 'skip', got {bad_sample_policy!r}")
    p = PresegmentParams.from_config(params)
    manifest = Manifest.from_json(manifest_path)
    samples = manifest.shard_samples(shard)
    runs = [p.method] + (["iupc"] if p.compare_baseline and p.method != "iupc" else [])
    _warm_up(runs)
    counts = {m: _zero_counts() for m in runs}
    results: list[Presegmentation] = []
    skipped: list[dict[str, str]] = []
    for sample in samples:
        path = manifest.resolve(sample.lidar.path)
        t0 = time.perf_counter()
        try:
            pts = read_lidar(path, sample.lidar.fmt, sample.token)
        except DatasetError as e:
            if bad_sample_policy == "error":
                raise
            log.warning("skipping keyframe: %s", e)
            skipped.append({"sample": sample.token, "file": str(path), "reason": str(e)})
            results.append(Presegmentation.empty())
            continue
        read_key = time.perf_counter() - t0
        sweeps = read_sweeps(manifest, sample, max(p.sweeps_for(m) for m in runs), bad_sample_policy, skipped)
        truth = point_truth(manifest, sample)
        if truth is not None and len(truth.label) != len(pts):
            raise DatasetError(f"sample {sample.token}: truth has {len(truth.label)} points, lidar file {path} has {len(pts)}")
        xyz = pts[:, :3]
        for m in runs:
            mine = sweeps[:p.sweeps_for(m)]
            t0, c0 = time.perf_counter(), time.process_time()
            res = METHODS[m](xyz, [s for s, _ in mine], p, threads)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            c: dict[str, Any] = {"sweeps": 1, "input_points": len(xyz), "seconds": dt, "cpu_seconds": dc,
                                 "read_seconds": read_key + sum(t for _, t in mine)}
            if truth is not None:
                c.update(presegment_counts(res, truth.label, truth.instance, manifest.label_space,
                                           p.split_min_points, p.split_min_share))
                c["sweeps_with_truth"] = 1
            _add(counts[m], c)
            if m == p.method:
                results.append(res)
            log.info("sample %s %s: %d points, %.3f s, %d ground, %d segments", sample.token, m, len(xyz), dt,
                     int(res.ground.sum()), int(res.segment_id.max()) + 1)
    offsets = A.offsets_from_counts([len(r.ground) for r in results])
    with A.write_store(store_path, "presegment", shard=shard, sample_tokens=[s.token for s in samples],
                       params=_plain(params or {}), method=p.method) as g:
        A.put(g, "point_offsets", offsets)
        A.put(g, "ground", np.concatenate([r.ground for r in results]))
        A.put(g, "segment_id", np.concatenate([r.segment_id for r in results]))
        A.put(g, "ground_cell", np.concatenate([r.ground_cell for r in results]))
    metrics: dict[str, Any] = {"shard": shard, "method": p.method, "label_space": manifest.label_space,
                               **counts[p.method], "skipped": skipped}
    if p.compare_baseline:
        metrics["baseline"] = {"method": "iupc", **counts["iupc"]}
    write_json(metrics_path, metrics)
    log.info("shard %s: %s", shard, summarize([metrics]))
    return metrics


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary key ``presegment``: ground_precision, ground_recall, segment_purity, split_instance_share,
    seconds_per_sweep (counts summed over shards first), and the same under ``baseline``."""
    acc = _zero_counts()
    base = _zero_counts()
    has_base = False
    for m in metrics:
        _add(acc, {k: m.get(k, 0) for k in _COUNT_KEYS})
        if "baseline" in m:
            has_base = True
            _add(base, {k: m["baseline"].get(k, 0) for k in _COUNT_KEYS})
    methods = sorted({m.get("method") for m in metrics if m.get("method")})
    out: dict[str, Any] = {**figures(acc), "sweeps": acc["sweeps"],
                           "method": methods[0] if len(methods) == 1 else methods,
                           "skipped": [s for m in metrics for s in m.get("skipped", [])]}
    out["baseline"] = {**figures(base), "sweeps": base["sweeps"], "method": "iupc"} if has_base else None
    return out


def _plain(d: Any) -> Any:
    if isinstance(d, dict):
        return {str(k): _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    return d
