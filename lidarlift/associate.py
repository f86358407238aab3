"""Occlusion-aware point-pixel association of keyframe LiDAR points with every camera (stage ``associate``).

For every keyframe point and camera: pixel (u, v), depth, the raw projection flag ``in_image`` (what
every anchor keeps: depth > ``min_depth`` and pixel inside the image) and ``visible`` = ``in_image``
and no nearer surface covers the pixel. Points seen by several cameras keep all their views.

Projection chain (ego-motion compensated): lidar -> ego(t_lidar) -> global -> ego(t_cam) -> cam ->
image (:func:`lidarlift.geometry.lidar_to_cam`).

Occlusion test: per camera a depth buffer is built from the projected points themselves (optionally
densified with neighbouring sweeps, ego-motion compensated): each point is splatted as a disc of
radius ``focal * clip(footprint_m / depth, tan(footprint_min_deg), tan(footprint_max_deg))`` pixels
(a point stands for a surface patch; near points cover more pixels; the angular floor closes the gaps
between LiDAR beams). A point is visible when ``depth <= zbuf(pixel) * (1 + depth_rel_tol) +
depth_abs_tol``. The buffer of a wide image is downscaled to ``buffer_max_width`` and large discs are
drawn on coarser levels of a buffer pyramid (``splat_max_radius_px``), so a point costs a bounded
number of writes; neither changed the measured accuracy at 1600x900. Kernels (numba):
:mod:`lidarlift.depthbuffer`. Densifying the buffer with neighbouring sweeps raised precision but cost
more recall on the synthetic world (moving objects leave trails), so ``densify_sweeps`` is 0 by default.

Pixel convention: ``uv`` follows the intrinsics (OpenCV): pixel centres at integer coordinates, so a
point lies in pixel :func:`pixel_index` = (round(u), round(v)); in an image scaled by ``s`` that is
``floor((uv + 0.5) * s)``.

Bad input (NaN/inf coordinates, empty or truncated sweeps, non-rigid transforms, principal point
outside the image) raises :class:`lidarlift.datasets.DatasetError` naming the sample and the file,
or with ``bad_sample_policy: skip`` the sample gets zero points and is listed in the metrics'
``skipped``. A bad neighbouring sweep (densification only) is dropped under ``skip`` and listed in
``dropped_sweeps``; unreadable ground truth (metrics only) is listed in ``truth_skipped``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lidarlift import artifacts as A
from lidarlift import depthbuffer as zb
from lidarlift.datasets.readers import DatasetError, read_lidar
from lidarlift.geometry import GeometryError, check_intrinsic, check_rigid, lidar_to_cam
from lidarlift.manifest import LidarFrame, Manifest, SampleRecord, as_matrix

log = logging.getLogger(__name__)

BAD_SAMPLE_POLICIES = ("error", "skip")


@dataclass(frozen=True)
class AssociateParams:
    """Parameters of the ``associate`` config section (see config/schema.yaml for each key)."""

    min_depth: float = 1.0
    occlusion: bool = True
    footprint_m: float = 0.1
    footprint_min_deg: float = 0.5
    footprint_max_deg: float = 1.0
    depth_rel_tol: float = 0.05
    depth_abs_tol: float = 0.3
    buffer_max_width: int = 640
    splat_max_radius_px: float = 3.0
    densify_sweeps: int = 0
    bad_sample_policy: str = "error"

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> "AssociateParams":
        """From the ``associate`` section (plus ``bad_sample_policy``); unknown keys and bad values raise
        ValueError naming the config key."""
        cfg = dict(cfg or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"config section associate: unknown keys {unknown}; known: {sorted(names)}")
        p = cls(**cfg)
        checks = [
            ("min_depth", p.min_depth >= 0), ("footprint_m", p.footprint_m >= 0),
            ("footprint_min_deg", 0 <= p.footprint_min_deg < 90),
            ("footprint_max_deg", p.footprint_min_deg <= p.footprint_max_deg < 90),
            ("depth_rel_tol", p.depth_rel_tol >= 0), ("depth_abs_tol", p.depth_abs_tol >= 0),
            ("buffer_max_width", p.buffer_max_width >= 0), ("splat_max_radius_px", p.splat_max_radius_px >= 0),
            ("densify_sweeps", p.densify_sweeps >= 0),
        ]
        for key, ok in checks:
            if not ok:
                raise ValueError(f"config key associate.{key}: invalid value {getattr(p, key)!r}")
        if p.bad_sample_policy not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"config key dataset.bad_sample_policy: {p.bad_sample_policy!r}, choose one of {BAD_SAMPLE_POLICIES}")
        return p


@dataclass
class Association:
    """Association of N points with C cameras.

    uv (N, C, 2) float32 full-resolution pixels (NaN where depth <= 0); depth (N, C) float32 metres
    along each camera axis; in_image (N, C) bool raw projection; visible (N, C) bool in_image and
    passes the occlusion test.
    """

    uv: np.ndarray
    depth: np.ndarray
    in_image: np.ndarray
    visible: np.ndarray


# ----------------------------------------------------------------------------------------- arrays


def _as_cameras(lidar_to_cams, intrinsics, image_sizes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.ascontiguousarray(lidar_to_cams, dtype=np.float64)
    k = np.ascontiguousarray(intrinsics, dtype=np.float64)
    sizes = np.asarray(image_sizes, dtype=np.int64)
    if t.ndim == 2:
        t, k, sizes = t[None], k[None], sizes[None]
    c = t.shape[0]
    if t.shape != (c, 4, 4) or k.shape != (c, 3, 3) or sizes.shape != (c, 2):
        raise ValueError(f"cameras: lidar_to_cams must be (C, 4, 4), intrinsics (C, 3, 3), image_sizes (C, 2); "
                         f"got {t.shape}, {k.shape}, {sizes.shape}")
    return t, k, sizes


def project_points(xyz: np.ndarray, lidar_to_cams: np.ndarray, intrinsics: np.ndarray,
                   image_sizes: np.ndarray, min_depth: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project points into every camera.

    xyz: (N, 3) float32/float64 points in the lidar (source) frame. lidar_to_cams: (C, 4, 4) float64
    source -> camera frame (x right, y down, z forward), ego-motion compensated
    (:func:`lidarlift.geometry.lidar_to_cam`). intrinsics: (C, 3, 3). image_sizes: (C, 2) (width,
    height) in pixels. Returns uv (N, C, 2) float32 pixel coordinates with pixel centres at integer
    coordinates (the OpenCV convention of the intrinsics: the point lies in pixel :func:`pixel_index`
    = (round(u), round(v)); NaN where depth <= 0), depth (N, C) float32 metres, in_image (N, C) bool
    (depth > min_depth and that pixel inside the image). Raises ValueError on NaN/inf points.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise ValueError(f"points must be (N, 3), got {xyz.shape}")
    xyz = np.ascontiguousarray(xyz[:, :3])
    if xyz.dtype not in (np.float32, np.float64):
        xyz = xyz.astype(np.float64)
    if not np.isfinite(xyz).all():
        bad = ~np.isfinite(xyz).all(axis=1)
        raise ValueError(f"{int(bad.sum())} points have NaN or infinite coordinates (first at row {int(np.argmax(bad))})")
    t, k, sizes = _as_cameras(lidar_to_cams, intrinsics, image_sizes)
    n, c = xyz.shape[0], t.shape[0]
    uv = np.empty((n, c, 2), np.float32)
    depth = np.empty((n, c), np.float32)
    in_image = np.empty((n, c), np.bool_)
    zb.project_kernel(xyz, np.ascontiguousarray(t[:, :3, :3]), np.ascontiguousarray(t[:, :3, 3]), k,
                      np.ascontiguousarray(sizes[:, 0]), np.ascontiguousarray(sizes[:, 1]), float(min_depth),
                      uv, depth, in_image)
    return uv, depth, in_image


_SCRATCH = threading.local()


def _scratch(size: int) -> np.ndarray:
    """A reused float32 buffer of ``size`` (per thread): fresh large allocations cost page faults that
    take as long as the splatting itself."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < size:
        buf = _SCRATCH.buf = np.empty(max(size, 1), np.float32)
    return buf[:size]


class _Pyramid:
    """The depth-buffer pyramid of one camera geometry (level-0 size, scale, focal, level layout)."""

    def __init__(self, focal: float, width: int, height: int, params: AssociateParams):
        self.h, self.w, self.scale = zb.buffer_shape(width, height, params.buffer_max_width)
        self.focal = focal * self.scale
        self.tan_min = math.tan(math.radians(params.footprint_min_deg))
        self.tan_max = math.tan(math.radians(params.footprint_max_deg))
        levels = 1
        if params.splat_max_radius_px > 0:
            r_max = self.focal * self.tan_max
            levels += max(0, math.ceil(math.log2(max(r_max, 1e-9) / params.splat_max_radius_px)))
        self.offsets, self.widths, self.heights, self.size = zb.pyramid_layout(self.h, self.w, min(levels, 12))
        self.zbuf = _scratch(self.size)
        self.params = params

    def clear(self) -> None:
        self.zbuf.fill(np.inf)

    def splat(self, uv: np.ndarray, depth: np.ndarray, cam: int) -> None:
        p = self.params
        zb.splat_kernel(uv, depth, cam, self.scale, self.focal, p.footprint_m, self.tan_min, self.tan_max,
                        p.min_depth, p.splat_max_radius_px if p.splat_max_radius_px > 0 else np.inf,
                        self.zbuf, self.offsets, self.widths, self.heights)

    def test(self, uv: np.ndarray, depth: np.ndarray, in_image: np.ndarray, cam: int, visible: np.ndarray) -> None:
        zb.visible_kernel(uv, depth, in_image, cam, self.scale, self.zbuf, self.offsets, self.widths, self.heights,
                          self.params.depth_rel_tol, self.params.depth_abs_tol, visible)

    def collapse(self) -> np.ndarray:
        out = np.empty((self.h, self.w), np.float32)
        zb.collapse_kernel(self.zbuf, self.offsets, self.widths, self.heights, out)
        return out


def pixel_index(uv: np.ndarray, width: int | None = None, height: int | None = None) -> np.ndarray:
    """Integer pixel (column, row) holding each projection: floor(uv + 0.5), same shape as ``uv``
    (..., 2) int64 (pixel centres at integer coordinates). With width/height, clipped into the image."""
    px = np.floor(np.nan_to_num(np.asarray(uv, np.float64), nan=-1.0) + 0.5).astype(np.int64)
    if width is not None:
        px[..., 0] = np.clip(px[..., 0], 0, width - 1)
    if height is not None:
        px[..., 1] = np.clip(px[..., 1], 0, height - 1)
    return px


def depth_buffer(uv: np.ndarray, depth: np.ndarray, focal: float, image_size: Sequence[int],
                 params: AssociateParams) -> tuple[np.ndarray, float]:
    """Depth buffer of one camera from the points' projections (for inspection; the stage uses the
    same kernels through :func:`occlusion_test`).

    uv (M, 2) float32 full-resolution pixels, depth (M,) float32 metres; focal: fx in full-resolution
    pixels; image_size (width, height). Returns (zbuf (h, w) float32 nearest depth per buffer pixel,
    +inf where no point covers it; scale = buffer / image resolution).
    """
    pyr = _Pyramid(float(focal), int(image_size[0]), int(image_size[1]), params)
    pyr.clear()
    pyr.splat(np.ascontiguousarray(uv, dtype=np.float32).reshape(-1, 1, 2),
              np.ascontiguousarray(depth, dtype=np.float32).reshape(-1, 1), 0)
    return pyr.collapse(), pyr.scale


def occlusion_test(uv: np.ndarray, depth: np.ndarray, in_image: np.ndarray, intrinsics: np.ndarray,
                   image_sizes: np.ndarray, params: AssociateParams,
                   occluders: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> np.ndarray:
    """visible (N, C) bool: in_image and no nearer surface covers the point's pixel in that camera.

    uv (N, C, 2), depth (N, C), in_image (N, C) from :func:`project_points`; intrinsics (C, 3, 3);
    image_sizes (C, 2) (width, height). ``occluders``: further (uv (M, C, 2), depth (M, C)) point
    sets (e.g. neighbouring sweeps projected into the same cameras) that only feed the depth buffers.
    With ``params.occlusion`` False, visible = in_image.
    """
    if not params.occlusion:
        return in_image.copy()
    k = np.asarray(intrinsics, dtype=np.float64).reshape(-1, 3, 3)
    sizes = np.asarray(image_sizes, dtype=np.int64).reshape(-1, 2)
    uv = np.ascontiguousarray(uv, dtype=np.float32)
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    in_image = np.ascontiguousarray(in_image, dtype=np.bool_)
    visible = np.zeros(in_image.shape, np.bool_)
    occluders = [(np.ascontiguousarray(u, dtype=np.float32), np.ascontiguousarray(d, dtype=np.float32)) for u, d in occluders]
    pyramids: dict[tuple[float, int, int], _Pyramid] = {}
    for c in range(k.shape[0]):
        key = (float(k[c, 0, 0]), int(sizes[c, 0]), int(sizes[c, 1]))
        pyr = pyramids.get(key)
        if pyr is None:
            pyr = pyramids[key] = _Pyramid(*key, params)
        pyr.clear()
        for pts_uv, pts_depth in [(uv, depth), *occluders]:
            pyr.splat(pts_uv, pts_depth, c)
        pyr.test(uv, depth, in_image, c, visible)
    return visible


def associate(xyz: np.ndarray, lidar_to_cams: np.ndarray, intrinsics: np.ndarray, image_sizes: np.ndarray,
              params: AssociateParams, sweeps: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> Association:
    """Project (N, 3) keyframe points (lidar frame) into C cameras and test occlusion.

    lidar_to_cams (C, 4, 4), intrinsics (C, 3, 3), image_sizes (C, 2) as in :func:`project_points`.
    ``sweeps``: neighbouring sweeps for a denser depth buffer, each (xyz (M, 3) in its own lidar
    frame, sweep_to_cams (C, 4, 4) ego-motion compensated into each camera).
    """
    uv, depth, in_image = project_points(xyz, lidar_to_cams, intrinsics, image_sizes, params.min_depth)
    occluders = []
    if params.occlusion:
        for sweep_xyz, sweep_to_cams in sweeps:
            s_uv, s_depth, _ = project_points(sweep_xyz, sweep_to_cams, intrinsics, image_sizes, params.min_depth)
            occluders.append((s_uv, s_depth))
    visible = occlusion_test(uv, depth, in_image, intrinsics, image_sizes, params, occluders)
    return Association(uv, depth, in_image, visible)


def anchor_association(xyz: np.ndarray, lidar_to_cams: np.ndarray, intrinsics: np.ndarray,
                       image_sizes: np.ndarray, min_depth: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The anchors' association, plain numpy: depth > min_depth and inside the image, last camera wins.

    Returns camera (N,) int64 (-1 = in no image) and uv (N, 2) float32 in that camera. The baseline the
    benchmark compares against; no occlusion test.
    """
    t, k, sizes = _as_cameras(lidar_to_cams, intrinsics, image_sizes)
    xyz = np.asarray(xyz)[:, :3].astype(np.float64)
    camera = np.full(xyz.shape[0], -1, np.int64)
    uv_out = np.full((xyz.shape[0], 2), np.nan, np.float32)
    for c in range(t.shape[0]):
        pc = xyz @ t[c, :3, :3].T + t[c, :3, 3]
        d = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            pix = (pc @ k[c].T)[:, :2] / d[:, None]
        keep = ((d > min_depth) & (pix[:, 0] >= -0.5) & (pix[:, 0] < sizes[c, 0] - 0.5)
                & (pix[:, 1] >= -0.5) & (pix[:, 1] < sizes[c, 1] - 0.5))
        camera[keep] = c
        uv_out[keep] = pix[keep]
    return camera, uv_out


def transfer_counts(uv: np.ndarray, flag: np.ndarray, point_label: np.ndarray, point_instance: np.ndarray,
                    image_label: np.ndarray, image_instance: np.ndarray) -> tuple[int, int]:
    """(pairs, correct) of one camera: label transfer from the 2D truth at the projected pixel.

    uv (N, 2) float32, flag (N,) bool pairs to count; point_label (N,) class 1..K (0 = ignore, not
    counted), point_instance (N,) int64 (0 = stuff); image_label, image_instance (H, W). Correct when
    the pixel's (class, instance) equals the point's (so stuff compares the class).
    """
    sel = flag & (point_label > 0)
    if not sel.any():
        return 0, 0
    h, w = image_label.shape
    px = pixel_index(uv[sel], w, h)
    u, v = px[:, 0], px[:, 1]
    ok = (image_label[v, u] == point_label[sel]) & (image_instance[v, u] == point_instance[sel])
    return int(sel.sum()), int(ok.sum())


# ----------------------------------------------------------------------------------------- samples


def _transform(m: list[list[float]], sample: str, file: str, what: str) -> np.ndarray:
    try:
        return check_rigid(as_matrix(m), f"sample {sample}: {what} of {file}")
    except (GeometryError, ValueError) as e:
        raise DatasetError(str(e) if f"sample {sample}" in str(e) else f"sample {sample}: {what} of {file}: {e}") from e


def camera_setup(manifest: Manifest, sample: SampleRecord) -> tuple[np.ndarray, np.ndarray]:
    """Validated intrinsics (C, 3, 3) and image sizes (C, 2) (width, height) of a sample's cameras.

    Raises DatasetError naming the sample and the image file when an intrinsic is not a pinhole matrix
    with its principal point inside the image.
    """
    ks, sizes = [], []
    for cam in sample.cameras:
        f = str(manifest.resolve(cam.path))
        try:
            ks.append(check_intrinsic(np.asarray(cam.intrinsic, np.float64), cam.width, cam.height,
                                      f"sample {sample.token}: intrinsic of {cam.channel} image {f}"))
        except (GeometryError, ValueError) as e:
            raise DatasetError(str(e)) from e
        sizes.append((cam.width, cam.height))
    return np.stack(ks), np.asarray(sizes, np.int64)


def frame_to_cams(manifest: Manifest, sample: SampleRecord, frame: LidarFrame) -> np.ndarray:
    """(C, 4, 4) lidar(frame) -> ego(t_frame) -> global -> ego(t_cam) -> cam for every camera.

    Every transform is checked (finite, orthonormal rotation); DatasetError names the sample and file.
    """
    lf = str(manifest.resolve(frame.path))
    l2e = _transform(frame.lidar_to_ego, sample.token, lf, "lidar_to_ego")
    e2g = _transform(frame.ego_to_global, sample.token, lf, "ego_to_global")
    out = []
    for cam in sample.cameras:
        cf = str(manifest.resolve(cam.path))
        c2e = _transform(cam.cam_to_ego, sample.token, cf, f"{cam.channel} cam_to_ego")
        ce2g = _transform(cam.ego_to_global, sample.token, cf, f"{cam.channel} ego_to_global")
        out.append(lidar_to_cam(l2e, e2g, ce2g, c2e))
    return np.stack(out)


def nearest_sweeps(sample: SampleRecord, n: int) -> list[LidarFrame]:
    """The ``n`` neighbouring sweeps (previous and next) nearest in time to the keyframe."""
    both = list(sample.prev_sweeps) + list(sample.next_sweeps)
    both.sort(key=lambda f: abs(f.timestamp - sample.lidar.timestamp))
    return both[:n]


def _warm_up() -> None:
    """Compile (or load from the cache) the kernels before anything is timed."""
    p = AssociateParams()
    t = np.eye(4)[None].copy()
    uv, d, ii = project_points(np.ones((2, 3), np.float32), t, np.array([[[10.0, 0, 5], [0, 10, 5], [0, 0, 1]]]), [[10, 10]])
    occlusion_test(uv, d, ii, np.array([[[10.0, 0, 5], [0, 10, 5], [0, 0, 1]]]), [[10, 10]], p, [(uv, d)])


# ----------------------------------------------------------------------------------------- the stage


def _empty(c: int) -> Association:
    return Association(np.zeros((0, c, 2), np.float32), np.zeros((0, c), np.float32),
                       np.zeros((0, c), bool), np.zeros((0, c), bool))


def _new_counts() -> dict[str, int]:
    keys = ("truth_samples", "vis_tp", "vis_fp", "vis_fn", "in_image_tp", "in_image_fp", "in_image_fn",
            "transfer_visible_pairs", "transfer_visible_correct", "transfer_in_image_pairs",
            "transfer_in_image_correct", "transfer_truth_samples")
    return {k: 0 for k in keys}


def _truth_counts(manifest: Manifest, sample: SampleRecord, assoc: Association, counts: dict[str, int]) -> None:
    """Add the sample's visibility and label-transfer counts against the generator's truth (if any)."""
    from lidarlift import groundtruth as gt

    n = assoc.uv.shape[0]
    try:
        vis = gt.visibility_truth(manifest, sample)
    except (OSError, ValueError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"sample {sample.token}: visibility truth {manifest.resolve(sample.gt_visibility)} is unreadable: {e}") from e
    if vis is not None:
        vis = np.asarray(vis, bool)
        if vis.shape != assoc.visible.shape:
            raise DatasetError(f"sample {sample.token}: visibility truth {manifest.resolve(sample.gt_visibility)} "
                               f"has shape {vis.shape}, the sweep gives {assoc.visible.shape}")
        counts["truth_samples"] += 1
        for name, flag in (("vis", assoc.visible), ("in_image", assoc.in_image)):
            counts[f"{name}_tp"] += int((flag & vis).sum())
            counts[f"{name}_fp"] += int((flag & ~vis).sum())
            counts[f"{name}_fn"] += int((~flag & vis).sum())
    pt = gt.point_truth(manifest, sample)
    if pt is None or len(pt.label) != n:
        if pt is not None:
            raise DatasetError(f"sample {sample.token}: point truth has {len(pt.label)} points, the sweep {n}")
        return
    images = [gt.image_truth(manifest, sample, c) for c in range(len(sample.cameras))]
    if any(im is None for im in images):
        return
    counts["transfer_truth_samples"] += 1
    label, instance = pt.label.astype(np.int64), pt.instance.astype(np.int64)
    for c, (im_label, im_instance) in enumerate(images):
        cam = sample.cameras[c]
        if im_label.shape != (cam.height, cam.width):
            raise DatasetError(f"sample {sample.token}: 2D truth {manifest.resolve(cam.gt_panoptic2d)} is "
                               f"{im_label.shape[1]}x{im_label.shape[0]}, the image {cam.width}x{cam.height}")
        im_label = im_label.astype(np.int64)
        for name, flag in (("visible", assoc.visible), ("in_image", assoc.in_image)):
            pairs, correct = transfer_counts(assoc.uv[:, c], flag[:, c], label, instance, im_label, im_instance)
            counts[f"transfer_{name}_pairs"] += pairs
            counts[f"transfer_{name}_correct"] += correct


def _load_sample(manifest: Manifest, sample: SampleRecord, params: AssociateParams,
                 dropped: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    """Read and validate one keyframe: points (N, 3), lidar_to_cams, intrinsics, sizes, sweeps."""
    intr, sizes = camera_setup(manifest, sample)
    to_cams = frame_to_cams(manifest, sample, sample.lidar)
    pts = read_lidar(manifest.resolve(sample.lidar.path), sample.lidar.fmt, sample=sample.token)
    sweeps = []
    if params.occlusion:
        for frame in nearest_sweeps(sample, params.densify_sweeps):
            try:
                sweeps.append((read_lidar(manifest.resolve(frame.path), frame.fmt, sample=sample.token)[:, :3],
                               frame_to_cams(manifest, sample, frame)))
            except DatasetError as e:
                if params.bad_sample_policy == "error":
                    raise
                dropped.append({"sample": sample.token, "file": str(manifest.resolve(frame.path)), "reason": str(e)})
                log.warning("dropped neighbouring sweep: %s", e)
    return pts[:, :3], to_cams, intr, sizes, sweeps


def _bad_file(e: Exception, manifest: Manifest, sample: SampleRecord) -> str:
    """The file an error message names (the keyframe's lidar file when none is recognisable)."""
    msg = str(e)
    for rel in [sample.lidar.path] + [c.path for c in sample.cameras]:
        f = str(manifest.resolve(rel))
        if f in msg:
            return f
    return str(manifest.resolve(sample.lidar.path))


def run_shard(manifest_path: str | Path, shard: str, out_store: str | Path, metrics_path: str | Path,
              params: dict[str, Any] | AssociateParams | None = None) -> dict[str, Any]:
    """Associate every keyframe of ``shard``; write the ``associate`` store and the metrics JSON.

    ``params``: the ``associate`` config section plus ``bad_sample_policy`` (from ``dataset``).
    Metrics hold counts (summed by :func:`summarize`): visibility TP/FP/FN against the generator's
    truth (for ``visible`` and for the raw ``in_image``), label-transfer pairs and correct pairs over
    visible and over in_image pairs, points, wall and CPU seconds of association compute, skipped samples.
    Returns the metrics dict.
    """
    from lidarlift.workflow import write_json

    t_start = time.perf_counter()
    p = params if isinstance(params, AssociateParams) else AssociateParams.from_config(params)
    manifest = Manifest.from_json(manifest_path)
    samples = manifest.shard_samples(shard)
    n_cam = len(manifest.cameras)
    _warm_up()

    results: list[Association] = []
    skipped: list[dict[str, str]] = []
    dropped: list[dict[str, str]] = []
    truth_skipped: list[dict[str, str]] = []
    counts = _new_counts()
    seconds = cpu_seconds = 0.0
    for sample in samples:
        try:
            if len(sample.cameras) != n_cam:
                raise DatasetError(f"sample {sample.token}: {len(sample.cameras)} cameras in {manifest_path}, the manifest lists {n_cam}")
            xyz, to_cams, intr, sizes, sweeps = _load_sample(manifest, sample, p, dropped)
        except DatasetError as e:
            if p.bad_sample_policy == "error":
                raise
            skipped.append({"sample": sample.token, "file": _bad_file(e, manifest, sample), "reason": str(e)})
            log.warning("skipped sample: %s", e)
            results.append(_empty(n_cam))
            continue
        c0, t0 = time.thread_time(), time.perf_counter()
        assoc = associate(xyz, to_cams, intr, sizes, p, sweeps)
        seconds += time.perf_counter() - t0
        cpu_seconds += time.thread_time() - c0
        results.append(assoc)
        try:
            _truth_counts(manifest, sample, assoc, counts)
        except DatasetError as e:  # ground truth only feeds the metrics: the association stands
            if p.bad_sample_policy == "error":
                raise
            truth_skipped.append({"sample": sample.token, "reason": str(e)})
            log.warning("ground truth of a sample not scored: %s", e)
        log.info("sample %s: %d points, %d in image, %d visible pairs", sample.token, len(xyz),
                 int(assoc.in_image.sum()), int(assoc.visible.sum()))

    offsets = A.offsets_from_counts([len(r.uv) for r in results])
    stored = {**dataclasses.asdict(p)}
    with A.write_store(out_store, "associate", shard=shard, sample_tokens=[s.token for s in samples],
                       params=stored, cameras=list(manifest.cameras), skipped=skipped) as g:
        A.put(g, "point_offsets", offsets)
        A.put(g, "uv", np.concatenate([r.uv for r in results]))
        A.put(g, "depth", np.concatenate([r.depth for r in results]))
        A.put(g, "in_image", np.concatenate([r.in_image for r in results]))
        A.put(g, "visible", np.concatenate([r.visible for r in results]))

    points = int(offsets[-1])
    metrics = {
        "shard": shard,
        "samples": len(samples),
        "skipped": skipped,
        "dropped_sweeps": dropped,
        "truth_skipped": truth_skipped,
        "points": points,
        "pairs": points * n_cam,
        "in_image_pairs": int(sum(r.in_image.sum() for r in results)),
        "visible_pairs": int(sum(r.visible.sum() for r in results)),
        "seconds_compute": seconds,
        "cpu_seconds_compute": cpu_seconds,
        "seconds_total": time.perf_counter() - t_start,
        **counts,
        "params": stored,
    }
    write_json(metrics_path, metrics)
    return metrics


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary key ``association``: counts summed over shards, then divided.

    visible_precision / visible_recall (visible flag vs the generator's visibility truth);
    transfer_accuracy (over visible pairs) and transfer_accuracy_no_occlusion (over in_image pairs);
    points_per_second: keyframe points per CPU-second of association compute (projection, depth
    buffers, occlusion test; one thread, file reading and scoring excluded; a per-core rate that a busy
    machine does not distort; points_per_second_wall is the same over wall time); plus the raw projection's
    in_image_precision / in_image_recall, pair counts and the skipped samples. Ratios are None where
    there is no truth.
    """
    tot: dict[str, float] = {}
    for m in metrics:
        for k, v in m.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                tot[k] = tot.get(k, 0) + v
    g = tot.get
    return {
        "visible_precision": _ratio(g("vis_tp", 0), g("vis_tp", 0) + g("vis_fp", 0)),
        "visible_recall": _ratio(g("vis_tp", 0), g("vis_tp", 0) + g("vis_fn", 0)),
        "transfer_accuracy": _ratio(g("transfer_visible_correct", 0), g("transfer_visible_pairs", 0)),
        "transfer_accuracy_no_occlusion": _ratio(g("transfer_in_image_correct", 0), g("transfer_in_image_pairs", 0)),
        "points_per_second": _ratio(g("points", 0), g("cpu_seconds_compute", 0)),
        "pairs_per_second": _ratio(g("pairs", 0), g("cpu_seconds_compute", 0)),
        "points_per_second_wall": _ratio(g("points", 0), g("seconds_compute", 0)),
        "in_image_precision": _ratio(g("in_image_tp", 0), g("in_image_tp", 0) + g("in_image_fp", 0)),
        "in_image_recall": _ratio(g("in_image_tp", 0), g("in_image_tp", 0) + g("in_image_fn", 0)),
        "points": float(g("points", 0)),
        "in_image_pairs": float(g("in_image_pairs", 0)),
        "visible_pairs": float(g("visible_pairs", 0)),
        "samples": float(g("samples", 0)),
        "samples_skipped": float(sum(len(m.get("skipped", [])) for m in metrics)),
        "skipped": [s for m in metrics for s in m.get("skipped", [])],
    }
