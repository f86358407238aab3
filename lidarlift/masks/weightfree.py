"""Weight-free masks: graph-segment merging guided by the LiDAR pre-segments projected into the image.

For hosts without SAM checkpoints (and the default demo). Per image, at the stored resolution:

1. over-segment the image with Felzenszwalb's graph segmentation (OpenCV-contrib
   ``cv2.ximgproc.segmentation.createGraphSegmentation``): regions follow colour edges;
2. seed pixels: every visible keyframe point of a LiDAR pre-segment (segments with at least
   ``min_segment_points`` points in the image) and every ground point; where points share a pixel
   the nearest in depth wins; noise points are ignored;
3. each region votes over the seeds inside it: a region with one label goes whole to that segment;
   a region with several labels is split pixel by pixel to the nearest seed (the seeds of a 32-beam
   LiDAR lie on scan lines, so a car merged with the grey road into one region is cut half-way
   between car and road lines, and a stray point only claims its own small neighbourhood);
4. a region without any seed (between scan lines, or a surface without returns) goes to the label of
   the nearest seed when that label is a segment whose *extent* covers at least half of the region;
5. every segment is clipped to its extent: the convex hull of its projected points, grown by
   ``hull_margin`` times its scan-line spacing vertically (an object reaches on average half a beam
   gap beyond its outer lines) and a quarter of that sideways;
6. ground pixels are not masks; each remaining segment with ``min_area`` pixels is one mask
   (``prompt_source`` 4, its ``segment_id``); optionally (``region_masks``) large seedless regions
   outside every extent become masks of their own (``prompt_source`` 3).

Masks are disjoint by construction (overlap rule ``nearest_point``). ``score`` = share of the
segment's visible points inside its mask; ``stability`` = share of the mask made of regions that
held the segment's own points (the rest was filled from the extent).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from lidarlift.masks.core import SOURCE_REGION, SOURCE_WF_SEGMENT, CameraView, ImageMasks
from lidarlift.masks.prompts import segment_centre


@dataclass
class WeightFreeParams:
    """Parameters (config section ``masks.weightfree``; defaults: config/schema.yaml); pixel sizes are at
    the stored resolution."""

    sigma: float  # Gaussian smoothing before graph segmentation
    k: float  # graph segmentation threshold: larger gives larger regions
    min_size: int  # smallest graph region (pixels)
    min_segment_points: int  # LiDAR segments with fewer visible points in the image are ignored
    hull_margin: float  # extent growth, in scan-line spacings
    min_margin_px: float
    min_area: int  # smallest mask kept (pixels)
    region_masks: bool  # also emit large seedless regions as masks (prompt_source 3)
    region_min_area: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None = None) -> "WeightFreeParams":
        """From the section (missing keys take the schema's defaults); bad values raise ConfigError naming the key."""
        from lidarlift.config import typed

        return typed(cls, "masks.weightfree", cfg)


def graph_regions(image: np.ndarray, p: WeightFreeParams) -> np.ndarray:
    """(h, w) int32 region id per pixel (0..R-1) of an (h, w, 3) uint8 image."""
    seg = cv2.ximgproc.segmentation.createGraphSegmentation(sigma=float(p.sigma), k=float(p.k), min_size=int(p.min_size))
    return seg.processImage(np.ascontiguousarray(image)).astype(np.int32)


def _scanline_gap(v: np.ndarray) -> float:
    """Typical vertical spacing (pixels) between the scan lines that hit a segment."""
    vs = np.unique(np.round(np.sort(v), 1))
    d = np.diff(vs)
    d = d[d > 1.5]
    return float(np.median(d)) if d.size else 0.0


def _extent(px: np.ndarray, shape: tuple[int, int], p: WeightFreeParams) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Grown convex hull of (n, 2) float pixel points: (y0, y1, x0, x1) window and its bool mask."""
    h, w = shape
    gap = _scanline_gap(px[:, 1])
    my = max(p.min_margin_px, p.hull_margin * gap + 1.0)
    mx = max(p.min_margin_px, 0.25 * my)
    x0 = int(max(0, np.floor(px[:, 0].min() - mx - 1)))
    x1 = int(min(w, np.ceil(px[:, 0].max() + mx + 2)))
    y0 = int(max(0, np.floor(px[:, 1].min() - my - 1)))
    y1 = int(min(h, np.ceil(px[:, 1].max() + my + 2)))
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    pts = np.round(px - [x0, y0]).astype(np.int32)
    hull = cv2.convexHull(pts.reshape(-1, 1, 2))
    cv2.fillConvexPoly(canvas, hull, 1)
    kx, ky = int(np.ceil(mx)), int(np.ceil(my))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * kx + 1, 2 * ky + 1))
    canvas = cv2.dilate(canvas, kernel)
    return (y0, y1, x0, x1), canvas.astype(bool)


def weightfree_masks(view: CameraView, out_hw: tuple[int, int], params: WeightFreeParams | None = None) -> ImageMasks:
    """Masks of one camera view at the stored size ``out_hw`` (see the module docstring)."""
    p = params or WeightFreeParams.from_config()
    t0 = time.perf_counter()
    h, w = out_hw
    H, W = view.size
    image = view.image if (H, W) == (h, w) else cv2.resize(view.image, (w, h), interpolation=cv2.INTER_AREA)
    regions = graph_regions(image, p)
    n_regions = int(regions.max()) + 1
    t_graph = time.perf_counter() - t0

    sx, sy = w / W, h / H
    uv = np.asarray(view.uv, np.float32).reshape(-1, 2)
    fin = np.isfinite(uv).all(1)
    px = uv * np.array([sx, sy], np.float32)
    inside = fin & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    seg = np.asarray(view.segment_id, np.int64)
    ground = np.asarray(view.ground, bool)
    is_seg = inside & (seg >= 0) & ~ground
    ids, counts = np.unique(seg[is_seg], return_counts=True)
    ids = ids[counts >= p.min_segment_points]
    n_seg = len(ids)
    if n_seg == 0:
        return ImageMasks.empty(h, w)
    GROUND = n_seg
    label = np.full(len(seg), -1, np.int64)
    pos = np.searchsorted(ids, seg)
    hit = is_seg & (pos < n_seg) & (ids[np.minimum(pos, n_seg - 1)] == seg)
    label[hit] = pos[hit]
    label[inside & ground] = GROUND
    use = label >= 0
    lab, ppx, dep = label[use], px[use], np.asarray(view.depth, np.float32)[use]
    col = np.clip(ppx[:, 0].astype(np.int64), 0, w - 1)
    row = np.clip(ppx[:, 1].astype(np.int64), 0, h - 1)

    # seed image: the nearest point in depth owns a shared pixel
    seed = np.full((h, w), -1, np.int64)
    order = np.argsort(-dep, kind="stable")
    seed[row[order], col[order]] = lab[order]
    _, (ny, nx) = ndimage.distance_transform_edt(seed < 0, return_distances=True, return_indices=True)
    nearest = seed[ny, nx]  # (h, w) label of the nearest seed pixel

    # region votes over all points
    reg_of_pt = regions[row, col]
    votes = np.bincount(reg_of_pt * (n_seg + 1) + lab, minlength=n_regions * (n_seg + 1)).reshape(n_regions, n_seg + 1)
    total = votes.sum(1)
    n_labels = (votes > 0).sum(1)
    top = votes.argmax(1)

    # extents of the segments
    extents = []
    for j in range(n_seg):
        extents.append(_extent(ppx[lab == j], (h, w), p))

    # per-region share of each segment's extent (only for seedless regions)
    seedless = total == 0
    cover = np.zeros((n_regions, n_seg), np.float32)
    if seedless.any():
        for j, ((y0, y1, x0, x1), m) in enumerate(extents):
            r = regions[y0:y1, x0:x1][m]
            cover[:, j] = np.bincount(r, minlength=n_regions)
        cover /= np.maximum(1, np.bincount(regions.ravel(), minlength=n_regions))[:, None]

    assign = np.full((h, w), -1, np.int64)
    r_flat = regions.ravel()
    single = n_labels == 1
    assign_flat = assign.ravel()
    # 3a. regions with one label
    m = single[r_flat]
    assign_flat[m] = top[r_flat[m]]
    # 3b. mixed regions: the nearest seed if it is one of the region's labels, else the region's top label
    mixed = (n_labels > 1)[r_flat]
    if mixed.any():
        near = nearest.ravel()[mixed]
        rr = r_flat[mixed]
        ok = votes[rr, near] > 0
        assign_flat[mixed] = np.where(ok, near, top[rr])
    # 4. seedless regions: the nearest seed's segment when its extent covers half of the region
    if seedless.any():
        sl = seedless[r_flat]
        near = nearest.ravel()[sl]
        rr = r_flat[sl]
        is_segment = near < n_seg
        ok = is_segment & (cover[rr, np.minimum(near, n_seg - 1)] >= 0.5)
        assign_flat[sl] = np.where(ok, near, -1)
    assign = assign_flat.reshape(h, w)
    seeded_region = ~seedless

    # 5. clip to extents, 6. masks
    label_map = np.full((h, w), -1, np.int32)
    score, stab, area, box, puv, segs, src = [], [], [], [], [], [], []
    for j, ((y0, y1, x0, x1), ext) in enumerate(extents):
        win = assign[y0:y1, x0:x1] == j
        mj = win & ext
        a = int(mj.sum())
        if a < p.min_area:
            continue
        k = len(score)
        label_map[y0:y1, x0:x1][mj] = k
        pts = ppx[lab == j]
        pc = np.clip(pts.astype(np.int64), 0, [w - 1, h - 1])
        in_mask = label_map[pc[:, 1], pc[:, 0]] == k
        ys, xs = np.nonzero(mj)
        score.append(float(in_mask.mean()))
        stab.append(float(seeded_region[regions[y0:y1, x0:x1][mj]].mean()))
        area.append(a)
        box.append([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1])
        puv.append(pts[segment_centre(pts)])
        segs.append(int(ids[j]))
        src.append(SOURCE_WF_SEGMENT)

    if p.region_masks and seedless.any():
        covered = np.zeros((h, w), bool)
        for (y0, y1, x0, x1), ext in extents:
            covered[y0:y1, x0:x1] |= ext
        free = seedless[regions] & ~covered & (label_map < 0)
        cand = np.bincount(regions[free], minlength=n_regions)
        for r in np.nonzero(cand >= p.region_min_area)[0]:
            mr = free & (regions == r)
            k = len(score)
            label_map[mr] = k
            ys, xs = np.nonzero(mr)
            score.append(0.0)
            stab.append(0.0)
            area.append(int(mr.sum()))
            box.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            puv.append([np.nan, np.nan])
            segs.append(-1)
            src.append(SOURCE_REGION)

    if not score:
        return ImageMasks.empty(h, w)
    out = ImageMasks(
        labels=label_map,
        score=np.asarray(score, np.float32),
        stability=np.asarray(stab, np.float32),
        area=np.asarray(area, np.int64),
        box=np.asarray(box, np.float32),
        prompt_source=np.asarray(src, np.uint8),
        segment_id=np.asarray(segs, np.int32),
        prompt_uv=np.asarray(puv, np.float32).reshape(-1, 2),
    )
    out.timings = {"graph_s": t_graph, "total_s": time.perf_counter() - t0}
    return out


class WeightFreeGenerator:
    """Backend object: ``generate(views, out_hw)`` -> one :class:`ImageMasks` per view."""

    name = "weightfree"
    overlap = "nearest_point"

    def __init__(self, params: WeightFreeParams | None = None):
        self.params = params or WeightFreeParams.from_config()
        self.timings: dict[str, float] = {"total_s": 0.0, "graph_s": 0.0, "images": 0}
        self.prompts_made = 0  # no prompts: every LiDAR segment seeds regions

    def describe(self) -> dict:
        return {"method": "Felzenszwalb graph segments (cv2.ximgproc) merged by LiDAR pre-segments", **vars(self.params)}

    def generate(self, views: list[CameraView], out_hw: tuple[int, int]) -> list[ImageMasks]:
        out = []
        for v in views:
            r = weightfree_masks(v, out_hw, self.params)
            for key in ("total_s", "graph_s"):
                self.timings[key] += r.timings.get(key, 0.0)
            self.timings["images"] += 1
            out.append(r)
        return out
