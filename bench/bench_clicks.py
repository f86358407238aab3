"""Benchmark of the click protocols: active clicks (``pseudolabels.clicks.protocol: active``) against the
uniform budget protocol, through the real stages and the evaluation.

A synthetic world nothing was tuned on (seed 11; the chooser's constants were set on the tuning world,
seed 5: ``--seed 5 --work /tmp/clicks_tune``) at nuScenes density (~34k points per keyframe), 4 scenes
x 2 keyframes, goes through associate, presegment, superpixels, weight-free masks; then the simulated
annotator clicks each keyframe by the uniform protocol at 0.1 % and by the active protocol at 0.05 % and
0.1 % (``--rounds`` rounds, answered through the next-clicks file), round-0 pseudo-labels are made from
each clicks file with our propagation, and :func:`lidarlift.evaluate.merge.score_stores` scores them.

    .venv/bin/python bench/bench_clicks.py [--seed 11] [--scenes 4] [--samples 2] [--rounds 3] [--work DIR]

Prints a table and writes ``bench/clicks.json``: ``{"uniform_0p1": {...}, "active_0p05": {...},
"active_0p1": {...}, "acceptance": {...}, "world": {...}}``, each entry with ``click_share``,
``asked_share`` (clicks asked for, including points the annotator answered ``ignore``),
``labelled_share``, ``precision``, ``min_class_recall`` (over the classes present), ``miou``,
``recall_per_class`` and the seconds of the clicks job. The stores are kept under ``--work`` (default
``bench/out/clicks_seed<seed>``); a second run reuses the world and the upstream stores.

``--sweep`` (the tuning world only) fits the chooser's constants (``NOVEL_SHARE``, ``LEAK_WEIGHT``,
``SPREAD_WEIGHT`` of :mod:`lidarlift.pseudolabels.active`) and the default ``active_rounds``: it runs the
active protocol over a grid and prints, per grid point, both shares' figures,
the best being the most correctly labelled points at 0.05 %% whose precision is at least the uniform
protocol's at 0.1 %% and whose 0.1 %% run leaves no present class at recall 0::

    .venv/bin/python bench/bench_clicks.py --seed 5 --work /tmp/clicks_tune --sweep
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lidarlift.config import load_config, production_section

UPSTREAM = ("associate", "presegment", "superpixels", "masks")
PROTOCOLS = {"uniform_0p1": ("budget", 0.001), "active_0p05": ("active", 0.0005), "active_0p1": ("active", 0.001),
             "uniform_0p05": ("budget", 0.0005)}  # the last: the uniform protocol at active's budget, for reference
FIGURES = ("click_share", "labelled_share", "precision", "min_class_recall", "miou", "candidate_share")


def prepare(work: Path, seed: int, scenes: int, samples: int) -> tuple[Path, list[str]]:
    """The world (``work/world``) and its manifest and upstream stores (``work/<stage>/<shard>.zarr``),
    made once; returns (manifest path, shards)."""
    from lidarlift import associate, presegment, superpixels
    from lidarlift.datasets import build_manifest
    from lidarlift.masks.stage import run_masks
    from lidarlift.synth import generate
    from lidarlift.synth.dataroot import read_marker

    cfg = load_config()
    world = work / "world"
    if read_marker(world) is None:
        t = time.perf_counter()
        generate(world, seed=seed, scenes=scenes, samples_per_scene=samples, version="v1.0-mini")
        print(f"world seed {seed}: {scenes} scenes x {samples} keyframes in {time.perf_counter() - t:.0f} s")
    mpath = work / "manifest.json"
    if not mpath.exists():
        build_manifest({"dataroot": str(world), "version": "v1.0-mini", "format": "nuscenes"}).to_json(mpath)
    from lidarlift.manifest import Manifest

    shards = Manifest.from_json(mpath).shards
    for shard in shards:
        st = {k: work / k / f"{shard}.zarr" for k in UPSTREAM}
        for k in UPSTREAM:
            st[k].parent.mkdir(parents=True, exist_ok=True)
        if not st["associate"].exists():
            associate.run_shard(mpath, shard, st["associate"], None,
                                dict(production_section(cfg, "associate"), bad_sample_policy="error"))
        if not st["presegment"].exists():
            presegment.run_shard(str(mpath), shard, str(st["presegment"]), None, production_section(cfg, "presegment"))
        if not st["superpixels"].exists():
            superpixels.run_shard(str(mpath), shard, str(st["superpixels"]), None, production_section(cfg, "superpixels"))
        if not st["masks"].exists():
            run_masks(str(mpath), shard, str(st["presegment"]), str(st["associate"]), str(st["masks"]), None,
                      production_section(cfg, "masks"))
    return mpath, shards


SWEEP = {"rounds": (3, 5), "NOVEL_SHARE": (0.1, 0.2), "LEAK_WEIGHT": (1.0, 3.0), "SPREAD_WEIGHT": (0.03, 0.1),
         "UNSEEN_WEIGHT": (0.5, 1.0), "OBJECT_APPEARANCES": (1, 3)}


def run_protocol(work: Path, mpath: Path, shards: list[str], name: str, protocol: str, share: float,
                 rounds: int) -> dict[str, Any]:
    """Clicks by one protocol and share, round-0 pseudo-labels from them, and their figures."""
    from lidarlift.evaluate.merge import score_stores
    from lidarlift.pseudolabels.annotator import shard_clicks
    from lidarlift.pseudolabels.stage import run_shard

    cfg = production_section(load_config(), "pseudolabels")
    cfg["clicks"].update(protocol=protocol, share=share, active_rounds=rounds)
    out = work / "runs" / name
    out.mkdir(parents=True, exist_ok=True)
    stores, asked, seconds = {}, 0, {"clicks": 0.0, "pseudolabels": 0.0}
    for shard in shards:
        st = {k: str(work / k / f"{shard}.zarr") for k in UPSTREAM}
        t = time.perf_counter()
        c = shard_clicks(mpath, shard, out / f"{shard}.tsv", cfg["clicks"], graph=cfg["ours"], **st)
        seconds["clicks"] += time.perf_counter() - t
        asked += c["asked"]
        t = time.perf_counter()
        run_shard(mpath, shard, 0, out / f"{shard}.zarr", None, cfg, clicks=out / f"{shard}.tsv", **st)
        seconds["pseudolabels"] += time.perf_counter() - t
        stores[shard] = {"pseudolabels": {"0": str(out / f"{shard}.zarr")}}
    q = score_stores(mpath, stores)["pseudolabels"]
    row = {"protocol": protocol, "share": share, **{k: q[k] for k in FIGURES}, "asked_share": asked / q["points"],
           "recall_per_class": {c: v["recall"] for c, v in q["per_class"].items() if v["recall"] is not None},
           "seconds": seconds, "points": q["points"], "samples": q["samples"]}
    if protocol == "active":
        row["rounds"] = rounds
    return row


def sweep(work: Path, mpath: Path, shards: list[str], rounds: int) -> int:
    """Grid over :data:`SWEEP`: the number of rounds and module constants of :mod:`lidarlift.pseudolabels.active`
    (set for the run)."""
    import itertools

    from lidarlift.pseudolabels import active

    u = run_protocol(work, mpath, shards, "uniform_0p1", "budget", 0.001, rounds)
    print(f"uniform 0.1 %: labelled {u['labelled_share']:.4f} precision {u['precision']:.4f}")
    print("\n" + " | ".join(SWEEP) + " | 0.05 %: labelled, precision, correct | 0.1 %: labelled, precision, min recall")
    best = None
    for values in itertools.product(*SWEEP.values()):
        point = dict(zip(SWEEP, values))
        for k, v in point.items():
            if k != "rounds":
                setattr(active, k, v)
        r = int(point.get("rounds", rounds))
        a5 = run_protocol(work, mpath, shards, "sweep_0p05", "active", 0.0005, r)
        a1 = run_protocol(work, mpath, shards, "sweep_0p1", "active", 0.001, r)
        correct = a5["labelled_share"] * a5["precision"]
        ok = a5["precision"] >= u["precision"] and (a1["min_class_recall"] or 0) > 0
        print(" | ".join(f"{v:g}" for v in values) + f" | {a5['labelled_share']:.4f}, {a5['precision']:.4f}, {correct:.4f} | "
              f"{a1['labelled_share']:.4f}, {a1['precision']:.4f}, {a1['min_class_recall'] or 0:.4f}" + (" ok" if ok else ""))
        if ok and (best is None or correct > best[0]):
            best = (correct, values)
    print("\nbest:", dict(zip(SWEEP, best[1])) if best else "none meets the constraints")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=11, help="world seed (11: the bench world; 5: the tuning world)")
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--samples", type=int, default=2, help="keyframes per scene")
    ap.add_argument("--rounds", type=int, default=None, help="active rounds (default: the config's active_rounds)")
    ap.add_argument("--work", default=None, help="folder for the world and the stores (default bench/out/clicks_seed<seed>)")
    ap.add_argument("--only", default="", help="comma-separated entries to run (default: all)")
    ap.add_argument("--json", default=None, help="output JSON (default bench/clicks.json for the bench world, else none)")
    ap.add_argument("--sweep", action="store_true", help="fit the chooser's constants on this (tuning) world")
    args = ap.parse_args(argv)
    if args.sweep and args.seed == 11:
        ap.error("--sweep fits constants: run it on the tuning world (--seed 5), never on the bench world")
    here = Path(__file__).parent
    work = Path(args.work) if args.work else here / "out" / f"clicks_seed{args.seed}"
    rounds = args.rounds or int(load_config()["pseudolabels"]["clicks"]["active_rounds"])
    t0 = time.perf_counter()
    mpath, shards = prepare(work, args.seed, args.scenes, args.samples)
    print(f"{len(shards)} shards ready in {time.perf_counter() - t0:.0f} s ({work})")
    if args.sweep:
        return sweep(work, mpath, shards, rounds)
    out: dict[str, Any] = {}
    names = [n for n in PROTOCOLS if not args.only or n in args.only.split(",")]
    print("\nentry        | clicks  | asked   | labelled | precision | min class recall | mIoU   | clicks s")
    for name in names:
        protocol, share = PROTOCOLS[name]
        r = run_protocol(work, mpath, shards, name, protocol, share, rounds)
        out[name] = r
        print(f"{name:12s} | {r['click_share'] * 100:.3f}% | {r['asked_share'] * 100:.3f}% | {r['labelled_share']:.4f}   | "
              f"{r['precision']:.4f}    | {r['min_class_recall'] or 0:.4f}           | {r['miou']:.4f} | {r['seconds']['clicks']:.1f}")
    if {"uniform_0p1", "active_0p05", "active_0p1"} <= set(out):
        u, a5, a1 = out["uniform_0p1"], out["active_0p05"], out["active_0p1"]
        out["acceptance"] = {
            "active_0p05_labelled_share_ge_uniform_0p1": a5["labelled_share"] >= u["labelled_share"],
            "active_0p05_precision_ge_uniform_0p1": a5["precision"] >= u["precision"],
            "active_0p1_every_present_class_recall_gt_0": (a1["min_class_recall"] or 0) > 0,
        }
        print("\nacceptance:", json.dumps(out["acceptance"]))
    out["world"] = {"seed": args.seed, "scenes": args.scenes, "samples_per_scene": args.samples, "shards": shards,
                    "tuning_world_seed": 5}
    out.update({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
                "machine": platform.machine(), "command": "python bench/bench_clicks.py " + " ".join(argv or sys.argv[1:])})
    path = Path(args.json) if args.json else (here / "clicks.json" if args.seed == 11 and not args.only else None)
    if path is not None:
        path.write_text(json.dumps(out, indent=1, default=float) + "\n")
        print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
