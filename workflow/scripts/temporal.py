# Snakemake adapter: carry one EM round's keyframe pseudo-labels to the intermediate sweeps of a shard (lidarlift.temporal).
from lidarlift.temporal import run_shard
from lidarlift.workflow import job_logging

with job_logging(snakemake.log[0], snakemake.threads):
    inp, out = snakemake.input, snakemake.output
    run_shard(inp.manifest, snakemake.wildcards.shard, int(snakemake.wildcards.round), inp.pseudolabels,
              inp.presegment, out.store, out.stats, dict(snakemake.params.temporal))
