"""Rule ``evaluate``: merge the per-shard evaluation counts into every quality figure of the run, and
cross-check the final round's network with the nuScenes devkit.

Counts are summed over shards before any ratio is taken, so each figure is exact (not a mean of
means). The output (``results/evaluate/metrics.json``) has one section per summary key that carries
quality: ``association``, ``presegment``, ``superpixels``, ``masks``, ``pseudolabels``, ``training`` (the
networks' mIoU per round against full supervision) and ``evaluation`` (the final round's mIoU / PQ,
the devkit's numbers and their largest difference, the headline table). ``results/summary.json`` adds
what the production jobs report about themselves (seconds, devices) without importing stage code.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from lidarlift import artifacts as A
from lidarlift.classes import LabelSpace, label_space
from lidarlift.config import section
from lidarlift.evaluate import devkit as D
from lidarlift.evaluate.association import association_figures
from lidarlift.evaluate.counts import total
from lidarlift.evaluate.instances import InstanceParams, cluster_instances
from lidarlift.evaluate.masks import mask_figures
from lidarlift.evaluate.metrics import PanopticAccumulator, chance_miou, panoptic_report, semantic_report
from lidarlift.evaluate.presegment import presegment_figures
from lidarlift.evaluate.pseudolabels import pseudolabel_figures
from lidarlift.evaluate.superpixels import superpixel_figures
from lidarlift.evaluate.temporal import temporal_summary
from lidarlift.manifest import Manifest

log = logging.getLogger(__name__)


def _round_keys(keys: Any) -> list[str]:
    """EM round keys in order ("0", "1", ...), without "full" / "baseline"."""
    return sorted((k for k in keys if str(k).isdigit()), key=int)


def network_scores(counts: dict[str, Any], space: LabelSpace, min_points: int) -> dict[str, Any]:
    """mIoU (label-space convention) and, where there are panoptic counts, PQ / SQ / RQ of summed
    network counts."""
    if not counts:
        return {}
    out = semantic_report(np.asarray(counts["confusion"], np.int64), space)
    if counts.get("panoptic"):
        out.update(panoptic_report(PanopticAccumulator.from_counts(space, min_points, counts["panoptic"])))
    out["samples"] = counts.get("samples", 0)
    return out


def _pseudolabels(shards: list[dict[str, Any]], space: LabelSpace, min_points: int) -> dict[str, Any]:
    per = [s["pseudolabels"] for s in shards if s.get("pseudolabels")]
    if not per:
        return {}
    rounds = _round_keys({k for p in per for k in p})
    figs = {r: pseudolabel_figures(total(p.get(r) for p in per), space, min_points) for r in rounds}
    last = rounds[-1]
    out: dict[str, Any] = {"round": int(last), **figs[last], "rounds": figs}
    base = total(p.get("baseline") for p in per)
    out["baseline"] = pseudolabel_figures(base, space, min_points) if base else None
    if out["baseline"] is not None:
        out["baseline"]["method"] = next((s.get("pseudolabels_baseline_method") for s in shards
                                          if s.get("pseudolabels_baseline_method")), None)
    uniform = total(p.get("uniform") for p in per)
    if uniform:  # active clicks beside the uniform budget protocol at the same share (round 0 of both)
        clicks = next((s["pseudolabels_clicks"] for s in shards if s.get("pseudolabels_clicks")), {})
        keys = ("click_share", "labelled_share", "precision", "min_class_recall", "miou", "candidate_share")

        def brief(f: dict[str, Any]) -> dict[str, Any]:
            return {**{k: f.get(k) for k in keys},
                    "recall_per_class": {c: v["recall"] for c, v in f.get("per_class", {}).items() if v["recall"] is not None}}

        out["active"] = {"protocol": clicks.get("protocol"), "rounds": clicks.get("active_rounds"),
                         "share": clicks.get("share"), "active": brief(figs[rounds[0]]),
                         "uniform": brief(pseudolabel_figures(uniform, space, min_points))}
    out["splits"] = {sp: pseudolabel_figures(total(s["pseudolabels"].get(last) for s in shards
                                                   if s.get("pseudolabels") and s["split"] == sp), space, min_points)
                     for sp in sorted({s["split"] for s in shards if s.get("pseudolabels")})}
    first = figs[rounds[0]]
    if first.get("pq_things") is not None or (out["baseline"] or {}).get("pq_things") is not None:
        b = out["baseline"] or {}
        out["annotation_free"] = {
            "pq_things": first.get("pq_things"), "sq_things": first.get("sq_things"), "rq_things": first.get("rq_things"),
            "baseline_pq_things": b.get("pq_things"), "baseline_sq_things": b.get("sq_things"),
            "baseline_rq_things": b.get("rq_things"), "baseline_method": b.get("method"),
            "ratio_to_baseline": (first["pq_things"] / b["pq_things"]) if first.get("pq_things") is not None and b.get("pq_things") else None,
        }
    return out


def _stage(shards: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return total(s.get(key) for s in shards)


def merge(manifest_path: str | Path, shard_files: list[dict[str, Any]], eval_shards: list[str] | None = None,
          settings: dict[str, Any] | None = None, *, final_round: int = -1, network_stores: dict[str, str] | None = None,
          devkit_dir: str | Path | None = None, confusion_path: str | Path | None = None) -> dict[str, Any]:
    """All quality figures of the run from the per-shard counts (module docstring).

    ``eval_shards``: the shards the networks are scored on (the val split); ``network_stores``: the final
    round's predict store of each eval shard, for the devkit cross-check (None: no cross-check).
    Raises :class:`lidarlift.evaluate.devkit.DevkitMismatch` when project and devkit differ by more
    than ``evaluate.tolerance``.
    """
    t0 = time.perf_counter()
    settings = settings or {}
    ev = section("evaluate", settings.get("evaluate"))
    min_points = int(ev["min_inst_points"])
    pq_min = int(section("pseudolabels", settings.get("pseudolabels"))["pq_min_points"])
    manifest = Manifest.from_json(manifest_path)
    space = label_space(manifest.label_space)
    shards = list(shard_files)
    by_shard = {s["shard"]: s for s in shards}
    if eval_shards is None:
        eval_shards = [s["shard"] for s in shards if s["split"] == "val"] or list(by_shard)
    missing = sorted(set(eval_shards) - set(by_shard))
    if missing:
        raise ValueError(f"evaluate: no evaluation file for eval shards {missing}")

    pre = _stage([{"x": (s.get("presegment") or {}).get("ours")} for s in shards], "x")
    pre_base = _stage([{"x": (s.get("presegment") or {}).get("baseline")} for s in shards], "x")
    methods = sorted({(s.get("presegment") or {}).get("method") for s in shards} - {None})
    out: dict[str, Any] = {
        "kind": "evaluation", "label_space": space.name, "dataset": manifest.kind, "version": manifest.version,
        "association": association_figures(_stage(shards, "association")) if _stage(shards, "association") else None,
        "presegment": ({**presegment_figures(pre), "method": methods[0] if len(methods) == 1 else methods,
                        "baseline": {**presegment_figures(pre_base), "method": "iupc"} if pre_base else None}
                       if pre else None),
        "superpixels": superpixel_figures(_stage(shards, "superpixels")) if _stage(shards, "superpixels") else None,
        "masks": mask_figures(_stage(shards, "masks")) if _stage(shards, "masks") else None,
        "pseudolabels": _pseudolabels(shards, space, pq_min) or None,
    }
    temporal = temporal_summary(shards, eval_shards, space, final_round)  # intermediate sweeps (temporal.enabled)
    if temporal:
        out["pseudolabels"] = {**(out["pseudolabels"] or {}), "temporal": temporal}

    # networks: per round (and full supervision) on the eval shards, and on the train split for reference
    def net(key: str, which: list[str]) -> dict[str, Any]:
        return total((by_shard[s].get("network") or {}).get(key) for s in which)

    train_shards = [s["shard"] for s in shards if s["split"] == "train"]
    keys = {k for s in shards for k in (s.get("network") or {})}
    rounds = _round_keys(keys)
    confusion: dict[str, np.ndarray] = {}
    per_round = []
    for r in rounds:
        c = net(r, eval_shards)
        scores = network_scores(c, space, min_points)
        if c:
            confusion[f"network_r{r}"] = np.asarray(c["confusion"], np.int64)
        pl = ((out["pseudolabels"] or {}).get("rounds") or {}).get(r, {})
        per_round.append({"round": int(r), "network": scores,
                          "network_train_split": network_scores(net(r, train_shards), space, min_points),
                          "pseudolabels": {k: pl.get(k) for k in ("miou", "labelled_share", "precision", "candidate_share",
                                                                 "candidate_contains_truth", "pq_things")} if pl else None})
    full_c = net("full", eval_shards) if "full" in keys else {}
    full = network_scores(full_c, space, min_points) if full_c else None
    if full_c:
        confusion["full_supervision"] = np.asarray(full_c["confusion"], np.int64)
    final = next((rec for rec in per_round if rec["round"] == final_round), per_round[-1] if per_round else None)
    if final is None:  # stages scored without a network (benchmarks, partial runs)
        out.update(training=None, evaluation=None, skipped=[x for s in shards for x in s.get("skipped", [])],
                   seconds=time.perf_counter() - t0)
        return out

    out["training"] = _training(per_round, final, full, full_c, confusion, space)
    evaluation = {"label_space": space.name, "final_round": final["round"], "eval_shards": sorted(eval_shards),
                  "eval_split": sorted({by_shard[s]["split"] for s in eval_shards}),
                  "instances": shards[0]["settings"]["instances"] if shards else None, "min_inst_points": min_points,
                  **{k: final["network"].get(k) for k in ("miou", "iou_per_class", "pq", "sq", "rq", "pq_things", "sq_things",
                                                          "rq_things", "pq_stuff", "sq_stuff", "rq_stuff")},
                  "network": final["network"], "rounds": per_round, "full_supervision": full,
                  "share_of_full": (final["network"]["miou"] / full["miou"]) if full and full.get("miou") and final["network"].get("miou") is not None else None,
                  "headline": headline_rows(per_round, full), "devkit": None, "max_abs_diff": None,
                  "devkit_status": "not run"}
    evaluation.update(_devkit(manifest, space, ev, evaluation, network_stores, devkit_dir, min_points, by_shard))
    out["evaluation"] = evaluation
    out["skipped"] = [x for s in shards for x in s.get("skipped", [])]
    out["seconds"] = time.perf_counter() - t0
    if confusion_path is not None:
        Path(confusion_path).parent.mkdir(parents=True, exist_ok=True)
        with open(confusion_path, "wb") as fh:
            np.savez(fh, classes=np.array(space.classes), **confusion)
    return out


def _training(per_round: list[dict[str, Any]], final: dict[str, Any], full: dict[str, Any] | None,
              full_c: dict[str, Any], confusion: dict[str, np.ndarray], space: LabelSpace) -> dict[str, Any]:
    """Summary key ``training`` (quality part): the networks per EM round against full supervision."""
    miou_rounds = [rec["network"].get("miou") for rec in per_round]
    full_miou = full.get("miou") if full else None
    out: dict[str, Any] = {
        "miou": final["network"].get("miou"), "miou_rounds": miou_rounds, "miou_full_supervision": full_miou,
        "ratio_to_full": (final["network"]["miou"] / full_miou) if full_miou and final["network"].get("miou") is not None else None,
        "miou_train_split_rounds": [rec["network_train_split"].get("miou") for rec in per_round],
        "pseudolabel_miou_rounds": [(rec["pseudolabels"] or {}).get("miou") for rec in per_round],
        "pseudolabel_coverage_rounds": [(rec["pseudolabels"] or {}).get("labelled_share") for rec in per_round],
        "pseudolabel_precision_rounds": [(rec["pseudolabels"] or {}).get("precision") for rec in per_round],
    }
    out["pseudolabel_miou"] = out["pseudolabel_miou_rounds"][-1] if per_round else None
    key = f"network_r{final['round']}"
    if key in confusion:
        out["chance_miou"] = chance_miou(confusion[key])
        out["iou_per_class"] = final["network"].get("iou_per_class")
        cm = confusion[key]
        out["classes_present"] = [c for i, c in enumerate(space.classes) if cm[i + 1].sum() > 0]
        out["val_points"] = final["network"].get("points")
    if full:
        out["iou_per_class_full_supervision"] = full.get("iou_per_class")
    return out


def headline_rows(rounds: list[dict[str, Any]], full: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per EM round: network mIoU / PQ, pseudo-label mIoU / labelled share / precision, full
    supervision mIoU and the network's share of it."""
    full_miou = full.get("miou") if full else None
    rows = []
    for rec in rounds:
        net, pl = rec["network"], rec.get("pseudolabels") or {}
        rows.append({
            "round": rec["round"], "network_miou": net.get("miou"), "network_pq": net.get("pq"),
            "pseudolabel_miou": pl.get("miou"), "pseudolabel_labelled_share": pl.get("labelled_share"),
            "pseudolabel_precision": pl.get("precision"), "full_supervision_miou": full_miou,
            "share_of_full": (net["miou"] / full_miou) if (full_miou and net.get("miou") is not None) else None,
        })
    return rows


def _devkit(manifest: Manifest, space: LabelSpace, ev: dict[str, Any], evaluation: dict[str, Any],
            stores: dict[str, str] | None, devkit_dir: str | Path | None, min_points: int,
            by_shard: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The devkit cross-check of the final round (its status when it cannot run)."""
    from lidarlift.evaluate.run import devkit_compare

    if not ev["devkit_check"]:
        return {"devkit_status": "skipped: config key evaluate.devkit_check is false"}
    if manifest.kind != "nuscenes":
        return {"devkit_status": f"skipped: the devkit evaluates nuScenes-format data, this run is {manifest.kind}"}
    if space.name != "nuscenes16":
        return {"devkit_status": f"skipped: label space {space.name} is not the nuScenes challenge's"}
    if not stores or devkit_dir is None:
        return {"devkit_status": "skipped: no predict stores given"}
    if len(evaluation["eval_split"]) != 1:
        raise D.DevkitUnavailable(
            f"devkit check: the network is scored on shards of several splits {evaluation['eval_split']} (the run has no "
            "val scene); set evaluate.devkit_check: false to run without the cross-check")
    params = InstanceParams.from_config(ev.get("instances"))
    panoptic = all(by_shard[s].get("panoptic_truth") for s in stores)
    writer = D.SubmissionWriter(devkit_dir, D.eval_set_name(manifest.version, evaluation["eval_split"][0]))
    by_token = {s.token: s for s in manifest.samples}
    for shard, path in sorted(stores.items()):
        g = A.open_store(path, "predict")
        off, pred = A.read(g, "point_offsets"), A.read(g, "pred")
        for s, token in enumerate(g.attrs["sample_tokens"]):
            sl = A.sample_slice(off, s)
            if sl.stop == sl.start:
                continue
            sample = by_token[token]
            sem = pred[sl].astype(np.int64)
            inst = None
            if panoptic:
                from lidarlift.datasets.readers import read_lidar

                xyz = read_lidar(manifest.resolve(sample.lidar.path), sample.lidar.fmt, sample.token)[:, :3]
                inst = cluster_instances(xyz, sem, space, params)
            writer.add(sample.lidar.token, sem.astype(np.uint8), inst)
    writer.close()
    return devkit_compare(manifest, writer, evaluation["network"], min_points, float(ev["tolerance"]),
                          panoptic=panoptic)


def score_stores(manifest_path: str | Path, stores: dict[str, dict[str, Any]],
                 settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every figure of the given stores (``{shard: ShardStores dict}``) without the workflow: the
    per-shard counts then the merge, no devkit check. Benchmarks and tests use it."""
    from lidarlift.evaluate.shard import evaluate_shard

    files = [evaluate_shard(manifest_path, shard, st, settings) for shard, st in stores.items()]
    return merge(manifest_path, files, None, settings)
