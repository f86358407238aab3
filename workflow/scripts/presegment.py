# Snakemake adapter: pre-segment one shard's keyframes (lidarlift.presegment.run_shard); rule
# presegment_baseline runs the same with the IUPC method.
from lidarlift.presegment import run_shard
from lidarlift.workflow import job_logging

with job_logging(snakemake.log[0], snakemake.threads):
    run_shard(snakemake.input.manifest, snakemake.wildcards.shard, snakemake.output.store, snakemake.output.stats,
              dict(snakemake.params.presegment), bad_sample_policy=snakemake.params.bad_sample_policy,
              threads=snakemake.threads, method=snakemake.params.method)
