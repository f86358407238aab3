# Pre-segmentation of the keyframes: ground, then segments of the non-ground points (IUPC baseline alongside).


# Ground flags, segments and ground cells of every keyframe point of one shard.
rule presegment:
    input:
        manifest=manifest_path(),
    output:
        store=directory(f"{RESULTS}/presegment/{{shard}}.zarr"),
        metrics=f"{RESULTS}/presegment/{{shard}}.metrics.json",
    log:
        f"{RESULTS}/logs/presegment/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/presegment/{{shard}}.tsv"
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        presegment=stage_params("presegment"),
        bad_sample_policy=config["dataset"]["bad_sample_policy"],
    script:
        "../workflow/scripts/presegment.py"


SUMMARY_INPUTS["presegment"] = per_shard(f"{RESULTS}/presegment/{{shard}}.metrics.json")
