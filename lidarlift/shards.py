"""Shard names known when the workflow is parsed (before any job runs).

A shard is one scene (nuScenes) or one sequence (SemanticKITTI). For a synthetic world the names
follow from the generator's config through :func:`synthetic_scenes`, the one list both the planner
(:func:`list_shards`) and the generator (:mod:`lidarlift.synth`) use; for an existing dataset they
are read from its index files.
"""
from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

#: Official v1.0-mini scenes in the order a synthetic world takes them. The first N >= 2 contain both
#: splits, and N >= 3 the whole mini_val split: the devkit's evaluators (get_samples_in_eval_set) look
#: up *every* scene of the evaluated split, so LidarSegEval(..., "mini_val") needs scene-0103 and
#: scene-0916 to exist.
MINI_SCENE_ORDER: tuple[str, ...] = (
    "scene-0061", "scene-0103", "scene-0916", "scene-0553", "scene-0655", "scene-0757",
    "scene-0796", "scene-1077", "scene-1094", "scene-1100",
)
MINI_VAL = frozenset({"scene-0103", "scene-0916"})


def synthetic_scenes(version: str, n: int) -> list[tuple[str, str]]:
    """[(scene name, split)] of an n-scene synthetic world of ``version`` (official names, so the
    devkit's splits apply; both splits for n >= 2). v1.0-trainval: every 6th scene, starting with the
    2nd, is a val scene, the others are train scenes, both in the devkit's order."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
        raise ValueError(f"config key synth.scenes must be a positive integer, got {n!r}")
    if version == "v1.0-mini":
        if n > len(MINI_SCENE_ORDER):
            raise ValueError(f"config key synth.scenes: v1.0-mini has {len(MINI_SCENE_ORDER)} scenes, asked for {n}; "
                             "use dataset.version v1.0-trainval")
        return [(s, "mini_val" if s in MINI_VAL else "mini_train") for s in MINI_SCENE_ORDER[:n]]
    if version != "v1.0-trainval":
        raise ValueError(f"config key dataset.version: a synthetic world is v1.0-mini or v1.0-trainval, got {version!r}")
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes(verbose=False)
    train, val = list(splits["train"]), list(splits["val"])
    if n > len(train) + len(val):
        raise ValueError(f"config key synth.scenes: v1.0-trainval has {len(train) + len(val)} scenes, asked for {n}")
    out, ti, vi = [], 0, 0
    for i in range(int(n)):
        if (i % 6 == 1 and vi < len(val)) or ti >= len(train):
            out.append((val[vi], "val"))
            vi += 1
        else:
            out.append((train[ti], "train"))
            ti += 1
    return out


def synthetic_scene_names(n: int, version: str = "v1.0-mini") -> list[str]:
    """Scene names of an n-scene synthetic world (:func:`synthetic_scenes` without the splits)."""
    return [name for name, _ in synthetic_scenes(version, n)]


def list_shards(config: dict[str, Any]) -> list[str]:
    ds = config["dataset"]
    scenes = list(ds.get("scenes") or [])
    if ds["kind"] == "synthetic":
        if ds["format"] == "semantickitti":
            from lidarlift.datasets.semantickitti import synthetic_sequence_names

            names = synthetic_sequence_names(config["synth"]["scenes"])
        else:
            names = synthetic_scene_names(config["synth"]["scenes"], ds["version"])
    elif ds["format"] == "nuscenes":
        scene_json = Path(ds["dataroot"]) / ds["version"] / "scene.json"
        if not scene_json.exists():
            raise FileNotFoundError(f"config key dataset.dataroot: {scene_json} does not exist; is {ds['dataroot']} a nuScenes dataset of version {ds['version']}?")
        names = sorted(s["name"] for s in json.loads(scene_json.read_text()))
    else:
        from lidarlift.datasets.semantickitti import existing_sequence_names

        names = existing_sequence_names(ds["dataroot"])
    if scenes:
        unknown = sorted(set(scenes) - set(names))
        if unknown:
            raise ValueError(f"config key dataset.scenes names scenes not in the dataset: {unknown}")
        names = [n for n in names if n in set(scenes)]
    return names


def shard_split(config: dict[str, Any], shard: str) -> str:
    """'train' | 'val' | 'test' of a shard, known when the workflow is parsed (no manifest needed):
    nuScenes: the devkit's scene splits of ``dataset.version`` (mini_train / mini_val for the mini
    version); SemanticKITTI: the official sequence split. Shards in no split are 'test'."""
    ds = config["dataset"]
    if ds.get("format", "nuscenes") == "semantickitti":
        from lidarlift.datasets.semantickitti import SPLITS

        return SPLITS.get(shard, "test")
    from lidarlift.datasets.nuscenes import scene_splits

    return scene_splits(ds.get("version", "v1.0-mini")).get(shard, "test")


def shards_of_splits(config: dict[str, Any], shards: list[str], splits: list[str]) -> list[str]:
    """The shards of ``shards`` in one of ``splits``, in shard order."""
    return [s for s in shards if shard_split(config, s) in splits]


def eval_shards(config: dict[str, Any], shards: list[str]) -> list[str]:
    """The shards networks are scored on: the val split, or every shard when the run has no val shard."""
    return shards_of_splits(config, shards, ["val"]) or list(shards)
