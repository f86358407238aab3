# Temporal propagation (lidarlift.temporal, when temporal.enabled): the keyframes' pseudo-labels of one EM
# round carried to the intermediate sweeps of a train shard (rule train reads them, see TEMPORAL in
# rules/train.smk), and the final round's network trained on the keyframes alone beside it (the
# comparison of summary pseudolabels.temporal: miou_with vs miou_without).


# Labels, confidences and sources of every intermediate sweep of one shard from one round's pseudo-labels.
rule temporal:
    input:
        manifest=manifest_path(),
        pseudolabels=f"{RESULTS}/pseudolabels/r{{round}}/{{shard}}.zarr",
        presegment=f"{RESULTS}/presegment/{{shard}}.zarr",
    output:
        store=directory(f"{RESULTS}/temporal/r{{round}}/{{shard}}.zarr"),
        stats=f"{RESULTS}/temporal/r{{round}}/{{shard}}.stats.json",
    log:
        f"{RESULTS}/logs/temporal/r{{round}}/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/temporal/r{{round}}/{{shard}}.tsv"
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=3000,
    params:
        temporal=stage_params("temporal"),
    script:
        "../workflow/scripts/temporal.py"


# The same round's network trained on the keyframe pseudo-labels alone: as many steps (temporal.compare: steps)
# or the same epochs as rule train, no sweeps.
rule train_keyframes:
    input:
        pseudolabels=expand(
            f"{RESULTS}/pseudolabels/r{{{{round}}}}/{{shard}}.zarr",
            shard=TRAIN_LAYOUT.train_shards,
        ),
        manifest=manifest_path(),
    output:
        model=f"{RESULTS}/train/r{{round}}/keyframes/model.pt",
        metrics=f"{RESULTS}/train/r{{round}}/keyframes/metrics.json",
    log:
        f"{RESULTS}/logs/train/r{{round}}_keyframes.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/r{{round}}_keyframes.tsv"
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
        temporal=stage_params("temporal"),
    script:
        "../workflow/scripts/train.py"


# Predict one evaluation shard with the keyframe-only network.
rule predict_keyframes:
    input:
        model=f"{RESULTS}/train/r{{round}}/keyframes/model.pt",
        manifest=manifest_path(),
    output:
        store=directory(f"{RESULTS}/predict/r{{round}}/keyframes/{{shard}}.zarr"),
        stats=f"{RESULTS}/predict/r{{round}}/keyframes/{{shard}}.stats.json",
    log:
        f"{RESULTS}/logs/predict/r{{round}}/keyframes/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/r{{round}}/keyframes/{{shard}}.tsv"
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


STATS_INPUTS["temporal"] = TEMPORAL.stats_files()
