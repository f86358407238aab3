"""The ground fit's start: the sensor height measured from the sweep (lidarlift.ground.estimate_sensor_height)."""
from __future__ import annotations

import numpy as np
import pytest

from lidarlift.config import typed
from lidarlift.ground import CellPlaneParams, cell_plane_ground, estimate_sensor_height

HDL32 = np.linspace(-30.67, 10.67, 32)
HDL64 = np.concatenate([np.linspace(-24.8, -8.8, 32), 2.0 - np.arange(32)[::-1] / 3.0])


def street(height: float, beams: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast a LiDAR ``height`` m over a road (z = -height) with a pavement 0.15 m up beyond 5 m to the
    left and a truck's flank (4 m tall, 12 m long) 1.6 m to the right of the sensor: the flank gives far
    more returns by the car than the road, and the pavement more flat area than the road in part of the
    window. Returns xyz (N, 3) and is_ground (N,) (road and pavement)."""
    el = np.radians(beams)
    az = np.arange(steps) * 2 * np.pi / steps
    e, a = np.meshgrid(el, az, indexing="ij")
    d = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)
    down = d[:, 2] < 0
    t = np.full(len(d), np.inf)
    t[down] = height / -d[down, 2]
    hit = d * t[:, None]
    kerb = down & (hit[:, 1] > 5.0)  # the pavement: 0.15 m up
    t[kerb] = (height - 0.15) / -d[kerb, 2]
    ground = np.isfinite(t)
    # the truck's flank: the plane y = -1.6, x in [-6, 6], from the ground to 4 m up
    with np.errstate(divide="ignore", invalid="ignore"):
        tf = -1.6 / d[:, 1]
        pf = d * tf[:, None]
    flank = (tf > 0) & (np.abs(pf[:, 0]) <= 6) & (pf[:, 2] >= -height) & (pf[:, 2] <= 4 - height) & (tf < t)
    t[flank] = tf[flank]
    ground &= ~flank
    keep = np.isfinite(t) & (t < 60)
    return d[keep] * t[keep, None], ground[keep]


@pytest.mark.parametrize("height,beams,steps", [(1.84, HDL32, 1080), (1.73, HDL64, 2000), (2.3, HDL64, 2000), (1.5, HDL32, 1080)])
def test_the_sensor_height_is_measured_from_the_road_by_the_car(height, beams, steps):
    """The road under the car, not the truck flank's many returns nor the kerb-high pavement: within 3 cm
    on mounts from 1.5 to 2.3 m, on 32 and 64 beams; with it the ground fit (sensor_height: null, the
    default) finds the road and the pavement, while a hand-set 1.84 m loses half the road under a 1.5 m mount."""
    xyz, ground = street(height, beams, steps)
    assert (~ground).sum() > 0.2 * ground[np.hypot(xyz[:, 0], xyz[:, 1]) < 12].sum()  # the flank is a crowd by the car
    assert estimate_sensor_height(xyz) == pytest.approx(height, abs=0.03)
    params = typed(CellPlaneParams, "presegment.fast.ground")
    assert params.sensor_height is None  # the default measures it
    found, _ = cell_plane_ground(xyz, [], params)
    assert (found & ground).sum() >= 0.98 * ground.sum() and (found & ~ground).sum() <= 0.02 * (~ground).sum()
    if height == 1.5:
        import dataclasses

        fixed, _ = cell_plane_ground(xyz, [], dataclasses.replace(params, sensor_height=1.84))
        assert (fixed & ground).sum() < 0.9 * ground.sum()


def test_a_sweep_with_nothing_below_the_sensor_names_the_key():
    xyz = np.random.default_rng(0).uniform([-10, -10, 0.5], [10, 10, 3], (500, 3))
    with pytest.raises(ValueError, match="presegment.fast.ground.sensor_height"):
        estimate_sensor_height(xyz)
