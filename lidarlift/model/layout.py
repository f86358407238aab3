"""What rules/train.smk needs when the workflow is parsed, without importing torch: the train and val
shards of the run, and the rule's default GPUs and threads (a profile's set-resources / set-threads
replace them; a job's device count is its Snakemake resource ``gpu``, :func:`lidarlift.gpu.job_gpus`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from lidarlift.shards import shard_split


@dataclass(frozen=True)
class TrainLayout:
    """The train and val shards of this run, the GPUs a training job asks for by default
    (``train.gpus``) and a predict job (at most 1), and a training job's default threads: 1 on the CPU
    (spconv's CPU kernels run single-threaded, spconv#679, so an EM round and the baseline train side
    by side on two cores), else 2 + data loader workers."""

    train_shards: list[str]
    val_shards: list[str]
    gpus: int
    predict_gpus: int
    threads: int


def train_layout(config: dict[str, Any], shards: Sequence[str]) -> TrainLayout:
    from lidarlift.config import section

    train = section("train", config.get("train"))
    gpus = int(train["gpus"])
    return TrainLayout(
        train_shards=[s for s in shards if shard_split(config, s) == "train"],
        val_shards=[s for s in shards if shard_split(config, s) == "val"],
        gpus=gpus,
        predict_gpus=min(1, gpus),
        threads=1 if gpus == 0 else 2 + int(train["workers"]),
    )
