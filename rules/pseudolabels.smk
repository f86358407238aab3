# Pseudo-labels (the E-step): clicks and their propagation, or annotation-free lifting of 2D maps, then
# network-assisted rounds; one store per shard and EM round.
PSEUDOLABELS = stage_params("pseudolabels")
PL_MODE = PSEUDOLABELS.get("mode", "clicks")
PL_CLICKS = PSEUDOLABELS.get("clicks", {})


def pseudolabel_clicks_inputs(wildcards):
    """The manifest; IUPC's protocol also reads the association (field of view) and the pre-segments;
    a user's clicks file is an input too, so editing it re-runs the rule."""
    inputs = {"manifest": manifest_path()}
    if PL_CLICKS.get("protocol", "budget") == "iupc":
        inputs["associate"] = f"{RESULTS}/associate/{wildcards.shard}.zarr"
        inputs["presegment"] = f"{RESULTS}/presegment/{wildcards.shard}.zarr"
    if PL_CLICKS.get("protocol", "budget") == "file":
        inputs["user_clicks"] = PL_CLICKS["file"]
    return inputs


def pseudolabel_inputs(wildcards):
    """Round 0: association, pre-segments and (clicks mode) superpixels, masks and the shard's clicks, or
    (annotation-free mode) masks; round r >= 1: the round-0 store and the predict store of round r - 1.
    """
    shard, r = wildcards.shard, int(wildcards.round)
    inputs = {
        "manifest": manifest_path(),
        "associate": f"{RESULTS}/associate/{shard}.zarr",
        "presegment": f"{RESULTS}/presegment/{shard}.zarr",
    }
    if r > 0:
        inputs["round0"] = f"{RESULTS}/pseudolabels/r0/{shard}.zarr"
        inputs["predict"] = f"{RESULTS}/predict/r{r - 1}/{shard}.zarr"
    elif PL_MODE == "clicks":
        inputs["clicks"] = f"{RESULTS}/pseudolabels/clicks/{shard}.tsv"
        if PSEUDOLABELS.get("propagation", "ours") == "ours":
            inputs["superpixels"] = f"{RESULTS}/superpixels/{shard}.zarr"
            inputs["masks"] = f"{RESULTS}/masks/{shard}.zarr"
    else:
        inputs["masks"] = f"{RESULTS}/masks/{shard}.zarr"
    return inputs


# The simulated annotator's clicks of one shard (or a user's, checked), shared by every EM round.
rule pseudolabel_clicks:
    input:
        unpack(pseudolabel_clicks_inputs),
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
        clicks=PL_CLICKS,
    script:
        "../workflow/scripts/pseudolabels.py"


# Pseudo-labels of one shard for one EM round: label, confidence, instance, candidate set, source, round.
rule pseudolabels:
    input:
        unpack(pseudolabel_inputs),
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
        pseudolabels=PSEUDOLABELS,
    script:
        "../workflow/scripts/pseudolabels.py"


SUMMARY_INPUTS["pseudolabels"] = expand(
    f"{RESULTS}/pseudolabels/r{{round}}/{{shard}}.metrics.json",
    round=ROUNDS,
    shard=SHARDS,
)
