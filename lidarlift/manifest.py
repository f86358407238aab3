"""The manifest: every keyframe of a dataset with its files, transforms and timestamps, split into shards.

Every later stage reads the dataset only through the manifest (``results/manifest.json``) and the
readers in :mod:`lidarlift.datasets`. Transforms are 4x4 float64 row-major matrices mapping points
of the first frame into the second (``lidar_to_ego`` maps lidar-frame points into the ego frame).
Paths are relative to the manifest's ``dataroot``. Timestamps are microseconds.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lidarlift.tmpfiles import atomic_write

MANIFEST_VERSION = 1

#: nuScenes camera order used for every per-camera axis in lidarlift (PointSAM's merge order too).
NUSCENES_CAMERAS: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT",
)


@dataclass
class LidarFrame:
    """One LiDAR sweep: file, time and pose. ``fmt``: 'nuscenes' (float32 x5) or 'kitti' (float32 x4)."""

    path: str
    timestamp: int
    lidar_to_ego: list[list[float]]
    ego_to_global: list[list[float]]
    token: str = ""
    fmt: str = "nuscenes"


@dataclass
class CameraFrame:
    """One camera image with its calibration and the ego pose at the camera's own timestamp."""

    channel: str
    path: str
    timestamp: int
    width: int
    height: int
    intrinsic: list[list[float]]
    cam_to_ego: list[list[float]]
    ego_to_global: list[list[float]]
    token: str = ""
    gt_panoptic2d: str | None = None  # synthetic worlds: uint16 PNG, 1000 * fine + instance


@dataclass
class SampleRecord:
    """One keyframe: its LiDAR sweep, neighbouring sweeps, camera images and ground-truth files."""

    token: str
    shard: str
    split: str  # 'train' | 'val' | 'test'
    index: int  # position within its shard
    lidar: LidarFrame
    cameras: list[CameraFrame]
    prev_sweeps: list[LidarFrame] = field(default_factory=list)  # nearest first
    next_sweeps: list[LidarFrame] = field(default_factory=list)  # nearest first
    # every sweep after the previous keyframe (of the scene) and before this one, nearest first: the
    # sweeps nobody labels (nuScenes: ~9 at 20 Hz between 2 Hz keyframes); lidarlift.temporal labels them
    intermediate_sweeps: list[LidarFrame] = field(default_factory=list)
    gt_lidarseg: str | None = None  # uint8 fine index per point (nuScenes) / .label (KITTI)
    gt_panoptic: str | None = None  # npz 'data' uint16 1000 * fine + instance
    gt_visibility: str | None = None  # synthetic worlds: (N, C) bool .npy

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "SampleRecord":
        d = dict(d)
        d["lidar"] = LidarFrame(**d["lidar"])
        d["cameras"] = [CameraFrame(**c) for c in d["cameras"]]
        d["prev_sweeps"] = [LidarFrame(**s) for s in d.get("prev_sweeps", [])]
        d["next_sweeps"] = [LidarFrame(**s) for s in d.get("next_sweeps", [])]
        d["intermediate_sweeps"] = [LidarFrame(**s) for s in d.get("intermediate_sweeps", [])]
        return SampleRecord(**d)


@dataclass
class Manifest:
    """All keyframes of a dataset. ``kind``: 'nuscenes' | 'semantickitti'."""

    kind: str
    dataroot: str
    version: str
    cameras: list[str]
    label_space: str
    samples: list[SampleRecord]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {sample, file, reason}

    @property
    def shards(self) -> list[str]:
        seen: dict[str, None] = {}
        for s in self.samples:
            seen.setdefault(s.shard, None)
        return list(seen)

    def shard_samples(self, shard: str) -> list[SampleRecord]:
        out = [s for s in self.samples if s.shard == shard]
        if not out:
            raise KeyError(f"shard {shard!r} is not in the manifest (shards: {', '.join(self.shards)})")
        return out

    def split_of(self, shard: str) -> str:
        return self.shard_samples(shard)[0].split

    def resolve(self, rel: str) -> Path:
        """Absolute path of a dataroot-relative file."""
        return Path(self.dataroot) / rel

    def to_json(self, path: str | os.PathLike) -> None:
        text = json.dumps({"manifest_version": MANIFEST_VERSION, **asdict(self)}, indent=1)
        atomic_write(path, lambda tmp: tmp.write_text(text))

    @staticmethod
    def from_json(path: str | os.PathLike) -> "Manifest":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"manifest {path} does not exist (run the 'manifest' rule first)")
        d = json.loads(path.read_text())
        if d.get("manifest_version") != MANIFEST_VERSION:
            raise ValueError(f"manifest {path} has version {d.get('manifest_version')}, expected {MANIFEST_VERSION}: re-run the 'manifest' rule")
        d.pop("manifest_version")
        d["samples"] = [SampleRecord.from_dict(s) for s in d["samples"]]
        return Manifest(**d)


def as_matrix(m: list[list[float]]) -> np.ndarray:
    """(4, 4) float64 from a manifest transform."""
    return np.asarray(m, dtype=np.float64)
