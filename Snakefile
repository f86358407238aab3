# lidarlift: LiDAR segmentation labels from 2D foundation-model masks, superpixels, 3D structure and sparse clicks.
from snakemake.utils import min_version

from lidarlift.config import validate_config

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


# Fills defaults, parses --config strings, stops with "config key <path>: <problem>" on a bad value.
validate_config(config, f"{workflow.basedir}/config/schema.yaml")


include: "rules/common.smk"
include: "rules/dataset.smk"
include: "rules/associate.smk"
include: "rules/superpixels.smk"
include: "rules/presegment.smk"
include: "rules/masks.smk"
include: "rules/pseudolabels.smk"
include: "rules/evaluate.smk"
include: "rules/train.smk"
include: "rules/temporal.smk"


# Trivial jobs run in the main Snakemake process, never as cluster submissions.
localrules:
    all,
    summary,
    report_index,


rule all:
    default_target: True
    input:
        f"{RESULTS}/summary.json",
        f"{EVAL.report_dir}/index.json",
