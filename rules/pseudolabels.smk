# Pseudo-labels (the E-step): clicks and their propagation, or annotation-free lifting of 2D maps, then
# network-assisted rounds; one store per shard and EM round (inputs: lidarlift.pseudolabels.plan).
from lidarlift.pseudolabels.plan import PseudoLabelPlan

PSEUDOLABEL_PLAN = PseudoLabelPlan(config, RESULTS)


# The simulated annotator's clicks of one shard (or a user's, checked), shared by every EM round.
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
        clicks=stage_params("pseudolabels").get("clicks", {}),
    script:
        "../workflow/scripts/pseudolabels.py"


# Pseudo-labels of one shard for one EM round: label, confidence, instance, candidate set, source, round.
rule pseudolabels:
    input:
        unpack(PSEUDOLABEL_PLAN.inputs),
    output:
        store=directory(f"{RESULTS}/pseudolabels/r{{round}}/{{shard}}.zarr"),
        metrics=f"{RESULTS}/pseudolabels/r{{round}}/{{shard}}.metrics.json",
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


SUMMARY_INPUTS["pseudolabels"] = expand(
    f"{RESULTS}/pseudolabels/r{{round}}/{{shard}}.metrics.json",
    round=ROUNDS,
    shard=SHARDS,
)
