# Point-pixel association: every keyframe point with every camera (pixel, depth, in-image, visible).


# Associate the keyframe points of one shard with every camera, with the depth-buffer occlusion test.
rule associate:
    input:
        manifest=manifest_path(),
    output:
        store=directory(f"{RESULTS}/associate/{{shard}}.zarr"),
        stats=f"{RESULTS}/associate/{{shard}}.stats.json",
    log:
        f"{RESULTS}/logs/associate/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/associate/{{shard}}.tsv"
    group:
        SHARD_GROUP
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=3000,
    params:
        associate=stage_params("associate"),
        bad_sample_policy=config["dataset"]["bad_sample_policy"],
    script:
        "../workflow/scripts/associate.py"


STATS_INPUTS["association"] = per_shard(f"{RESULTS}/associate/{{shard}}.stats.json")
