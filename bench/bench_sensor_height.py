"""Benchmark of the measured sensor height (lidarlift.ground.estimate_sensor_height) on the bench worlds:
per keyframe, the estimate against the road under the car (median height of the ground truth's
driveable-surface points within 15 m), and the seconds per keyframe. Prints a table, writes
``bench/sensor_height.json``.

    .venv/bin/python bench/bench_sensor_height.py --worlds /tmp/bw2   # the worlds of bench/bench_worlds.py --worlds /tmp/bw2

The estimator's constants were set by inspection on these same worlds (evaluation ones included): the
figures show its accuracy, not a held-out result; tests/test_ground.py checks mounts it never saw.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lidarlift.classes import label_space  # noqa: E402
from lidarlift.datasets import build_manifest  # noqa: E402
from lidarlift.datasets.readers import read_lidar  # noqa: E402
from lidarlift.ground import estimate_sensor_height  # noqa: E402
from lidarlift.groundtruth import point_truth  # noqa: E402
from lidarlift.manifest import Manifest  # noqa: E402

ROAD = 1 + list(label_space("nuscenes16").classes).index("driveable_surface")
NEAR_M = 15.0


def world_row(dataroot: Path) -> dict:
    manifest = Manifest.from_json(_manifest(dataroot))
    mount = json.loads((dataroot / "lidarlift_gt" / "v1.0-mini" / "world.json").read_text())["lidar"].get("mount_height", 1.84)
    err, secs = [], []
    for s in manifest.samples:
        xyz = read_lidar(manifest.resolve(s.lidar.path), s.lidar.fmt, s.token)[:, :3].astype(np.float64)
        t0 = time.perf_counter()
        h = estimate_sensor_height(xyz)
        secs.append(time.perf_counter() - t0)
        road = (point_truth(manifest, s).label == ROAD) & (np.hypot(xyz[:, 0], xyz[:, 1]) < NEAR_M)
        if road.any():
            err.append(h + float(np.median(xyz[road, 2])))
    e = np.asarray(err)
    return {"world": dataroot.name, "mount_height": mount, "keyframes": len(manifest.samples), "scored": len(e),
            "mean_error_m": float(e.mean()), "max_abs_error_m": float(np.abs(e).max()),
            "ms_per_keyframe": 1000 * float(np.mean(secs))}


def _manifest(dataroot: Path) -> Path:
    from lidarlift.config import load_config

    path = Path("/tmp") / f"sensor_height_{dataroot.name}.manifest.json"
    ds = {**load_config()["dataset"], "dataroot": str(dataroot), "version": "v1.0-mini", "format": "nuscenes", "scenes": []}
    build_manifest(ds).to_json(path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", required=True, help="folder of bench/bench_worlds.py --worlds")
    ap.add_argument("--json", default=str(REPO / "bench" / "sensor_height.json"))
    a = ap.parse_args()
    rows = [world_row(d) for d in sorted(Path(a.worlds).iterdir())
            if (d / "lidarlift_gt" / "v1.0-mini" / "world.json").exists()]
    print(f"{'world':28s} {'mount':>6s} {'keyframes':>9s} {'mean err':>9s} {'max |err|':>9s} {'ms':>6s}")
    for r in rows:
        print(f"{r['world']:28s} {r['mount_height']:6.2f} {r['keyframes']:9d} {r['mean_error_m']:+9.3f} "
              f"{r['max_abs_error_m']:9.3f} {r['ms_per_keyframe']:6.1f}")
    out = {"worlds": rows, "command": "bench/bench_sensor_height.py --worlds " + a.worlds,
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version()}
    Path(a.json).write_text(json.dumps(out, indent=1))
    print("written", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
