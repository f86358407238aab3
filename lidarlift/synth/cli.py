"""Entry points: :func:`generate` (Python API) and :func:`main` (``python -m lidarlift.synth``)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lidarlift.config import section
from lidarlift.shards import synthetic_scenes as scene_names  # the planner's list: one source
from lidarlift.synth.dataroot import staged_world
from lidarlift.synth.nuscenes_writer import NuScenesWriter
from lidarlift.synth.sensors import (
    CAMERA_CHANNELS, LIDAR_CHANNEL, SceneCaster, camera_rig, camera_time_offsets, cast_sweep, lidar_calib,
    point_visibility, render_camera, rotation_to_quaternion,
)
from lidarlift.synth.world import WorldParams, build_scene, rot_z


def _logfile(index: int) -> tuple[str, str]:
    day = 1 + index % 28
    month = 7 + (index // 28) % 5
    hh, mm, ss = 9 + index % 9, (index * 7) % 60, (index * 13) % 60
    date = f"2018-{month:02d}-{day:02d}"
    return f"n015-{date}-{hh:02d}-{mm:02d}-{ss:02d}+0800", date


#: Tables whose records belong to one scene (produced by a worker, merged in scene order).
SCENE_TABLES = ("log", "scene", "sample", "sample_data", "ego_pose", "sample_annotation", "instance",
                "calibrated_sensor", "lidarseg", "panoptic")


def _scene_job(args: tuple) -> tuple[dict, dict]:
    """Generate one scene (in a worker process or inline); returns (stats, its table records)."""
    root, p, index, name, split = args
    t0 = time.perf_counter()
    writer = NuScenesWriter(root, p.version, p.seed)
    info = _generate_scene(writer, p, index, name, lidar_calib(p.lidar.mount_height), camera_rig(p.image_width, p.image_height),
                           camera_time_offsets(p.sweep_period))
    info.update(split=split, seconds=round(time.perf_counter() - t0, 2))
    return info, {t: writer.tables[t] for t in SCENE_TABLES}


#: Worker bootstrap. open3d's __init__ imports open3d.ml, which drags in sklearn and friends (seconds
#: per process); the generator only needs RaycastingScene, so worker processes -- and only they --
#: get an empty placeholder for open3d.ml.
_WORKER_BOOT = """
import sys, types
_ml = types.ModuleType("open3d.ml")
_ml.__path__ = []
sys.modules["open3d.ml"] = _ml
from lidarlift.synth.cli import _scene_job_file
sys.exit(_scene_job_file(sys.argv[1]))
"""


def _run_in_subprocesses(root: Path, jobs: list[tuple], workers: int) -> list[tuple[dict, dict]]:
    """Run scene jobs in ``workers`` fresh interpreters (:data:`_WORKER_BOOT`), scenes dealt
    round-robin. Fresh processes rather than multiprocessing: fork is unsafe once
    open3d's thread pool exists, and spawn re-imports the caller's __main__ (which breaks
    ``python -c`` callers and Snakemake scripts)."""
    job_dir = root / ".synth_jobs"
    job_dir.mkdir(exist_ok=True)
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[2])  # so the child imports this very package
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

    def run(w: int) -> dict[int, tuple[dict, dict]]:
        mine = jobs[w::workers]
        p = mine[0][1]
        params = dataclasses.asdict(p)
        params["class_frequency"] = dict(p.class_frequency)
        spec, result = job_dir / f"job-{w}.json", job_dir / f"result-{w}.json"
        spec.write_text(json.dumps({"root": str(root), "params": params, "result": str(result),
                                    "scenes": [[index, name, split] for _, _, index, name, split in mine]}))
        proc = subprocess.run([sys.executable, "-c", _WORKER_BOOT, str(spec)], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"worker {w} failed:\n{proc.stderr[-3000:]}")
        return {int(k): (v["info"], v["tables"]) for k, v in json.loads(result.read_text()).items()}

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done: dict[int, tuple[dict, dict]] = {}
            for part in pool.map(run, range(min(workers, len(jobs)))):
                done.update(part)
        return [done[job[2]] for job in jobs]
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def _scene_job_file(spec_path: str) -> int:
    """Worker entry point: generate the scenes listed in a job file, write their results."""
    spec = json.loads(Path(spec_path).read_text())
    p = WorldParams(**spec["params"]).validate()
    out = {}
    for index, name, split in spec["scenes"]:
        info, tables = _scene_job((Path(spec["root"]), p, index, name, split))
        out[index] = {"info": info, "tables": tables}
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


def layout_params(synth: dict, layout: str) -> dict:
    """The ``synth`` config section for a world written in ``layout`` ('nuscenes' or 'semantickitti'):
    ``sensor: auto`` (or no sensor) becomes the layout's own LiDAR -- nuScenes' ``nuscenes32``,
    SemanticKITTI's ``kitti64`` (:data:`lidarlift.datasets.semantickitti.SYNTHETIC_SENSOR`)."""
    from lidarlift.datasets.semantickitti import SYNTHETIC_SENSOR

    out = dict(synth)
    if out.get("sensor", "auto") == "auto":
        out["sensor"] = SYNTHETIC_SENSOR if layout == "semantickitti" else "nuscenes32"
    return out


def generate(out_dir: str | Path, workers: int | None = None, **params) -> dict:
    """Generate a synthetic nuScenes-format world into ``out_dir`` (the dataroot).

    ``params`` are keys of the ``synth`` config section (seed, scenes, samples_per_scene, image_width,
    image_height, sensor -- the LiDAR preset, auto | nuscenes32 | kitti64 | os128 --, beams,
    class_frequency, ...; config/schema.yaml) and ``version`` (``dataset.version``); those not given
    take the schema's defaults (:meth:`~lidarlift.synth.world.WorldParams.from_config`), and
    ``sensor: auto`` is the nuScenes layout's ``nuscenes32`` (recorded so in world.json). Invalid values
    raise ValueError naming the key.
    ``out_dir`` must be empty, absent or hold only a world the generator wrote (its marker, see
    :mod:`lidarlift.synth.dataroot`), else :class:`~lidarlift.synth.dataroot.ForeignDatarootError` (a
    ValueError naming the folder and ``dataset.kind: existing``) is raised and nothing is touched; the
    new world replaces the old one only once it is complete. ``workers``: scenes generated in parallel
    processes (default: the CPUs this process may use, for >= 4 scenes, else 1); the output does not depend on it.
    Returns {scenes, samples, sweeps, points, images, seconds, generation_seconds, bytes}.
    """
    synth = layout_params({k: v for k, v in params.items() if k != "version"}, "nuscenes")
    p = WorldParams.from_config(synth, version=params.get("version")).validate()
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(cpus, p.scenes) if p.scenes >= 4 else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"parameter 'workers' must be an integer >= 1, got {workers!r}")
    t_start = time.perf_counter()
    scenes = scene_names(p.version, p.scenes)
    with staged_world(out_dir) as root:  # refuses foreign data; the world appears complete or not at all
        totals = _generate_world(root, p, scenes, workers, t_start)
    root = Path(out_dir)
    totals["seconds"] = round(time.perf_counter() - t_start, 2)
    totals["bytes"] = sum(f.stat().st_size for sub in totals.pop("entries") for f in [root / sub, *(root / sub).rglob("*")]
                          if f.is_file())
    return totals


def _generate_world(root: Path, p: WorldParams, scenes: list[tuple[str, str]], workers: int, t_start: float) -> dict:
    """Write the world into ``root`` (the staging folder); returns the totals and its top-level ``entries``."""
    writer = NuScenesWriter(root, p.version, p.seed)
    writer.add_sensor(LIDAR_CHANNEL, "lidar")
    for ch in CAMERA_CHANNELS:
        writer.add_sensor(ch, "camera")
    totals = {"scenes": 0, "samples": 0, "sweeps": 0, "points": 0, "images": 0}
    scene_info = []
    jobs = [(root, p, index, name, split) for index, (name, split) in enumerate(scenes)]
    if workers > 1:
        results = _run_in_subprocesses(root, jobs, workers)
    else:
        results = [_scene_job(job) for job in jobs]
    for info, tables in results:  # merge in scene order: output independent of ``workers``
        for name in SCENE_TABLES:
            writer.tables[name].extend(tables[name])
        scene_info.append(info)
        totals["scenes"] += 1
        totals["samples"] += info["keyframes"]
        totals["sweeps"] += info["sweeps"]
        totals["points"] += info["keyframe_points"]
        totals["images"] += info["images"]
    seconds = time.perf_counter() - t_start
    params_dict = dataclasses.asdict(p)
    params_dict["class_frequency"] = dict(p.class_frequency)
    writer.finish({
        "generator": "lidarlift.synth", "workers": workers, "seed": p.seed, "version": p.version, "params": params_dict,
        "camera_channels": list(CAMERA_CHANNELS),
        "lidar": {**dataclasses.asdict(p.lidar), "sweeps_per_keyframe": p.keyframe_sweeps,
                  "sweeps_before_first": p.lead_sweeps},
        "conventions": {
            "panoptic": "uint16 1000 * fine index + instance id (1.. per scene for fine classes 1..23, 0 for stuff/noise)",
            "panoptic2d": "uint16 PNG, same encoding, 0 = sky; pixel (v, u) rendered along the ray through image "
                          "coordinates (u, v): project with the calibrated intrinsics and round()",
            "visibility": "(N, 6) bool per keyframe point, columns in camera_channels order",
            "sweeps": "lidarlift_gt/<version>/sweeps/<sample_data token>.npz per non-keyframe sweep: key 'data', "
                      "uint16 1000 * fine index + instance id per point (the panoptic encoding)",
        },
        "scenes": scene_info, "totals": totals,
    })
    totals["generation_seconds"] = round(seconds, 2)
    totals["entries"] = sorted(os.listdir(root))
    return totals


def _generate_scene(writer: NuScenesWriter, p: WorldParams, index: int, name: str, lidar, cams, offsets) -> dict:
    world = build_scene(p, index)
    caster = SceneCaster(world)
    rng = np.random.default_rng(np.random.SeedSequence([int(p.seed), int(index), 0x5E45]))
    logfile, date = _logfile(index)
    ctx = writer.begin_scene(name, world.description, world.location, date, logfile)
    writer.add_calibrated_sensor(ctx, LIDAR_CHANNEL, "lidar", lidar.translation, lidar.quaternion, None)
    for c in cams:
        writer.add_calibrated_sensor(ctx, c.channel, "camera", c.translation, c.quaternion, c.intrinsic)
    Rg, tg = world.global_from_local()
    gyaw = world.global_yaw

    def ego_global(tau: float) -> tuple[list[float], list[float]]:
        R, t = world.ego.pose(tau)
        return list(Rg @ t + tg), rotation_to_quaternion(Rg @ R)

    # integer microsecond timestamps first; simulation time tau derives from them exactly
    ts0 = 1_532_400_000_000_000 + index * 3_600_000_000 + int(rng.integers(0, 1_000_000))
    n_sweeps = p.sweeps_per_scene
    sweep_ts = [ts0 + int(round(k * p.sweep_period * 1e6)) + (int(rng.integers(-300, 301)) if k else 0)
                for k in range(n_sweeps)]
    key_idx = [p.lead_sweeps + j * p.keyframe_sweeps for j in range(p.samples_per_scene)]
    sample_tokens = [writer.add_sample(ctx, sweep_ts[k]) for k in key_idx]

    def tau_of(ts: int) -> float:
        return (ts - ts0) * 1e-6

    stats = {"name": name, "keyframes": len(key_idx), "sweeps": n_sweeps, "images": 0, "keyframe_points": 0,
             "sweep_points": 0, "world": world.stats}
    instances_seen: dict[int, int] = {}
    for k, ts in enumerate(sweep_ts):
        tau = tau_of(ts)
        sweep = cast_sweep(caster, p, tau, rng, lidar)
        is_key = k in key_idx
        j = min(np.searchsorted(key_idx, k), len(key_idx) - 1)  # sweeps belong to the next keyframe
        rec = writer.add_sample_data(ctx, LIDAR_CHANNEL, ts, is_key, sample_tokens[j], *ego_global(tau), "pcd")
        writer.write_points(rec, sweep.points)
        stats["sweep_points"] += len(sweep.points)
        if not is_key:
            writer.write_sweep_truth(rec["token"], sweep.fine, sweep.instance)
            continue
        stats["keyframe_points"] += len(sweep.points)
        writer.write_lidar_labels(rec["token"], sweep.fine, sweep.instance)
        cam_times = []
        for c in cams:
            ts_c = ts + int(round(offsets[c.channel] * 1e6)) + int(rng.integers(-500, 501))
            tau_c = tau_of(ts_c)
            rgb, pan = render_camera(caster, c, tau_c, rng)
            crec = writer.add_sample_data(ctx, c.channel, ts_c, True, sample_tokens[j], *ego_global(tau_c), "jpg",
                                          c.width, c.height)
            writer.write_image(crec, rgb, p.jpeg_quality)
            writer.write_panoptic2d(crec["token"], pan)
            cam_times.append((c, tau_c))
            stats["images"] += 1
        vis = point_visibility(caster, sweep, cam_times)
        writer.write_visibility(rec["token"], vis)
        # annotations: every thing with LiDAR points or within 40 m of the ego
        ego_xy = np.array(world.ego.state(tau)[:2])
        inst_ids, counts = np.unique(sweep.instance[sweep.instance > 0], return_counts=True)
        npts = dict(zip(inst_ids.tolist(), counts.tolist()))
        any_vis = vis.any(1)
        for th in world.things:
            n = npts.get(th.instance_id, 0)
            c_local = th.box_center(tau)
            if n == 0 and np.linalg.norm(c_local[:2] - ego_xy) > 40.0:
                continue
            if n:
                frac = float(any_vis[sweep.instance == th.instance_id].mean())
                level = "1" if frac <= 0.4 else "2" if frac <= 0.6 else "3" if frac <= 0.8 else "4"
            else:
                level = "1"
            writer.add_annotation(ctx, sample_tokens[j], th.instance_id, th.fine_name, Rg @ c_local + tg, th.size,
                                  rotation_to_quaternion(rot_z(th.yaw + gyaw)), n, level, th.attribute)
            instances_seen[th.instance_id] = instances_seen.get(th.instance_id, 0) + n
    writer.end_scene(ctx, world.description)
    stats["scene_token"] = ctx.token
    stats["instances"] = [
        {"id": th.instance_id, "category": th.fine_name, "moving": th.moving, "size_wlh": [round(v, 3) for v in th.size],
         "instance_token": ctx.instance_tokens.get(th.instance_id), "keyframe_points": instances_seen.get(th.instance_id, 0)}
        for th in world.things
    ]
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lidarlift.synth", description="Generate a synthetic nuScenes-format world.")
    d = section("synth")  # the defaults: config/schema.yaml
    ap.add_argument("--out", required=True, help="output dataroot")
    ap.add_argument("--seed", type=int, default=d["seed"])
    ap.add_argument("--scenes", type=int, default=d["scenes"])
    ap.add_argument("--samples-per-scene", type=int, default=d["samples_per_scene"])
    ap.add_argument("--image-width", type=int, default=d["image_width"])
    ap.add_argument("--image-height", type=int, default=d["image_height"])
    ap.add_argument("--sensor", default=d["sensor"],
                    help="LiDAR preset: auto (default: nuscenes32, the nuScenes layout's) | nuscenes32 | kitti64 | os128")
    ap.add_argument("--beams", type=int, default=d["beams"], help="override the preset's beam count (spread uniformly)")
    ap.add_argument("--version", default=section("dataset")["version"], choices=["v1.0-mini", "v1.0-trainval"])
    ap.add_argument("--sweeps-before-first", type=int, default=d["sweeps_before_first"])
    ap.add_argument("--class-frequency", default=json.dumps(d["class_frequency"]), help='JSON object, e.g. \'{"vehicle.car": 2.0}\'')
    ap.add_argument("--no-guarantee-things", action="store_true", help="do not force every thing class into each scene "
                    "(default: synth.guarantee_things)")
    ap.add_argument("--workers", type=int, default=None, help="parallel scene processes (default: all CPUs for >= 4 scenes)")
    a = ap.parse_args(argv)
    try:
        freq = json.loads(a.class_frequency)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--class-frequency: invalid JSON ({e})")
    try:
        stats = generate(a.out, seed=a.seed, scenes=a.scenes, samples_per_scene=a.samples_per_scene,
                         image_width=a.image_width, image_height=a.image_height, sensor=a.sensor, beams=a.beams,
                         version=a.version,
                         sweeps_before_first=a.sweeps_before_first, class_frequency=freq,
                         guarantee_things=d["guarantee_things"] and not a.no_guarantee_things, workers=a.workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats))
    return 0
