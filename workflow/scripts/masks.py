# Snakemake adapter: 2D masks of one shard's camera images (lidarlift.masks.stage.run_masks).
from lidarlift.gpu import job_gpus
from lidarlift.masks import needs_gpu
from lidarlift.masks.stage import run_masks
from lidarlift.workflow import job_logging, runtime_settings

with job_logging(snakemake.log[0], snakemake.threads):
    params = {**snakemake.params.masks, **runtime_settings(snakemake, "masks")}
    # lease first (lidarlift.gpu): the job's GPUs, at most one and only for a network backend
    with job_gpus(snakemake.resources.get("gpu", 0), use=int(needs_gpu(params))):
        run_masks(snakemake.input.manifest, snakemake.wildcards.shard, snakemake.input.presegment,
                  snakemake.input.associate, snakemake.output.store, snakemake.output.stats,
                  params, threads=snakemake.threads)
