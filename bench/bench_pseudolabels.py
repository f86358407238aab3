"""Benchmark of the pseudolabels stage's round 0 on a run's upstream stores.

Tables: (1) quality against the click budget, ours vs the IUPC rule set on the same clicks; (2) IUPC's
own protocol (one click per class per segment) with IUPC's sparse / propagated / negative table;
(3) annotation-free PQ^Th of ours vs the PointSAM-faithful baseline against the corruption of the
simulated 2D maps; seconds per keyframe of each method.

    .venv/bin/python bench/bench_pseudolabels.py [--results results] [--shards s1,s2] [--quick]

Needs ``<results>/manifest.json`` and the associate, presegment, superpixels and masks stores of the
shards (``make demo`` makes them). Prints the tables and writes ``bench/out/pseudolabels.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


from lidarlift import artifacts as A
from lidarlift.classes import label_space
from lidarlift.config import load_config
from lidarlift.manifest import Manifest
from lidarlift.pseudolabels import annotation_free as af
from lidarlift.pseudolabels import clicks as ck
from lidarlift.evaluate.counts import add
from lidarlift.evaluate.pseudolabels import pseudolabel_counts, pseudolabel_figures
from lidarlift.evaluate.truth import SampleTruth
from lidarlift.pseudolabels.propagate import GraphParams, iupc_propagate, ours_propagate
from lidarlift.pseudolabels.simulate2d import Corruption
from lidarlift.pseudolabels.stage import StageParams, camera_maps, load_shard

BUDGETS = (0.0005, 0.001, 0.002, 0.005, 0.01)
CORRUPTIONS = {
    "none": dict(erosion_px=0, confusion=0.0, miss=0.0, hallucination=0.0),
    "default": {},
    "double": dict(erosion_px=4, confusion=0.2, miss=0.2, hallucination=1.0),
}


def _acc(total, new):
    return new if total is None else add(total, new)


def _counts(labels, truth: SampleTruth, space, min_points: int = 15) -> dict:
    """The evaluation's counts of one keyframe's labels (lidarlift.evaluate.pseudolabels, the one implementation)."""
    return pseudolabel_counts(labels.label, labels.candidate_mask, labels.source, labels.instance_id, truth.label,
                              truth.segment_key, space, min_points)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--shards", default="", help="comma-separated; default: every shard with all stores")
    ap.add_argument("--quick", action="store_true", help="budgets 0.1 %% and 1 %% and the default corruption only")
    args = ap.parse_args(argv)
    res = Path(args.results)
    if not (res / "manifest.json").exists():
        print(f"{res}/manifest.json not found: run the DAG first (make demo)", file=sys.stderr)
        return 1
    manifest = Manifest.from_json(res / "manifest.json")
    space = label_space(manifest.label_space)
    stages = ("associate", "presegment", "superpixels", "masks")
    shards = [s for s in (args.shards.split(",") if args.shards else manifest.shards)
              if all((res / st / f"{s}.zarr").exists() for st in stages)]
    if not shards:
        print(f"no shard of {res} has all of {stages}", file=sys.stderr)
        return 1
    budgets = (0.001, 0.01) if args.quick else BUDGETS
    corruptions = {"default": {}} if args.quick else CORRUPTIONS
    graph = GraphParams.from_config(load_config()["pseudolabels"]["ours"])

    data = []
    t0 = time.perf_counter()
    for s in shards:
        data += [d for d in load_shard(manifest, s, *(res / st / f"{s}.zarr" for st in stages)) if d.evidence.n]
    truths = {d.record.token: SampleTruth(manifest, d.record) for d in data}
    load_s = time.perf_counter() - t0
    print(f"{len(data)} keyframes of {len(shards)} shards loaded in {load_s:.1f} s")

    out = {"shards": shards, "keyframes": len(data), "budget": [], "iupc_protocol": None, "annotation_free": []}
    print("\nclick budget | method | labelled | precision | candidates | cand. contain truth | s/keyframe")
    for share in budgets:
        tot = {"ours": None, "iupc": None}
        secs = {"ours": 0.0, "iupc": 0.0}
        for d in data:
            ev = d.evidence
            t_ = truths[d.record.token]
            c = ck.budget_clicks(ev.xyz, t_.label, t_.instance, space, share, ck.click_rng(0, d.record.token))
            t = time.perf_counter()
            lab = ours_propagate(ev, c.point_index, c.label, space, graph)
            secs["ours"] += time.perf_counter() - t
            tot["ours"] = _acc(tot["ours"], _counts(lab, t_, space))
            t = time.perf_counter()
            lab = iupc_propagate(ev.n, c.point_index, c.label, ev.ground, ev.segment_id, ev.ground_cell, ev.fov, space)
            secs["iupc"] += time.perf_counter() - t
            tot["iupc"] = _acc(tot["iupc"], _counts(lab, t_, space))
        for method in ("ours", "iupc"):
            r = pseudolabel_figures(tot[method], space)
            row = {"share": share, "method": method, "click_share": r["click_share"], "labelled_share": r["labelled_share"],
                   "precision": r["precision"], "candidate_share": r["candidate_share"],
                   "candidate_contains_truth": r["candidate_contains_truth"], "seconds_per_keyframe": secs[method] / len(data)}
            out["budget"].append(row)
            print(f"{share * 100:10.2f} % | {method:5s} | {r['labelled_share']:.4f} | {r['precision']:.4f} | "
                  f"{r['candidate_share']:.4f} | {r['candidate_contains_truth'] or 0:.4f} | {row['seconds_per_keyframe']:.3f}")

    tot = {"ours": None, "iupc": None}
    for d in data:
        ev = d.evidence
        t_ = truths[d.record.token]
        c = ck.iupc_clicks(t_.label, ev.ground, ev.segment_id, ev.ground_cell, ev.fov, space, ck.click_rng(0, d.record.token))
        tot["iupc"] = _acc(tot["iupc"], _counts(iupc_propagate(ev.n, c.point_index, c.label, ev.ground, ev.segment_id,
                                                               ev.ground_cell, ev.fov, space), t_, space))
        tot["ours"] = _acc(tot["ours"], _counts(ours_propagate(ev, c.point_index, c.label, space, graph), t_, space))
    out["iupc_protocol"] = {m: pseudolabel_figures(tot[m], space) for m in tot}
    print("\nIUPC protocol | method | sparse | propagated | negative | precision")
    for m, r in out["iupc_protocol"].items():
        t = r["iupc_table"]
        print(f"              | {m:5s} | {t['sparse']:.4f} | {t['propagated']:.4f} | {t['negative']:.4f} | {r['precision']:.4f}")

    print("\ncorruption | PQ^Th ours | PQ^Th PointSAM-faithful | ratio | s/keyframe ours | s/keyframe baseline")
    base_cfg = load_config(overrides={"pseudolabels": {"mode": "annotation_free"}})["pseudolabels"]
    for name, corr in corruptions.items():
        p = StageParams.from_config(base_cfg)
        p = StageParams(**{**p.__dict__, "corruption": Corruption.from_config({**p.corruption.describe(), **corr})})
        pan = {"ours": None, "baseline": None}
        secs = {"ours": 0.0, "baseline": 0.0}
        stores: dict[str, object] = {}
        for d in data:
            shard = d.record.shard
            stores.setdefault(shard, A.open_store(res / "masks" / f"{shard}.zarr", "masks"))
            cams = camera_maps(manifest, d, stores[shard], space, p)
            ev = d.evidence
            t = time.perf_counter()
            o = af.ours_annotation_free(ev.xyz, d.visible, d.uv, ev.ground, ev.segment_id, cams, space, p.refine, in_image=d.in_image)
            secs["ours"] += time.perf_counter() - t
            t = time.perf_counter()
            b = af.pointsam_baseline(ev.xyz, d.in_image, d.uv, cams, space, p.refine)
            secs["baseline"] += time.perf_counter() - t
            t_ = truths[d.record.token]
            pan["ours"] = _acc(pan["ours"], _counts(o, t_, space))
            pan["baseline"] = _acc(pan["baseline"], _counts(b, t_, space))
        q = {k: {"pq": pseudolabel_figures(v, space)["pq_things"]} for k, v in pan.items()}
        ratio = q["ours"]["pq"] / q["baseline"]["pq"] if q["baseline"]["pq"] else None
        out["annotation_free"].append({"corruption": p.corruption.describe(), "name": name, "pq_things": q["ours"]["pq"],
                                       "baseline_pq_things": q["baseline"]["pq"], "ratio": ratio,
                                       "seconds_per_keyframe": {k: v / len(data) for k, v in secs.items()}})
        print(f"{name:10s} | {q['ours']['pq']:.4f} | {q['baseline']['pq']:.4f} | {ratio or 0:.3f} | "
              f"{secs['ours'] / len(data):.3f} | {secs['baseline'] / len(data):.3f}")

    out.update({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
                "machine": platform.machine(), "processor": platform.processor() or platform.machine()})
    path = Path(__file__).parent / "out" / "pseudolabels.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
