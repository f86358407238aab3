# Helpers shared by all rules/*.smk files: shard lists, path builders, per-stage params.
import json
from pathlib import Path

from lidarlift.shards import list_shards

RESULTS = config["results"]
SHARDS = list_shards(config)
ROUNDS = list(range(config.get("em", {}).get("rounds", 1)))


wildcard_constraints:
    shard=r"[A-Za-z0-9_\-]+",
    round=r"\d+",


# Each rules/*.smk file registers the per-stage metrics files that the summary merges:
# SUMMARY_INPUTS[<summary key>] = [paths]
SUMMARY_INPUTS = {}


def manifest_path():
    return f"{RESULTS}/manifest.json"


def world_inputs():
    """The synthetic world's completion marker when the dataset is generated, else nothing."""
    if config["dataset"]["kind"] == "synthetic":
        return [f"{config['dataset']['dataroot']}/.lidarlift_world_done"]
    return []


def per_shard(pattern, **kw):
    return expand(pattern, shard=SHARDS, results=RESULTS, **kw)


def summary_inputs():
    return [f"{RESULTS}/summary.json"]


def all_metrics(wildcards):
    return {key: list(paths) for key, paths in SUMMARY_INPUTS.items()}


def world_params():
    """The dataset keys that shape the generated world (not sweeps_prev etc., which only the manifest reads)."""
    ds = config["dataset"]
    return {k: ds[k] for k in ("dataroot", "version", "format")}


def stage_params(section):
    """The config section of a stage, passed as ``params:`` so Snakemake's params trigger sees changes."""
    return config.get(section, {})
