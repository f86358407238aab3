"""Sensors of the synthetic rig: a rotating LiDAR (presets of real 32-, 64- and 128-beam sensors,
:data:`LIDAR_PRESETS`) and six pinhole cameras, ray-cast with open3d's RaycastingScene against a
:class:`~lidarlift.synth.world.SceneWorld`.

Frames (nuScenes conventions):
- *local*: the scene frame of :mod:`lidarlift.synth.world` (stands in for nuScenes' global frame);
- *ego*: x forward, y left, z up, origin at the rear axle on the ground;
- *LIDAR_TOP*: x right, y forward, z up (yaw -90 deg w.r.t. ego, as in nuScenes), on the roof at 1.84 m;
- *camera*: x right, y down, z forward (OpenCV). Pixel (row v, column u) is rendered along the ray
  through image coordinates (u, v): integer coordinates are pixel centres, so a projected point
  belongs to pixel ``(round(v), round(u))``.

The LiDAR spins once per sweep (50 ms for the nuScenes preset, 100 ms for the others); each ray fires
at its own time and points are motion-compensated into the sensor frame at the sweep timestamp
(:func:`cast_sweep`). A camera exposes when the LiDAR passes its optical axis
(:func:`camera_time_offsets`, 4..45 ms after the sweep timestamp at 20 Hz), so camera and LiDAR
timestamps differ and the ego and moving objects move in between.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from lidarlift.geometry import matrix_to_quaternion
import open3d as o3d

from lidarlift.synth.world import (
    PAT_FACADE, PAT_ROAD, PAT_VEG, SceneWorld, TriMesh, WorldParams, rot_x, rot_y, rot_z,
)

CAMERA_CHANNELS: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT",
)
LIDAR_CHANNEL = "LIDAR_TOP"

#: Ego body (nuScenes' Renault Zoe: 4.08 x 1.73 x 1.56 m, rear axle at x = 0) as axis-aligned boxes in
#: the ego frame -- lower body and narrower cabin. LiDAR rays hitting them are dropped (nuScenes removes
#: such ego returns too), which leaves the usual blind ring around the car.
EGO_BOXES = (
    (np.array([-0.65, -0.87, 0.15]), np.array([3.43, 0.87, 0.95])),
    (np.array([-0.45, -0.6, 0.95]), np.array([1.75, 0.6, 1.56])),
)

# Camera yaw (deg, ego frame, CCW from forward), mounting translation (ego frame) and 1600x900 intrinsics
# (fx = fy, cx, cy) close to the real nuScenes rig.
_CAMERA_RIG = {
    "CAM_FRONT": (0.0, (1.70, 0.016, 1.511), (1266.4, 816.3, 491.5)),
    "CAM_FRONT_RIGHT": (-55.0, (1.551, -0.493, 1.496), (1260.8, 808.0, 495.3)),
    "CAM_BACK_RIGHT": (-110.0, (1.015, -0.481, 1.562), (1256.7, 792.1, 492.8)),
    "CAM_BACK": (180.0, (0.028, 0.003, 1.579), (809.2, 829.2, 481.8)),
    "CAM_BACK_LEFT": (110.0, (1.036, 0.485, 1.591), (1256.7, 817.8, 452.0)),
    "CAM_FRONT_LEFT": (55.0, (1.524, 0.495, 1.509), (1272.6, 826.6, 479.8)),
}
# small fixed mounting errors (pitch, roll in deg) so extrinsics are not idealised
_CAMERA_TILT = {
    "CAM_FRONT": (0.4, -0.2), "CAM_FRONT_RIGHT": (-0.3, 0.3), "CAM_BACK_RIGHT": (0.5, 0.1),
    "CAM_BACK": (-0.2, -0.3), "CAM_BACK_LEFT": (0.2, 0.4), "CAM_FRONT_LEFT": (-0.4, -0.1),
}


@dataclass(frozen=True)
class SensorCalib:
    """A sensor's mounting: ``rotation`` (3, 3) maps sensor to ego coordinates, ``translation`` (3,)
    is its origin in the ego frame; ``intrinsic`` (3, 3) for cameras, None for the LiDAR."""

    channel: str
    rotation: np.ndarray
    translation: np.ndarray
    intrinsic: np.ndarray | None = None
    width: int = 0
    height: int = 0

    @property
    def quaternion(self) -> list[float]:
        """nuScenes (w, x, y, z) quaternion of ``rotation``."""
        return rotation_to_quaternion(self.rotation)


def rotation_to_quaternion(R: np.ndarray) -> list[float]:
    """(3, 3) rotation -> [w, x, y, z] with w >= 0, unit norm."""
    q = matrix_to_quaternion(R)
    return (q / np.linalg.norm(q)).tolist()


def lidar_calib(mount_height: float = 1.84) -> SensorCalib:
    """LIDAR_TOP: yaw -90 deg (x right, y forward) plus a small tilt, on the roof, ``mount_height`` m over
    the ground (the preset's :attr:`LidarSpec.mount_height`; nuScenes' 1.84 m)."""
    R = rot_z(-np.pi / 2) @ rot_x(np.radians(0.3)) @ rot_y(np.radians(-0.4))
    return SensorCalib("LIDAR_TOP", R, np.array([0.943, 0.0, float(mount_height)]))


def camera_rig(width: int, height: int) -> list[SensorCalib]:
    """The six cameras, intrinsics scaled from 1600x900 to (width, height)."""
    sx, sy = width / 1600.0, height / 900.0
    rig = []
    for ch in CAMERA_CHANNELS:
        yaw, t, (f, cx, cy) = _CAMERA_RIG[ch]
        pitch, roll = _CAMERA_TILT[ch]
        # camera axes in an ego frame rotated by yaw: z forward, x right, y down
        base = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # columns: cam x, y, z in ego
        R = rot_z(np.radians(yaw)) @ rot_y(np.radians(pitch)) @ rot_x(np.radians(roll)) @ base
        K = np.array([[f * sx, 0.0, cx * sx], [0.0, f * sy, cy * sy], [0.0, 0.0, 1.0]])
        rig.append(SensorCalib(ch, R, np.array(t, float), K, width, height))
    return rig


#: Ego-frame yaw (deg) where each LiDAR revolution starts; the sensor then spins clockwise (seen from
#: above). Placed at the seam between CAM_BACK_LEFT and CAM_BACK so no camera centre sits on the seam.
LIDAR_START_YAW_DEG = 140.0


def firing_offset(yaw: np.ndarray | float, period_s: float) -> np.ndarray | float:
    """Seconds after the sweep timestamp at which the LiDAR, spinning once per ``period_s``, fires
    towards ego-frame yaw (rad)."""
    frac = np.mod(np.radians(LIDAR_START_YAW_DEG) - np.asarray(yaw), 2 * np.pi) / (2 * np.pi)
    return period_s * frac


def camera_time_offsets(period_s: float) -> dict[str, float]:
    """Seconds after the sweep timestamp at which each camera exposes: when the spinning LiDAR
    passes the camera's optical axis (as nuScenes triggers its cameras), 4..45 ms at 20 Hz."""
    return {ch: float(firing_offset(np.radians(_CAMERA_RIG[ch][0]), period_s)) for ch in CAMERA_CHANNELS}


# --------------------------------------------------------------------------------------------------
# LiDAR presets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LidarSpec:
    """A rotating multi-beam LiDAR.

    ``elevations_deg``: (B,) beam elevations in the LIDAR_TOP frame, ascending (ring 0 = the lowest
    beam, as the ROS Velodyne/Ouster drivers number rings); ``azimuth_steps``: firings per revolution
    (all beams of a step fire together); ``period_s``: seconds per revolution; ``min_range`` /
    ``max_range`` (m); ``range_noise``: 1-sigma range error (m); ``dropout``: share of returns lost at
    random (grazing and weak returns are lost on top); ``noise_points``: share of rays giving a
    spurious return. ``mount_height``: the sensor's height over the ground on its car (m): the stages
    measure it from the data (:func:`lidarlift.ground.estimate_sensor_height`), so the presets differ
    here as the real cars do. ``reference``: the real sensor and the point count the preset is sized to.
    """

    name: str
    elevations_deg: tuple[float, ...]
    azimuth_steps: int
    period_s: float
    max_range: float
    range_noise: float
    dropout: float = 0.03
    noise_points: float = 0.001
    min_range: float = 0.5
    mount_height: float = 1.84
    reference: str = ""

    @property
    def beams(self) -> int:
        return len(self.elevations_deg)


def _hdl64e_elevations() -> tuple[float, ...]:
    """HDL-64E S2 beam elevations (deg), ascending: the lower block's 32 lasers from -24.8 to -8.8 deg
    (16/31 ~ 0.52 deg apart), the upper block's 32 from -8.33 to +2.0 deg (1/3 deg apart)."""
    lower = np.linspace(-24.8, -8.8, 32)
    upper = 2.0 - np.arange(32)[::-1] / 3.0
    return tuple(float(v) for v in np.concatenate([lower, upper]))


#: The LiDAR presets of ``synth.sensor``; the rig is the same for all (ego body, cameras) but for the
#: LiDAR's mount height: 1.84 m (nuScenes') but for the OS1-128, on a 2.0 m roof rack. The 64-beam
#: preset keeps 1.84 m: at KITTI's 1.73 m the rig's roof (nuScenes' car, 1.56 m) would hide a third
#: of its returns (85k points per keyframe against the real ~120k). Points
#: per keyframe in the synthetic streets (seeds 0-3; ``bench/bench_synth.py``, ``bench/bench_scanners.py``):
#: nuscenes32 33-34k, kitti64 118-120k, os128 94-98k.
LIDAR_PRESETS: dict[str, LidarSpec] = {
    # nuScenes' Velodyne HDL-32E: 32 beams 1.33 deg apart from -30.67 to +10.67 deg, 20 Hz, +-2 cm,
    # returns usable to ~70-80 m. nuScenes keyframes hold ~34k points (the sensor's spec: up to 1.39 M
    # points/s in dual-return mode); the single-return synthetic sensor fires 1700 steps per revolution
    # (0.21 deg) so that a keyframe holds ~34k points too (1085 steps, the single-return rate, give ~22k:
    # the ego body, the sky and dropout take ~38% of the rays).
    "nuscenes32": LidarSpec(
        "nuscenes32", tuple(float(v) for v in np.linspace(-30.67, 10.67, 32)), azimuth_steps=1700,
        period_s=0.05, max_range=80.0, range_noise=0.02,
        reference="nuScenes LIDAR_TOP (HDL-32E, 20 Hz): ~34k points per keyframe"),
    # SemanticKITTI's Velodyne HDL-64E S2: +2 to -24.8 deg in two blocks of non-uniform spacing
    # (:func:`_hdl64e_elevations`), 10 Hz, ~2 cm, 120 m. KITTI scans hold ~120k points; 2480 steps per
    # revolution (0.145 deg; the sensor's spec: 0.17 deg at 10 Hz, 0.09 deg at 5 Hz) give that in a
    # synthetic street (the rig's low roof mount hides part of the lower block).
    "kitti64": LidarSpec(
        "kitti64", _hdl64e_elevations(), azimuth_steps=2480, period_s=0.1, max_range=120.0, range_noise=0.02,
        reference="SemanticKITTI velodyne (HDL-64E S2, 10 Hz): ~120k points per scan"),
    # Ouster OS1-128 in its 1024x10 mode (datasheet: 128 beams uniform over +-22.5 deg = 0.354 deg apart,
    # 1024 columns = 0.352 deg, 10 Hz, 0.8-120 m, +-3 cm at moderate SNR): exactly the real firing
    # pattern, 131,072 firings per frame, so a street returns what the real sensor would.
    "os128": LidarSpec(
        "os128", tuple(float(v) for v in np.linspace(-22.5, 22.5, 128)), azimuth_steps=1024, period_s=0.1,
        max_range=120.0, range_noise=0.03, min_range=0.8, mount_height=2.0,
        reference="Ouster OS1-128, 1024x10 mode: 128 x 1024 = 131,072 firings per frame"),
}


def resolve_lidar(params: WorldParams) -> LidarSpec:
    """The LiDAR of ``params``: its ``sensor`` preset with the parameters that are set (not None)
    overriding it; ``beams`` spreads that many beams uniformly over the preset's elevation range."""
    spec = LIDAR_PRESETS["nuscenes32" if params.sensor == "auto" else params.sensor]
    over = {k: getattr(params, k) for k in ("azimuth_steps", "max_range", "range_noise", "dropout", "noise_points")
            if getattr(params, k) is not None}
    if params.beams is not None and params.beams != spec.beams:
        lo, hi = spec.elevations_deg[0], spec.elevations_deg[-1]
        over["elevations_deg"] = tuple(float(v) for v in np.linspace(lo, hi, int(params.beams)))
    return dataclasses.replace(spec, **over) if over else spec


# --------------------------------------------------------------------------------------------------
# Ray casting against static + moving geometry
# --------------------------------------------------------------------------------------------------


@dataclass
class Hits:
    """First hits of N rays. t: (N,) float32 distance (inf = miss); face: (N,) int64 index into the
    caster's face tables (-1 = miss); normal: (N, 3) float32 unit face normal, local frame."""

    t: np.ndarray
    face: np.ndarray
    normal: np.ndarray

    @property
    def hit(self) -> np.ndarray:
        return self.face >= 0


def _make_scene(V: np.ndarray, F: np.ndarray) -> o3d.t.geometry.RaycastingScene:
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(V.astype(np.float32)), o3d.core.Tensor(F.astype(np.uint32)))
    return scene


class SceneCaster:
    """Owns one scene's BVHs and the face attribute tables (static faces, then moving faces).

    Face tables (F_total,): fine uint8, instance uint16, color (F, 3) float32, refl float32,
    pattern uint8, thing int32 (index into world.things for moving faces, -1 for static faces).
    """

    def __init__(self, world: SceneWorld):
        self.world = world
        sm = world.static_mesh
        self.static = _make_scene(sm.vertices, sm.faces)
        self.n_static = sm.n_faces
        dyn_meshes, vert_thing, face_thing = [], [], []
        for k, ti in enumerate(world.moving):
            th = world.things[ti]
            R, _ = th.pose(0.0)  # constant heading: rotate once, translate per ray time
            dyn_meshes.append(th.mesh.transformed(R, np.zeros(3)))
            vert_thing.append(np.full(len(th.mesh.vertices), k))
            face_thing.append(np.full(th.mesh.n_faces, ti))
        dm = TriMesh.concat(dyn_meshes)
        self.n_dyn = dm.n_faces
        self.dyn_vertices_obj = dm.vertices
        self.dyn_faces = dm.faces
        self.dyn_vertex_thing = np.concatenate(vert_thing) if vert_thing else np.zeros(0, int)
        both = TriMesh.concat([sm, dm])
        self.fine, self.instance = both.fine, both.instance
        self.color, self.refl, self.pattern = both.color, both.reflectivity, both.pattern
        self.thing = np.concatenate([np.full(self.n_static, -1, np.int32),
                                     np.concatenate(face_thing).astype(np.int32) if face_thing else np.zeros(0, np.int32)])
        self._velocity = np.array([t.velocity for t in world.things]) if world.things else np.zeros((0, 3))
        # per moving object: its own BVH (rotated, untranslated) for exact per-ray timing in sweeps
        self._obj_scenes: list = [None] * len(world.moving)
        self._obj_face_offset = np.cumsum([0] + [m.n_faces for m in dyn_meshes])[:-1]
        self._obj_bounds = [(m.vertices.min(0), m.vertices.max(0)) for m in dyn_meshes]
        self._obj_meshes = dyn_meshes
        self._bank: np.ndarray | None = None

    def noise_bank(self, n: int) -> np.ndarray:
        """>= 2n float32 N(0, 3) values (pixel noise), drawn once per scene: drawing fresh normals
        per image costs more than rendering it."""
        if self._bank is None or len(self._bank) < 2 * n:
            rng = np.random.default_rng(self.world.texture_seed)
            self._bank = rng.standard_normal(max(2 * n, 1 << 21), dtype=np.float32) * np.float32(3.0)
        return self._bank

    def displacement(self, thing: np.ndarray, dtau: float | np.ndarray) -> np.ndarray:
        """(N, 3) motion over dtau seconds (scalar or (N,)) of points on ``thing`` (-1 = static -> 0)."""
        out = np.zeros((len(thing), 3))
        dtau = np.broadcast_to(np.asarray(dtau, float), (len(thing),))
        m = thing >= 0
        out[m] = self._velocity[thing[m]] * dtau[m, None]
        return out

    def _object_scene(self, k: int):
        if self._obj_scenes[k] is None:
            self._obj_scenes[k] = _make_scene(self._obj_meshes[k].vertices, self._obj_meshes[k].faces)
        return self._obj_scenes[k]

    def _swept_box(self, k: int, t0: float, t1: float, pad: float) -> tuple[np.ndarray, np.ndarray]:
        th = self.world.things[self.world.moving[k]]
        lo_k, hi_k = self._obj_bounds[k]
        p0, p1 = th.position + th.velocity * t0, th.position + th.velocity * t1
        return np.minimum(p0, p1) + lo_k - pad, np.maximum(p0, p1) + hi_k + pad

    def cast(self, origins: np.ndarray, dirs: np.ndarray, times: float | np.ndarray,
             max_range: float = np.inf) -> Hits:
        """First hits of rays (origins (3,) or (N, 3), unit dirs (N, 3), local frame) fired at
        ``times`` (scalar or (N,), e.g. a spinning LiDAR's per-ray times).

        Static geometry is one BVH. Each moving object has its own BVH in a frame that only
        translates with it, so a ray is cast there with its origin minus the object's translation at
        the ray's own time: timing is exact and no BVH is rebuilt per instant. Only rays whose
        azimuth falls within the object's swept box (seen from the mean origin, inflated by the
        origins' spread) are cast against it."""
        n = len(dirs)
        single_origin = np.ndim(origins) == 1
        rays = np.empty((n, 6), np.float32)
        rays[:, :3], rays[:, 3:] = origins, dirs
        a = self.static.cast_rays(o3d.core.Tensor(rays))
        t = a["t_hit"].numpy()
        face = a["primitive_ids"].numpy().astype(np.int64)
        normal = a["primitive_normals"].numpy()
        face[~np.isfinite(t)] = -1
        if not self.n_dyn or not n:
            return Hits(t, face, normal)
        times = np.broadcast_to(np.asarray(times, float), (n,))
        az = np.arctan2(dirs[:, 1], dirs[:, 0])
        order = np.argsort(az)
        az_sorted = az[order]
        if single_origin:
            o_m, spread = np.asarray(origins, float), 0.05
        else:
            o_m = origins.mean(0)
            spread = float(np.linalg.norm(origins - o_m, axis=1).max()) + 0.05
        t0, t1 = float(times.min()), float(times.max())
        for k, ti in enumerate(self.world.moving):
            lo, hi = self._swept_box(k, t0, t1, spread)
            if np.linalg.norm(np.clip(o_m, lo, hi) - o_m) > max_range + spread:
                continue
            if lo[0] <= o_m[0] <= hi[0] and lo[1] <= o_m[1] <= hi[1]:
                cand = np.arange(n)
            else:
                cx = np.array([lo[0], hi[0], hi[0], lo[0]]) - o_m[0]
                cy = np.array([lo[1], lo[1], hi[1], hi[1]]) - o_m[1]
                a0 = math.atan2(cy.mean(), cx.mean())
                dev = np.mod(np.arctan2(cy, cx) - a0 + np.pi, 2 * np.pi) - np.pi
                lo_a = np.mod(a0 + dev.min() + np.pi, 2 * np.pi) - np.pi
                hi_a = np.mod(a0 + dev.max() + np.pi, 2 * np.pi) - np.pi
                i0 = np.searchsorted(az_sorted, lo_a, side="left")
                i1 = np.searchsorted(az_sorted, hi_a, side="right")
                cand = order[i0:i1] if lo_a <= hi_a else np.concatenate([order[i0:], order[:i1]])
            if not len(cand):
                continue
            th = self.world.things[ti]
            sub = rays[cand]
            sub[:, :3] -= (th.position + th.velocity * times[cand, None]).astype(np.float32)
            b = self._object_scene(k).cast_rays(o3d.core.Tensor(sub))
            tb = b["t_hit"].numpy()
            closer = tb < t[cand]
            sel = cand[closer]
            t[sel] = tb[closer]
            face[sel] = b["primitive_ids"].numpy().astype(np.int64)[closer] + self.n_static + self._obj_face_offset[k]
            normal[sel] = b["primitive_normals"].numpy()[closer]
        return Hits(t, face, normal)

    def occluded(self, origins: np.ndarray, direction: np.ndarray, tau: float) -> np.ndarray:
        """(N,) bool: anything lies along ``direction`` (3,) from each origin (N, 3) at time tau
        (shadow rays towards the sun)."""
        n = len(origins)
        rays = np.empty((n, 6), np.float32)
        rays[:, :3], rays[:, 3:] = origins, direction
        occ = self.static.test_occlusions(o3d.core.Tensor(rays), tnear=1e-3).numpy().astype(bool)
        if not self.n_dyn or not n:
            return occ
        # per object, only origins whose projection along the direction falls on the object's box
        d = np.asarray(direction, float)
        e1 = np.cross(d, [0.0, 0.0, 1.0]) if abs(d[2]) < 0.99 else np.array([1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(d, e1)
        P = np.column_stack([origins @ e1, origins @ e2, origins @ d])
        for k, ti in enumerate(self.world.moving):
            lo, hi = self._swept_box(k, tau, tau, 0.05)
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
            C = np.column_stack([corners @ e1, corners @ e2, corners @ d])
            cmin, cmax = C.min(0), C.max(0)
            cand = np.flatnonzero(~occ & (P[:, 0] >= cmin[0]) & (P[:, 0] <= cmax[0]) & (P[:, 1] >= cmin[1])
                                  & (P[:, 1] <= cmax[1]) & (P[:, 2] <= cmax[2]))
            if not len(cand):
                continue
            th = self.world.things[ti]
            sub = rays[cand]
            sub[:, :3] -= (th.position + th.velocity * tau).astype(np.float32)
            occ[cand] |= self._object_scene(k).test_occlusions(o3d.core.Tensor(sub), tnear=1e-3).numpy().astype(bool)
        return occ


# --------------------------------------------------------------------------------------------------
# Appearance (albedo, texture, LiDAR reflectivity)
# --------------------------------------------------------------------------------------------------


def _hash01(ix, iy, iz, seed: int) -> np.ndarray:
    h = (ix.astype(np.uint32) * np.uint32(0x8DA6B343)) ^ (iy.astype(np.uint32) * np.uint32(0xD8163841)) \
        ^ (iz.astype(np.uint32) * np.uint32(0xCB1AB31F)) ^ np.uint32(seed & 0xFFFFFFFF)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    return h.astype(np.float32) * np.float32(1.0 / 4294967296.0)


_NOISE_VOLUMES: dict[int, np.ndarray] = {}
_NOISE_N = 32


def _noise_volume(seed: int) -> np.ndarray:
    """(32, 32, 32) float32 periodic smooth noise in [0, 1] (Gaussian-filtered white noise)."""
    if seed not in _NOISE_VOLUMES:
        rng = np.random.default_rng(seed)
        white = rng.standard_normal((_NOISE_N,) * 3)
        k = np.fft.fftfreq(_NOISE_N)
        K2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
        v = np.real(np.fft.ifftn(np.fft.fftn(white) * np.exp(-2 * (np.pi * 1.8) ** 2 * K2)))  # sigma 1.8 cells
        v = (v - v.min()) / (v.max() - v.min())
        _NOISE_VOLUMES[seed] = v.astype(np.float32)
    return _NOISE_VOLUMES[seed]


def smooth_noise(p: np.ndarray, cell: float, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1] at points p (N, 3): two nearest-cell lookups into a periodic volume
    (cell sizes ``cell`` and 2.9 x ``cell``, so the 32-cell period does not show)."""
    vol = _noise_volume(seed)
    a = np.floor(p * (1.0 / cell)).astype(np.int64) & (_NOISE_N - 1)
    b = np.floor(p * (1.0 / (2.9 * cell))).astype(np.int64) & (_NOISE_N - 1)
    return 0.5 * (vol[a[:, 0], a[:, 1], a[:, 2]] + vol[b[:, 2], b[:, 0], b[:, 1]])


def texture_coords(caster: SceneCaster, face: np.ndarray, p: np.ndarray, tau: float | np.ndarray) -> np.ndarray:
    """Texture coordinates (N, 3): the local-frame point for static faces, the object-frame point for
    moving objects (so textures move with them). ``tau``: scalar or (N,) capture times."""
    th = caster.thing[np.maximum(face, 0)]
    th = np.where(face >= 0, th, -1)
    tau = np.broadcast_to(np.asarray(tau, float), (len(p),))
    q = p.copy()
    for ti in np.unique(th[th >= 0]):
        thing = caster.world.things[ti]
        R, _ = thing.pose(0.0)
        m = th == ti
        q[m] = (p[m] - thing.position - thing.velocity * tau[m, None]) @ R
    return q


#: texture contrast per pattern code (PAT_PLAIN, PAT_ROAD, PAT_FACADE, PAT_VEG, PAT_GLASS)
_TEXTURE_AMPLITUDE = np.array([0.25, 0.35, 0.2, 0.7, 0.3], np.float32)


def hash_noise(p: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Blocky white noise in [0, 1): one hash per cell of size ``scale`` (fine speckle texture)."""
    i = np.floor(p / scale).astype(np.int64)
    return _hash01(i[:, 0], i[:, 1], i[:, 2], seed)


def surface_appearance(caster: SceneCaster, face: np.ndarray, p: np.ndarray, tau: float | np.ndarray,
                       with_color: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """Albedo (N, 3) float32 (None when ``with_color`` is False) and LiDAR reflectivity (N,) float32
    at hit points p (N, 3), local frame, of faces ``face`` (all valid). Applies lane markings,
    facade windows and procedural texture (in object coordinates for moving objects)."""
    w = caster.world
    refl = caster.refl[face].copy()
    pat = caster.pattern[face]
    col = caster.color[face].copy() if with_color else None
    # painted road markings
    road = np.flatnonzero(pat == PAT_ROAD)
    if len(road):
        x, y = p[road, 0], p[road, 1]
        painted = np.zeros(len(road), bool)
        for mk in w.markings:
            a, c = (x, y) if mk.axis == 0 else (y, x)
            m = (np.abs(c - mk.c0) < mk.half_width) & (a >= mk.lo) & (a <= mk.hi)
            if mk.gap > 0:
                m &= np.mod(a - mk.lo, mk.dash + mk.gap) < mk.dash
            if m.any():
                painted |= m
                if with_color:
                    col[road[m]] = mk.color
        refl[road[painted]] = 0.6
        if with_color and painted.any():  # worn paint
            col[road[painted]] *= (0.75 + 0.25 * hash_noise(p[road[painted]], 0.3, w.texture_seed + 7))[:, None]
    # facade windows: a grid in (horizontal, height) facade coordinates
    fac = np.flatnonzero(pat == PAT_FACADE)
    if len(fac):
        u = np.mod(p[fac, 0] + p[fac, 1], 2.8)
        z = p[fac, 2]
        zm = np.mod(z, 3.2)
        win = fac[(u > 0.5) & (u < 2.1) & (zm > 1.0) & (zm < 2.5) & (z > 1.0)]
        refl[win] = 0.04
        if with_color:
            col[win] = np.array([0.16, 0.19, 0.23], np.float32) * (0.7 + 0.6 * hash_noise(p[win], 3.0, w.texture_seed + 3))[:, None]
    if not with_color:
        return None, refl.astype(np.float32)
    tc = texture_coords(caster, face, p, tau)
    amp = _TEXTURE_AMPLITUDE[np.minimum(pat, 4)]
    n = 0.65 * smooth_noise(tc, 0.1, w.texture_seed) + 0.35 * hash_noise(tc, 0.06, w.texture_seed + 1)
    col *= (1.0 + amp * (n - 0.5))[:, None]
    veg = pat == PAT_VEG
    if veg.any():  # foliage and grass: dark gaps
        g = hash_noise(tc[veg], 0.12, w.texture_seed + 2)
        col[veg] *= np.where(g < 0.3, 0.55, 1.0)[:, None]
    return np.clip(col, 0, 1).astype(np.float32), refl.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# LiDAR
# --------------------------------------------------------------------------------------------------


@dataclass
class Sweep:
    """One LiDAR sweep.

    points: (N, 5) float32 in the LIDAR_TOP frame at the sweep timestamp (x, y, z, intensity 0..255,
    ring 0..B-1); fine: (N,) uint8; instance: (N,) uint16; surface: (N, 3) float64 noise-free hit
    point in the local frame at its capture time (the point itself for noise returns); time: (N,)
    float64 capture time tau of each point; thing: (N,) int32 index of the moving object hit (-1
    otherwise); noise: (N,) bool spurious returns (fine class 0).
    """

    points: np.ndarray
    fine: np.ndarray
    instance: np.ndarray
    surface: np.ndarray
    time: np.ndarray
    thing: np.ndarray
    noise: np.ndarray


def lidar_directions(spec: LidarSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray directions of one revolution at phase 0 in the LIDAR_TOP frame.

    Returns (dirs (B * A, 3) unit, ring (B * A,) beam index, column (B * A,) azimuth step): the
    spec's B beam elevations (ring 0 the lowest beam) at each of its A azimuth steps."""
    elev = np.radians(np.asarray(spec.elevations_deg, float))
    az = np.arange(spec.azimuth_steps) * (2 * np.pi / spec.azimuth_steps)
    A, E = np.meshgrid(az, elev, indexing="ij")
    d = np.stack([np.cos(E) * np.cos(A), np.cos(E) * np.sin(A), np.sin(E)], -1).reshape(-1, 3)
    ring = np.tile(np.arange(spec.beams), spec.azimuth_steps)
    column = np.repeat(np.arange(spec.azimuth_steps), spec.beams)
    return d, ring, column


def _ray_hits_box(o: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(N,) bool: rays o + s d (s > 0) intersect the axis-aligned box [lo, hi]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t0, t1 = (lo - o) * inv, (hi - o) * inv
    tmin = np.nanmax(np.minimum(t0, t1), 1)
    tmax = np.nanmin(np.maximum(t0, t1), 1)
    return tmax >= np.maximum(tmin, 0.0)


_PATTERN_CACHE: dict = {}


def cast_sweep(caster: SceneCaster, params: WorldParams, tau: float, rng: np.random.Generator,
               calib: SensorCalib) -> Sweep:
    """Simulate the sweep with timestamp tau with the LiDAR ``params.lidar``.

    The sensor spins once per ``period_s`` starting at :data:`LIDAR_START_YAW_DEG`: each ray fires at its own
    time, from the ego pose at that time, against moving objects at that time
    (:meth:`SceneCaster.cast`). Points are then motion-compensated into
    the LIDAR_TOP frame at tau, as in nuScenes, so static structure is exact in that frame while
    moving objects appear where they were when the beam passed -- which is also where the camera
    facing that way saw them.
    """
    world = caster.world
    spec = params.lidar
    key = (spec.elevations_deg, spec.azimuth_steps)
    if key not in _PATTERN_CACHE:
        d0, ring0, col0 = lidar_directions(spec)
        # rays that hit the ego body never leave the car (the ~0.3 deg phase jitter is negligible here)
        d0_e = d0 @ calib.rotation.T
        o_e = np.broadcast_to(calib.translation, d0_e.shape)
        keep = np.ones(len(d0), bool)
        for lo, hi in EGO_BOXES:
            keep &= ~_ray_hits_box(o_e, d0_e, lo, hi)
        _PATTERN_CACHE[key] = (d0[keep], ring0[keep], col0[keep])
    d0, ring, column = _PATTERN_CACHE[key]
    phase = rng.uniform(0, 2 * np.pi / spec.azimuth_steps)
    d_s = d0 @ rot_z(phase).T
    d_e = d_s @ calib.rotation.T
    n_rays = len(d_e)
    # all beams of an azimuth step fire together: one time and one ego pose per step
    col_az = phase + np.arange(spec.azimuth_steps) * (2 * np.pi / spec.azimuth_steps)
    col_dir_e = np.column_stack([np.cos(col_az), np.sin(col_az), np.zeros_like(col_az)]) @ calib.rotation.T
    t_col = tau + firing_offset(np.arctan2(col_dir_e[:, 1], col_dir_e[:, 0]), spec.period_s)
    R_col, t_col_e = world.ego.poses(t_col)
    t_fire = t_col[column]
    origin = (np.einsum("nij,j->ni", R_col, calib.translation) + t_col_e)[column]
    d_w = np.einsum("nij,nj->ni", R_col[column], d_e)
    h = caster.cast(origin, d_w, t_fire, spec.max_range)
    t_hit, face, normal = h.t, h.face, h.normal
    ok = (face >= 0) & (t_hit <= spec.max_range) & (t_hit > spec.min_range)
    cosi = np.abs(np.einsum("ij,ij->i", normal, d_w))
    # dropout: random, grazing incidence, and weak returns from dark far surfaces
    p_drop = np.full(n_rays, spec.dropout) + np.where(cosi < 0.08, 0.5, 0.0)
    idx = np.flatnonzero(ok)
    _, refl = surface_appearance(caster, face[idx], origin[idx] + d_w[idx] * t_hit[idx, None], t_fire[idx],
                                 with_color=False)
    refl_all = np.zeros(n_rays, np.float32)
    refl_all[idx] = refl
    weak = ok & ((refl_all * cosi / np.maximum(np.where(ok, t_hit, 0) / 25.0, 1.0) ** 2) < 0.004)
    p_drop += np.where(weak, 0.6, 0.0)
    ok &= rng.random(n_rays) >= p_drop
    # spurious returns (labelled noise): dust, multipath
    noise = rng.random(n_rays) < spec.noise_points
    noise &= ~ok | (rng.random(n_rays) < 0.5)
    sel = np.flatnonzero(ok | noise)
    is_noise = noise[sel]
    t_true = t_hit[sel]
    t_noise = rng.uniform(0.8, 1.0, len(sel)) * np.minimum(np.where(np.isfinite(t_true), t_true, 30.0), 30.0)
    r = np.where(is_noise, t_noise, t_true + rng.normal(0, spec.range_noise, len(sel)))
    p_world = origin[sel] + d_w[sel] * r[:, None]
    surface = np.where(is_noise[:, None], p_world, origin[sel] + d_w[sel] * np.where(is_noise, 0, t_true)[:, None])
    # motion compensation into the sensor frame at the sweep timestamp
    R0, t0 = world.ego.pose(tau)
    p_lidar = ((p_world - t0) @ R0 - calib.translation) @ calib.rotation
    # intensity from reflectivity and incidence, range falloff
    inten = 100.0 * refl_all[sel] * (0.3 + 0.7 * cosi[sel]) / (1.0 + r / 60.0)
    inten = np.where(is_noise, rng.uniform(0, 3, len(sel)), inten + rng.normal(0, 0.8, len(sel)))
    inten = np.clip(np.round(inten), 0, 255)
    pts = np.column_stack([p_lidar, inten, ring[sel]]).astype(np.float32)
    f = np.maximum(face[sel], 0)
    fine = np.where(is_noise, 0, caster.fine[f]).astype(np.uint8)
    inst = np.where(is_noise, 0, caster.instance[f]).astype(np.uint16)
    thing = np.where(is_noise, -1, caster.thing[f]).astype(np.int32)
    return Sweep(pts, fine, inst, surface, t_fire[sel], thing, is_noise)


# --------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------


def camera_pose(world: SceneWorld, calib: SensorCalib, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """(R (3,3) camera -> local, centre (3,)) at time tau."""
    R_le, t_le = world.ego.pose(tau)
    return R_le @ calib.rotation, R_le @ calib.translation + t_le


_CAMERA_RAYS: dict = {}


def _camera_rays(calib: SensorCalib) -> np.ndarray:
    """(H * W, 3) unit ray directions in the camera frame through pixel centres (u, v) = (col, row)."""
    K = calib.intrinsic
    key = (calib.width, calib.height, K.tobytes())
    if key not in _CAMERA_RAYS:
        u, v = np.meshgrid(np.arange(calib.width, dtype=np.float64), np.arange(calib.height, dtype=np.float64))
        d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
        _CAMERA_RAYS[key] = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    return _CAMERA_RAYS[key]


def render_camera(caster: SceneCaster, calib: SensorCalib, tau: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render one camera exposing at time tau.

    Returns (rgb (H, W, 3) uint8, panoptic (H, W) uint16 = 1000 * fine + instance, 0 for sky).
    Lambert shading with sun + ambient and cast shadows, procedural texture, aerial perspective,
    a sky gradient, exposure variation and sensor noise."""
    world = caster.world
    W, H = calib.width, calib.height
    R, o = camera_pose(world, calib, tau)
    d_w = _camera_rays(calib) @ R.T.astype(np.float32)
    hits = caster.cast(o, d_w, tau)
    idx = np.flatnonzero(hits.hit)
    face = hits.face[idx]
    th = hits.t[idx]
    dv = d_w[idx]
    p = o.astype(np.float32) + dv * th[:, None]  # float32 is precise to ~2e-5 m in the local frame
    albedo, _ = surface_appearance(caster, face, p, tau)
    n = hits.normal[idx]
    n *= -np.sign(np.einsum("ij,ij->i", n, dv))[:, None]  # face the camera
    sun = world.sun_dir.astype(np.float32)
    lam = np.maximum(n @ sun, 0)
    lit = np.flatnonzero(lam > 0)
    if len(lit):
        lam[lit[caster.occluded(p[lit] + n[lit] * 0.02, world.sun_dir, tau)]] = 0.0
    light = np.float32(world.ambient) + np.float32(1 - world.ambient) * lam
    fog = 1 - np.exp(-th / np.float32(350.0))  # aerial perspective towards the horizon colour
    horizon = world.sky_horizon.astype(np.float32)
    col = albedo * (light * (1 - fog))[:, None] + horizon * fog[:, None]
    elev = np.sqrt(np.clip(d_w[:, 2], 0, 1))
    img = horizon + (world.sky_top - world.sky_horizon).astype(np.float32) * elev[:, None]
    img[idx] = col
    img *= np.float32(world.exposure * 255.0)
    bank = caster.noise_bank(img.size)  # sensor noise: a random window of a bank of N(0, 3) values
    start = int(rng.integers(0, len(bank) - img.size))
    img += bank[start:start + img.size].reshape(img.shape)
    rgb = np.clip(img + 0.5, 0, 255).astype(np.uint8).reshape(H, W, 3)
    pan = np.zeros(H * W, np.uint16)
    pan[idx] = caster.fine[face].astype(np.uint16) * 1000 + caster.instance[face]
    return rgb, pan.reshape(H, W)


def point_visibility(caster: SceneCaster, sweep: Sweep, cams: list[tuple[SensorCalib, float]]) -> np.ndarray:
    """(N, C) bool: keyframe point n is seen by camera c.

    The point (its noise-free surface point, moved with its object from its capture time to the
    camera's time) must project inside the image (round() gives a valid pixel) with depth > 0, and the ray
    from the camera centre to it must be unobstructed (first hit within 2 cm + 0.2 % of its
    distance). Spurious (noise) returns are never visible."""
    N = len(sweep.fine)
    vis = np.zeros((N, len(cams)), bool)
    for c, (calib, tau_c) in enumerate(cams):
        p = sweep.surface + caster.displacement(sweep.thing, tau_c - sweep.time)
        R, o = camera_pose(caster.world, calib, tau_c)
        pc = (p - o) @ R
        z = pc[:, 2]
        K = calib.intrinsic
        with np.errstate(divide="ignore", invalid="ignore"):
            u = K[0, 0] * pc[:, 0] / z + K[0, 2]
            v = K[1, 1] * pc[:, 1] / z + K[1, 2]
        inside = (z > 0.1) & (u >= -0.5) & (u < calib.width - 0.5) & (v >= -0.5) & (v < calib.height - 0.5)
        inside &= ~sweep.noise
        idx = np.flatnonzero(inside)
        if not len(idx):
            continue
        dvec = p[idx] - o
        dist = np.linalg.norm(dvec, axis=1)
        hits = caster.cast(o, dvec / dist[:, None], tau_c)
        vis[idx, c] = hits.t >= dist - (0.02 + 0.002 * dist)
    return vis
