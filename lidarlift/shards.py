"""Shard names known when the workflow is parsed (before any job runs).

A shard is one scene (nuScenes) or one sequence (SemanticKITTI). For a synthetic world the names
follow from the generator's config; for an existing dataset they are read from its index files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Official scene names the synthetic world uses, in the order it fills them (both mini splits early).
MINI_SCENES: tuple[str, ...] = (
    "scene-0061", "scene-0103", "scene-0553", "scene-0655", "scene-0757",
    "scene-0916", "scene-0796", "scene-1077", "scene-1094", "scene-1100",
)


def synthetic_scene_names(n: int, version: str = "v1.0-mini") -> list[str]:
    """Scene names of an n-scene synthetic world (official names, so the devkit's splits apply)."""
    if n <= 0:
        raise ValueError(f"config key synth.scenes must be positive, got {n}")
    if version.endswith("mini"):
        if n > len(MINI_SCENES):
            raise ValueError(f"config key synth.scenes: v1.0-mini has {len(MINI_SCENES)} scenes, asked for {n}; use dataset.version v1.0-trainval")
        return list(MINI_SCENES[:n])
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    train, val = splits["train"], splits["val"]
    # interleave so a small world has both splits: 1 val scene per 5
    names, ti, vi = [], 0, 0
    while len(names) < n:
        if len(names) % 5 == 1 and vi < len(val):
            names.append(val[vi]); vi += 1
        else:
            names.append(train[ti]); ti += 1
    return names


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
