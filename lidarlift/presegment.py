"""Pre-segmentation of every keyframe: ground points, then segments of the non-ground points.

Stage ``presegment``: per shard, the ``presegment`` store (per keyframe point: ``ground``,
``segment_id`` unique within the keyframe with -1 = noise or ground, ``ground_cell`` the polar cell id of
ground points) and a stats file. Methods (``presegment.method``, registry :data:`METHODS`):

- ``iupc`` — the baseline exactly as IUPC builds it: the keyframe and its 5 previous sweeps (moved into
  the keyframe lidar frame through the manifest's 4x4 transforms; used for ground fitting only) in polar
  cells of 5 m x 0.1 pi rad, an Open3D RANSAC plane per cell with IUPC's tests
  (:func:`lidarlift.ground.iupc_ground`), then ``hdbscan.HDBSCAN(min_cluster_size=5,
  cluster_selection_epsilon=0.5)`` on the non-ground keyframe xyz. One difference: IUPC runs on the
  points inside some camera's field of view; lidarlift runs on every keyframe point (the store covers all).
- ``fast`` (default) — a robust plane per polar cell, all sectors of a ring at once, ring by ring
  outwards with a continuity check and a structure test (:func:`lidarlift.ground.cell_plane_ground`),
  then :func:`range_image_segments`: segmentation in the range image, in the scanner's own angular
  units (the sweep's vertical beam spacing and azimuth step, measured by :func:`lidarlift.scan.measure_scan`;
  no ring ids needed), so one default holds for 32, 64 and 128 beams. Neighbouring returns along a scan
  line and on neighbouring beams are linked by the angle criterion of Bogoslavskyi & Stachniss
  ("Efficient online segmentation for sparse 3D laser scans", 2017: a depth jump between two objects
  makes a small angle between the joining line and the ray), along the scan line also where the depth
  slope continues (a flank seen at a grazing angle) and across a nearer occluder (a pole in front of a
  wall); components resting on one another across a horizontal surface no beam hits (a car's cabin on
  its body, 1-2 m behind the boot's edge along the rays) are joined. The previous default,
  :func:`range_components` (connected components of 0.2 m voxel centroids within a range-adaptive
  ellipsoid counted in beams), :func:`voxel_hdbscan` and plain HDBSCAN remain selectable as
  ``fast.cluster``. Measured on the synthetic worlds of three scanners (bench/bench_scanners.py):
  purer segments and fewer split instances than the voxel components; touching things of one class
  in a row (barriers end to end, bicycles in a rack, a standing group, a tractor and its trailer) stay
  merged -- nothing in their geometry separates them.

Stats (no ground truth; :mod:`lidarlift.evaluate.presegment` measures ground precision / recall,
purity, split and merged instances): seconds per sweep, the method's compute (ground with the earlier
sweeps it uses, clustering) on ``threads`` cores, CPU time beside it; reading the files and moving the
earlier sweeps into the keyframe frame apart (``read_seconds``). The IUPC baseline runs in its own rule
(``presegment_baseline``) on the same sweeps when ``presegment.compare_baseline`` is on.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from lidarlift import artifacts as A
from lidarlift.datasets.readers import DatasetError, read_lidar
from lidarlift.ground import CellPlaneParams, GroundError, IupcGroundParams, cell_plane_ground, iupc_ground, sweep_to_keyframe
from lidarlift.manifest import Manifest, SampleRecord, as_matrix
from lidarlift.scan import ScanResolution, read_sweep, resolve_resolution
from lidarlift.workflow import write_json

log = logging.getLogger("lidarlift.presegment")

# The parameter classes below mirror the ``presegment`` section of config/schema.yaml, which holds every
# default and every range (fitted values: tuning world, synthetic seed 1, bench/bench_scanners.py --sweep);
# build them with :meth:`PresegmentParams.from_config`.


@dataclass
class HdbscanParams:
    """``hdbscan.HDBSCAN`` settings (IUPC: min_cluster_size 5, cluster_selection_epsilon 0.5)."""

    min_cluster_size: int
    cluster_selection_epsilon: float
    min_samples: int | None  # None: min_cluster_size


@dataclass
class RangeComponentsParams:
    """Range-adaptive connected components of voxel centroids (optionally HDBSCAN on small leftovers)."""

    voxel: float  # voxel edge (m); points of a voxel share its segment
    eps: float  # voxels closer than this are connected (m) ...
    link_beams: float  # ... or, along the line of sight and vertically, this many vertical beam spacings at their range
    link_columns: float  # ... and across it (along the azimuth) this many azimuth steps
    range_bands: int  # range bands for the adaptive radius search
    min_points: int  # components with fewer points are noise
    leftover_below: int  # components with fewer points go to HDBSCAN together (0 = off: measured no better)
    leftover_hdbscan: HdbscanParams


@dataclass
class RangeImageParams:
    """Segmentation in the range image (``presegment.fast.cluster: range_image``; :func:`range_image_segments`).

    Angles are the scanner's own: neighbours are the nearest returns along the scan line and across the
    scan lines, and the angle criterion compares each pair's depth step with the angular step between
    them, so one default holds for 32, 64 and 128 beams. Fitted constants were chosen on the tuning
    world (synthetic seed 1, all three presets: ``bench/bench_scanners.py --sweep``).
    """

    theta_deg: float  # angle criterion along a scan line (Bogoslavskyi & Stachniss's default; not fitted)
    theta_vertical_deg: float  # ... across the scan lines
    slope_tolerance: float  # a grazing surface: the depth slope continues on both sides within this share
    bridge_m: float  # a surface continues behind a nearer occluder hiding up to this much of it (m)
    bridge_deg: float  # ... when the angle criterion across the hidden stretch holds at this angle
    stack_gap_m: float  # stacked parts: the longest hidden horizontal surface bridged (a bonnet, m)
    stack_rings: float  # ... and at most this many ring spacings of a horizontal surface at that height
    stack_tolerance_m: float  # ... the upper part lies no lower than the lower part's top less this (m)
    stack_min_pairs: int  # ... joined by at least this many neighbouring returns
    stack_above: float  # ... this share of the upper part lies above the lower part's top
    stack_overlap: float  # ... their azimuth spans overlap by this share of the narrower
    stack_width_ratio: float  # ... and the narrower spans at least this share of the wider
    columns: float  # a neighbour along the scan line lies within this many azimuth steps (one dropped return)
    min_points: int  # segments with fewer points are noise


@dataclass
class VoxelHdbscanParams:
    """HDBSCAN over voxel centroids, propagated to the points of each voxel."""

    voxel: float
    hdbscan: HdbscanParams


@dataclass
class IupcParams:
    """The baseline (``presegment.iupc``)."""

    sweeps: int  # earlier sweeps aggregated for ground fitting
    ground: IupcGroundParams
    hdbscan: HdbscanParams


@dataclass
class FastParams:
    """lidarlift's default (``presegment.fast``)."""

    sweeps: int  # earlier sweeps aggregated for ground fitting (measured: no gain on the synthetic world)
    ground: CellPlaneParams
    cluster: str  # range_image | range_components | voxel_hdbscan | hdbscan (CLUSTERERS)
    range_image: RangeImageParams
    range_components: RangeComponentsParams
    voxel_hdbscan: VoxelHdbscanParams
    hdbscan: HdbscanParams


@dataclass
class PresegmentParams:
    """The ``presegment`` config section (its evaluation-scoped keys left out)."""

    method: str
    seed: int
    beam_spacing_deg: float | None  # None: measured from each sweep (lidarlift.scan); a number: one beam = this
    iupc: IupcParams
    fast: FastParams

    @staticmethod
    def from_config(cfg: dict[str, Any] | None = None) -> "PresegmentParams":
        """From the section (missing keys take the schema's defaults, evaluation-scoped keys are dropped);
        unknown keys and bad values raise ConfigError naming the config key."""
        from lidarlift.config import typed

        return typed(PresegmentParams, "presegment", cfg)

    def sweeps_for(self, method: str) -> int:
        return self.iupc.sweeps if method == "iupc" else self.fast.sweeps


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


def range_adaptive_pairs(xyz: np.ndarray, eps: float, radial: np.ndarray, tangential: np.ndarray,
                         bands: int = 6) -> np.ndarray:
    """(E, 2) int64 index pairs of (V, 3) points (sensor at the origin) linked by an ellipsoid: their
    separation d splits into t, its horizontal component across the line of sight (along the azimuth),
    and q, the rest (along the line of sight and vertical); linked when (t / T)^2 + (q / R)^2 <= 1 with
    T = max(eps, tangential_i, tangential_j) and R = max(eps, radial_i, radial_j), so points closer
    than ``eps`` are always linked. ``radial``, ``tangential``: (V,) float64 each point's own link
    lengths (m, growing with range). Each pair at least once (duplicates possible)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(xyz)
    pairs = [tree.query_pairs(eps, output_type="ndarray").astype(np.int64)]
    radial = np.maximum(np.asarray(radial, np.float64), eps)
    tangential = np.maximum(np.asarray(tangential, np.float64), eps)
    reach = np.maximum(radial, tangential)
    far = np.flatnonzero(reach > eps)
    if len(far):
        edges = np.geomspace(eps, reach[far].max() * (1 + 1e-9), max(1, bands) + 1)
        band = np.clip(np.searchsorted(edges, reach[far], side="left") - 1, 0, len(edges) - 2)
        for b in range(len(edges) - 1):
            rows = far[band == b]
            if len(rows) == 0:
                continue
            d = cKDTree(xyz[rows]).sparse_distance_matrix(tree, edges[b + 1], output_type="ndarray")
            i, j = rows[d["i"]], d["j"].astype(np.int64)
            keep = d["v"] > eps
            i, j = i[keep], j[keep]
            sep = xyz[j] - xyz[i]
            mid = 0.5 * (xyz[i, :2] + xyz[j, :2])
            across = np.abs(sep[:, 0] * mid[:, 1] - sep[:, 1] * mid[:, 0]) / np.maximum(np.linalg.norm(mid, axis=1), 1e-9)
            rest2 = np.maximum((sep * sep).sum(axis=1) - across * across, 0.0)
            t_len, r_len = np.maximum(tangential[i], tangential[j]), np.maximum(radial[i], radial[j])
            ok = (across / t_len) ** 2 + rest2 / r_len ** 2 <= 1.0
            pairs.append(np.stack([i[ok], j[ok]], 1))
    return np.concatenate(pairs)


def link_lengths(xyz: np.ndarray, link_beams: float, link_columns: float,
                 scan: ScanResolution) -> tuple[np.ndarray, np.ndarray]:
    """(radial (V,), tangential (V,)) float64 range-adaptive link lengths (m) of (V, 3) points (sensor
    frame), in the scanner's own units: ``link_beams`` vertical beam spacings and ``link_columns``
    azimuth steps at each point's range (``range * angle``; :class:`lidarlift.scan.ScanResolution`)."""
    rng = np.linalg.norm(xyz, axis=1)
    el = np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1]))
    return link_beams * rng * scan.vertical_spacing(el), link_columns * rng * scan.azimuth_step


def range_components(xyz: np.ndarray, p: RangeComponentsParams, threads: int = 1,
                     scan: ScanResolution | None = None) -> np.ndarray:
    """(M,) int32 segments of (M, 3) non-ground points (sensor at the origin), -1 = noise.

    Points go into ``voxel`` m voxels; voxel centroids are connected when they lie within an ellipsoid
    (:func:`range_adaptive_pairs`) that reaches ``link_beams`` vertical beam spacings along the line of
    sight and vertically and ``link_columns`` azimuth steps across it, at their range
    (:func:`link_lengths`; the sweep's resolution ``scan``, :mod:`lidarlift.scan`), never less than
    ``eps``. The link grows with range as the LiDAR's beams spread, so a far object whose scan lines lie
    1 m apart stays whole while near objects ``eps`` apart stay separate; it is counted in the scanner's
    own beams, so a 64-beam sweep is not linked across 4 of its beams where a 32-beam one is linked
    across 1.7; and a sparse sensor's long vertical link (a 32-beam's beams are 6 azimuth steps apart)
    does not reach sideways to the next car of a parked row. ``scan`` None: measured from ``xyz``
    (ring-less). Connected components are the segments. With ``leftover_below`` > 0, components with fewer points are clustered
    again, all together, by HDBSCAN (so sparse fragments may still form segments; off by default, as it
    measured no better); what remains under ``min_points`` is noise.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(xyz) == 0:
        return np.zeros(0, np.int32)
    if scan is None:
        scan = resolve_resolution(xyz)
    inverse, cent, counts = voxelize(xyz, p.voxel)
    pairs = range_adaptive_pairs(cent, p.eps, *link_lengths(cent, p.link_beams, p.link_columns, scan), p.range_bands)
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


#: Candidate neighbours examined per return in the range image (the 4 directions' nearest lie among them).
_RANGE_IMAGE_CANDIDATES = 12
#: A neighbour across the scan lines lies within this many azimuth steps of the return's column.
_VERTICAL_NEIGHBOUR_COLUMNS = 2.0
#: Azimuth steps of slack in the stacked parts' span comparisons (a span is measured between returns).
_SPAN_SLACK_COLUMNS = 2.0


@dataclass
class RangeImageNeighbours:
    """Nearest returns of each of N points in the range image, (N,) int64 indices (-1 = none): ``right``
    and ``left`` along the scan line (within ``columns`` azimuth steps), ``up`` and ``down`` on the next
    beam above / below (within 2 azimuth steps of the column), ``up2`` the nearest above within two beams
    (one beam may have no return there)."""

    right: np.ndarray
    left: np.ndarray
    up: np.ndarray
    down: np.ndarray
    up2: np.ndarray


def range_image_coordinates(xyz: np.ndarray, scan: ScanResolution) -> tuple[np.ndarray, np.ndarray, float]:
    """(column (N,), row (N,), columns per revolution) of (N, 3) points (sensor frame) in the range image, in
    the scanner's own units: column = (azimuth + pi) / azimuth step, row = continuous beam index
    (:meth:`lidarlift.scan.ScanResolution.beam_index`), both float64."""
    xyz = np.asarray(xyz, np.float64)
    el = np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1]))
    az = np.arctan2(xyz[:, 1], xyz[:, 0])
    n_cols = 2 * np.pi / scan.azimuth_step
    return np.mod((az + np.pi) / scan.azimuth_step, n_cols), scan.beam_index(el), n_cols


def range_image_neighbours(col: np.ndarray, row: np.ndarray, n_cols: float, columns: float = 2.5) -> RangeImageNeighbours:
    """The nearest return in each direction of the range image (:class:`RangeImageNeighbours`) of points at
    continuous (column (N,), row (N,)) (:func:`range_image_coordinates`); the azimuth wraps around at
    ``n_cols``. Rows closer than half a beam count as one scan line, so no ring ids are needed."""
    from scipy.spatial import cKDTree

    n = len(col)
    none = np.full(n, -1, np.int64)
    if n < 2:
        return RangeImageNeighbours(none, none.copy(), none.copy(), none.copy(), none.copy())
    rows_scale = 2.0  # one beam counts as two azimuth steps in the candidate search
    pts = np.column_stack([col, (row - row.min()) * rows_scale])
    span = float(pts[:, 1].max()) + 4 * rows_scale + 1.0
    tree = cKDTree(pts, boxsize=[n_cols, 4 * span])  # periodic in azimuth only (the rows never reach the period)
    reach = max(columns, _VERTICAL_NEIGHBOUR_COLUMNS) + 2.5 * rows_scale
    k = min(_RANGE_IMAGE_CANDIDATES, n - 1)
    _, nb = tree.query(pts, k=k + 1, distance_upper_bound=reach)
    nb = nb[:, 1:]
    ok = nb < n
    nbs = np.where(ok, nb, 0)
    dcol = col[nbs] - col[:, None]
    dcol = (dcol + n_cols / 2) % n_cols - n_cols / 2
    drow = row[nbs] - row[:, None]
    adc = np.abs(dcol)
    near_col = adc <= _VERTICAL_NEIGHBOUR_COLUMNS
    rows = np.arange(n)

    def nearest(cond: np.ndarray, cost: np.ndarray) -> np.ndarray:
        c = np.where(ok & cond, cost, np.inf)
        best = np.argmin(c, axis=1)
        return np.where(np.isfinite(c[rows, best]), nbs[rows, best], -1).astype(np.int64)

    same = np.abs(drow) < 0.5
    return RangeImageNeighbours(
        right=nearest(same & (dcol > 0) & (dcol <= columns), dcol),
        left=nearest(same & (dcol < 0) & (dcol >= -columns), -dcol),
        up=nearest((drow >= 0.5) & (drow < 1.5) & near_col, adc + 0.1 * np.abs(drow - 1)),
        down=nearest((drow <= -0.5) & (drow > -1.5) & near_col, adc + 0.1 * np.abs(drow + 1)),
        up2=nearest((drow >= 0.5) & (drow < 2.5) & near_col, adc + 10.0 * np.round(drow)),
    )


def angle_criterion(r: np.ndarray, i: np.ndarray, j: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """(E,) float64 rad: Bogoslavskyi & Stachniss's angle beta between the line joining returns i and j and
    the ray of the farther one, for ranges r (N,) m and the angular step alpha (rad, scalar or (E,))
    between them: small beta is a depth jump (two objects), large beta a surface facing the sensor."""
    d1, d2 = np.maximum(r[i], r[j]), np.minimum(r[i], r[j])
    return np.arctan2(d2 * np.sin(alpha), d1 - d2 * np.cos(alpha))


def slope_continues(i: np.ndarray, j: np.ndarray, before: np.ndarray, after: np.ndarray, r: np.ndarray,
                    coord: np.ndarray, tolerance: float) -> np.ndarray:
    """(E,) bool: the depth slope (m per step of ``coord``) from return i to its neighbour j equals, within
    ``tolerance`` of itself and with the same sign, both the slope into i from ``before[i]`` and the slope
    out of j to ``after[j]`` -- three equal steps of one planar surface, however oblique (a car's flank
    seen at a grazing angle), where a depth jump between two objects is a single step."""
    step = (r[j] - r[i]) / np.maximum(np.abs(coord[j] - coord[i]), 1e-6)
    out = np.ones(len(i), bool)
    for a, b in ((before[i], i), (j, after[j])):
        valid = (a >= 0) & (b >= 0) & (a != b)
        a0, b0 = np.maximum(a, 0), np.maximum(b, 0)
        other = (r[b0] - r[a0]) / np.maximum(np.abs(coord[b0] - coord[a0]), 1e-6)
        out &= valid & (np.abs(step - other) <= tolerance * np.abs(step)) & (np.sign(step) == np.sign(other))
    return out


#: Bridging: an occluder is nearer than the surface behind it by more than this (m), and the scan line is
#: followed for at most this many steps.
_BRIDGE_DEPTH_M = 0.3
_BRIDGE_MAX_STEPS = 64


def bridge_occluders(right: np.ndarray, r: np.ndarray, linked: np.ndarray, alpha: np.ndarray, col: np.ndarray,
                     n_cols: float, p: RangeImageParams) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i (E,), k (E,)) of returns of one surface on both sides of a nearer occluder in its scan line.

    From each return i whose right neighbour is nearer and not linked to it (an occluder starts), the scan
    line is followed while the returns stay nearer by more than :data:`_BRIDGE_DEPTH_M`; the first return k back
    at i's depth, within ``bridge_m`` of hidden surface at i's range, is paired with i when the angle
    criterion across the hidden stretch holds at ``bridge_deg`` (``alpha``: (N,) rad, one azimuth step
    per point). ``linked`` (N,) bool: i is linked to its right neighbour."""
    margin = _BRIDGE_DEPTH_M
    i = np.flatnonzero((right >= 0) & ~linked)
    i = i[r[right[i]] < r[i] - margin]
    cur = right[i]
    max_steps = p.bridge_m / (r[i] * alpha[i])
    found_i, found_k = [], []
    for step in range(2, _BRIDGE_MAX_STEPS + 2):
        nxt = right[cur]
        keep = (nxt >= 0) & (step <= max_steps)
        i, cur, max_steps, nxt = i[keep], cur[keep], max_steps[keep], nxt[keep]
        if not len(i):
            break
        back = r[nxt] >= r[i] - margin
        found_i.append(i[back])
        found_k.append(nxt[back])
        i, cur, max_steps = i[~back], nxt[~back], max_steps[~back]
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    bi, bk = np.concatenate(found_i), np.concatenate(found_k)
    gap = np.abs((col[bk] - col[bi] + n_cols / 2) % n_cols - n_cols / 2) * alpha[bi]
    ok = angle_criterion(r, bi, bk, gap) > np.radians(p.bridge_deg)
    return bi[ok], bk[ok]


def merge_stacked(seg: np.ndarray, xyz: np.ndarray, rho: np.ndarray, col: np.ndarray, n_cols: float,
                  low: np.ndarray, high: np.ndarray, spacing: np.ndarray, p: RangeImageParams) -> np.ndarray:
    """(N,) int64 segments with stacked parts of one object joined: a car's cabin over its body, a truck's
    box over its cab, across the horizontal surface between them (a bonnet, a boot) that the scanner does
    not see: seen from above at a grazing angle it falls between two beams.

    ``seg`` (N,) int64 >= 0; ``low``, ``high`` (E,) returns on neighbouring beams, ``high`` above; ``rho``
    (N,) horizontal range; ``spacing`` (N,) rad vertical beam spacing. A pair crosses a hidden horizontal
    surface when the upper return lies behind the lower one by at most ``stack_gap_m`` and by at most
    ``stack_rings`` times the gap between two beams' hits on a horizontal surface at the lower return's
    height (``rho^2 * spacing / height below the sensor``: a longer surface would have been hit), and no
    lower than ``stack_tolerance_m`` under it. Segments A (below) and B are joined when ``stack_min_pairs``
    such pairs join them and B rests on A: ``stack_above`` of B's points lie above A's top (less the
    tolerance), their azimuth spans overlap by ``stack_overlap`` of the narrower, which spans at least
    ``stack_width_ratio`` of the wider (a person behind a row of barriers is not part of the row).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = seg[low], seg[high]
    gap = rho[high] - rho[low]
    depth_below = np.maximum(np.abs(xyz[low, 2]), 0.05)
    ok = ((a != b) & (gap > 0) & (gap <= p.stack_gap_m) & (gap <= p.stack_rings * rho[low] ** 2 * spacing[low] / depth_below)
          & (xyz[high, 2] >= xyz[low, 2] - p.stack_tolerance_m))
    if not ok.any():
        return seg
    m = int(seg.max()) + 1
    key, cnt = np.unique(a[ok].astype(np.int64) * m + b[ok], return_counts=True)
    keep = cnt >= p.stack_min_pairs
    A, B = key[keep] // m, key[keep] % m
    if not len(A):
        return seg
    # azimuth span of each segment, measured from its first point (segments are far narrower than a turn)
    first = np.full(m, -1, np.int64)
    first[seg[::-1]] = np.arange(len(seg))[::-1]
    rel = (col - col[first[seg]] + n_cols / 2) % n_cols - n_cols / 2
    lo, hi = np.full(m, np.inf), np.full(m, -np.inf)
    np.minimum.at(lo, seg, rel)
    np.maximum.at(hi, seg, rel)
    top = np.full(m, -np.inf)
    np.maximum.at(top, seg, xyz[:, 2])
    shift = (col[first[B]] - col[first[A]] + n_cols / 2) % n_cols - n_cols / 2  # B's frame in A's
    lo_b, hi_b = lo[B] + shift, hi[B] + shift
    wa, wb = hi[A] - lo[A], hi[B] - lo[B]
    narrow, wide = np.minimum(wa, wb), np.maximum(wa, wb)
    overlap = np.minimum(hi[A], hi_b) - np.maximum(lo[A], lo_b)
    good = (overlap >= p.stack_overlap * narrow) & (narrow + _SPAN_SLACK_COLUMNS >= p.stack_width_ratio * wide)
    # share of B above A's top
    order = np.lexsort((xyz[:, 2], seg))
    z_sorted, starts = xyz[order, 2], np.searchsorted(seg[order], np.arange(m + 1))
    for q in np.flatnonzero(good):
        zb = z_sorted[starts[B[q]]:starts[B[q] + 1]]
        above = len(zb) - np.searchsorted(zb, top[A[q]] - p.stack_tolerance_m)
        good[q] = above >= p.stack_above * len(zb)
    if not good.any():
        return seg
    graph = coo_matrix((np.ones(int(good.sum()), np.int8), (A[good], B[good])), shape=(m, m))
    return connected_components(graph, directed=False)[1][seg].astype(np.int64)


def range_image_segments(xyz: np.ndarray, p: RangeImageParams, threads: int = 1,
                         scan: ScanResolution | None = None) -> np.ndarray:
    """(M,) int32 segments of (M, 3) non-ground points (sensor frame), -1 = noise, by range-image
    segmentation in the scanner's own angular units (``scan``: the sweep's resolution,
    :mod:`lidarlift.scan`; None: measured from ``xyz``).

    Each return is linked to its nearest neighbours along its scan line and on the beams above and below
    (:func:`range_image_neighbours`, no ring ids needed) when the angle criterion of Bogoslavskyi &
    Stachniss ("Efficient online segmentation for sparse 3D laser scans", 2017) holds: the angle between
    the line joining two returns and the farther one's ray exceeds ``theta_deg`` along the scan line and
    ``theta_vertical_deg`` across the scan lines (:func:`angle_criterion`, with the nominal angular step:
    the azimuth step, or the vertical spacing at the return's elevation, so a dropped return between
    two objects does not make their jump look like a steep surface). Along a scan line a pair is also
    linked when the depth slope continues on both sides (:func:`slope_continues`: a planar surface seen
    at a grazing angle) and across a nearer occluder (:func:`bridge_occluders`). The connected components
    are then joined where one rests on another across a hidden horizontal surface
    (:func:`merge_stacked`: a car's cabin over its body). Components with fewer than ``min_points``
    points are noise.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    xyz = np.asarray(xyz, np.float64)
    n = len(xyz)
    if n == 0:
        return np.zeros(0, np.int32)
    if scan is None:
        scan = resolve_resolution(xyz)
    r = np.maximum(np.linalg.norm(xyz, axis=1), 1e-6)
    rho = np.hypot(xyz[:, 0], xyz[:, 1])
    col, row, n_cols = range_image_coordinates(xyz, scan)
    nb = range_image_neighbours(col, row, n_cols, p.columns)
    v_spacing = scan.vertical_spacing(np.arctan2(xyz[:, 2], rho))
    az_step = np.full(n, scan.azimuth_step)
    idx = np.arange(n, dtype=np.int64)
    hi_, hj = idx[nb.right >= 0], nb.right[nb.right >= 0]
    vi, vj = idx[nb.up >= 0], nb.up[nb.up >= 0]
    lh = angle_criterion(r, hi_, hj, scan.azimuth_step) > np.radians(p.theta_deg)
    lv = angle_criterion(r, vi, vj, v_spacing[vi]) > np.radians(p.theta_vertical_deg)
    if p.slope_tolerance > 0:
        lh |= slope_continues(hi_, hj, nb.left, nb.right, r, col, p.slope_tolerance)
    ei, ej = [hi_[lh], vi[lv]], [hj[lh], vj[lv]]
    if p.bridge_m > 0:
        linked = np.zeros(n, bool)
        linked[hi_[lh]] = True
        bi, bk = bridge_occluders(nb.right, r, linked, az_step, col, n_cols, p)
        ei.append(bi)
        ej.append(bk)
    e0, e1 = np.concatenate(ei), np.concatenate(ej)
    graph = coo_matrix((np.ones(len(e0), np.int8), (e0, e1)), shape=(n, n))
    seg = connected_components(graph, directed=False)[1].astype(np.int64)
    if p.stack_gap_m > 0:
        low, high = idx[nb.up2 >= 0], nb.up2[nb.up2 >= 0]
        seg = merge_stacked(seg, xyz, rho, col, n_cols, low, high, v_spacing, p)
    size = np.bincount(seg)
    return _compact(np.where(size[seg] >= p.min_points, seg, -1))


def _compact(seg: np.ndarray) -> np.ndarray:
    """Renumber segment ids 0..k-1 (in order of first appearance of the sorted ids), keeping -1."""
    out = np.full(len(seg), -1, np.int32)
    keep = seg >= 0
    if keep.any():
        _, out[keep] = np.unique(seg[keep], return_inverse=True)
    return out


def _hdbscan_points(xyz: np.ndarray, p: HdbscanParams, threads: int = 1, scan: ScanResolution | None = None) -> np.ndarray:
    return hdbscan_labels(xyz, p, threads)


def _voxel_hdbscan(xyz: np.ndarray, p: VoxelHdbscanParams, threads: int = 1, scan: ScanResolution | None = None) -> np.ndarray:
    return voxel_hdbscan(xyz, p, threads)


#: ``presegment.fast.cluster`` -> (function(xyz (M, 3), params, threads, scan=) -> (M,) int32, params attribute).
CLUSTERERS: dict[str, tuple[Callable[..., np.ndarray], str]] = {
    "range_image": (range_image_segments, "range_image"),
    "range_components": (range_components, "range_components"),
    "voxel_hdbscan": (_voxel_hdbscan, "voxel_hdbscan"),
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


def iupc_presegment(xyz: np.ndarray, sweeps: list[np.ndarray], p: PresegmentParams, threads: int = 1,
                    scan: ScanResolution | None = None) -> Presegmentation:
    """IUPC's pre-segmentation of (N, 3) keyframe points; ``sweeps`` (M_i, 3) in the keyframe lidar frame.
    IUPC's constants are in metres: ``scan`` is not used."""
    ground, cell = iupc_ground(xyz, sweeps, p.iupc.ground, seed=p.seed)
    return _with_segments(ground, cell, xyz, lambda pts: hdbscan_labels(pts, p.iupc.hdbscan, threads))


def fast_presegment(xyz: np.ndarray, sweeps: list[np.ndarray], p: PresegmentParams, threads: int = 1,
                    scan: ScanResolution | None = None) -> Presegmentation:
    """lidarlift's default: ring-by-ring cell-plane ground, then ``fast.cluster`` (range-adaptive components).
    ``scan``: the keyframe's angular resolution (None: ``beam_spacing_deg``, else measured from ``xyz``)."""
    if scan is None:
        scan = resolve_resolution(xyz, None, p.beam_spacing_deg)
    ground, cell = cell_plane_ground(xyz, sweeps, p.fast.ground)
    fn, attr = CLUSTERERS[p.fast.cluster]
    return _with_segments(ground, cell, xyz, lambda pts: fn(pts, getattr(p.fast, attr), threads, scan=scan))


#: ``presegment.method`` -> function(xyz (N, 3), sweeps [(M_i, 3)], params, threads, scan=) -> Presegmentation.
METHODS: dict[str, Callable[..., Presegmentation]] = {
    "iupc": iupc_presegment,
    "fast": fast_presegment,
}


def presegment(xyz: np.ndarray, sweeps: list[np.ndarray] | None = None, params: PresegmentParams | dict | None = None,
               method: str | None = None, threads: int = 1, scan: ScanResolution | None = None) -> Presegmentation:
    """Pre-segment one keyframe: (N, 3) points (keyframe lidar frame) and earlier sweeps (in that frame).
    ``scan``: the keyframe's angular resolution (:func:`lidarlift.scan.measure_scan`, with its ring ids
    where the file has them); None: ``beam_spacing_deg`` when set, else measured from ``xyz``."""
    p = params if isinstance(params, PresegmentParams) else PresegmentParams.from_config(params)
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise ValueError(f"presegment needs (N, 3) points, got shape {xyz.shape}")
    if not np.isfinite(xyz[:, :3]).all():
        raise ValueError("presegment: points with NaN or infinite coordinates")
    return METHODS[method or p.method](xyz[:, :3], list(sweeps or []), p, threads, scan=scan)


# ------------------------------------------------------------------------------------------ metrics

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


def run_shard(manifest_path: str, shard: str, store_path: str, stats_path: str | None,
              params: dict[str, Any] | None = None, bad_sample_policy: str = "error", threads: int = 1,
              method: str | None = None) -> dict[str, Any]:
    """Pre-segment every keyframe of ``shard`` with the configured method (or ``method``, e.g. the IUPC
    baseline's rule): writes the store and the stats (no ground truth: :mod:`lidarlift.evaluate.presegment`
    scores the store).

    ``bad_sample_policy``: 'error' raises the reader's DatasetError naming sample and file; 'skip' gives a
    keyframe whose own sweep is bad no rows in the store (as every stage does for a skipped keyframe) and
    leaves a bad earlier sweep out of the ground fit, recording each as ``{sample, file, reason}`` under
    ``skipped``. Seconds are the method's compute on ``threads`` cores (wall and CPU); reading the files and
    moving the earlier sweeps into the keyframe frame are counted apart (``read_seconds``).
    """
    from lidarlift.config import section

    bad_sample_policy = section("dataset", {"bad_sample_policy": bad_sample_policy})["bad_sample_policy"]
    p = PresegmentParams.from_config(params)
    m = method or p.method
    if m not in METHODS:
        raise ValueError(f"presegment: unknown method {m!r}; choose one of {sorted(METHODS)}")
    manifest = Manifest.from_json(manifest_path)
    samples = manifest.shard_samples(shard)
    _warm_up([m])
    stats: dict[str, Any] = {"sweeps": 0, "input_points": 0, "seconds": 0.0, "cpu_seconds": 0.0, "read_seconds": 0.0}
    results: list[Presegmentation] = []
    skipped: list[dict[str, str]] = []
    for sample in samples:
        path = manifest.resolve(sample.lidar.path)
        t0 = time.perf_counter()
        try:
            pts, scan = read_sweep(path, sample.lidar.fmt, sample.token, p.beam_spacing_deg, measure=m != "iupc")
        except DatasetError as e:
            if bad_sample_policy == "error":
                raise
            log.warning("skipping keyframe: %s", e)
            skipped.append({"sample": sample.token, "file": str(path), "reason": str(e)})
            results.append(Presegmentation.empty())
            continue
        read_key = time.perf_counter() - t0
        sweeps = read_sweeps(manifest, sample, p.sweeps_for(m), bad_sample_policy, skipped)
        xyz = pts[:, :3]
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            res = METHODS[m](xyz, [sw for sw, _ in sweeps], p, threads, scan=scan)
        except GroundError as e:  # e.g. no ground below the sensor to measure its height from
            err = DatasetError(f"sample {sample.token}: lidar file {path}: {e}")
            if bad_sample_policy == "error":
                raise err from e
            log.warning("skipping keyframe: %s", err)
            skipped.append({"sample": sample.token, "file": str(path), "reason": str(err)})
            results.append(Presegmentation.empty())
            continue
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        for k, v in (("sweeps", 1), ("input_points", len(xyz)), ("seconds", dt), ("cpu_seconds", dc),
                     ("read_seconds", read_key + sum(t for _, t in sweeps))):
            stats[k] += v
        results.append(res)
        log.info("sample %s %s: %d points, %.3f s, %d ground, %d segments", sample.token, m, len(xyz), dt,
                 int(res.ground.sum()), int(res.segment_id.max()) + 1)
    offsets = A.offsets_from_counts([len(r.ground) for r in results])
    with A.write_store(store_path, "presegment", shard=shard, sample_tokens=[s.token for s in samples],
                       params=_plain(params or {}), method=m) as g:
        A.put(g, "point_offsets", offsets)
        A.put(g, "ground", np.concatenate([r.ground for r in results]))
        A.put(g, "segment_id", np.concatenate([r.segment_id for r in results]))
        A.put(g, "ground_cell", np.concatenate([r.ground_cell for r in results]))
    stats = {"shard": shard, "method": m, **stats, "skipped": skipped}
    if stats_path is not None:
        write_json(stats_path, stats)
    log.info("shard %s: %d sweeps, %.3f s per sweep", shard, stats["sweeps"], stats["seconds"] / max(1, stats["sweeps"]))
    return stats


def _plain(d: Any) -> Any:
    if isinstance(d, dict):
        return {str(k): _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    return d
