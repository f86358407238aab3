"""Benchmark protocol: the stages up to the pseudo-labels on a tuning world and on evaluation worlds
nothing was fitted on, one default config for every scanner.

    .venv/bin/python bench/bench_worlds.py                      # all worlds; writes bench/worlds.json
    .venv/bin/python bench/bench_worlds.py --worlds /tmp/bw     # keep (and reuse) the generated worlds

Worlds (:data:`WORLDS`; synthetic, nuScenes layout, 8 or 5 scenes x ``--samples`` keyframes each at
``--image-width`` x ``--image-height``): the **tuning** world (seed 1, nuScenes' 32-beam sensor), the
one every fitted constant comes from (``bench/fit_tuning.py``: the propagation's log-odds tables and
thresholds; the scanner geometry of ``bench/bench_scanners.py`` was chosen on seed 1 too), and
**evaluation** worlds never used for fitting: another seed at nuScenes density (32 beams), a 64-beam
KITTI world and a 128-beam Ouster world, other seeds again. Seed 0 (the demo world, on which earlier
constants were set) is never used.

Each world runs, with the default ``config/config.yaml`` (one config for all sensors): generation,
manifest, associate, presegment, superpixels, masks (weight-free), the simulated annotator's clicks
(budget protocol, 0.1 %) and pseudo-labels round 0; every store is scored through
:func:`lidarlift.evaluate.merge.score_stores` (counts summed over keyframes, then divided). Writes
``bench/worlds.json``: per world the figures below (:data:`FIGURES`) plus points per keyframe and
seconds per stage; ``summary`` (mean and worst over the evaluation worlds: worst is the minimum of a
figure that should be high, the maximum of a split / merge / hidden share); ``acceptance`` (each line
of :data:`ACCEPTANCE`, pass or fail, with every evaluation world's value). Prints a table.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lidarlift.config import evaluation_settings, load_config, production_section  # noqa: E402

BENCH = Path(__file__).resolve().parent
VERSION = "v1.0-mini"


@dataclass(frozen=True)
class World:
    """One benchmark world: its name, LiDAR preset (:data:`lidarlift.synth.sensors.LIDAR_PRESETS`),
    generator seed, role (``tuning`` or ``evaluation``), scenes and keyframes per scene (None: the
    command line's ``--samples``)."""

    name: str
    sensor: str
    seed: int
    role: str
    scenes: int
    samples: int | None = None


#: The tuning world is larger: the rarer flat classes (terrain, other flat ground) must meet each other
#: there often enough for the fit to see their boundaries. (A tuning world of 8 scenes x 6 keyframes was
#: tried on 2026-12-05: its fit raised the worst evaluation world's precision from 0.977 to 0.984 but
#: lowered its coverage from 0.645 to 0.624, and its thresholds -- margin 3.5 -- left the road of the
#: hand-built scenes of tests/test_pseudolabels.py and tests/test_active.py unlabelled.)
WORLDS = (
    World("tuning-nuscenes32-seed1", "nuscenes32", 1, "tuning", 8),
    World("eval-nuscenes32-seed2", "nuscenes32", 2, "evaluation", 5),
    World("eval-kitti64-seed3", "kitti64", 3, "evaluation", 5),
    World("eval-os128-seed4", "os128", 4, "evaluation", 5),
)
TUNING = WORLDS[0]
#: the generator's settings of every world besides its scenes (command-line defaults)
SIZE = dict(samples_per_scene=2, image_width=480, image_height=270)

#: section -> (figure, "high" when larger is better / "low" when smaller is better)
FIGURES: dict[str, tuple[tuple[str, str], ...]] = {
    "association": (("visible_precision", "high"), ("visible_recall", "high"), ("transfer_accuracy", "high"),
                    ("transfer_accuracy_no_occlusion", "high"), ("hidden_ground_30_50m", "low")),
    "presegment": (("segment_purity", "high"), ("split_instance_share", "low"), ("merge_instance_share", "low"),
                   ("merge_instance_share_beyond_30m", "low")),
    "pseudolabels": (("click_share", "high"), ("labelled_share", "high"), ("precision", "high")),
}
#: further figures kept per world (not part of the protocol's keys)
EXTRA: dict[str, tuple[str, ...]] = {
    "association": ("in_image_precision", "in_image_recall"),
    "presegment": ("ground_precision", "ground_recall", "lost_instance_share", "noise_share", "instances",
                   "merged_by_cause", "merged_by_class"),
    "pseudolabels": ("candidate_share", "candidate_contains_truth", "mean_candidate_set_size", "miou", "scored_points"),
}


def _at_least(section: str, figure: str, bound: float) -> tuple[str, Callable[[dict], bool]]:
    return f"{section}.{figure} >= {bound}", lambda w: w[section][figure] is not None and w[section][figure] >= bound


def _at_most(section: str, figure: str, bound: float) -> tuple[str, Callable[[dict], bool]]:
    return f"{section}.{figure} <= {bound}", lambda w: w[section][figure] is not None and w[section][figure] <= bound


#: The acceptance lines (issue 12): each checked on every evaluation world.
ACCEPTANCE: tuple[tuple[str, Callable[[dict], bool]], ...] = (
    _at_least("association", "visible_precision", 0.97),
    _at_least("association", "visible_recall", 0.97),
    ("association.transfer_accuracy > association.transfer_accuracy_no_occlusion",
     lambda w: w["association"]["transfer_accuracy"] > w["association"]["transfer_accuracy_no_occlusion"]),
    _at_most("association", "hidden_ground_30_50m", 0.05),
    _at_least("presegment", "segment_purity", 0.97),
    _at_most("presegment", "split_instance_share", 0.12),
    _at_most("presegment", "merge_instance_share", 0.05),
    _at_most("presegment", "merge_instance_share_beyond_30m", 0.10),
    ("pseudolabels.labelled_share >= 0.70 at pseudolabels.precision >= 0.985",
     lambda w: w["pseudolabels"]["labelled_share"] >= 0.70 and w["pseudolabels"]["precision"] >= 0.985),
)


# ----------------------------------------------------------------------------------------------
# one world


def build_world(world: World, root: Path, size: dict[str, int]) -> Path:
    """Dataroot of ``world`` under ``root`` (generated unless a world with the same parameters is there)."""
    from lidarlift.synth import generate

    out = root / world.name
    want = dict(seed=world.seed, sensor=world.sensor, scenes=world.scenes, version=VERSION,
                **{**size, **({"samples_per_scene": world.samples} if world.samples else {})})
    info = out / "lidarlift_gt" / VERSION / "world.json"
    if info.exists():
        import dataclasses

        from lidarlift.synth.world import WorldParams

        rec = json.loads(info.read_text())
        have = rec["params"]
        # the sensor as the generator resolves it now (a preset may have changed: beams, mount height)
        lidar = json.loads(json.dumps(dataclasses.asdict(WorldParams.from_config({"sensor": world.sensor}).validate().lidar)))
        have_lidar = {"mount_height": 1.84, **rec.get("lidar", {})}  # worlds written before presets had mounts: 1.84 m
        if all(have.get(k) == v for k, v in want.items()) and all(have_lidar.get(k) == v for k, v in lidar.items()):
            return out
        shutil.rmtree(out)
    generate(out, workers=1, **want)
    return out


def run_stages(dataroot: Path, out: Path, cfg: dict[str, Any], pseudolabels: bool = True) -> tuple[Path, dict, dict]:
    """Manifest and the production stages of every shard into ``out`` with config ``cfg``: associate,
    presegment, superpixels, masks, clicks and (``pseudolabels``) round 0. Returns (manifest path,
    {shard: store paths as :func:`lidarlift.evaluate.merge.score_stores` takes them, plus ``clicks``},
    {stage: wall seconds})."""
    from lidarlift import associate, presegment, superpixels
    from lidarlift.datasets import build_manifest
    from lidarlift.masks.stage import run_masks
    from lidarlift.pseudolabels import stage as pl_stage
    from lidarlift.pseudolabels.annotator import shard_clicks

    seconds: dict[str, float] = {}

    def timed(stage: str, fn: Callable, *args, **kw) -> Any:
        t0 = time.perf_counter()
        result = fn(*args, **kw)
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - t0
        return result

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest_path = out / "manifest.json"
    dataset = {**cfg["dataset"], "dataroot": str(dataroot), "version": VERSION, "format": "nuscenes", "scenes": []}
    timed("manifest", lambda: build_manifest(dataset).to_json(manifest_path))
    from lidarlift.manifest import Manifest

    policy = cfg["dataset"]["bad_sample_policy"]
    sec = {k: production_section(cfg, k) for k in ("associate", "presegment", "superpixels", "masks", "pseudolabels")}
    stores: dict[str, dict[str, Any]] = {}
    for shard in Manifest.from_json(manifest_path).shards:
        st = {k: str(out / k / f"{shard}.zarr") for k in ("associate", "presegment", "superpixels", "masks")}
        timed("associate", associate.run_shard, manifest_path, shard, st["associate"], None,
              {**sec["associate"], "bad_sample_policy": policy})
        timed("presegment", presegment.run_shard, manifest_path, shard, st["presegment"], None, sec["presegment"],
              bad_sample_policy=policy)
        timed("superpixels", superpixels.run_shard, manifest_path, shard, st["superpixels"], None, sec["superpixels"],
              bad_sample_policy=policy)
        timed("masks", run_masks, manifest_path, shard, st["presegment"], st["associate"], st["masks"], None,
              sec["masks"], threads=1)
        clicks = out / "clicks" / f"{shard}.tsv"
        clicks.parent.mkdir(exist_ok=True)
        timed("clicks", shard_clicks, manifest_path, shard, clicks, sec["pseudolabels"]["clicks"],
              associate=st["associate"], presegment=st["presegment"])
        st["clicks"] = str(clicks)
        if pseudolabels:
            path = str(out / "pseudolabels" / "r0" / f"{shard}.zarr")
            timed("pseudolabels", pl_stage.run_shard, manifest_path, shard, 0, path, None, sec["pseudolabels"],
                  associate=st["associate"], presegment=st["presegment"], superpixels=st["superpixels"],
                  masks=st["masks"], clicks=clicks)
            st["pseudolabels"] = {"0": path}
        stores[shard] = st
    return manifest_path, stores, seconds


def world_record(world: World, scores: dict[str, Any], seconds: dict[str, float], points: int, keyframes: int
                 ) -> dict[str, Any]:
    """The protocol's entry of one world from :func:`score_stores`' sections."""
    rec: dict[str, Any] = {"name": world.name, "sensor": world.sensor, "seed": world.seed, "role": world.role}
    for section, figures in FIGURES.items():
        got = scores.get(section) or {}
        rec[section] = {f: got.get(f) for f, _ in figures}
    rec["more"] = {section: {f: (scores.get(section) or {}).get(f) for f in names} for section, names in EXTRA.items()}
    rec["keyframes"] = keyframes
    rec["points_per_keyframe"] = round(points / max(keyframes, 1))
    rec["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return rec


def run_world(world: World, root: Path, size: dict[str, int], cfg: dict[str, Any]) -> dict[str, Any]:
    """Generate, run and score one world; returns its record (:func:`world_record`)."""
    from lidarlift.evaluate.merge import score_stores

    t0 = time.perf_counter()
    dataroot = build_world(world, root, size)
    t_gen = time.perf_counter() - t0
    manifest_path, stores, seconds = run_stages(dataroot, root / f"{world.name}-results", cfg)
    t0 = time.perf_counter()
    scores = score_stores(manifest_path, {sh: {k: v for k, v in st.items() if k != "clicks"} for sh, st in stores.items()},
                          evaluation_settings(cfg))
    seconds = {"generate": t_gen, **seconds, "score": time.perf_counter() - t0}
    pl = scores.get("pseudolabels") or {}
    keyframes = (scores.get("association") or {}).get("samples_scored") or pl.get("samples") or 0
    return world_record(world, scores, seconds, int(pl.get("points") or 0), int(keyframes))


# ----------------------------------------------------------------------------------------------
# the document


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst of each figure over the evaluation worlds (worst: min of a figure that should be
    high, max of one that should be low; None where a world has no value)."""
    ev = [r for r in records if r["role"] == "evaluation"]
    mean: dict[str, dict[str, float | None]] = {}
    worst: dict[str, dict[str, float | None]] = {}
    for section, figures in FIGURES.items():
        mean[section], worst[section] = {}, {}
        for f, better in figures:
            vals = [r[section][f] for r in ev]
            if not vals or any(v is None for v in vals):
                mean[section][f] = worst[section][f] = None
                continue
            mean[section][f] = sum(vals) / len(vals)
            worst[section][f] = min(vals) if better == "high" else max(vals)
    return {"evaluation_mean": mean, "evaluation_worst": worst, "evaluation_worlds": [r["name"] for r in ev]}


def acceptance(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each acceptance line on every evaluation world: {line, pass, failed: [world names]}."""
    ev = [r for r in records if r["role"] == "evaluation"]
    out = []
    for line, check in ACCEPTANCE:
        failed = [r["name"] for r in ev if not check(r)]
        out.append({"line": line, "pass": bool(ev) and not failed, "failed": failed})
    return out


def document(records: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``bench/worlds.json`` document of the world records."""
    return {**meta, "worlds": records, "summary": summarize(records), "acceptance": acceptance(records)}


def write_document(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def print_table(doc: dict[str, Any]) -> None:
    cols = [r["name"] for r in doc["worlds"]] + ["eval mean", "eval worst"]
    print("\n" + "figure".ljust(44) + "".join(c[:24].rjust(25) for c in cols))
    for section, figures in FIGURES.items():
        for f, _ in figures:
            vals = [r[section][f] for r in doc["worlds"]]
            vals += [doc["summary"]["evaluation_mean"][section][f], doc["summary"]["evaluation_worst"][section][f]]
            print(f"{section}.{f}".ljust(44) + "".join(_fmt(v).rjust(25) for v in vals))
    print("points per keyframe".ljust(44) + "".join(str(r["points_per_keyframe"]).rjust(25) for r in doc["worlds"]))
    print("seconds (all stages)".ljust(44) + "".join(f"{sum(r['seconds'].values()):.0f}".rjust(25) for r in doc["worlds"]))
    print("\nacceptance (every evaluation world):")
    for a in doc["acceptance"]:
        print(f"  {'PASS' if a['pass'] else 'FAIL'}  {a['line']}" + (f"   failed: {', '.join(a['failed'])}" if a["failed"] else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", default=None, help="keep (and reuse) the worlds and stores here (default: a temporary directory)")
    ap.add_argument("--only", nargs="+", default=None, choices=[w.name for w in WORLDS], help="run these worlds only")
    ap.add_argument("--samples", type=int, default=SIZE["samples_per_scene"])
    ap.add_argument("--image-width", type=int, default=SIZE["image_width"])
    ap.add_argument("--image-height", type=int, default=SIZE["image_height"])
    ap.add_argument("--json", default=str(BENCH / "worlds.json"))
    a = ap.parse_args(argv)
    size = dict(samples_per_scene=a.samples, image_width=a.image_width, image_height=a.image_height)
    cfg = load_config()
    worlds = [w for w in WORLDS if a.only is None or w.name in a.only]
    tmp = None if a.worlds else tempfile.mkdtemp(prefix="bench_worlds_")
    root = Path(a.worlds or tmp)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records = []
    try:
        for w in worlds:
            rec = run_world(w, root, size, cfg)
            records.append(rec)
            print(f"{w.name}: {rec['points_per_keyframe']} points per keyframe, {sum(rec['seconds'].values()):.0f} s; "
                  f"labelled {_fmt(rec['pseudolabels']['labelled_share'])} at {_fmt(rec['pseudolabels']['precision'])}",
                  flush=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    from lidarlift.pseudolabels.propagate import LOG_ODDS_PATH

    header = json.loads(LOG_ODDS_PATH.read_text()).get("header") or {}
    fitted_on = (header.get("tuning_world") or {}).get("generator") or {}
    # the constants must come from the tuning world, never from an evaluation world
    tuning_ok = (fitted_on.get("seed"), fitted_on.get("sensor")) == (TUNING.seed, TUNING.sensor) and all(
        (fitted_on.get("seed"), fitted_on.get("sensor")) != (w.seed, w.sensor) for w in WORLDS if w.role == "evaluation")
    meta = {"command": "bench/bench_worlds.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "generator": {**size, "version": VERSION, "scenes": {w.name: w.scenes for w in worlds}}, "host": platform.node(), "cpus": os.cpu_count(),
            "seconds_total": round(time.perf_counter() - t0, 1),
            "pseudolabels_ours": cfg["pseudolabels"]["ours"], "log_odds_header": header,
            "log_odds_fitted_on_tuning_world": tuning_ok}
    doc = document(records, meta)
    write_document(Path(a.json), doc)
    print_table(doc)
    if not tuning_ok:
        print(f"WARNING: {LOG_ODDS_PATH.name} was not fitted on the tuning world {TUNING.name}: run bench/fit_tuning.py")
    print(f"\nwrote {a.json} ({doc['seconds_total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
