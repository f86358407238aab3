# Pre-segmentation of the keyframes: ground, then segments of the non-ground points; the IUPC baseline
# as its own rule (presegment.compare_baseline), scored beside it by the evaluation.


# Ground flags, segments and ground cells of every keyframe point of one shard.
rule presegment:
    input:
        manifest=manifest_path(),
    output:
        store=directory(f"{RESULTS}/presegment/{{shard}}.zarr"),
        stats=f"{RESULTS}/presegment/{{shard}}.stats.json",
    log:
        f"{RESULTS}/logs/presegment/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/presegment/{{shard}}.tsv"
    group:
        SHARD_GROUP
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        presegment=stage_params("presegment"),
        bad_sample_policy=config["dataset"]["bad_sample_policy"],
        method=None,
    script:
        "../workflow/scripts/presegment.py"


# The IUPC baseline's pre-segments of one shard (RANSAC ground per polar cell + HDBSCAN), same sweeps.
rule presegment_baseline:
    input:
        manifest=manifest_path(),
    output:
        store=directory(f"{RESULTS}/baselines/presegment/{{shard}}.zarr"),
        stats=f"{RESULTS}/baselines/presegment/{{shard}}.stats.json",
    log:
        f"{RESULTS}/logs/baselines/presegment/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baselines/presegment/{{shard}}.tsv"
    group:
        SHARD_GROUP
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        presegment=stage_params("presegment"),
        bad_sample_policy=config["dataset"]["bad_sample_policy"],
        method="iupc",
    script:
        "../workflow/scripts/presegment.py"


STATS_INPUTS["presegment"] = per_shard(f"{RESULTS}/presegment/{{shard}}.stats.json")
if config["presegment"]["compare_baseline"]:
    STATS_INPUTS["presegment_baseline"] = per_shard(
        f"{RESULTS}/baselines/presegment/{{shard}}.stats.json"
    )
