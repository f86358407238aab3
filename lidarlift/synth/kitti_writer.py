"""Write a generated world in the SemanticKITTI layout (one sequence per scene, CAM_FRONT as image_2).

The world is read back through the nuScenes adapter, so both layouts hold the very same points,
labels and images. SemanticKITTI assumes a camera triggered by the LiDAR: the camera's pose is taken
at the LiDAR timestamp (the synthetic CAM_FRONT fires within a few ms of it).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lidarlift.classes import FINE_INDEX
from lidarlift.datasets.readers import read_label_map
from lidarlift.datasets.semantickitti import RAW_TO_TRAIN, synthetic_sequence_names
from lidarlift.geometry import invert
from lidarlift.manifest import Manifest, as_matrix
from lidarlift.synth.dataroot import staged_world

#: nuScenes fine class -> SemanticKITTI raw id (0 unlabelled, 99 other-object, 52 other-structure).
FINE_TO_KITTI_RAW: dict[str, int] = {
    "vehicle.car": 10, "vehicle.bicycle": 11, "vehicle.bus.rigid": 13, "vehicle.bus.bendy": 13,
    "vehicle.motorcycle": 15, "vehicle.truck": 18, "vehicle.trailer": 20, "vehicle.construction": 20,
    "vehicle.emergency.ambulance": 20, "vehicle.emergency.police": 20,
    "human.pedestrian.adult": 30, "human.pedestrian.child": 30, "human.pedestrian.construction_worker": 30,
    "human.pedestrian.police_officer": 30, "movable_object.barrier": 51, "movable_object.trafficcone": 99,
    "movable_object.debris": 99, "movable_object.pushable_pullable": 99, "static_object.bicycle_rack": 99,
    "flat.driveable_surface": 40, "flat.other": 49, "flat.sidewalk": 48, "flat.terrain": 72,
    "static.manmade": 50, "static.vegetation": 70, "static.other": 52,
}
FINE_TO_RAW = np.zeros(32, np.uint16)
for _name, _raw in FINE_TO_KITTI_RAW.items():
    FINE_TO_RAW[FINE_INDEX[_name]] = _raw


def _row(m: np.ndarray) -> str:
    return " ".join(f"{v:.12e}" for v in np.asarray(m)[:3].ravel())


def write_semantickitti(manifest: Manifest, out: str | Path) -> dict:
    """Convert a nuScenes-format synthetic world (its manifest) into ``out/sequences/NN/...``.

    ``out`` must be empty, absent or hold a world written before (:mod:`lidarlift.synth.dataroot`);
    the new sequences replace it once complete. Returns stats {sequences, frames, points}.
    """
    with staged_world(out) as tmp:
        return _write_sequences(manifest, tmp)


def _write_sequences(manifest: Manifest, tmp: Path) -> dict:
    names = synthetic_sequence_names(len(manifest.shards))
    front = manifest.cameras.index("CAM_FRONT")
    n_frames = n_points = 0
    for seq, shard in zip(names, manifest.shards):
        sdir = tmp / "sequences" / seq
        for sub in ("velodyne", "labels", "image_2"):
            (sdir / sub).mkdir(parents=True, exist_ok=True)
        (tmp / "lidarlift_gt" / "panoptic2d" / seq).mkdir(parents=True, exist_ok=True)
        (tmp / "lidarlift_gt" / "visibility" / seq).mkdir(parents=True, exist_ok=True)
        samples = manifest.shard_samples(shard)
        cam0 = samples[0].cameras[front]
        k = as_matrix(cam0.intrinsic)[:3, :3]
        tr = invert(as_matrix(cam0.cam_to_ego)) @ as_matrix(samples[0].lidar.lidar_to_ego)  # velo -> cam0
        lidar_to_global0 = as_matrix(samples[0].lidar.ego_to_global) @ as_matrix(samples[0].lidar.lidar_to_ego)
        p = np.hstack([k, np.zeros((3, 1))])
        (sdir / "calib.txt").write_text("".join(f"P{i}: {_row(p)}\n" for i in range(4)) + f"Tr: {_row(tr)}\n")
        poses, times = [], []
        for i, s in enumerate(samples):
            stem = f"{i:06d}"
            pts = np.fromfile(manifest.resolve(s.lidar.path), dtype=np.float32).reshape(-1, 5)[:, :4]
            pts.tofile(sdir / "velodyne" / f"{stem}.bin")
            pan = np.load(manifest.resolve(s.gt_panoptic))["data"].astype(np.uint32)
            raw = FINE_TO_RAW[pan // 1000].astype(np.uint32)
            ((pan % 1000) << 16 | raw).astype(np.uint32).tofile(sdir / "labels" / f"{stem}.label")
            cam = s.cameras[front]
            img = cv2.imread(str(manifest.resolve(cam.path)), cv2.IMREAD_COLOR)
            cv2.imwrite(str(sdir / "image_2" / f"{stem}.png"), img)
            if cam.gt_panoptic2d:
                pan2d = read_label_map(manifest.resolve(cam.gt_panoptic2d), s.token).astype(np.int64)
                train2d = RAW_TO_TRAIN[FINE_TO_RAW[pan2d // 1000]].astype(np.int64)
                cv2.imwrite(str(tmp / "lidarlift_gt" / "panoptic2d" / seq / f"{stem}.png"),
                            (train2d * 1000 + np.where(train2d > 0, pan2d % 1000, 0)).astype(np.uint16))
            if s.gt_visibility:
                vis = np.load(manifest.resolve(s.gt_visibility))[:, front:front + 1]
                np.save(tmp / "lidarlift_gt" / "visibility" / seq / f"{stem}.npy", vis)
            lidar_to_global = as_matrix(s.lidar.ego_to_global) @ as_matrix(s.lidar.lidar_to_ego)
            velo_pose = invert(lidar_to_global0) @ lidar_to_global  # velo_i -> velo_0
            poses.append(_row(tr @ velo_pose @ invert(tr)))
            times.append(f"{(s.lidar.timestamp - samples[0].lidar.timestamp) * 1e-6:.6e}")
            n_points += len(pts)
        (sdir / "poses.txt").write_text("\n".join(poses) + "\n")
        (sdir / "times.txt").write_text("\n".join(times) + "\n")
        n_frames += len(samples)
    return {"sequences": len(names), "frames": n_frames, "points": n_points}
