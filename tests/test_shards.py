"""Shard names: the shards the workflow plans at parse time are exactly the scenes the generator writes.

Truths checked: for every synth.scenes of v1.0-mini (1..10) and for a v1.0-trainval world, the planned
shards (lidarlift.shards.list_shards, dataset.kind synthetic) are the scene names in the generated
world's scene.json, the planner reading that world as an existing dataset finds the same names, and
each scene's split is the devkit's split of that official scene name.
"""
from __future__ import annotations

import json

import pytest

from lidarlift.shards import list_shards, synthetic_scenes
from lidarlift.synth import generate

#: the smallest world that has every table and file: one keyframe per scene, 2 beams, 16x16 images
NANO = {"samples_per_scene": 1, "image_width": 16, "image_height": 16, "beams": 2, "azimuth_steps": 16,
        "sweeps_per_keyframe": 1, "sweeps_before_first": 0, "workers": 1}


def _config(root, version: str, n: int, kind: str = "synthetic") -> dict:
    return {"dataset": {"kind": kind, "format": "nuscenes", "dataroot": str(root), "version": version, "scenes": []},
            "synth": {"scenes": n}}


def test_planned_shards_are_the_generated_scenes(tmp_path):
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes(verbose=False)
    root = tmp_path / "world"  # regenerated in place for each case
    for version, n in [("v1.0-mini", n) for n in range(1, 11)] + [("v1.0-trainval", 8)]:
        planned = list_shards(_config(root, version, n))
        generate(root, seed=0, scenes=n, version=version, **NANO)
        written = [s["name"] for s in json.loads((root / version / "scene.json").read_text())]
        assert len(planned) == n and sorted(planned) == sorted(written), (version, n, planned, written)
        assert list_shards(_config(root, version, n, kind="existing")) == sorted(planned), (version, n)
        for name, split in synthetic_scenes(version, n):
            assert name in splits[split], (version, n, name, split)
        if version == "v1.0-mini" and n >= 3:  # the devkit's evaluators need the whole mini_val split
            assert set(splits["mini_val"]) <= set(planned)
        if version == "v1.0-trainval":
            assert {split for _, split in synthetic_scenes(version, n)} == {"train", "val"}


def test_generator_and_planner_share_one_list():
    from lidarlift.synth import cli

    assert cli.scene_names is synthetic_scenes


@pytest.mark.parametrize("version, n, key", [("v1.0-mini", 11, "synth.scenes"), ("v1.0-mini", 0, "synth.scenes"),
                                             ("v1.0-trainval", 851, "synth.scenes"), ("v2.0", 3, "dataset.version")])
def test_impossible_worlds_name_the_config_key(version, n, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        synthetic_scenes(version, n)
