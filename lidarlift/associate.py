"""Occlusion-aware point-pixel association of keyframe LiDAR points with every camera (stage ``associate``).

For every keyframe point and camera: pixel (u, v), depth, the raw projection flag ``in_image`` (what
every anchor keeps: depth > ``min_depth`` and pixel inside the image) and ``visible`` = ``in_image``
and no nearer surface covers the pixel. Points seen by several cameras keep all their views.

Projection chain (ego-motion compensated): lidar -> ego(t_lidar) -> global -> ego(t_cam) -> cam ->
image (:func:`lidarlift.geometry.lidar_to_cam`).

Occlusion test: per camera a depth buffer is built from the projected points themselves (optionally
densified with neighbouring sweeps, ego-motion compensated): each point is splatted as an ellipse with
half-axes ``focal * clip(footprint_m / depth, tan(footprint_beams * s), tan(footprint_max_beams * s))``
pixels, where ``s`` is the sweep's angular spacing at the point along that axis -- the azimuth step
along the image rows, the vertical beam spacing at its elevation along the columns -- measured from
the sweep itself (:func:`lidarlift.scan.measure_scan`; ring ids where the file has them) or
``beam_spacing_deg`` when set. A point stands for a surface patch (near points cover more pixels);
the floor (half a step: the footprints of neighbouring returns just meet) closes the gaps between
returns and the ceiling keeps a footprint off the next return's neighbours behind it, on any scanner:
the same defaults serve 32, 64 and 128 beams. The footprint is an ellipse because the steps differ: a
32-beam sensor's returns lie 6 times closer along a scan line (0.21 deg) than between its beams (1.33
deg), and a round disc sized for the beams bled sideways over the background (6.8% of the visible far
ground hidden at 30-50 m on the evaluation worlds, seeds 2-4). At a silhouette's top edge (no return
on the next beam up continues the surface: :func:`upper_edge`) the footprint reaches up only
``footprint_top_edge`` of the spacing, so the far ground the camera sees just over a fence stays
visible (12% of it was hidden over a fence on one evaluation world). A point is visible when ``depth <=
zbuf(pixel) * (1 + depth_rel_tol) + depth_abs_tol``. The buffer of a wide image is downscaled to
``buffer_max_width`` and large footprints are drawn on coarser levels of a buffer pyramid
(``splat_max_radius_px``), so a point costs a bounded number of writes; neither changed the measured accuracy at 1600x900. Kernels (numba):
:mod:`lidarlift.depthbuffer`. Densifying the buffer with neighbouring sweeps raised precision but cost
more recall on the synthetic world (moving objects leave trails), so ``densify_sweeps`` is 0 by default.

Pixel convention: ``uv`` follows the intrinsics (OpenCV): pixel centres at integer coordinates, so a
point lies in pixel :func:`pixel_index` = (round(u), round(v)); in an image scaled by ``s`` that is
``floor((uv + 0.5) * s)``.

Bad input (NaN/inf coordinates, empty or truncated sweeps, non-rigid transforms, principal point
outside the image) raises :class:`lidarlift.datasets.DatasetError` naming the sample and the file,
or with ``bad_sample_policy: skip`` the sample gets zero points and is listed in the stats'
``skipped``. A bad neighbouring sweep (densification only) is dropped under ``skip`` and listed in
``dropped_sweeps``. Quality against the generator's truth: :mod:`lidarlift.evaluate.association`.
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
from lidarlift.scan import ScanResolution, read_sweep, resolve_resolution

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AssociateParams:
    """Parameters of the ``associate`` config section plus ``dataset.bad_sample_policy`` (defaults and
    meaning of each key: config/schema.yaml; fitted values: tuning world seed 1, bench/bench_scanners.py)."""

    min_depth: float
    occlusion: bool
    footprint_m: float
    footprint_beams: float
    footprint_max_beams: float
    footprint_top_edge: float
    beam_spacing_deg: float | None
    depth_rel_tol: float
    depth_abs_tol: float
    buffer_max_width: int
    splat_max_radius_px: float
    densify_sweeps: int
    bad_sample_policy: str  # dataset.bad_sample_policy

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None = None) -> "AssociateParams":
        """From the ``associate`` section (plus ``bad_sample_policy``; missing keys take the schema's
        defaults); unknown keys and bad values raise ConfigError naming the config key."""
        from lidarlift.config import ConfigError, section, typed

        cfg = dict(cfg or {})
        policy = {"bad_sample_policy": cfg.pop("bad_sample_policy")} if "bad_sample_policy" in cfg else {}
        dataset = section("dataset", policy)
        p = typed(cls, "associate", cfg, extra={"bad_sample_policy": dataset["bad_sample_policy"]})
        if p.footprint_max_beams < p.footprint_beams:
            raise ConfigError([f"config key associate.footprint_max_beams: {p.footprint_max_beams!r} is below "
                               f"associate.footprint_beams ({p.footprint_beams!r})"])
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


def footprint_bounds(spacing: np.ndarray, params: AssociateParams) -> tuple[np.ndarray, np.ndarray]:
    """Per-point (tan_min, tan_max) (M, 3) float32 of the footprint's angular half-widths along the image
    rows, downwards and upwards: ``footprint_beams`` and ``footprint_max_beams`` times the points'
    angular spacing ``spacing``: (M, 3) rad (:func:`footprint_spacing`: the azimuth step, the vertical
    beam spacing below and above, 0 above a silhouette's top edge), (M, 2) (azimuth step, vertical
    spacing) or (M,) rad, one spacing for every direction (a round footprint)."""
    s = _as_directions(spacing)
    return (np.tan(np.minimum(params.footprint_beams * s, 1.5)).astype(np.float32),
            np.tan(np.minimum(params.footprint_max_beams * s, 1.5)).astype(np.float32))


def _as_directions(spacing: np.ndarray) -> np.ndarray:
    """(M, 3) float64 (along the rows, downwards, upwards) from a (M,), (M, 2) or (M, 3) spacing."""
    s = np.asarray(spacing, np.float64)
    if s.ndim == 1:
        return np.repeat(s.reshape(-1, 1), 3, axis=1)
    if s.shape[1] == 2:
        return s[:, [0, 1, 1]]
    return s.reshape(-1, 3)


#: A return's neighbour on the next beam up continues its surface when the angle criterion (Bogoslavskyi
#: & Stachniss's published threshold, not fitted) holds between them; otherwise the return is a top edge.
EDGE_ANGLE_DEG = 10.0


def upper_edge(xyz: np.ndarray, scan: ScanResolution) -> np.ndarray:
    """(N,) bool: returns at the top edge of a silhouette -- no return on the next beam up within one
    azimuth step of their column continues their surface (none there, or only one behind a depth jump:
    the angle criterion below :data:`EDGE_ANGLE_DEG`). ``xyz`` (N, 3) sensor frame; beams and columns
    from the sweep's resolution ``scan`` (no ring ids needed)."""
    xyz = np.asarray(xyz, np.float64)
    n = len(xyz)
    if n == 0:
        return np.zeros(0, bool)
    rho = np.hypot(xyz[:, 0], xyz[:, 1])
    r = np.maximum(np.linalg.norm(xyz, axis=1), 1e-6)
    el = np.arctan2(xyz[:, 2], rho)
    n_cols = max(1, int(round(2 * math.pi / scan.azimuth_step)))
    beam = np.rint(scan.beam_index(el)).astype(np.int64)
    beam -= beam.min()
    col = np.rint((np.arctan2(xyz[:, 1], xyz[:, 0]) + math.pi) / scan.azimuth_step).astype(np.int64) % n_cols
    # the range image as a dense (beams + 1) x columns grid holding the first return of each cell
    idx = np.arange(n)
    first = np.full((int(beam.max()) + 2) * n_cols, n, np.int64)
    np.minimum.at(first, beam * n_cols + col, idx)
    continued = zb.continued_upward(first, beam, col, r, scan.vertical_spacing(el), n_cols, math.radians(EDGE_ANGLE_DEG))
    return ~continued


def footprint_spacing(xyz: np.ndarray, scan: ScanResolution, top_edge: float = 1.0) -> np.ndarray:
    """(N, 3) float64 rad the angular spacing a return's footprint spans in each direction (the
    :func:`footprint_bounds` input): the azimuth step along the scan line, the vertical beam spacing
    below, and above -- ``top_edge`` times it where the return is a silhouette's top edge
    (:func:`upper_edge`): the edge lies somewhere up to a beam above it, and the background the camera
    sees just over the edge (far ground over a fence or a car) must not be covered; below 1, the
    camera's parallax (it sits lower than the LiDAR, so a near object hides more of what lies behind it)
    is traded against that."""
    s = scan.spacing_hv(xyz)
    up = np.where(upper_edge(xyz, scan), top_edge * s[:, 1], s[:, 1]) if top_edge < 1 else s[:, 1]
    return np.column_stack([s, up])


def _spacing_or_override(spacing: np.ndarray | None, n: int, params: AssociateParams, what: str) -> np.ndarray:
    if spacing is not None:
        s = _as_directions(spacing)
        if len(s) != n:
            raise ValueError(f"{what}: spacing has {len(s)} values for {n} points")
        return s
    if params.beam_spacing_deg is None:
        raise ValueError(f"{what}: the points' angular spacing is needed (lidarlift.scan.ScanResolution.spacing_hv) "
                         "or config key associate.beam_spacing_deg")
    return np.full((n, 3), math.radians(params.beam_spacing_deg))


class _Pyramid:
    """The depth-buffer pyramid of one camera geometry (level-0 size, scale, focal, level layout);
    ``tan_max`` bounds every disc's angular radius (it sizes the pyramid)."""

    def __init__(self, focal: float, width: int, height: int, params: AssociateParams, tan_max: float):
        self.h, self.w, self.scale = zb.buffer_shape(width, height, params.buffer_max_width)
        self.focal = focal * self.scale
        self.tan_max = float(tan_max)
        levels = 1
        if params.splat_max_radius_px > 0:
            r_max = self.focal * self.tan_max
            levels += max(0, math.ceil(math.log2(max(r_max, 1e-9) / params.splat_max_radius_px)))
        self.offsets, self.widths, self.heights, self.size = zb.pyramid_layout(self.h, self.w, min(levels, 12))
        self.zbuf = _scratch(self.size)
        self.params = params

    def clear(self) -> None:
        self.zbuf.fill(np.inf)

    def splat(self, uv: np.ndarray, depth: np.ndarray, tan_min: np.ndarray, tan_max: np.ndarray, cam: int) -> None:
        p = self.params
        zb.splat_kernel(uv, depth, cam, self.scale, self.focal, p.footprint_m, tan_min, tan_max,
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
                 params: AssociateParams, spacing: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Depth buffer of one camera from the points' projections (for inspection; the stage uses the
    same kernels through :func:`occlusion_test`).

    uv (M, 2) float32 full-resolution pixels, depth (M,) float32 metres; focal: fx in full-resolution
    pixels; image_size (width, height); spacing (M, 2) or (M,) rad the points' angular spacing (:func:`footprint_bounds`; None:
    ``params.beam_spacing_deg``). Returns (zbuf (h, w) float32 nearest depth per buffer pixel, +inf
    where no point covers it; scale = buffer / image resolution).
    """
    depth = np.ascontiguousarray(depth, dtype=np.float32).reshape(-1, 1)
    t_min, t_max = footprint_bounds(_spacing_or_override(spacing, len(depth), params, "depth_buffer"), params)
    pyr = _Pyramid(float(focal), int(image_size[0]), int(image_size[1]), params, float(t_max.max(initial=0.0)))
    pyr.clear()
    pyr.splat(np.ascontiguousarray(uv, dtype=np.float32).reshape(-1, 1, 2), depth, t_min, t_max, 0)
    return pyr.collapse(), pyr.scale


def occlusion_test(uv: np.ndarray, depth: np.ndarray, in_image: np.ndarray, intrinsics: np.ndarray,
                   image_sizes: np.ndarray, params: AssociateParams,
                   occluders: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]] = (),
                   spacing: np.ndarray | None = None) -> np.ndarray:
    """visible (N, C) bool: in_image and no nearer surface covers the point's pixel in that camera.

    uv (N, C, 2), depth (N, C), in_image (N, C) from :func:`project_points`; intrinsics (C, 3, 3);
    image_sizes (C, 2) (width, height); spacing (N, 2) or (N,) rad the points' angular spacing
    (:meth:`lidarlift.scan.ScanResolution.spacing_hv`; None: ``params.beam_spacing_deg``). ``occluders``:
    further (uv (M, C, 2), depth (M, C), spacing (M, 2) or (M,)) point sets (e.g. neighbouring sweeps projected
    into the same cameras) that only feed the depth buffers. With ``params.occlusion`` False,
    visible = in_image.
    """
    if not params.occlusion:
        return in_image.copy()
    k = np.asarray(intrinsics, dtype=np.float64).reshape(-1, 3, 3)
    sizes = np.asarray(image_sizes, dtype=np.int64).reshape(-1, 2)
    uv = np.ascontiguousarray(uv, dtype=np.float32)
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    in_image = np.ascontiguousarray(in_image, dtype=np.bool_)
    visible = np.zeros(in_image.shape, np.bool_)
    sets = [(uv, depth, *footprint_bounds(_spacing_or_override(spacing, len(uv), params, "occlusion_test"), params))]
    for u, d, s in occluders:
        sets.append((np.ascontiguousarray(u, dtype=np.float32), np.ascontiguousarray(d, dtype=np.float32),
                     *footprint_bounds(_spacing_or_override(s, len(u), params, "occlusion_test occluders"), params)))
    tan_max = max(float(t.max(initial=0.0)) for *_, t in sets)
    pyramids: dict[tuple[float, int, int], _Pyramid] = {}
    for c in range(k.shape[0]):
        key = (float(k[c, 0, 0]), int(sizes[c, 0]), int(sizes[c, 1]))
        pyr = pyramids.get(key)
        if pyr is None:
            pyr = pyramids[key] = _Pyramid(*key, params, tan_max)
        pyr.clear()
        for pts_uv, pts_depth, t_min, t_max in sets:
            pyr.splat(pts_uv, pts_depth, t_min, t_max, c)
        pyr.test(uv, depth, in_image, c, visible)
    return visible


def associate(xyz: np.ndarray, lidar_to_cams: np.ndarray, intrinsics: np.ndarray, image_sizes: np.ndarray,
              params: AssociateParams, sweeps: Sequence[tuple[np.ndarray, np.ndarray]] = (),
              scan: ScanResolution | None = None) -> Association:
    """Project (N, 3) keyframe points (lidar frame) into C cameras and test occlusion.

    lidar_to_cams (C, 4, 4), intrinsics (C, 3, 3), image_sizes (C, 2) as in :func:`project_points`.
    ``sweeps``: neighbouring sweeps for a denser depth buffer, each (xyz (M, 3) in its own lidar
    frame, sweep_to_cams (C, 4, 4) ego-motion compensated into each camera). ``scan``: the keyframe's
    angular resolution (:func:`lidarlift.scan.measure_scan`; the neighbouring sweeps share it); None:
    ``params.beam_spacing_deg`` when set, else measured from ``xyz`` here (ring-less; raises
    :class:`lidarlift.scan.ScanError` for points without a beam structure).
    """
    uv, depth, in_image = project_points(xyz, lidar_to_cams, intrinsics, image_sizes, params.min_depth)
    if not params.occlusion:
        return Association(uv, depth, in_image, in_image.copy())
    if scan is None:
        scan = resolve_resolution(np.asarray(xyz)[:, :3], None, params.beam_spacing_deg)
    occluders = []
    for sweep_xyz, sweep_to_cams in sweeps:
        s_uv, s_depth, _ = project_points(sweep_xyz, sweep_to_cams, intrinsics, image_sizes, params.min_depth)
        occluders.append((s_uv, s_depth, footprint_spacing(sweep_xyz, scan, params.footprint_top_edge)))
    visible = occlusion_test(uv, depth, in_image, intrinsics, image_sizes, params, occluders,
                             footprint_spacing(xyz, scan, params.footprint_top_edge))
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
    p = AssociateParams.from_config({"beam_spacing_deg": 1.0})
    t = np.eye(4)[None].copy()
    uv, d, ii = project_points(np.ones((2, 3), np.float32), t, np.array([[[10.0, 0, 5], [0, 10, 5], [0, 0, 1]]]), [[10, 10]])
    occlusion_test(uv, d, ii, np.array([[[10.0, 0, 5], [0, 10, 5], [0, 0, 1]]]), [[10, 10]], p, [(uv, d, np.full(2, 0.02))])


# ----------------------------------------------------------------------------------------- the stage


def _empty(c: int) -> Association:
    return Association(np.zeros((0, c, 2), np.float32), np.zeros((0, c), np.float32),
                       np.zeros((0, c), bool), np.zeros((0, c), bool))


def _load_sample(manifest: Manifest, sample: SampleRecord, params: AssociateParams,
                 dropped: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list, ScanResolution]:
    """Read and validate one keyframe: points (N, 3), lidar_to_cams, intrinsics, sizes, sweeps and its
    angular resolution (:func:`lidarlift.scan.read_sweep`: measured, or ``beam_spacing_deg``)."""
    intr, sizes = camera_setup(manifest, sample)
    to_cams = frame_to_cams(manifest, sample, sample.lidar)
    pts, scan = read_sweep(manifest.resolve(sample.lidar.path), sample.lidar.fmt, sample.token, params.beam_spacing_deg)
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
    return pts[:, :3], to_cams, intr, sizes, sweeps, scan


def _bad_file(e: Exception, manifest: Manifest, sample: SampleRecord) -> str:
    """The file an error message names (the keyframe's lidar file when none is recognisable)."""
    msg = str(e)
    for rel in [sample.lidar.path] + [c.path for c in sample.cameras]:
        f = str(manifest.resolve(rel))
        if f in msg:
            return f
    return str(manifest.resolve(sample.lidar.path))


def run_shard(manifest_path: str | Path, shard: str, out_store: str | Path, stats_path: str | Path | None,
              params: dict[str, Any] | AssociateParams | None = None) -> dict[str, Any]:
    """Associate every keyframe of ``shard``; write the ``associate`` store and the stats JSON.

    ``params``: the ``associate`` config section plus ``bad_sample_policy`` (from ``dataset``).
    Stats (no ground truth; :mod:`lidarlift.evaluate.association` scores the store): points, pairs,
    in-image and visible pairs, wall and CPU seconds of association compute (projection, depth buffers,
    occlusion test; one thread, file reading excluded), skipped samples and dropped sweeps.
    Returns the stats dict.
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
    seconds = cpu_seconds = 0.0
    for sample in samples:
        try:
            if len(sample.cameras) != n_cam:
                raise DatasetError(f"sample {sample.token}: {len(sample.cameras)} cameras in {manifest_path}, the manifest lists {n_cam}")
            xyz, to_cams, intr, sizes, sweeps, scan = _load_sample(manifest, sample, p, dropped)
        except DatasetError as e:
            if p.bad_sample_policy == "error":
                raise
            skipped.append({"sample": sample.token, "file": _bad_file(e, manifest, sample), "reason": str(e)})
            log.warning("skipped sample: %s", e)
            results.append(_empty(n_cam))
            continue
        c0, t0 = time.thread_time(), time.perf_counter()
        assoc = associate(xyz, to_cams, intr, sizes, p, sweeps, scan)
        seconds += time.perf_counter() - t0
        cpu_seconds += time.thread_time() - c0
        results.append(assoc)
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
    stats = {
        "shard": shard,
        "samples": len(samples),
        "skipped": skipped,
        "dropped_sweeps": dropped,
        "points": points,
        "pairs": points * n_cam,
        "in_image_pairs": int(sum(r.in_image.sum() for r in results)),
        "visible_pairs": int(sum(r.visible.sum() for r in results)),
        "seconds_compute": seconds,
        "cpu_seconds_compute": cpu_seconds,
        "seconds_total": time.perf_counter() - t_start,
        "params": stored,
    }
    if stats_path is not None:
        write_json(stats_path, stats)
    return stats
