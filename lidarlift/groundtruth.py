"""Ground truth of a sample, for measuring every stage: per-point classes and instances, 2D maps, visibility.

Real nuScenes has the per-point files; the synthetic world also has per-camera 2D panoptic maps,
per-point visibility and per-point truth of the non-keyframe sweeps
(``<dataroot>/lidarlift_gt/<version>/sweeps/<sample_data token>.npz``, the panoptic encoding). Functions
return ``None`` where the dataset lacks a kind of ground truth.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lidarlift.classes import FINE_TO_CHALLENGE
from lidarlift.datasets.readers import DatasetError, read_label_map
from lidarlift.manifest import LidarFrame, Manifest, SampleRecord


@dataclass
class PointTruth:
    """Per-point truth of one keyframe. ``label``: (N,) uint8 class 1..K (0 ignore); ``fine``: (N,) uint8
    dataset-native class; ``instance``: (N,) int64 scene-unique instance key (0 = stuff/none)."""

    label: np.ndarray
    fine: np.ndarray  # nuScenes: uint8 fine index; SemanticKITTI: uint16 raw id
    instance: np.ndarray


def _panoptic_truth(path, what: str) -> PointTruth:
    """PointTruth of a panoptic npz (key 'data', uint16 1000 * fine + instance); ``what`` names it in errors."""
    try:
        pan = np.load(path)["data"].astype(np.int64)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error to the user
        raise DatasetError(f"{what}: panoptic file {path} is unreadable: {e}") from e
    fine = (pan // 1000).astype(np.uint8)
    inst = pan % 1000
    instance = np.where(inst > 0, pan, 0)  # 1000 * fine + id is unique within the scene
    return PointTruth(label=FINE_TO_CHALLENGE[fine], fine=fine, instance=instance)


def point_truth(manifest: Manifest, sample: SampleRecord) -> PointTruth | None:
    """Per-point classes and instances of a keyframe, or None where the dataset has none."""
    if manifest.kind == "semantickitti":
        from lidarlift.datasets.semantickitti import point_truth as kitti_truth

        return kitti_truth(manifest, sample)
    if sample.gt_panoptic:
        return _panoptic_truth(manifest.resolve(sample.gt_panoptic), f"sample {sample.token}")
    if sample.gt_lidarseg:
        path = manifest.resolve(sample.gt_lidarseg)
        fine = np.fromfile(path, dtype=np.uint8)
        return PointTruth(label=FINE_TO_CHALLENGE[fine], fine=fine, instance=np.zeros(fine.shape, np.int64))
    return None


#: Folder of the synthetic world's per-sweep truth, under the dataroot (``.../<sample_data token>.npz``).
SWEEP_TRUTH_DIR = "lidarlift_gt/{version}/sweeps"


def sweep_truth(manifest: Manifest, frame: LidarFrame) -> PointTruth | None:
    """Per-point classes and instances of a non-keyframe sweep (``frame``: one of a keyframe's
    ``intermediate_sweeps``, ``prev_sweeps`` or ``next_sweeps``) from the synthetic world's
    ``lidarlift_gt/<version>/sweeps/<frame.token>.npz``; None where the dataset has none (real
    nuScenes labels keyframes only). Instances share the keyframes' keys (1000 * fine + id)."""
    if manifest.kind != "nuscenes" or not frame.token:
        return None
    path = manifest.resolve(SWEEP_TRUTH_DIR.format(version=manifest.version)) / f"{frame.token}.npz"
    if not path.exists():
        return None
    return _panoptic_truth(path, f"sweep {frame.token} ({frame.path})")


def image_truth(manifest: Manifest, sample: SampleRecord, cam: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(label (H, W) uint8 class 1..K, instance (H, W) int64 scene-unique key, 0 = stuff/sky) of one
    camera image, from the synthetic world's panoptic2d map; None where the dataset has none."""
    rel = sample.cameras[cam].gt_panoptic2d
    if not rel:
        return None
    pan = read_label_map(manifest.resolve(rel), sample.token).astype(np.int64)
    cls = pan // 1000  # nuScenes: fine index; SemanticKITTI layout: train id 0..19
    if manifest.kind == "semantickitti":
        from lidarlift.datasets.semantickitti import TRAIN_TO_CHALLENGE

        label = TRAIN_TO_CHALLENGE[cls] if manifest.label_space == "nuscenes16" else cls.astype(np.uint8)
    else:
        label = FINE_TO_CHALLENGE[cls]
    return label, np.where(pan % 1000 > 0, pan, 0)


def visibility_truth(manifest: Manifest, sample: SampleRecord) -> np.ndarray | None:
    """(N, C) bool: the generator's per-point visibility in each camera; None where unknown."""
    if not sample.gt_visibility:
        return None
    return np.load(manifest.resolve(sample.gt_visibility))
