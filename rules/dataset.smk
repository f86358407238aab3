# The dataset: the synthetic world (when dataset.kind is synthetic) and its manifest.


# Generate the synthetic nuScenes-format world that the default DAG runs on.
rule synth:
    output:
        done=f"{config['dataset']['dataroot']}/.lidarlift_world_done",
        stats=f"{RESULTS}/synth/stats.json",
    log:
        f"{RESULTS}/logs/synth.log",
    benchmark:
        f"{RESULTS}/benchmarks/synth.tsv"
    conda:
        "../envs/lidarlift.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        synth=stage_params("synth"),
        dataset=world_params(),
    script:
        "../workflow/scripts/synth.py"


# Read the dataset through its adapter into the manifest of keyframes, split into shards.
rule manifest:
    input:
        world_inputs(),
    output:
        manifest=manifest_path(),
        metrics=f"{RESULTS}/manifest.metrics.json",
    log:
        f"{RESULTS}/logs/manifest.log",
    benchmark:
        f"{RESULTS}/benchmarks/manifest.tsv"
    conda:
        "../envs/lidarlift.yaml"
    resources:
        mem_mb=2000,
    params:
        dataset=stage_params("dataset"),
        labels=stage_params("labels"),
    script:
        "../workflow/scripts/manifest.py"


STATS_INPUTS["dataset"] = [f"{RESULTS}/manifest.metrics.json"] + (
    [f"{RESULTS}/synth/stats.json"] if config["dataset"]["kind"] == "synthetic" else []
)
