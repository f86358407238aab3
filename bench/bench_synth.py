"""Benchmark of the synthetic world generator: speed (samples / min) and dataset size.

    .venv/bin/python bench/bench_synth.py                 # the default world (10 scenes x 6 keyframes)
    .venv/bin/python bench/bench_synth.py --scenes 3 --workers 1 --out /tmp/w

Prints a table and writes bench/out/synth.json. ``--check`` also measures, on the generated world,
the classes the LiDAR sees and the share of camera-visible LiDAR points that project (nuScenes
transform chain) onto a panoptic2d pixel of their own (fine class, instance).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lidarlift.classes import CHALLENGE_CLASSES, FINE_TO_CHALLENGE  # noqa: E402
from lidarlift.synth import CAMERA_CHANNELS, WorldParams, generate  # noqa: E402


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6 if path.exists() else 0.0


def check_world(root: Path, version: str) -> dict:
    """Classes seen by the LiDAR and the projection-consistency share (see module docstring)."""
    import cv2
    from nuscenes.nuscenes import NuScenes
    from pyquaternion import Quaternion

    def T(rec):
        M = np.eye(4)
        M[:3, :3] = Quaternion(rec["rotation"]).rotation_matrix
        M[:3, 3] = rec["translation"]
        return M

    nusc = NuScenes(version, str(root), verbose=False)
    seen, match, visible, pts_per_kf = set(), 0, 0, []
    for s in nusc.sample:
        sd = nusc.get("sample_data", s["data"]["LIDAR_TOP"])
        pts = np.fromfile(root / sd["filename"], np.float32).reshape(-1, 5)
        pts_per_kf.append(len(pts))
        fine = np.fromfile(root / nusc.get("lidarseg", sd["token"])["filename"], np.uint8)
        seen |= set(np.unique(FINE_TO_CHALLENGE[fine]).tolist())
        pan = np.load(root / nusc.get("panoptic", sd["token"])["filename"])["data"]
        vis = np.load(root / "lidarlift_gt" / version / "visibility" / f"{sd['token']}.npy")
        g_from_l = T(nusc.get("ego_pose", sd["ego_pose_token"])) @ T(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))
        P = np.c_[pts[:, :3], np.ones(len(pts))].T
        for c, ch in enumerate(CAMERA_CHANNELS):
            cam = nusc.get("sample_data", s["data"][ch])
            cs = nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])
            q = (np.linalg.inv(T(cs)) @ np.linalg.inv(T(nusc.get("ego_pose", cam["ego_pose_token"]))) @ g_from_l @ P)[:3]
            uvw = np.asarray(cs["camera_intrinsic"]) @ q
            with np.errstate(divide="ignore", invalid="ignore"):
                u, v = np.round(uvw[0] / uvw[2]), np.round(uvw[1] / uvw[2])
            img = cv2.imread(str(root / "lidarlift_gt" / version / "panoptic2d" / f"{cam['token']}.png"), cv2.IMREAD_UNCHANGED)
            m = vis[:, c]
            ok = m & (q[2] > 0) & (u >= 0) & (u < img.shape[1]) & (v >= 0) & (v < img.shape[0])
            match += int((img[v[ok].astype(int), u[ok].astype(int)] == pan[ok]).sum())
            visible += int(m.sum())
    return {
        "challenge_classes_seen": sorted(CHALLENGE_CLASSES[c - 1] for c in seen if c > 0),
        "all_16_classes": all(c in seen for c in range(1, 17)),
        "projection_consistency": round(match / max(visible, 1), 5),
        "visible_points": visible,
        "points_per_keyframe_mean": float(np.mean(pts_per_kf)),
        "points_per_keyframe_min": int(np.min(pts_per_kf)),
        "points_per_keyframe_max": int(np.max(pts_per_kf)),
    }


def main(argv: list[str] | None = None) -> int:
    d = WorldParams.from_config()  # the defaults: config/schema.yaml
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=d.scenes)
    ap.add_argument("--samples-per-scene", type=int, default=d.samples_per_scene)
    ap.add_argument("--image-width", type=int, default=d.image_width)
    ap.add_argument("--image-height", type=int, default=d.image_height)
    ap.add_argument("--beams", type=int, default=d.beams)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default=None, help="keep the world here (default: a temporary directory)")
    ap.add_argument("--check", action="store_true", help="also measure classes seen and projection consistency")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "out" / "synth.json"))
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        stats = generate(out, seed=a.seed, scenes=a.scenes, samples_per_scene=a.samples_per_scene,
                         image_width=a.image_width, image_height=a.image_height, beams=a.beams, workers=a.workers)
        version = d.version
        row = {
            "scenes": stats["scenes"], "keyframes": stats["samples"], "sweeps": stats["sweeps"],
            "images": stats["images"], "keyframe_points": stats["points"],
            "points_per_keyframe": round(stats["points"] / stats["samples"]),
            "seconds": stats["seconds"], "samples_per_min": round(60 * stats["samples"] / stats["seconds"], 1),
            "size_mb": round(stats["bytes"] / 1e6, 1),
            "size_mb_by_part": {p: round(_dir_mb(out / p), 1) for p in ("samples", "sweeps", "lidarseg", "panoptic",
                                                                        "lidarlift_gt", version)},
            "image_size": [a.image_width, a.image_height], "beams": a.beams,
            "cpus": os.cpu_count(), "workers": json.loads((out / "lidarlift_gt" / version / "world.json").read_text())["workers"],
            "host": platform.node(), "python": platform.python_version(),
        }
        if a.check:
            t0 = time.perf_counter()
            row.update(check_world(out, version))
            row["check_seconds"] = round(time.perf_counter() - t0, 1)
    finally:
        if not a.out:
            shutil.rmtree(out, ignore_errors=True)
    width = max(len(k) for k in row)
    print(f"{'metric':<{width}}  value")
    for k, v in row.items():
        print(f"{k:<{width}}  {v}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
