"""Pre-segmentation: exact ground on a plane with boxes, separate boxes as separate segments, the metrics'
definitions (lidarlift.evaluate.presegment), bad sweeps, and the stage (default and IUPC baseline side
by side) on the synthetic world."""
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
    Presegmentation, PresegmentParams, angle_criterion, hdbscan_labels, presegment, range_adaptive_pairs,
    range_components, run_shard, slope_continues, voxelize,
)
from lidarlift.scan import ScanResolution
from lidarlift.classes import NUSCENES16
from lidarlift.evaluate.merge import score_stores
from lidarlift.evaluate.presegment import presegment_counts as _counts
from lidarlift.evaluate.presegment import presegment_figures
from lidarlift.summary import presegment as presegment_stats


def presegment_counts(res, label, inst, split_min_share=0.1, point_range=None):
    rng = np.zeros(len(label)) if point_range is None else point_range
    return _counts(res.ground, res.segment_id, label, inst, rng, NUSCENES16, 10 if len(label) > 30 else 5, split_min_share)

SENSOR_HEIGHT = 1.84
#: The hand-built clouds below are sampled at random, without a LiDAR's beam structure to measure: they
#: give their resolution (a 32-beam HDL-32E: 1.33 deg beams, 1085 azimuth steps) or one beam in degrees.
HDL32 = ScanResolution.uniform(32, -30.67, 10.67, 1085)
HDL64 = ScanResolution.uniform(64, -24.8, 2.0, 2083)
HAND_BUILT = {"beam_spacing_deg": 1.33}
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


@pytest.mark.parametrize("cfg", [{"method": "fast", "fast": {"cluster": "range_components"}},
                                 {"method": "fast", "fast": {"cluster": "hdbscan"}},  # IUPC's clustering
                                 {"method": "fast", "fast": {"cluster": "voxel_hdbscan"}},
                                 {"method": "fast", "fast": {"cluster": "range_components",
                                                             "range_components": {"leftover_below": 100000}}}])
def test_two_separated_boxes_are_two_segments(dense_scene, cfg):
    """The metric clusterers on boxes sampled at random (no beam structure; the range-image default
    needs a scan pattern: the ray-cast scenes below)."""
    xyz, label, inst = dense_scene
    res = presegment(xyz, [], cfg, scan=HDL32)
    assert res.segment_id.dtype == np.int32 and (res.segment_id[res.ground] == -1).all()
    ids = [np.unique(res.segment_id[inst == k]) for k in (17001, 17002)]
    assert [len(i) for i in ids] == [1, 1] and ids[0][0] != ids[1][0] and min(ids[0][0], ids[1][0]) >= 0
    c = presegment_counts(res, label, inst)
    assert c["ground_tp"] == (label == 11).sum() and c["ground_fp"] == c["ground_fn"] == 0
    assert c["pure_points"] == c["segmented_points"] == (label == 4).sum()
    assert (c["instances"], c["instances_split"]) == (2, 0)


def test_range_components_grow_with_range_in_beams():
    # two scan lines 1.0 m apart: split near the sensor (eps 0.3), joined at 30 m by a 32-beam sensor
    # (1.72 beams of 1.33 deg at 30 m = 1.2 m), split at 30 m by a 64-beam one (its beams are 1/3 deg
    # apart there: 1.72 beams = 0.3 m; its rows lie 0.17 m apart, so an object still links)
    def lines(x):
        t = np.linspace(-1, 1, 21)
        return np.concatenate([np.column_stack([np.full(21, x), t, np.zeros(21)]),
                               np.column_stack([np.full(21, x), t, np.ones(21)])])
    p = PresegmentParams.from_config().fast.range_components
    near, far = range_components(lines(5.0), p, scan=HDL32), range_components(lines(30.0), p, scan=HDL32)
    assert len(np.unique(near)) == 2 and len(np.unique(far)) == 1 and (near >= 0).all() and (far >= 0).all()
    assert len(np.unique(range_components(lines(30.0), p, scan=HDL64))) == 2
    inverse, cent, counts = voxelize(lines(5.0), 0.15)
    assert counts.sum() == 42 and np.allclose(cent[inverse][:, 2], lines(5.0)[:, 2])
    assert (hdbscan_labels(np.zeros((3, 3)), PresegmentParams.from_config().iupc.hdbscan) == -1).all()


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
    s = presegment_figures(c)
    assert s["ground_precision"] == 0.75 and s["segment_purity"] == 16 / 22 and s["split_instance_share"] == 0.5
    # car B's own segment (1) also holds 4 of car A's 10 segmented points (>= 10%): merged; car A's (0) is pure
    assert c["instances_merged"] == 1 and s["merge_instance_share"] == 0.5
    # ... with another car: cause same_class; per class [merged, scored]
    assert s["merged_by_cause"] == {"same_class": 1, "other_class": 0, "stuff": 0}
    assert s["merged_by_class"] == {"car": [1, 2]}
    assert c["instances_far"] == 0 and s["merge_instance_share_beyond_30m"] is None
    c_far = presegment_counts(res, label, inst, point_range=np.full(len(label), 40.0))
    assert (c_far["instances_far"], c_far["instances_far_merged"]) == (2, 1)
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
    with pytest.raises(ValueError, match=r"config key presegment\.fast\.ground\.height: unknown key"):
        PresegmentParams.from_config({"fast": {"ground": {"height": 2}}})
    with pytest.raises(ValueError, match=r"config key presegment\.method: 'patchwork' is not one of"):
        PresegmentParams.from_config({"method": "patchwork"})
    with pytest.raises(ValueError, match=r"config key presegment\.fast\.range_image\.theta_deg: 90 is greater than or equal to the maximum"):
        PresegmentParams.from_config({"fast": {"range_image": {"theta_deg": 90}}})
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
    m = run_shard(man, "shard-a", str(store), str(met), {"iupc": {"sweeps": 2}, **HAND_BUILT})
    b = run_shard(man, "shard-a", str(tmp_path / "base.zarr"), None, {"iupc": {"sweeps": 2}}, method="iupc")
    g = A.open_store(store, "presegment")
    n = len(scene[0][::3])
    assert A.read(g, "point_offsets").tolist() == [0, n, 2 * n]
    assert np.array_equal(A.read(g, "ground")[:n], scene[1][::3] == 11)
    assert g.attrs["method"] == "fast"
    assert A.open_store(tmp_path / "base.zarr", "presegment").attrs["method"] == "iupc"
    saved = json.loads(met.read_text())
    assert saved["sweeps"] == 2 and b["sweeps"] == 2 and saved["skipped"] == [] and "ground_tp" not in saved
    assert presegment_stats([m])["seconds_per_sweep"] > 0 and presegment_stats([b])["seconds_per_sweep"] > 0


def test_truncated_sweeps_error_and_skip(tmp_path, scene):
    man = _hand_manifest(tmp_path, scene, truncate="lidar_1_0.pcd.bin")
    store = tmp_path / "pre.zarr"
    with pytest.raises(DatasetError, match=r"sample tok1: lidar file .*lidar_1_0\.pcd\.bin is truncated"):
        run_shard(man, "shard-a", str(store), str(tmp_path / "m.json"), HAND_BUILT)
    assert not store.exists()
    m = run_shard(man, "shard-a", str(store), str(tmp_path / "m.json"), HAND_BUILT,
                  bad_sample_policy="skip")
    assert [(s["sample"], s["file"].endswith("lidar_1_0.pcd.bin")) for s in m["skipped"]] == [("tok1", True)]
    off = A.read(A.open_store(store, "presegment"), "point_offsets")
    n = len(scene[0][::3])
    assert off.tolist() == [0, n, n]  # the skipped keyframe has no rows
    # a bad earlier sweep is left out of the ground fit and recorded; the keyframe is kept
    (tmp_path / "b").mkdir()
    man2 = _hand_manifest(tmp_path / "b", scene, truncate="lidar_0_2.pcd.bin")
    with pytest.raises(DatasetError, match="lidar_0_2"):
        run_shard(man2, "shard-a", str(store), str(tmp_path / "m.json"), {"iupc": {"sweeps": 2}}, method="iupc")
    m2 = run_shard(man2, "shard-a", str(store), str(tmp_path / "m.json"), {"iupc": {"sweeps": 2}},
                   bad_sample_policy="skip", method="iupc")
    assert [s["sample"] for s in m2["skipped"]] == ["tok0"] and m2["sweeps"] == 2


def test_synthetic_world_presegment(tiny_world, tmp_path):
    from lidarlift.datasets import build_manifest

    manifest = build_manifest({"dataroot": str(tiny_world), "version": "v1.0-mini", "format": "nuscenes"})
    man = tmp_path / "manifest.json"
    manifest.to_json(man)
    shard = manifest.shards[0]
    m = run_shard(str(man), shard, str(tmp_path / "pre.zarr"), str(tmp_path / "pre.json"), {})
    run_shard(str(man), shard, str(tmp_path / "base.zarr"), None, {}, method="iupc")
    s = score_stores(man, {shard: {"presegment": str(tmp_path / "pre.zarr"),
                                   "presegment_baseline": str(tmp_path / "base.zarr")}})["presegment"]
    fast, base = s, s["baseline"]
    assert m["sweeps"] == len(manifest.shard_samples(shard))
    # the default finds the ground at least as well as IUPC's RANSAC, and segments cleanly
    assert fast["ground_precision"] > 0.9 and fast["ground_recall"] > 0.95
    assert fast["ground_recall"] >= base["ground_recall"] - 0.01
    assert fast["segment_purity"] > 0.85 and fast["split_instance_share"] < 0.35
    off = A.read(A.open_store(tmp_path / "pre.zarr", "presegment"), "point_offsets")
    assert off[-1] == m["input_points"]


def test_link_is_long_along_the_line_of_sight_and_short_across_it():
    """A 32-beam sensor's vertical link (1.72 beams of 1.33 deg: 1.2 m at 30 m) must not reach sideways:
    across the line of sight it is 3 azimuth steps (0.1 m; the 0.3 m floor). Two posts 0.8 m apart side
    by side at 30 m stay apart; the same 0.8 m gap along the line of sight (a surface set back, as a
    car's cabin behind its bonnet) is bridged."""
    z = np.linspace(-1.0, 0.5, 9)

    def post(x, y):
        return np.column_stack([np.full(9, x), np.full(9, y), z])
    p = PresegmentParams.from_config().fast.range_components
    side = range_components(np.concatenate([post(30.0, 0.0), post(30.0, 0.8)]), p, scan=HDL32)
    behind = range_components(np.concatenate([post(30.0, 0.0), post(30.8, 0.0)]), p, scan=HDL32)
    assert len(np.unique(side)) == 2 and len(np.unique(behind)) == 1 and (side >= 0).all()
    # the pairs are exactly the ellipsoid's: a point 1.0 m radially and one 0.35 m across, at 30 m
    xyz = np.array([[30.0, 0, 0], [31.0, 0, 0], [30.0, 0.35, 0]])
    pairs = {tuple(sorted(q)) for q in range_adaptive_pairs(xyz, 0.3, np.full(3, 1.2), np.full(3, 0.3)).tolist()}
    assert pairs == {(0, 1)}


def test_sweep_without_beam_structure_is_named(tmp_path, scene):
    """A cloud without a LiDAR's beam structure cannot give its resolution: the stage names the sample,
    the file and the config key that supplies it; the IUPC baseline (metres only) does not need it."""
    man = _hand_manifest(tmp_path, scene)
    with pytest.raises(DatasetError, match=r"sample tok0: lidar file .*lidar_0_0\.pcd\.bin: .*beam_spacing_deg"):
        run_shard(man, "shard-a", str(tmp_path / "pre.zarr"), None, {})
    run_shard(man, "shard-a", str(tmp_path / "base.zarr"), None, {}, method="iupc")
    with pytest.raises(ValueError, match="presegment.beam_spacing_deg"):
        PresegmentParams.from_config({"beam_spacing_deg": -1})
    with pytest.raises(ValueError, match=r"config key presegment\.fast\.range_components\.range_factor: unknown key"):
        PresegmentParams.from_config({"fast": {"range_components": {"range_factor": 0.04}}})


# ------------------------------------------------------------------------------------------ range image

def lidar_scan(boxes, elevations_deg, azimuth_steps, az_range_deg=(-60.0, 60.0)):
    """Ray-cast a rotating LiDAR at the origin (1.84 m over a level ground) against axis-aligned boxes.

    boxes: [(lo (3,), hi (3,), instance id)] in the sensor frame (z up); elevations_deg: the beams;
    azimuth_steps per revolution, fired over ``az_range_deg``. Returns xyz (N, 3) float32 of the hits
    (ground included) and the instance id of each (0 = ground), as a scanner without noise sees them."""
    el = np.radians(np.asarray(elevations_deg, np.float64))
    step = 2 * np.pi / azimuth_steps
    az = np.arange(np.radians(az_range_deg[0]), np.radians(az_range_deg[1]), step)
    e, a = np.meshgrid(el, az, indexing="ij")
    d = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)
    t_best = np.where(d[:, 2] < 0, -SENSOR_HEIGHT / np.minimum(d[:, 2], -1e-12), np.inf)
    owner = np.zeros(len(d), np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for lo, hi, inst in boxes:
            t1, t2 = (np.asarray(lo) - 0) / d, (np.asarray(hi) - 0) / d
            t_in = np.nanmax(np.minimum(t1, t2), axis=1)
            t_out = np.nanmin(np.maximum(t1, t2), axis=1)
            hit = (t_in <= t_out) & (t_in > 0) & (t_in < t_best)
            t_best[hit], owner[hit] = t_in[hit], inst
    keep = np.isfinite(t_best) & (t_best < 80)
    return (d[keep] * t_best[keep, None]).astype(np.float32), owner[keep]


HDL64_BEAMS = np.linspace(-24.8, 2.0, 64)
HDL32_BEAMS = np.linspace(-30.67, 10.67, 32)


def box(x0, x1, y0, y1, z0, z1, inst):
    """A box given over the ground (z0, z1 m above it) in the sensor frame."""
    return (np.array([x0, y0, z0 - SENSOR_HEIGHT]), np.array([x1, y1, z1 - SENSOR_HEIGHT]), inst)


def segments_of(xyz, owner, cfg=None, beams=HDL64_BEAMS, steps=2480):
    """{instance: sorted segments holding >= 10% of its segmented points (the split measure's parts)} of
    the pre-segmentation (default config, or updated by ``cfg``) of a ray-cast scene."""
    scan = ScanResolution.uniform(len(beams), float(beams[0]), float(beams[-1]), steps)
    res = presegment(xyz, [], cfg or {}, scan=scan)
    assert res.ground[owner == 0].all()  # the road is ground
    out = {}
    for k in np.unique(owner[owner > 0]):
        seg = res.segment_id[(owner == k) & (res.segment_id >= 0)]
        assert len(seg) >= 0.8 * (owner == k).sum()  # the boxes are segmented, not ground or noise
        ids, n = np.unique(seg, return_counts=True)
        out[int(k)] = sorted(ids[n >= 0.1 * len(seg)].tolist())
    return out


def test_boxes_touching_with_a_depth_step_at_the_joint_are_two_segments():
    """Two boxes touching side by side at 12 m, the right one's face 0.4 m behind the left one's: along
    the scan lines the joint is a depth jump (angle criterion), so two segments; the same boxes with
    their faces in one plane show no cue at the joint and are one segment."""
    step = lidar_scan([box(12.0, 13.0, -1.5, 0.0, 0.0, 1.0, 1), box(12.4, 13.4, 0.0, 1.5, 0.0, 1.0, 2)], HDL64_BEAMS, 2480)
    flush = lidar_scan([box(12.0, 13.0, -1.5, 0.0, 0.0, 1.0, 1), box(12.0, 13.0, 0.0, 1.5, 0.0, 1.0, 2)], HDL64_BEAMS, 2480)
    a, b = segments_of(*step).values()
    assert len(a) == len(b) == 1 and a != b and a[0] >= 0
    a, b = segments_of(*flush).values()
    assert a == b and len(a) == 1


def car(x_rear, y, inst, length=4.5, width=1.8):
    """A car seen from behind along +x: body 0.2-0.85 m, cabin 0.85-1.5 m set back 1.2 m from the rear."""
    return [box(x_rear, x_rear + length, y - width / 2, y + width / 2, 0.2, 0.85, inst),
            box(x_rear + 1.2, x_rear + 3.4, y - width / 2 + 0.07, y + width / 2 - 0.07, 0.85, 1.5, inst)]


def test_car_body_and_cabin_are_one_segment():
    """A car seen from behind at 16.3 m by a 64-beam scanner: no beam hits the boot lid (0.24 deg of
    elevation, less than a beam), so body and cabin are 1.2 m apart along the rays; the stacked-parts
    merge joins them (without it they are two segments)."""
    xyz, owner = lidar_scan(car(16.3, 0.0, 1), HDL64_BEAMS, 2480)
    top = np.degrees(np.arctan2(0.85 - SENSOR_HEIGHT, np.array([16.3, 17.5])))
    assert not ((HDL64_BEAMS > top[0]) & (HDL64_BEAMS < top[1])).any()  # the boot lid falls between two beams
    assert len(segments_of(xyz, owner)[1]) == 1
    assert len(segments_of(xyz, owner, {"fast": {"range_image": {"stack_gap_m": 0.0}}})[1]) == 2


def test_parked_cars_in_a_row_stay_apart():
    """Two cars parked one behind the other, 0.6 m apart, 4 m to the side, seen along the row: the front
    one's rear and the next one's nose are a depth jump, and the next cabin does not rest on the first
    body (it reaches down beside it), so two segments, each whole."""
    xyz, owner = lidar_scan(car(10.0, 4.0, 1) + car(15.1, 4.0, 2), HDL64_BEAMS, 2480)
    seg = segments_of(xyz, owner)
    assert len(seg[1]) == 1 and len(seg[2]) == 1 and seg[1] != seg[2]


def test_a_person_behind_a_row_of_barriers_is_not_part_of_it():
    """A person (0.5 m wide, 1.8 m tall) 1 m behind a 6 m row of 1 m high barriers: only the upper body
    shows over the row and rests on it, but it spans a twelfth of the row's width: two segments."""
    xyz, owner = lidar_scan([box(8.0, 8.6, -3.0, 3.0, 0.0, 1.0, 1), box(9.6, 9.9, -0.25, 0.25, 0.0, 1.8, 2)],
                            HDL64_BEAMS, 2480)
    seg = segments_of(xyz, owner)
    assert len(seg[1]) == 1 and len(seg[2]) == 1 and seg[1] != seg[2]


def test_a_wall_stays_whole_behind_a_pole():
    """A wall at 20 m with a 0.3 m pole at 10 m in front of it: the pole hides a stretch of each scan line,
    but the wall continues behind it at the same depth: one wall segment (two without the bridge)."""
    scene = [box(20.0, 20.5, -4.0, 4.0, 0.0, 2.5, 1), box(10.0, 10.3, -0.15, 0.15, 0.0, 3.0, 2)]
    xyz, owner = lidar_scan(scene, HDL32_BEAMS, 1085)
    seg = segments_of(xyz, owner, beams=HDL32_BEAMS, steps=1085)
    assert len(seg[1]) == 1 and seg[2] != seg[1]
    assert len(segments_of(xyz, owner, {"fast": {"range_image": {"bridge_m": 0.0}}}, HDL32_BEAMS, 1085)[1]) == 2


def test_a_wall_seen_at_a_grazing_angle_is_one_segment():
    """A wall along the street 3 m to the side, 6-40 m ahead, seen at 4-27 deg: one segment."""
    xyz, owner = lidar_scan([box(6.0, 40.0, 3.0, 3.3, 0.0, 2.0, 1)], HDL64_BEAMS, 2480)
    assert len(segments_of(xyz, owner)[1]) == 1


def test_slope_continuity_tells_a_grazing_surface_from_a_depth_jump():
    """One scan line: returns on a plane seen at a grazing angle step 0.5 m in depth per azimuth step
    (the angle criterion would cut every pair); a jump between two facing surfaces is one large step
    between flat runs. Pairs on the plane continue the slope on both sides; the jump's pair does not."""
    r = np.array([10.0, 10.5, 11.0, 11.5, 12.0, 20.0, 20.0, 20.0, 20.0])
    col = np.arange(len(r), dtype=float)
    right = np.r_[np.arange(1, len(r)), -1]
    left = np.r_[-1, np.arange(len(r) - 1)]
    i = np.arange(len(r) - 1)
    ok = slope_continues(i, right[i], left, right, r, col, 0.3)
    assert ok.tolist() == [False, True, True, False, False, False, True, False]
    # 10.5-11 and 11-11.5 continue, and the flat run's middle pair; the ends lack a step on one side;
    # 12 -> 20 (and its neighbours, whose steps differ from it) is a jump between runs
    beta = np.degrees(angle_criterion(r, i, right[i], np.radians(0.145)))
    assert (beta[:4] < 10).all() and beta[4] < 1 and (beta[5:] > 89).all()


def test_a_keyframe_without_ground_below_the_sensor_names_sample_and_file(tmp_path, scene):
    """The ground fit measures the sensor height from the keyframe; a keyframe with no return below the
    sensor (here lifted 10 m) stops the stage naming the sample, the file and the key that fixes the
    height, before any store is written; under 'skip' it is left out and recorded."""
    man = _hand_manifest(tmp_path, scene)
    f = tmp_path / "data" / "lidar_1_0.pcd.bin"
    rows = np.fromfile(f, np.float32).reshape(-1, 5)
    rows[:, 2] += 10.0
    rows.tofile(f)
    store = tmp_path / "pre.zarr"
    with pytest.raises(DatasetError, match=r"sample tok1: lidar file .*lidar_1_0\.pcd\.bin: .*presegment\.fast\.ground\.sensor_height"):
        run_shard(man, "shard-a", str(store), None, HAND_BUILT)
    assert not store.exists()
    m = run_shard(man, "shard-a", str(store), None, HAND_BUILT, bad_sample_policy="skip")
    assert [s["sample"] for s in m["skipped"]] == ["tok1"]
