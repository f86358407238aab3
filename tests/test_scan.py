"""Angular resolution measured from a sweep (lidarlift.scan): known beam layouts ray-cast at a simple
scene, with ring ids and without (elevation histogram), non-uniform spacing, missing beams, and clouds
that have no beam structure; and on the synthetic world against the generator's own beams."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lidarlift.datasets import DatasetError
from lidarlift.scan import ScanError, ScanResolution, fixed_resolution, local_spacing, measure_scan, read_sweep

HDL64E = np.concatenate([np.linspace(-24.8, -8.8, 32), 2.0 - np.arange(32)[::-1] / 3.0])  # 1/2 and 1/3 deg blocks


def scan_room(elevations_deg: np.ndarray, azimuth_steps: int, seed: int = 0, dropout: float = 0.03,
              height: float = 1.8, radius: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, 3) and ring ids (N,) of a spinning LiDAR at ``height`` over a ground plane inside a
    cylindrical wall of ``radius`` m (every ray returns), with 1 cm range noise and random dropout."""
    rng = np.random.default_rng(seed)
    el = np.radians(np.asarray(elevations_deg, float))
    az = (np.arange(azimuth_steps) + rng.uniform()) * 2 * np.pi / azimuth_steps
    e, a = np.meshgrid(el, az, indexing="ij")
    ring = np.broadcast_to(np.arange(len(el))[:, None], e.shape).ravel()
    e, a = e.ravel(), a.ravel()
    t_wall = radius / np.cos(e)
    with np.errstate(divide="ignore"):
        t_ground = np.where(e < 0, height / np.sin(-e), np.inf)
    t = np.minimum(t_wall, t_ground) + rng.normal(0, 0.01, e.shape)
    d = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], 1)
    keep = rng.random(len(t)) >= dropout
    return (d * t[:, None])[keep], ring[keep]


@pytest.mark.parametrize("use_ring", [True, False], ids=["ring", "histogram"])
@pytest.mark.parametrize("name,elev,steps", [
    ("hdl32", np.linspace(-30.67, 10.67, 32), 1085),
    ("hdl64e", HDL64E, 2083),
    ("os128", np.linspace(-22.5, 22.5, 128), 1024),
])
def test_measured_spacing_matches_the_beams(name, elev, steps, use_ring):
    xyz, ring = scan_room(elev, steps)
    res = measure_scan(xyz, ring if use_ring else None)
    assert res.source == ("ring" if use_ring else "histogram")
    # each point's vertical spacing is its own beam block's (the HDL-64E's 1/3 deg upper, ~1/2 deg lower)
    truth = local_spacing(np.radians(elev))[ring]
    el = np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1]))
    err = np.abs(res.vertical_spacing(el) / truth - 1)
    inside = (el > np.radians(elev[0] + 2.5)) & (el < np.radians(elev[-1] - 2.5))  # the histogram's windows
    assert np.median(err[inside]) < 0.02 and np.percentile(err[inside], 95) < (0.05 if use_ring else 0.12)
    assert abs(res.azimuth_step / (2 * math.pi / steps) - 1) < 0.01
    # "one beam" is the larger of the vertical spacing and the azimuth step
    assert np.allclose(res.spacing(xyz), np.maximum(res.vertical_spacing(el), res.azimuth_step))
    if use_ring:
        assert res.beams == len(elev)


def test_non_uniform_blocks_keep_their_own_spacing():
    xyz, ring = scan_room(HDL64E, 2083)
    for r in (measure_scan(xyz, ring), measure_scan(xyz)):
        upper, lower = r.vertical_spacing(np.radians([-3.0, -16.0]))
        assert abs(math.degrees(upper) - 1 / 3) < 0.02 and abs(math.degrees(lower) - 16 / 31) < 0.03


def test_a_missing_beam_changes_the_local_median_little():
    elev = np.linspace(-30.67, 10.67, 32)
    xyz, ring = scan_room(elev, 1085)
    keep = ring != 20  # a beam with no return at all (sky, a dead laser)
    res = measure_scan(xyz[keep], ring[keep])
    assert res.beams == 31
    assert np.allclose(np.degrees(res.vertical), 41.34 / 31, rtol=0.02)


def test_a_zero_ring_column_falls_back_to_the_histogram():
    xyz, _ = scan_room(np.linspace(-22.5, 22.5, 128), 1024)
    res = measure_scan(xyz, np.zeros(len(xyz), np.int64))
    assert res.source == "histogram" and abs(math.degrees(res.median_vertical_spacing) - 45 / 127) < 0.01


def test_clouds_without_beams_are_refused():
    rng = np.random.default_rng(0)
    r, a = rng.uniform(3, 37, 30000), rng.uniform(-np.pi, np.pi, 30000)
    ground = np.column_stack([r * np.cos(a), r * np.sin(a), rng.normal(-1.84, 0.05, 30000)])
    with pytest.raises(ScanError, match="no beam structure"):
        measure_scan(ground)
    with pytest.raises(ScanError, match="from 3 points"):
        measure_scan(np.array([[10.0, 0, 0], [0, 10, 0], [10, 10, 1]]))
    # a given resolution needs no structure
    fixed = fixed_resolution(0.5)
    assert np.allclose(fixed.spacing(ground), math.radians(0.5))
    uni = ScanResolution.uniform(32, -30.67, 10.67, 1085)
    assert abs(math.degrees(uni.median_vertical_spacing) - 41.34 / 31) < 1e-9


def test_read_sweep_names_the_file_without_structure(tmp_path):
    rng = np.random.default_rng(1)
    rows = np.zeros((4000, 5), np.float32)
    rows[:, :3] = rng.uniform(-20, 20, (4000, 3))
    rows.tofile(tmp_path / "random.pcd.bin")
    with pytest.raises(DatasetError, match=r"sample s1: lidar file .*random\.pcd\.bin: .*beam_spacing_deg"):
        read_sweep(tmp_path / "random.pcd.bin", "nuscenes", "s1")
    pts, res = read_sweep(tmp_path / "random.pcd.bin", "nuscenes", "s1", spacing_deg=1.0)
    assert pts.shape == (4000, 4) and res.source == "given"


def test_synthetic_world_sweeps_measure_the_generator_beams(tiny_world):
    """On the synthetic world (motion-compensated sweeps, ego body, sky): ring and histogram both give
    the generator's beam spacing and azimuth step."""
    from lidarlift.datasets import build_manifest
    from lidarlift.datasets.readers import read_lidar_with_ring

    lidar = json.loads((tiny_world / "lidarlift_gt" / "v1.0-mini" / "world.json").read_text())["lidar"]
    true_vertical = math.radians(lidar["elevations_deg"][1] - lidar["elevations_deg"][0])
    m = build_manifest({"dataroot": str(tiny_world), "version": "v1.0-mini", "format": "nuscenes"})
    for s in m.samples[:2]:
        pts, ring = read_lidar_with_ring(m.resolve(s.lidar.path), s.lidar.fmt, s.token)
        for res in (measure_scan(pts[:, :3], ring), measure_scan(pts[:, :3])):
            assert abs(res.median_vertical_spacing / true_vertical - 1) < 0.02
            assert abs(res.azimuth_step / (2 * math.pi / lidar["azimuth_steps"]) - 1) < 0.01


def test_beam_index_counts_beams_across_the_two_blocks():
    """The continuous beam index (the range image's row) steps by one from beam to beam inside each block
    of a 64-beam sensor and by one within a tenth of a beam across the junction of its two blocks (where
    the local spacing changes), and halfway between beams lies halfway; spacing_hv gives the azimuth
    step and the local vertical spacing apart."""
    elev = np.concatenate([np.linspace(-24.8, -8.5, 32), np.linspace(-8.0, 2.0, 31)])
    res = ScanResolution(np.radians(elev), local_spacing(np.radians(elev)), np.radians(0.17), len(elev))
    idx = res.beam_index(np.radians(elev))
    step = np.diff(idx)
    inside = np.r_[np.arange(0, 29), np.arange(34, 62)]  # two beams away from the junction (beams 31 | 32)
    assert np.allclose(step[inside], 1.0, atol=0.01) and np.allclose(step, 1.0, atol=0.12) and abs(idx[0]) < 1e-3
    mid = res.beam_index(np.radians((elev[:-1] + elev[1:]) / 2))
    assert np.allclose((mid - idx[:-1])[inside], 0.5, atol=0.01)
    xyz = np.array([[10.0, 0.0, 10.0 * np.tan(np.radians(-20.0))], [10.0, 0.0, 0.0]])
    hv = res.spacing_hv(xyz)
    assert np.allclose(hv[:, 0], np.radians(0.17)) and np.allclose(np.degrees(hv[:, 1]), [16.3 / 31, 10 / 30], atol=0.02)
