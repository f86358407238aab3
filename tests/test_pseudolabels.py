"""Pseudo-labels on small hand-built scenes with known answers: clicks, propagation, candidate sets,
annotation-free refinement, the E-step and the metrics (lidarlift.pseudolabels)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from lidarlift.classes import NUSCENES16, candidate_bit, candidates_to_sets
from lidarlift.pseudolabels import annotation_free as af
from lidarlift.pseudolabels import clicks as ck
from lidarlift.pseudolabels.estep import EStepParams, calibrate, dynamic_threshold_label, estep
from lidarlift.evaluate.pseudolabels import pseudolabel_counts, pseudolabel_figures
from lidarlift.pseudolabels.propagate import (CANDIDATES, CLICK, NETWORK, PROPAGATED, Evidence, GraphParams, Labels,
                                              iupc_propagate, minimax_to_groups, ours_propagate)
from lidarlift.pseudolabels.simulate2d import Corruption, simulate_map

S = NUSCENES16
CAR, PED, ROAD, WALL, VEG, TRUCK = (S.index(n) for n in ("car", "pedestrian", "driveable_surface", "manmade", "vegetation", "truck"))
SENSOR_Z = -1.8  # ground height in the lidar frame


def _table(knots, llr):
    return {"knots": knots, "llr": llr, "unseen": 0.0}


#: A fixed, hand-written evidence model for the hand-built scenes, so that these tests check the
#: propagation's mechanics, not the numbers fitted on the tuning world (bench/fit_tuning.py): its masks
#: separate touching objects, as SAM's do (5 nats for two masks, weight 2), where the fitted default
#: gives the weight-free masks, which follow the pre-segments, weight 0.
HAND_LOG_ODDS = {
    "ground": {"prior": -3.35, "distance": _table([0, 0.25, 0.5, 1, 1.5, 2, 3], [-2.3, -0.6, 0.2, 0.8, 1.2, 1.35, 2.2]),
               "height": _table([0, 0.01, 0.02, 0.05, 0.1, 0.2], [-0.8, 0.25, 2.45, 3.6, 4.0, 6.0]),
               "intensity": _table([0, 1, 2, 4, 8], [-1.5, -1.25, -0.15, 3.0, 3.7]),
               "color": _table([0, 0.5, 5, 10, 20, 40], [-3.5, -2.1, -0.6, 1.0, 2.0, 2.1]),
               "superpixel": {"unseen": 0.0, "differ": 0.6, "same": -0.9}},
    "object": {"prior": -4.3, "distance": _table([0, 0.25, 0.5, 1, 1.5, 2, 3], [-5.7, -3.2, -1.5, 0.95, 2.35, 3.1, 5.3]),
               "intensity": _table([0, 1, 2, 4, 8, 16], [-1.75, -1.45, -0.15, 1.8, 1.3, 2.0]),
               "color": _table([0, 0.5, 5, 10, 20, 40], [-4.0, -2.75, -0.3, 0.9, 1.5, 2.15]),
               "superpixel": {"unseen": 0.0, "differ": 0.45, "same": -1.4},
               "mask": {"unseen": 0.0, "differ": 5.0, "same": -1.45, "apart": 0.5},
               "segment": {"differ": 4.9, "same": -1.3, "noise": 3.9}},
    "mixed": {"prior": 0.45, "distance": _table([0, 0.25, 0.5, 1, 1.5, 2, 3], [-4.0, -0.8, -0.7, 0.4, 1.3, 2.35, 2.4]),
              "intensity": _table([0, 1, 2, 4, 8, 16], [-1.8, -1.5, -0.55, 1.0, 0.8, 2.0]),
              "color": _table([0, 0.5, 5, 10, 20, 40], [-3.4, -2.4, -1.0, 0.0, 0.8, 1.1]),
              "superpixel": {"unseen": 0.0, "differ": 0.3, "same": -1.35}},
}
HAND = GraphParams.from_config(dict(w_distance=1.0, w_height=1.0, w_intensity=1.0, w_color=1.0, w_superpixel=0.5, w_mask=2.0, w_segment=1.0,
                   label_cost=-1.0, margin=1.0, margin_flat=2.0, candidate_cost=1.0))


def plane(x0, x1, y0, y1, step=0.25, holes=()):
    """Ground points; ``holes`` (x0, x1, y0, y1) are left out (the LiDAR does not see under a car)."""
    x, y = np.meshgrid(np.arange(x0, x1, step), np.arange(y0, y1, step))
    keep = np.ones(x.size, bool)
    for hx0, hx1, hy0, hy1 in holes:
        keep &= ~((x.ravel() > hx0) & (x.ravel() < hx1) & (y.ravel() > hy0) & (y.ravel() < hy1))
    return np.stack([x.ravel(), y.ravel(), np.full(x.size, SENSOR_Z)], 1)[keep]


def box(center, size, step=0.15):
    """Points on the four sides and the top of a box (what a LiDAR sees of a car)."""
    cx, cy, cz = center
    lx, ly, lz = size
    pts = []
    for u in np.arange(-lx / 2, lx / 2 + 1e-6, step):
        for w in np.arange(-lz / 2, lz / 2 + 1e-6, step):
            pts += [(cx + u, cy - ly / 2, cz + w), (cx + u, cy + ly / 2, cz + w)]
        for v in np.arange(-ly / 2, ly / 2 + 1e-6, step):
            pts.append((cx + u, cy + v, cz + lz / 2))
    for v in np.arange(-ly / 2, ly / 2 + 1e-6, step):
        for w in np.arange(-lz / 2, lz / 2 + 1e-6, step):
            pts += [(cx - lx / 2, cy + v, cz + w), (cx + lx / 2, cy + v, cz + w)]
    return np.asarray(pts)


class Scene:
    """Parts with truth; ``segment`` is the pre-segment (touching parts share one), ``mask`` the 2D mask
    (one camera that sees every point)."""

    def __init__(self):
        self.xyz, self.label, self.instance, self.segment, self.mask, self.ground = [], [], [], [], [], []

    def add(self, pts, label, instance=0, segment=-1, mask=-1, ground=False):
        n = len(pts)
        self.xyz.append(pts)
        self.label.append(np.full(n, label))
        self.instance.append(np.full(n, instance))
        self.segment.append(np.full(n, segment))
        self.mask.append(np.full(n, mask))
        self.ground.append(np.full(n, ground))
        return slice(sum(len(p) for p in self.xyz[:-1]), sum(len(p) for p in self.xyz))

    def done(self):
        self.xyz = np.concatenate(self.xyz).astype(np.float32)
        self.label = np.concatenate(self.label).astype(np.uint8)
        self.instance = np.concatenate(self.instance).astype(np.int64)
        self.segment = np.concatenate(self.segment).astype(np.int32)
        self.mask = np.concatenate(self.mask).astype(np.int32)[:, None]
        self.ground = np.concatenate(self.ground).astype(bool)
        return self

    def evidence(self):
        n = len(self.xyz)
        # hand-built points have no beam structure to measure: a 32-beam sensor's spacing (1.33 deg)
        return Evidence(xyz=self.xyz, ground=self.ground, segment_id=np.where(self.ground, -1, self.segment),
                        ground_cell=np.where(self.ground, 0, -1).astype(np.int32), fov=np.ones(n, bool), mask=self.mask,
                        spacing=np.full(n, np.radians(4 / 3)))


@pytest.fixture
def cars():
    """Two cars touching (5 cm apart, one pre-segment, two masks, 25 cm above the road) on a road."""
    s = Scene()
    s.road = s.add(plane(2, 22, -6, 6, holes=[(7.8, 16.7, -1.9, -0.1)]), ROAD, mask=2, ground=True)
    s.car_a = s.add(box((10.0, -1.0, SENSOR_Z + 1.0), (4.4, 1.8, 1.5)), CAR, instance=17001, segment=0, mask=0)
    s.car_b = s.add(box((14.45, -1.0, SENSOR_Z + 1.0), (4.4, 1.8, 1.5)), CAR, instance=17002, segment=0, mask=1)
    return s.done()


@pytest.fixture
def pedestrian_wall():
    """A pedestrian 15 cm in front of a wall (one pre-segment, two masks), and an unclicked tree."""
    s = Scene()
    s.road = s.add(plane(2, 14, -6, 6), ROAD, mask=3, ground=True)
    y, z = np.meshgrid(np.arange(-5, 5, 0.15), np.arange(SENSOR_Z, 1.2, 0.15))
    s.wall = s.add(np.stack([np.full(y.size, 12.0), y.ravel(), z.ravel()], 1), WALL, segment=0, mask=0)
    s.ped = s.add(box((11.6, 0.0, SENSOR_Z + 0.9), (0.5, 0.5, 1.75), step=0.1), PED, instance=2001, segment=0, mask=1)
    s.tree = s.add(box((6.0, 8.0, 0.0), (2.0, 2.0, 3.0), step=0.2), VEG, segment=1, mask=2)
    return s.done()


def first(sl, label_arr, value):
    return sl.start + int(np.flatnonzero(label_arr[sl] == value)[0])


# ---------------------------------------------------------------------------------------------- propagation


def test_minimax_matches_brute_force():
    """Minimax path costs through the merge tree equal a Floyd-Warshall bottleneck closure."""
    rng = np.random.default_rng(0)
    n = 30
    i, j = rng.integers(0, n, 90), rng.integers(0, n, 90)
    i, j = i[i != j], j[i != j]
    c = rng.random(len(i)).astype(np.float32)
    seeds, groups = np.array([0, 5, 9]), np.array([0, 1, 1])
    got = minimax_to_groups(n, i, j, c, seeds, groups, 2)
    assert np.isneginf(got[seeds, groups]).all()  # a seed is its own group's
    got[seeds, groups] = 0.0
    b = np.full((n, n), np.inf)
    np.fill_diagonal(b, 0)
    for a, bb, w in zip(i, j, c):
        b[a, bb] = b[bb, a] = min(b[a, bb], w)
    for k in range(n):
        b = np.minimum(b, np.maximum(b[:, k:k + 1], b[k:k + 1, :]))
    want = np.stack([b[:, seeds[groups == g]].min(1) for g in range(2)], 1)
    np.testing.assert_allclose(np.where(np.isinf(want), -1, want), np.where(np.isinf(got), -1, got), atol=1e-6)


def test_iupc_rules_on_touching_cars(cars):
    """IUPC: the one-class segment of both cars propagates 'car' to both (one instance: it cannot split
    them); the clicked ground cell propagates 'road'."""
    s = cars
    clicks = np.array([first(s.car_a, s.label, CAR), s.road.start])
    out = iupc_propagate(len(s.xyz), clicks, s.label[clicks], s.ground, s.evidence().segment_id,
                         s.evidence().ground_cell, np.ones(len(s.xyz), bool), S)
    assert (out.label == s.label).all()
    assert len(np.unique(out.instance_id[s.car_a])) == 1
    assert out.instance_id[s.car_a.start] == out.instance_id[s.car_b.start]
    assert (out.source[clicks] == CLICK).all()


def test_iupc_rules_candidate_set_and_click_free_segment(pedestrian_wall):
    """IUPC: the wall+pedestrian segment clicked with both classes gets the set {pedestrian, manmade};
    the unclicked tree stays unknown (every class possible)."""
    s = pedestrian_wall
    clicks = np.array([s.wall.start, s.ped.start, s.road.start])
    ev = s.evidence()
    out = iupc_propagate(len(s.xyz), clicks, s.label[clicks], s.ground, ev.segment_id, ev.ground_cell, ev.fov, S)
    both = candidate_bit(PED) | candidate_bit(WALL)
    rest = np.setdiff1d(np.r_[s.wall.start:s.ped.stop], clicks)
    assert (out.label[rest] == 0).all() and (out.candidate_mask[rest] == both).all()
    assert (out.source[rest] == CANDIDATES).all()
    assert (out.label[s.tree] == 0).all() and (out.candidate_mask[s.tree] == S.all_candidates).all()


def test_ours_two_touching_cars_get_two_instances(cars):
    """Ours: each clicked car keeps its own instance although both are one pre-segment."""
    s = cars
    a, b = first(s.car_a, s.label, CAR), first(s.car_b, s.label, CAR)
    clicks = np.array([a, b, s.road.start])
    out = ours_propagate(s.evidence(), clicks, s.label[clicks], S, HAND, HAND_LOG_ODDS)
    assert (out.label[s.car_a.start:] == CAR).all() and (out.label[s.road] == ROAD).mean() > 0.97
    ia, ib = out.instance_id[s.car_a], out.instance_id[s.car_b]
    assert len(np.unique(ia)) == 1 and len(np.unique(ib)) == 1 and ia[0] != ib[0] and ia[0] > 0


def test_ours_pedestrian_in_front_of_wall(pedestrian_wall):
    """Ours: clicks on wall and pedestrian label both correctly though they share a pre-segment; the
    click-free tree is not labelled, and its candidate set (non-ground prior) still holds vegetation."""
    s = pedestrian_wall
    clicks = np.array([s.wall.start, s.ped.start + 5, s.road.start])
    out = ours_propagate(s.evidence(), clicks, s.label[clicks], S, HAND, HAND_LOG_ODDS)
    assert (out.label[s.wall] == WALL).mean() > 0.97 and not (out.label[s.wall] == PED).any()
    assert (out.label[s.ped] == PED).mean() > 0.97 and not (out.label[s.ped] == WALL).any()
    assert (out.label[s.road] == ROAD).mean() > 0.97
    assert (out.label[s.tree] == 0).all()
    sets = candidates_to_sets(out.candidate_mask[s.tree], S.num_classes)
    assert sets[:, VEG - 1].all() and not sets[:, ROAD - 1].any()


def test_ours_wall_click_does_not_leak_onto_pedestrian(pedestrian_wall):
    """Ours: with only the wall clicked, the pedestrian's points (another mask) get no manmade label."""
    s = pedestrian_wall
    clicks = np.array([s.wall.start, s.road.start])
    out = ours_propagate(s.evidence(), clicks, s.label[clicks], S, HAND, HAND_LOG_ODDS)
    assert (out.label[s.wall] == WALL).mean() > 0.95
    assert not (out.label[s.ped] == WALL).any()


def test_ours_without_clicks_only_priors():
    """No click: nothing is labelled; candidate sets come from the ground / non-ground prior."""
    ev = Evidence(xyz=np.zeros((3, 3), np.float32) + [[5, 0, 0]], ground=np.array([True, False, False]),
                  segment_id=np.array([-1, 0, 0], np.int32), ground_cell=np.array([0, -1, -1], np.int32),
                  fov=np.ones(3, bool))
    out = ours_propagate(ev, np.zeros(0, np.int64), np.zeros(0, np.uint8), S, GraphParams.from_config())
    assert (out.label == 0).all()
    assert candidates_to_sets(out.candidate_mask, 16)[0, ROAD - 1] and not candidates_to_sets(out.candidate_mask, 16)[1, ROAD - 1]


# ---------------------------------------------------------------------------------------------- clicks


def random_scene(rng, n_objects=12):
    """Ground, a wall and boxes with instance keys; returns xyz, label, instance."""
    parts = [(plane(-30, 30, -30, 30, 0.5), ROAD, 0)]
    y, z = np.meshgrid(np.arange(-20, 20, 0.3), np.arange(SENSOR_Z, 2, 0.3))
    parts.append((np.stack([np.full(y.size, 25.0), y.ravel(), z.ravel()], 1), WALL, 0))
    for k in range(n_objects):
        c = rng.uniform(-20, 20, 2)
        cls = CAR if k % 2 else PED
        size = (4.0, 1.8, 1.5) if cls == CAR else (0.5, 0.5, 1.7)
        parts.append((box((c[0], c[1], SENSOR_Z + size[2] / 2), size, 0.2), cls, 1000 * cls + k + 1))
    xyz = np.concatenate([p for p, _, _ in parts]).astype(np.float32)
    label = np.concatenate([np.full(len(p), c) for p, c, _ in parts]).astype(np.uint8)
    inst = np.concatenate([np.full(len(p), i) for p, _, i in parts]).astype(np.int64)
    return xyz, label, inst


def test_budget_click_share_matches_budget():
    """Over many keyframes the clicked share equals the budget (stochastic rounding) and every click
    carries its point's true class."""
    rng = np.random.default_rng(1)
    xyz, label, inst = random_scene(rng)
    total = clicks = 0
    for t in range(60):
        c = ck.budget_clicks(xyz, label, inst, S, 0.001, ck.click_rng(0, f"token{t}"))
        assert (c.label == label[c.point_index]).all()
        total += len(label)
        clicks += len(c)
    assert abs(clicks / total - 0.001) < 0.00005


def test_budget_clicks_every_object_first():
    """With a budget above the number of regions, every object gets a click; a large stuff region gets
    the extra clicks, spread apart; same token, same clicks."""
    rng = np.random.default_rng(2)
    xyz, label, inst = random_scene(rng, n_objects=6)
    c = ck.budget_clicks(xyz, label, inst, S, 0.01, ck.click_rng(0, "t"))
    for key in np.unique(inst[inst > 0]):
        assert np.isin(np.flatnonzero(inst == key), c.point_index).any()
    road = c.point_index[label[c.point_index] == ROAD]
    assert len(road) >= 3
    d = np.linalg.norm(xyz[road][:, None] - xyz[road][None], axis=2) + np.eye(len(road)) * 1e9
    assert d.min() > 2.0
    again = ck.budget_clicks(xyz, label, inst, S, 0.01, ck.click_rng(0, "t"))
    assert np.array_equal(c.point_index, again.point_index)


def test_iupc_protocol_one_click_per_class_per_segment(pedestrian_wall):
    """IUPC's annotator: one click per class of each ground cell and segment: the road cell one, the
    wall + pedestrian segment one each, the tree (over 20 points, so not skipped) one."""
    s = pedestrian_wall
    ev = s.evidence()
    c = ck.iupc_clicks(s.label, s.ground, ev.segment_id, ev.ground_cell, ev.fov, S, ck.click_rng(0, "x"))
    got = sorted(s.label[c.point_index].tolist())
    assert got == sorted([ROAD, WALL, PED, VEG])


def test_clicks_file_round_trip_and_errors(tmp_path):
    """Written clicks read back identically; an unknown class, a sample not in the dataset, an
    out-of-range point index and a conflicting duplicate each give an error naming file and line."""
    clicks = {"tokA": ck.SampleClicks(np.array([3, 7]), np.array([CAR, ROAD], np.uint8)),
              "tokB": ck.SampleClicks.empty()}
    path = tmp_path / "c.tsv"
    ck.write_clicks(path, clicks, S)
    back = ck.read_clicks(path, S, {"tokA": 10, "tokB": 5})
    assert np.array_equal(back["tokA"].point_index, [3, 7]) and np.array_equal(back["tokA"].label, [CAR, ROAD])
    assert len(back["tokB"]) == 0
    cases = {
        "tokA\t3\tspaceship\n": "unknown class 'spaceship'",
        "tokZ\t3\tcar\n": "sample 'tokZ' is not in the dataset",
        "tokA\t10\tcar\n": "point index 10 is out of range for sample tokA (10 points)",
        "tokA\t1\tcar\ntokA\t1\ttruck\n": "clicked with two classes",
        "tokA\t1\t17\n": "class index 17 is outside 1..16",
    }
    for body, message in cases.items():
        bad = tmp_path / "bad.tsv"
        bad.write_text("sample_token\tpoint_index\tclass\n" + body)
        with pytest.raises(ck.ClickError, match=re.escape(message)) as e:
            ck.read_clicks(bad, S, {"tokA": 10, "tokB": 5})
        assert "bad.tsv, line" in str(e.value)
    with pytest.raises(ck.ClickError, match="does not exist"):
        ck.read_clicks(tmp_path / "missing.tsv", S, {"tokA": 10})


# ---------------------------------------------------------------------------------------------- annotation-free


def camera_from_scene(s):
    """A 1-camera setup where each part owns a block of pixels: every point gets the pixel of its part."""
    n = len(s.xyz)
    owner = s.mask[:, 0]
    uv = np.zeros((n, 1, 2), np.float32)
    for m in np.unique(owner):
        idx = np.flatnonzero(owner == m)
        uv[idx, 0, 0] = 2 * m + 0.5
        uv[idx, 0, 1] = 0.5
    mask = np.arange(8, dtype=np.int32)[None, :].repeat(2, 0) // 2  # pixel column 2m, 2m+1 -> mask m
    return uv, mask


def test_annotation_free_touching_cars_ours_vs_pointsam(cars):
    """Two touching cars in two masks: PointSAM's SAR links them (both vehicles, < 1 m) and keeps one
    instance for both; ours keeps the two masks apart: two instances matching the truth (PQ 1)."""
    s = cars
    uv, mask = camera_from_scene(s)
    sem = np.zeros_like(mask, dtype=np.uint8)
    sem[:, 0:4] = CAR
    sem[:, 4:6] = ROAD
    cams = [af.CameraMaps(mask, sem, (1.0, 1.0))]
    flag = np.ones((len(s.xyz), 1), bool)
    base = af.pointsam_baseline(s.xyz, flag, uv, cams, S)
    ours = af.ours_annotation_free(s.xyz, flag, uv, s.ground, s.evidence().segment_id, cams, S)
    assert len(np.unique(base.instance_id[np.r_[s.car_a.start:s.car_b.stop]])) == 1
    assert (ours.label[s.car_a] == CAR).all() and (ours.label[s.car_b] == CAR).all()
    assert (ours.label[s.road] == ROAD).all()
    ia, ib = np.unique(ours.instance_id[s.car_a]), np.unique(ours.instance_id[s.car_b])
    assert len(ia) == 1 and len(ib) == 1 and ia[0] != ib[0]
    assert pq_things(ours, s.label, s.instance) == pytest.approx(1.0)
    assert pq_things(base, s.label, s.instance) < 0.5


def test_annotation_free_occluded_wall_points_do_not_join_pedestrian(pedestrian_wall):
    """Wall points hidden behind the pedestrian project into the pedestrian's mask: the baseline (no
    occlusion test) lifts 'pedestrian' onto them; ours uses only visible views and keeps the
    pedestrian instance exact."""
    s = pedestrian_wall
    uv, mask = camera_from_scene(s)
    behind = np.flatnonzero((s.label == WALL) & (np.abs(s.xyz[:, 1]) < 0.3) & (s.xyz[:, 2] < SENSOR_Z + 1.75))
    uv[behind, 0, 0] = 2 * 1 + 0.5  # they fall on the pedestrian's pixels
    sem = np.zeros_like(mask, dtype=np.uint8)
    sem[:, 0:2], sem[:, 2:4], sem[:, 4:6], sem[:, 6:8] = WALL, PED, VEG, ROAD
    cams = [af.CameraMaps(mask, sem, (1.0, 1.0))]
    in_image = np.ones((len(s.xyz), 1), bool)
    visible = in_image.copy()
    visible[behind] = False
    base = af.pointsam_baseline(s.xyz, in_image, uv, cams, S)
    ours = af.ours_annotation_free(s.xyz, visible, uv, s.ground, s.evidence().segment_id, cams, S, in_image=in_image)
    assert (base.label[behind] == PED).all()
    assert not (ours.label[behind] == PED).any()
    ped = ours.instance_id[s.ped]
    assert len(np.unique(ped)) == 1 and ped[0] > 0
    assert set(np.flatnonzero(ours.instance_id == ped[0])) == set(range(s.ped.start, s.ped.stop))


def test_pointsam_multiview_merge_last_camera_wins():
    """A new instance sharing >= half of the smaller one's points adopts the old id and class; shared
    points otherwise take the later camera's instance."""
    ref_sem, ref_inst = np.array([4, 4, 4, 0, 0]), np.array([0, 0, 0, -1, -1])
    new_sem, new_inst = np.array([10, 10, 0, 0, 0]), np.array([0, 0, -1, -1, -1])
    s, i = af.multiview_merge(ref_sem, ref_inst, new_sem, new_inst)
    assert s.tolist()[:3] == [4, 4, 4] and i.tolist()[:3] == [0, 0, 0]
    ref_sem, ref_inst = np.array([4, 4, 4, 4, 0, 0, 0]), np.array([0, 0, 0, 0, -1, -1, -1])
    new_sem, new_inst = np.array([0, 0, 0, 7, 7, 7, 7]), np.array([-1, -1, -1, 0, 0, 0, 0])
    s, i = af.multiview_merge(ref_sem, ref_inst, new_sem, new_inst)
    assert s.tolist() == [4, 4, 4, 7, 7, 7, 7] and i[3] != 0 and len(set(i[3:])) == 1


def test_simulated_2d_corruption():
    """No corruption gives the truth back; erosion removes a boundary band of each thing instance;
    missing every object paints all things background; the same seed gives the same map."""
    label = np.full((40, 60), ROAD, np.uint8)
    inst = np.zeros((40, 60), np.int64)
    label[10:30, 10:30], inst[10:30, 10:30] = CAR, 17001
    label[5:15, 40:50], inst[5:15, 40:50] = PED, 2001
    none = Corruption.from_config(dict(erosion_px=0, confusion=0, miss=0, hallucination=0))
    assert np.array_equal(simulate_map(label, inst, S, none, np.random.default_rng(0)), label)
    eroded = simulate_map(label, inst, S, Corruption.from_config(dict(erosion_px=2, confusion=0, miss=0, hallucination=0)), np.random.default_rng(0))
    assert (eroded[10:12, 10:30] == 0).all() and (eroded[12:28, 12:28] == CAR).all()
    missed = simulate_map(label, inst, S, Corruption.from_config(dict(erosion_px=0, confusion=0, miss=1.0, hallucination=0)), np.random.default_rng(0))
    assert not S.thing_mask[missed].any()
    c = Corruption.from_config(dict(confusion=0.5, miss=0.2, hallucination=2))
    assert np.array_equal(simulate_map(label, inst, S, c, np.random.default_rng(5)),
                          simulate_map(label, inst, S, c, np.random.default_rng(5)))


# ---------------------------------------------------------------------------------------------- E-step


def test_dynamic_threshold():
    """Exactly one class must pass max(0.5, best score of the class among points predicting it - margin)."""
    score = np.array([[0.9, 0.1], [0.55, 0.45], [0.6, 0.6], [0.2, 0.8]])
    assert dynamic_threshold_label(score, 0.1).tolist() == [0, -1, -1, 1]
    assert dynamic_threshold_label(score, 0.4).tolist() == [0, 0, -1, 1]


def test_estep_candidates_clicks_win_and_round():
    """IUPC's E-step labels candidate-set points inside their set only, never overrides clicks, and
    records the round; ours also labels unknown points (prototypes agreeing) and demotes a round-0
    label that network and prototypes contradict to a candidate set of both classes."""
    k = S.num_classes
    n = 7
    r0 = Labels.unknown(n, k)
    r0.set_clicks(np.array([0, 6]), np.array([CAR, TRUCK], np.uint8))
    r0.candidate_mask[1] = r0.candidate_mask[2] = candidate_bit(CAR) | candidate_bit(TRUCK)
    r0.source[1] = r0.source[2] = CANDIDATES
    r0.candidate_mask[3] = sum(candidate_bit(c) for c in (ROAD, 12, 13, 14))  # a ground point's prior: flat classes
    r0.label[4], r0.source[4], r0.candidate_mask[4] = ROAD, PROPAGATED, candidate_bit(ROAD)
    r0.label[5], r0.source[5], r0.candidate_mask[5] = CAR, PROPAGATED, candidate_bit(CAR)
    logits = np.full((n, k), -10.0)
    logits[0, TRUCK - 1] = 10  # the network disagrees with the click: the click wins
    logits[1, TRUCK - 1] = 10  # inside the set
    logits[2, PED - 1] = 10  # outside the set {car, truck}: no label
    logits[3, ROAD - 1] = 10  # unlabelled ground point
    logits[4, ROAD - 1] = 10
    logits[5, ROAD - 1] = 10  # contradicts a propagated 'car'
    logits[6, TRUCK - 1] = 10
    feats = np.eye(n, 8)
    feats[3] = feats[5] = feats[4]  # points 3 and 5 look like the road point
    feats[6] = feats[1]  # the truck click's features are point 1's
    iupc = estep(r0, logits, feats, S, EStepParams.from_config(dict(method="iupc", confidence=0.5)), round=1)
    assert iupc.label.tolist()[:4] == [CAR, TRUCK, 0, 0]
    assert iupc.source[1] == NETWORK and iupc.round[1] == 1 and iupc.round[0] == 0
    ours = estep(r0, logits, feats, S, EStepParams.from_config(dict(method="ours", confidence=0.5, contradict=0.9)), round=2)
    assert ours.label.tolist()[:4] == [CAR, TRUCK, 0, ROAD] and ours.round[3] == 2
    assert ours.label[5] == 0 and ours.source[5] == CANDIDATES
    assert candidates_to_sets(ours.candidate_mask[5:6], k)[0, [CAR - 1, ROAD - 1]].all()
    # calibrated thresholds: a class the network never gets right on round-0 labels is never accepted
    th = calibrate([r0], [logits], k, target=0.99, min_points=1)
    assert th[ROAD - 1] <= 1.0 and np.isinf(th[PED - 1])


# ---------------------------------------------------------------------------------------------- metrics


def pq_things(labels: Labels, truth: np.ndarray, instance: np.ndarray, min_points: int = 15) -> float | None:
    """PQ over the thing classes of ``labels`` against truth, as the evaluation measures it."""
    key = np.where(instance > 0, 2 * instance + 1, 2 * truth.astype(np.int64))
    c = pseudolabel_counts(labels.label, labels.candidate_mask, labels.source, labels.instance_id, truth, key, S, min_points)
    return pseudolabel_figures(c, S, min_points)["pq_things"]


def test_label_counts_and_ratios():
    """Precision counts only judged points (truth > 0); shares are of scored points; candidate sets
    count when they hold the truth."""
    k = S.num_classes
    lab = Labels.unknown(5, k)
    lab.label[:3] = [CAR, CAR, ROAD]
    lab.source[:3] = [CLICK, PROPAGATED, PROPAGATED]
    lab.candidate_mask[3] = candidate_bit(CAR) | candidate_bit(PED)
    lab.source[3] = CANDIDATES
    truth = np.array([CAR, PED, 0, PED, ROAD], np.uint8)
    c = pseudolabel_counts(lab.label, lab.candidate_mask, lab.source, lab.instance_id, truth, truth.astype(np.int64), S)
    r = pseudolabel_figures(c, S)
    assert r["labelled_share"] == pytest.approx(2 / 4) and r["precision"] == pytest.approx(1 / 2)
    assert r["candidate_share"] == pytest.approx(1 / 4) and r["candidate_contains_truth"] == 1.0
    assert r["mean_candidate_set_size"] == 2
    assert r["click_share"] == pytest.approx(1 / 5) and r["iupc_table"]["sparse"] == pytest.approx(1 / 5)
    assert r["per_class"]["car"]["precision"] == pytest.approx(0.5) and r["per_class"]["pedestrian"]["recall"] == 0
    assert r["min_class_recall"] == 0.0 and r["per_class"]["car"]["recall"] == 1.0


def test_panoptic_counts_known_answer():
    """One matched instance (IoU 0.8), one missed, one false positive: PQ = 0.8 * 1/2."""
    true_l = np.array([CAR] * 10 + [CAR] * 20 + [ROAD] * 20, np.uint8)
    true_i = np.array([1] * 10 + [2] * 20 + [0] * 20)
    lab = Labels.unknown(50, S.num_classes)
    lab.label[:] = np.array([CAR] * 8 + [0] * 2 + [0] * 20 + [CAR] * 20, np.uint8)
    lab.instance_id[:] = np.array([5] * 8 + [0] * 22 + [9] * 20)
    key = np.where(true_i > 0, 2 * true_i + 1, 2 * true_l.astype(np.int64))
    c = pseudolabel_counts(lab.label, lab.candidate_mask, lab.source, lab.instance_id, true_l, key, S, min_points=5)
    q = pseudolabel_figures(c, S, min_points=5)
    car = q["pq_per_class"]["car"]
    assert (car["tp"], car["fn"], car["fp"]) == (1, 1, 1)
    assert q["sq_things"] == pytest.approx(0.8) and q["rq_things"] == pytest.approx(0.5) and q["pq_things"] == pytest.approx(0.4)


def test_user_2d_maps_and_their_class_declaration(tmp_path):
    """A 2D model's class-id PNG maps through the declared classes to the label space; a mapping to an
    unknown class, a class without mapping, a map of the wrong size or with undeclared ids are errors."""
    import cv2

    from lidarlift.pseudolabels.simulate2d import Semantic2DError, class_lookup, read_map

    table = class_lookup(["sky", "automobile", "road"], {"sky": None, "automobile": "car", "road": "driveable_surface"}, S)
    assert table.tolist() == [0, CAR, ROAD]
    img = np.zeros((4, 6), np.uint8)
    img[:, 3:] = 1
    img[3] = 2
    cv2.imwrite(str(tmp_path / "cam0.png"), img)
    got = read_map(tmp_path, "cam0", (4, 6), table)
    assert got[0, 0] == 0 and got[0, 4] == CAR and (got[3] == ROAD).all()
    with pytest.raises(Semantic2DError, match="maps to 'lorry'"):
        class_lookup(["a"], {"a": "lorry"}, S)
    with pytest.raises(Semantic2DError, match=r"no entry for classes \['b'\]"):
        class_lookup(["a", "b"], {"a": "car"}, S)
    with pytest.raises(Semantic2DError, match="differs from the image's"):
        read_map(tmp_path, "cam0", (8, 6), table)
    with pytest.raises(Semantic2DError, match="only 2 classes are declared"):
        read_map(tmp_path, "cam0", (4, 6), table[:2])
    with pytest.raises(Semantic2DError, match="missing or unreadable"):
        read_map(tmp_path, "cam9", (4, 6), table)


def test_hand_model_is_in_the_log_odds_file_format(tmp_path):
    """The tests' hand-written model is a valid log-odds file (the format the fitted file has)."""
    import json

    from lidarlift.pseudolabels.propagate import load_log_odds

    path = tmp_path / "log_odds.json"
    path.write_text(json.dumps({"header": {}, "log_odds": HAND_LOG_ODDS}))
    assert load_log_odds(path) == HAND_LOG_ODDS


def test_shipped_model_labels_clicked_cars_and_nothing_wrong(cars, pedestrian_wall):
    """The fitted defaults (log_odds.json and the schema's pseudolabels.ours): both clicked touching cars and the road are
    labelled with their classes; where wall and pedestrian share a pre-segment and the (fitted,
    weight-free) masks add nothing, no point gets a wrong class."""
    s = cars
    clicks = np.array([first(s.car_a, s.label, CAR), first(s.car_b, s.label, CAR), s.road.start])
    out = ours_propagate(s.evidence(), clicks, s.label[clicks], S, GraphParams.from_config())
    assert (out.label[s.car_a.start:] == CAR).mean() > 0.97 and (out.label[s.road] == ROAD).mean() > 0.97
    s = pedestrian_wall
    clicks = np.array([s.wall.start, s.ped.start + 5, s.road.start])
    out = ours_propagate(s.evidence(), clicks, s.label[clicks], S, GraphParams.from_config())
    assert not ((out.label > 0) & (out.label != s.label)).any()
    assert (out.label[s.road] == ROAD).mean() > 0.97
