"""Rigid transforms and the lidar -> camera projection chain.

Frames: ``lidar`` (sensor), ``ego`` (vehicle body at a timestamp), ``global`` (world), ``cam``
(camera: x right, y down, z forward). A transform ``a_to_b`` is a (4, 4) float64 matrix with
``p_b = a_to_b @ p_a`` for homogeneous column points.
"""
from __future__ import annotations

import numpy as np


class GeometryError(ValueError):
    """A transform or intrinsic matrix is not what it must be."""


def quaternion_to_matrix(q_wxyz) -> np.ndarray:
    """(3, 3) rotation from a unit quaternion (w, x, y, z), the nuScenes convention."""
    w, x, y, z = np.asarray(q_wxyz, dtype=np.float64)
    n = np.sqrt(w * w + x * x + y * y + z * z)
    if not np.isfinite(n) or n < 1e-9:
        raise GeometryError(f"quaternion {q_wxyz} is not a rotation")
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """(4,) quaternion (w, x, y, z) with w >= 0 from a (3, 3) rotation."""
    r = np.asarray(r, dtype=np.float64)
    t = np.trace(r)
    if t > 0:
        s = np.sqrt(t + 1.0) * 2
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
        q = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif r[1, 1] > r[2, 2]:
        s = np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
        q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
    else:
        s = np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
        q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    return q if q[0] >= 0 else -q


def make_transform(rotation: np.ndarray, translation) -> np.ndarray:
    """(4, 4) from a (3, 3) rotation or (4,) quaternion (w, x, y, z) and a (3,) translation."""
    rotation = np.asarray(rotation, dtype=np.float64)
    if rotation.shape == (4,):
        rotation = quaternion_to_matrix(rotation)
    t = np.eye(4)
    t[:3, :3] = rotation
    t[:3, 3] = np.asarray(translation, dtype=np.float64)
    return t


def check_rigid(t: np.ndarray, what: str, atol: float = 1e-4) -> np.ndarray:
    """Raise GeometryError naming ``what`` unless ``t`` is a finite 4x4 rigid transform."""
    t = np.asarray(t, dtype=np.float64)
    if t.shape != (4, 4) or not np.all(np.isfinite(t)):
        raise GeometryError(f"{what}: transform must be a finite 4x4 matrix, got shape {t.shape}")
    r = t[:3, :3]
    if not np.allclose(r @ r.T, np.eye(3), atol=atol) or abs(np.linalg.det(r) - 1.0) > atol:
        raise GeometryError(f"{what}: rotation is not orthonormal (R R^T - I max {np.abs(r @ r.T - np.eye(3)).max():.2e}, det {np.linalg.det(r):.4f})")
    if not np.allclose(t[3], [0, 0, 0, 1]):
        raise GeometryError(f"{what}: last row must be [0, 0, 0, 1], got {t[3].tolist()}")
    return t


def check_intrinsic(k: np.ndarray, width: int, height: int, what: str) -> np.ndarray:
    """Raise GeometryError naming ``what`` unless ``k`` is a pinhole matrix with its principal point inside the image."""
    k = np.asarray(k, dtype=np.float64)
    if k.shape != (3, 3) or not np.all(np.isfinite(k)):
        raise GeometryError(f"{what}: intrinsic must be a finite 3x3 matrix, got shape {k.shape}")
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise GeometryError(f"{what}: focal lengths must be positive, got fx={k[0, 0]}, fy={k[1, 1]}")
    cx, cy = k[0, 2], k[1, 2]
    if not (0 <= cx < width and 0 <= cy < height):
        raise GeometryError(f"{what}: principal point ({cx:.1f}, {cy:.1f}) lies outside the {width}x{height} image")
    return k


def invert(t: np.ndarray) -> np.ndarray:
    """Inverse of a rigid (4, 4) transform."""
    r, p = t[:3, :3], t[:3, 3]
    out = np.eye(4)
    out[:3, :3] = r.T
    out[:3, 3] = -r.T @ p
    return out


def transform_points(t: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Apply (4, 4) ``t`` to (N, 3) points; returns (N, 3) in the dtype of ``xyz``."""
    out = xyz.astype(np.float64, copy=False) @ t[:3, :3].T + t[:3, 3]
    return out.astype(xyz.dtype, copy=False)


def lidar_to_cam(lidar_to_ego: np.ndarray, ego_to_global_lidar: np.ndarray,
                 ego_to_global_cam: np.ndarray, cam_to_ego: np.ndarray) -> np.ndarray:
    """Compose lidar -> ego(t_lidar) -> global -> ego(t_cam) -> cam, with ego-motion compensation."""
    return invert(cam_to_ego) @ invert(ego_to_global_cam) @ ego_to_global_lidar @ lidar_to_ego


def project(xyz_cam: np.ndarray, intrinsic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection of (N, 3) camera-frame points: returns uv (N, 2) float32 and depth (N,) float32.

    Points with depth <= 0 get uv NaN.
    """
    depth = xyz_cam[:, 2].astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = xyz_cam[:, 0] / xyz_cam[:, 2]
        y = xyz_cam[:, 1] / xyz_cam[:, 2]
    u = intrinsic[0, 0] * x + intrinsic[0, 1] * y + intrinsic[0, 2]
    v = intrinsic[1, 1] * y + intrinsic[1, 2]
    uv = np.stack([u, v], axis=1).astype(np.float32)
    uv[depth <= 0] = np.nan
    return uv, depth
