"""SemanticKITTI input: the synthetic world written in the SemanticKITTI layout reads back through its adapter."""
from __future__ import annotations

import numpy as np
import pytest

from lidarlift.associate import pixel_index
from lidarlift.datasets import build_manifest
from lidarlift.datasets.readers import DatasetError
from lidarlift.datasets.semantickitti import RAW_TO_TRAIN, TRAIN_TO_CHALLENGE, read_calib, synthetic_sequence_names
from lidarlift.geometry import lidar_to_cam, project, transform_points
from lidarlift.groundtruth import image_truth, point_truth
from lidarlift.manifest import as_matrix
from lidarlift.synth.kitti_writer import FINE_TO_RAW, write_semantickitti


@pytest.fixture(scope="module")
def kitti_world(tiny_world, tmp_path_factory):
    nus = build_manifest({"dataroot": str(tiny_world), "version": "v1.0-mini", "format": "nuscenes"})
    out = tmp_path_factory.mktemp("kitti") / "world"
    stats = write_semantickitti(nus, out)
    return nus, out, stats


def test_layout_and_labels_match_the_nuscenes_world(kitti_world):
    nus, out, stats = kitti_world
    assert stats["sequences"] == len(nus.shards) and stats["frames"] == len(nus.samples)
    kitti = build_manifest({"dataroot": str(out), "format": "semantickitti", "label_space": "semantickitti19"})
    seq_of = dict(zip(nus.shards, synthetic_sequence_names(len(nus.shards))))
    assert sorted(kitti.shards) == sorted(seq_of.values())
    assert {s.split for s in kitti.samples} == {"train", "val"}
    pairs = [(ks, ns) for shard in nus.shards for ks, ns in zip(kitti.shard_samples(seq_of[shard]), nus.shard_samples(shard))]
    assert len(pairs) == len(nus.samples)
    for ks, ns in pairs:
        truth_k, truth_n = point_truth(kitti, ks), point_truth(nus, ns)
        # the same points, and the labels follow the documented fine -> raw -> train mapping
        assert len(truth_k.label) == len(truth_n.label)
        assert np.array_equal(truth_k.label, RAW_TO_TRAIN[FINE_TO_RAW[truth_n.fine]])
        assert np.array_equal(truth_k.instance > 0, (truth_n.instance > 0) & (truth_k.label > 0))
    kitti16 = build_manifest({"dataroot": str(out), "format": "semantickitti", "label_space": "nuscenes16"})
    t16 = point_truth(kitti16, kitti16.samples[0])
    assert set(np.unique(t16.label)) <= set(range(17))
    assert np.array_equal(t16.label, TRAIN_TO_CHALLENGE[point_truth(kitti, kitti.samples[0]).label])


def test_projection_lands_on_the_same_instance(kitti_world):
    """KITTI's transforms (Tr, P2, poses) put visible points on pixels of their own class and instance."""
    _, out, _ = kitti_world
    kitti = build_manifest({"dataroot": str(out), "format": "semantickitti", "label_space": "semantickitti19"})
    hits = total = 0
    for s in kitti.samples:
        xyz = np.fromfile(kitti.resolve(s.lidar.path), dtype=np.float32).reshape(-1, 4)[:, :3]
        cam = s.cameras[0]
        m = lidar_to_cam(as_matrix(s.lidar.lidar_to_ego), as_matrix(s.lidar.ego_to_global),
                         as_matrix(cam.ego_to_global), as_matrix(cam.cam_to_ego))
        uv, depth = project(transform_points(m, xyz.astype(np.float64)), as_matrix(cam.intrinsic))
        vis = np.load(kitti.resolve(s.gt_visibility))[:, 0]
        px = pixel_index(uv[vis], cam.width, cam.height)
        label2d, inst2d = image_truth(kitti, s, 0)
        truth = point_truth(kitti, s)
        lab = truth.label[vis]
        ok = (label2d[px[:, 1], px[:, 0]] == lab) & (inst2d[px[:, 1], px[:, 0]] == truth.instance[vis])
        keep = lab > 0
        hits += int(ok[keep].sum())
        total += int(keep.sum())
    assert total > 1000
    assert hits / total >= 0.95  # the camera fires a few ms after the LiDAR; KITTI's layout cannot say so


def test_bad_calibration_is_named(kitti_world, tmp_path):
    _, out, _ = kitti_world
    calib = tmp_path / "calib.txt"
    calib.write_text("P2: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    with pytest.raises(DatasetError, match="key Tr missing"):
        read_calib(calib)
    with pytest.raises(DatasetError, match="no 'sequences/' folder"):
        build_manifest({"dataroot": str(tmp_path), "format": "semantickitti"})


def test_the_layout_uses_the_hdl64e_and_its_ringless_scans_measure_their_beams(kitti_world):
    """A synthetic world in the SemanticKITTI layout is scanned by the 64-beam preset unless a sensor is
    named; KITTI .bin files have no ring column, so the stages measure the beam spacing from the
    elevation histogram: here the tiny world's 32 beams, 1.33 deg apart."""
    from lidarlift.datasets.readers import read_lidar_with_ring
    from lidarlift.scan import read_sweep
    from lidarlift.synth.cli import layout_params

    assert layout_params({"seed": 1}, "semantickitti")["sensor"] == "kitti64"
    assert layout_params({"sensor": "auto"}, "nuscenes")["sensor"] == "nuscenes32"
    assert layout_params({"sensor": "os128"}, "semantickitti")["sensor"] == "os128"
    _, out, _ = kitti_world
    kitti = build_manifest({"dataroot": str(out), "format": "semantickitti", "label_space": "semantickitti19"})
    s = kitti.samples[0]
    pts, ring = read_lidar_with_ring(kitti.resolve(s.lidar.path), s.lidar.fmt, s.token)
    assert ring is None
    _, res = read_sweep(kitti.resolve(s.lidar.path), s.lidar.fmt, s.token)
    assert res.source == "histogram" and abs(np.degrees(res.median_vertical_spacing) - 41.34 / 31) < 0.03
