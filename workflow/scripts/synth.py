# Snakemake adapter: generate the synthetic world (lidarlift.synth.generate).
from pathlib import Path

from lidarlift.synth import generate
from lidarlift.workflow import job_logging, write_json

with job_logging(snakemake.log[0], snakemake.threads):
    ds = snakemake.params.dataset
    stats = generate(ds["dataroot"], version=ds["version"], **snakemake.params.synth)
    write_json(snakemake.output.stats, stats)
    Path(snakemake.output.done).write_text("done\n")
