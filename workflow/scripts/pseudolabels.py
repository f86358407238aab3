# Snakemake adapter of rules pseudolabel_clicks (lidarlift.pseudolabels.annotator.shard_clicks), pseudolabels
# and pseudolabels_baseline (lidarlift.pseudolabels.stage.run_shard), and pseudolabels_uniform (both: the
# uniform budget protocol's clicks, then round 0 from them).
from lidarlift.workflow import job_logging

with job_logging(snakemake.log[0], snakemake.threads):
    inp, out = snakemake.input, snakemake.output
    shard = snakemake.wildcards.shard
    if snakemake.rule in ("pseudolabel_clicks", "pseudolabels_uniform"):
        from lidarlift.pseudolabels.annotator import shard_clicks

        cfg = snakemake.params.pseudolabels
        shard_clicks(inp.manifest, shard, out.clicks, cfg["clicks"], associate=inp.get("associate"),
                     presegment=inp.get("presegment"), superpixels=inp.get("superpixels"), masks=inp.get("masks"),
                     graph=cfg.get("ours"))
    if snakemake.rule != "pseudolabel_clicks":
        from lidarlift.pseudolabels.stage import run_shard

        round0 = snakemake.rule in ("pseudolabels_baseline", "pseudolabels_uniform")
        run_shard(inp.manifest, shard, 0 if round0 else int(snakemake.wildcards.round), out.store, out.stats,
                  snakemake.params.pseudolabels, associate=inp.associate, presegment=inp.presegment,
                  superpixels=inp.get("superpixels"), masks=inp.get("masks"),
                  clicks=out.clicks if snakemake.rule == "pseudolabels_uniform" else inp.get("clicks"),
                  round0=inp.get("round0"), predict=inp.get("predict"), baseline=snakemake.rule == "pseudolabels_baseline")
