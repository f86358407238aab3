"""Pre-segmentation: exact ground on a plane with boxes, separate boxes as separate segments, the metrics'
definitions, bad sweeps, and the stage (both methods side by side) on the synthetic world."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lidarlift import artifacts as A
from lidarlift.datasets import DatasetError
from lidarlift.geometry import make_transform, quaternion_to_matrix
from lidarlift.ground import cell_plane_ground, iupc_ground, sweep_to_keyframe
from lidarlift.manifest import LidarFrame, Manifest, SampleRecord
from lidarlift.presegment import (
    Presegmentation, PresegmentParams, hdbscan_labels, presegment, presegment_counts, range_components, run_shard,
    summarize, voxelize,
)

SENSOR_HEIGHT = 1.84
EYE = np.eye(4).tolist()


def box_surface(center, size, bottom, rng, density=10.0):
    """Points on the four sides and the top of an axis-aligned box whose bottom is ``bottom`` m over the ground."""
    cx, cy = center
    sx, sy, sz = size
    z0 = -SENSOR_HEIGHT + bottom
    out = []
    for (ax, fixed) in ((0, cx - sx / 2), (0, cx + sx / 2), (1, cy - sy / 2), (1, cy + sy / 2)):
        span = sy if ax == 0 else sx
        n = int(density * span * sz)
        t = rng.uniform(-span / 2, span / 2, n) + (cy if ax == 0 else cx)
        z = rng.uniform(z0, z0 + sz, n)
        out.append(np.column_stack([np.full(n, fixed), t, z]) if ax == 0 else np.column_stack([t, np.full(n, fixed), z]))
    n = int(density * sx * sy)
    out.append(np.column_stack([rng.uniform(cx - sx / 2, cx + sx / 2, n), rng.uniform(cy - sy / 2, cy + sy / 2, n),
                                np.full(n, z0 + sz)]))
    return np.concatenate(out)


def plane_with_boxes(seed=0, box_density=10.0):
    """A level ground plane sampled like a LiDAR (uniform in range 3..37 m and azimuth, so each of IUPC's
    polar cells holds more than its 100-point minimum) with two car-sized boxes standing 0.3 m over it, 12 m apart.

    Returns xyz (N, 3) float32 in a lidar frame 1.84 m over the ground, truth label (N,) (11 ground, 4
    car) and instance key (N,).
    """
    rng = np.random.default_rng(seed)
    n = 30000
    r, a = rng.uniform(3, 37, n), rng.uniform(-np.pi, np.pi, n)
    ground = np.column_stack([r * np.cos(a), r * np.sin(a), np.full(n, -SENSOR_HEIGHT)])
    boxes = [((10.0, 5.0), (4.0, 2.0, 1.5)), ((-8.0, -6.0), (4.5, 2.0, 1.6))]
    for (cx, cy), (sx, sy, _) in boxes:  # no ground returns under a box
        under = (np.abs(ground[:, 0] - cx) < sx / 2 + 0.1) & (np.abs(ground[:, 1] - cy) < sy / 2 + 0.1)
        ground = ground[~under]
    parts = [ground] + [box_surface(c, s, 0.3, rng, box_density) for c, s in boxes]
    label = np.concatenate([np.full(len(ground), 11)] + [np.full(len(p), 4) for p in parts[1:]])
    inst = np.concatenate([np.zeros(len(ground), np.int64)] + [np.full(len(p), 17001 + i) for i, p in enumerate(parts[1:])])
    return np.concatenate(parts).astype(np.float32), label, inst


@pytest.fixture(scope="module")
def scene():
    return plane_with_boxes()


@pytest.fixture(scope="module")
def dense_scene():
    """Boxes sampled at 40 points/m^2 (about 0.16 m apart, as a LiDAR sees a car at 10 m)."""
    return plane_with_boxes(box_density=40.0)


@pytest.mark.parametrize("method", ["fast", "iupc"])
def test_ground_flag_exact_on_plane_with_boxes(scene, method):
    xyz, label, inst = scene
    if method == "fast":
        ground, cell = cell_plane_ground(xyz, [])
    else:
        ground, cell = iupc_ground(xyz, [])
    assert np.array_equal(ground, label == 11)
    assert (cell[ground] >= 0).all() and (cell[~ground] == -1).all()


@pytest.mark.parametrize("cfg", [{"method": "fast"},
                                 {"method": "fast", "fast": {"cluster": "hdbscan"}},  # IUPC's clustering
                                 {"method": "fast", "fast": {"cluster": "voxel_hdbscan"}},
                                 {"method": "fast", "fast": {"range_components": {"leftover_below": 100000}}}])
def test_two_separated_boxes_are_two_segments(dense_scene, cfg):
    xyz, label, inst = dense_scene
    res = presegment(xyz, [], cfg)
    assert res.segment_id.dtype == np.int32 and (res.segment_id[res.ground] == -1).all()
    ids = [np.unique(res.segment_id[inst == k]) for k in (17001, 17002)]
    assert [len(i) for i in ids] == [1, 1] and ids[0][0] != ids[1][0] and min(ids[0][0], ids[1][0]) >= 0
    c = presegment_counts(res, label, inst)
    assert c["ground_tp"] == (label == 11).sum() and c["ground_fp"] == c["ground_fn"] == 0
    assert c["pure_points"] == c["segmented_points"] == (label == 4).sum()
    assert (c["instances"], c["instances_split"]) == (2, 0)


def test_range_components_grow_with_range():
    # two scan lines 1.0 m apart: split near the sensor (eps 0.3), joined at 30 m (0.04 x 30 m = 1.2 m)
    def lines(x):
        t = np.linspace(-1, 1, 21)
        return np.concatenate([np.column_stack([np.full(21, x), t, np.zeros(21)]),
                               np.column_stack([np.full(21, x), t, np.ones(21)])])
    p = PresegmentParams().fast.range_components
    near, far = range_components(lines(5.0), p), range_components(lines(30.0), p)
    assert len(np.unique(near)) == 2 and len(np.unique(far)) == 1 and (near >= 0).all() and (far >= 0).all()
    inverse, cent, counts = voxelize(lines(5.0), 0.15)
    assert counts.sum() == 42 and np.allclose(cent[inverse][:, 2], lines(5.0)[:, 2])
    assert (hdbscan_labels(np.zeros((3, 3)), PresegmentParams().iupc.hdbscan) == -1).all()


def test_metrics_definitions():
    # 4 ground points (one false), car A (10 points) split 6/4 over segments 0 and 1, car B (10) merged
    # into segment 1 with 2 wall points, one wall point noise
    label = np.array([11] * 3 + [15] + [4] * 10 + [4] * 10 + [15] * 3 + [0])
    inst = np.array([0] * 4 + [17001] * 10 + [17002] * 10 + [0] * 3 + [0])
    ground = np.zeros(len(label), bool)
    ground[:4] = True
    seg = np.full(len(label), -1, np.int32)
    seg[4:10], seg[10:14], seg[14:24], seg[24:26] = 0, 1, 1, 1
    res = Presegmentation(ground, seg, np.where(ground, 0, -1).astype(np.int32))
    c = presegment_counts(res, label, inst)
    assert (c["ground_tp"], c["ground_fp"], c["ground_fn"]) == (3, 1, 0)  # the label-0 point is ignored
    assert (c["nonground_points"], c["noise_points"], c["segmented_points"]) == (23, 1, 22)
    # segment 0: 6 of car A (pure); segment 1: 4 A + 10 B + 2 wall -> majority B (10)
    assert c["pure_points"] == 16 and c["segments"] == 2
    assert (c["instances"], c["instances_split"], c["instances_lost"]) == (2, 1, 0)
    s = summarize([{**c, "sweeps": 1, "seconds": 0.5, "sweeps_with_truth": 1, "method": "fast"}])
    assert s["ground_precision"] == 0.75 and s["segment_purity"] == 16 / 22 and s["split_instance_share"] == 0.5
    assert s["seconds_per_sweep"] == 0.5 and s["baseline"] is None
    # a split needs >= 2 segments with >= split_min_share of the instance: 1 stray point of 10 is not one at 0.2
    seg2 = seg.copy()
    seg2[4:14] = 0
    seg2[13] = 5
    res2 = Presegmentation(ground, seg2, res.ground_cell)
    assert presegment_counts(res2, label, inst, split_min_share=0.2)["instances_split"] == 0
    assert presegment_counts(res2, label, inst, split_min_share=0.1)["instances_split"] == 1


def test_sweep_to_keyframe_compensates_ego_motion():
    l2e = make_transform(quaternion_to_matrix([np.cos(0.3), 0, 0, np.sin(0.3)]), [0.9, 0.0, 1.84])
    e2g_key = make_transform(quaternion_to_matrix([np.cos(0.1), 0, 0, np.sin(0.1)]), [100.0, 50.0, 0.0])
    e2g_old = make_transform(np.eye(3), [98.0, 49.5, 0.0])
    world = np.array([[110.0, 52.0, 0.5], [90.0, 40.0, 1.0]])
    to_lidar = lambda e2g: np.linalg.inv(e2g @ l2e)  # noqa: E731
    seen_old = (world - 0) @ to_lidar(e2g_old)[:3, :3].T + to_lidar(e2g_old)[:3, 3]
    seen_key = world @ to_lidar(e2g_key)[:3, :3].T + to_lidar(e2g_key)[:3, 3]
    assert np.allclose(sweep_to_keyframe(seen_old, l2e, e2g_old, l2e, e2g_key), seen_key)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="presegment.fast.ground: unknown keys"):
        PresegmentParams.from_config({"fast": {"ground": {"height": 2}}})
    with pytest.raises(ValueError, match="presegment.method"):
        PresegmentParams.from_config({"method": "patchwork"})
    with pytest.raises(ValueError, match="NaN"):
        presegment(np.array([[0, 0, np.nan]]))


def _hand_manifest(tmp_path, scene, truncate=None) -> str:
    """Two keyframes (the plane-with-boxes cloud) with two earlier sweeps each, identity poses."""
    xyz = scene[0][::3]  # a third of the points keeps the baseline quick
    root = tmp_path / "data"
    root.mkdir()
    rows = np.column_stack([xyz, np.zeros((len(xyz), 2), np.float32)]).astype(np.float32)
    samples = []
    for s in range(2):
        frames = []
        for k in range(3):
            rel = f"lidar_{s}_{k}.pcd.bin"
            rows.tofile(root / rel)
            frames.append(LidarFrame(rel, 1000 * s - 50 * k, EYE, EYE, token=f"l{s}{k}"))
        samples.append(SampleRecord(f"tok{s}", "shard-a", "train", s, frames[0], [], prev_sweeps=frames[1:]))
    if truncate:
        data = (root / truncate).read_bytes()
        (root / truncate).write_bytes(data[:-6])
    path = tmp_path / "manifest.json"
    Manifest("nuscenes", str(root), "v1.0-mini", [], "nuscenes16", samples).to_json(path)
    return str(path)


def test_run_shard_both_methods(tmp_path, scene):
    man = _hand_manifest(tmp_path, scene)
    store, met = tmp_path / "pre.zarr", tmp_path / "pre.json"
    m = run_shard(man, "shard-a", str(store), str(met), {"iupc": {"sweeps": 2}})
    g = A.open_store(store, "presegment")
    n = len(scene[0][::3])
    assert A.read(g, "point_offsets").tolist() == [0, n, 2 * n]
    assert np.array_equal(A.read(g, "ground")[:n], scene[1][::3] == 11)
    assert g.attrs["method"] == "fast"
    saved = json.loads(met.read_text())
    assert saved["sweeps"] == 2 and saved["baseline"]["sweeps"] == 2 and saved["skipped"] == []
    s = summarize([m])
    assert s["ground_precision"] is None  # the hand-built manifest has no truth files
    assert s["seconds_per_sweep"] > 0 and s["baseline"]["seconds_per_sweep"] > 0


def test_truncated_sweeps_error_and_skip(tmp_path, scene):
    man = _hand_manifest(tmp_path, scene, truncate="lidar_1_0.pcd.bin")
    store = tmp_path / "pre.zarr"
    with pytest.raises(DatasetError, match=r"sample tok1: lidar file .*lidar_1_0\.pcd\.bin is truncated"):
        run_shard(man, "shard-a", str(store), str(tmp_path / "m.json"), {"compare_baseline": False})
    assert not store.exists()
    m = run_shard(man, "shard-a", str(store), str(tmp_path / "m.json"), {"compare_baseline": False},
                  bad_sample_policy="skip")
    assert [(s["sample"], s["file"].endswith("lidar_1_0.pcd.bin")) for s in m["skipped"]] == [("tok1", True)]
    off = A.read(A.open_store(store, "presegment"), "point_offsets")
    n = len(scene[0][::3])
    assert off.tolist() == [0, n, n]  # the skipped keyframe has no rows
    # a bad earlier sweep is left out of the ground fit and recorded; the keyframe is kept
    (tmp_path / "b").mkdir()
    man2 = _hand_manifest(tmp_path / "b", scene, truncate="lidar_0_2.pcd.bin")
    with pytest.raises(DatasetError, match="lidar_0_2"):
        run_shard(man2, "shard-a", str(store), str(tmp_path / "m.json"), {"iupc": {"sweeps": 2}})
    m2 = run_shard(man2, "shard-a", str(store), str(tmp_path / "m.json"), {"iupc": {"sweeps": 2}},
                   bad_sample_policy="skip")
    assert [s["sample"] for s in m2["skipped"]] == ["tok0"] and m2["sweeps"] == 2


def test_synthetic_world_presegment(tiny_world, tmp_path):
    from lidarlift.datasets import build_manifest

    manifest = build_manifest({"dataroot": str(tiny_world), "version": "v1.0-mini", "format": "nuscenes"})
    man = tmp_path / "manifest.json"
    manifest.to_json(man)
    shard = manifest.shards[0]
    m = run_shard(str(man), shard, str(tmp_path / "pre.zarr"), str(tmp_path / "pre.json"), {})
    s = summarize([m])
    fast, base = s, s["baseline"]
    assert fast["sweeps"] == base["sweeps"] == len(manifest.shard_samples(shard))
    # the default finds the ground at least as well as IUPC's RANSAC, and segments cleanly
    assert fast["ground_precision"] > 0.9 and fast["ground_recall"] > 0.95
    assert fast["ground_recall"] >= base["ground_recall"] - 0.01
    assert fast["segment_purity"] > 0.85 and fast["split_instance_share"] < 0.35
    off = A.read(A.open_store(tmp_path / "pre.zarr", "presegment"), "point_offsets")
    assert off[-1] == m["input_points"]
