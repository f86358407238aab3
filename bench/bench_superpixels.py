"""Benchmark of the superpixels stage: SEEDS (IUPC's settings) against SLIC on 1600x900 images, one core.

Camera images of the synthetic world rendered at nuScenes' 1600x900 (lidarlift.synth; generated here
unless --dataroot is given), processed at IUPC's working scale 0.4 (640x360, ``scale: auto``) and scored
at full resolution against the world's 2D panoptic truth (boundary recall within 2 px, corrected
undersegmentation error). Timing: fastest of --repeats rounds per image (methods interleaved), wall and
CPU, OpenCV at one thread; it covers resize, colour conversion and superpixels. Goal: <= 0.15 s per
1600x900 image per core.

Usage: .venv/bin/python bench/bench_superpixels.py [--dataroot DIR] [--samples 2] [--repeats 3]
Prints a table; writes bench/out/superpixels.json.
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

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lidarlift import superpixels as S  # noqa: E402
from lidarlift.datasets import build_manifest, read_image  # noqa: E402
from lidarlift.config import section  # noqa: E402
from lidarlift.evaluate.superpixels import image_metrics  # noqa: E402
from lidarlift.groundtruth import image_truth  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "superpixels.json"
GOAL_SECONDS = 0.15


def variants() -> dict[str, tuple[S.SuperpixelParams, bool, str]]:
    """name -> (params, reuse the SEEDS engine, note); the first is the default."""
    cfg = lambda **kw: S.SuperpixelParams.from_config(kw)  # noqa: E731
    return {
        "seeds, IUPC settings (default)": (cfg(), True, "1024 sp, 5 levels, prior 5, 10 bins, double step, 10 it; engine reused"),
        "seeds, IUPC settings, new engine per image": (cfg(), False, "as IUPC calls it"),
        "slic (SLICO, 1024)": (cfg(method="slic"), True, "CIE-Lab, 3x3 blur, 10 it, connectivity 25 %"),
        "seeds, 5 histogram bins": (cfg(seeds={"histogram_bins": 5}), True, "memory and time go with bins^3"),
        "seeds, 7 histogram bins": (cfg(seeds={"histogram_bins": 7}), True, ""),
        "seeds, 4 levels": (cfg(seeds={"num_levels": 4}), True, "coarser finest blocks"),
        "seeds, 4 iterations": (cfg(seeds={"iterations": 4}), True, "fewer iterations"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataroot", help="an existing synthetic world with 1600x900 images (default: generate one)")
    ap.add_argument("--samples", type=int, default=2, help="keyframes to generate (6 images each)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cv2.setNumThreads(1)

    tmp = None
    if args.dataroot:
        root = Path(args.dataroot)
    else:
        from lidarlift.synth import generate

        tmp = tempfile.TemporaryDirectory(prefix="bench_superpixels_")
        root = Path(tmp.name)
        t0 = time.perf_counter()
        generate(root, seed=2, scenes=1, samples_per_scene=args.samples, image_width=1600, image_height=900)
        print(f"generated {args.samples} keyframes with 1600x900 images in {time.perf_counter() - t0:.0f} s")
    manifest = build_manifest({"dataroot": str(root), "version": "v1.0-mini", "format": "nuscenes"})
    images = []
    for sample in manifest.samples:
        for c, cam in enumerate(sample.cameras):
            truth = image_truth(manifest, sample, c)
            images.append((read_image(manifest.resolve(cam.path), sample.token), truth))
    size = images[0][0].shape[1], images[0][0].shape[0]
    methods = variants()
    for params, _, _ in methods.values():  # warm-up (imports, first allocation)
        S.superpixel_labels(images[0][0], params)

    acc = {name: {"wall": 0.0, "cpu": 0.0, "sp": 0, "recalled_boundary_pixels": 0, "gt_boundary_pixels": 0,
                  "undersegmentation_leak": 0, "truth_pixels": 0} for name in methods}
    for img, truth in images:
        for name, (params, reuse, _) in methods.items():
            best_w = best_c = float("inf")
            for _ in range(args.repeats):
                if not reuse:
                    S._SEEDS_CACHE.clear()
                t0, c0 = time.perf_counter(), time.process_time()
                sp, scale = S.superpixel_labels(img, params)
                best_w, best_c = min(best_w, time.perf_counter() - t0), min(best_c, time.process_time() - c0)
            a = acc[name]
            a["wall"] += best_w
            a["cpu"] += best_c
            a["sp"] += len(np.unique(sp))
            for k, v in image_metrics(sp, *truth, tolerance=section("superpixels")["boundary_tolerance"]).items():
                a[k] += v
    n = len(images)
    rows = []
    for name, (params, reuse, note) in methods.items():
        a = acc[name]
        rows.append({"method": name, "note": note, "scale": S.working_scale(size[0], params),
                     "working_size": list(S.working_size(*size, S.working_scale(size[0], params))),
                     "boundary_recall": a["recalled_boundary_pixels"] / a["gt_boundary_pixels"],
                     "undersegmentation_error": a["undersegmentation_leak"] / a["truth_pixels"],
                     "superpixels_per_image": a["sp"] / n, "seconds_per_image": a["wall"] / n,
                     "cpu_seconds_per_image": a["cpu"] / n, "params": dataclasses.asdict(params)})
    default = rows[0]
    slic = next(r for r in rows if r["method"].startswith("slic"))
    met = default["cpu_seconds_per_image"] <= GOAL_SECONDS
    print(f"superpixels benchmark: {n} images of {size[0]}x{size[1]}, working scale {default['scale']:.2f} "
          f"({default['working_size'][0]}x{default['working_size'][1]}); fastest of {args.repeats} rounds, one core")
    print(f"{'method':44s} {'bnd recall':>10s} {'UE':>6s} {'sp/img':>6s} {'s/img':>6s} {'cpu s':>6s}")
    for r in rows:
        print(f"{r['method']:44s} {r['boundary_recall']:10.3f} {r['undersegmentation_error']:6.3f} "
              f"{r['superpixels_per_image']:6.0f} {r['seconds_per_image']:6.3f} {r['cpu_seconds_per_image']:6.3f}")
    print(f"default (SEEDS, IUPC's settings): {default['cpu_seconds_per_image']:.3f} CPU s, {default['seconds_per_image']:.3f} s wall "
          f"per image; SLIC {slic['cpu_seconds_per_image']:.3f} CPU s; goal <= {GOAL_SECONDS} s (CPU, one core): "
          f"{'met' if met else 'NOT met'}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "images": n, "image_size": list(size), "repeats": args.repeats,
        "world": str(args.dataroot) if args.dataroot else "generated (seed 2, 1 scene)",
        "timing": "fastest of repeats per image, averaged; one core (cv2.setNumThreads(1)); resize + colour + superpixels",
        "metrics": "full resolution vs 2D panoptic truth; boundary recall within 2 px; UE = sum_S sum_G min(|S&G|, |S-G|) / N",
        "rows": rows, "default": default["method"],
        "ratios": {"slic_over_seeds_cpu": slic["cpu_seconds_per_image"] / default["cpu_seconds_per_image"],
                   "slic_minus_seeds_boundary_recall": slic["boundary_recall"] - default["boundary_recall"],
                   "slic_minus_seeds_undersegmentation_error": slic["undersegmentation_error"] - default["undersegmentation_error"]},
        "goal_seconds_per_image": GOAL_SECONDS, "goal_met_cpu": met,
        "goal_met_wall": default["seconds_per_image"] <= GOAL_SECONDS,
        "load_average": os.getloadavg()[0], "cores": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
        "opencv": cv2.__version__,
    }, indent=2))
    print(f"wrote {OUT}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
