# Snakemake adapter: 2D masks of one shard's camera images (lidarlift.masks.stage.run_masks).
from lidarlift.masks.stage import run_masks
from lidarlift.workflow import job_logging

with job_logging(snakemake.log[0], snakemake.threads):
    run_masks(snakemake.input.manifest, snakemake.wildcards.shard, snakemake.input.presegment,
              snakemake.input.associate, snakemake.output.store, snakemake.output.metrics,
              snakemake.params.masks, label_space=snakemake.params.labels["space"], threads=snakemake.threads)
