# The M-step: the segmentation network per EM round (on the train split's pseudo-labels) and the fully
# supervised baseline (on ground truth), and their predictions for every shard.
from lidarlift.model.layout import train_layout
from lidarlift.temporal_plan import TemporalPlan

# Train / val shards of this run (the dataset's official splits), GPUs and threads per job.
TRAIN_LAYOUT = train_layout(config, SHARDS)
# The train shards' temporal labels per round (rules/temporal.smk; none unless temporal.enabled).
TEMPORAL = TemporalPlan(config, SHARDS, ROUNDS, RESULTS)


# Train the network on the pseudo-labels of one EM round (train split); rank 0 writes the model.
rule train:
    input:
        pseudolabels=expand(
            f"{RESULTS}/pseudolabels/r{{{{round}}}}/{{shard}}.zarr",
            shard=TRAIN_LAYOUT.train_shards,
        ),
        temporal=TEMPORAL.train_stores,
        manifest=manifest_path(),
    output:
        model=f"{RESULTS}/train/r{{round}}/model.pt",
        metrics=f"{RESULTS}/train/r{{round}}/metrics.json",
    log:
        f"{RESULTS}/logs/train/r{{round}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/r{{round}}.tsv"
    conda:
        "../envs/gpu.yaml"
    threads: TRAIN_LAYOUT.threads
    resources:
        mem_mb=6000,
        gpu=TRAIN_LAYOUT.gpus,
    params:
        train=stage_params("train"),
        labels=stage_params("labels"),
        shards=TRAIN_LAYOUT.train_shards,
    script:
        "../workflow/scripts/train.py"


# Train the same network with the same schedule on ground-truth labels: the fully supervised baseline.
rule train_full:
    input:
        manifest=manifest_path(),
    output:
        model=f"{RESULTS}/train/full/model.pt",
        metrics=f"{RESULTS}/train/full/metrics.json",
    log:
        f"{RESULTS}/logs/train/full.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/full.tsv"
    conda:
        "../envs/gpu.yaml"
    threads: TRAIN_LAYOUT.threads
    resources:
        mem_mb=6000,
        gpu=TRAIN_LAYOUT.gpus,
    params:
        train=stage_params("train"),
        labels=stage_params("labels"),
        shards=TRAIN_LAYOUT.train_shards,
    script:
        "../workflow/scripts/train.py"


# Predict logits, features and classes for every keyframe point of one shard with a round's network.
rule predict:
    input:
        model=f"{RESULTS}/train/r{{round}}/model.pt",
        manifest=manifest_path(),
    output:
        store=directory(f"{RESULTS}/predict/r{{round}}/{{shard}}.zarr"),
        stats=f"{RESULTS}/predict/r{{round}}/{{shard}}.stats.json",
    log:
        f"{RESULTS}/logs/predict/r{{round}}/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/r{{round}}/{{shard}}.tsv"
    conda:
        "../envs/gpu.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        gpu=TRAIN_LAYOUT.predict_gpus,
    params:
        train=stage_params("train"),
        labels=stage_params("labels"),
    script:
        "../workflow/scripts/predict.py"


# Predict one shard with the fully supervised baseline.
rule predict_full:
    input:
        model=f"{RESULTS}/train/full/model.pt",
        manifest=manifest_path(),
    output:
        store=directory(f"{RESULTS}/predict/full/{{shard}}.zarr"),
        stats=f"{RESULTS}/predict/full/{{shard}}.stats.json",
    log:
        f"{RESULTS}/logs/predict/full/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/full/{{shard}}.tsv"
    conda:
        "../envs/gpu.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        gpu=TRAIN_LAYOUT.predict_gpus,
    params:
        train=stage_params("train"),
        labels=stage_params("labels"),
    script:
        "../workflow/scripts/predict.py"


# training.*: what each train job reports about itself (seconds, device, losses, throughput) and the
# predict jobs' seconds; the networks' quality comes from the evaluation.
STATS_INPUTS["training"] = (
    expand(f"{RESULTS}/train/r{{round}}/metrics.json", round=ROUNDS)
    + expand(
        f"{RESULTS}/predict/r{{round}}/{{shard}}.stats.json",
        round=ROUNDS,
        shard=SHARDS,
    )
    # the fully supervised network only where the evaluation scores it (evaluate.full_supervision)
    + (
        [f"{RESULTS}/train/full/metrics.json"]
        + expand(
            f"{RESULTS}/predict/full/{{shard}}.stats.json",
            shard=TRAIN_LAYOUT.val_shards,
        )
        if EVAL.full_supervision
        else []
    )
)
