"""2D masks per camera image: SAM / SAM 2 prompted by the LiDAR, the vanilla SAM grid, or weight-free.

Backends are chosen by ``masks.backend`` through :data:`BACKENDS`:

- ``weightfree`` (default, no model weights): graph-segment merging guided by the LiDAR pre-segments
  (:mod:`lidarlift.masks.weightfree`);
- ``sam``: segment-anything vit_h / vit_l / vit_b from a checked checkpoint in ``resources/``
  (:mod:`lidarlift.masks.sam`); ``masks.generator`` picks the LiDAR-prompted batched generator
  (``lidar``) or the vanilla ``SamAutomaticMaskGenerator`` grid baseline (``vanilla``);
- ``sam2``: the optional ``sam2`` package's image predictor (:mod:`lidarlift.masks.sam2`).

The stage (:func:`lidarlift.masks.stage.run_masks`) writes the ``masks`` store of a shard and a metrics
file; :func:`summarize` merges the metrics files into the summary key ``masks``.
"""
from __future__ import annotations

import copy
from typing import Any

from lidarlift.masks.core import (OVERLAP_RULES, PROMPT_SOURCES, CameraView, ImageMasks,  # noqa: F401
                                  MaskBackendError, resolve_overlaps)
from lidarlift.masks.metrics import merge_counts

#: backend name -> "module:factory"; a factory takes (masks config, torch device or None) and returns
#: an object with ``generate(views, out_hw) -> list[ImageMasks]``, ``describe() -> dict`` and ``timings``.
BACKENDS: dict[str, str] = {
    "weightfree": "lidarlift.masks.stage:make_weightfree",
    "sam": "lidarlift.masks.stage:make_sam",
    "sam2": "lidarlift.masks.stage:make_sam2",
}
#: backends that run a network (GPU jobs: Snakemake resource gpu=1 unless masks.device is cpu)
NETWORK_BACKENDS = frozenset({"sam", "sam2"})

#: defaults of the ``masks`` config section (config/schema.yaml documents every key).
DEFAULTS: dict[str, Any] = {
    "backend": "weightfree",
    "generator": "lidar",
    "device": "auto",
    "scale": 1.0,
    "overlap": "smaller_on_top",
    "max_prompts": 256,
    "points_per_segment": 3,
    "points_per_prompt": 1,
    "min_segment_points": 3,
    "grid_per_side": 0,
    "grid_min_distance": 24.0,
    "multimask": "all",
    "pred_iou_thresh": 0.7,
    "stability_thresh": 0.8,
    "stability_offset": 1.0,
    "nms_thresh": 0.7,
    "max_masks": 128,
    "min_mask_area": 16,
    "encoder_batch": 6,
    "points_per_batch": 256,
    "bf16": True,
    "eval_min_area": 64,
    "sam": {"model_type": "vit_h", "checkpoint": "", "sha256": "official"},
    "sam2": {"config": "configs/sam2.1/sam2.1_hiera_l.yaml", "checkpoint": "resources/sam2.1_hiera_large.pt", "sha256": ""},
    "vanilla": {"points_per_side": 32, "points_per_batch": 64, "pred_iou_thresh": 0.88, "stability_thresh": 0.95,
                "nms_thresh": 0.7, "max_masks": 0},
    "weightfree": {"sigma": 0.5, "k": 300.0, "min_size": 20, "min_segment_points": 3, "hull_margin": 0.75,
                   "min_margin_px": 1.5, "min_area": 16, "region_masks": False, "region_min_area": 400},
}


def with_defaults(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The masks config with every missing key (nested sections too) filled from :data:`DEFAULTS`."""
    out = copy.deepcopy(DEFAULTS)
    for key, value in (cfg or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    if out["backend"] not in BACKENDS:
        raise ValueError(f"config key masks.backend: unknown backend {out['backend']!r}; choose one of {sorted(BACKENDS)}")
    if out["generator"] not in ("lidar", "vanilla"):
        raise ValueError(f"config key masks.generator: {out['generator']!r} is not one of lidar, vanilla")
    return out


def needs_gpu(cfg: dict[str, Any] | None) -> bool:
    """Whether the masks job should ask Snakemake for a GPU (network backend and device not cpu)."""
    c = with_defaults(cfg)
    return c["backend"] in NETWORK_BACKENDS and c["device"] != "cpu"


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary key ``masks`` from the per-shard metrics files (counts summed before dividing).

    backend, mean_best_iou_things (mean over ground-truth thing instances of the best IoU of any mask),
    instance_recall_iou50 (share of thing instances with a mask of IoU >= 0.5), per-class figures,
    masks per image and speed. Shares are None where no shard had 2D ground truth.
    """
    backends = sorted({m.get("backend", "?") for m in metrics})
    generators = sorted({m.get("generator", "?") for m in metrics})
    counts = merge_counts([m.get("quality", {}) for m in metrics])
    n = counts["thing_instances"]
    images = sum(m.get("images", 0) for m in metrics)
    masks = sum(m.get("masks", 0) for m in metrics)
    seconds = sum(m.get("generate_s", 0.0) for m in metrics)
    per_class = {name: {"instances": c[0], "mean_best_iou": c[1] / c[0] if c[0] else None,
                        "recall_iou50": c[2] / c[0] if c[0] else None}
                 for name, c in sorted(counts["per_class"].items())}
    return {
        "backend": backends[0] if len(backends) == 1 else backends,
        "generator": generators[0] if len(generators) == 1 else generators,
        "model": sorted({m.get("model", "") for m in metrics} - {""}) or None,
        "device": sorted({m.get("device", "?") for m in metrics}),
        "mean_best_iou_things": counts["sum_best_iou"] / n if n else None,
        "instance_recall_iou50": counts["covered_iou50"] / n if n else None,
        "thing_instances": n,
        "eval_min_area": sorted({m.get("eval_min_area") for m in metrics if m.get("eval_min_area") is not None}),
        "per_class": per_class,
        "shards": len(metrics),
        "images": images,
        "masks": masks,
        "masks_per_image": masks / images if images else None,
        "prompts_per_image": sum(m.get("prompts", 0) for m in metrics) / images if images else None,
        "generate_s": seconds,
        "images_per_s": images / seconds if seconds > 0 else None,
        "job_s": sum(m.get("job_s", 0.0) for m in metrics),
    }
