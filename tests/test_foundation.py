"""Foundation: label spaces, the artifact convention, the manifest, geometry, dataset checks."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lidarlift import artifacts as A
from lidarlift.classes import (
    CHALLENGE_CLASSES, FINE_CLASSES, FINE_TO_CHALLENGE, NUSCENES16, candidate_bit, candidates_to_sets, label_space,
)
from lidarlift.datasets import DatasetError, read_lidar
from lidarlift.datasets.readers import read_lidar_with_ring
from lidarlift.datasets.nuscenes import check_dataroot
from lidarlift.geometry import (
    GeometryError, check_intrinsic, check_rigid, invert, lidar_to_cam, make_transform, matrix_to_quaternion,
    project, quaternion_to_matrix, transform_points,
)
from lidarlift.manifest import CameraFrame, LidarFrame, Manifest, SampleRecord


def test_fine_classes_match_devkit_colormap_and_mapping():
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper
    from nuscenes.utils.color_map import get_colormap

    assert list(get_colormap()) == list(FINE_CLASSES)
    # the devkit's mapper needs a NuScenes object only for its category list; build it by hand
    mapper = LidarsegClassMapper.__new__(LidarsegClassMapper)
    mapper.ignore_class = LidarsegClassMapper.get_ignore_class()
    fine2coarse = mapper.get_fine2coarse()
    coarse2idx = mapper.get_coarse2idx()
    for i, name in enumerate(FINE_CLASSES):
        assert FINE_TO_CHALLENGE[i] == coarse2idx[fine2coarse[name]], name
    assert [c for c, i in sorted(coarse2idx.items(), key=lambda kv: kv[1]) if i > 0] == list(CHALLENGE_CLASSES)


def test_candidate_bits_roundtrip():
    labels = np.array([1, 4, 16])
    mask = candidate_bit(labels)
    sets = candidates_to_sets(mask, 16)
    assert sets.sum(1).tolist() == [1, 1, 1]
    assert [int(np.argmax(r)) + 1 for r in sets] == [1, 4, 16]
    assert NUSCENES16.all_candidates == 0xFFFF
    with pytest.raises(ValueError, match="labels.space"):
        label_space("cityscapes")
    with pytest.raises(ValueError, match="unknown class 'tree'"):
        NUSCENES16.index("tree")


def _write_preseg(path, n=5):
    with A.write_store(path, "presegment", shard="s", sample_tokens=["t"], params={"eps": 0.5}) as g:
        A.put(g, "point_offsets", A.offsets_from_counts([n]))
        A.put(g, "ground", np.arange(n) % 2 == 0)
        A.put(g, "segment_id", np.arange(n))
        A.put(g, "ground_cell", -np.ones(n))


def test_store_roundtrip_schema_and_atomicity(tmp_path):
    path = tmp_path / "presegment" / "s.zarr"
    _write_preseg(path)
    g = A.open_store(path, "presegment")
    assert A.read(g, "segment_id").tolist() == [0, 1, 2, 3, 4]
    assert A.read(g, "segment_id").dtype == np.int32
    assert g.attrs["params"] == {"eps": 0.5}
    with pytest.raises(A.ArtifactError, match="expected 'associate'"):
        A.open_store(path, "associate")
    # a failing writer leaves the old store untouched and no temporary behind
    with pytest.raises(RuntimeError):
        with A.write_store(path, "presegment", shard="s", sample_tokens=["t"]) as g2:
            A.put(g2, "point_offsets", A.offsets_from_counts([1]))
            raise RuntimeError("boom")
    assert A.read(A.open_store(path, "presegment"), "segment_id").tolist() == [0, 1, 2, 3, 4]
    assert [p.name for p in path.parent.iterdir()] == ["s.zarr"]
    # an incomplete store is refused
    with pytest.raises(A.ArtifactError, match="not written"):
        with A.write_store(tmp_path / "x.zarr", "presegment", shard="s", sample_tokens=["t"]) as g3:
            A.put(g3, "ground", np.zeros(2, bool))
    assert not (tmp_path / "x.zarr").exists()


def test_store_version_check(tmp_path):
    path = tmp_path / "s.zarr"
    _write_preseg(path)
    import zarr

    zarr.open_group(str(path), mode="r+").attrs["schema_version"] = 99
    with pytest.raises(A.ArtifactError, match="schema version 99"):
        A.open_store(path, "presegment")


def test_per_image_arrays_chunk_one_image(tmp_path):
    with A.write_store(tmp_path / "sp.zarr", "superpixels", shard="s", sample_tokens=["t"]) as g:
        A.put(g, "labels", np.zeros((3, 8, 10), np.int32))
    arr = A.open_store(tmp_path / "sp.zarr", "superpixels")["labels"]
    assert arr.chunks == (1, 8, 10)


def test_geometry_chain_and_checks():
    rng = np.random.default_rng(0)
    q = rng.normal(size=4)
    r = quaternion_to_matrix(q)
    assert np.allclose(r @ r.T, np.eye(3)) and np.isclose(np.linalg.det(r), 1)
    assert np.allclose(quaternion_to_matrix(matrix_to_quaternion(r)), r)
    t = make_transform(r, [1, 2, 3])
    assert np.allclose(invert(t) @ t, np.eye(4))
    # a point 10 m ahead of an identity camera projects to the principal point
    k = np.array([[100.0, 0, 50], [0, 100, 40], [0, 0, 1]])
    uv, depth = project(np.array([[0.0, 0, 10], [1, 0, -5]]), k)
    assert np.allclose(uv[0], [50, 40]) and depth[0] == 10 and np.isnan(uv[1]).all()
    # ego moved 1 m forward between lidar and camera time: compensation moves the point 1 m closer
    ego0, ego1 = np.eye(4), make_transform(np.eye(3), [1, 0, 0])
    cam_to_ego = make_transform(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float), [0, 0, 0])
    m = lidar_to_cam(np.eye(4), ego0, ego1, cam_to_ego)
    assert np.allclose(transform_points(m, np.array([[10.0, 0, 0]])), [[0, 0, 9]])
    with pytest.raises(GeometryError, match="not orthonormal"):
        bad = np.eye(4); bad[0, 0] = 2
        check_rigid(bad, "calibrated_sensor X")
    with pytest.raises(GeometryError, match="outside the 100x80 image"):
        check_intrinsic(np.array([[100.0, 0, 150], [0, 100, 40], [0, 0, 1]]), 100, 80, "cam")


def test_read_lidar_rejects_bad_files(tmp_path):
    good = np.arange(20, dtype=np.float32).reshape(4, 5)
    p = tmp_path / "a.pcd.bin"
    good.tofile(p)
    assert read_lidar(p, sample="tok").shape == (4, 4)
    good.ravel()[:-2].tofile(p)
    with pytest.raises(DatasetError, match="sample tok: .* truncated"):
        read_lidar(p, sample="tok")
    p.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty"):
        read_lidar(p, sample="tok")
    bad = good.copy(); bad[2, 1] = np.nan
    bad.tofile(p)
    with pytest.raises(DatasetError, match="NaN or infinite"):
        read_lidar(p, sample="tok")
    with pytest.raises(DatasetError, match="does not exist"):
        read_lidar(tmp_path / "missing.bin", sample="tok")


def _sweep_rows(n: int, seed: int = 0) -> np.ndarray:
    """(n, 5) float32 rows like a nuScenes sweep: a ring of returns around the sensor, ground below it
    (negative z), intensity 0..255 and integer ring ids 0..31."""
    rng = np.random.default_rng(seed)
    a, r = rng.uniform(-np.pi, np.pi, n), rng.uniform(3, 60, n)
    return np.column_stack([r * np.cos(a), r * np.sin(a), rng.uniform(-1.9, 2.0, n), rng.integers(0, 256, n),
                            rng.integers(0, 32, n)]).astype(np.float32)


def test_a_truncated_sweep_is_caught_by_its_byte_size(tmp_path):
    """A 1001-byte .pcd.bin holds 250 floats = 50 whole rows of 5 plus one stray byte: it is truncated,
    not 50 points; the error names the sample, the file and the row size it expected."""
    p = tmp_path / "cut.pcd.bin"
    p.write_bytes(_sweep_rows(60).tobytes()[:1001])
    with pytest.raises(DatasetError, match=r"sample tok: lidar file .*cut\.pcd\.bin is truncated .*1001 bytes .*5 columns x 4 bytes = 20"):
        read_lidar(p, "nuscenes", sample="tok")
    p.write_bytes(_sweep_rows(60)[:, :4].tobytes()[:-4])  # a KITTI .bin one float short
    with pytest.raises(DatasetError, match="truncated .* 4 columns x 4 bytes = 16"):
        read_lidar(p, "kitti", sample="tok")


def test_a_sweep_read_with_the_wrong_column_count_is_named(tmp_path):
    """nuScenes rows (x, y, z, intensity, ring) read as KITTI (x, y, z, reflectance) shift the columns:
    the ground's negative z lands in the reflectance column and intensities up to 255 become
    coordinates; KITTI rows read as nuScenes put coordinates in the ring column. 400 rows make files
    whose sizes fit both layouts, so only the values can tell; the error names the file and the layout."""
    rows = _sweep_rows(400)
    nus = tmp_path / "sweep.pcd.bin"
    rows.tofile(nus)
    assert read_lidar(nus, "nuscenes").shape == (400, 4)
    as_kitti = np.fromfile(nus, np.float32).reshape(-1, 4)
    assert np.abs(as_kitti[:, :3]).max() > 60  # read silently before: an intensity taken for a coordinate
    with pytest.raises(DatasetError, match=r"sample s: lidar file .*sweep\.pcd\.bin: .* negative .* not a KITTI \.bin .* nuScenes"):
        read_lidar(nus, "kitti", sample="s")
    kitti = tmp_path / "000000.bin"
    rows[:, :4].tofile(kitti)
    assert read_lidar(kitti, "kitti").shape == (400, 4)
    with pytest.raises(DatasetError, match=r"lidar file .*000000\.bin: .* not a nuScenes \.pcd\.bin .* KITTI"):
        read_lidar(kitti, "nuscenes", sample="s")
    timed = rows.copy()
    timed[:, 4] = np.linspace(0.0, 0.05, 400)  # a 5th column of per-point times, not ring ids
    timed.tofile(tmp_path / "timed.pcd.bin")
    with pytest.raises(DatasetError, match=r"rows have a ring id that is not an integer in 0\.\.1023 \(first 0\.000125"):
        read_lidar(tmp_path / "timed.pcd.bin", "nuscenes", sample="s")
    pts, ring = read_lidar_with_ring(nus, "nuscenes")
    assert np.array_equal(ring, rows[:, 4].astype(np.int64)) and read_lidar_with_ring(kitti, "kitti")[1] is None
    far = rows.copy()
    far[7, 0] = 5000.0  # no LiDAR returns from 5 km
    far.tofile(nus)
    with pytest.raises(DatasetError, match=r"sweep\.pcd\.bin: 1 of 400 rows have a coordinate beyond 1000 m \(first row 7"):
        read_lidar(nus, "nuscenes", sample="s")


def test_not_a_nuscenes_dataroot_names_what_is_missing(tmp_path):
    with pytest.raises(DatasetError, match="no 'v1.0-mini/' table folder"):
        check_dataroot(tmp_path, "v1.0-mini")
    (tmp_path / "v1.0-mini").mkdir()
    (tmp_path / "v1.0-mini" / "scene.json").write_text("[]")
    with pytest.raises(DatasetError, match="lacks category.json.*sample_data.json"):
        check_dataroot(tmp_path, "v1.0-mini")


def test_manifest_json_roundtrip(tmp_path):
    eye = np.eye(4).tolist()
    lf = LidarFrame("samples/LIDAR_TOP/x.pcd.bin", 10, eye, eye, "sd")
    cam = CameraFrame("CAM_FRONT", "samples/CAM_FRONT/x.jpg", 12, 100, 80, np.eye(3).tolist(), eye, eye, "c")
    m = Manifest("nuscenes", str(tmp_path), "v1.0-mini", ["CAM_FRONT"], "nuscenes16",
                 [SampleRecord("tok", "scene-0061", "train", 0, lf, [cam], prev_sweeps=[lf])])
    m.to_json(tmp_path / "manifest.json")
    back = Manifest.from_json(tmp_path / "manifest.json")
    assert back == m and back.shards == ["scene-0061"]
    with pytest.raises(KeyError, match="scene-0103"):
        back.shard_samples("scene-0103")
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["manifest_version"] = 0
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="re-run the 'manifest' rule"):
        Manifest.from_json(tmp_path / "manifest.json")
