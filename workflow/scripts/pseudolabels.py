# Snakemake adapter of rules pseudolabel_clicks (lidarlift.pseudolabels.stage.shard_clicks) and
# pseudolabels (lidarlift.pseudolabels.stage.run_shard).
from lidarlift.pseudolabels.stage import run_shard, shard_clicks
from lidarlift.workflow import job_logging

with job_logging(snakemake.log[0], snakemake.threads):
    inp = snakemake.input
    if snakemake.rule == "pseudolabel_clicks":
        shard_clicks(inp.manifest, snakemake.wildcards.shard, snakemake.output.clicks, snakemake.params.clicks,
                     associate=inp.get("associate"), presegment=inp.get("presegment"))
    else:
        run_shard(inp.manifest, snakemake.wildcards.shard, int(snakemake.wildcards.round), snakemake.output.store,
                  snakemake.output.metrics, snakemake.params.pseudolabels,
                  associate=inp.associate, presegment=inp.presegment, superpixels=inp.get("superpixels"),
                  masks=inp.get("masks"), clicks=inp.get("clicks"), round0=inp.get("round0"),
                  predict=inp.get("predict"))
