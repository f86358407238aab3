"""Annotation-free pseudo-labels: 2D semantic maps -> masks -> LiDAR points, with instance refinement.

Both methods read, per camera image, a 2D semantic map (label-space classes, 0 = background; see
:mod:`lidarlift.pseudolabels.simulate2d`) and the ``masks`` store's mask label map, and give every
mask the majority 2D class of its pixels.

**PointSAM-faithful baseline** (:func:`pointsam_baseline`), as PointSAM's ``InstanceSegmentor`` does:
masks painted largest first, thing classes only, a mask skipped when over 30 % of it is already
painted with its own class (barrier excepted); points taken by the raw projection (``in_image``: depth
> 1 m and inside the image, no occlusion test); per camera a separation-aware refinement (SAR):
connect points closer than ``max(0.04 * max(range_i, range_j), min(c_i, c_j))`` (c = 1.0 m for car,
truck, trailer, bus, construction vehicle, 0.65 m otherwise), cut edges between different classes
unless both are vehicles (car, truck, bus, construction vehicle), and for barrier and pedestrian also
between different masks; connected components; each mask keeps only its dominant component; each
component takes its majority mask (dropped if that is "no mask") with its class and a new instance
id; the rest is discarded. Cameras are merged in the order F, FR, BR, B, BL, FL: a new instance adopts
an earlier one's id and class if overlap / smaller size >= 0.5, and the later camera overwrites shared
points ("last camera wins"); SAR runs once more on the merged result. Stuff points (not part of
PointSAM) take the 2D class under them, last camera wins.

**Ours** (:func:`ours_annotation_free`): the same masks and maps, but
1. only ``visible`` views (the occlusion-tested association), so a mask does not paint the points it
   hides; no ground points in thing instances;
2. a mask takes its majority *class* when that covers ``min_class_share`` of it (PointSAM's plain
   majority lets background win on small objects whose 2D boundary is eroded);
3. every thing mask keeps the dominant 3D component of its points (drops what it spills onto the
   background), then all cameras' thing points are clustered once in 3D (SAR's range-adaptive links),
   cutting links between two masks of one camera for the classes whose touching instances masks
   separate (pedestrians, barriers, two-wheelers, cones, cars); every camera votes for the class
   instead of the last one overwriting the others;
4. instances are completed in 3D: non-ground points with no 2D evidence of their own (not seen by any
   camera, or on a background pixel) join the instance of a neighbour within the SAR distance in the
   same pre-segment, by region growing; points inside an image but hidden there never do (they lie
   behind the object that hides them);
5. stuff classes by a majority vote over the cameras that see the point (mask-majority class, else the
   pixel's class); where cameras disagree, the voted classes stay candidates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from lidarlift.classes import LabelSpace, candidate_bit

from .propagate import CANDIDATES, IMAGE2D, NONE, Labels, prior_mask

#: PointSAM's per-class minimum distance thresholds (m) and vehicle classes (config cfg_PointSAM.py).
POINTSAM_MIN_DIST = {"car": 1.0, "truck": 1.0, "trailer": 1.0, "bus": 1.0, "construction_vehicle": 1.0}
POINTSAM_OTHER_MIN_DIST = 0.65
POINTSAM_VEHICLES = ("car", "truck", "bus", "construction_vehicle")
POINTSAM_MASK_CUT = ("barrier", "pedestrian")
POINTSAM_NO_COVER_CHECK = ("barrier",)


@dataclass(frozen=True)
class AnnotationFreeParams:
    """Config ``pseudolabels.annotation_free.refine`` (defaults and meaning: config/schema.yaml)."""

    dist_coef: float
    merge_ratio: float
    cover_threshold: float
    min_points: int  # an instance keeps at least this many points (ours)
    min_class_share: float  # ours: a mask takes the majority class (not background) covering this share
    mask_cut: str  # ours: cut edges between masks for mask_cut_classes (classes) or all things (all)
    mask_cut_classes: tuple[str, ...]
    complete: bool  # ours: region-grow instances over unexplained points of their pre-segment
    complete_iterations: int
    occlusion: bool  # ours: visible instead of in_image
    ground_prior: bool  # ours: unlabelled ground points get the flat classes as candidates, others the rest

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None = None) -> "AnnotationFreeParams":
        """From the section (missing keys take the schema's defaults); bad values raise ConfigError naming the key."""
        from lidarlift.config import typed

        return typed(cls, "pseudolabels.annotation_free.refine", cfg)


@dataclass
class CameraMaps:
    """One camera image's 2D evidence at the mask resolution.

    ``mask`` (h, w) int32 mask index (-1 none); ``semantic`` (h, w) uint8 class 0..K (0 background);
    ``scale_xy`` (sx, sy): full-resolution pixel (u, v) -> (u * sx, v * sy).
    """

    mask: np.ndarray
    semantic: np.ndarray
    scale_xy: tuple[float, float]


def pixel_lookup(image: np.ndarray, uv: np.ndarray, scale_xy: tuple[float, float], fill: int = -1) -> np.ndarray:
    """Values of ``image`` (h, w) under full-resolution pixels ``uv`` (n, 2); ``fill`` where NaN/outside."""
    h, w = image.shape
    ok = np.isfinite(uv).all(axis=1)
    x = np.zeros(len(uv), np.int64)
    y = np.zeros(len(uv), np.int64)
    x[ok] = np.floor(uv[ok, 0] * scale_xy[0]).astype(np.int64)
    y[ok] = np.floor(uv[ok, 1] * scale_xy[1]).astype(np.int64)
    ok &= (x >= 0) & (x < w) & (y >= 0) & (y < h)
    out = np.full(len(uv), fill, dtype=image.dtype if fill >= 0 or np.issubdtype(image.dtype, np.signedinteger) else np.int64)
    out[ok] = image[y[ok], x[ok]]
    return out


def mask_classes(cam: CameraMaps, num_classes: int, min_share: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Majority 2D class of every mask and mask areas: ((M,), (M,)) int64.

    ``min_share`` None: the plain majority, background (0) included (PointSAM). A number: the majority
    among the classes, if it covers at least that share of the mask (eroded 2D boundaries make
    background win on small objects otherwise).
    """
    m = cam.mask.reshape(-1)
    sel = m >= 0
    n_masks = int(m.max()) + 1 if sel.any() else 0
    if n_masks == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    hist = np.zeros((n_masks, num_classes + 1), np.int64)
    np.add.at(hist, (m[sel], cam.semantic.reshape(-1)[sel].astype(np.int64)), 1)
    area = hist.sum(axis=1)
    if min_share is None:
        return hist.argmax(axis=1), area
    best = hist[:, 1:].argmax(axis=1) + 1
    share = hist[np.arange(n_masks), best] / np.maximum(area, 1)
    return np.where(share >= min_share, best, 0), area


def pointsam_paint(cam: CameraMaps, space: LabelSpace, cover_threshold: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """PointSAM's 2D step on one image: (fine semantic (h, w) int64 0..K, fine instance (h, w) int64 -1..).

    Masks largest first take their majority class; only thing classes paint; a mask more than
    ``cover_threshold`` painted already with its own class is skipped (barrier excepted).
    """
    thing = space.thing_mask
    semantic = np.where(thing[cam.semantic], cam.semantic, 0)  # PointSAM's detector paints things only
    cls, area = mask_classes(CameraMaps(cam.mask, semantic, cam.scale_xy), space.num_classes)
    fine_sem = np.zeros(cam.mask.shape, np.int64)
    fine_inst = np.full(cam.mask.shape, -1, np.int64)
    no_cover = {space.index(c) for c in POINTSAM_NO_COVER_CHECK if c in space.classes}
    for rank, mi in enumerate(np.argsort(-area, kind="stable")):
        c = int(cls[mi])
        if c == 0:
            continue
        pix = cam.mask == mi
        if c not in no_cover:
            painted = fine_sem[pix]
            coverage = float((painted != 0).mean()) if painted.size else 0.0
            if coverage > cover_threshold and np.bincount(painted).argmax() == c:
                continue
        fine_sem[pix] = c
        fine_inst[pix] = rank
    return fine_sem, fine_inst


def _min_dist_per_class(space: LabelSpace) -> np.ndarray:
    out = np.full(space.num_classes + 1, POINTSAM_OTHER_MIN_DIST)
    for name, d in POINTSAM_MIN_DIST.items():
        if name in space.classes:
            out[space.index(name)] = d
    return out


def _candidate_pairs(xyz: np.ndarray, dist_coef: float, min_dist: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) closer than ``max(dist_coef * max(range_i, range_j), min_dist)``, with its
    distance -- all pairs SAR could link, found per range band with the band's own radius (one global
    radius for the farthest point would make near, dense objects quadratic)."""
    n = len(xyz)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    rng = np.linalg.norm(xyz, axis=1)
    near = min_dist / dist_coef if dist_coef > 0 else np.inf  # below this range the radius is min_dist
    bounds = [0.0, near] + [near * f for f in (1.5, 2.25, 3.4, 5.0)] + [np.inf]
    full = None
    ii, jj = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        band = np.flatnonzero((rng >= lo) & (rng < hi))
        if len(band) == 0:
            continue
        radius = max(dist_coef * min(hi, float(rng.max())), min_dist)
        if lo == 0:
            pairs = cKDTree(xyz[band]).query_pairs(radius, output_type="ndarray")
            ii.append(band[pairs[:, 0]])
            jj.append(band[pairs[:, 1]])
            continue
        full = full or cKDTree(xyz)
        lists = cKDTree(xyz[band]).query_ball_tree(full, radius)
        counts = np.fromiter((len(x) for x in lists), np.int64, len(lists))
        a = np.repeat(band, counts)
        b = np.fromiter((v for x in lists for v in x), np.int64, int(counts.sum()))
        own = (rng[b] < rng[a]) | ((rng[b] == rng[a]) & (b > a))  # the pair's farther point is in this band
        ii.append(a[own])
        jj.append(b[own])
    i, j = np.concatenate(ii), np.concatenate(jj)
    i, j = np.minimum(i, j), np.maximum(i, j)
    keep = i != j
    i, j = i[keep], j[keep]
    return i, j, np.linalg.norm(xyz[i] - xyz[j], axis=1)


def sar_components(xyz: np.ndarray, sem: np.ndarray, inst: np.ndarray, space: LabelSpace,
                   dist_coef: float = 0.04) -> np.ndarray:
    """PointSAM's SAR clustering: (n,) int64 connected-component id of each labelled point.

    ``xyz`` (n, 3) lidar frame; ``sem`` (n,) class 1..K; ``inst`` (n,) mask / instance id (edges between
    different masks are cut for barrier and pedestrian).
    """
    n = len(xyz)
    if n == 0:
        return np.zeros(0, np.int64)
    i, j, keep = _sar_edges(xyz, sem, space, dist_coef)
    if len(i):
        cut = np.zeros(space.num_classes + 1, bool)
        cut[[space.index(c) for c in POINTSAM_MASK_CUT if c in space.classes]] = True
        keep &= ~((sem[i] == sem[j]) & cut[sem[i]] & (inst[i] != inst[j]))
    return _components(n, i[keep], j[keep])


def _sar_edges(xyz: np.ndarray, sem: np.ndarray, space: LabelSpace, dist_coef: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate edges (i, j) of PointSAM's SAR graph and which pass its tests: range-adaptive distance
    (max(dist_coef x range, per-class floor)) and same class unless both are vehicles."""
    rng = np.linalg.norm(xyz, axis=1)
    cmin = _min_dist_per_class(space)
    i, j, d = _candidate_pairs(xyz, dist_coef, float(cmin.max()))
    if not len(i):
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, bool)
    keep = d < np.maximum(dist_coef * np.maximum(rng[i], rng[j]), np.minimum(cmin[sem[i]], cmin[sem[j]]))
    vehicle = np.zeros(space.num_classes + 1, bool)
    vehicle[[space.index(c) for c in POINTSAM_VEHICLES if c in space.classes]] = True
    keep &= (sem[i] == sem[j]) | (vehicle[sem[i]] & vehicle[sem[j]])
    return i, j, keep


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def joint_components(xyz: np.ndarray, sem: np.ndarray, views: np.ndarray, space: LabelSpace, dist_coef: float,
                     cut: np.ndarray) -> np.ndarray:
    """SAR-style connected components of thing points seen by several cameras: (n,) int64 component ids.

    ``views`` (n, C) int mask index of the point in each camera (-1 none). Edges as PointSAM's SAR
    (range-adaptive distance, different classes cut unless both vehicles); for classes marked in
    ``cut`` (K + 1,) bool, an edge is also cut where one camera puts the two points in different masks.
    """
    n = len(xyz)
    if n == 0:
        return np.zeros(0, np.int64)
    i, j, keep = _sar_edges(xyz, sem, space, dist_coef)
    if len(i):
        a, b = views[i], views[j]
        differ = ((a >= 0) & (b >= 0) & (a != b)).any(axis=1)
        keep &= ~(differ & cut[sem[i]] & cut[sem[j]])
    return _components(n, i[keep], j[keep])


def id_merging(sem: np.ndarray, inst: np.ndarray, comp: np.ndarray, min_points: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """PointSAM's mask/component matching: (sem (n,) 0 = dropped, instance (n,) -1 = dropped).

    Each mask keeps only its largest component; each component takes its majority mask (dropped when
    the majority is "no mask"), inherits its class and gets a new instance id.
    """
    n = len(sem)
    out_sem = np.zeros(n, np.int64)
    out_inst = np.full(n, -1, np.int64)
    if n == 0:
        return out_sem, out_inst
    inst = inst.copy()
    pairs, cnt = np.unique(np.stack([comp, inst], 1), axis=0, return_counts=True)
    # 1. every mask keeps only its largest component
    best_comp: dict[int, int] = {}
    best_cnt: dict[int, int] = {}
    for (c3, m2), k in zip(pairs.tolist(), cnt.tolist()):
        if k > best_cnt.get(m2, -1):
            best_cnt[m2], best_comp[m2] = k, c3
    inst[np.array([best_comp[m] != c for c, m in zip(comp.tolist(), inst.tolist())])] = -1
    # 2. every component takes its majority mask (possibly "none")
    pairs, cnt = np.unique(np.stack([comp, inst], 1), axis=0, return_counts=True)
    comp_size = np.bincount(comp)
    chosen: dict[int, int] = {}
    chosen_cnt: dict[int, int] = {}
    for (c3, m2), k in zip(pairs.tolist(), cnt.tolist()):
        if k > chosen_cnt.get(c3, -1):
            chosen_cnt[c3], chosen[c3] = k, m2
    sem_of_mask = {}
    for s, m in zip(sem.tolist(), inst.tolist()):
        sem_of_mask.setdefault(m, s)
    new_id = 0
    for c3, m2 in chosen.items():
        if m2 < 0 or comp_size[c3] < min_points:
            continue
        sel = comp == c3
        out_sem[sel] = sem_of_mask[m2]
        out_inst[sel] = new_id
        new_id += 1
    return out_sem, out_inst


def sar(xyz: np.ndarray, sem: np.ndarray, inst: np.ndarray, space: LabelSpace, dist_coef: float = 0.04
        ) -> tuple[np.ndarray, np.ndarray]:
    """PointSAM's separation-aware refinement of labelled points (inst >= 0): (sem, instance), -1 = dropped."""
    out_sem = np.zeros(len(sem), np.int64)
    out_inst = np.full(len(sem), -1, np.int64)
    sel = np.flatnonzero(inst >= 0)
    if len(sel) == 0:
        return out_sem, out_inst
    comp = sar_components(xyz[sel], sem[sel], inst[sel], space, dist_coef)
    s, i = id_merging(sem[sel], inst[sel], comp)
    out_sem[sel], out_inst[sel] = s, i
    return out_sem, out_inst


def multiview_merge(ref_sem: np.ndarray, ref_inst: np.ndarray, new_sem: np.ndarray, new_inst: np.ndarray,
                    merge_ratio: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """PointSAM's camera merge: a new instance adopts an existing id and class when overlap / smaller
    size >= ``merge_ratio``; the later camera overwrites shared points. Returns (sem, inst)."""
    ref_sem, ref_inst = ref_sem.copy(), ref_inst.copy()
    new_sem, new_inst = new_sem.copy(), new_inst.copy()
    ref_m, new_m = ref_inst >= 0, new_inst >= 0
    new_inst[new_m] += (ref_inst.max() + 1) if ref_m.any() else 0
    both = ref_m & new_m
    if both.any():
        ref_ids, ref_cnt = np.unique(ref_inst[ref_m], return_counts=True)
        new_ids, new_cnt = np.unique(new_inst[new_m], return_counts=True)
        ref_size = dict(zip(ref_ids.tolist(), ref_cnt.tolist()))
        new_size = dict(zip(new_ids.tolist(), new_cnt.tolist()))
        pairs, cnt = np.unique(np.stack([new_inst[both], ref_inst[both]], 1), axis=0, return_counts=True)
        best: dict[int, tuple[int, int]] = {}
        for (e, r), k in zip(pairs.tolist(), cnt.tolist()):
            if k > best.get(e, (-1, -1))[1]:
                best[e] = (r, k)
        for e, (r, k) in best.items():
            if k / float(min(ref_size[r], new_size[e])) >= merge_ratio:
                sel = new_inst == e
                new_sem[sel] = ref_sem[np.flatnonzero(ref_inst == r)[0]]
                new_inst[sel] = r
    ref_sem[new_m] = new_sem[new_m]
    ref_inst[new_m] = new_inst[new_m]
    return ref_sem, ref_inst


def _compact(inst: np.ndarray) -> np.ndarray:
    """Instance ids 1..n (0 = none) from ids >= 0 (-1 = none)."""
    out = np.zeros(len(inst), np.int32)
    sel = inst >= 0
    if sel.any():
        out[sel] = np.unique(inst[sel], return_inverse=True)[1].reshape(-1) + 1
    return out


def pointsam_baseline(xyz: np.ndarray, in_image: np.ndarray, uv: np.ndarray, cams: list[CameraMaps],
                      space: LabelSpace, p: AnnotationFreeParams | None = None) -> Labels:
    """PointSAM-faithful labels of one keyframe (module doc). ``in_image`` (N, C) bool, ``uv`` (N, C, 2)."""
    p = p if p is not None else AnnotationFreeParams.from_config()
    n = len(xyz)
    sem = np.zeros(n, np.int64)
    inst = np.full(n, -1, np.int64)
    stuff = np.zeros(n, np.int64)
    thing = space.thing_mask
    for c, cam in enumerate(cams):
        pts = np.flatnonzero(in_image[:, c])
        fine_sem, fine_inst = pointsam_paint(cam, space, p.cover_threshold)
        s = pixel_lookup(fine_sem, uv[pts, c], cam.scale_xy, fill=0)
        k = pixel_lookup(fine_inst, uv[pts, c], cam.scale_xy, fill=-1)
        fg = k >= 0
        cs, ci = sar(xyz[pts[fg]], s[fg], k[fg], space, p.dist_coef)
        cam_sem = np.zeros(n, np.int64)
        cam_inst = np.full(n, -1, np.int64)
        cam_sem[pts[fg]], cam_inst[pts[fg]] = cs, ci
        sem, inst = multiview_merge(sem, inst, cam_sem, cam_inst, p.merge_ratio)
        px = pixel_lookup(cam.semantic, uv[pts, c], cam.scale_xy, fill=0).astype(np.int64)
        st = (px > 0) & ~thing[px]
        stuff[pts[st]] = px[st]  # last camera wins
    sem, inst = sar(xyz, sem, inst, space, p.dist_coef)
    out = Labels.unknown(n, space.num_classes)
    label = np.where(inst >= 0, sem, stuff)
    out.label[:] = label
    out.instance_id[:] = _compact(inst)
    has = label > 0
    out.confidence[has] = 1.0
    out.candidate_mask[has] = candidate_bit(label[has])
    out.source[has] = IMAGE2D
    return out


def ours_annotation_free(xyz: np.ndarray, flag: np.ndarray, uv: np.ndarray, ground: np.ndarray,
                         segment_id: np.ndarray, cams: list[CameraMaps], space: LabelSpace,
                         p: AnnotationFreeParams | None = None, in_image: np.ndarray | None = None) -> Labels:
    """Our annotation-free labels of one keyframe (module doc).

    Args:
        xyz: (N, 3) float32 lidar frame. flag: (N, C) bool which views to use (``visible``).
        uv: (N, C, 2) float32 full-resolution pixels. ground, segment_id: the ``presegment`` arrays.
        cams: per camera the mask map and the 2D semantic map.
        in_image: (N, C) bool raw projection; points inside some image but visible in none are hidden
            behind something (often the very object they are next to) and are never completed.
    """
    p = p if p is not None else AnnotationFreeParams.from_config()
    n, k = len(xyz), space.num_classes
    thing = space.thing_mask
    rng = np.linalg.norm(xyz, axis=1)
    cmin = _min_dist_per_class(space)
    # -- per camera: mask ids and classes under each point
    view_cls = np.zeros(flag.shape, np.int64)  # per point & camera: class of its (filtered) thing mask
    view_mask = np.full(flag.shape, -1, np.int64)
    stuff_votes = np.zeros((n, k + 1), np.int32)
    for c, cam in enumerate(cams):
        pts = np.flatnonzero(flag[:, c])
        if len(pts) == 0:
            continue
        cls, _ = mask_classes(cam, k, p.min_class_share)
        mid = pixel_lookup(cam.mask, uv[pts, c], cam.scale_xy, fill=-1).astype(np.int64)
        mcls = np.where(mid >= 0, cls[np.maximum(mid, 0)] if len(cls) else 0, 0)
        px = pixel_lookup(cam.semantic, uv[pts, c], cam.scale_xy, fill=0).astype(np.int64)
        # stuff votes: the mask's class when it is stuff, else the pixel's own class when stuff
        vote = np.where((mcls > 0) & ~thing[mcls], mcls, np.where((px > 0) & ~thing[px], px, 0))
        np.add.at(stuff_votes, (pts, vote), 1)
        # thing masks keep the dominant 3D component of their non-ground points (drops what the mask
        # spills onto the background around the object)
        cand = (mcls > 0) & thing[mcls] & ~ground[pts]
        for m in np.unique(mid[cand]):
            members = pts[cand & (mid == m)]
            c_cls = int(cls[m])
            if len(members) > 1:
                comp = sar_components(xyz[members], np.full(len(members), c_cls), np.zeros(len(members), np.int64),
                                      space, p.dist_coef)
                members = members[comp == np.bincount(comp).argmax()]
            view_cls[members, c] = c_cls
            view_mask[members, c] = m
    stuff_votes[:, 0] = 0
    label = np.zeros(n, np.int64)
    instance = np.full(n, -1, np.int64)
    conf = np.zeros(n, np.float32)
    pts = np.flatnonzero((view_cls > 0).any(axis=1))
    if len(pts):
        # -- every camera votes for the class; one 3D clustering over all cameras' thing points
        votes = np.zeros((len(pts), k + 1), np.int64)
        for c in range(flag.shape[1]):
            np.add.at(votes, (np.arange(len(pts)), view_cls[pts, c]), 1)
        votes[:, 0] = 0
        pcls = votes.argmax(axis=1)
        cut = np.zeros(k + 1, bool)
        cut[[space.index(c) for c in (p.mask_cut_classes if p.mask_cut != "all" else space.things) if c in space.classes]] = True
        comp = joint_components(xyz[pts], pcls, view_mask[pts], space, p.dist_coef, cut)
        sizes = np.bincount(comp)
        keep = sizes[comp] >= p.min_points
        ccls = np.zeros((comp.max() + 1, k + 1), np.int64)
        np.add.at(ccls, (comp, pcls), 1)
        comp_cls = ccls.argmax(axis=1)
        instance[pts[keep]] = comp[keep]
        label[pts[keep]] = comp_cls[comp[keep]]
        n_views = np.maximum(flag[pts].sum(axis=1), 1)
        conf[pts[keep]] = (votes[np.arange(len(pts)), comp_cls[comp]] / n_views)[keep]
    # -- completion: unexplained non-ground points join a neighbouring instance of their pre-segment
    if p.complete and (instance >= 0).any():
        own_stuff = stuff_votes.sum(axis=1) > 0
        hidden = (in_image.any(axis=1) & ~flag.any(axis=1)) if in_image is not None else np.zeros(n, bool)
        for _ in range(p.complete_iterations):
            src = np.flatnonzero(instance >= 0)
            free = np.flatnonzero((instance < 0) & ~ground & ~own_stuff & ~hidden & (segment_id >= 0))
            if len(free) == 0 or len(src) == 0:
                break
            d, nb = cKDTree(xyz[src]).query(xyz[free], k=1)
            nb_pt = src[nb]
            thresh = np.maximum(p.dist_coef * rng[free], np.minimum(cmin[label[nb_pt]], 0.65))
            ok = (d < thresh) & (segment_id[nb_pt] == segment_id[free])
            if not ok.any():
                break
            instance[free[ok]] = instance[nb_pt[ok]]
            label[free[ok]] = label[nb_pt[ok]]
            conf[free[ok]] = 0.5 * conf[nb_pt[ok]]
    # -- stuff: majority vote of the views
    no_thing = instance < 0
    has_vote = stuff_votes.sum(axis=1) > 0
    st = no_thing & has_vote
    best = stuff_votes.argmax(axis=1)
    label[st] = best[st]
    conf[st] = stuff_votes[st, best[st]] / stuff_votes[st].sum(axis=1)
    out = Labels.unknown(n, k)
    out.label[:] = label
    out.instance_id[:] = _compact(np.where(thing[label], instance, -1))
    has = label > 0
    out.confidence[:] = np.where(has, conf, 0.0)
    out.candidate_mask[has] = candidate_bit(label[has])
    # a point whose cameras disagree keeps every voted class possible
    split = st & ((stuff_votes > 0).sum(axis=1) >= 2)
    if split.any():
        bits = candidate_bit(np.arange(k + 1)).astype(np.uint32)
        voted = np.bitwise_or.reduce(np.where(stuff_votes[split] > 0, bits[None, :], np.uint32(0)), axis=1)
        out.candidate_mask[split] = voted.astype(np.uint32)
    if p.ground_prior:  # unlabelled: flat classes on the ground, the others elsewhere
        out.candidate_mask[~has] = prior_mask(ground[~has], space)
    out.source[:] = np.where(has, IMAGE2D, np.where(out.candidate_mask != space.all_candidates, CANDIDATES, NONE))
    return out
