# Helpers shared by all rules/*.smk files: shard lists, path builders, per-stage params.
from lidarlift.config import evaluation_settings, production_section
from lidarlift.shards import list_shards

RESULTS = config["results"]
SHARDS = list_shards(config)
ROUNDS = list(range(config.get("em", {}).get("rounds", 1)))


wildcard_constraints:
    shard=r"[A-Za-z0-9_\-]+",
    round=r"\d+",


# The per-shard CPU stages before the masks (association, superpixels, pre-segments and their baseline)
# form one group: under a cluster executor a shard's chain is one submission (profiles/slurm packs
# several shards per job with group-components); local runs ignore groups.
SHARD_GROUP = "shard_cpu"


# Each rules/*.smk file registers the stats files its production jobs write (what they did, how long it
# took; no ground truth), merged into results/summary.json: STATS_INPUTS[<summary key>] = [paths]
STATS_INPUTS = {}


def manifest_path():
    return f"{RESULTS}/manifest.json"


def world_inputs():
    """The synthetic world's completion marker when the dataset is generated, else nothing."""
    if config["dataset"]["kind"] == "synthetic":
        return [f"{config['dataset']['dataroot']}/.lidarlift_world_done"]
    return []


def per_shard(pattern, **kw):
    return expand(pattern, shard=SHARDS, results=RESULTS, **kw)


def stats_inputs(wildcards=None):
    return {key: list(paths) for key, paths in STATS_INPUTS.items()}


def world_params():
    """The dataset keys that shape the generated world (not sweeps_prev etc., which only the manifest reads)."""
    ds = config["dataset"]
    return {k: ds[k] for k in ("dataroot", "version", "format")}


def stage_params(section):
    """A stage's config section as ``params:`` (so Snakemake's params trigger sees changes), without its
    evaluation-only and runtime-only keys (schema x-scope): re-scoring or moving a job re-runs nothing.
    """
    return production_section(config, section)


def eval_params():
    """What the evaluation rules take as ``params:``: the evaluate section and every evaluation-only key."""
    return evaluation_settings(config)
