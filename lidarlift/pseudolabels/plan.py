"""The pseudolabels rules' inputs and params for a run (used by rules/pseudolabels.smk).

Round 0 reads the association, the pre-segments and -- clicks mode -- the shard's clicks file, with
superpixels and masks for our propagation, or -- annotation-free mode -- the masks; round r >= 1 reads
the round-0 store and the ``predict`` store of round r - 1. The clicks rule reads the manifest, plus
the association and pre-segments for IUPC's protocol, or the user's clicks file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PseudoLabelPlan:
    """``config`` (validated) and the ``results`` folder of a run."""

    config: dict[str, Any]
    results: str
    section: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.section = dict(self.config.get("pseudolabels") or {})

    @property
    def protocol(self) -> str:
        return (self.section.get("clicks") or {}).get("protocol", "budget")

    def clicks_path(self, shard: str) -> str:
        return f"{self.results}/pseudolabels/clicks/{shard}.tsv"

    def clicks_inputs(self, wildcards: Any) -> dict[str, str]:
        """The manifest; IUPC's protocol also reads the association (field of view) and pre-segments; a
        user's clicks file is an input too, so editing it re-runs the rule."""
        inputs = {"manifest": f"{self.results}/manifest.json"}
        if self.protocol == "iupc":
            inputs["associate"] = f"{self.results}/associate/{wildcards.shard}.zarr"
            inputs["presegment"] = f"{self.results}/presegment/{wildcards.shard}.zarr"
        if self.protocol == "file":
            inputs["user_clicks"] = self.section["clicks"]["file"]
        return inputs

    def inputs(self, wildcards: Any) -> dict[str, str]:
        """The stores one shard and round reads (module doc)."""
        shard, r, res = wildcards.shard, int(wildcards.round), self.results
        inputs = {
            "manifest": f"{res}/manifest.json",
            "associate": f"{res}/associate/{shard}.zarr",
            "presegment": f"{res}/presegment/{shard}.zarr",
        }
        if r > 0:
            inputs["round0"] = f"{res}/pseudolabels/r0/{shard}.zarr"
            inputs["predict"] = f"{res}/predict/r{r - 1}/{shard}.zarr"
        elif self.section.get("mode", "clicks") == "clicks":
            inputs["clicks"] = self.clicks_path(shard)
            if self.section.get("propagation", "ours") == "ours":
                inputs["superpixels"] = f"{res}/superpixels/{shard}.zarr"
                inputs["masks"] = f"{res}/masks/{shard}.zarr"
        else:
            inputs["masks"] = f"{res}/masks/{shard}.zarr"
        return inputs

    def params(self, wildcards: Any) -> dict[str, Any]:
        """The config a round reads, so that a change re-runs only the rounds it concerns: round 0
        everything but the E-step, later rounds the mode and the E-step."""
        if int(wildcards.round) == 0:
            return {k: v for k, v in self.section.items() if k != "estep"}
        return {k: v for k, v in self.section.items() if k in ("mode", "estep")}
