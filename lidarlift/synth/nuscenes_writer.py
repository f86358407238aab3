"""Writes a synthetic world in the exact nuScenes layout (devkit 1.2.x loadable).

Layout under ``out_dir``::

    <version>/{attribute,calibrated_sensor,category,ego_pose,instance,log,map,sample,sample_annotation,
               sample_data,scene,sensor,visibility,lidarseg,panoptic}.json
    samples/<CHANNEL>/<logfile>__<CHANNEL>__<ts>.{pcd.bin,jpg}     keyframes
    sweeps/LIDAR_TOP/<logfile>__LIDAR_TOP__<ts>.pcd.bin            non-keyframe sweeps
    lidarseg/<version>/<lidar_sd_token>_lidarseg.bin               uint8 fine index per point
    panoptic/<version>/<lidar_sd_token>_panoptic.npz               key 'data', uint16 1000 * fine + inst
    maps/<token>.png                                               tiny placeholder map
    lidarlift_gt/<version>/panoptic2d/<cam_sd_token>.png           uint16, same encoding, 0 = sky
    lidarlift_gt/<version>/visibility/<lidar_sd_token>.npy         (N, 6) bool, CAMERA_CHANNELS order
    lidarlift_gt/<version>/sweeps/<lidar_sd_token>.npz             key 'data', uint16 1000 * fine + inst per
                                                                   point of a non-keyframe sweep (sweeps/)
    lidarlift_gt/<version>/world.json                              params, seed, per-scene stats

Tokens are 32 hex digits from md5 of (seed, version, record identity): stable across runs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lidarlift.classes import FINE_CLASSES

TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
          "sample_annotation", "sample_data", "scene", "sensor", "visibility", "lidarseg", "panoptic")

ATTRIBUTES = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.stopped": "Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move.",
    "vehicle.parked": "Vehicle is stationary (usually for longer duration) with no immediate intent to move.",
    "cycle.with_rider": "There is someone riding the bicycle or motorcycle.",
    "cycle.without_rider": "There is NO rider on the bicycle or motorcycle.",
    "pedestrian.sitting_lying_down": "The human is sitting or lying down.",
    "pedestrian.standing": "The human is standing.",
    "pedestrian.moving": "The human is moving.",
}
VISIBILITY_LEVELS = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))
VEHICLE_NAME = "n015"


def _stable_token(*parts) -> str:
    return hashlib.md5("|".join(str(p) for p in parts).encode()).hexdigest()


@dataclass
class SceneContext:
    """Per-scene bookkeeping: sample_data per channel in time order, annotations per instance."""

    name: str
    token: str
    log_token: str
    logfile: str
    samples: list[dict] = field(default_factory=list)
    sample_data: dict[str, list[dict]] = field(default_factory=dict)
    calib_tokens: dict[str, str] = field(default_factory=dict)
    annotations: dict[int, list[dict]] = field(default_factory=dict)  # instance id -> records in time order
    instance_category: dict[int, str] = field(default_factory=dict)
    instance_tokens: dict[int, str] = field(default_factory=dict)


class NuScenesWriter:
    """Accumulates records and writes files; call :meth:`finish` to write the JSON tables."""

    def __init__(self, out_dir: str | Path, version: str, seed: int):
        self.root = Path(out_dir)
        self.version = version
        self.seed = seed
        self.tables: dict[str, list[dict]] = {t: [] for t in TABLES}
        for sub in (version, "maps", f"lidarseg/{version}", f"panoptic/{version}", "sweeps/LIDAR_TOP",
                    f"lidarlift_gt/{version}/panoptic2d", f"lidarlift_gt/{version}/visibility",
                    f"lidarlift_gt/{version}/sweeps"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.category_tokens = {}
        for i, name in enumerate(FINE_CLASSES):
            tok = self.token("category", name)
            self.category_tokens[name] = tok
            self.tables["category"].append({"token": tok, "name": name, "description": f"synthetic {name}", "index": i})
        self.attribute_tokens = {}
        for name, desc in ATTRIBUTES.items():
            tok = self.token("attribute", name)
            self.attribute_tokens[name] = tok
            self.tables["attribute"].append({"token": tok, "name": name, "description": desc})
        for tok, level in VISIBILITY_LEVELS:
            self.tables["visibility"].append({"token": tok, "level": level,
                                              "description": f"visibility of whole object is between {level[1:].replace('-', ' and ')} %"})
        self.sensor_tokens = {}
        self.map_token = self.token("map")
        self.n_files = 0

    def token(self, *parts) -> str:
        return _stable_token(self.seed, self.version, *parts)

    # ---- setup -----------------------------------------------------------------------------------
    def add_sensor(self, channel: str, modality: str) -> str:
        if channel not in self.sensor_tokens:
            tok = self.token("sensor", channel)
            self.sensor_tokens[channel] = tok
            self.tables["sensor"].append({"token": tok, "channel": channel, "modality": modality})
        return self.sensor_tokens[channel]

    def begin_scene(self, name: str, description: str, location: str, date_captured: str, logfile: str) -> SceneContext:
        log_token = self.token("log", name)
        self.tables["log"].append({"token": log_token, "logfile": logfile, "vehicle": VEHICLE_NAME,
                                   "date_captured": date_captured, "location": location})
        return SceneContext(name=name, token=self.token("scene", name), log_token=log_token, logfile=logfile)

    def add_calibrated_sensor(self, ctx: SceneContext, channel: str, modality: str, translation, rotation_wxyz,
                              intrinsic) -> str:
        sensor_token = self.add_sensor(channel, modality)
        tok = self.token("calibrated_sensor", ctx.name, channel)
        self.tables["calibrated_sensor"].append({
            "token": tok, "sensor_token": sensor_token,
            "translation": [float(v) for v in translation], "rotation": [float(v) for v in rotation_wxyz],
            "camera_intrinsic": [] if intrinsic is None else np.asarray(intrinsic, float).tolist(),
        })
        ctx.calib_tokens[channel] = tok
        return tok

    # ---- records ---------------------------------------------------------------------------------
    def add_sample(self, ctx: SceneContext, timestamp: int) -> str:
        tok = self.token("sample", ctx.name, timestamp)
        ctx.samples.append({"token": tok, "timestamp": int(timestamp), "scene_token": ctx.token, "next": "", "prev": ""})
        return tok

    def add_sample_data(self, ctx: SceneContext, channel: str, timestamp: int, is_key_frame: bool, sample_token: str,
                        ego_translation, ego_rotation_wxyz, fileformat: str, width: int = 0, height: int = 0) -> dict:
        """Create a sample_data record (+ its ego_pose, same token as in nuScenes). Returns the record;
        its 'filename' is where the caller writes the data (relative to the dataroot)."""
        tok = self.token("sample_data", ctx.name, channel, timestamp)
        folder = "samples" if is_key_frame else "sweeps"
        ext = "pcd.bin" if fileformat == "pcd" else "jpg"
        rec = {"token": tok, "sample_token": sample_token, "ego_pose_token": tok,
               "calibrated_sensor_token": ctx.calib_tokens[channel],
               "filename": f"{folder}/{channel}/{ctx.logfile}__{channel}__{int(timestamp)}.{ext}",
               "fileformat": fileformat, "width": int(width), "height": int(height), "timestamp": int(timestamp),
               "is_key_frame": bool(is_key_frame), "next": "", "prev": ""}
        ctx.sample_data.setdefault(channel, []).append(rec)
        self.tables["ego_pose"].append({"token": tok, "timestamp": int(timestamp),
                                        "translation": [float(v) for v in ego_translation],
                                        "rotation": [float(v) for v in ego_rotation_wxyz]})
        return rec

    def path(self, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_points(self, rec: dict, points: np.ndarray) -> None:
        """points: (N, 5) float32 x, y, z, intensity, ring in the LIDAR_TOP frame."""
        np.ascontiguousarray(points, np.float32).tofile(self.path(rec["filename"]))
        self.n_files += 1

    def write_image(self, rec: dict, rgb: np.ndarray, quality: int) -> None:
        cv2.imwrite(str(self.path(rec["filename"])), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        self.n_files += 1

    def write_lidar_labels(self, lidar_sd_token: str, fine: np.ndarray, instance: np.ndarray) -> None:
        """lidarseg .bin (uint8 fine) and panoptic .npz (uint16 1000 * fine + instance)."""
        rel = f"lidarseg/{self.version}/{lidar_sd_token}_lidarseg.bin"
        np.ascontiguousarray(fine, np.uint8).tofile(self.root / rel)
        self.tables["lidarseg"].append({"token": lidar_sd_token, "sample_data_token": lidar_sd_token, "filename": rel})
        rel = f"panoptic/{self.version}/{lidar_sd_token}_panoptic.npz"
        pan = fine.astype(np.uint16) * 1000 + instance.astype(np.uint16)
        np.savez_compressed(self.root / rel, data=pan)
        self.tables["panoptic"].append({"token": lidar_sd_token, "sample_data_token": lidar_sd_token, "filename": rel})

    def write_sweep_truth(self, lidar_sd_token: str, fine: np.ndarray, instance: np.ndarray) -> None:
        """Per-point truth of a non-keyframe sweep, in the keyframe panoptic files' encoding: npz key 'data',
        (N,) uint16 1000 * fine + instance (instance ids as in the scene's keyframes, 0 for stuff and noise)."""
        pan = fine.astype(np.uint16) * 1000 + instance.astype(np.uint16)
        np.savez_compressed(self.root / f"lidarlift_gt/{self.version}/sweeps/{lidar_sd_token}.npz", data=pan)

    def write_panoptic2d(self, cam_sd_token: str, panoptic: np.ndarray) -> None:
        cv2.imwrite(str(self.root / f"lidarlift_gt/{self.version}/panoptic2d/{cam_sd_token}.png"),
                    np.ascontiguousarray(panoptic, np.uint16))

    def write_visibility(self, lidar_sd_token: str, visible: np.ndarray) -> None:
        np.save(self.root / f"lidarlift_gt/{self.version}/visibility/{lidar_sd_token}.npy", np.asarray(visible, bool))

    def add_annotation(self, ctx: SceneContext, sample_token: str, instance_id: int, category: str,
                       translation, size_wlh, rotation_wxyz, num_lidar_pts: int, visibility_token: str,
                       attribute: str) -> str:
        tok = self.token("sample_annotation", ctx.name, instance_id, sample_token)
        if instance_id not in ctx.instance_tokens:
            ctx.instance_tokens[instance_id] = self.token("instance", ctx.name, instance_id)
            ctx.instance_category[instance_id] = category
        rec = {"token": tok, "sample_token": sample_token, "instance_token": ctx.instance_tokens[instance_id],
               "visibility_token": visibility_token,
               "attribute_tokens": [self.attribute_tokens[attribute]] if attribute else [],
               "translation": [float(v) for v in translation], "size": [float(v) for v in size_wlh],
               "rotation": [float(v) for v in rotation_wxyz], "prev": "", "next": "",
               "num_lidar_pts": int(num_lidar_pts), "num_radar_pts": 0}
        ctx.annotations.setdefault(instance_id, []).append(rec)
        return tok

    def end_scene(self, ctx: SceneContext, description: str) -> None:
        """Link the doubly-linked lists and emit the scene's records."""
        _link(ctx.samples)
        self.tables["sample"].extend(ctx.samples)
        for channel in ctx.sample_data:
            recs = sorted(ctx.sample_data[channel], key=lambda r: r["timestamp"])
            _link(recs)
            self.tables["sample_data"].extend(recs)
        for iid in sorted(ctx.annotations):
            anns = ctx.annotations[iid]
            _link(anns)
            self.tables["sample_annotation"].extend(anns)
            self.tables["instance"].append({
                "token": ctx.instance_tokens[iid], "category_token": self.category_tokens[ctx.instance_category[iid]],
                "nbr_annotations": len(anns), "first_annotation_token": anns[0]["token"],
                "last_annotation_token": anns[-1]["token"]})
        self.tables["scene"].append({
            "token": ctx.token, "log_token": ctx.log_token, "nbr_samples": len(ctx.samples),
            "first_sample_token": ctx.samples[0]["token"], "last_sample_token": ctx.samples[-1]["token"],
            "name": ctx.name, "description": description})

    def finish(self, world_info: dict) -> None:
        """Write the map placeholder, all JSON tables and lidarlift_gt/<version>/world.json."""
        map_rel = f"maps/{self.map_token}.png"
        cv2.imwrite(str(self.root / map_rel), np.zeros((8, 8), np.uint8))
        self.tables["map"] = [{"token": self.map_token, "log_tokens": [r["token"] for r in self.tables["log"]],
                               "category": "semantic_prior", "filename": map_rel}]
        for name, recs in self.tables.items():
            with open(self.root / self.version / f"{name}.json", "w") as f:
                json.dump(recs, f, indent=0, separators=(",", ":"))
        with open(self.root / f"lidarlift_gt/{self.version}/world.json", "w") as f:
            json.dump(world_info, f, indent=1, sort_keys=True)


def _link(recs: list[dict]) -> None:
    for a, b in zip(recs[:-1], recs[1:]):
        a["next"], b["prev"] = b["token"], a["token"]
