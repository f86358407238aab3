"""``results/summary.json``, the run's scoreboard: one top-level key per stage.

Each key joins what the production jobs report about themselves (their ``*.stats.json``: counts,
seconds, devices; summed over shards before any rate is taken) with the quality figures of the
evaluation (``results/evaluate/metrics.json``, :mod:`lidarlift.evaluate.merge`). This module reads JSON
only: building the summary imports no stage code (no torch, no spconv).
"""
from __future__ import annotations

from typing import Any, Iterable

from lidarlift.workflow import read_json


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _sum(stats: Iterable[dict[str, Any]], keys: Iterable[str]) -> dict[str, float]:
    stats = list(stats)
    return {k: sum(s.get(k, 0) for s in stats if _num(s.get(k, 0))) for k in keys}


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def _one(values: Iterable[Any]) -> Any:
    """The value all items share, or the sorted list of the different ones."""
    vals = sorted({v for v in values if v is not None}, key=str)
    return vals[0] if len(vals) == 1 else (vals or None)


def _skipped(stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for s in stats for x in s.get("skipped", [])]


def association(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """points_per_second: keyframe points per CPU-second of association compute (projection, depth
    buffers, occlusion test on one thread; file reading excluded), a per-core rate a busy machine
    does not distort; ``points_per_second_wall`` the same over wall time."""
    t = _sum(stats, ("points", "pairs", "in_image_pairs", "visible_pairs", "seconds_compute", "cpu_seconds_compute", "samples"))
    return {"points_per_second": _ratio(t["points"], t["cpu_seconds_compute"]),
            "pairs_per_second": _ratio(t["pairs"], t["cpu_seconds_compute"]),
            "points_per_second_wall": _ratio(t["points"], t["seconds_compute"]),
            **t, "samples_skipped": len(_skipped(stats)), "skipped": _skipped(stats),
            "dropped_sweeps": [x for s in stats for x in s.get("dropped_sweeps", [])]}


def superpixels(stats: list[dict[str, Any]]) -> dict[str, Any]:
    t = _sum(stats, ("images", "superpixels", "seconds", "cpu_seconds"))
    return {"seconds_per_image": _ratio(t["seconds"], t["images"]), "cpu_seconds_per_image": _ratio(t["cpu_seconds"], t["images"]),
            "superpixels_per_image": _ratio(t["superpixels"], t["images"]), "images": t["images"],
            "method": _one(s.get("method") for s in stats), "scale": _one(s.get("scale") for s in stats),
            "skipped": _skipped(stats)}


def presegment(stats: list[dict[str, Any]]) -> dict[str, Any]:
    t = _sum(stats, ("sweeps", "input_points", "seconds", "cpu_seconds", "read_seconds"))
    return {"seconds_per_sweep": _ratio(t["seconds"], t["sweeps"]), "cpu_seconds_per_sweep": _ratio(t["cpu_seconds"], t["sweeps"]),
            "read_seconds_per_sweep": _ratio(t["read_seconds"], t["sweeps"]),
            "points_per_sweep": _ratio(t["input_points"], t["sweeps"]), "sweeps": t["sweeps"],
            "method": _one(s.get("method") for s in stats), "skipped": _skipped(stats)}


def masks(stats: list[dict[str, Any]]) -> dict[str, Any]:
    t = _sum(stats, ("images", "masks", "prompts", "generate_s", "job_s"))
    return {"backend": _one(s.get("backend") for s in stats), "generator": _one(s.get("generator") for s in stats),
            "model": _one(s.get("model") or None for s in stats), "device": _one(s.get("device") for s in stats),
            "shards": len(stats), "images": t["images"], "masks": t["masks"],
            "masks_per_image": _ratio(t["masks"], t["images"]), "prompts_per_image": _ratio(t["prompts"], t["images"]),
            "generate_s": t["generate_s"], "images_per_s": _ratio(t["images"], t["generate_s"]), "job_s": t["job_s"]}


def pseudolabels(stats: list[dict[str, Any]]) -> dict[str, Any]:
    rounds = sorted({int(s["round"]) for s in stats if not s.get("baseline")})
    out: dict[str, Any] = {
        "mode": _one(s.get("mode") for s in stats),
        "method": _one(s.get("method") for s in stats if not s.get("baseline") and int(s["round"]) == rounds[-1]) if rounds else None,
        "seconds_rounds": [sum(s["seconds"]["total"] for s in stats if int(s["round"]) == r and not s.get("baseline")) for r in rounds],
    }
    first = next((s for s in stats if int(s["round"]) == 0 and not s.get("baseline")), {})
    for key in ("clicks", "annotation_free"):
        if first.get(key):
            out[key] = first[key]
    return out


def training(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """What the train jobs (``kind: train``, per round and 'full') and predict jobs (``kind: predict``)
    report: seconds, devices, losses and throughput."""
    train = {m["round"]: m for m in stats if m.get("kind") == "train"}
    rounds = sorted(r for r in train if r != "full")
    predict = [m for m in stats if m.get("kind") == "predict"]
    get = lambda r, k: (train.get(r) or {}).get(k)  # noqa: E731
    return {
        "train_seconds_rounds": [get(r, "seconds") for r in rounds],
        "train_seconds_full_supervision": get("full", "seconds"),
        "throughput_rounds": [get(r, "throughput") for r in rounds],
        "throughput_full_supervision": get("full", "throughput"),
        "final_loss_rounds": [get(r, "final_loss") for r in rounds],
        "predict_seconds_rounds": [sum(m.get("seconds", 0.0) for m in predict if m.get("round") == r) for r in rounds],
        "device": _one(m.get("device") for m in train.values()),
    }


def dataset(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's figures plus the generator's seconds where it ran."""
    out: dict[str, Any] = {}
    for m in stats:
        if "kind" in m:
            out.update(m)
        else:
            out["generation_seconds"] = m.get("seconds")
    out.setdefault("generation_seconds", None)
    return out


def temporal(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """What the temporal jobs (lidarlift.temporal, one per train shard and EM round) report, summed over the
    shards of the last round: sweeps, points, labelled points per labelled keyframe point, points per
    source, seconds per sweep (their quality: summary ``pseudolabels.temporal``)."""
    if not stats:
        return {}
    last = max(int(s["round"]) for s in stats)
    cur = [s for s in stats if int(s["round"]) == last]
    t = _sum(cur, ("sweeps", "points", "labelled", "keyframe_labelled", "moving_segments"))
    secs = sum(s["seconds"]["total"] for s in cur)
    return {"round": last, **t, "labelled_per_keyframe_label": _ratio(t["labelled"], t["keyframe_labelled"]),
            "by_source": _sum([s["by_source"] for s in cur], sorted({k for s in cur for k in s["by_source"]})),
            "seconds": secs, "seconds_per_sweep": _ratio(secs, t["sweeps"]), "skipped": _skipped(cur)}


#: summary key -> merge of the production jobs' stats files of that key.
STATS: dict[str, Any] = {"dataset": dataset, "association": association, "superpixels": superpixels,
                         "presegment": presegment, "masks": masks, "pseudolabels": pseudolabels, "training": training,
                         "temporal": temporal}


def build_summary(stats_files: dict[str, list[str]], evaluation: str | dict[str, Any] | None = None,
                  exports: list[str] | None = None) -> dict[str, Any]:
    """The summary from ``{summary key: [stats json paths]}``, the evaluation's metrics file (path or
    dict) and the export rules' records. Keys with a ``baseline`` (``presegment``) take the baseline
    rule's stats under ``<key>_baseline``."""
    ev = read_json(evaluation) if isinstance(evaluation, str) else (evaluation or {})
    out: dict[str, Any] = {}
    for key, paths in stats_files.items():
        base = key.removesuffix("_baseline")
        if base not in STATS:
            raise KeyError(f"no stats merge registered for summary key {key!r} (lidarlift.summary.STATS)")
        merged = STATS[base]([read_json(p) for p in paths])
        if key != base:
            out.setdefault(base, {}).setdefault("baseline_stats", merged)
        else:
            out[base] = {**merged, **out.get(base, {})}
    for key in ("association", "superpixels", "presegment", "masks", "pseudolabels", "training"):
        quality = ev.get(key)
        if quality:
            section = out.setdefault(key, {})
            baseline = quality.get("baseline") if isinstance(quality, dict) else None
            section.update(quality)
            if isinstance(baseline, dict) and "baseline_stats" in section:
                section["baseline"] = {**section.pop("baseline_stats"), **baseline}
    if ev.get("evaluation"):
        out["evaluation"] = {**ev["evaluation"], "skipped": ev.get("skipped", []), "seconds": ev.get("seconds")}
        out["evaluation"]["exports"] = {}
        for p in exports or []:
            m = read_json(p)
            out["evaluation"]["exports"][m["source"]] = {k: m.get(k) for k in ("formats", "samples", "splits", "directory")}
    return out
