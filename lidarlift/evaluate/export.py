"""Label files in the formats other tools read, and readers for each (round trips are tested).

- nuScenes lidarseg: ``<sd_token>_lidarseg.bin``, uint8 per point, challenge index 1..16 (a
  submission must not hold 0; pseudo-label exports may, 0 = unlabelled).
- nuScenes panoptic: ``<sd_token>_panoptic.npz``, key ``data``, uint16 per point,
  1000 x challenge index + per-class instance id (1..999 for things, 0 for stuff).
- ``submission.json``: ``{"meta": {use_camera, use_lidar, use_radar, use_map, use_external}}``.
- SemanticKITTI ``.label``: uint32 per point, ``semantic | instance << 16``. For the SemanticKITTI
  label space the semantic part holds the raw SemanticKITTI ids (``learning_map_inv`` of the
  19-class benchmark, e.g. car = 10), as the benchmark expects; for nuScenes label spaces it holds the
  challenge index 0..16.
- PointSAM / MixSup cluster labels (``scripts/convert_results.py`` of PointSAM-for-MixSup): a ``.bin``
  named like the LiDAR file, (N, 2) uint16 rows ``(instance id, class)``; instance ids are 0-based
  (npz id - 1), 65535 = no instance; class is the MixSup detection order (car 0, truck 1, trailer 2,
  bus 3, construction_vehicle 4, bicycle 5, motorcycle 6, pedestrian 7, traffic_cone 8, barrier 9,
  10 = ignore). Only thing points with an instance get a cluster; everything else is (65535, 10).
  This follows PointSAM's ``bin2npz`` direction (what MixSup's loader reads); its ``npz2bin`` omits
  the -1.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lidarlift.classes import CHALLENGE_CLASSES
from lidarlift.tmpfiles import atomic_write

#: MixSup cluster-label class ids by challenge class name (PointSAM-for-MixSup BIN_CLASSES).
CLUSTER_CLASSES: dict[str, int] = {
    "car": 0, "truck": 1, "trailer": 2, "bus": 3, "construction_vehicle": 4, "bicycle": 5,
    "motorcycle": 6, "pedestrian": 7, "traffic_cone": 8, "barrier": 9,
}
CLUSTER_IGNORE = 10
CLUSTER_NO_INSTANCE = 65535

#: (17,) challenge index -> cluster class (10 for ignore and stuff).
CHALLENGE_TO_CLUSTER = np.array(
    [CLUSTER_IGNORE] + [CLUSTER_CLASSES.get(c, CLUSTER_IGNORE) for c in CHALLENGE_CLASSES], dtype=np.uint16
)
#: (11,) cluster class -> challenge index (0 for ignore).
CLUSTER_TO_CHALLENGE = np.zeros(CLUSTER_IGNORE + 1, dtype=np.uint8)
for _name, _cid in CLUSTER_CLASSES.items():
    CLUSTER_TO_CHALLENGE[_cid] = CHALLENGE_CLASSES.index(_name) + 1

#: SemanticKITTI train id (0..19) -> raw label id (semantic-kitti.yaml ``learning_map_inv``).
KITTI_LEARNING_MAP_INV = np.array(
    [0, 10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 70, 71, 72, 80, 81], dtype=np.uint32
)

SUBMISSION_META = {"use_camera": True, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}


class ExportError(ValueError):
    """Labels that the target format cannot hold."""


def _atomic_write(path: Path, write) -> Path:
    """An exported file, written under a hidden temporary name (``.<name>.tmp-<pid>``) and renamed."""
    return atomic_write(path, write, prefix=".")


# --- nuScenes ------------------------------------------------------------------------------


def write_lidarseg_bin(path: str | os.PathLike, labels: np.ndarray, *, allow_ignore: bool = False, num_classes: int = 16) -> Path:
    """Write (N,) class indices 1..K as a lidarseg ``.bin`` (uint8). ``allow_ignore`` admits 0."""
    labels = np.asarray(labels)
    lo = 0 if allow_ignore else 1
    if labels.ndim != 1 or (labels.size and (labels.min() < lo or labels.max() > num_classes)):
        rng = f"{labels.min()}..{labels.max()}" if labels.size else "empty"
        raise ExportError(f"{path}: lidarseg labels must be a (N,) array in {lo}..{num_classes}, got shape {labels.shape}, range {rng}")

    def write(tmp):
        labels.astype(np.uint8).tofile(tmp)

    return _atomic_write(Path(path), write)


def read_lidarseg_bin(path: str | os.PathLike) -> np.ndarray:
    """(N,) uint8 from a lidarseg ``.bin``."""
    return np.fromfile(path, dtype=np.uint8)


def panoptic_values(sem: np.ndarray, inst: np.ndarray, thing_mask: np.ndarray) -> np.ndarray:
    """(N,) uint16 ``1000 * sem + inst`` with ``inst`` forced to 0 on stuff classes.

    sem: (N,) class 0..K; inst: (N,) per-class instance id 0..999; thing_mask: (K + 1,) bool.
    """
    sem = np.asarray(sem, np.int64)
    inst = np.where(np.asarray(thing_mask)[sem], np.asarray(inst, np.int64), 0)
    if inst.size and (inst.min() < 0 or inst.max() > 999):
        raise ExportError(f"panoptic instance ids must lie in 0..999, got {inst.min()}..{inst.max()}")
    return (1000 * sem + inst).astype(np.uint16)


def write_panoptic_npz(path: str | os.PathLike, values: np.ndarray) -> Path:
    """Write (N,) uint16 panoptic values (``1000 * class + instance``) as ``.npz`` key ``data``."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ExportError(f"{path}: panoptic values must be (N,), got {values.shape}")

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, data=values.astype(np.uint16))

    return _atomic_write(Path(path), write)


def read_panoptic_npz(path: str | os.PathLike) -> np.ndarray:
    """(N,) uint16 panoptic values from a ``.npz`` (key ``data``)."""
    with np.load(path) as z:
        return z["data"]


def write_submission_json(path: str | os.PathLike, meta: dict[str, Any] | None = None, **extra: Any) -> Path:
    """``submission.json`` with the ``meta`` block both nuScenes evaluators read."""
    payload = {"meta": {**SUBMISSION_META, **(meta or {})}, **extra}
    return _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))


def read_submission_json(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


# --- SemanticKITTI -------------------------------------------------------------------------


def kitti_label_values(sem: np.ndarray, inst: np.ndarray, *, raw_ids: bool) -> np.ndarray:
    """(N,) uint32 ``semantic | instance << 16``; ``raw_ids`` maps train ids 0..19 to raw ids."""
    sem = np.asarray(sem, np.int64)
    inst = np.asarray(inst, np.int64)
    if raw_ids:
        if sem.size and sem.max() >= KITTI_LEARNING_MAP_INV.size:
            raise ExportError(f"SemanticKITTI train ids must lie in 0..19, got max {sem.max()}")
        sem = KITTI_LEARNING_MAP_INV[sem].astype(np.int64)
    if inst.size and (inst.min() < 0 or inst.max() > 0xFFFF):
        raise ExportError(f"SemanticKITTI instance ids must lie in 0..65535, got {inst.min()}..{inst.max()}")
    if sem.size and (sem.min() < 0 or sem.max() > 0xFFFF):
        raise ExportError(f"SemanticKITTI semantic ids must lie in 0..65535, got {sem.min()}..{sem.max()}")
    return (sem.astype(np.uint32) | (inst.astype(np.uint32) << np.uint32(16))).astype(np.uint32)


def write_kitti_label(path: str | os.PathLike, values: np.ndarray) -> Path:
    """Write (N,) uint32 label values (see :func:`kitti_label_values`) as a ``.label`` file."""
    values = np.asarray(values, dtype=np.uint32)
    return _atomic_write(Path(path), lambda tmp: values.tofile(tmp))


def read_kitti_label(path: str | os.PathLike, *, raw_ids: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(semantic (N,) int64, instance (N,) int64) from a ``.label``; ``raw_ids`` maps raw ids back to
    train ids (unknown raw ids -> 0)."""
    v = np.fromfile(path, dtype=np.uint32)
    sem = (v & 0xFFFF).astype(np.int64)
    inst = (v >> 16).astype(np.int64)
    if raw_ids:
        lut = np.zeros(0x10000, np.int64)
        lut[KITTI_LEARNING_MAP_INV[1:]] = np.arange(1, KITTI_LEARNING_MAP_INV.size)
        sem = lut[sem]
    return sem, inst


# --- PointSAM / MixSup cluster labels -------------------------------------------------------


def cluster_label_values(sem: np.ndarray, inst: np.ndarray) -> np.ndarray:
    """(N, 2) uint16 rows (0-based instance id or 65535, MixSup class or 10) from challenge classes.

    sem: (N,) challenge index 0..16; inst: (N,) per-class instance id (1-based, 0 = none).
    """
    sem = np.asarray(sem, np.int64)
    inst = np.asarray(inst, np.int64)
    cls = CHALLENGE_TO_CLUSTER[sem]
    valid = (cls != CLUSTER_IGNORE) & (inst > 0)
    if valid.any() and inst[valid].max() > CLUSTER_NO_INSTANCE:
        raise ExportError(f"cluster instance ids must be < {CLUSTER_NO_INSTANCE}, got {inst[valid].max()}")
    out = np.empty((sem.size, 2), np.uint16)
    out[:, 0] = CLUSTER_NO_INSTANCE
    out[:, 1] = CLUSTER_IGNORE
    out[valid, 0] = inst[valid] - 1
    out[valid, 1] = cls[valid]
    return out


def write_cluster_bin(path: str | os.PathLike, rows: np.ndarray) -> Path:
    """Write (N, 2) uint16 cluster rows (:func:`cluster_label_values`)."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != 2:
        raise ExportError(f"{path}: cluster labels must be (N, 2), got {rows.shape}")
    return _atomic_write(Path(path), lambda tmp: rows.astype(np.uint16).tofile(tmp))


def read_cluster_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(challenge class (N,) uint8 with 0 for no cluster, 1-based instance id (N,) int64 with 0 for
    none) from a cluster-label ``.bin`` (PointSAM's ``bin2npz`` reading)."""
    rows = np.fromfile(path, dtype=np.uint16)
    if rows.size % 2:
        raise ExportError(f"{path}: cluster-label file holds {rows.size} uint16 values, not pairs")
    rows = rows.reshape(-1, 2)
    valid = rows[:, 0] != CLUSTER_NO_INSTANCE
    if (rows[valid, 1] == CLUSTER_IGNORE).any() or (rows[:, 1] > CLUSTER_IGNORE).any():
        raise ExportError(f"{path}: cluster-label file has a cluster with class 'ignore' or an unknown class")
    sem = np.where(valid, CLUSTER_TO_CHALLENGE[np.minimum(rows[:, 1], CLUSTER_IGNORE)], 0).astype(np.uint8)
    inst = np.where(valid, rows[:, 0].astype(np.int64) + 1, 0)
    return sem, inst


# --- one sample in every format ---------------------------------------------------------------


def export_sample(root: str | os.PathLike, *, formats: list[str], split_folder: str, sd_token: str, shard: str,
                  index: int, lidar_basename: str, sem: np.ndarray, inst: np.ndarray, thing_mask: np.ndarray,
                  kitti_raw_ids: bool, allow_ignore: bool, num_classes: int) -> list[Path]:
    """Write one keyframe's labels in each of ``formats`` under ``root``; returns the files.

    Layouts: ``nuscenes/lidarseg/<split>/<sd>_lidarseg.bin``, ``nuscenes/panoptic/<split>/<sd>_panoptic.npz``;
    ``semantickitti/sequences/<shard>/predictions/<index:06d>.label``;
    ``clusterlabel/<lidar file basename>`` (PointSAM naming).
    sem: (N,) class 0..K; inst: (N,) per-class instance id (0 = none).
    """
    root = Path(root)
    files: list[Path] = []
    for fmt in formats:
        if fmt == "nuscenes":
            files.append(write_lidarseg_bin(root / "nuscenes" / "lidarseg" / split_folder / f"{sd_token}_lidarseg.bin",
                                            sem, allow_ignore=allow_ignore, num_classes=num_classes))
            files.append(write_panoptic_npz(root / "nuscenes" / "panoptic" / split_folder / f"{sd_token}_panoptic.npz",
                                            panoptic_values(sem, inst, thing_mask)))
        elif fmt == "semantickitti":
            files.append(write_kitti_label(root / "semantickitti" / "sequences" / shard / "predictions" / f"{index:06d}.label",
                                           kitti_label_values(sem, inst, raw_ids=kitti_raw_ids)))
        elif fmt == "clusterlabel":
            if num_classes != len(CHALLENGE_CLASSES):
                raise ExportError("config key evaluate.export.formats: clusterlabel needs the nuscenes16 label space")
            files.append(write_cluster_bin(root / "clusterlabel" / lidar_basename, cluster_label_values(sem, inst)))
        else:
            raise ExportError(f"config key evaluate.export.formats: unknown format {fmt!r}; choose from nuscenes, semantickitti, clusterlabel")
    return files
