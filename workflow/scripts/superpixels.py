# Snakemake adapter: superpixels of one shard's camera images (lidarlift.superpixels.run_shard).
from lidarlift.superpixels import run_shard
from lidarlift.workflow import job_logging

with job_logging(snakemake.log[0], snakemake.threads):
    run_shard(snakemake.input.manifest, snakemake.wildcards.shard, snakemake.output.store, snakemake.output.stats,
              dict(snakemake.params.superpixels), bad_sample_policy=snakemake.params.bad_sample_policy,
              threads=snakemake.threads)
