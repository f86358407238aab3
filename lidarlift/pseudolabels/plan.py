"""The pseudolabels rules' inputs and params for a run (used by rules/pseudolabels.smk).

Round 0 reads the association, the pre-segments and -- clicks mode -- the shard's clicks file, with
superpixels and masks for our propagation, or -- annotation-free mode -- the masks; round r >= 1 reads
the round-0 store and the ``predict`` store of round r - 1. The clicks rule reads the manifest, plus
the association and pre-segments for IUPC's protocol, those and the superpixels and masks for the
active protocol (it runs our propagation), or the user's clicks file.

With the active protocol (and ``pseudolabels.baseline``) the uniform budget protocol runs beside it as
its baseline: rule ``pseudolabels_uniform`` makes the same share of uniform clicks and round-0 labels
from them (``results/baselines/uniform_clicks/<shard>.{tsv,zarr}``), which the evaluation scores under
``pseudolabels.active``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any


@dataclass
class PseudoLabelPlan:
    """``config`` (validated) and the ``results`` folder of a run."""

    config: dict[str, Any]
    results: str
    section: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        from lidarlift.config import production_section

        self.section = production_section(self.config, "pseudolabels")
        self.baseline = bool(self.config["pseudolabels"]["baseline"])

    @property
    def protocol(self) -> str:
        return self.section["clicks"]["protocol"]

    @property
    def uniform_baseline(self) -> bool:
        """Active clicks are measured against the uniform budget protocol at the same share."""
        return self.section["mode"] == "clicks" and self.protocol == "active" and self.baseline

    def clicks_path(self, shard: str) -> str:
        return f"{self.results}/pseudolabels/clicks/{shard}.tsv"

    def clicks_inputs(self, wildcards: Any) -> dict[str, str]:
        """The manifest; IUPC's protocol also reads the association (field of view) and pre-segments; a
        user's clicks file is an input too, so editing it re-runs the rule."""
        inputs = {"manifest": f"{self.results}/manifest.json"}
        if self.protocol in ("iupc", "active"):
            inputs["associate"] = f"{self.results}/associate/{wildcards.shard}.zarr"
            inputs["presegment"] = f"{self.results}/presegment/{wildcards.shard}.zarr"
        if self.protocol == "active":
            inputs["superpixels"] = f"{self.results}/superpixels/{wildcards.shard}.zarr"
            inputs["masks"] = f"{self.results}/masks/{wildcards.shard}.zarr"
        if self.protocol == "file":
            inputs["user_clicks"] = self.section["clicks"]["file"]
        return inputs

    def clicks_params(self, wildcards: Any = None) -> dict[str, Any]:
        """The clicks section; the active protocol also runs our propagation (section ``ours``)."""
        out = {"clicks": dict(self.section["clicks"])}
        if self.protocol == "active":
            out["ours"] = dict(self.section["ours"])
        return out

    def uniform_path(self, shard: str, suffix: str = "zarr") -> str:
        return f"{self.results}/baselines/uniform_clicks/{shard}.{suffix}"

    def uniform_inputs(self, wildcards: Any) -> dict[str, str]:
        """Rule ``pseudolabels_uniform``: what round 0 reads, less the active clicks file it replaces."""
        inputs = self.inputs(SimpleNamespace(shard=wildcards.shard, round="0"))
        inputs.pop("clicks", None)
        return inputs

    def uniform_params(self, wildcards: Any = None) -> dict[str, Any]:
        """Round 0's params with the clicks of the budget protocol (same share and seed)."""
        params = self.params(SimpleNamespace(round="0"))
        params["clicks"] = {**(params.get("clicks") or {}), "protocol": "budget"}
        return params

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
        elif self.section["mode"] == "clicks":
            inputs["clicks"] = self.clicks_path(shard)
            if self.section["propagation"] == "ours":
                inputs["superpixels"] = f"{res}/superpixels/{shard}.zarr"
                inputs["masks"] = f"{res}/masks/{shard}.zarr"
        else:
            inputs["masks"] = f"{res}/masks/{shard}.zarr"
        return inputs

    def baseline_inputs(self, wildcards: Any) -> dict[str, str]:
        """The stores the round-0 baseline of one shard reads: IUPC's rule set needs the clicks, the
        association and the pre-segments; PointSAM-faithful lifting the masks."""
        shard, res = wildcards.shard, self.results
        inputs = {"manifest": f"{res}/manifest.json", "associate": f"{res}/associate/{shard}.zarr",
                  "presegment": f"{res}/presegment/{shard}.zarr"}
        if self.section["mode"] == "clicks":
            inputs["clicks"] = self.clicks_path(shard)
        else:
            inputs["masks"] = f"{res}/masks/{shard}.zarr"
        return inputs

    def baseline_path(self, shard: str) -> str:
        return f"{self.results}/baselines/pseudolabels/{shard}.zarr"

    def params(self, wildcards: Any) -> dict[str, Any]:
        """The config a round reads, so that a change re-runs only the rounds it concerns: round 0
        everything but the E-step, later rounds the mode and the E-step."""
        if int(getattr(wildcards, "round", 0)) == 0:
            return {k: v for k, v in self.section.items() if k != "estep"}
        return {k: v for k, v in self.section.items() if k in ("mode", "estep")}
