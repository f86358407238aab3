"""Point prompts from the LiDAR: pre-segment centres, farthest-point samples, and a sparse grid.

PointSAM prompts SAM with keyframe points projected into each camera, farthest-point sampled to at
most 256 per image. Here the sampling is segment-aware: every LiDAR pre-segment visible in the image
gets its *centre* first (the visible point nearest the median pixel of its points, so it lies on the
object even for concave shapes), then further points by farthest-point sampling within the segment;
an optional sparse grid covers image regions with no LiDAR return (sky aside, mostly far or
non-reflective surfaces). Priority when ``max_prompts`` is reached: centres (segments with more
visible points first), then grid points, then farthest-point samples in rounds (every segment's
second point, then every third, ...). Everything is deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lidarlift.masks.core import SOURCE_CENTRE, SOURCE_FPS, SOURCE_GRID


@dataclass
class Prompts:
    """P prompts of one image, each with up to m positive points.

    uv: (P, m, 2) float32 pixel (u, v) at full image resolution. valid: (P, m) bool, False marks padding
    points (given to SAM with label -1). source: (P,) uint8 PROMPT_SOURCES. segment_id: (P,) int32 the
    LiDAR pre-segment, -1 for grid prompts.
    """

    uv: np.ndarray
    valid: np.ndarray
    source: np.ndarray
    segment_id: np.ndarray

    def __len__(self) -> int:
        return int(self.uv.shape[0])

    @staticmethod
    def empty(m: int = 1) -> "Prompts":
        return Prompts(np.zeros((0, m, 2), np.float32), np.zeros((0, m), bool), np.zeros(0, np.uint8), np.zeros(0, np.int32))


def farthest_point_sampling(xy: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """Indices of ``k`` points of (n, 2) ``xy`` by greedy farthest-point sampling from index ``start``.

    Returns (min(k, n),) int64; the first index is ``start``.
    """
    n = xy.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, np.int64)
    xy = xy.astype(np.float64, copy=False)
    chosen = np.empty(k, np.int64)
    chosen[0] = start
    dist = np.sum((xy - xy[start]) ** 2, axis=1)
    for i in range(1, k):
        nxt = int(np.argmax(dist))
        chosen[i] = nxt
        dist = np.minimum(dist, np.sum((xy - xy[nxt]) ** 2, axis=1))
    return chosen


def segment_centre(xy: np.ndarray) -> int:
    """Index of the point of (n, 2) ``xy`` nearest the per-axis median (lies on the segment)."""
    med = np.median(xy, axis=0)
    return int(np.argmin(np.sum((xy - med) ** 2, axis=1)))


def grid_points(image_size: tuple[int, int], per_side: int) -> np.ndarray:
    """(per_side**2, 2) float32 cell-centre (u, v) points of an even grid over an (H, W) image."""
    h, w = image_size
    off = 1.0 / (2 * per_side)
    t = np.linspace(off, 1 - off, per_side)
    gu, gv = np.meshgrid(t * w, t * h)
    return np.stack([gu.ravel(), gv.ravel()], axis=1).astype(np.float32)


def lidar_prompts(uv: np.ndarray, segment_id: np.ndarray, image_size: tuple[int, int], *,
                  max_prompts: int = 256, points_per_segment: int = 3, points_per_prompt: int = 1,
                  min_segment_points: int = 3, grid_per_side: int = 0, grid_min_distance: float = 24.0,
                  all_uv: np.ndarray | None = None) -> Prompts:
    """Prompts of one image from its visible LiDAR points.

    uv: (n, 2) float32 full-resolution pixels of the visible points; segment_id: (n,) int32 (-1 noise
    or ground: never prompted). image_size: (H, W). ``points_per_segment`` samples per segment (centre
    + farthest-point samples). ``points_per_prompt`` = 1: each sample is its own single-point prompt
    (PointSAM); > 1: one prompt per segment whose points are its first ``points_per_prompt`` samples.
    Segments with fewer than ``min_segment_points`` visible points are skipped. Grid points closer than
    ``grid_min_distance`` pixels to any of ``all_uv`` (default ``uv``: every visible point, ground too)
    are dropped. At most ``max_prompts`` prompts (see the module docstring for the priority).
    """
    h, w = image_size
    uv = np.asarray(uv, np.float32).reshape(-1, 2)
    segment_id = np.asarray(segment_id, np.int64).reshape(-1)
    inside = (segment_id >= 0) & np.isfinite(uv).all(1) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    suv, sid = uv[inside], segment_id[inside]
    m = max(1, points_per_prompt)
    per_seg = max(points_per_segment, m if m > 1 else 1)

    # per-segment samples, segments ordered by visible point count (desc), then id
    samples: list[tuple[int, np.ndarray]] = []
    if sid.size:
        order = np.argsort(sid, kind="stable")
        ids, starts, counts = np.unique(sid[order], return_index=True, return_counts=True)
        rank = np.lexsort((ids, -counts))
        for r in rank:
            if counts[r] < min_segment_points:
                continue
            pts = suv[order[starts[r]:starts[r] + counts[r]]]
            c = segment_centre(pts)
            samples.append((int(ids[r]), pts[farthest_point_sampling(pts, per_seg, c)]))

    grid = np.zeros((0, 2), np.float32)
    if grid_per_side > 0:
        grid = grid_points(image_size, grid_per_side)
        ref = uv if all_uv is None else np.asarray(all_uv, np.float32).reshape(-1, 2)
        ref = ref[np.isfinite(ref).all(1)] if ref.size else ref
        if ref.shape[0] and grid.shape[0]:
            from scipy.spatial import cKDTree

            d, _ = cKDTree(ref).query(grid, k=1)
            grid = grid[d >= grid_min_distance]

    uvs: list[np.ndarray] = []
    valid: list[np.ndarray] = []
    src: list[int] = []
    seg: list[int] = []

    def add(points: np.ndarray, source: int, segment: int) -> None:
        p = np.zeros((m, 2), np.float32)
        v = np.zeros(m, bool)
        p[: len(points)] = points[:m]
        v[: len(points)] = True
        uvs.append(p)
        valid.append(v)
        src.append(source)
        seg.append(segment)

    budget = max(0, max_prompts)
    if m == 1:
        for s, pts in samples[:budget]:
            add(pts[:1], SOURCE_CENTRE, s)
        for g in grid[: max(0, budget - len(src))]:
            add(g[None], SOURCE_GRID, -1)
        j = 1
        while len(src) < budget and any(len(p) > j for _, p in samples):
            for s, pts in samples:
                if len(pts) > j and len(src) < budget:
                    add(pts[j:j + 1], SOURCE_FPS, s)
            j += 1
    else:
        for s, pts in samples[:budget]:
            add(pts[:m], SOURCE_CENTRE, s)
        for g in grid[: max(0, budget - len(src))]:
            add(g[None], SOURCE_GRID, -1)
    if not src:
        return Prompts.empty(m)
    return Prompts(np.stack(uvs), np.stack(valid), np.asarray(src, np.uint8), np.asarray(seg, np.int32))
