"""Association stage: projection truths, ego-motion compensation, the occlusion test, bad input, the
store and metrics, and (on the synthetic world) visibility and label transfer against ground truth."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from lidarlift import artifacts as A
from lidarlift.evaluate.association import association_figures, transfer_counts
from lidarlift.evaluate.counts import total
from lidarlift.evaluate.merge import score_stores
from lidarlift.summary import association as association_stats
from lidarlift.config import ConfigError
from lidarlift.associate import (
    AssociateParams, anchor_association, associate, depth_buffer, occlusion_test, project_points, run_shard, upper_edge,
)
from lidarlift.datasets import DatasetError
from lidarlift.geometry import invert, lidar_to_cam, make_transform
from lidarlift.manifest import CameraFrame, LidarFrame, Manifest, SampleRecord
from lidarlift.scan import ScanResolution, measure_scan

K = np.array([[400.0, 0, 320], [0, 400, 240], [0, 0, 1]])
SIZE = (640, 480)


def cam_rotation(yaw_deg: float) -> np.ndarray:
    """(3, 3) camera -> ego rotation of a level camera looking along ``yaw`` (x forward, y left, z up)."""
    y = np.radians(yaw_deg)
    fwd, right, down = [np.cos(y), np.sin(y), 0], [np.sin(y), -np.cos(y), 0], [0, 0, -1]
    return np.stack([right, down, fwd], axis=1).astype(float)


def yaw_transform(yaw_deg: float, t) -> np.ndarray:
    y = np.radians(yaw_deg)
    return make_transform(np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]]), t)


def test_point_projects_to_known_pixel():
    # lidar mounted rotated by 90 deg (as in nuScenes) 1.8 m up; front camera 1.5 m ahead, 1.5 m up
    l2e = yaw_transform(90, [0.0, 0.0, 1.8])
    c2e = make_transform(cam_rotation(0), [1.5, 0.0, 1.5])
    to_cam = lidar_to_cam(l2e, np.eye(4), np.eye(4), c2e)
    # the ego point (11.5, -1, 0.5) is 10 m ahead of the camera, 1 m right, 1 m down
    p_lidar = (invert(l2e) @ np.array([11.5, -1.0, 0.5, 1.0]))[:3]
    uv, depth, in_image = project_points(p_lidar[None].astype(np.float32), to_cam[None], K[None], [SIZE])
    assert np.allclose(uv[0, 0], [320 + 400 * 0.1, 240 + 400 * 0.1], atol=1e-3)
    assert np.isclose(depth[0, 0], 10.0, atol=1e-5) and in_image[0, 0]
    # behind the camera: NaN pixel, not in the image; closer than min_depth: not in the image
    behind = (invert(l2e) @ np.array([-5.0, 0, 1.5, 1]))[:3]
    near = (invert(l2e) @ np.array([2.0, 0, 1.5, 1]))[:3]
    uv, depth, in_image = project_points(np.stack([behind, near]), to_cam[None], K[None], [SIZE], min_depth=1.0)
    assert np.isnan(uv[0, 0]).all() and depth[0, 0] < 0 and not in_image[0, 0]
    assert np.isclose(depth[1, 0], 0.5) and not in_image[1, 0]
    # the anchors' numpy projection agrees
    cam, uv_a = anchor_association(p_lidar[None], to_cam[None], K[None], [SIZE])
    assert cam.tolist() == [0] and np.allclose(uv_a[0], [360, 280], atol=1e-3)


def test_ego_motion_compensation_is_exact_and_needed():
    # ego drives 10 m/s forward while turning; the camera fires 50 ms after the lidar
    l2e = yaw_transform(90, [0.94, 0.0, 1.84])
    c2e = make_transform(cam_rotation(0), [1.7, 0.0, 1.5])
    ego_lidar = yaw_transform(30, [100.0, 50.0, 0.0])
    ego_cam = ego_lidar @ yaw_transform(1.0, [0.5, 0.0, 0.0])
    world = (ego_lidar @ np.array([[15.0, 2.0, 1.0, 1], [25.0, -3.0, 0.0, 1]]).T).T  # static points
    p_lidar = (invert(ego_lidar @ l2e) @ world.T).T[:, :3]
    truth_cam = (invert(ego_cam @ c2e) @ world.T).T[:, :3]
    truth_uv = (truth_cam @ K.T)[:, :2] / truth_cam[:, 2:]
    compensated = lidar_to_cam(l2e, ego_lidar, ego_cam, c2e)
    uncompensated = lidar_to_cam(l2e, ego_lidar, ego_lidar, c2e)
    uv_c, depth_c, _ = project_points(p_lidar, compensated[None], K[None], [SIZE])
    uv_u, _, _ = project_points(p_lidar, uncompensated[None], K[None], [SIZE])
    assert np.abs(uv_c[:, 0] - truth_uv).max() < 1e-2
    assert np.allclose(depth_c[:, 0], truth_cam[:, 2], atol=1e-4)
    assert np.abs(uv_u[:, 0] - truth_uv).max() > 5.0


def _grid(x, ys, zs) -> np.ndarray:
    y, z = np.meshgrid(ys, zs, indexing="ij")
    return np.stack([np.full(y.size, x), y.ravel(), z.ravel()], axis=1)


def scan_board_and_wall(lidar_y: float = -4.0, beam_deg: float = 0.5, azimuth_deg: float = 0.25):
    """A spinning LiDAR at (0, ``lidar_y``, 0) (beams ``beam_deg`` apart, ``azimuth_deg`` steps) facing a
    2 x 2 m board at x = 8 m in front of a 16 x 8 m wall at x = 20 m. Returns points (N, 3) float32 in the
    LiDAR frame (axes parallel to the scene's), is_board (N,) bool and lidar_to_scene (4, 4)."""
    el, az = np.meshgrid(np.radians(np.arange(-12, 12.001, beam_deg)), np.radians(np.arange(-5, 45.001, azimuth_deg)),
                         indexing="ij")
    d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
    origin = np.array([0.0, lidar_y, 0.0])
    at_board = origin + d * (8.0 / d[:, :1])
    on_board = (np.abs(at_board[:, 1:]) <= 1.0).all(axis=1)
    p = np.where(on_board[:, None], at_board, origin + d * (20.0 / d[:, :1]))
    keep = on_board | ((np.abs(p[:, 1]) <= 8) & (np.abs(p[:, 2]) <= 4))
    return (p[keep] - origin).astype(np.float32), on_board[keep], make_transform(np.eye(3), origin)


def test_box_in_front_of_wall_hides_the_wall_behind_it():
    # camera at the scene origin looking along +x; the LiDAR 4 m to its right sees the wall behind the board
    xyz, is_box, lidar_to_scene = scan_board_and_wall()
    to_cam = invert(make_transform(cam_rotation(0), [0, 0, 0])) @ lidar_to_scene
    p = AssociateParams.from_config()
    a = associate(xyz, to_cam[None], K[None], [SIZE], p)  # the footprint in the scan's own beams, measured
    xyz_scene = xyz + lidar_to_scene[:3, 3]
    # the box occupies |y|, |z| < 1 at 8 m = 2.5 m at 20 m: wall points well inside that shadow are hidden
    inside = a.in_image[:, 0]
    shadow = ~is_box & (np.abs(xyz_scene[:, 1]) < 2.2) & (np.abs(xyz_scene[:, 2]) < 2.2)
    clear = ~is_box & inside & ((np.abs(xyz_scene[:, 1]) > 3.2) | (np.abs(xyz_scene[:, 2]) > 3.2))
    assert shadow.sum() > 300 and inside[shadow].all() and not a.visible[shadow, 0].any()
    assert a.visible[clear, 0].all()
    assert a.visible[is_box & inside, 0].all()
    # without the occlusion test everything in the image is "visible" (the anchors' behaviour)
    off = associate(xyz, to_cam[None], K[None], [SIZE], AssociateParams.from_config(dict(occlusion=False)))
    assert (off.visible == off.in_image).all()


def test_footprint_grows_as_depth_shrinks():
    # exact discs (one buffer level); one beam = 1 deg, so the bounds read in degrees
    p = AssociateParams.from_config(dict(footprint_m=0.2, footprint_beams=0.2, footprint_max_beams=10.0, beam_spacing_deg=1.0,
                        buffer_max_width=0, splat_max_radius_px=0))
    uv = np.array([[320.0, 240.0]], np.float32)
    near, _ = depth_buffer(uv, np.array([2.0], np.float32), 400.0, SIZE, p)
    far, _ = depth_buffer(uv, np.array([20.0], np.float32), 400.0, SIZE, p)
    n_near, n_far = np.isfinite(near).sum(), np.isfinite(far).sum()
    assert n_near > 20 * n_far > 0
    # radius 400 * 0.2 / 2 = 40 px at 2 m: a disc of about pi * 40^2 pixels around the point
    assert abs(n_near / (np.pi * 40**2) - 1) < 0.02
    ys, xs = np.nonzero(np.isfinite(near))
    assert abs(xs.mean() - 320) < 1 and abs(ys.mean() - 240) < 1 and near[240, 320] == 2.0
    # a half-resolution buffer keeps the angular footprint
    half, scale = depth_buffer(uv, np.array([2.0], np.float32), 400.0, SIZE, dataclasses.replace(p, buffer_max_width=320))
    assert scale == 0.5 and half.shape == (240, 320) and abs(np.isfinite(half).sum() * 4 / n_near - 1) < 0.05
    # the pyramid draws the large disc on a coarse level: same footprint within the cell quantisation
    coarse, _ = depth_buffer(uv, np.array([2.0], np.float32), 400.0, SIZE, dataclasses.replace(p, splat_max_radius_px=4))
    assert abs(np.isfinite(coarse).sum() / n_near - 1) < 0.25 and coarse[240, 320] == 2.0
    # a far point's disc is never smaller than its own pixel
    tiny, _ = depth_buffer(uv, np.array([500.0], np.float32), 400.0, SIZE, dataclasses.replace(p, footprint_beams=0))
    assert np.isfinite(tiny).sum() >= 1 and tiny[240, 320] == 500.0


def test_footprint_is_counted_in_the_points_own_beams():
    """The floor and ceiling of a disc are beams of the sweep at the point: a far point (where the floor
    rules) of a sensor with half the beam spacing gets half the radius, a quarter of the pixels; so a
    64-beam sweep's rows (1/3 deg apart) are not covered by a 32-beam floor (0.44 deg of 1.33)."""
    p = AssociateParams.from_config(dict(buffer_max_width=0, splat_max_radius_px=0))
    uv = np.array([[320.0, 240.0]], np.float32)
    far = np.array([60.0], np.float32)
    area = [np.isfinite(depth_buffer(uv, far, 2000.0, SIZE, p, spacing=np.radians([s]))[0]).sum() for s in (1.0, 0.5)]
    r32 = 2000 * np.tan(np.radians(p.footprint_beams * 1.33))
    assert abs(area[0] / area[1] - 4) < 0.3 and r32 > 2000 * np.tan(np.radians(1 / 3)) > 2000 * np.tan(np.radians(p.footprint_beams / 3))
    with pytest.raises(ValueError, match="associate.beam_spacing_deg"):
        depth_buffer(uv, far, 400.0, SIZE, p)  # no spacing and no override
    with pytest.raises(ConfigError, match=r"config key associate\.footprint_min_deg: unknown key"):
        AssociateParams.from_config({"footprint_min_deg": 0.5})


def test_far_ground_rows_of_a_dense_scanner_stay_visible():
    """A flat road scanned by a 64-beam sensor (beams 1/3 deg apart): seen from a camera beside the
    LiDAR, every ground row at 20-50 m is visible (the truth: nothing stands on the road); with the old
    fixed 0.5 deg floor -- wider than the beam spacing -- the near rows covered the rows behind them."""
    el, az = np.meshgrid(np.radians(np.arange(-8.0, -1.9, 1 / 3)), np.radians(np.arange(-20, 20.01, 0.15)), indexing="ij")
    d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
    xyz = (d * (1.84 / -d[:, 2:])).astype(np.float32)  # the road, 1.84 m below the sensor
    rng_h = np.hypot(xyz[:, 0], xyz[:, 1])
    band = (rng_h >= 20) & (rng_h < 50)
    to_cam = invert(make_transform(cam_rotation(0), [0.75, 0.0, -0.3]))  # camera 0.75 m ahead, 0.3 m lower
    k = np.array([[1266.0 * 0.4, 0, 320], [0, 1266.0 * 0.4, 180], [0, 0, 1]])
    scan = measure_scan(xyz)
    beams = associate(xyz, to_cam[None], k[None], [(640, 360)], AssociateParams.from_config(), (), scan)
    old = associate(xyz, to_cam[None], k[None], [(640, 360)],
                    AssociateParams.from_config(dict(beam_spacing_deg=1.0, footprint_beams=0.5, footprint_max_beams=1.0, footprint_m=0.1,
                                    footprint_top_edge=1.0)))
    seen = beams.in_image[:, 0] & band
    assert seen.sum() > 1000
    assert (~beams.visible[seen, 0]).mean() <= 0.02 < 0.5 < (~old.visible[seen, 0]).mean()


def test_footprint_is_an_ellipse_of_the_scan_steps():
    """A far point's footprint (the floor rules) spans half a step to each side: the azimuth step along
    the image rows, the vertical spacing along the columns; above a silhouette's top edge (spacing 0
    upwards) it does not reach above the point's own row."""
    p = AssociateParams.from_config(dict(buffer_max_width=0, splat_max_radius_px=0))
    uv = np.array([[320.0, 240.0]], np.float32)
    far = np.array([60.0], np.float32)
    zbuf, _ = depth_buffer(uv, far, 2000.0, SIZE, p, spacing=np.radians([[0.2, 1.33, 1.33]]))
    ys, xs = np.nonzero(np.isfinite(zbuf))
    half_row, half_col = 2000 * np.tan(np.radians(0.5 * 0.2)), 2000 * np.tan(np.radians(0.5 * 1.33))
    assert abs((xs.max() - xs.min() + 1) / 2 - half_row) < 1 and abs((ys.max() - ys.min() + 1) / 2 - half_col) < 1
    top, _ = depth_buffer(uv, far, 2000.0, SIZE, p, spacing=np.radians([[0.2, 1.33, 0.0]]))
    ys_top, _ = np.nonzero(np.isfinite(top))
    assert ys_top.min() == 240 and ys_top.max() == ys.max()


def test_far_ground_over_a_fence_stays_visible():
    """A 1 m fence 10 m ahead, scanned by a 64-beam LiDAR 1.84 m up, seen by a camera 0.34 m below it:
    the camera sees the far ground (30-50 m) just over the fence's top (truth: the line of sight misses
    the fence box). The fence's top returns lie up to a beam below its edge; a footprint reaching a full
    half beam above them covers that ground, one that stops short at the edge does not."""
    from test_presegment import HDL64_BEAMS, box, lidar_scan

    xyz, owner = lidar_scan([box(10.0, 10.1, -6.0, 6.0, 0.0, 1.0, 1)], HDL64_BEAMS, 2480, (-40.0, 40.0))
    scan = ScanResolution.uniform(64, -24.8, 2.0, 2480)
    cam = np.array([0.0, 0.0, -0.34])
    to_cam = invert(make_transform(cam_rotation(0), cam))
    k = np.array([[506.4, 0, 320], [0, 506.4, 180], [0, 0, 1.0]])
    lo, hi = np.array([10.0, -6.0, -1.84]), np.array([10.1, 6.0, 1.0 - 1.84])
    ray = xyz - cam
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (lo - cam) / ray, (hi - cam) / ray
        t_in, t_out = np.nanmax(np.minimum(t1, t2), 1), np.nanmin(np.maximum(t1, t2), 1)
    blocked = (t_in <= t_out) & (t_in < 1 - 1e-6) & (t_out > 0)
    far = (owner == 0) & (np.hypot(xyz[:, 0], xyz[:, 1]) >= 30) & (np.hypot(xyz[:, 0], xyz[:, 1]) < 50)
    hidden = {}
    for edge in (0.5, 1.0):
        a = associate(xyz, to_cam[None], k[None], [(640, 360)], AssociateParams.from_config(dict(footprint_top_edge=edge)), (), scan)
        seen = a.in_image[:, 0] & far & ~blocked
        assert seen.sum() > 1000 and a.visible[(owner == 1) & a.in_image[:, 0], 0].all()
        hidden[edge] = (~a.visible[seen, 0]).mean()
    assert hidden[0.5] <= 0.05 < 0.1 < hidden[1.0]
    # the top edges are the fence's highest returns: each column's top row, none below it
    edge = upper_edge(xyz, scan)[owner == 1]
    z = xyz[owner == 1, 2]
    assert edge.any() and np.isclose(z[edge].min(), z.max(), atol=0.2) and z[~edge].max() < z.max() - 0.01


def test_overlapping_cameras_keep_both_views():
    # cameras at yaw 0 and 40 deg (hfov 77 deg each); a point at 20 deg is in both
    to_cams = np.stack([invert(make_transform(cam_rotation(yaw), [0, 0, 0])) for yaw in (0, 40)])
    pts = np.array([[10 * np.cos(np.radians(a)), 10 * np.sin(np.radians(a)), 0.0] for a in (20, -30, 60)], np.float32)
    a = associate(pts, to_cams, np.stack([K, K]), [SIZE, SIZE], AssociateParams.from_config(dict(beam_spacing_deg=1.0)))
    assert a.in_image.tolist() == [[True, True], [True, False], [False, True]]
    assert a.visible.tolist() == a.in_image.tolist()
    assert np.allclose(a.depth[0], [10 * np.cos(np.radians(20))] * 2, atol=1e-4)
    # the anchors keep only the last camera
    cam, _ = anchor_association(pts, to_cams, np.stack([K, K]), [SIZE, SIZE])
    assert cam.tolist() == [1, 0, 1]


def test_nan_points_are_refused():
    pts = np.array([[1.0, 2, 3], [np.nan, 0, 0]], np.float32)
    with pytest.raises(ValueError, match="NaN or infinite.*row 1"):
        project_points(pts, np.eye(4)[None], K[None], [SIZE])


def test_transfer_counts_compare_class_and_instance():
    im_label = np.array([[4, 4], [15, 15]])
    im_inst = np.array([[17001, 17002], [0, 0]])
    uv = np.array([[0.4, -0.3], [1.2, 0.4], [0.2, 1.3], [1.2, 0.8], [0.0, 0.0]], np.float32)  # pixel centres at integers
    label = np.array([4, 4, 15, 14, 0])
    inst = np.array([17001, 17001, 0, 0, 0])
    pairs, correct = transfer_counts(uv, np.ones(5, bool), label, inst, im_label, im_inst)
    assert (pairs, correct) == (4, 2)  # the ignore point is not counted; wrong instance and wrong stuff class are


# ----------------------------------------------------------------------------------------- run_shard on a hand-built dataset

CHANNELS = ["CAM_FRONT", "CAM_BACK"]


def _walls() -> tuple[np.ndarray, np.ndarray]:
    """A 10-beam LiDAR's returns (20 azimuth steps each way) from a wall 12 m ahead and one 12 m behind:
    points (400, 3) (the 200 ahead first) and ring ids (400,)."""
    el, az = np.meshgrid(np.radians(np.linspace(-9.46, 9.46, 10)), np.radians(np.linspace(-22.6, 22.6, 20)), indexing="ij")
    d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
    ahead = d * (12.0 / d[:, :1])
    ring = np.repeat(np.arange(10), 20)
    return np.concatenate([ahead, ahead * [-1, -1, 1]]), np.concatenate([ring, ring])


def _mini_dataset(tmp_path, n_samples: int = 2, sweeps: bool = False) -> Manifest:
    """Two-camera dataset: a wall of points ahead and behind (scanned by a 10-beam LiDAR, ring ids in
    the file); transforms identity-like."""
    rng = np.random.default_rng(0)
    (tmp_path / "samples" / "LIDAR_TOP").mkdir(parents=True)
    eye = np.eye(4).tolist()
    samples = []
    for s in range(n_samples):
        pts, ring = _walls()
        raw = np.zeros((len(pts), 5), np.float32)
        raw[:, :3] = pts + rng.normal(0, 0.01, pts.shape)
        raw[:, 4] = ring
        rel = f"samples/LIDAR_TOP/s{s}.pcd.bin"
        raw.tofile(tmp_path / rel)
        cams = [CameraFrame(ch, f"samples/{ch}/s{s}.jpg", 1000 * s + 5, SIZE[0], SIZE[1], K.tolist(),
                            make_transform(cam_rotation(yaw), [0, 0, 0]).tolist(), eye, f"c{s}{i}")
                for i, (ch, yaw) in enumerate(zip(CHANNELS, (0, 180)))]
        lf = LidarFrame(rel, 1000 * s, eye, eye, f"sd{s}")
        sw = [LidarFrame(rel, 1000 * s - 50, eye, eye, f"sw{s}")] if sweeps else []
        samples.append(SampleRecord(f"tok{s}", "scene-0061", "train", s, lf, cams, prev_sweeps=sw))
    m = Manifest("nuscenes", str(tmp_path), "v1.0-mini", CHANNELS, "nuscenes16", samples)
    m.to_json(tmp_path / "manifest.json")
    return m


def _run(tmp_path, policy="error", **kw):
    return run_shard(tmp_path / "manifest.json", "scene-0061", tmp_path / "out" / "scene-0061.zarr",
                     tmp_path / "out" / "scene-0061.stats.json", {"bad_sample_policy": policy, **kw})


def test_run_shard_writes_the_store_per_spec(tmp_path):
    _mini_dataset(tmp_path, sweeps=True)
    metrics = _run(tmp_path, densify_sweeps=1)
    g = A.open_store(tmp_path / "out" / "scene-0061.zarr", "associate")
    spec = A.STORES["associate"]
    for name, arr in spec.arrays.items():
        assert str(A.read(g, name).dtype) == arr.dtype, name
    assert A.read(g, "point_offsets").tolist() == [0, 400, 800]
    assert A.read(g, "uv").shape == (800, 2, 2) and A.read(g, "visible").shape == (800, 2)
    in_image = A.read(g, "in_image")
    # the wall ahead is seen by the front camera only, the wall behind by the back camera only
    assert in_image[:200, 0].all() and not in_image[:200, 1].any() and in_image[200:400, 1].all()
    assert g.attrs["sample_tokens"] == ["tok0", "tok1"] and g.attrs["params"]["densify_sweeps"] == 1
    on_disk = json.loads((tmp_path / "out" / "scene-0061.stats.json").read_text())
    assert on_disk["points"] == 800 and on_disk["skipped"] == [] and metrics["in_image_pairs"] == 800
    s = association_stats([on_disk, on_disk])
    assert s["points_per_second"] > 0 and s["samples"] == 4


def _break_bin(m: Manifest, kind: str) -> str:
    path = m.resolve(m.samples[1].lidar.path)
    raw = np.fromfile(path, np.float32).reshape(-1, 5)
    if kind == "nan":
        raw[7, 1] = np.inf
        raw.tofile(path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:-6])
    return str(path)


def _break_calibration(m: Manifest, kind: str) -> str:
    cam = m.samples[1].cameras[1]
    if kind == "rotation":
        t = np.asarray(cam.cam_to_ego)
        t[:3, :3] *= 1.1
        cam.cam_to_ego = t.tolist()
    else:
        cam.intrinsic = [[400.0, 0, 900], [0, 400, 240], [0, 0, 1]]
    m.to_json(m.resolve("manifest.json"))
    return str(m.resolve(cam.path))


BAD = [("nan", _break_bin, "NaN or infinite"), ("empty", _break_bin, "empty"),
       ("truncated", _break_bin, "truncated"), ("rotation", _break_calibration, "not orthonormal"),
       ("principal", _break_calibration, "principal point .* outside")]


@pytest.mark.parametrize("kind,breaker,reason", BAD, ids=[b[0] for b in BAD])
def test_bad_sample_errors_or_is_skipped(tmp_path, kind, breaker, reason):
    m = _mini_dataset(tmp_path)
    bad_file = breaker(m, kind)
    store = tmp_path / "out" / "scene-0061.zarr"
    with pytest.raises(DatasetError, match=f"sample tok1: .*{reason}") as err:
        _run(tmp_path, "error")
    assert bad_file in str(err.value)
    assert not store.exists() and not (tmp_path / "out" / "scene-0061.stats.json").exists()
    assert not list((tmp_path / "out").glob("*tmp*")) if (tmp_path / "out").exists() else True
    metrics = _run(tmp_path, "skip")
    assert [(s["sample"], s["file"]) for s in metrics["skipped"]] == [("tok1", bad_file)]
    assert pytest.importorskip("re").search(reason, metrics["skipped"][0]["reason"])
    g = A.open_store(store, "associate")
    assert A.read(g, "point_offsets").tolist() == [0, 400, 400]  # zero points for the skipped sample
    assert association_stats([metrics])["skipped"][0]["sample"] == "tok1"


def test_sweep_without_beam_structure_is_named_or_given(tmp_path):
    """A sweep whose points show no LiDAR beams (random points, no ring ids) has no measurable beam
    spacing: the stage names the sample, the file and the config key; with the key set it runs."""
    m = _mini_dataset(tmp_path)
    path = m.resolve(m.samples[1].lidar.path)
    raw = np.zeros((400, 5), np.float32)
    raw[:, :3] = np.random.default_rng(3).uniform(-15, 15, (400, 3))
    raw.tofile(path)
    with pytest.raises(DatasetError, match=f"sample tok1: lidar file {path}: .*beam_spacing_deg"):
        _run(tmp_path, "error")
    assert _run(tmp_path, "skip")["skipped"][0]["sample"] == "tok1"
    assert _run(tmp_path, "error", beam_spacing_deg=1.0)["points"] == 800


def test_bad_neighbouring_sweep_is_dropped_or_raises(tmp_path):
    m = _mini_dataset(tmp_path, sweeps=True)
    bad = m.resolve("samples/LIDAR_TOP/bad.pcd.bin")
    bad.write_bytes(b"\x00" * 7)
    m.samples[0].prev_sweeps[0].path = "samples/LIDAR_TOP/bad.pcd.bin"
    m.to_json(tmp_path / "manifest.json")
    with pytest.raises(DatasetError, match=f"sample tok0: .*{bad}.*truncated"):
        _run(tmp_path, "error", densify_sweeps=1)
    metrics = _run(tmp_path, "skip", densify_sweeps=1)
    assert metrics["skipped"] == [] and metrics["dropped_sweeps"][0]["file"] == str(bad)
    assert metrics["points"] == 800


def test_production_never_reads_ground_truth_and_evaluation_names_a_bad_truth_file(tmp_path):
    """One-way data flow: a missing visibility truth file does not touch the association (it never reads
    truth); the evaluation stops naming the sample and the file."""
    from lidarlift.datasets.readers import DatasetError as DE
    from lidarlift.evaluate.shard import evaluate_shard

    m = _mini_dataset(tmp_path)
    m.samples[0].gt_visibility = "lidarlift_gt/v1.0-mini/visibility/missing.npy"
    m.samples[0].gt_lidarseg = "lidarseg/missing.bin"
    m.to_json(tmp_path / "manifest.json")
    stats = _run(tmp_path, "error")
    assert stats["points"] == 800 and stats["skipped"] == []
    with pytest.raises((DE, OSError), match="missing"):
        evaluate_shard(tmp_path / "manifest.json", "scene-0061", {"associate": str(tmp_path / "out" / "scene-0061.zarr")})


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match=r"config key associate\.footprint: unknown key"):
        AssociateParams.from_config({"footprint": 1})
    with pytest.raises(ConfigError, match=r"config key associate\.depth_rel_tol: -1 is less than the minimum of 0"):
        AssociateParams.from_config({"depth_rel_tol": -1})
    with pytest.raises(ConfigError, match=r"config key associate\.footprint_max_beams: 0\.2 is below associate\.footprint_beams"):
        AssociateParams.from_config({"footprint_beams": 0.5, "footprint_max_beams": 0.2})
    with pytest.raises(ConfigError, match=r"config key dataset\.bad_sample_policy: 'ignore' is not one of"):
        AssociateParams.from_config({"bad_sample_policy": "ignore"})


def test_figures_sum_counts_before_dividing():
    a = {"vis_tp": 9, "vis_fp": 1, "vis_fn": 0, "transfer_visible_pairs": 10, "transfer_visible_correct": 10,
         "transfer_in_image_pairs": 10, "transfer_in_image_correct": 5, "far_ground_visible_pairs": 10, "far_ground_hidden_pairs": 0}
    b = {"vis_tp": 1, "vis_fp": 9, "vis_fn": 10, "transfer_visible_pairs": 30, "transfer_visible_correct": 0,
         "transfer_in_image_pairs": 30, "transfer_in_image_correct": 15, "far_ground_visible_pairs": 30, "far_ground_hidden_pairs": 4}
    s = association_figures(total([a, b]))
    assert s["visible_precision"] == 0.5 and s["visible_recall"] == 10 / 20
    assert s["transfer_accuracy"] == 0.25 and s["transfer_accuracy_no_occlusion"] == 0.5
    assert s["hidden_ground_30_50m"] == 0.1
    ops = association_stats([{"points": 10, "cpu_seconds_compute": 1.0, "skipped": []},
                             {"points": 30, "cpu_seconds_compute": 1.0, "skipped": [{"sample": "x", "file": "f", "reason": "r"}]}])
    assert ops["points_per_second"] == 20.0 and ops["samples_skipped"] == 1


# ----------------------------------------------------------------------------------------- the synthetic world


def test_synthetic_world_visibility_and_label_transfer(tiny_world, tmp_path):
    """On the synthetic world: the visible flag agrees with the generator's ray-cast visibility, and the
    occlusion test raises label-transfer accuracy over the raw projection (the anchors' association)."""
    from lidarlift.datasets import build_manifest

    m = build_manifest({"dataroot": str(tiny_world), "version": "v1.0-mini", "format": "nuscenes"})
    m.to_json(tmp_path / "manifest.json")
    stats = [run_shard(tmp_path / "manifest.json", shard, tmp_path / f"{shard}.zarr", None, {}) for shard in m.shards]
    ops = association_stats(stats)
    assert ops["samples"] == len(m.samples) and ops["samples_skipped"] == 0 and ops["points_per_second"] > 0
    s = score_stores(tmp_path / "manifest.json", {sh: {"associate": str(tmp_path / f"{sh}.zarr")} for sh in m.shards})["association"]
    assert s["samples_scored"] == len(m.samples)
    assert s["visible_precision"] >= 0.97 and s["visible_recall"] >= 0.93
    # the raw projection keeps occluded pairs: the occlusion test removes most of them
    assert s["in_image_recall"] >= 0.98 and s["visible_precision"] >= s["in_image_precision"] + 0.03
    assert s["transfer_accuracy"] >= s["transfer_accuracy_no_occlusion"] + 0.02
    assert s["transfer_accuracy"] >= 0.97
    # the store holds every keyframe point; points in the overlap of two cameras keep both views
    g = A.open_store(tmp_path / f"{m.shards[0]}.zarr", "associate")
    offsets = A.read(g, "point_offsets")
    n0 = len(np.fromfile(m.resolve(m.shard_samples(m.shards[0])[0].lidar.path), np.float32)) // 5
    assert offsets[1] == n0 and A.read(g, "uv").shape == (offsets[-1], 6, 2)
    visible, in_image = A.read(g, "visible"), A.read(g, "in_image")
    assert not (visible & ~in_image).any()
    assert (visible.sum(axis=1) >= 2).sum() > 100
