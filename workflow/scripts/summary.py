# Snakemake adapter: merge every stage's metrics into results/summary.json (lidarlift.summary).
from lidarlift.summary import build_summary
from lidarlift.workflow import job_logging, write_json

with job_logging(snakemake.log[0]):
    metrics = {key: list(snakemake.input[key]) for key in snakemake.input.keys() if key != "manifest"}
    write_json(snakemake.output.summary, build_summary(metrics, {"labels": snakemake.params.labels}))
