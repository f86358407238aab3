"""2D masks per camera image: SAM / SAM 2 prompted by the LiDAR, the vanilla SAM grid, or weight-free.

Backends are chosen by ``masks.backend`` through :data:`BACKENDS`:

- ``weightfree`` (default, no model weights): graph-segment merging guided by the LiDAR pre-segments
  (:mod:`lidarlift.masks.weightfree`);
- ``sam``: segment-anything vit_h / vit_l / vit_b from a checked checkpoint in ``resources/``
  (:mod:`lidarlift.masks.sam`); ``masks.generator`` picks the LiDAR-prompted batched generator
  (``lidar``) or the vanilla ``SamAutomaticMaskGenerator`` grid baseline (``vanilla``);
- ``sam2``: the optional ``sam2`` package's image predictor (:mod:`lidarlift.masks.sam2`).

The stage (:func:`lidarlift.masks.stage.run_masks`) writes the ``masks`` store of a shard and a stats
file (masks, prompts, timings); :mod:`lidarlift.evaluate.masks` scores the masks against the 2D truth.
"""
from __future__ import annotations

from typing import Any

#: names re-exported from :mod:`lidarlift.masks.core` on first use, so that importing this package (the
#: workflow does, to size the masks rule's GPUs) does not import torch
_CORE = ("OVERLAP_RULES", "PROMPT_SOURCES", "CameraView", "ImageMasks", "MaskBackendError", "resolve_overlaps")


def __getattr__(name: str) -> Any:
    if name in _CORE:
        from lidarlift.masks import core

        return getattr(core, name)
    raise AttributeError(f"module 'lidarlift.masks' has no attribute {name!r}")

#: backend name -> "module:factory"; a factory takes (masks config, torch device or None) and returns
#: an object with ``generate(views, out_hw) -> list[ImageMasks]``, ``describe() -> dict`` and ``timings``.
BACKENDS: dict[str, str] = {
    "weightfree": "lidarlift.masks.stage:make_weightfree",
    "sam": "lidarlift.masks.stage:make_sam",
    "sam2": "lidarlift.masks.stage:make_sam2",
}
#: backends that run a network (GPU jobs: Snakemake resource gpu=1 unless masks.device is cpu)
NETWORK_BACKENDS = frozenset({"sam", "sam2"})

def with_defaults(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The masks config section with every missing key (nested sections too) filled from the schema's
    defaults (config/schema.yaml, the one place they live), validated: a bad value raises naming the key."""
    from lidarlift.config import section

    return section("masks", cfg)


def needs_gpu(cfg: dict[str, Any] | None) -> bool:
    """Whether the masks job should ask Snakemake for a GPU (network backend and device not cpu)."""
    c = with_defaults(cfg)
    return c["backend"] in NETWORK_BACKENDS and c["device"] != "cpu"
