"""SemanticKITTI adapter: ``sequences/NN/{velodyne/*.bin, labels/*.label, image_2/*.png, calib.txt, poses.txt}``.

Frames: the ego frame is the Velodyne frame (``lidar_to_ego`` = identity); ``ego_to_global`` is the
frame's pose in the sequence's first Velodyne frame, ``Tr^-1 @ pose_cam0 @ Tr``; the camera (image_2) is
``cam_to_ego = Tr^-1 @ T_cam0_cam2`` with intrinsics from P2. KITTI triggers the camera by the LiDAR,
so the camera timestamp is the LiDAR's. Labels are uint32: semantic id in the lower 16 bits,
instance id in the upper 16.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lidarlift.classes import CHALLENGE_CLASSES, SEMANTICKITTI_CLASSES
from lidarlift.geometry import check_intrinsic, check_rigid, invert
from lidarlift.manifest import CameraFrame, LidarFrame, Manifest, SampleRecord

from .readers import DatasetError

#: Official split of the SemanticKITTI sequences.
SPLITS = {**{f"{i:02d}": "train" for i in (0, 1, 2, 3, 4, 5, 6, 7, 9, 10)}, "08": "val",
          **{f"{i:02d}": "test" for i in range(11, 22)}}

#: semantic-kitti.yaml learning_map: raw id -> train id 1..19 (0 = unlabelled).
LEARNING_MAP: dict[int, int] = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10,
    48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19, 99: 0,
    252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}

#: SemanticKITTI train class -> nuScenes challenge class (None: no counterpart, ignored).
KITTI19_TO_CHALLENGE: dict[str, str | None] = {
    "car": "car", "bicycle": "bicycle", "motorcycle": "motorcycle", "truck": "truck", "other-vehicle": None,
    "person": "pedestrian", "bicyclist": "bicycle", "motorcyclist": "motorcycle", "road": "driveable_surface",
    "parking": "other_flat", "sidewalk": "sidewalk", "other-ground": "other_flat", "building": "manmade",
    "fence": "manmade", "vegetation": "vegetation", "trunk": "vegetation", "terrain": "terrain",
    "pole": "manmade", "traffic-sign": "manmade",
}


def _lut(mapping: dict[int, int], size: int = 1 << 16) -> np.ndarray:
    lut = np.zeros(size, np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut


RAW_TO_TRAIN = _lut(LEARNING_MAP)
TRAIN_TO_CHALLENGE = np.array(
    [0] + [CHALLENGE_CLASSES.index(c) + 1 if c else 0 for c in (KITTI19_TO_CHALLENGE[n] for n in SEMANTICKITTI_CLASSES)],
    dtype=np.uint8,
)


#: LiDAR preset of a synthetic world written in this layout (``synth.sensor: auto``): SemanticKITTI's
#: Velodyne HDL-64E (:data:`lidarlift.synth.sensors.LIDAR_PRESETS`).
SYNTHETIC_SENSOR = "kitti64"


def synthetic_sequence_names(n: int) -> list[str]:
    """Sequence names of an n-scene synthetic world in KITTI layout: train sequences with 08 (val) second."""
    order = ["00", "08", "01", "02", "03", "04", "05", "06", "07", "09", "10"]
    if not 0 < n <= len(order):
        raise ValueError(f"config key synth.scenes must be 1..{len(order)} for the SemanticKITTI layout, got {n}")
    return order[:n]


def existing_sequence_names(dataroot: str | Path) -> list[str]:
    seq = Path(dataroot) / "sequences"
    if not seq.is_dir():
        raise DatasetError(f"dataset.dataroot {dataroot} is not a SemanticKITTI dataset: no 'sequences/' folder")
    return sorted(p.name for p in seq.iterdir() if p.is_dir())


def read_calib(path: Path) -> dict[str, np.ndarray]:
    """calib.txt -> {'P2': (3, 4), 'Tr': (4, 4)}; DatasetError naming the file when a key is missing."""
    if not path.exists():
        raise DatasetError(f"SemanticKITTI calibration {path} does not exist")
    vals = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            vals[k.strip()] = np.array([float(x) for x in v.split()])
    for key in ("P2", "Tr"):
        if key not in vals or vals[key].size != 12:
            raise DatasetError(f"SemanticKITTI calibration {path}: key {key} missing or not 12 numbers")
    tr = np.eye(4)
    tr[:3] = vals["Tr"].reshape(3, 4)
    return {"P2": vals["P2"].reshape(3, 4), "Tr": tr}


def read_poses(path: Path) -> np.ndarray:
    """poses.txt -> (F, 4, 4) cam0 poses in the first cam0 frame."""
    if not path.exists():
        raise DatasetError(f"SemanticKITTI poses {path} does not exist")
    rows = np.loadtxt(path, ndmin=2)
    if rows.shape[1] != 12:
        raise DatasetError(f"SemanticKITTI poses {path}: expected 12 numbers per line, got {rows.shape[1]}")
    out = np.tile(np.eye(4), (len(rows), 1, 1))
    out[:, :3] = rows.reshape(-1, 3, 4)
    return out


def build_manifest(cfg: dict[str, Any]) -> Manifest:
    """Manifest of every frame of every sequence under ``cfg['dataroot']/sequences`` (one shard each)."""
    import cv2

    from . import dataset_section

    cfg = dataset_section(cfg)
    root = Path(cfg["dataroot"])
    names = existing_sequence_names(root)
    keep = set(cfg.get("scenes") or [])
    n_prev, n_next = int(cfg["sweeps_prev"]), int(cfg["sweeps_next"])
    samples: list[SampleRecord] = []
    for seq in names:
        if keep and seq not in keep:
            continue
        sdir = root / "sequences" / seq
        calib = read_calib(sdir / "calib.txt")
        poses = read_poses(sdir / "poses.txt")
        scans = sorted((sdir / "velodyne").glob("*.bin"))
        if len(scans) != len(poses):
            raise DatasetError(f"SemanticKITTI sequence {seq}: {len(scans)} scans in {sdir / 'velodyne'} but {len(poses)} poses in poses.txt")
        times = np.loadtxt(sdir / "times.txt", ndmin=1) if (sdir / "times.txt").exists() else np.arange(len(scans)) * 0.1
        tr = check_rigid(calib["Tr"], f"{sdir / 'calib.txt'} Tr")
        tr_inv = invert(tr)
        p2 = calib["P2"]
        k = p2[:, :3]
        t_cam0_cam2 = np.eye(4)
        t_cam0_cam2[:3, 3] = -np.linalg.solve(k, p2[:, 3])  # P2 = K [I | t]: cam2 origin in cam0 is -t
        cam_to_ego = tr_inv @ t_cam0_cam2
        frames = []
        for i, scan in enumerate(scans):
            ego_to_global = check_rigid(tr_inv @ poses[i] @ tr, f"{sdir / 'poses.txt'} line {i + 1}")
            frames.append(LidarFrame(path=str(scan.relative_to(root)), timestamp=int(round(float(times[i]) * 1e6)),
                                     lidar_to_ego=np.eye(4).tolist(), ego_to_global=ego_to_global.tolist(),
                                     token=f"{seq}_{scan.stem}", fmt="kitti"))
        for i, scan in enumerate(scans):
            img = sdir / "image_2" / f"{scan.stem}.png"
            if not img.exists():
                raise DatasetError(f"sample {seq}_{scan.stem}: image {img} does not exist")
            h, w = cv2.imread(str(img), cv2.IMREAD_GRAYSCALE).shape
            check_intrinsic(k, w, h, f"{sdir / 'calib.txt'} P2")
            gt2d = root / "lidarlift_gt" / "panoptic2d" / seq / f"{scan.stem}.png"
            cam = CameraFrame(channel="CAM_2", path=str(img.relative_to(root)), timestamp=frames[i].timestamp,
                              width=w, height=h, intrinsic=k.tolist(), cam_to_ego=cam_to_ego.tolist(),
                              ego_to_global=frames[i].ego_to_global, token=f"{seq}_{scan.stem}_cam2",
                              gt_panoptic2d=str(gt2d.relative_to(root)) if gt2d.exists() else None)
            label = sdir / "labels" / f"{scan.stem}.label"
            vis = root / "lidarlift_gt" / "visibility" / seq / f"{scan.stem}.npy"
            samples.append(SampleRecord(
                token=frames[i].token, shard=seq, split=SPLITS.get(seq, "test"), index=i, lidar=frames[i],
                cameras=[cam], prev_sweeps=frames[max(0, i - n_prev):i][::-1], next_sweeps=frames[i + 1:i + 1 + n_next],
                gt_lidarseg=str(label.relative_to(root)) if label.exists() else None,
                gt_visibility=str(vis.relative_to(root)) if vis.exists() else None,
            ))
    if not samples:
        raise DatasetError(f"dataset.dataroot {root}: no SemanticKITTI frames (sequence filter: {sorted(keep) or 'none'})")
    return Manifest(kind="semantickitti", dataroot=str(root.resolve()), version="semantickitti", cameras=["CAM_2"],
                    label_space=cfg.get("label_space", "semantickitti19"), samples=samples)


def read_labels(path: Path, n_points: int, sample: str) -> tuple[np.ndarray, np.ndarray]:
    """(raw semantic id (N,) uint16, instance id (N,) uint16) from a .label file."""
    raw = np.fromfile(path, dtype=np.uint32)
    if raw.size != n_points:
        raise DatasetError(f"sample {sample}: label file {path} has {raw.size} labels for {n_points} points")
    return (raw & 0xFFFF).astype(np.uint16), (raw >> 16).astype(np.uint16)


def point_truth(manifest: Manifest, sample: SampleRecord):
    """Per-point truth in the manifest's label space (19 SemanticKITTI classes, or mapped to nuScenes 16)."""
    from lidarlift.groundtruth import PointTruth

    if not sample.gt_lidarseg:
        return None
    path = manifest.resolve(sample.gt_lidarseg)
    n = manifest.resolve(sample.lidar.path).stat().st_size // 16
    sem, inst = read_labels(path, n, sample.token)
    train = RAW_TO_TRAIN[sem]
    label = TRAIN_TO_CHALLENGE[train] if manifest.label_space == "nuscenes16" else train
    # the same key as the synthetic 2D maps: 1000 x train id + instance id
    instance = np.where((inst > 0) & (train > 0), train.astype(np.int64) * 1000 + inst, 0)
    return PointTruth(label=label, fine=sem, instance=instance)
