# Snakemake adapter: build the manifest of keyframes (lidarlift.datasets.build_manifest).
from lidarlift.datasets import build_manifest
from lidarlift.dataset_stats import manifest_stats
from lidarlift.workflow import job_logging, write_json

with job_logging(snakemake.log[0]):
    cfg = dict(snakemake.params.dataset, label_space=snakemake.params.labels["space"])
    manifest = build_manifest(cfg)
    write_json(snakemake.output.metrics, manifest_stats(manifest))
    manifest.to_json(snakemake.output.manifest)
