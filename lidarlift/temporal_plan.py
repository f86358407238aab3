"""What the workflow needs of temporal propagation when it is parsed (rules/temporal.smk, the train rule,
the evaluation plan), without importing the stage: which shards get temporal labels, their stores per EM
round, and the keyframe-only network beside the final round.

With ``temporal.enabled`` every train-split shard gets a ``temporal`` store per EM round
(``results/temporal/r<k>/<shard>.zarr``, from that round's pseudo-labels), and rule ``train`` of round k
trains on them beside the keyframes. The comparison without them is rule ``train_keyframes``: the final
round's network trained by the same rule and config on the same keyframe pseudo-labels, without the
temporal sweeps (``results/train/r<k>/keyframes/``), predicted on the evaluation shards by rule
``predict_keyframes`` (``results/predict/r<k>/keyframes/<shard>.zarr``); the evaluation scores both on
the val split (summary ``pseudolabels.temporal.miou_with`` / ``miou_without``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lidarlift.shards import eval_shards, shards_of_splits


@dataclass
class TemporalPlan:
    """``config`` (validated), the run's ``shards`` and EM ``rounds``, and the ``results`` folder."""

    config: dict[str, Any]
    shards: list[str]
    rounds: list[int]
    results: str
    enabled: bool = field(init=False)
    train_shards: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.enabled = bool((self.config.get("temporal") or {}).get("enabled", False))
        self.train_shards = shards_of_splits(self.config, self.shards, ["train"]) if self.enabled else []

    @property
    def final_round(self) -> int:
        return self.rounds[-1]

    def store(self, shard: str, round: int | str) -> str:
        return f"{self.results}/temporal/r{round}/{shard}.zarr"

    def train_stores(self, wildcards) -> list[str]:
        """Rule train's temporal input: the round's temporal store of every train shard (none when off)."""
        return [self.store(s, wildcards.round) for s in self.train_shards]

    def eval_stores(self, shard: str) -> dict[str, str]:
        """{round: temporal store} of ``shard`` for the evaluation (empty when off or not a train shard)."""
        return {str(k): self.store(shard, k) for k in self.rounds} if shard in self.train_shards else {}

    def keyframes_predict(self, shard: str) -> str | None:
        """The keyframe-only network's predict store of ``shard`` (evaluation shards; None when off)."""
        if not self.enabled or shard not in eval_shards(self.config, self.shards):
            return None
        return f"{self.results}/predict/r{self.final_round}/keyframes/{shard}.zarr"

    def stats_files(self) -> list[str]:
        """The temporal jobs' stats files (summary key ``temporal``)."""
        return [f"{self.results}/temporal/r{k}/{s}.stats.json" for k in self.rounds for s in self.train_shards]
