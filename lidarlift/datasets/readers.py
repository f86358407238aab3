"""Readers of LiDAR sweeps and camera images that validate what they read.

Every error names the sample and the file, so a user knows which one to fix or skip.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """A dataset file is missing, truncated or holds values lidarlift cannot use."""


_COLUMNS = {"nuscenes": 5, "kitti": 4}


def read_lidar(path: str | Path, fmt: str = "nuscenes", sample: str = "?") -> np.ndarray:
    """Read one sweep as (N, 4) float32: x, y, z, intensity in the lidar frame.

    ``fmt``: 'nuscenes' (.pcd.bin, float32 rows of 5: x, y, z, intensity, ring) or 'kitti'
    (.bin, float32 rows of 4: x, y, z, reflectance). Raises DatasetError for a missing, truncated or
    empty file and for NaN or infinite coordinates.
    """
    path = Path(path)
    cols = _COLUMNS.get(fmt)
    if cols is None:
        raise DatasetError(f"sample {sample}: unknown lidar format {fmt!r} for {path}")
    if not path.exists():
        raise DatasetError(f"sample {sample}: lidar file {path} does not exist")
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size == 0:
        raise DatasetError(f"sample {sample}: lidar file {path} is empty (no points)")
    if raw.size % cols:
        raise DatasetError(f"sample {sample}: lidar file {path} is truncated: {raw.size * 4} bytes is not a multiple of {cols} float32 columns")
    pts = raw.reshape(-1, cols)[:, :4]
    bad = ~np.isfinite(pts[:, :3]).all(axis=1)
    if bad.any():
        raise DatasetError(f"sample {sample}: lidar file {path} has {int(bad.sum())} points with NaN or infinite coordinates (first at row {int(np.argmax(bad))})")
    return np.ascontiguousarray(pts)


def read_image(path: str | Path, sample: str = "?", gray: bool = False) -> np.ndarray:
    """Read a camera image as (H, W, 3) uint8 RGB (or (H, W) if ``gray``); DatasetError if unreadable."""
    import cv2

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"sample {sample}: image {path} does not exist")
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"sample {sample}: image {path} cannot be decoded (corrupt or not an image)")
    return img if gray else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label_map(path: str | Path, sample: str = "?") -> np.ndarray:
    """Read a uint16 PNG label map (e.g. synthetic panoptic2d) unchanged; DatasetError if unreadable."""
    import cv2

    path = Path(path)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.exists() else None
    if img is None:
        raise DatasetError(f"sample {sample}: label map {path} is missing or unreadable")
    return img
