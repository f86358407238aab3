# Snakemake adapter: results/summary.json from the jobs' stats and the evaluation (lidarlift.summary; JSON only).
from lidarlift.summary import build_summary
from lidarlift.workflow import job_logging, write_json

with job_logging(snakemake.log[0]):
    inp = snakemake.input
    stats = {key: list(inp[key]) for key in inp.keys() if key not in ("evaluation", "exports")}
    write_json(snakemake.output.summary, build_summary(stats, inp.evaluation, list(inp.exports)))
