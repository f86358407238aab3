"""Pseudo-labels (the E-step): clicks + propagation, or annotation-free 2D lifting, then network rounds.

Modules:
- :mod:`.clicks` simulated annotator (IUPC protocol, point budget) and the clicks file format;
- :mod:`.propagate` the IUPC rule set (baseline) and our evidence-graph propagation;
- :mod:`.simulate2d` simulated 2D predictions and the user 2D-map input;
- :mod:`.annotation_free` PointSAM-faithful lifting + SAR (baseline) and ours;
- :mod:`.estep` rounds >= 1 from network predictions (IUPC's rule and ours);
- :mod:`.metrics` label quality and panoptic quality counts;
- :mod:`.stage` the per-shard, per-round stage (I/O).

Summary key ``pseudolabels`` (:func:`summarize`): the final round's shares and precision at the top,
every round under ``rounds`` (keyed by round), the round-0 baseline under ``baseline``, per split
under ``splits``, and for annotation-free runs ``annotation_free.pq_things`` and
``annotation_free.baseline_pq_things``.
"""
from __future__ import annotations

from typing import Any

from lidarlift.classes import label_space

from .metrics import add_counts, panoptic_quality, ratios


def _sum(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in items:
        out = add_counts(out, c) if out else dict(c)
    return out


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-shard, per-round metrics files into the ``pseudolabels`` summary key."""
    if not metrics:
        return {}
    space = label_space(metrics[0].get("label_space", "nuscenes16"))
    rounds = sorted({int(m["round"]) for m in metrics})
    per_round: dict[str, Any] = {}
    for r in rounds:
        ms = [m for m in metrics if int(m["round"]) == r]
        entry = ratios(_sum([m["counts"] for m in ms]), space)
        entry["method"] = ms[0].get("method")
        entry["shards"] = len(ms)
        entry["seconds"] = sum(m["seconds"]["total"] for m in ms)
        per_round[str(r)] = entry
    last = str(rounds[-1])
    out: dict[str, Any] = {"round": rounds[-1], "mode": metrics[0].get("mode")}
    out.update({k: per_round[last][k] for k in ("click_share", "labelled_share", "precision", "candidate_share",
                                                "mean_candidate_set_size", "candidate_contains_truth")})
    out["method"] = per_round[last]["method"]
    out["rounds"] = per_round
    r0 = [m for m in metrics if int(m["round"]) == rounds[0]]
    if any(m.get("baseline_counts") for m in r0):
        out["baseline"] = {"method": r0[0].get("baseline_method"),
                           **ratios(_sum([m["baseline_counts"] for m in r0 if m.get("baseline_counts")]), space)}
    splits = sorted({m.get("split") for m in metrics})
    out["splits"] = {sp: ratios(_sum([m["counts"] for m in metrics if int(m["round"]) == rounds[-1] and m.get("split") == sp]), space)
                     for sp in splits}
    if r0[0].get("clicks"):
        out["clicks"] = r0[0]["clicks"]
    pans = [m["panoptic"] for m in r0 if m.get("panoptic")]
    if pans:
        names = pans[0]["classes"]
        block: dict[str, Any] = {"method": r0[0].get("method"), "baseline_method": r0[0].get("baseline_method"),
                                 "semantic2d": r0[0].get("annotation_free", {}).get("semantic2d"),
                                 "corruption": r0[0].get("annotation_free", {}).get("corruption")}
        for key, name in (("ours", "pq_things"), ("baseline", "baseline_pq_things")):
            counts = [pp[key] for pp in pans if pp.get(key)]
            if counts:
                q = panoptic_quality(_sum(counts), names)
                block[name] = q["pq"]
                block[name.replace("pq", "sq")] = q["sq"]
                block[name.replace("pq", "rq")] = q["rq"]
                block[f"{key}_per_class"] = q["per_class"]
        if block.get("pq_things") is not None and block.get("baseline_pq_things"):
            block["ratio_to_baseline"] = block["pq_things"] / block["baseline_pq_things"]
        out["annotation_free"] = block
    return out


__all__ = ["summarize"]
