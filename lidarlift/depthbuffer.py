"""Compiled kernels of the association stage: pinhole projection and the per-camera depth buffer.

The depth buffer answers "does a nearer surface cover this pixel?" from the LiDAR points alone: every
projected point is splatted as an ellipse whose half-axes grow as its depth shrinks (a point stands for
a surface patch of ``footprint_m`` metres), each clipped to the point's own angular range along that
axis (upwards and downwards apart) -- a floor that closes the gaps between neighbouring returns and a
ceiling, in units of the sweep's measured azimuth step (along the image rows) and vertical beam spacing
(along the columns) at the point (:mod:`lidarlift.scan`), so that the footprint never reaches the next
return's neighbours behind it (:mod:`lidarlift.associate` explains the choice). A point is visible when
its depth is within a tolerance of the nearest depth at its own pixel. Large footprints are drawn on
coarser levels of a buffer pyramid (cells of 2^L x 2^L pixels) so that every point costs a bounded
number of writes; a pixel's depth is the minimum over the levels. Kernels are numba-compiled, single-threaded (``threads: 1`` per job), cached
on disk; they take contiguous arrays and write into caller-allocated outputs.
"""
from __future__ import annotations

import math

import numba
import numpy as np

_JIT = dict(nopython=True, cache=True, nogil=True, fastmath=False)


@numba.jit(**_JIT)
def project_kernel(xyz, rot, trans, intr, width, height, min_depth, uv, depth, in_image):  # pragma: no cover - compiled
    """Project (N, 3) points into C cameras.

    xyz (N, 3) float32/float64 source frame; rot (C, 3, 3) float64 and trans (C, 3) float64 map the
    source frame into each camera frame; intr (C, 3, 3) float64; width, height (C,) int64.
    Writes uv (N, C, 2) float32 (NaN where depth <= 0), depth (N, C) float32, in_image (N, C) bool
    (depth > min_depth and the pixel (round(u), round(v)) inside the image: pixel centres at integer
    coordinates, the OpenCV convention of the intrinsics).
    """
    n = xyz.shape[0]
    n_cam = rot.shape[0]
    nan = np.float32(np.nan)
    for i in range(n):
        x = np.float64(xyz[i, 0])
        y = np.float64(xyz[i, 1])
        z = np.float64(xyz[i, 2])
        for c in range(n_cam):
            xc = rot[c, 0, 0] * x + rot[c, 0, 1] * y + rot[c, 0, 2] * z + trans[c, 0]
            yc = rot[c, 1, 0] * x + rot[c, 1, 1] * y + rot[c, 1, 2] * z + trans[c, 1]
            zc = rot[c, 2, 0] * x + rot[c, 2, 1] * y + rot[c, 2, 2] * z + trans[c, 2]
            depth[i, c] = zc
            if zc > 0.0:
                xn = xc / zc
                yn = yc / zc
                u = intr[c, 0, 0] * xn + intr[c, 0, 1] * yn + intr[c, 0, 2]
                v = intr[c, 1, 1] * yn + intr[c, 1, 2]
                uv[i, c, 0] = u
                uv[i, c, 1] = v
                in_image[i, c] = zc > min_depth and u >= -0.5 and u < width[c] - 0.5 and v >= -0.5 and v < height[c] - 0.5
            else:
                uv[i, c, 0] = nan
                uv[i, c, 1] = nan
                in_image[i, c] = False


@numba.jit(**_JIT)
def splat_kernel(uv, depth, cam, scale, focal, footprint_m, tan_min, tan_max, min_depth, max_level_radius,
                 zbuf, lvl_off, lvl_w, lvl_h):  # pragma: no cover - compiled
    """Splat the points of camera ``cam`` into the depth-buffer pyramid ``zbuf`` (min depth per pixel).

    uv (M, C, 2) float32 full-resolution pixels, depth (M, C) float32; tan_min, tan_max (M, 3) float32
    per-point bounds of the footprint's angular half-widths (tangents): column 0 along the image rows
    (the LiDAR's azimuth), column 1 downwards and column 2 upwards along the image columns (its
    elevation); ``scale`` = buffer level 0 / image resolution; ``focal`` in level-0 pixels. The
    footprint is an ellipse (two half-ellipses, above and below the point) with half-axes (level-0 px)
    ``focal * clip(footprint_m / depth, tan_min[i, k], tan_max[i, k])``; one wider than
    ``max_level_radius`` is drawn on the first coarser level (2^L x 2^L pixels per cell) where it is
    not, so each point costs a bounded number of writes. ``zbuf`` is the flat float32 pyramid, level L
    at ``lvl_off[L]`` with ``lvl_h[L]`` rows of ``lvl_w[L]``. Points with depth <= min_depth do not occlude.
    """
    n_lvl = lvl_off.shape[0]
    for i in range(uv.shape[0]):
        d = depth[i, cam]
        if not d > min_depth:
            continue
        t = footprint_m / d
        ru = focal * max(min(t, tan_max[i, 0]), tan_min[i, 0])
        rd = focal * max(min(t, tan_max[i, 1]), tan_min[i, 1])
        rt = focal * max(min(t, tan_max[i, 2]), tan_min[i, 2])
        lvl = 0
        cell = 1.0
        while max(ru, rd, rt) > max_level_radius and lvl < n_lvl - 1:
            ru *= 0.5
            rd *= 0.5
            rt *= 0.5
            cell *= 2.0
            lvl += 1
        w = lvl_w[lvl]
        h = lvl_h[lvl]
        off = lvl_off[lvl]
        # cells whose centre lies inside the footprint (continuous position); half-axes >= 0.71 so that
        # the point's own cell is always covered
        ru = max(ru, 0.71)
        rd = max(rd, 0.71)
        rt = max(rt, 0.71)
        # (u + 0.5) * scale: buffer coordinates in which cell x covers [x, x + 1)
        pu = (uv[i, cam, 0] + 0.5) * scale / cell
        pv = (uv[i, cam, 1] + 0.5) * scale / cell
        if pu + ru < 0.0 or pu - ru > w or pv + rd < 0.0 or pv - rt > h:
            continue
        df = np.float32(d)
        y0 = max(int(math.ceil(pv - rt - 0.5)), 0)
        y1 = min(int(math.floor(pv + rd - 0.5)), h - 1)
        for y in range(y0, y1 + 1):
            dy = y + 0.5 - pv
            dy = dy / rd if dy >= 0.0 else dy / rt
            hw = ru * math.sqrt(max(1.0 - dy * dy, 0.0))
            x0 = max(int(math.ceil(pu - hw - 0.5)), 0)
            x1 = min(int(math.floor(pu + hw - 0.5)), w - 1)
            row = off + y * w
            for x in range(row + x0, row + x1 + 1):
                zbuf[x] = min(zbuf[x], df)


@numba.jit(**_JIT)
def visible_kernel(uv, depth, in_image, cam, scale, zbuf, lvl_off, lvl_w, lvl_h, rel_tol, abs_tol, visible):  # pragma: no cover - compiled
    """visible[i, cam] = in_image[i, cam] and depth <= zbuf(pixel) * (1 + rel_tol) + abs_tol, where
    zbuf(pixel) is the minimum over the pyramid levels of the cells holding the pixel."""
    n_lvl = lvl_off.shape[0]
    h0 = lvl_h[0]
    w0 = lvl_w[0]
    for i in range(uv.shape[0]):
        if not in_image[i, cam]:
            visible[i, cam] = False
            continue
        x = min(int((uv[i, cam, 0] + 0.5) * scale), w0 - 1)
        y = min(int((uv[i, cam, 1] + 0.5) * scale), h0 - 1)
        z = np.float32(np.inf)
        for lvl in range(n_lvl):
            z = min(z, zbuf[lvl_off[lvl] + (y >> lvl) * lvl_w[lvl] + (x >> lvl)])
        visible[i, cam] = depth[i, cam] <= z * (1.0 + rel_tol) + abs_tol


@numba.jit(**_JIT)
def collapse_kernel(zbuf, lvl_off, lvl_w, lvl_h, out):  # pragma: no cover - compiled
    """out (h, w) = per level-0 pixel minimum over the pyramid levels (for inspection and tests)."""
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            z = np.float32(np.inf)
            for lvl in range(lvl_off.shape[0]):
                z = min(z, zbuf[lvl_off[lvl] + (y >> lvl) * lvl_w[lvl] + (x >> lvl)])
            out[y, x] = z


def buffer_shape(width: int, height: int, max_width: int) -> tuple[int, int, float]:
    """(h, w, scale) of level 0 of the depth buffer of a width x height image; ``max_width`` 0 = full resolution."""
    scale = 1.0 if max_width <= 0 or width <= max_width else max_width / width
    return max(1, int(math.ceil(height * scale))), max(1, int(math.ceil(width * scale))), scale


def pyramid_layout(h: int, w: int, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(offsets, widths, heights) int64 of ``levels`` pyramid levels of an h x w buffer, and its total size."""
    offs, ws, hs, total = [], [], [], 0
    for lvl in range(levels):
        cell = 1 << lvl
        lw, lh = -(-w // cell), -(-h // cell)
        offs.append(total)
        ws.append(lw)
        hs.append(lh)
        total += lw * lh
    return np.asarray(offs, np.int64), np.asarray(ws, np.int64), np.asarray(hs, np.int64), total


@numba.jit(**_JIT)
def continued_upward(first: np.ndarray, beam: np.ndarray, col: np.ndarray, r: np.ndarray, spacing: np.ndarray,
                     n_cols: int, min_angle: float) -> np.ndarray:  # pragma: no cover - compiled
    """(N,) bool: a return whose cell one beam up, in its own or a neighbouring column, holds a return
    (``first``: the first return of each ``beam * n_cols + col`` cell, N where empty) on the same surface
    -- the angle between the two returns seen from the nearer one, ``atan2(d2 sin s, d1 - d2 cos s)``
    with ``s`` the vertical spacing, above ``min_angle`` (no depth jump between them)."""
    n = len(beam)
    out = np.zeros(n, np.bool_)
    for i in range(n):
        row = (beam[i] + 1) * n_cols
        s = spacing[i]
        for dc in (-1, 0, 1):
            j = first[row + (col[i] + dc) % n_cols]
            if j < n:
                d1, d2 = max(r[i], r[j]), min(r[i], r[j])
                if math.atan2(d2 * math.sin(s), d1 - d2 * math.cos(s)) > min_angle:
                    out[i] = True
                    break
    return out
