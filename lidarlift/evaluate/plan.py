"""Which files the evaluation rules read and write, decided when the workflow is parsed.

``rules/evaluate.smk`` builds one :class:`EvaluationPlan` from the config and uses its methods as
input functions and params, so the rule file holds no logic (``snakemake --lint``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lidarlift.shards import eval_shards, shards_of_splits
from lidarlift.temporal_plan import TemporalPlan

EXPORT_SOURCES = ("network", "pseudolabels", "full")
PRODUCTION_STAGES = ("associate", "presegment", "presegment_baseline", "superpixels", "masks", "pseudolabels",
                     "pseudolabels_baseline", "pseudolabels_uniform", "network", "temporal")
REPORT_TABLES = ("headline.html", "headline.png", "label_quality.html", "stage_quality.html", "stage_quality.png",
                 "confusion.png", "training_curves.png")


@dataclass
class EvaluationPlan:
    """Paths of the evaluation for a run: ``config`` (validated), its ``shards`` and EM ``rounds``,
    the ``results`` folder and the manifest path."""

    config: dict[str, Any]
    shards: list[str]
    rounds: list[int]
    results: str
    manifest: str
    section: dict[str, Any] = field(init=False)
    eval_shards: list[str] = field(init=False)
    pseudo_shards: list[str] = field(init=False)
    final_round: int = field(init=False)
    export_sources: list[str] = field(init=False)
    figure_samples: list[tuple[str, int]] = field(init=False)
    report_dir: str = field(init=False)
    #: production stages whose stores evaluate_shard scores (a workflow without some stages narrows it)
    stages: frozenset[str] = frozenset(PRODUCTION_STAGES)

    def __post_init__(self) -> None:
        from lidarlift.config import section

        self.section = section("evaluate", self.config.get("evaluate"))
        if not self.rounds:
            raise ValueError("config key em.rounds: the evaluation needs at least one EM round")
        self.eval_shards = eval_shards(self.config, self.shards)
        self.pseudo_shards = shards_of_splits(self.config, self.shards, self.section["pseudolabel_splits"])
        self.final_round = self.rounds[-1]
        self.export_sources = list(self.section["export"]["sources"])
        self.figure_samples = self._figure_samples()
        self.report_dir = f"{self.results}/report"

    def _figure_samples(self) -> list[tuple[str, int]]:
        fig = self.section["figures"]
        shards = list(fig.get("shards") or [])
        if not shards:
            firsts = [shards_of_splits(self.config, self.shards, [sp])[:1] for sp in ("train", "val")]
            shards = [s for f in firsts for s in f] or self.shards[:1]
        unknown = sorted(set(shards) - set(self.shards))
        if unknown:
            raise ValueError(f"config key evaluate.figures.shards names shards not in this run: {unknown}")
        return [(s, int(fig["index"])) for s in shards]

    @property
    def full_supervision(self) -> bool:
        return bool(self.section["full_supervision"])

    # --- evaluate ---------------------------------------------------------------------------

    @property
    def presegment_baseline(self) -> bool:
        return bool((self.config.get("presegment") or {}).get("compare_baseline", True))

    @property
    def pseudolabels_baseline(self) -> bool:
        return bool((self.config.get("pseudolabels") or {}).get("baseline", True))

    @property
    def pseudolabels_uniform(self) -> bool:
        """Active clicks run with the uniform budget protocol beside them (rule pseudolabels_uniform)."""
        pl = self.config.get("pseudolabels") or {}
        return (self.pseudolabels_baseline and pl.get("mode", "clicks") == "clicks"
                and (pl.get("clicks") or {}).get("protocol") == "active")

    def shard_stores(self, shard: str) -> dict[str, Any]:
        """Every production store of ``shard`` that the evaluation scores (a
        :class:`lidarlift.evaluate.shard.ShardStores` as a dict): the stages, the baselines, the
        pseudo-labels of every round (pseudolabel splits), the networks of every round (every shard) and
        the fully supervised network (evaluation shards)."""
        r = self.results
        pseudo = shard in self.pseudo_shards
        network = {str(k): f"{r}/predict/r{k}/{shard}.zarr" for k in self.rounds}
        temporal = TemporalPlan(self.config, self.shards, self.rounds, r)
        if temporal.keyframes_predict(shard):  # the final round's network without the temporal sweeps
            network["keyframes"] = temporal.keyframes_predict(shard)
        if self.full_supervision and shard in self.eval_shards:
            network["full"] = f"{r}/predict/full/{shard}.zarr"
        out = {
            "associate": f"{r}/associate/{shard}.zarr",
            "presegment": f"{r}/presegment/{shard}.zarr",
            "presegment_baseline": f"{r}/baselines/presegment/{shard}.zarr" if self.presegment_baseline else None,
            "superpixels": f"{r}/superpixels/{shard}.zarr",
            "masks": f"{r}/masks/{shard}.zarr",
            "pseudolabels": {str(k): f"{r}/pseudolabels/r{k}/{shard}.zarr" for k in self.rounds} if pseudo else {},
            "pseudolabels_baseline": f"{r}/baselines/pseudolabels/{shard}.zarr" if pseudo and self.pseudolabels_baseline else None,
            "pseudolabels_uniform": f"{r}/baselines/uniform_clicks/{shard}.zarr" if pseudo and self.pseudolabels_uniform else None,
            "network": network,
            "temporal": temporal.eval_stores(shard),  # {round: store} of train shards with temporal.enabled
        }
        empty = {"presegment_baseline": None, "pseudolabels_baseline": None, "pseudolabels_uniform": None,
                 "pseudolabels": {}, "network": {}, "temporal": {}}
        for key in out:
            if key not in self.stages:
                out[key] = empty.get(key)
        return out

    def shard_inputs(self, wildcards) -> dict[str, Any]:
        """evaluate_shard's inputs: the manifest and every store of :meth:`shard_stores`."""
        st = self.shard_stores(wildcards.shard)
        flat = [v for k, v in st.items() if isinstance(v, str)]
        flat += [p for k in ("pseudolabels", "network", "temporal") for p in st[k].values()]
        return {"manifest": self.manifest, "stores": flat}

    def shard_params(self, wildcards) -> dict[str, Any]:
        return self.shard_stores(wildcards.shard)

    def shard_files(self) -> list[str]:
        return [f"{self.results}/evaluate/shards/{s}.json" for s in self.shards]

    def devkit_stores(self) -> dict[str, str]:
        """The final round's predict store of each evaluation shard (the devkit cross-check's submission)."""
        return {s: f"{self.results}/predict/r{self.final_round}/{s}.zarr" for s in self.eval_shards}

    def evaluate_inputs(self, wildcards=None) -> dict[str, Any]:
        return {"manifest": self.manifest, "shards": self.shard_files(), "network": list(self.devkit_stores().values())}

    # --- export -----------------------------------------------------------------------------

    def export_stores(self, source: str) -> dict[str, str]:
        """{shard: store} of one source: the final round's network predictions (every shard), its
        pseudo-labels (the pseudolabel splits), or the fully supervised network's predictions."""
        r, k = self.results, self.final_round
        if source == "network":
            return {s: f"{r}/predict/r{k}/{s}.zarr" for s in self.shards}
        if source == "full":
            return {s: f"{r}/predict/full/{s}.zarr" for s in self.shards}
        if source == "pseudolabels":
            return {s: f"{r}/pseudolabels/r{k}/{s}.zarr" for s in self.pseudo_shards}
        raise ValueError(f"config key evaluate.export.sources: unknown source {source!r}; choose from {list(EXPORT_SOURCES)}")

    def export_inputs(self, wildcards) -> dict[str, Any]:
        return {"manifest": self.manifest, "stores": list(self.export_stores(wildcards.source).values())}

    def export_params(self, wildcards) -> dict[str, Any]:
        return {"stores": self.export_stores(wildcards.source),
                "stage": "pseudolabels" if wildcards.source == "pseudolabels" else "predict"}

    def export_records(self) -> list[str]:
        return [f"{self.results}/export/{s}.json" for s in self.export_sources]

    # --- report -----------------------------------------------------------------------------

    def training_metrics(self) -> list[str]:
        """Training metrics (curves) of every EM round, and of the fully supervised baseline."""
        out = [f"{self.results}/train/r{k}/metrics.json" for k in self.rounds]
        if self.full_supervision:
            out.append(f"{self.results}/train/full/metrics.json")
        return out

    def tables_inputs(self, wildcards=None) -> dict[str, Any]:
        """report_tables reads the summary, the confusion matrices and the training curves."""
        return {"summary": f"{self.results}/summary.json", "confusion": f"{self.results}/evaluate/confusion.npz",
                "curves": self.training_metrics()}

    def sample_inputs(self, wildcards) -> dict[str, str]:
        """The final round's prediction and pseudo-labels of the drawn shard (the E-step labels every shard)."""
        r, k = self.results, self.final_round
        return {"manifest": self.manifest, "prediction": f"{r}/predict/r{k}/{wildcards.shard}.zarr",
                "pseudolabels": f"{r}/pseudolabels/r{k}/{wildcards.shard}.zarr"}

    def sample_figures(self) -> list[str]:
        return [f"{self.report_dir}/samples/{s}_{i}_{kind}.png" for s, i in self.figure_samples for kind in ("overlay", "bev")]

    def report_files(self) -> list[str]:
        """Every file the report shows except the benchmark table (what report_index lists)."""
        return [f"{self.report_dir}/{name}" for name in REPORT_TABLES] + self.sample_figures()

    def benchmark_inputs(self, wildcards=None) -> list[str]:
        """The benchmark table runs after every other job of the DAG has written its benchmark file."""
        return self.report_files() + self.export_records()

    def summary_inputs(self, wildcards=None) -> dict[str, Any]:
        """What the summary merges beside the stats files: the evaluation and the export records."""
        return {"evaluation": f"{self.results}/evaluate/metrics.json", "exports": self.export_records()}
