"""``results/summary.json``: one top-level key per stage, merged from the per-shard metrics files.

Each stage module provides ``summarize(metrics: list[dict]) -> dict`` that merges its per-shard
metrics (counts are summed before ratios are taken, so the summary is exact, not a mean of means).
"""
from __future__ import annotations

import importlib
from typing import Any

from lidarlift.workflow import read_json

#: summary key -> "module:function" merging that stage's metrics files.
SUMMARIZERS: dict[str, str] = {
    "dataset": "lidarlift.dataset_stats:summarize",
    "association": "lidarlift.associate:summarize",
    "superpixels": "lidarlift.superpixels:summarize",
    "presegment": "lidarlift.presegment:summarize",
    "masks": "lidarlift.masks:summarize",
    "pseudolabels": "lidarlift.pseudolabels:summarize",
    "training": "lidarlift.model.train:summarize",
    "evaluation": "lidarlift.evaluate:summarize",
}


def build_summary(metric_files: dict[str, list[str]], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``{summary key: [metrics json paths]}`` into the summary dict."""
    out: dict[str, Any] = {}
    for key, paths in metric_files.items():
        if key not in SUMMARIZERS:
            raise KeyError(f"no summarizer registered for summary key {key!r} (lidarlift.summary.SUMMARIZERS)")
        module, func = SUMMARIZERS[key].split(":")
        merge = getattr(importlib.import_module(module), func)
        out[key] = merge([read_json(p) for p in paths])
    return out
