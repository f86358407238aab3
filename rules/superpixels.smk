# Superpixels of every camera image (OpenCV SEEDS with IUPC's settings, or SLIC).


# Superpixel label maps of every camera image of one shard, at the working resolution.
rule superpixels:
    input:
        manifest=manifest_path(),
    output:
        store=directory(f"{RESULTS}/superpixels/{{shard}}.zarr"),
        stats=f"{RESULTS}/superpixels/{{shard}}.stats.json",
    log:
        f"{RESULTS}/logs/superpixels/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/superpixels/{{shard}}.tsv"
    group:
        SHARD_GROUP
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        superpixels=stage_params("superpixels"),
        bad_sample_policy=config["dataset"]["bad_sample_policy"],
    script:
        "../workflow/scripts/superpixels.py"


STATS_INPUTS["superpixels"] = per_shard(f"{RESULTS}/superpixels/{{shard}}.stats.json")
