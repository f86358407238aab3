"""Shared fixtures. ``tiny_world``: a small synthetic nuScenes-format world (session-scoped).

Use it as a dataroot: ``NuScenes("v1.0-mini", str(tiny_world))``. It has 3 scenes (scene-0061 in
mini_train; scene-0103 and scene-0916, the whole mini_val split, so the devkit's evaluators run on it)
x 2 keyframes, 560x315 images, 32 beams, one sweep before the first keyframe and 9 between keyframes,
every challenge class present. Extra ground truth lives in
``tiny_world / "lidarlift_gt" / "v1.0-mini"`` (panoptic2d/, visibility/, world.json).
Do not modify its files; copy them if a test needs to corrupt something.
"""
from __future__ import annotations

from pathlib import Path

import pytest

TINY_WORLD_PARAMS = dict(seed=7, scenes=3, samples_per_scene=2, image_width=560, image_height=315,
                         beams=32, sweeps_before_first=1, version="v1.0-mini")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """Dataroot (Path) of a small synthetic world generated once per test session."""
    from lidarlift.synth import generate

    root = tmp_path_factory.mktemp("tiny_world")
    generate(root, **TINY_WORLD_PARAMS)
    return root
