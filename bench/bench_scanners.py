"""Geometry that holds on every scanner: association and pre-segmentation on worlds of the three LiDAR
presets (nuScenes' 32-beam HDL-32E, SemanticKITTI's 64-beam HDL-64E, a 128-beam OS1-128) with ONE config.

    .venv/bin/python bench/bench_scanners.py                         # 3 presets x seeds 1 (tuning), 2, 3, 4 (report)
    .venv/bin/python bench/bench_scanners.py --presets kitti64 --seeds 2 --worlds /tmp/worlds   # keep / reuse worlds
    .venv/bin/python bench/bench_scanners.py --worlds /tmp/worlds --sweep --seeds 1 --variants beams   # the fits

Each world: ``--scenes`` x ``--samples`` keyframes at ``--image-width`` x ``--image-height`` (synthetic,
nuScenes layout; seed 0 is the demo world and is never used here). Seed 1 is the tuning world (the
beam-unit defaults were chosen on it: see ``--sweep``); the figures to report are the other seeds'.

Per preset and config variant (counts summed over keyframes, then divided; figures from
:mod:`lidarlift.evaluate`):
- scan: the measured angular spacing (:func:`lidarlift.scan.measure_scan`, with ring ids and without
  them, as for KITTI files) against the generator's true beam elevations: median and 95th percentile of
  the per-point relative error of "one beam";
- association (:func:`lidarlift.associate.associate`): visible precision / recall against the
  generator's visibility truth; the share of in-image ground (flat-class) points that the occlusion test
  marks hidden where the truth says visible, at 20-30 m (this script) and 30-50 m (target <= 5%);
- presegment (``fast``): ground precision / recall, segment purity, split, lost and merged thing
  instances (merged: its own segment also holds another instance or > 20% stuff points; target <= 5%
  overall, <= 10% beyond 30 m).

Variants: ``beams`` (the defaults: geometry in units of the measured beam spacing, ring ids where the
file has them), ``beams-no-ring`` (the same, spacing measured from the elevation histogram alone),
``voxel-components`` (the previous clusterer: range-adaptive components of voxel centroids),
``degrees`` (the previous fixed-degree geometry: 0.5..1.0 deg round footprint with 0.1 m patches, an
isotropic link of 0.04 x range, written as ``beam_spacing_deg: 1`` with the old numbers). Prints a table
per preset and writes ``bench/out/scanners.json``. ``--sweep`` fits, on the tuning seed (each preset's
world), the footprint (``footprint_beams``, ``footprint_max_beams``, ``footprint_top_edge``:
among the settings with visible precision and recall >= 0.98 on every preset, the least hidden ground,
worst of both bands and presets) and the range-image constants (``theta_vertical_deg``,
``slope_tolerance``, ``bridge_m``, ``stack_gap_m`` and the stacking shares: the smallest mean of split
and merge share over the presets among the settings with purity >= 0.97 on every preset); a setting
replaces the defaults only when it improves that figure by more than ``MIN_GAIN``. It prints both
tables with the selected row marked.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lidarlift.associate import AssociateParams, associate, camera_setup, frame_to_cams  # noqa: E402
from lidarlift.classes import label_space  # noqa: E402
from lidarlift.datasets import build_manifest  # noqa: E402
from lidarlift.datasets.readers import read_lidar_with_ring  # noqa: E402
from lidarlift.evaluate.association import association_counts, association_figures  # noqa: E402
from lidarlift.evaluate.presegment import presegment_counts, presegment_figures  # noqa: E402
from lidarlift.evaluate.truth import SampleTruth  # noqa: E402
from lidarlift.presegment import PresegmentParams, fast_presegment  # noqa: E402
from lidarlift.scan import local_spacing, resolve_resolution  # noqa: E402
from lidarlift.synth import generate  # noqa: E402

PRESETS = ("nuscenes32", "kitti64", "os128")
TUNING_SEED = 1

#: The previous fixed-degree geometry, written in the new keys with one "beam" = 1 degree.
DEGREES = {"associate": {"beam_spacing_deg": 1.0, "footprint_beams": 0.5, "footprint_max_beams": 1.0, "footprint_m": 0.1,
                         "footprint_top_edge": 1.0},
           "presegment": {"beam_spacing_deg": 1.0, "fast": {"cluster": "range_components", "range_components": {
               "link_beams": math.degrees(0.04), "link_columns": math.degrees(0.04)}}}}
VOXEL = {"presegment": {"fast": {"cluster": "range_components"}}}
VARIANTS = {"beams": ({}, True), "beams-no-ring": ({}, False), "voxel-components": (VOXEL, True), "degrees": (DEGREES, True)}


def _world(root: Path, preset: str, seed: int, a: argparse.Namespace) -> Path:
    """Dataroot of the preset's world for ``seed`` (generated unless an identical one is there)."""
    out = root / f"{preset}-seed{seed}"
    want = dict(seed=seed, scenes=a.scenes, samples_per_scene=a.samples, image_width=a.image_width,
                image_height=a.image_height, sensor=preset)
    info = out / "lidarlift_gt" / "v1.0-mini" / "world.json"
    if info.exists():
        have = json.loads(info.read_text())["params"]
        if all(have.get(k) == v for k, v in want.items()):
            return out
    t0 = time.perf_counter()
    stats = generate(out, workers=1, **want)
    print(f"generated {out.name}: {stats['samples']} keyframes, {stats['points'] / stats['samples']:.0f} points per "
          f"keyframe, {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def _true_spacing(root: Path, ring: np.ndarray) -> np.ndarray:
    """(N,) rad the generator's "one beam" at each point: the true local vertical spacing of its ring
    (:func:`lidarlift.scan.local_spacing` of the preset's elevations) or the azimuth step, the larger."""
    lidar = json.loads((root / "lidarlift_gt" / "v1.0-mini" / "world.json").read_text())["lidar"]
    vertical = local_spacing(np.radians(lidar["elevations_deg"]))
    return np.maximum(vertical[ring], 2 * math.pi / lidar["azimuth_steps"])


def _ground_hidden_band(assoc, truth: SampleTruth, space, lo: float, hi: float) -> tuple[int, int]:
    """(visible, hidden) (point, camera) pairs of flat-class points at lo <= range < hi that are in the
    image and visible by the truth; hidden: the occlusion test says not visible."""
    band = space.flat_mask[truth.label] & (truth.range >= lo) & (truth.range < hi)
    seen = assoc.in_image & truth.visibility & band[:, None]
    return int(seen.sum()), int((seen & ~assoc.visible).sum())


def score_world(root: Path, assoc_cfg: dict, preseg_cfg: dict, use_ring: bool,
                parts: tuple[str, ...] = ("associate", "presegment")) -> dict:
    """Summed counts of one world under one config (association and / or presegment, scan accuracy)."""
    manifest = build_manifest({"dataroot": str(root), "version": "v1.0-mini", "format": "nuscenes"})
    space = label_space(manifest.label_space)
    ap = AssociateParams.from_config(assoc_cfg)
    pp = PresegmentParams.from_config(preseg_cfg)
    acc: dict[str, float] = {}
    errors = []
    for sample in manifest.samples:
        pts, ring = read_lidar_with_ring(manifest.resolve(sample.lidar.path), sample.lidar.fmt, sample.token)
        xyz = pts[:, :3]
        scan_a = resolve_resolution(xyz, ring if use_ring else None, ap.beam_spacing_deg)
        scan_p = resolve_resolution(xyz, ring if use_ring else None, pp.beam_spacing_deg)
        if ap.beam_spacing_deg is None:
            errors.append(np.abs(scan_a.spacing(xyz) / _true_spacing(root, ring) - 1))
        truth = SampleTruth(manifest, sample)
        counts: dict[str, float] = {}
        pc: dict[str, int] = {}
        if "associate" in parts:
            intr, sizes = camera_setup(manifest, sample)
            assoc = associate(xyz, frame_to_cams(manifest, sample, sample.lidar), intr, sizes, ap, (), scan_a)
            counts = association_counts(assoc.uv, assoc.in_image, assoc.visible, truth, space)
            vis, hid = _ground_hidden_band(assoc, truth, space, 20.0, 30.0)
            counts.update(ground_20_30_visible=vis, ground_20_30_hidden=hid)
        if "presegment" in parts:
            t0 = time.process_time()
            res = fast_presegment(xyz, [], pp, 1, scan=scan_p)
            counts["presegment_cpu_seconds"] = time.process_time() - t0
            pc = presegment_counts(res.ground, res.segment_id, truth.label, truth.instance, truth.range, space)
        for k, v in list(counts.items()) + [(f"pre_{k}", v) for k, v in pc.items()]:
            acc[k] = acc.get(k, 0) + v
        acc["points"] = acc.get("points", 0) + len(xyz)
        acc["keyframes"] = acc.get("keyframes", 0) + 1
    if errors:
        e = np.concatenate(errors)
        acc["scan_err_median"], acc["scan_err_p95"] = float(np.median(e)), float(np.percentile(e, 95))
    acc["scan"] = scan_a.summary()
    return acc


def figures(counts: list[dict]) -> dict:
    """Figures of the summed counts of several worlds."""
    tot: dict[str, float] = {}
    for c in counts:
        for k, v in c.items():
            if isinstance(v, (int, float)) and not k.startswith("scan_"):
                tot[k] = tot.get(k, 0) + v
    a = association_figures(tot)
    p = presegment_figures({k[4:]: v for k, v in tot.items() if k.startswith("pre_")})
    g = tot.get
    errs = [c for c in counts if "scan_err_median" in c]
    return {
        "keyframes": int(g("keyframes", 0)), "points_per_keyframe": round(g("points", 0) / max(g("keyframes", 1), 1)),
        "scan": counts[-1]["scan"],
        "scan_error_median": round(float(np.mean([c["scan_err_median"] for c in errs])), 4) if errs else None,
        "scan_error_p95": round(float(np.max([c["scan_err_p95"] for c in errs])), 4) if errs else None,
        "visible_precision": a["visible_precision"], "visible_recall": a["visible_recall"],
        "transfer_accuracy": a["transfer_accuracy"],
        "hidden_ground_20_30m": g("ground_20_30_hidden", 0) / g("ground_20_30_visible", 1) if g("ground_20_30_visible") else None,
        "hidden_ground_30_50m": a["hidden_ground_30_50m"],
        "ground_precision": p["ground_precision"], "ground_recall": p["ground_recall"],
        "segment_purity": p["segment_purity"], "split_instance_share": p["split_instance_share"],
        "lost_instance_share": p["lost_instance_share"], "merge_instance_share": p["merge_instance_share"],
        "merge_instance_share_beyond_30m": p["merge_instance_share_beyond_30m"],
        "instances": p["instances"], "instances_beyond_30m": int(g("pre_instances_far", 0)),
        "presegment_cpu_seconds_per_sweep": round(g("presegment_cpu_seconds", 0) / max(g("keyframes", 1), 1), 3),
    }


COLUMNS = [("vis P", "visible_precision"), ("vis R", "visible_recall"), ("transfer", "transfer_accuracy"),
           ("hid 20-30", "hidden_ground_20_30m"), ("hid 30-50", "hidden_ground_30_50m"),
           ("gnd P", "ground_precision"), ("gnd R", "ground_recall"), ("purity", "segment_purity"),
           ("split", "split_instance_share"), ("merge", "merge_instance_share"),
           ("merge>30m", "merge_instance_share_beyond_30m"), ("scan err", "scan_error_median")]


def _print_table(title: str, rows: list[tuple[str, dict]]) -> None:
    print(f"\n{title}")
    width = max([22] + [len(name) + 1 for name, _ in rows])
    head = f"{'':<{width}}" + "".join(f"{c:>10}" for c, _ in COLUMNS)
    print(head)
    for name, f in rows:
        cells = "".join(f"{'-' if f[k] is None else format(f[k], '.3f'):>10}" for _, k in COLUMNS)
        print(f"{name:<{width}}{cells}")


#: The footprint settings tried on the tuning world (``associate``).
FOOTPRINTS = [{"footprint_beams": fb, "footprint_max_beams": fx, "footprint_top_edge": te}
              for fb in (0.33, 0.5) for fx in (0.75, 1.0, 1.5) for te in (0.0, 0.5, 1.0)]
#: The range-image settings tried on the tuning world (``presegment.fast.range_image``), one change at a
#: time from the defaults (``theta_deg`` is Bogoslavskyi & Stachniss's published 10 degrees, shown, not fitted).
SEGMENTATIONS = [{}, {"theta_vertical_deg": 20.0}, {"theta_vertical_deg": 45.0}, {"theta_deg": 12.5},
                 {"slope_tolerance": 0.0}, {"slope_tolerance": 0.5}, {"bridge_m": 0.0}, {"bridge_m": 2.0},
                 {"stack_gap_m": 0.0}, {"stack_gap_m": 1.5}, {"stack_gap_m": 3.0}, {"stack_above": 0.6},
                 {"stack_above": 0.9}, {"stack_overlap": 0.3}, {"stack_width_ratio": 0.15}, {"stack_width_ratio": 0.5}]
#: Fitting rules: the acceptance lines are constraints; the footprint then hides the least far ground
#: and the segmentation makes the fewest split plus merged instances.
MIN_VISIBLE = 0.98
MIN_PURITY = 0.97
#: A setting replaces the defaults only when it improves the rule's figure by more than this (about one
#: instance per preset in the split plus merge shares): smaller differences are the tuning world's noise.
MIN_GAIN = 0.005


def _worst(rows: dict[str, dict], *keys: str) -> float:
    return max(rows[p][k] or 0.0 for p in rows for k in keys)


def sweep(tuning: dict[str, Path]) -> dict:
    """Fit the footprint and the range-image constants on the tuning worlds (``tuning``: preset ->
    dataroot of seed 1). Prints two tables (per setting and preset) with the selected setting marked:
    the footprint with visible precision and recall >= :data:`MIN_VISIBLE` on every preset that hides
    the least far ground (the worst of 20-30 m and 30-50 m over the presets); the range-image setting
    with purity >= :data:`MIN_PURITY` on every preset and the smallest mean of split and merge share."""
    out: dict = {"footprint": [], "range_image": []}
    for cfg in FOOTPRINTS:
        rows = {p: figures([score_world(root, cfg, {}, True, ("associate",))]) for p, root in tuning.items()}
        ok = all(min(f["visible_precision"], f["visible_recall"]) >= MIN_VISIBLE for f in rows.values())
        out["footprint"].append({"config": cfg, "feasible": ok, "worst_hidden": _worst(rows, "hidden_ground_20_30m",
                                 "hidden_ground_30_50m"), "presets": rows})
    for cfg in SEGMENTATIONS:
        pre = {"fast": {"range_image": cfg}}
        rows = {p: figures([score_world(root, {}, pre, True, ("presegment",))]) for p, root in tuning.items()}
        ok = all(f["segment_purity"] >= MIN_PURITY for f in rows.values())
        score = float(np.mean([f["split_instance_share"] + f["merge_instance_share"] for f in rows.values()]))
        out["range_image"].append({"config": cfg, "feasible": ok, "split_plus_merge": score, "presets": rows})
    best_fp = _select(out["footprint"], "worst_hidden", AssociateParams.from_config())
    best_ri = _select(out["range_image"], "split_plus_merge", None)
    for name, key, best in (("footprint", "worst_hidden", best_fp), ("range_image", "split_plus_merge", best_ri)):
        rows = []
        for r in out[name]:
            mark = " <- selected" if r is best else ("" if r["feasible"] else " (infeasible)")
            for p, f in r["presets"].items():
                rows.append((f"{p[:6]} {_short(r['config'])}{mark if p == next(iter(r['presets'])) else ''}", f))
        _print_table(f"sweep {name} on the tuning worlds (seed {TUNING_SEED}); rule: {key} among the feasible", rows)
        out[f"selected_{name}"] = best["config"] if best else None
    return out


def _select(rows: list[dict], key: str, defaults: AssociateParams | None) -> dict | None:
    """The feasible row with the smallest ``key``; the defaults' row (the empty config, or the one equal
    to ``defaults``' footprint) is kept unless that beats it by more than :data:`MIN_GAIN`."""
    feasible = [r for r in rows if r["feasible"]]
    if not feasible:
        return None
    best = min(feasible, key=lambda r: r[key])
    is_default = (lambda r: all(getattr(defaults, k) == v for k, v in r["config"].items())) if defaults else (
        lambda r: not r["config"])
    current = next((r for r in feasible if is_default(r)), None)
    return current if current is not None and current[key] - best[key] <= MIN_GAIN else best


def _short(cfg: dict) -> str:
    return ",".join(f"{k.replace('footprint_', 'fp_')}={v:g}" for k, v in cfg.items()) or "defaults"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[TUNING_SEED, 2, 3, 4])
    ap.add_argument("--scenes", type=int, default=3)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--image-width", type=int, default=480)
    ap.add_argument("--image-height", type=int, default=270)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--worlds", default=None, help="keep (and reuse) the worlds here (default: a temporary directory)")
    ap.add_argument("--sweep", action="store_true", help="also fit the footprint and range-image settings on the tuning seed")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "out" / "scanners.json"))
    a = ap.parse_args(argv)
    if 0 in a.seeds:
        ap.error("seed 0 is the demo world; use other seeds")
    root = Path(a.worlds) if a.worlds else Path(tempfile.mkdtemp(prefix="bench_scanners_"))
    out: dict = {"command": " ".join(sys.argv), "scenes": a.scenes, "samples_per_scene": a.samples,
                 "image_size": [a.image_width, a.image_height], "tuning_seed": TUNING_SEED, "presets": {}}
    tuning_worlds: dict[str, Path] = {}
    try:
        for preset in a.presets:
            worlds = {seed: _world(root, preset, seed, a) for seed in a.seeds}
            if TUNING_SEED in worlds:
                tuning_worlds[preset] = worlds[TUNING_SEED]
            per = {}
            rows = []
            for variant in a.variants:
                extra, use_ring = VARIANTS[variant]
                counts = {seed: score_world(w, extra.get("associate", {}), extra.get("presegment", {}), use_ring)
                          for seed, w in worlds.items()}
                report = [c for s, c in counts.items() if s != TUNING_SEED]
                tuning = [c for s, c in counts.items() if s == TUNING_SEED]
                per[variant] = {"report": figures(report) if report else None,
                                "tuning": figures(tuning) if tuning else None}
                for part in ("tuning", "report"):
                    if per[variant][part]:
                        rows.append((f"{variant} ({part})", per[variant][part]))
            first = next(v for v in per.values())
            f0 = first["report"] or first["tuning"]
            _print_table(f"{preset}: {f0['points_per_keyframe']} points per keyframe, scan {f0['scan']}", rows)
            out["presets"][preset] = per
        if a.sweep and tuning_worlds:
            out["sweep"] = sweep(tuning_worlds)
    finally:
        if not a.worlds:
            shutil.rmtree(root, ignore_errors=True)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
