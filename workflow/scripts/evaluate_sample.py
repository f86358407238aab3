# Snakemake adapter: camera overlays and bird's-eye views of one keyframe (lidarlift.evaluate.report.sample_figures).
from lidarlift.evaluate.report import sample_figures
from lidarlift.workflow import job_logging

with job_logging(snakemake.log[0], snakemake.threads):
    fig = snakemake.params.figures
    r = snakemake.params.final_round
    sample_figures(snakemake.input.manifest, snakemake.wildcards.shard, int(snakemake.wildcards.index),
                   pseudolabels=snakemake.input.get("pseudolabels"), prediction=snakemake.input.prediction,
                   overlay_path=snakemake.output.overlay, bev_path=snakemake.output.bev,
                   cameras=list(fig.get("cameras") or []), bev_extent=float(fig.get("bev_extent", 40.0)),
                   pseudo_title=f"pseudo-labels r{r}", prediction_title=f"network r{r}")
