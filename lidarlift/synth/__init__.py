"""Synthetic nuScenes-format driving worlds with exact ground truth (the project's test bed).

``generate(out_dir, **params)`` writes a dataset the nuScenes devkit loads; see
:mod:`lidarlift.synth.cli` for the parameters and :mod:`lidarlift.synth.nuscenes_writer` for the layout.
"""
from lidarlift.synth.cli import generate, main, scene_names
from lidarlift.synth.sensors import CAMERA_CHANNELS
from lidarlift.synth.world import THING_FINE_NAMES, WorldParams

__all__ = ["generate", "main", "scene_names", "CAMERA_CHANNELS", "THING_FINE_NAMES", "WorldParams"]
