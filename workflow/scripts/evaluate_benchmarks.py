# Snakemake adapter: the benchmark table from every rule's benchmark file (lidarlift.evaluate.report.benchmark_report).
from lidarlift.evaluate.report import benchmark_report
from lidarlift.workflow import job_logging

with job_logging(snakemake.log[0], snakemake.threads):
    benchmark_report(snakemake.params.benchmarks, snakemake.output.table, snakemake.output.figure)
