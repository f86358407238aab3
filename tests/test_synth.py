"""Acceptance tests of the synthetic world generator (lidarlift.synth).

Each test states the truth it checks; the world's ground truth is exact, so most checks are exact.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pyquaternion import Quaternion

from lidarlift.classes import CHALLENGE_CLASSES, FINE_CLASSES, FINE_INDEX, FINE_TO_CHALLENGE
from lidarlift.synth import CAMERA_CHANNELS, THING_FINE_NAMES, generate, main

VERSION = "v1.0-mini"


@pytest.fixture(scope="module")
def nusc(tiny_world):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(VERSION, str(tiny_world), verbose=False)


def _load_points(root: Path, rel: str) -> np.ndarray:
    return np.fromfile(root / rel, np.float32).reshape(-1, 5)


def _transform(rec: dict) -> np.ndarray:
    """4x4 matrix of a calibrated_sensor / ego_pose record."""
    T = np.eye(4)
    T[:3, :3] = Quaternion(rec["rotation"]).rotation_matrix
    T[:3, 3] = rec["translation"]
    return T


# --------------------------------------------------------------------------------------------------
# Format: the devkit loads it, and every keyframe has consistent labels
# --------------------------------------------------------------------------------------------------


def test_devkit_loads_with_official_scene_names_and_splits(nusc):
    from nuscenes.utils.splits import create_splits_scenes

    names = [s["name"] for s in nusc.scene]
    assert names == ["scene-0061", "scene-0103", "scene-0916"]
    splits = create_splits_scenes(verbose=False)
    assert "scene-0061" in splits["mini_train"] and set(splits["mini_val"]) == {"scene-0103", "scene-0916"}
    assert [c["name"] for c in sorted(nusc.category, key=lambda c: c["index"])] == list(FINE_CLASSES)
    for scene in nusc.scene:  # nbr_samples equals the linked-list length
        n, tok = 0, scene["first_sample_token"]
        while tok:
            n += 1
            tok = nusc.get("sample", tok)["next"]
        assert n == scene["nbr_samples"] == 2


def test_every_keyframe_has_lidarseg_and_panoptic_matching_point_count(nusc, tiny_world):
    for sample in nusc.sample:
        sd_token = sample["data"]["LIDAR_TOP"]
        sd = nusc.get("sample_data", sd_token)
        assert sd["is_key_frame"] and sd["filename"].startswith("samples/LIDAR_TOP/")
        n = len(_load_points(tiny_world, sd["filename"]))
        assert n > 5000
        fine = np.fromfile(tiny_world / nusc.get("lidarseg", sd_token)["filename"], np.uint8)
        pan = np.load(tiny_world / nusc.get("panoptic", sd_token)["filename"])["data"]
        assert fine.shape == (n,) and pan.shape == (n,) and pan.dtype == np.uint16
        assert np.array_equal(pan // 1000, fine)
        stuff = fine >= FINE_INDEX["flat.driveable_surface"]
        assert (pan[stuff] % 1000 == 0).all()  # stuff has no instance id
        assert (pan[(fine > 0) & ~stuff] % 1000 > 0).all()  # every thing point has one
        vis = np.load(tiny_world / "lidarlift_gt" / VERSION / "visibility" / f"{sd_token}.npy")
        assert vis.shape == (n, 6) and vis.dtype == bool and vis.any(0).all()
        # 9 sweeps between keyframes (1 before the first), all sharing the scene's sensor
        prev, n_prev = sd["prev"], 0
        while prev:
            n_prev += 1
            prev = nusc.get("sample_data", prev)["prev"]
        assert n_prev in (1, 11)
        for ch in CAMERA_CHANNELS:
            cam = nusc.get("sample_data", sample["data"][ch])
            dt = cam["timestamp"] - sd["timestamp"]
            assert 0 < dt < 50_000  # the camera fires while the LiDAR sweeps past it
            assert nusc.get("ego_pose", cam["ego_pose_token"])["translation"] != \
                nusc.get("ego_pose", sd["ego_pose_token"])["translation"]


def test_annotations_count_points_and_contain_static_instances(nusc, tiny_world):
    """num_lidar_pts equals the instance's labelled points; boxes of non-moving objects contain
    their points (checks the box centre, size (w, l, h) order and yaw)."""
    from nuscenes.utils.geometry_utils import points_in_box

    world = json.loads((tiny_world / "lidarlift_gt" / VERSION / "world.json").read_text())
    moving = {(s["scene_token"], i["instance_token"]) for s in world["scenes"] for i in s["instances"] if i["moving"]}
    inside = total = 0
    for sample in nusc.sample:
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pts = _load_points(tiny_world, sd["filename"])[:, :3]
        pan = np.load(tiny_world / nusc.get("panoptic", sd["token"])["filename"])["data"]
        g_from_l = _transform(nusc.get("ego_pose", sd["ego_pose_token"])) @ _transform(
            nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))
        pts_g = pts @ g_from_l[:3, :3].T + g_from_l[:3, 3]
        scene_token = sample["scene_token"]
        inst_ids = {i["instance_token"]: i["id"] for s in world["scenes"] if s["scene_token"] == scene_token
                    for i in s["instances"]}
        assert sample["anns"]
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            iid = inst_ids[ann["instance_token"]]
            mine = (pan % 1000 == iid) & (pan // 1000 < 24)
            assert ann["num_lidar_pts"] == int(mine.sum())
            if (scene_token, ann["instance_token"]) in moving or not mine.any():
                continue
            box = nusc.get_box(ann_token)
            inside += int(points_in_box(box, pts_g[mine].T, wlh_factor=1.0).sum())
            total += int(mine.sum())
    assert total > 1000 and inside / total > 0.995


# --------------------------------------------------------------------------------------------------
# The devkit's evaluator: ground truth scores 1.0, a known corruption scores what we compute
# --------------------------------------------------------------------------------------------------


def _write_predictions(nusc, root: Path, results: Path, corrupt: bool) -> tuple[np.ndarray, np.ndarray]:
    """Challenge predictions (uint8 1..16) from ground truth for mini_val; returns (gt, pred) pooled."""
    from nuscenes.eval.lidarseg.utils import get_samples_in_eval_set

    out = results / "lidarseg" / "mini_val"
    out.mkdir(parents=True)
    (results / "mini_val").mkdir()
    (results / "mini_val" / "submission.json").write_text(json.dumps({"meta": {
        "use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}}))
    gts, preds = [], []
    for sample_token in get_samples_in_eval_set(nusc, "mini_val"):
        sd_token = nusc.get("sample", sample_token)["data"]["LIDAR_TOP"]
        gt = FINE_TO_CHALLENGE[np.fromfile(root / nusc.get("lidarseg", sd_token)["filename"], np.uint8)]
        pred = np.where(gt == 0, 1, gt).astype(np.uint8)  # ignore points still need a class in 1..16
        if corrupt:  # every third point gets the next class
            pred[::3] = pred[::3] % 16 + 1
        pred.tofile(out / f"{sd_token}_lidarseg.bin")
        gts.append(gt)
        preds.append(pred)
    return np.concatenate(gts), np.concatenate(preds)


def _expected_miou(gt: np.ndarray, pred: np.ndarray) -> float:
    """Independent mIoU over challenge classes 1..16, ignoring points whose ground truth is 0;
    classes absent from both ground truth and predictions do not count."""
    valid = gt > 0
    ious = []
    for c in range(1, 17):
        inter = np.sum(valid & (gt == c) & (pred == c))
        union = np.sum(valid & ((gt == c) | (pred == c)))
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


def test_lidarseg_evaluator_gives_one_on_ground_truth_and_expected_value_on_corruption(nusc, tiny_world, tmp_path):
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval

    _write_predictions(nusc, tiny_world, tmp_path / "gt", corrupt=False)
    res = LidarSegEval(nusc, str(tmp_path / "gt"), "mini_val").evaluate()
    assert res["miou"] == pytest.approx(1.0)
    gt, pred = _write_predictions(nusc, tiny_world, tmp_path / "bad", corrupt=True)
    res = LidarSegEval(nusc, str(tmp_path / "bad"), "mini_val").evaluate()
    expected = _expected_miou(gt, pred)
    assert expected < 0.8
    assert res["miou"] == pytest.approx(expected, abs=1e-6)


def test_panoptic_evaluator_gives_pq_one_on_ground_truth(nusc, tiny_world, tmp_path):
    """nuScenes-panoptic format: instance ids per scene, stuff 0; the devkit's evaluator agrees."""
    from nuscenes.eval.lidarseg.utils import get_samples_in_eval_set
    from nuscenes.eval.panoptic.evaluate import NuScenesPanopticEval

    out = tmp_path / "panoptic" / "mini_val"
    out.mkdir(parents=True)
    (tmp_path / "mini_val").mkdir()
    (tmp_path / "mini_val" / "submission.json").write_text(json.dumps({"meta": {
        "use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}}))
    for sample_token in get_samples_in_eval_set(nusc, "mini_val"):
        sd_token = nusc.get("sample", sample_token)["data"]["LIDAR_TOP"]
        pan = np.load(tiny_world / nusc.get("panoptic", sd_token)["filename"])["data"]
        ch = FINE_TO_CHALLENGE[pan // 1000].astype(np.uint16)
        ch[ch == 0] = 1  # ignore points still need a class
        inst = np.where(ch <= 10, pan % 1000, 0).astype(np.uint16)
        np.savez_compressed(out / f"{sd_token}_panoptic.npz", data=ch * 1000 + inst)
    NuScenesPanopticEval(nusc, results_folder=str(tmp_path), eval_set="mini_val", task="segmentation",
                         min_inst_points=15, out_dir=str(tmp_path), verbose=False).evaluate()
    res = json.loads((tmp_path / "segmentation-result.json").read_text())["segmentation"]["all"]
    assert res["PQ"] == pytest.approx(1.0) and res["mIoU"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------
# Geometry: LiDAR projected with the nuScenes chain lands on the same instance in panoptic2d
# --------------------------------------------------------------------------------------------------


def test_lidar_projection_matches_panoptic2d_for_visible_points(nusc, tiny_world):
    """lidar -> ego(t_lidar) -> global -> ego(t_cam) -> cam -> round(K x): >= 99 % of the points
    the generator marks visible land on a pixel with their (fine class, instance id)."""
    gt_dir = tiny_world / "lidarlift_gt" / VERSION
    match = visible = 0
    for sample in nusc.sample:
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pts = _load_points(tiny_world, sd["filename"])
        pan = np.load(tiny_world / nusc.get("panoptic", sd["token"])["filename"])["data"]
        vis = np.load(gt_dir / "visibility" / f"{sd['token']}.npy")
        g_from_l = _transform(nusc.get("ego_pose", sd["ego_pose_token"])) @ _transform(
            nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))
        P = np.c_[pts[:, :3], np.ones(len(pts))].T
        for c, ch in enumerate(CAMERA_CHANNELS):
            cam = nusc.get("sample_data", sample["data"][ch])
            cs = nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])
            cam_from_l = np.linalg.inv(_transform(cs)) @ np.linalg.inv(
                _transform(nusc.get("ego_pose", cam["ego_pose_token"]))) @ g_from_l
            q = (cam_from_l @ P)[:3]
            uvw = np.asarray(cs["camera_intrinsic"]) @ q
            with np.errstate(divide="ignore", invalid="ignore"):
                u = np.round(uvw[0] / uvw[2])
                v = np.round(uvw[1] / uvw[2])
            img = cv2.imread(str(gt_dir / "panoptic2d" / f"{cam['token']}.png"), cv2.IMREAD_UNCHANGED)
            assert img.dtype == np.uint16 and img.shape == (cam["height"], cam["width"])
            m = vis[:, c]
            ok = m & (q[2] > 0) & (u >= 0) & (u < img.shape[1]) & (v >= 0) & (v < img.shape[0])
            match += int((img[v[ok].astype(int), u[ok].astype(int)] == pan[ok]).sum())
            visible += int(m.sum())
    share = match / visible
    assert visible > 20_000
    assert share >= 0.99, share


def test_panoptic2d_instances_are_the_lidar_instances(nusc, tiny_world):
    """An instance id means the same object (same fine class) in 2D and 3D ground truth."""
    gt_dir = tiny_world / "lidarlift_gt" / VERSION
    for scene in nusc.scene:
        samples = [s for s in nusc.sample if s["scene_token"] == scene["token"]]
        ids3d, ids2d = set(), set()
        for s in samples:
            pan = np.load(tiny_world / nusc.get("panoptic", s["data"]["LIDAR_TOP"])["filename"])["data"]
            ids3d |= {int(v) for v in np.unique(pan) if v % 1000}
            for ch in CAMERA_CHANNELS:
                img = cv2.imread(str(gt_dir / "panoptic2d" / f"{s['data'][ch]}.png"), cv2.IMREAD_UNCHANGED)
                ids2d |= {int(v) for v in np.unique(img) if v % 1000}
        by_inst3d = {v % 1000: v // 1000 for v in ids3d}
        by_inst2d = {v % 1000: v // 1000 for v in ids2d}
        shared = set(by_inst3d) & set(by_inst2d)
        assert len(shared) > 10
        assert all(by_inst3d[i] == by_inst2d[i] for i in shared)


# --------------------------------------------------------------------------------------------------
# Content: every challenge class occurs
# --------------------------------------------------------------------------------------------------


def test_all_sixteen_challenge_classes_occur(nusc, tiny_world):
    """The world guarantees every thing class per scene; the LiDAR must actually see them all.
    (The default world uses the same guarantee, 10 scenes x 6 keyframes.)"""
    seen = set()
    for sample in nusc.sample:
        fine = np.fromfile(tiny_world / nusc.get("lidarseg", sample["data"]["LIDAR_TOP"])["filename"], np.uint8)
        seen |= set(np.unique(FINE_TO_CHALLENGE[fine]).tolist())
    missing = [CHALLENGE_CLASSES[c - 1] for c in range(1, 17) if c not in seen]
    assert not missing, missing
    world = json.loads((tiny_world / "lidarlift_gt" / VERSION / "world.json").read_text())
    for s in world["scenes"]:
        assert set(THING_FINE_NAMES) <= set(s["world"]["things"])


def test_a_per_pixel_colour_rule_does_not_recover_the_2d_classes(nusc, tiny_world):
    """Classes share colours (grey cars, walls, roads; green terrain and trees): the best colour ->
    class lookup (RGB quantised to 16 levels), learned on the train scene's images, scores a low
    mIoU on the val scenes' images."""
    gt_dir = tiny_world / "lidarlift_gt" / VERSION

    def pixels(split_names):
        X, Y = [], []
        for s in nusc.sample:
            if nusc.get("scene", s["scene_token"])["name"] not in split_names:
                continue
            for ch in CAMERA_CHANNELS:
                sd = nusc.get("sample_data", s["data"][ch])
                X.append(cv2.imread(str(tiny_world / sd["filename"])).reshape(-1, 3) // 16)
                Y.append(FINE_TO_CHALLENGE[cv2.imread(str(gt_dir / "panoptic2d" / f"{sd['token']}.png"),
                                                      cv2.IMREAD_UNCHANGED).reshape(-1) // 1000])
        X = np.concatenate(X).astype(np.int64)
        return X[:, 0] * 256 + X[:, 1] * 16 + X[:, 2], np.concatenate(Y)

    x_tr, y_tr = pixels({"scene-0061"})
    x_te, y_te = pixels({"scene-0103", "scene-0916"})
    counts = np.zeros((4096, 17), np.int64)
    np.add.at(counts, (x_tr, y_tr), 1)
    pred = counts.argmax(1)[x_te]
    valid = y_te > 0
    ious = [np.sum(valid & (y_te == c) & (pred == c)) / np.sum(valid & ((y_te == c) | (pred == c)))
            for c in range(1, 17) if np.any(valid & ((y_te == c) | (pred == c)))]
    assert np.mean(ious) < 0.3


# --------------------------------------------------------------------------------------------------
# Determinism and bad input
# --------------------------------------------------------------------------------------------------

MICRO = dict(scenes=1, samples_per_scene=1, image_width=96, image_height=54, sweeps_before_first=0)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if f.name == "world.json":  # holds timings
            continue
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_world_other_seed_other_world(tmp_path):
    generate(tmp_path / "a", seed=3, **MICRO)
    assert main(["--out", str(tmp_path / "b"), "--seed", "3", "--scenes", "1", "--samples-per-scene", "1",
                 "--image-width", "96", "--image-height", "54", "--sweeps-before-first", "0"]) == 0
    generate(tmp_path / "c", seed=4, **MICRO)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


@pytest.mark.parametrize("params, name", [
    (dict(beams=-1), "beams"),
    (dict(scenes=0), "scenes"),
    (dict(class_frequency={"vehicle.spaceship": 2.0}), "class_frequency"),
    (dict(image_width=0), "image_width"),
    (dict(scenes=11), "scenes"),
    (dict(version="v2.0"), "version"),
    (dict(sensor="hdl16"), "sensor"),
    (dict(azimuth_steps=0), "azimuth_steps"),
    (dict(jpeg_quality=0), "synth.jpeg_quality"),
    (dict(ego_speed_min=9.0, ego_speed_max=6.0), "ego_speed_min"),
    (dict(beam=16), "synth.beam"),  # unknown keys are refused, not ignored
])
def test_invalid_params_raise_valueerror_naming_the_parameter(tmp_path, params, name):
    with pytest.raises(ValueError, match=name):
        generate(tmp_path, **params)
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--beams", "-3"]) == 2
    assert "beams" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# LiDAR presets (synth.sensor)
# --------------------------------------------------------------------------------------------------

#: Points per keyframe of the real sensors in a street (nuScenes LIDAR_TOP; SemanticKITTI's HDL-64E).
REAL_POINTS = {"nuscenes32": 34000, "kitti64": 120000}


@pytest.mark.parametrize("sensor", ["nuscenes32", "kitti64", "os128"])
def test_lidar_presets_fire_like_the_real_sensors(sensor):
    """Each preset's beams, rotation and firing pattern are the real sensor's, and a keyframe of a
    synthetic street holds the real sensor's point count within 10% (the 128-beam preset fires exactly
    the OS1-128's 128 x 1024 pattern, so it returns what that sensor would)."""
    from lidarlift.scan import local_spacing
    from lidarlift.synth.sensors import SceneCaster, cast_sweep, lidar_calib
    from lidarlift.synth.world import WorldParams, build_scene

    p = WorldParams.from_config({"sensor": sensor}).validate()
    spec = p.lidar
    gaps = np.degrees(local_spacing(np.radians(spec.elevations_deg)))
    rate = round(1 / spec.period_s)
    if sensor == "nuscenes32":
        assert spec.beams == 32 and np.allclose(gaps, 1.333, atol=0.01) and rate == 20
        assert spec.elevations_deg[0] == -30.67 and spec.elevations_deg[-1] == 10.67
    elif sensor == "kitti64":  # HDL-64E: +2 to -24.8 deg, 1/3 deg upper block, ~1/2 deg lower block
        assert spec.beams == 64 and rate == 10 and (spec.elevations_deg[-1], spec.elevations_deg[0]) == (2.0, -24.8)
        assert np.allclose(gaps[40:], 1 / 3, atol=1e-6) and np.allclose(gaps[:30], 16 / 31, atol=1e-6)
    else:
        assert spec.beams == 128 and spec.azimuth_steps == 1024 and rate == 10 and np.allclose(gaps, 45 / 127)
    # 0.5 s keyframes at any rotation rate; the same scene duration (the same streets for one seed)
    assert p.keyframe_sweeps * spec.period_s == pytest.approx(0.5) and p.lead_sweeps == p.keyframe_sweeps - 1
    assert p.scene_duration == pytest.approx(WorldParams.from_config().scene_duration)
    counts = []
    for index in (0, 1):
        caster = SceneCaster(build_scene(p, index))
        sweep = cast_sweep(caster, p, 0.55, np.random.default_rng(index), lidar_calib(spec.mount_height))
        counts.append(len(sweep.points))
        ring = sweep.points[:, 4]
        assert ring.min() >= 0 and ring.max() <= spec.beams - 1 and np.array_equal(ring, np.round(ring))
    if sensor in REAL_POINTS:
        assert abs(np.mean(counts) / REAL_POINTS[sensor] - 1) < 0.1
    else:
        assert 0.5 * 128 * 1024 < np.mean(counts) < 128 * 1024


def test_preset_overrides_and_the_world_record(tmp_path):
    """``beams`` spreads that many beams over the preset's range; world.json records the LiDAR used."""
    from lidarlift.synth.world import WorldParams

    p = WorldParams.from_config({"sensor": "kitti64", "beams": 16, "azimuth_steps": 300}).validate()
    assert p.lidar.beams == 16 and p.lidar.elevations_deg[0] == -24.8 and p.lidar.azimuth_steps == 300
    assert WorldParams.from_config({"sensor": "auto"}).validate().lidar.name == "nuscenes32"  # generate() writes the nuScenes layout
    generate(tmp_path, seed=2, scenes=1, samples_per_scene=1, image_width=32, image_height=18, sensor="os128",
             beams=8, azimuth_steps=200)
    world = json.loads((tmp_path / "lidarlift_gt" / "v1.0-mini" / "world.json").read_text())
    assert world["params"]["sensor"] == "os128" and world["lidar"]["name"] == "os128"
    assert len(world["lidar"]["elevations_deg"]) == 8 and world["lidar"]["period_s"] == 0.1
    assert world["lidar"]["sweeps_per_keyframe"] == 5 and world["totals"]["sweeps"] == 5


# --------------------------------------------------------------------------------------------------
# The dataroot: data the generator did not write is never touched (issue 14)
# --------------------------------------------------------------------------------------------------

def _tree(root: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under root (symlinks and folders by their paths)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


def _fake_nuscenes(root: Path) -> None:
    """A dataset tree a user might point dataset.dataroot at: the nuScenes layout, none of it lidarlift's."""
    for rel, data in {"v1.0-mini/scene.json": b'[{"name": "scene-0061"}]', "samples/CAM_FRONT/a.jpg": b"\xff\xd8jpeg",
                      "sweeps/LIDAR_TOP/b.pcd.bin": b"\x00" * 40, "lidarseg/v1.0-mini/c_lidarseg.bin": b"\x01\x02",
                      "panoptic/v1.0-mini/c_panoptic.npz": b"PK", "maps/m.png": b"\x89PNG", "LICENSE": b"CC BY-NC-SA"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_a_dataset_under_dataroot_survives_and_the_run_names_the_path_and_dataset_kind(tmp_path, capsys):
    """A nuScenes copy under dataroot (dataset.kind left at synthetic): generate() and the CLI stop with an
    error naming the folder and `dataset.kind: existing`, and every file is still there, byte for byte,
    with nothing added (no marker, no staging folder)."""
    from lidarlift.synth.dataroot import ForeignDatarootError
    from lidarlift.synth.kitti_writer import write_semantickitti

    root = tmp_path / "nuscenes"
    _fake_nuscenes(root)
    before = _tree(root)
    with pytest.raises(ForeignDatarootError, match="dataset.kind: existing") as err:
        generate(root, seed=3, **MICRO)
    assert str(root) in str(err.value)
    assert main(["--out", str(root), "--scenes", "1", "--samples-per-scene", "1"]) == 2
    assert "dataset.kind: existing" in capsys.readouterr().err
    with pytest.raises(ForeignDatarootError, match="dataset.kind: existing"):  # the SemanticKITTI layout writer too
        write_semantickitti(None, root)
    assert _tree(root) == before


def test_the_generator_regenerates_only_its_own_world_complete_or_not_at_all(tmp_path, monkeypatch):
    """An absent dataroot is created; a world the generator wrote (its marker) is regenerated, the synth
    rule's done-file beside it kept; a failure half-way leaves the previous world as it was; a file
    someone added to the world makes the next run refuse and keeps that file; a world from before the
    marker (lidarlift_gt/ beside the generator's own folders) is recognised."""
    from lidarlift.synth import cli
    from lidarlift.synth.dataroot import MARKER, ForeignDatarootError

    root = tmp_path / "world"
    generate(root, seed=3, **MICRO)
    marker = json.loads((root / MARKER).read_text())
    assert marker["state"] == "complete" and marker["generator"] == "lidarlift.synth"
    assert sorted(marker["entries"]) == sorted(p.name for p in root.iterdir() if p.name != MARKER)
    assert {"v1.0-mini", "samples", "sweeps", "lidarlift_gt"} <= set(marker["entries"])

    (root / ".lidarlift_world_done").write_text("done\n")  # what the synth rule writes after generate()
    generate(root, seed=4, **MICRO)
    generate(tmp_path / "fresh", seed=4, **MICRO)
    assert _digest(root) != _digest(tmp_path / "fresh")  # only by the done-file
    (root / ".lidarlift_world_done").unlink()
    assert _digest(root) == _digest(tmp_path / "fresh")
    before = _tree(root)

    def broken_scene(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cli, "_generate_scene", broken_scene)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(root, seed=5, **MICRO)
    assert _tree(root) == before  # the seed-4 world, whole; no staging or trash left
    with pytest.raises(RuntimeError, match="disk full"):
        generate(tmp_path / "never", seed=5, **MICRO)
    assert not any((tmp_path / "never").iterdir())  # absent: not even a marker
    monkeypatch.undo()

    generate(root, seed=3, version="v1.0-trainval", **MICRO)  # the old v1.0-mini tables were the generator's
    assert (root / "v1.0-trainval" / "scene.json").exists() and not (root / "v1.0-mini").exists()

    for extra in (root / "notes.txt", root / "samples" / "CAM_FRONT" / "mine.jpg"):  # beside or inside the world
        extra.write_text("keep me")
        with pytest.raises(ForeignDatarootError, match=extra.relative_to(root).parts[0]):
            generate(root, seed=3, **MICRO)
        assert extra.read_text() == "keep me"
        extra.unlink()

    (root / MARKER).unlink()  # a world from before the marker
    generate(root, seed=3, **MICRO)
    assert json.loads((root / MARKER).read_text())["state"] == "complete"


def test_a_workflow_run_on_a_dataset_with_dataset_kind_left_synthetic_fails_and_keeps_it(tmp_path):
    """The whole workflow, dataset.dataroot pointed at a nuScenes copy and dataset.kind left at its
    default (synthetic): the synth job fails with the error naming the folder and `dataset.kind:
    existing`, and the copy is intact."""
    import shutil
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parents[1]
    wd = tmp_path / "run"
    wd.mkdir()
    for name in ("Snakefile", "rules", "workflow", "config", "envs", "profiles", "report"):
        src = repo / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, wd / name)
    root = tmp_path / "nuscenes"
    _fake_nuscenes(root)
    before = _tree(root)
    layer = yaml.safe_load((repo / "tests" / "data" / "tiny_config.yaml").read_text())
    layer["dataset"] = {"dataroot": str(root)}
    (wd / "tiny.yaml").write_text(yaml.safe_dump(layer))
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), f"{root}/.lidarlift_world_done", "--cores", "1",
                           "--configfile", "tiny.yaml"], cwd=wd, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    log = (wd / "results" / "logs" / "synth.log").read_text()
    assert "dataset.kind: existing" in log and str(root) in log, log[-2000:]
    assert _tree(root) == before
