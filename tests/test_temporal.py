"""Temporal propagation (lidarlift.temporal): the generator's sweep truth, keyframe labels carried to the
intermediate sweeps of a hand-made street scanned from a moving, turning ego (exact truth), the store,
the training references, and the scorer (lidarlift.evaluate.temporal) on a hand-made case."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from lidarlift import artifacts as A
from lidarlift.classes import NUSCENES16
from lidarlift.evaluate.counts import total
from lidarlift.evaluate.temporal import temporal_counts, temporal_figures, temporal_summary
from lidarlift.geometry import invert, make_transform, transform_points
from lidarlift.manifest import LidarFrame, Manifest, SampleRecord
from lidarlift.model.toyscene import _boxes_hit, _cylinders_hit
from lidarlift.temporal import SOURCE_CODE, TemporalParams, run_shard

C = {name: NUSCENES16.index(name) for name in NUSCENES16.classes}
SHARD = "scene-0061"
BEAMS, AZIMUTHS, SENSOR_HEIGHT = 32, 540, 1.84
#: lidar -> ego: the nuScenes roof mount, turned 90 degrees about z
LIDAR_TO_EGO = make_transform(np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]]), [0.9, 0.0, SENSOR_HEIGHT])
SPEED, YAW_RATE = 8.0, 0.2  # ego: m/s, rad/s
KEY_TIMES = (0.0, 0.5)
SWEEP_TIMES = tuple(round(0.05 * i, 2) for i in range(1, 10))  # the 9 sweeps between the two keyframes

# static street (global frame): walls both sides, tree trunks, a barrier; the ground is road
WALLS = np.array([[20, 10, 4, 80, 0.4, 8, 0], [20, -10, 4, 80, 0.4, 8, 0]], float)  # cx, cy, cz, lx, ly, lz, yaw
BARRIER = np.array([[18.5, -5.5, 0.5, 1.0, 2.0, 1.0, 0.0]])
TRUNKS = np.array([[c, 7.5, 0.3, 0.0, 5.0] for c in (8.0, 16.0, 24.0, 32.0)])  # cx, cy, radius, z0, z1
#: a car driving along the street at 10 m/s (box at time 0; moves in x)
CAR = np.array([[14.0, 3.0, 1.0, 4.0, 1.8, 1.5, 0.0]])  # 0.25 m above the road
CAR_SPEED = 10.0


def ego_to_global(t: float) -> np.ndarray:
    """The ego on a circular arc: x forward, turning left at YAW_RATE."""
    yaw = YAW_RATE * t
    x, y = SPEED / YAW_RATE * np.sin(yaw), SPEED / YAW_RATE * (1 - np.cos(yaw))
    return make_transform(np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]), [x, y, 0.0])


def scan(t: float, with_car: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points (N, 5) float32 lidar frame with ring, class (N,), segment (N,) int32, -1 ground) at time t."""
    to_global = ego_to_global(t) @ LIDAR_TO_EGO
    el = np.radians(np.linspace(-30, 10, BEAMS))
    az = np.arange(AZIMUTHS) * 2 * np.pi / AZIMUTHS + 0.37 * t  # the firing pattern drifts between sweeps
    e, a = np.meshgrid(el, az, indexing="ij")
    d_l = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)
    ring = np.repeat(np.arange(BEAMS), AZIMUTHS)
    d = d_l @ to_global[:3, :3].T
    o = to_global[:3, 3]
    boxes = [WALLS, BARRIER] + ([CAR + [[CAR_SPEED * t, 0, 0, 0, 0, 0, 0]]] if with_car else [])
    with np.errstate(divide="ignore", invalid="ignore"):
        ground = np.where(d[:, 2] < 0, -o[2] / d[:, 2], np.inf)
    hits = np.concatenate([ground[:, None], _boxes_hit(o, d, np.concatenate(boxes)), _cylinders_hit(o, d, TRUNKS)], 1)
    classes = np.array([C["driveable_surface"], C["manmade"], C["manmade"], C["barrier"]] + ([C["car"]] if with_car else [])
                       + [C["vegetation"]] * len(TRUNKS))
    segments = np.array([-1, 0, 1, 2] + ([3] if with_car else []) + list(range(10, 10 + len(TRUNKS))))
    which = np.argmin(hits, 1)
    dist = hits[np.arange(len(d)), which]
    keep = dist < 45.0
    xyz_g = o + d[keep] * dist[keep, None]
    xyz = transform_points(invert(to_global), xyz_g)
    pts = np.concatenate([xyz, np.full((len(xyz), 1), 10.0), ring[keep, None]], 1).astype(np.float32)
    return pts, classes[which[keep]].astype(np.uint8), segments[which[keep]].astype(np.int32)


def _frame(root, name: str, t: float, pts: np.ndarray) -> LidarFrame:
    rel = f"{'samples' if name.startswith('key') else 'sweeps'}/LIDAR_TOP/{name}.pcd.bin"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    pts.tofile(root / rel)
    return LidarFrame(rel, int(1_532_400_000_000_000 + round(t * 1e6)), LIDAR_TO_EGO.tolist(), ego_to_global(t).tolist(),
                      token=f"{name}-token")


def write_scene(root, with_car: bool) -> dict:
    """A dataroot, manifest and round-0 stores (the keyframes labelled by their truth) of the street."""
    keys = [scan(t, with_car) for t in KEY_TIMES]
    sweeps = [scan(t, with_car) for t in SWEEP_TIMES]
    frames = [_frame(root, f"key{i}", t, k[0]) for i, (t, k) in enumerate(zip(KEY_TIMES, keys))]
    inter = [_frame(root, f"sweep{i}", t, s[0]) for i, (t, s) in enumerate(zip(SWEEP_TIMES, sweeps))]
    samples = [SampleRecord(f"sample{i}", SHARD, "train", i, f, [], intermediate_sweeps=(inter[::-1] if i == 1 else []))
               for i, f in enumerate(frames)]
    manifest = Manifest("nuscenes", str(root), "v1.0-mini", [], "nuscenes16", samples)
    manifest.to_json(root / "manifest.json")
    counts = [len(k[0]) for k in keys]
    label = np.concatenate([k[1] for k in keys])
    seg = np.concatenate([k[2] for k in keys])
    tokens = [s.token for s in samples]
    with A.write_store(root / "pl.zarr", "pseudolabels", shard=SHARD, sample_tokens=tokens) as g:
        A.put(g, "point_offsets", A.offsets_from_counts(counts))
        A.put(g, "label", label)
        A.put(g, "confidence", np.ones(len(label), np.float32))
        A.put(g, "instance_id", np.where(NUSCENES16.thing_mask[label], seg + 1, 0))
        A.put(g, "candidate_mask", np.left_shift(1, label.astype(np.uint32) - 1))
        A.put(g, "source", np.full(len(label), 1, np.uint8))
        A.put(g, "round", np.zeros(len(label), np.uint8))
    with A.write_store(root / "ps.zarr", "presegment", shard=SHARD, sample_tokens=tokens) as g:
        A.put(g, "point_offsets", A.offsets_from_counts(counts))
        A.put(g, "ground", seg < 0)
        A.put(g, "segment_id", seg)
        A.put(g, "ground_cell", np.where(seg < 0, 0, -1))
    return {"root": root, "manifest": manifest, "sweep_truth": [s[1] for s in sweeps], "sweep_segments": [s[2] for s in sweeps],
            "keyframe_labelled": int((label > 0).sum())}


def run(scene: dict, out: str, **cfg) -> tuple[dict, A.zarr.Group]:
    root = scene["root"]
    stats = run_shard(root / "manifest.json", SHARD, 0, root / "pl.zarr", root / "ps.zarr", root / out, root / f"{out}.json", cfg)
    return stats, A.open_store(root / out, "temporal")


def per_sweep(g, name: str) -> list[np.ndarray]:
    off = A.read(g, "sweep_offsets")
    arr = A.read(g, name)
    return [arr[A.sample_slice(off, w)] for w in range(len(off) - 1)]


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("street"), with_car=False)


@pytest.fixture(scope="module")
def street_run(street):
    """The stage's stats and store on the static street (default config), made once."""
    return run(street, "t.zarr")


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("traffic"), with_car=True)


def test_static_street_labels_reproduce_the_truth_under_ego_motion(street, street_run):
    """Keyframes labelled by their truth, ego driving 8 m/s and turning: every label carried to the 9 sweeps
    between them is the sweep's true class, and most points get one."""
    stats, g = street_run
    labels = per_sweep(g, "label")
    assert len(labels) == 9 and [len(x) for x in labels] == [len(x) for x in street["sweep_truth"]]
    lab, truth = np.concatenate(labels), np.concatenate(street["sweep_truth"])
    assert (lab[lab > 0] == truth[lab > 0]).all(), f"{int(((lab > 0) & (lab != truth)).sum())} wrong labels"
    assert (lab > 0).mean() > 0.9, (lab > 0).mean()
    assert stats["labelled"] / stats["keyframe_labelled"] > 0.9 * 9 / 2  # two keyframes' labels feed nine sweeps
    for c in ("driveable_surface", "manmade", "vegetation", "barrier"):  # each class, on its own surface
        assert (lab[truth == C[c]] == C[c]).mean() > 0.6, c
    # a wrong pose breaks it: the same sweeps two metres off to the side get wrong labels
    shifted = Manifest.from_json(street["root"] / "manifest.json")
    for f in shifted.samples[1].intermediate_sweeps:
        f.ego_to_global = (make_transform(np.eye(3), [0.0, 2.0, 0.0]) @ np.asarray(f.ego_to_global)).tolist()
    shifted.to_json(street["root"] / "manifest_shifted.json")
    root = street["root"]
    run_shard(root / "manifest_shifted.json", SHARD, 0, root / "pl.zarr", root / "ps.zarr", root / "t_off.zarr", None, {})
    off = np.concatenate(per_sweep(A.open_store(root / "t_off.zarr", "temporal"), "label"))
    assert ((off > 0) & (off != truth)).sum() > 100


def test_moving_car_is_followed_through_its_segments_motion(traffic):
    """A car at 10 m/s moves 5 m between the keyframes: its points in every sweep are labelled car from
    both keyframes (the segment's fitted motion), none wrongly; without the motion they are not."""
    stats, g = run(traffic, "t.zarr")
    assert stats["moving_segments"] == 2  # the car, once in each keyframe
    labels, moved, source = per_sweep(g, "label"), per_sweep(g, "moved"), per_sweep(g, "source")
    both = []
    for w, (lab, truth) in enumerate(zip(labels, traffic["sweep_truth"])):
        car = truth == C["car"]
        assert car.sum() > 50
        assert (lab[car & (lab > 0)] == C["car"]).all()
        assert (lab[car] == C["car"]).mean() > 0.8, (w, (lab[car] == C["car"]).mean())
        assert moved[w][car & (lab > 0)].all() and not moved[w][~car].any()
        both.append(source[w][car & (lab > 0)] == SOURCE_CODE["both"])
        lab_all = lab > 0
        assert (lab[lab_all] == truth[lab_all]).mean() > 0.999
    assert np.concatenate(both).mean() > 0.85  # the car is followed from both keyframes
    _, still = run(traffic, "still.zarr", max_speed=0.0)  # no motion: segments count as standing still
    mid = [4]  # 0.25 s from both keyframes: the car is 2.5 m from where either saw it
    for w in mid:
        lab, truth = per_sweep(still, "label")[w], traffic["sweep_truth"][w]
        assert (lab[truth == C["car"]] == C["car"]).mean() < 0.5


def test_temporal_store_spec_and_training_references(street, street_run):
    """The store has the declared arrays and attributes; the M-step's references pick evenly spaced sweeps
    and load their labels (a label or nothing: one candidate bit, or all)."""
    from lidarlift.model.data import SweepDataset, evenly_spaced, temporal_refs

    _, g = street_run
    spec = A.STORES["temporal"]
    for name, arr in spec.arrays.items():
        assert str(g[name].dtype) == arr.dtype, name
    off = A.read(g, "sweep_offsets")
    sweeps = street["manifest"].samples[1].intermediate_sweeps
    assert list(g.attrs["sweep_tokens"]) == [f.token for f in sorted(sweeps, key=lambda f: f.timestamp)]
    assert (np.diff(A.read(g, "timestamp")) > 0).all() and (A.read(g, "keyframe_index") == 1).all()
    assert off[-1] == len(A.read(g, "label")) == sum(len(t) for t in street["sweep_truth"])
    assert g.attrs["keyframe_labelled"] == street["keyframe_labelled"]
    assert {int(k): v for k, v in g.attrs["sources"].items()} == {c: n for n, c in SOURCE_CODE.items()}
    assert "temporal v1" in A.describe()
    assert evenly_spaced(9, 3) == [1, 4, 7] and evenly_spaced(9, 0) == list(range(9)) and evenly_spaced(2, 5) == [0, 1]
    refs = temporal_refs(street["manifest"], {SHARD: str(street["root"] / "t.zarr")}, per_keyframe=3)
    assert [r.token for r in refs] == [f"sweep{i}-token" for i in (1, 4, 7)] and {r.label_kind for r in refs} == {"temporal"}
    ds = SweepDataset(street["manifest"], refs, 16)
    for i, w in enumerate((1, 4, 7)):
        sw = ds.sweep(i)
        lab = per_sweep(g, "label")[w]
        assert (sw.label == lab).all() and len(sw.points) == len(lab)
        assert (sw.candidate_mask[lab > 0] == (1 << (lab[lab > 0].astype(np.uint32) - 1))).all()
        assert (sw.candidate_mask[lab == 0] == (1 << 16) - 1).all()
        assert (sw.confidence[lab > 0] >= TemporalParams.from_config({}).min_confidence).all()


def _write_truth(root, token: str, label_fine: np.ndarray) -> None:
    path = root / "lidarlift_gt" / "v1.0-mini" / "sweeps"
    path.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path / f"{token}.npz", data=(label_fine.astype(np.uint16) * 1000))


def test_scorer_definitions_on_a_hand_made_case(tmp_path):
    """Two sweeps of five points: counts, precision over labelled scored points, labels per labelled
    keyframe point (any label, ignored truth included), per source and confidence; miou_with/without."""
    from lidarlift.classes import CHALLENGE_CLASSES, FINE_CLASSES, FINE_TO_CHALLENGE

    fine_of = {c: int(np.flatnonzero(FINE_TO_CHALLENGE == c)[0]) for c in range(1, 17)}
    frames = [LidarFrame(f"sweeps/LIDAR_TOP/s{i}.pcd.bin", 10 + i, np.eye(4).tolist(), np.eye(4).tolist(), token=f"s{i}")
              for i in range(2)]
    key = LidarFrame("samples/LIDAR_TOP/k.pcd.bin", 20, np.eye(4).tolist(), np.eye(4).tolist(), token="k")
    manifest = Manifest("nuscenes", str(tmp_path), "v1.0-mini", [], "nuscenes16",
                        [SampleRecord("k", SHARD, "train", 0, key, [], intermediate_sweeps=frames[::-1])])
    truth = [np.array([1, 2, 2, 1, 0]), np.array([4, 4, 4, 0, 4])]  # 0: ignore (noise)
    for f, t in zip(frames, truth):
        _write_truth(tmp_path, f.token, np.array([fine_of[c] if c else 0 for c in t]))
    label = np.array([1, 1, 2, 0, 3, 4, 4, 0, 4, 1], np.uint8)
    conf = np.array([0.95, 0.55, 0.85, 0, 0.6, 0.9, 0.9, 0, 0.7, 0.6], np.float32)
    source = np.array([1, 2, 1, 0, 3, 1, 1, 4, 1, 2], np.uint8)
    with A.write_store(tmp_path / "t.zarr", "temporal", shard=SHARD, sample_tokens=["k"], sweep_tokens=["s0", "s1"],
                       sources={"0": "unseen", "1": "both", "2": "previous", "3": "next", "4": "conflict"},
                       keyframe_labelled=4) as g:
        A.put(g, "sweep_offsets", np.array([0, 5, 10]))
        A.put(g, "keyframe_index", np.zeros(2, np.int32))
        A.put(g, "timestamp", np.array([10, 11]))
        for name, arr in (("label", label), ("confidence", conf), ("source", source), ("moved", np.zeros(10, bool))):
            A.put(g, name, arr)
    c = temporal_counts(manifest, manifest.samples, tmp_path / "t.zarr", NUSCENES16)
    # scored: truth > 0 -> 4 + 4; labelled (scored): s0 points 0,1,2 and s1 points 0,1,4 -> 6 (s1 point 3 and s0
    # point 4 carry labels on ignored truth); correct: s0 0, 2 and s1 0, 1 -> 4
    assert (c["sweeps"], c["points"], c["scored"], c["labelled_any"], c["labelled"], c["correct"]) == (2, 10, 8, 8, 6, 4)
    f = temporal_figures(total([c]), NUSCENES16)
    assert f["sweep_points_labelled_per_keyframe_point"] == 8 / 4
    assert f["precision"] == 4 / 6 and f["labelled_share"] == 6 / 8
    assert f["by_source"]["both"] == {"share": 4 / 8, "labelled_share": 1.0, "precision": 1.0, "labelled": 4}
    assert f["by_source"]["previous"]["precision"] == 0.0 and f["by_source"]["conflict"]["labelled"] == 0
    assert f["per_class"][CHALLENGE_CLASSES[0]] == {"precision": 1 / 3, "recall": 0.5, "labelled": 3}
    assert {b["confidence"][0]: (b["labelled"], b["precision"]) for b in f["by_confidence"]} == {
        0.5: (1, 0.0), 0.6: (1, 0.0), 0.8: (1, 1.0), 0.9: (3, 1.0)}
    assert f["by_position"] == {"1": {"labelled_share": 3 / 4, "precision": 2 / 3, "labelled": 3},
                                "2": {"labelled_share": 3 / 4, "precision": 2 / 3, "labelled": 3}}
    assert FINE_CLASSES  # the truth files use the fine classes, as the generator writes them
    # the networks with and without the temporal sweeps, from their confusion matrices on the val shard
    eye = np.zeros((17, 17), int)
    eye[1, 1], eye[2, 2], eye[2, 1] = 10, 10, 10
    shards = [{"shard": SHARD, "split": "train", "temporal": {"0": c}},
              {"shard": "scene-0103", "split": "val", "network": {"0": {"confusion": np.diag([0] + [5] * 16).tolist()},
                                                                   "keyframes": {"confusion": eye.tolist()}}}]
    s = temporal_summary(shards, ["scene-0103"], NUSCENES16, final_round=0)
    assert s["miou_with"] == 1.0 and s["miou_without"] == pytest.approx((0.5 + 0.5) / 2)
    assert s["precision"] == 4 / 6 and s["round"] == 0 and set(s["rounds"]) == {"0"}


def test_generator_writes_sweep_truth_and_the_manifest_lists_the_sweeps_between_keyframes(tiny_world):
    """Every sweep between keyframes (and before the first) is listed, nearest first, and has per-point
    truth that agrees with the keyframe's where the ego-motion-compensated points coincide."""
    from lidarlift.datasets.nuscenes import build_manifest
    from lidarlift.datasets.readers import read_lidar
    from lidarlift.groundtruth import point_truth, sweep_truth
    from lidarlift.temporal import lidar_to_global

    manifest = build_manifest({"dataroot": str(tiny_world), "version": "v1.0-mini", "scenes": [SHARD]})
    first, second = manifest.shard_samples(SHARD)
    assert len(first.intermediate_sweeps) == 1 and len(second.intermediate_sweeps) == 9
    ts = [f.timestamp for f in second.intermediate_sweeps]
    assert ts == sorted(ts, reverse=True) and first.lidar.timestamp < min(ts) and max(ts) < second.lidar.timestamp
    assert point_truth(manifest, second) is not None and sweep_truth(manifest, second.lidar) is None  # keyframes: panoptic
    key_points = read_lidar(manifest.resolve(second.lidar.path))[:, :3].astype(float)
    key_xyz = transform_points(lidar_to_global(second.lidar), key_points)
    key_truth = point_truth(manifest, second)
    tree = cKDTree(key_xyz)
    for f in (second.intermediate_sweeps[0], second.intermediate_sweeps[-1], first.intermediate_sweeps[0]):
        truth = sweep_truth(manifest, f)
        pts = read_lidar(manifest.resolve(f.path))
        assert truth is not None and len(truth.label) == len(pts) and truth.label.max() <= 16
        assert (truth.instance[truth.instance > 0] // 1000 == truth.fine[truth.instance > 0]).all()
        d, i = tree.query(transform_points(lidar_to_global(f), pts[:, :3].astype(float)))
        near = d < 0.05
        assert near.sum() > 100
        assert (truth.label[near] == key_truth.label[i[near]]).mean() > 0.97


def test_training_takes_the_temporal_sweeps_beside_the_keyframes(street, street_run, tmp_path):
    """run_training with a ``temporal`` spec trains on the keyframes plus train.temporal_sweeps sweeps per
    keyframe (the stores' labels), and records how many; the keyframe-only comparison takes as many steps."""
    import torch

    from lidarlift.model.train import run_training

    root = street["root"]
    torch.set_num_threads(1)
    spec = {"train": {"epochs": 1, "batch_size": 2, "max_points": 2000, "temporal_sweeps": 3, "warmup_steps": 0,
                      "model": {"channels": [8, 16], "voxel_size": 0.5}},
            "label_space": "nuscenes16", "manifest": str(root / "manifest.json"), "round": 0, "label_source": "pseudolabels",
            "stores": {SHARD: str(root / "pl.zarr")}, "temporal": {SHARD: str(root / "t.zarr")}, "shards": [SHARD],
            "model": str(tmp_path / "model.pt"), "metrics": str(tmp_path / "metrics.json"), "out_dir": str(tmp_path),
            "tensorboard": None, "threads": 1}
    metrics = run_training(spec)
    assert metrics["sweeps"] == 2 + 3 and metrics["temporal_sweeps"] == 3 and metrics["steps"] == 3
    assert metrics["labelled_points"] > sum(len(t) for t in street["sweep_truth"][:3]) * 0.5
    # rule train_keyframes (temporal.compare: steps): the keyframes alone, as many steps (3 epochs of 1 step)
    keyframes_only = run_training({**spec, "temporal": {}, "steps_of_temporal": True, "out_dir": str(tmp_path / "kf"),
                                   "model": str(tmp_path / "kf.pt"), "metrics": str(tmp_path / "kf.json")})
    assert keyframes_only["sweeps"] == 2 and keyframes_only["temporal_sweeps"] == 0
    assert keyframes_only["steps"] == metrics["steps"] and keyframes_only["epochs"] == 3
