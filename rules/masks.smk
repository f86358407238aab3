# 2D masks per camera image (SAM / SAM 2 prompted by the LiDAR pre-segments, or weight-free).
from lidarlift.masks import needs_gpu

# GPUs per masks job: 1 for SAM / SAM 2 (the job leases a free device itself, lidarlift.gpu), 0 for
# the weight-free backend or masks.device cpu.
MASKS_GPUS = int(needs_gpu(config.get("masks")))


# Masks of every camera image of one shard, prompted by its pre-segments through the association.
rule masks:
    input:
        manifest=manifest_path(),
        presegment=f"{RESULTS}/presegment/{{shard}}.zarr",
        associate=f"{RESULTS}/associate/{{shard}}.zarr",
    output:
        store=directory(f"{RESULTS}/masks/{{shard}}.zarr"),
        stats=f"{RESULTS}/masks/{{shard}}.stats.json",
    log:
        f"{RESULTS}/logs/masks/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/masks/{{shard}}.tsv"
    conda:
        "../envs/gpu.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        gpu=MASKS_GPUS,
    params:
        masks=stage_params("masks"),
    script:
        "../workflow/scripts/masks.py"


STATS_INPUTS["masks"] = per_shard(f"{RESULTS}/masks/{{shard}}.stats.json")
