# Snakemake adapter: associate one shard's keyframe points with every camera (lidarlift.associate.run_shard).
from lidarlift.associate import run_shard
from lidarlift.workflow import job_logging

with job_logging(snakemake.log[0], snakemake.threads):
    params = dict(snakemake.params.associate, bad_sample_policy=snakemake.params.bad_sample_policy)
    run_shard(snakemake.input.manifest, snakemake.wildcards.shard, snakemake.output.store,
              snakemake.output.stats, params)
