# Snakemake adapter: generate the synthetic world (lidarlift.synth.generate), in the configured layout.
from pathlib import Path

from lidarlift.synth import generate
from lidarlift.synth.cli import layout_params
from lidarlift.synth.kitti_writer import write_semantickitti
from lidarlift.datasets.nuscenes import build_manifest
from lidarlift.workflow import job_logging, write_json

with job_logging(snakemake.log[0], snakemake.threads):
    ds = snakemake.params.dataset
    if ds["format"] == "semantickitti":
        # the same world, written in nuScenes layout first, then converted
        nus_root = str(Path(ds["dataroot"]).with_name(Path(ds["dataroot"]).name + "_nuscenes"))
        # the layout's own LiDAR (sensor: auto): SemanticKITTI's HDL-64E
        stats = generate(nus_root, version="v1.0-mini", **layout_params(snakemake.params.synth, "semantickitti"))
        manifest = build_manifest({"dataroot": nus_root, "version": "v1.0-mini"})
        stats["semantickitti"] = write_semantickitti(manifest, ds["dataroot"])
    else:
        stats = generate(ds["dataroot"], version=ds["version"], **snakemake.params.synth)
    write_json(snakemake.output.stats, stats)
    Path(snakemake.output.done).write_text("done\n")
