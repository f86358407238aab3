# Snakemake adapter: merge the shards' evaluation counts, cross-check with the devkit (lidarlift.evaluate.merge).
from pathlib import Path

from lidarlift.evaluate.merge import merge
from lidarlift.workflow import job_logging, read_json, write_json

with job_logging(snakemake.log[0], snakemake.threads):
    Path(snakemake.output.devkit).mkdir(parents=True, exist_ok=True)
    metrics = merge(snakemake.input.manifest, [read_json(p) for p in snakemake.input.shards],
                    list(snakemake.params.eval_shards), dict(snakemake.params.settings),
                    final_round=int(snakemake.params.final_round), network_stores=dict(snakemake.params.devkit_stores),
                    devkit_dir=snakemake.output.devkit, confusion_path=snakemake.output.confusion)
    write_json(snakemake.output.metrics, metrics)
