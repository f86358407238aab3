"""Project metrics agree with the nuScenes devkit's own evaluators (LidarSegEval and
NuScenesPanopticEval, run on exports in their submission layout) on random predictions over the
synthetic world; a disagreement or an incomplete eval set is a clear error."""
from __future__ import annotations

import numpy as np
import pytest

from lidarlift.classes import NUSCENES16
from lidarlift.evaluate import devkit as D
from lidarlift.evaluate.instances import cluster_instances
from lidarlift.evaluate.merge import network_scores
from lidarlift.evaluate.metrics import PanopticAccumulator, confusion_matrix
from lidarlift.evaluate.run import devkit_check, keyframe_xyz
from lidarlift.evaluate.truth import segment_key
from lidarlift.groundtruth import point_truth

MINI_VAL = ("scene-0103", "scene-0916")


@pytest.fixture(scope="module")
def world(request, tmp_path_factory):
    """The synth engineer's ``tiny_world`` when tests/conftest.py provides it, else a small mini world."""
    try:
        return request.getfixturevalue("tiny_world")
    except pytest.FixtureLookupError:
        from lidarlift.synth import generate

        root = tmp_path_factory.mktemp("devkit_world")
        generate(root, seed=11, scenes=6, samples_per_scene=2, image_width=96, image_height=54, beams=16,
                 azimuth_steps=540, sweeps_per_keyframe=2, sweeps_before_first=1)
        return root


@pytest.fixture(scope="module")
def manifest(world):
    from lidarlift.datasets import build_manifest

    return build_manifest({"dataroot": str(world), "version": "v1.0-mini", "format": "nuscenes", "label_space": "nuscenes16"})


@pytest.fixture(scope="module")
def nusc(manifest):
    from lidarlift.datasets.nuscenes import load_nusc

    return load_nusc(manifest.dataroot, manifest.version)


@pytest.fixture
def eval_split(manifest, monkeypatch):
    """The world's val scenes as the devkit's mini_val (the real split when the world has both scenes)."""
    scenes = {s.shard for s in manifest.samples}
    val = sorted({s.shard for s in manifest.samples if s.split == "val"})
    if not set(MINI_VAL) <= scenes:
        import nuscenes.eval.lidarseg.utils as lu
        import nuscenes.utils.splits as us

        real = us.create_splits_scenes
        val = val or sorted(scenes)[:1]

        def patched(verbose=False):
            out = real(verbose=verbose)
            out["mini_val"] = list(val)
            return out

        monkeypatch.setattr(us, "create_splits_scenes", patched)
        monkeypatch.setattr(lu, "create_splits_scenes", patched)
    return [s for s in manifest.samples if s.shard in set(val)]


def _random_predictions(manifest, samples, seed):
    """Per keyframe: (sample, sem (N,) uint8 1..16, inst (N,) int32): half the points keep their true
    class, the rest are uniformly random (ignore-class points get a class too); instances by clustering."""
    rng = np.random.default_rng(seed)
    out = []
    for s in samples:
        t = point_truth(manifest, s)
        sem = np.where((rng.random(t.label.size) < 0.5) & (t.label > 0), t.label, rng.integers(1, 17, t.label.size))
        inst = cluster_instances(keyframe_xyz(manifest, s), sem, NUSCENES16)
        out.append((s, sem.astype(np.uint8), inst))
    return out


def _project(manifest, arrays):
    """The project's scores of the predictions: the counts the evaluation keeps, then its figures."""
    cm = np.zeros((17, 17), np.int64)
    acc = PanopticAccumulator(NUSCENES16, 15)
    for s, sem, inst in arrays:
        t = point_truth(manifest, s)
        cm += confusion_matrix(t.label.astype(np.int64), sem.astype(np.int64), 16)
        acc.add(sem.astype(np.int64), inst, t.label.astype(np.int64), segment_key(t.fine, t.instance))
    return network_scores({"confusion": cm.tolist(), "panoptic": acc.counts(), "samples": len(arrays)}, NUSCENES16, 15)


def test_project_and_devkit_agree_on_random_predictions(manifest, nusc, eval_split, tmp_path):
    arrays = _random_predictions(manifest, eval_split, seed=0)
    project = _project(manifest, arrays)
    got = devkit_check(manifest, arrays, project, tmp_path / "devkit", 15, 1e-6, panoptic=True, nusc=nusc)
    assert got["devkit_status"] == "agrees" and got["max_abs_diff"] <= 1e-6
    dk = got["devkit"]
    # the numbers are informative, not degenerate
    assert 0.05 < dk["miou"] < 0.95 and 0 < dk["pq"] < 1 and dk["pq_things"] is not None
    assert dk["miou"] == pytest.approx(project["miou"], abs=1e-6)
    for c in NUSCENES16.classes:
        a, b = project["iou_per_class"][c], dk["iou_per_class"][c]
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-6), c
    # the submission layout the devkit read
    tokens = [s.lidar.token for s, _, _ in arrays]
    assert sorted(p.name for p in (tmp_path / "devkit" / "lidarseg" / "mini_val").iterdir()) == sorted(f"{t}_lidarseg.bin" for t in tokens)
    assert (tmp_path / "devkit" / "mini_val" / "submission.json").exists()
    assert (tmp_path / "devkit" / "panoptic_eval" / "segmentation-result.json").exists()


def test_disagreement_fails_naming_the_number(manifest, nusc, eval_split, tmp_path):
    arrays = _random_predictions(manifest, eval_split, seed=1)
    project = _project(manifest, arrays)
    project["pq_things"] += 1e-3
    with pytest.raises(D.DevkitMismatch, match="pq_things"):
        devkit_check(manifest, arrays, project, tmp_path / "devkit", 15, 1e-6, panoptic=True, nusc=nusc)


def test_incomplete_eval_set_is_a_clear_error(manifest, nusc, eval_split, tmp_path):
    arrays = [(s, np.ones(1, np.uint8), None) for s in eval_split[1:]]
    with pytest.raises(D.DevkitUnavailable, match="evaluate.devkit_check"):
        devkit_check(manifest, arrays, {}, tmp_path / "devkit", 15, 1e-6, panoptic=True, nusc=nusc)


def test_eval_set_names():
    assert D.eval_set_name("v1.0-mini", "val") == "mini_val"
    assert D.eval_set_name("v1.0-mini", "train") == "mini_train"
    assert D.eval_set_name("v1.0-trainval", "val") == "val"
