# Snakemake adapter: index of the report's files, each checked (lidarlift.evaluate.report.report_index).
from lidarlift.evaluate.report import report_index
from lidarlift.workflow import job_logging, write_json

with job_logging(snakemake.log[0], snakemake.threads):
    write_json(snakemake.output.index, report_index(list(snakemake.input.files) + list(snakemake.input.benchmarks)))
