"""Evaluation: official metrics, the nuScenes devkit cross-check, exports and the report's figures.

Modules: :mod:`.metrics` (confusion matrix, IoU / mIoU, panoptic PQ / SQ / RQ in the official
conventions), :mod:`.devkit` (submission layouts and the devkit's evaluators), :mod:`.export`
(nuScenes, SemanticKITTI and PointSAM / MixSup label files), :mod:`.instances` (panoptic instances
from semantic predictions), :mod:`.run` (the ``evaluate`` and ``export`` stages), :mod:`.figures`
and :mod:`.report` (the report's figures and tables).

Summary key ``evaluation`` (see :func:`summarize`).
"""
from __future__ import annotations

from typing import Any

_HEADLINE_KEYS = ("miou", "iou_per_class", "pq", "sq", "rq", "pq_things", "pq_stuff")


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary key ``evaluation`` from the evaluate rule's metrics file (``kind: evaluation``), the
    export rules' records (``kind: export``) and the report index (``kind: report``).

    Top level: the final-round network's ``miou``, ``iou_per_class``, ``pq``, ``sq``, ``rq``,
    ``pq_things``, ``pq_stuff`` (project numbers, val split); ``devkit`` (the devkit's numbers, same
    layout) and ``max_abs_diff``; ``rounds`` (per EM round: network and pseudo-label scores),
    ``full_supervision``, ``share_of_full``, ``headline``; ``exports``; ``figures``.
    """
    out: dict[str, Any] = {}
    exports, figures = {}, []
    for m in metrics:
        kind = m.get("kind")
        if kind == "evaluation":
            net = m["network"]
            out.update({k: net.get(k) for k in _HEADLINE_KEYS})
            out.update({
                "sq_things": net.get("sq_things"), "rq_things": net.get("rq_things"),
                "sq_stuff": net.get("sq_stuff"), "rq_stuff": net.get("rq_stuff"),
                "devkit": m.get("devkit"), "max_abs_diff": m.get("max_abs_diff"),
                "max_abs_diff_at": m.get("max_abs_diff_at"), "devkit_tolerance": m.get("devkit_tolerance"),
                "devkit_status": m.get("devkit_status"), "eval_set": m.get("eval_set"),
                "final_round": m.get("final_round"), "eval_split": m.get("eval_split"),
                "label_space": m.get("label_space"),
                "rounds": [{"round": r["round"],
                            "network": {k: r["network"].get(k) for k in ("miou", "pq", "pq_things", "pq_stuff")},
                            "pseudolabels": {k: (r.get("pseudolabels") or {}).get(k)
                                             for k in ("miou", "labelled_share", "precision", "candidate_share",
                                                       "candidate_contains_truth", "pq_things")}}
                           for r in m.get("rounds", [])],
                "full_supervision": ({k: m["full_supervision"].get(k) for k in ("miou", "iou_per_class", "pq", "pq_things", "pq_stuff")}
                                     if m.get("full_supervision") else None),
                "headline": m.get("headline"),
                "instances": m.get("instances"),
                "skipped": m.get("skipped", []),
                "seconds": m.get("seconds"),
            })
            full = m.get("full_supervision") or {}
            out["share_of_full"] = (net["miou"] / full["miou"]) if full.get("miou") and net.get("miou") is not None else None
        elif kind == "export":
            exports[m["source"]] = {k: m.get(k) for k in ("formats", "samples", "splits", "directory")}
        elif kind == "report":
            figures.extend(m.get("files", []))
    out["exports"] = exports
    out["figures"] = figures
    return out
