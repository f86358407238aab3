"""Readers of LiDAR sweeps and camera images that validate what they read.

Every error names the sample and the file, so a user knows which one to fix or skip.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """A dataset file is missing, truncated or holds values lidarlift cannot use."""


_COLUMNS = {"nuscenes": 5, "kitti": 4}
_LAYOUT = {"nuscenes": "a nuScenes .pcd.bin (5 float32 columns: x, y, z, intensity, ring)",
           "kitti": "a KITTI .bin (4 float32 columns: x, y, z, reflectance)"}
#: Largest plausible |coordinate| (m): no LiDAR returns from farther.
MAX_COORDINATE_M = 1000.0
#: Ring ids of a nuScenes sweep are integers below this.
MAX_RING = 1024


def _check_plausible(raw: np.ndarray, fmt: str, path: Path, sample: str) -> None:
    """Raise DatasetError when the rows do not look like ``fmt``'s columns: the sign of NaN-free
    intensities (a 5-column sweep read as 4 columns puts coordinates there: the ground's negative z),
    integer ring ids (a 4-column sweep read as 5 columns puts coordinates there) and coordinates within
    :data:`MAX_COORDINATE_M`."""
    other = "kitti" if fmt == "nuscenes" else "nuscenes"
    hint = f"it is not {_LAYOUT[fmt]} -- {_LAYOUT[other]} read with the wrong format?"
    inten = raw[:, 3]
    neg = np.flatnonzero(~(inten >= 0))
    if len(neg):
        raise DatasetError(f"sample {sample}: lidar file {path}: {len(neg)} of {len(raw)} rows have a negative or NaN "
                           f"intensity (first {inten[neg[0]]:g} at row {int(neg[0])}); {hint}")
    if fmt == "nuscenes":
        ring = raw[:, 4]
        bad = np.flatnonzero(~((ring == np.round(ring)) & (ring >= 0) & (ring < MAX_RING)))
        if len(bad):
            raise DatasetError(f"sample {sample}: lidar file {path}: {len(bad)} of {len(raw)} rows have a ring id that is "
                               f"not an integer in 0..{MAX_RING - 1} (first {ring[bad[0]]:g} at row {int(bad[0])}); {hint}")
    far = np.flatnonzero(np.abs(raw[:, :3]).max(axis=1) > MAX_COORDINATE_M)
    if len(far):
        raise DatasetError(f"sample {sample}: lidar file {path}: {len(far)} of {len(raw)} rows have a coordinate beyond "
                           f"{MAX_COORDINATE_M:g} m (first row {int(far[0])}: {raw[far[0], :3].tolist()}): corrupt, or "
                           f"not {_LAYOUT[fmt]}")


def _read_rows(path: str | Path, fmt: str, sample: str) -> np.ndarray:
    """The file's validated (N, columns) float32 rows (see :func:`read_lidar`)."""
    path = Path(path)
    cols = _COLUMNS.get(fmt)
    if cols is None:
        raise DatasetError(f"sample {sample}: unknown lidar format {fmt!r} for {path}")
    if not path.exists():
        raise DatasetError(f"sample {sample}: lidar file {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise DatasetError(f"sample {sample}: lidar file {path} is empty (no points)")
    if size % (cols * 4):
        raise DatasetError(f"sample {sample}: lidar file {path} is truncated or not {_LAYOUT[fmt]}: {size} bytes is not "
                           f"a multiple of {cols} columns x 4 bytes = {cols * 4} bytes per point")
    raw = np.fromfile(path, dtype=np.float32).reshape(-1, cols)
    bad = ~np.isfinite(raw[:, :3]).all(axis=1)
    if bad.any():
        raise DatasetError(f"sample {sample}: lidar file {path} has {int(bad.sum())} points with NaN or infinite coordinates (first at row {int(np.argmax(bad))})")
    _check_plausible(raw, fmt, path, sample)
    return raw


def read_lidar(path: str | Path, fmt: str = "nuscenes", sample: str = "?") -> np.ndarray:
    """Read one sweep as (N, 4) float32: x, y, z, intensity in the lidar frame.

    ``fmt``: 'nuscenes' (.pcd.bin, float32 rows of 5: x, y, z, intensity, ring) or 'kitti'
    (.bin, float32 rows of 4: x, y, z, reflectance). Raises DatasetError naming the sample and the file
    for a missing or empty file, a size that is not a whole number of rows (truncated, or another
    layout), NaN or infinite coordinates, and rows that do not look like the format's columns (a
    negative intensity, a ring id that is not a small integer, a coordinate beyond 1 km: the signs of
    a nuScenes sweep read as KITTI or the reverse).
    """
    return np.ascontiguousarray(_read_rows(path, fmt, sample)[:, :4])


def read_lidar_with_ring(path: str | Path, fmt: str = "nuscenes", sample: str = "?") -> tuple[np.ndarray, np.ndarray | None]:
    """(points (N, 4) float32 as :func:`read_lidar`, ring (N,) int64 beam id or None where the format
    has none -- KITTI), with the same checks."""
    raw = _read_rows(path, fmt, sample)
    ring = raw[:, 4].astype(np.int64) if fmt == "nuscenes" else None
    return np.ascontiguousarray(raw[:, :4]), ring


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
