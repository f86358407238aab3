"""Exports read back equal to what was written, in every format; bad labels give clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lidarlift.classes import CHALLENGE_CLASSES, NUSCENES16
from lidarlift.evaluate import export as E

CAR, PED, ROAD = (NUSCENES16.index(c) for c in ("car", "pedestrian", "driveable_surface"))


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    sem = rng.integers(1, 17, 5000)
    inst = np.where(NUSCENES16.thing_mask[sem], rng.integers(0, 40, 5000), 0)
    return sem, inst


def test_lidarseg_bin_roundtrip_and_rejects_ignore(tmp_path, labels):
    sem, _ = labels
    p = E.write_lidarseg_bin(tmp_path / "lidarseg" / "mini_val" / "tok_lidarseg.bin", sem)
    back = E.read_lidarseg_bin(p)
    assert back.dtype == np.uint8 and np.array_equal(back, sem)
    assert p.stat().st_size == sem.size
    with pytest.raises(E.ExportError, match="1..16"):
        E.write_lidarseg_bin(tmp_path / "bad.bin", np.array([0, 3]))
    assert np.array_equal(E.read_lidarseg_bin(E.write_lidarseg_bin(tmp_path / "pl.bin", np.array([0, 3]), allow_ignore=True)), [0, 3])
    assert not (tmp_path / "bad.bin").exists()


def test_panoptic_npz_roundtrip_stuff_has_no_instance(tmp_path, labels):
    sem, inst = labels
    values = E.panoptic_values(sem, np.where(sem > 10, 5, inst), NUSCENES16.thing_mask)
    assert values.dtype == np.uint16
    assert ((values % 1000)[sem > 10] == 0).all()  # stuff classes carry no instance id
    p = E.write_panoptic_npz(tmp_path / "tok_panoptic.npz", values)
    back = E.read_panoptic_npz(p)
    assert back.dtype == np.uint16 and np.array_equal(back, values)
    assert np.array_equal(back // 1000, sem) and np.array_equal(back % 1000, inst)
    with np.load(p) as z:
        assert list(z.keys()) == ["data"]
    with pytest.raises(E.ExportError, match="0..999"):
        E.panoptic_values(np.array([CAR]), np.array([1000]), NUSCENES16.thing_mask)


def test_submission_json_has_the_meta_block(tmp_path):
    p = E.write_submission_json(tmp_path / "mini_val" / "submission.json", meta={"task": "segmentation"})
    meta = json.loads(p.read_text())["meta"]
    assert {"use_camera", "use_lidar", "use_radar", "use_map", "use_external"} <= set(meta) and meta["task"] == "segmentation"


def test_semantickitti_label_roundtrip_challenge_and_raw_ids(tmp_path, labels):
    sem, inst = labels
    p = E.write_kitti_label(tmp_path / "000000.label", E.kitti_label_values(sem, inst, raw_ids=False))
    raw = np.fromfile(p, dtype=np.uint32)
    assert np.array_equal(raw & 0xFFFF, sem) and np.array_equal(raw >> 16, inst)
    s2, i2 = E.read_kitti_label(p)
    assert np.array_equal(s2, sem) and np.array_equal(i2, inst)
    # 19-class train ids go out as raw SemanticKITTI ids (car 10, road 40, traffic-sign 81) and come back
    train = np.array([0, 1, 9, 19, 13])
    p = E.write_kitti_label(tmp_path / "000001.label", E.kitti_label_values(train, np.array([0, 7, 0, 0, 0]), raw_ids=True))
    assert (np.fromfile(p, dtype=np.uint32) & 0xFFFF).tolist() == [0, 10, 40, 81, 50]
    s3, i3 = E.read_kitti_label(p, raw_ids=True)
    assert s3.tolist() == train.tolist() and i3.tolist() == [0, 7, 0, 0, 0]
    from lidarlift.datasets.semantickitti import RAW_TO_TRAIN

    assert np.array_equal(RAW_TO_TRAIN[E.KITTI_LEARNING_MAP_INV], np.arange(20))  # inverse of the adapter's learning_map


def test_cluster_label_roundtrip_pointsam_layout(tmp_path):
    sem = np.array([CAR, CAR, PED, ROAD, CAR, 0])
    inst = np.array([1, 2, 1, 0, 0, 0])
    rows = E.cluster_label_values(sem, inst)
    assert rows.dtype == np.uint16 and rows.shape == (6, 2)
    # PointSAM's BIN_CLASSES: car 0, pedestrian 7, ignore 10; instance ids 0-based, 65535 = none
    assert rows.tolist() == [[0, 0], [1, 0], [0, 7], [65535, 10], [65535, 10], [65535, 10]]
    p = E.write_cluster_bin(tmp_path / "n008__LIDAR_TOP__1.pcd.bin", rows)
    assert p.stat().st_size == 6 * 2 * 2
    s2, i2 = E.read_cluster_bin(p)
    assert s2.tolist() == [CAR, CAR, PED, 0, 0, 0] and i2.tolist() == [1, 2, 1, 0, 0, 0]
    # PointSAM's bin2npz reading of the same file gives the nuScenes panoptic values we started from
    raw = np.fromfile(p, dtype=np.uint16).reshape(-1, 2)
    valid = raw[:, 0] != 65535
    npz = np.zeros(len(raw), np.int64)
    npz[valid] = E.CLUSTER_TO_CHALLENGE[raw[valid, 1]].astype(np.int64) * 1000 + raw[valid, 0] + 1
    assert npz.tolist() == [4001, 4002, 7001, 0, 0, 0]
    assert [CHALLENGE_CLASSES[E.CLUSTER_TO_CHALLENGE[c] - 1] for c in range(10)] == [
        "car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle", "pedestrian", "traffic_cone", "barrier"]
    (tmp_path / "odd.bin").write_bytes(b"\x00\x00\x01\x00\x02\x00")
    with pytest.raises(E.ExportError, match="not pairs"):
        E.read_cluster_bin(tmp_path / "odd.bin")


def test_export_sample_writes_every_layout(tmp_path, labels):
    sem, inst = labels
    files = E.export_sample(tmp_path, formats=["nuscenes", "semantickitti", "clusterlabel"], split_folder="mini_val",
                            sd_token="sd1", shard="scene-0103", index=3, lidar_basename="x__LIDAR_TOP__5.pcd.bin",
                            sem=sem, inst=inst, thing_mask=NUSCENES16.thing_mask, kitti_raw_ids=False,
                            allow_ignore=False, num_classes=16)
    rel = sorted(str(f.relative_to(tmp_path)) for f in files)
    assert rel == ["clusterlabel/x__LIDAR_TOP__5.pcd.bin", "nuscenes/lidarseg/mini_val/sd1_lidarseg.bin",
                   "nuscenes/panoptic/mini_val/sd1_panoptic.npz", "semantickitti/sequences/scene-0103/predictions/000003.label"]
    with pytest.raises(E.ExportError, match="evaluate.export.formats"):
        E.export_sample(tmp_path, formats=["ply"], split_folder="v", sd_token="s", shard="x", index=0, lidar_basename="b",
                        sem=sem, inst=inst, thing_mask=NUSCENES16.thing_mask, kitti_raw_ids=False, allow_ignore=False,
                        num_classes=16)
