# lidarlift: LiDAR segmentation labels from 2D foundation-model masks, superpixels, 3D structure and sparse clicks.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/dataset.smk"


rule all:
    input:
        summary_inputs(),
    default_target: True
