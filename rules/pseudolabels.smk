# Pseudo-labels (the E-step): clicks and their propagation, or annotation-free lifting of 2D maps, then
# network-assisted rounds; one store per shard and EM round (inputs: lidarlift.pseudolabels.plan).
from lidarlift.pseudolabels.plan import PseudoLabelPlan

PSEUDOLABEL_PLAN = PseudoLabelPlan(config, RESULTS)


# The simulated annotator's clicks of one shard (budget, IUPC or active protocol; or a user's, checked),
# shared by every EM round.
rule pseudolabel_clicks:
    input:
        unpack(PSEUDOLABEL_PLAN.clicks_inputs),
    output:
        clicks=f"{RESULTS}/pseudolabels/clicks/{{shard}}.tsv",
    log:
        f"{RESULTS}/logs/pseudolabels/clicks/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pseudolabels/clicks/{{shard}}.tsv"
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        pseudolabels=PSEUDOLABEL_PLAN.clicks_params(),
    script:
        "../workflow/scripts/pseudolabels.py"


# Pseudo-labels of one shard for one EM round: label, confidence, instance, candidate set, source, round.
rule pseudolabels:
    input:
        unpack(PSEUDOLABEL_PLAN.inputs),
    output:
        store=directory(f"{RESULTS}/pseudolabels/r{{round}}/{{shard}}.zarr"),
        stats=f"{RESULTS}/pseudolabels/r{{round}}/{{shard}}.stats.json",
    log:
        f"{RESULTS}/logs/pseudolabels/r{{round}}/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pseudolabels/r{{round}}/{{shard}}.tsv"
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        pseudolabels=PSEUDOLABEL_PLAN.params,
    script:
        "../workflow/scripts/pseudolabels.py"


# The round-0 baseline of one shard from the same inputs: IUPC's rule set, or PointSAM-faithful lifting.
rule pseudolabels_baseline:
    input:
        unpack(PSEUDOLABEL_PLAN.baseline_inputs),
    output:
        store=directory(f"{RESULTS}/baselines/pseudolabels/{{shard}}.zarr"),
        stats=f"{RESULTS}/baselines/pseudolabels/{{shard}}.stats.json",
    log:
        f"{RESULTS}/logs/baselines/pseudolabels/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baselines/pseudolabels/{{shard}}.tsv"
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        pseudolabels=PSEUDOLABEL_PLAN.params,
    script:
        "../workflow/scripts/pseudolabels.py"


# Beside active clicks: the uniform budget protocol's clicks at the same share and round-0 labels from them.
rule pseudolabels_uniform:
    input:
        unpack(PSEUDOLABEL_PLAN.uniform_inputs),
    output:
        clicks=f"{RESULTS}/baselines/uniform_clicks/{{shard}}.tsv",
        store=directory(f"{RESULTS}/baselines/uniform_clicks/{{shard}}.zarr"),
        stats=f"{RESULTS}/baselines/uniform_clicks/{{shard}}.stats.json",
    log:
        f"{RESULTS}/logs/baselines/uniform_clicks/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baselines/uniform_clicks/{{shard}}.tsv"
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        pseudolabels=PSEUDOLABEL_PLAN.uniform_params(),
    script:
        "../workflow/scripts/pseudolabels.py"


STATS_INPUTS["pseudolabels"] = expand(
    f"{RESULTS}/pseudolabels/r{{round}}/{{shard}}.stats.json",
    round=ROUNDS,
    shard=SHARDS,
)
