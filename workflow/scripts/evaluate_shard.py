# Snakemake adapter: score every production store of one shard against its ground truth (lidarlift.evaluate.shard).
from lidarlift.evaluate.shard import evaluate_shard
from lidarlift.workflow import job_logging, write_json

with job_logging(snakemake.log[0], snakemake.threads):
    counts = evaluate_shard(snakemake.input.manifest, snakemake.wildcards.shard, dict(snakemake.params.stores),
                            dict(snakemake.params.settings))
    write_json(snakemake.output.counts, counts)
