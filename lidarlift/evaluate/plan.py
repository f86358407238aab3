"""Which files the evaluation rules read and write, decided when the workflow is parsed.

``rules/evaluate.smk`` builds one :class:`EvaluationPlan` from the config and uses its methods as
input functions and params, so the rule file holds no logic (``snakemake --lint``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lidarlift.evaluate.run import eval_shards, shards_of_splits

EXPORT_SOURCES = ("network", "pseudolabels", "full")
#: report_tables names another stage's metrics files ``stage_<summary key>`` (so no summary key can
#: collide with its own inputs).
STAGE_PREFIX = "stage_"
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

    def __post_init__(self) -> None:
        self.section = dict(self.config.get("evaluate") or {})
        if not self.rounds:
            raise ValueError("config key em.rounds: the evaluation needs at least one EM round")
        self.eval_shards = eval_shards(self.config, self.shards)
        self.pseudo_shards = shards_of_splits(self.config, self.shards, self.section.get("pseudolabel_splits", ["train"]))
        self.final_round = self.rounds[-1]
        self.export_sources = list(self.section.get("export", {}).get("sources", ["network", "pseudolabels"]))
        unknown = [s for s in self.export_sources if s not in EXPORT_SOURCES]
        if unknown:
            raise ValueError(f"config key evaluate.export.sources: unknown sources {unknown}; choose from {list(EXPORT_SOURCES)}")
        self.figure_samples = self._figure_samples()
        self.report_dir = f"{self.results}/report"

    def _figure_samples(self) -> list[tuple[str, int]]:
        fig = self.section.get("figures", {})
        shards = list(fig.get("shards") or [])
        if not shards:
            firsts = [shards_of_splits(self.config, self.shards, [sp])[:1] for sp in ("train", "val")]
            shards = [s for f in firsts for s in f] or self.shards[:1]
        unknown = sorted(set(shards) - set(self.shards))
        if unknown:
            raise ValueError(f"config key evaluate.figures.shards names shards not in this run: {unknown}")
        return [(s, int(fig.get("index", 2))) for s in shards]

    @property
    def full_supervision(self) -> bool:
        return bool(self.section.get("full_supervision", True))

    # --- evaluate ---------------------------------------------------------------------------

    def stores(self) -> dict[str, Any]:
        """Store paths by role (the evaluate rule's params): ``network`` {round: {shard: path}} on the
        evaluation shards, ``pseudolabels`` {round: {shard: path}}, ``full`` {shard: path}."""
        r = self.results
        return {
            "network": {str(k): {s: f"{r}/predict/r{k}/{s}.zarr" for s in self.eval_shards} for k in self.rounds},
            "pseudolabels": {str(k): {s: f"{r}/pseudolabels/r{k}/{s}.zarr" for s in self.pseudo_shards} for k in self.rounds},
            "full": {s: f"{r}/predict/full/{s}.zarr" for s in self.eval_shards} if self.full_supervision else {},
        }

    def evaluate_inputs(self, wildcards=None) -> dict[str, Any]:
        st = self.stores()
        return {
            "manifest": self.manifest,
            "network": [p for d in st["network"].values() for p in d.values()],
            "pseudolabels": [p for d in st["pseudolabels"].values() for p in d.values()],
            "full": list(st["full"].values()),
        }

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

    def tables_inputs(self, summary_inputs: dict[str, list[str]]):
        """Input function of report_tables: the evaluation, the training curves (``curves``) and every
        other stage's metrics files as ``stage_<summary key>`` (read from ``summary_inputs`` when the DAG
        is built, after all rule files)."""

        def inputs(wildcards=None) -> dict[str, Any]:
            stages = {f"{STAGE_PREFIX}{key}": list(paths) for key, paths in summary_inputs.items() if key != "evaluation"}
            return {"metrics": f"{self.results}/evaluate/metrics.json", "confusion": f"{self.results}/evaluate/confusion.npz",
                    "curves": self.training_metrics(), **stages}

        return inputs

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

    def summary_inputs(self) -> list[str]:
        """What the summary's ``evaluation`` key merges."""
        return [f"{self.results}/evaluate/metrics.json", f"{self.report_dir}/index.json"] + self.export_records()
