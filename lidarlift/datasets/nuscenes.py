"""nuScenes adapter: a manifest built through the official devkit (``nuscenes.nuscenes.NuScenes``)."""
from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

from lidarlift.geometry import check_intrinsic, check_rigid, make_transform
from lidarlift.manifest import NUSCENES_CAMERAS, CameraFrame, LidarFrame, Manifest, SampleRecord

from .readers import DatasetError

TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
          "log", "scene", "sample", "sample_data", "sample_annotation", "map")

#: Extra ground truth written by lidarlift's synthetic world (absent in real nuScenes).
GT_DIR = "lidarlift_gt"


def check_dataroot(dataroot: str | Path, version: str) -> None:
    """Raise DatasetError naming what is missing if ``dataroot`` is not a nuScenes dataset of ``version``."""
    root = Path(dataroot)
    if not root.is_dir():
        raise DatasetError(f"dataset.dataroot {root} is not a directory")
    meta = root / version
    if not meta.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        raise DatasetError(f"dataset.dataroot {root} is not a nuScenes dataset: no '{version}/' table folder (found: {found or 'none'})")
    missing = [t + ".json" for t in TABLES if not (meta / f"{t}.json").exists()]
    if missing:
        raise DatasetError(f"dataset.dataroot {root} is not a nuScenes dataset: {meta} lacks {', '.join(missing)}")
    for sub in ("samples", "sweeps"):
        if not (root / sub).is_dir():
            raise DatasetError(f"dataset.dataroot {root} is not a nuScenes dataset: no '{sub}/' folder")


def load_nusc(dataroot: str | Path, version: str):
    """The devkit's NuScenes object, after :func:`check_dataroot`; devkit chatter is swallowed."""
    from nuscenes.nuscenes import NuScenes

    check_dataroot(dataroot, version)
    with redirect_stdout(io.StringIO()):
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)


def scene_splits(version: str) -> dict[str, str]:
    """Official scene name -> 'train' | 'val' | 'test' for a devkit version."""
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if version.endswith("mini"):
        pairs = {"train": "mini_train", "val": "mini_val"}
    elif version.endswith("test"):
        pairs = {"test": "test"}
    else:
        pairs = {"train": "train", "val": "val"}
    return {name: ours for ours, theirs in pairs.items() for name in splits[theirs]}


def _pose(nusc, sd: dict) -> tuple[np.ndarray, np.ndarray]:
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    ep = nusc.get("ego_pose", sd["ego_pose_token"])
    s2e = check_rigid(make_transform(cs["rotation"], cs["translation"]), f"calibrated_sensor {cs['token']} of {sd['filename']}")
    e2g = check_rigid(make_transform(ep["rotation"], ep["translation"]), f"ego_pose {ep['token']} of {sd['filename']}")
    return s2e, e2g


def _lidar_frame(nusc, sd: dict) -> LidarFrame:
    s2e, e2g = _pose(nusc, sd)
    return LidarFrame(path=sd["filename"], timestamp=int(sd["timestamp"]), lidar_to_ego=s2e.tolist(),
                      ego_to_global=e2g.tolist(), token=sd["token"], fmt="nuscenes")


def _walk(nusc, sd: dict, direction: str, n: int) -> list[LidarFrame]:
    out = []
    while len(out) < n and sd[direction]:
        sd = nusc.get("sample_data", sd[direction])
        out.append(_lidar_frame(nusc, sd))
    return out


#: At most this many sweeps are listed between two keyframes (nuScenes has 9-11 at 20 Hz between its
#: 2 Hz keyframes; more means a gap in the keyframes, and the sweeps beyond are left out).
MAX_INTERMEDIATE_SWEEPS = 30


def _intermediate(nusc, sd: dict) -> list[LidarFrame]:
    """The sweeps between the previous keyframe and keyframe ``sd`` (exclusive), nearest first."""
    out = []
    while sd["prev"] and len(out) < MAX_INTERMEDIATE_SWEEPS:
        sd = nusc.get("sample_data", sd["prev"])
        if sd["is_key_frame"]:
            break
        out.append(_lidar_frame(nusc, sd))
    return out


def build_manifest(cfg: dict[str, Any]) -> Manifest:
    """Manifest of every keyframe of ``cfg['dataroot']`` / ``cfg['version']``, one shard per scene.

    Config keys (the ``dataset`` section; defaults from the schema): dataroot, version, sweeps_prev, sweeps_next, scenes (optional
    list of scene names to keep), label_space. Every keyframe also lists its ``intermediate_sweeps``: all
    sweeps back to the previous keyframe (at most :data:`MAX_INTERMEDIATE_SWEEPS`).
    """
    from . import dataset_section

    cfg = dataset_section(cfg)
    dataroot = Path(cfg["dataroot"])
    version = cfg["version"]
    nusc = load_nusc(dataroot, version)
    splits = scene_splits(version)
    keep = set(cfg.get("scenes") or [])
    n_prev, n_next = int(cfg["sweeps_prev"]), int(cfg["sweeps_next"])
    gt_root = dataroot / GT_DIR / version
    has_lidarseg = hasattr(nusc, "lidarseg") and len(getattr(nusc, "lidarseg", [])) > 0
    has_panoptic = hasattr(nusc, "panoptic") and len(getattr(nusc, "panoptic", [])) > 0

    samples: list[SampleRecord] = []
    for scene in sorted(nusc.scene, key=lambda s: s["name"]):
        if keep and scene["name"] not in keep:
            continue
        split = splits.get(scene["name"], "test")
        token, index = scene["first_sample_token"], 0
        while token:
            sample = nusc.get("sample", token)
            lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
            cams = []
            for ch in NUSCENES_CAMERAS:
                if ch not in sample["data"]:
                    raise DatasetError(f"sample {token}: no {ch} image in scene {scene['name']}")
                sd = nusc.get("sample_data", sample["data"][ch])
                c2e, e2g = _pose(nusc, sd)
                cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
                k = check_intrinsic(np.asarray(cs["camera_intrinsic"]), sd["width"], sd["height"],
                                    f"calibrated_sensor {cs['token']} ({ch}) of sample {token}")
                gt2d = gt_root / "panoptic2d" / f"{sd['token']}.png"
                cams.append(CameraFrame(channel=ch, path=sd["filename"], timestamp=int(sd["timestamp"]),
                                        width=int(sd["width"]), height=int(sd["height"]), intrinsic=k.tolist(),
                                        cam_to_ego=c2e.tolist(), ego_to_global=e2g.tolist(), token=sd["token"],
                                        gt_panoptic2d=str(gt2d.relative_to(dataroot)) if gt2d.exists() else None))
            vis = gt_root / "visibility" / f"{lidar_sd['token']}.npy"
            samples.append(SampleRecord(
                token=token, shard=scene["name"], split=split, index=index,
                lidar=_lidar_frame(nusc, lidar_sd), cameras=cams,
                prev_sweeps=_walk(nusc, lidar_sd, "prev", n_prev),
                next_sweeps=_walk(nusc, lidar_sd, "next", n_next),
                intermediate_sweeps=_intermediate(nusc, lidar_sd),
                gt_lidarseg=nusc.get("lidarseg", lidar_sd["token"])["filename"] if has_lidarseg else None,
                gt_panoptic=nusc.get("panoptic", lidar_sd["token"])["filename"] if has_panoptic else None,
                gt_visibility=str(vis.relative_to(dataroot)) if vis.exists() else None,
            ))
            token, index = sample["next"], index + 1
    if not samples:
        raise DatasetError(f"dataset.dataroot {dataroot} ({version}): no keyframes (scene filter: {sorted(keep) or 'none'})")
    return Manifest(kind="nuscenes", dataroot=str(dataroot.resolve()), version=version, cameras=list(NUSCENES_CAMERAS),
                    label_space=cfg.get("label_space", "nuscenes16"), samples=samples)
