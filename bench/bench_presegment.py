"""Benchmark of the pre-segmentation stage: IUPC's baseline against lidarlift's default, one core.

Sweeps of synthetic worlds (lidarlift.synth; two worlds, seeds 0 and 1, generated here unless --dataroot is
given), by default with 1750 azimuth steps so that a keyframe holds about 34k points like a nuScenes sweep;
figures are pooled over all keyframes and given per world. Every method runs on
the same keyframes (the baseline with its 5 previous sweeps, ego-motion compensated, for ground fitting)
and is scored against the world's per-point truth with lidarlift.evaluate.presegment's metrics (the same
figures as the summary). Each keyframe's angular resolution is measured from its own sweep (lidarlift.scan,
with the ring ids of the file) and given to the methods that count in beams. Timing: fastest of
--repeats rounds per keyframe (methods interleaved), wall and CPU, OMP/BLAS at one thread; ground and
clustering timed apart. Goal: <= 0.15 s for a 34k-point sweep.

Usage: .venv/bin/python bench/bench_presegment.py [--dataroot DIR ...] [--seeds 0 1] [--scenes 3]
       [--samples 4] [--azimuth-steps 1750] [--repeats 3] [--baseline-repeats 1]
Prints a table; writes bench/out/presegment.json (with ratios default / baseline).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # per core

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lidarlift import presegment as P  # noqa: E402
from lidarlift.classes import label_space  # noqa: E402
from lidarlift.datasets import build_manifest  # noqa: E402
from lidarlift.evaluate.presegment import presegment_counts, presegment_figures  # noqa: E402
from lidarlift.evaluate.truth import SampleTruth  # noqa: E402
from lidarlift.ground import cell_plane_ground, iupc_ground  # noqa: E402
from lidarlift.scan import fixed_resolution, read_sweep  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "presegment.json"
GOAL_SECONDS = 0.15


def variants(p: P.PresegmentParams) -> dict[str, dict]:
    """name -> {ground(xyz, sweeps), cluster(xyz, scan), sweeps, note}; the first is the baseline, the second the default."""
    fast, iupc = p.fast, p.iupc
    ri, rc, vh = fast.range_image, fast.range_components, fast.voxel_hdbscan
    g_fast = lambda xyz, sw: cell_plane_ground(xyz, sw, fast.ground)  # noqa: E731
    g_iupc = lambda xyz, sw: iupc_ground(xyz, sw, iupc.ground, seed=p.seed)  # noqa: E731
    return {
        "iupc (baseline)": dict(ground=g_iupc, cluster=lambda x, s: P.hdbscan_labels(x, iupc.hdbscan), sweeps=iupc.sweeps,
                                note="RANSAC per polar cell over keyframe + 5 sweeps; HDBSCAN(5, eps 0.5)"),
        "fast (default)": dict(ground=g_fast, cluster=lambda x, s: P.range_image_segments(x, ri, scan=s), sweeps=fast.sweeps,
                               note="cell-plane ground; range-image segmentation (angle criterion, stacked parts)"),
        "fast ground + voxel components (previous default)": dict(
            ground=g_fast, cluster=lambda x, s: P.range_components(x, rc, scan=s), sweeps=fast.sweeps,
            note="range-adaptive components of voxel centroids"),
        "fast ground + HDBSCAN on all points": dict(ground=g_fast, cluster=lambda x, s: P.hdbscan_labels(x, fast.hdbscan),
                                                    sweeps=fast.sweeps, note="the baseline's clustering"),
        f"fast ground + voxel {vh.voxel} m HDBSCAN": dict(ground=g_fast, cluster=lambda x, s: P.voxel_hdbscan(x, vh),
                                                          sweeps=fast.sweeps, note="HDBSCAN on voxel centroids"),
        "fast ground with 5 earlier sweeps + range image": dict(
            ground=g_fast, cluster=lambda x, s: P.range_image_segments(x, ri, scan=s), sweeps=5,
            note="aggregation as IUPC does"),
        "iupc ground + range image": dict(ground=g_iupc, cluster=lambda x, s: P.range_image_segments(x, ri, scan=s),
                                          sweeps=iupc.sweeps, note="the baseline's ground, the default's clustering"),
    }


def _add(acc: dict, counts: dict) -> None:
    from lidarlift.evaluate.counts import add

    acc.update(add(acc, counts))


def _figures(acc: dict) -> dict:
    """The summary's figures (lidarlift.evaluate.presegment) and seconds per sweep of summed counts."""
    n = max(acc.get("sweeps", 0), 1)
    return {**presegment_figures(acc), "seconds_per_sweep": acc.get("seconds", 0.0) / n,
            "cpu_seconds_per_sweep": acc.get("cpu_seconds", 0.0) / n}


def _timed(fn, repeats: int):
    best_wall = best_cpu = float("inf")
    out = None
    for _ in range(max(1, repeats)):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_wall, best_cpu = min(best_wall, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return out, best_wall, best_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataroot", nargs="*", default=[], help="existing synthetic worlds (default: generate one per seed)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="world seeds to generate")
    ap.add_argument("--scenes", type=int, default=3)
    ap.add_argument("--samples", type=int, default=4, help="keyframes per scene")
    ap.add_argument("--azimuth-steps", type=int, default=1750, help="1750 gives ~34k points per sweep")
    ap.add_argument("--repeats", type=int, default=3, help="timing rounds per keyframe (fastest kept)")
    ap.add_argument("--baseline-repeats", type=int, default=1, help="timing rounds of the slow IUPC ground")
    args = ap.parse_args()

    tmp = None
    worlds: list[tuple[str, Path]] = [(Path(d).name, Path(d)) for d in args.dataroot]
    if not worlds:
        from lidarlift.synth import generate

        tmp = tempfile.TemporaryDirectory(prefix="bench_presegment_")
        for seed in args.seeds:
            root = Path(tmp.name) / f"seed{seed}"
            t0 = time.perf_counter()
            generate(root, seed=seed, scenes=args.scenes, samples_per_scene=args.samples, azimuth_steps=args.azimuth_steps)
            print(f"generated world seed {seed}: {args.scenes} x {args.samples} keyframes ({args.azimuth_steps} azimuth steps) "
                  f"in {time.perf_counter() - t0:.0f} s", flush=True)
            worlds.append((f"seed{seed}", root))
    p = P.PresegmentParams.from_config()
    methods = variants(p)
    P._warm_up(["iupc"])
    warm = np.random.default_rng(0).normal(size=(500, 3)) * 5  # warm caches (a cloud without beams: one beam = 1 deg)
    P.range_components(warm, p.fast.range_components, scan=fixed_resolution(1.0))
    P.range_image_segments(warm, p.fast.range_image, scan=fixed_resolution(1.0))

    keys = ["all"] + [w for w, _ in worlds]
    acc: dict = {(k, name): {} for k in keys for name in methods}
    parts = {name: {"ground_cpu": 0.0, "cluster_cpu": 0.0, "ground_wall": 0.0, "cluster_wall": 0.0} for name in methods}
    n_points = []
    for world, root in worlds:
        manifest = build_manifest({"dataroot": str(root), "version": "v1.0-mini", "format": "nuscenes"})
        space = label_space(manifest.label_space)
        for sample in manifest.samples:
            pts, scan = read_sweep(manifest.resolve(sample.lidar.path), sample.lidar.fmt, sample.token)
            xyz = pts[:, :3]
            sweeps = [s for s, _ in P.read_sweeps(manifest, sample, 5)]
            truth = SampleTruth(manifest, sample)
            n_points.append(len(xyz))
            for name, m in methods.items():
                reps = args.baseline_repeats if m["ground"] is methods["iupc (baseline)"]["ground"] else args.repeats
                (ground, cell), gw, gc = _timed(lambda: m["ground"](xyz, sweeps[:m["sweeps"]]), reps)
                rest = np.flatnonzero(~ground)
                seg_rest, cw, cc = _timed(lambda: m["cluster"](xyz[rest], scan),
                                          args.repeats if "HDBSCAN on all" not in name else 1)
                seg = np.full(len(xyz), -1, np.int32)
                seg[rest] = seg_rest
                c = presegment_counts(ground, seg, truth.label, truth.instance, truth.range, space)
                c.update(input_points=len(xyz), seconds=gw + cw, cpu_seconds=gc + cc)
                _add(acc[("all", name)], c)
                _add(acc[(world, name)], c)
                for k, v in (("ground_wall", gw), ("cluster_wall", cw), ("ground_cpu", gc), ("cluster_cpu", cc)):
                    parts[name][k] += v
            print(f"  {world} {sample.token[:8]}: {len(xyz)} points, {sum(len(s) for s in sweeps)} in 5 earlier sweeps",
                  flush=True)

    n = len(n_points)
    rows = []
    for name, m in methods.items():
        f = _figures(acc[("all", name)])
        rows.append({"method": name, "note": m["note"], "earlier_sweeps": m["sweeps"], **f,
                     **{k + "_per_sweep": v / n for k, v in parts[name].items()},
                     "per_world": {w: _figures(acc[(w, name)]) for w, _ in worlds}})
    base, default = rows[0], rows[1]
    ratios = {
        "speedup_wall": base["seconds_per_sweep"] / default["seconds_per_sweep"],
        "speedup_cpu": base["cpu_seconds_per_sweep"] / default["cpu_seconds_per_sweep"],
        **{f"{k}_default_minus_baseline": default[k] - base[k] for k in (
            "ground_precision", "ground_recall", "segment_purity", "split_instance_share", "noise_share")},
    }
    per_34k = default["cpu_seconds_per_sweep"] * 34000 / np.mean(n_points)
    met = default["cpu_seconds_per_sweep"] <= GOAL_SECONDS
    print(f"presegment benchmark: {n} keyframes from {len(worlds)} worlds, {np.mean(n_points):.0f} points per sweep "
          f"(min {min(n_points)}, max {max(n_points)}); fastest of {args.repeats} rounds (baseline ground "
          f"{args.baseline_repeats}), one core")
    print(f"{'method':50s} {'gnd P':>6s} {'gnd R':>6s} {'purity':>6s} {'split':>6s} {'merge':>6s} {'lost':>5s} {'noise':>5s} "
          f"{'segs':>5s} {'s/sweep':>7s} {'cpu s':>6s} {'ground':>6s} {'clust':>6s}")
    for r in rows:
        print(f"{r['method'][:50]:50s} {r['ground_precision']:6.3f} {r['ground_recall']:6.3f} {r['segment_purity']:6.3f} "
              f"{r['split_instance_share']:6.3f} {r['merge_instance_share']:6.3f} {r['lost_instance_share']:5.3f} {r['noise_share']:5.3f} "
              f"{r['segments_per_sweep']:5.1f} {r['seconds_per_sweep']:7.3f} {r['cpu_seconds_per_sweep']:6.3f} "
              f"{r['ground_cpu_per_sweep']:6.3f} {r['cluster_cpu_per_sweep']:6.3f}")
    if len(worlds) > 1:
        short = {"ground_precision": "gnd P", "ground_recall": "gnd R", "segment_purity": "purity",
                 "split_instance_share": "split"}
        for w, _ in worlds:
            print(f"  {w} (baseline -> default): " + ", ".join(
                f"{short[k]} {base['per_world'][w][k]:.3f} -> {default['per_world'][w][k]:.3f}" for k in short))
    print(f"default vs baseline: {ratios['speedup_wall']:.1f}x faster wall, {ratios['speedup_cpu']:.1f}x CPU; "
          f"ground P {ratios['ground_precision_default_minus_baseline']:+.3f}, "
          f"R {ratios['ground_recall_default_minus_baseline']:+.3f}, "
          f"purity {ratios['segment_purity_default_minus_baseline']:+.3f}, "
          f"split share {ratios['split_instance_share_default_minus_baseline']:+.3f}")
    print(f"default: {default['seconds_per_sweep']:.3f} s wall, {default['cpu_seconds_per_sweep']:.3f} s CPU per sweep "
          f"({per_34k:.3f} CPU s scaled to 34k points); goal <= {GOAL_SECONDS} s per core (CPU time): {'met' if met else 'NOT met'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "keyframes": n, "points_per_sweep": float(np.mean(n_points)), "points_min": int(min(n_points)),
        "points_max": int(max(n_points)),
        "worlds": {w: str(r) if args.dataroot else f"generated: seed {w[4:]}, {args.scenes} scenes x {args.samples} keyframes, "
                   f"{args.azimuth_steps} azimuth steps" for w, r in worlds},
        "repeats": args.repeats, "baseline_repeats": args.baseline_repeats,
        "timing": "fastest of repeats per keyframe, summed, divided by keyframes; one core (OMP/BLAS 1 thread)",
        "rows": rows, "baseline": base["method"], "default": default["method"], "ratios": ratios,
        "goal_seconds_per_sweep": GOAL_SECONDS, "goal_met_cpu": met, "goal_met_wall": default["seconds_per_sweep"] <= GOAL_SECONDS,
        "default_cpu_seconds_scaled_to_34k": per_34k,
        "load_average": os.getloadavg()[0], "cores": os.cpu_count(), "params": dataclasses.asdict(p),
        "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
    }, indent=2, default=str))
    print(f"wrote {OUT}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
