# Snakemake adapter: the report's tables and summary figures (lidarlift.evaluate.report).
from pathlib import Path

from lidarlift.classes import label_space
from lidarlift.evaluate import report as R
from lidarlift.evaluate.plan import STAGE_PREFIX
from lidarlift.summary import build_summary
from lidarlift.workflow import job_logging, read_json

with job_logging(snakemake.log[0], snakemake.threads):
    out = snakemake.output
    metrics = read_json(snakemake.input.metrics)
    space = label_space(metrics["label_space"])
    stages = build_summary({k[len(STAGE_PREFIX):]: list(snakemake.input[k]) for k in snakemake.input.keys()
                            if k.startswith(STAGE_PREFIX)})
    R.headline_report(metrics, out.headline, out.headline_png)
    R.label_quality_report(metrics, stages, out.label_quality)
    R.stage_quality_report(stages, out.stage_quality, out.stage_quality_png)
    R.confusion_report(snakemake.input.confusion, space, out.confusion, f"network_r{metrics['final_round']}",
                       f"Network, round {metrics['final_round']}, {'/'.join(metrics['eval_split'])} split (row-normalised, %)")
    runs = {("full supervision" if Path(p).parent.name == "full" else f"round {Path(p).parent.name[1:]}"): p
            for p in snakemake.input.curves}
    R.training_report(runs, out.training)
