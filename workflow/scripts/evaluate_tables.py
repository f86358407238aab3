# Snakemake adapter: the report's tables and summary figures from results/summary.json (lidarlift.evaluate.report).
from pathlib import Path

from lidarlift.classes import label_space
from lidarlift.evaluate import report as R
from lidarlift.workflow import job_logging, read_json

with job_logging(snakemake.log[0], snakemake.threads):
    out = snakemake.output
    summary = read_json(snakemake.input.summary)
    metrics = summary["evaluation"]
    space = label_space(metrics["label_space"])
    R.headline_report(metrics, out.headline, out.headline_png)
    R.label_quality_report(summary, out.label_quality)
    R.stage_quality_report(summary, out.stage_quality, out.stage_quality_png)
    R.confusion_report(snakemake.input.confusion, space, out.confusion, f"network_r{metrics['final_round']}",
                       f"Network, round {metrics['final_round']}, {'/'.join(metrics['eval_split'])} split (row-normalised, %)")
    runs = {("full supervision" if Path(p).parent.name == "full" else f"round {Path(p).parent.name[1:]}"): p
            for p in snakemake.input.curves}
    R.training_report(runs, out.training)
