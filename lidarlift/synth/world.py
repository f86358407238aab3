"""Procedural urban driving scenes: triangle meshes labelled with nuScenes fine classes and instances.

A scene is built in a *local* frame (metres; x along the main road, y to its left, z up, road surface
at z ~ 0) and placed into the nuScenes *global* frame by a rigid transform ``global_from_local``.
Ray casting happens in the local frame (float32 stays precise there); only poses and boxes written
to the dataset are mapped to global.

Every triangle carries its fine class index (``lidarlift.classes.FINE_CLASSES``), an instance id
(1.. per scene for objects of fine classes 1..23 -- the nuScenes "things" incl. ignore things such
as debris; 0 for stuff), a base colour, a LiDAR reflectivity and a texture pattern code.

Static geometry (ground, buildings, vegetation, parked/standing objects) is one :class:`TriMesh`.
Moving objects are :class:`Thing` instances with a mesh in their own frame and a constant-velocity
pose ``pose(tau)``; ``tau`` is seconds since the scene's first sweep.

Everything is drawn from one ``numpy.random.Generator``: same seed -> same scene.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from lidarlift.classes import FINE_CLASSES, FINE_INDEX

# --------------------------------------------------------------------------------------------------
# Class sets
# --------------------------------------------------------------------------------------------------

#: The ten challenge thing classes, one representative fine class each (guaranteed per scene).
THING_FINE_NAMES: tuple[str, ...] = (
    "vehicle.car",
    "vehicle.truck",
    "vehicle.bus.rigid",
    "vehicle.trailer",
    "vehicle.construction",
    "vehicle.motorcycle",
    "vehicle.bicycle",
    "human.pedestrian.adult",
    "movable_object.trafficcone",
    "movable_object.barrier",
)

#: Fine classes the generator can produce (keys accepted by ``class_frequency``).
GENERATED_FINE_NAMES: tuple[str, ...] = THING_FINE_NAMES + (
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.police_officer",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "static_object.bicycle_rack",
    "static.other",
    "flat.driveable_surface",
    "flat.other",
    "flat.sidewalk",
    "flat.terrain",
    "static.manmade",
    "static.vegetation",
    "noise",
)

#: Fine indices >= this are stuff (instance id 0), as in nuScenes-panoptic.
FIRST_STUFF_INDEX = FINE_INDEX["flat.driveable_surface"]

F_ROAD = FINE_INDEX["flat.driveable_surface"]
F_OTHER = FINE_INDEX["flat.other"]
F_SIDEWALK = FINE_INDEX["flat.sidewalk"]
F_TERRAIN = FINE_INDEX["flat.terrain"]
F_MANMADE = FINE_INDEX["static.manmade"]
F_STATIC_OTHER = FINE_INDEX["static.other"]
F_VEG = FINE_INDEX["static.vegetation"]

# texture pattern codes (interpreted by sensors.surface_appearance)
PAT_PLAIN = 0  # low-frequency texture noise only
PAT_ROAD = 1  # asphalt: lane markings and crosswalk stripes painted on top
PAT_FACADE = 2  # building facade: window grid
PAT_VEG = 3  # foliage / grass: strong, high-frequency variation
PAT_GLASS = 4  # vehicle glass: dark, faint reflections

#: Seconds between keyframes (nuScenes annotates at 2 Hz).
KEYFRAME_PERIOD_S = 0.5


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------


@dataclass
class WorldParams:
    """Generator parameters: the ``synth`` config section plus ``version`` (``dataset.version``), built
    by :meth:`from_config` -- config/schema.yaml holds every default and bound and describes each key.
    Call :meth:`validate` (``generate`` does) before use.

    ``sensor`` names the LiDAR preset (:data:`lidarlift.synth.sensors.LIDAR_PRESETS`: ``nuscenes32``,
    ``kitti64``, ``os128``; ``auto``: the nuScenes layout's ``nuscenes32``, as the generator writes that
    layout -- the workflow picks ``kitti64`` for a world converted to SemanticKITTI); the rig (car,
    cameras, LiDAR mounting) is the same for every preset.
    ``beams``, ``azimuth_steps``, ``max_range``, ``range_noise``, ``dropout`` and ``noise_points``
    override the preset when set (``beams``: that many beams spread uniformly over the preset's
    elevation range); :attr:`lidar` is the resolved sensor.
    ``samples_per_scene`` keyframes; ``sweeps_per_keyframe`` LiDAR sweeps per keyframe period (None:
    the sweeps of one 0.5 s keyframe period at the sensor's rotation rate -- 10 at 20 Hz, the keyframe
    plus 9 sweeps in between); ``sweeps_before_first`` extra sweeps before the first keyframe (None:
    ``sweeps_per_keyframe - 1``, so every keyframe has a full set of previous sweeps).
    ``class_frequency`` multiplies the expected count of objects of a fine class (keys: fine class
    names of :data:`GENERATED_FINE_NAMES`); ``guarantee_things`` forces >= 1 instance of each of the
    ten challenge thing classes per scene.

    The fields carry no defaults (the schema is the one place); their order is the order of the
    ``params`` recorded in ``lidarlift_gt/<version>/world.json``.
    """

    seed: int
    scenes: int
    samples_per_scene: int
    image_width: int
    image_height: int
    sensor: str
    beams: int | None
    azimuth_steps: int | None
    version: str
    sweeps_per_keyframe: int | None
    sweeps_before_first: int | None
    max_range: float | None
    range_noise: float | None
    dropout: float | None
    noise_points: float | None
    ego_speed_min: float
    ego_speed_max: float
    guarantee_things: bool
    class_frequency: Mapping[str, float]
    jpeg_quality: int
    cell_size: float

    @classmethod
    def from_config(cls, cfg: Mapping | None = None, version: str | None = None) -> "WorldParams":
        """The ``synth`` section ``cfg`` over config/schema.yaml's defaults, validated (errors name the
        key, ``config key synth.beams: ...``), with ``version`` (default: ``dataset.version``'s default).
        ``sensor: auto`` stays ``auto`` here (:attr:`lidar` resolves it); :func:`lidarlift.synth.generate`
        records the layout's preset instead."""
        from lidarlift.config import section, typed

        version = section("dataset", {} if version is None else {"version": version})["version"]
        return typed(cls, "synth", cfg, extra={"version": version})

    def validate(self) -> "WorldParams":
        """Raise ValueError naming the offending parameter; returns self."""
        from lidarlift.synth.sensors import LIDAR_PRESETS

        def pos_int(name: str, lo: int = 1) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"parameter {name!r} must be an integer >= {lo}, got {v!r}")

        if self.sensor != "auto" and self.sensor not in LIDAR_PRESETS:
            raise ValueError(f"parameter 'sensor' must be 'auto' or one of {sorted(LIDAR_PRESETS)}, got {self.sensor!r}")
        for name in ("scenes", "samples_per_scene"):
            pos_int(name)
        for name in ("beams", "azimuth_steps", "sweeps_per_keyframe"):
            if getattr(self, name) is not None:
                pos_int(name)
        pos_int("image_width", 16)
        pos_int("image_height", 16)
        if self.sweeps_before_first is not None:
            pos_int("sweeps_before_first", 0)
        pos_int("seed", 0)
        if not (1 <= self.jpeg_quality <= 100):
            raise ValueError(f"parameter 'jpeg_quality' must be in 1..100, got {self.jpeg_quality!r}")
        for name, lo, hi in (
            ("max_range", 5.0, 500.0),
            ("range_noise", 0.0, 1.0),
            ("dropout", 0.0, 0.9),
            ("noise_points", 0.0, 0.1),
            ("ego_speed_min", 0.0, 30.0),
            ("ego_speed_max", 0.0, 30.0),
            ("cell_size", 0.1, 2.0),
        ):
            v = getattr(self, name)
            if v is None and name in ("max_range", "range_noise", "dropout", "noise_points"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not (lo <= float(v) <= hi):
                raise ValueError(f"parameter {name!r} must be a number in [{lo}, {hi}], got {v!r}")
        if self.ego_speed_min > self.ego_speed_max:
            raise ValueError("parameter 'ego_speed_min' must be <= 'ego_speed_max'")
        if self.version not in ("v1.0-mini", "v1.0-trainval"):
            raise ValueError(f"parameter 'version' must be 'v1.0-mini' or 'v1.0-trainval', got {self.version!r}")
        if self.version == "v1.0-mini" and self.scenes > 10:
            raise ValueError(f"parameter 'scenes' must be <= 10 for v1.0-mini (official scene names), got {self.scenes}")
        if self.version == "v1.0-trainval" and self.scenes > 850:
            raise ValueError(f"parameter 'scenes' must be <= 850 for v1.0-trainval, got {self.scenes}")
        if not isinstance(self.class_frequency, Mapping):
            raise ValueError("parameter 'class_frequency' must be a mapping of fine class name -> multiplier")
        for name, mult in self.class_frequency.items():
            if name not in GENERATED_FINE_NAMES:
                raise ValueError(
                    f"parameter 'class_frequency': unknown class {name!r}; known: {', '.join(GENERATED_FINE_NAMES)}"
                )
            if not isinstance(mult, (int, float)) or mult < 0:
                raise ValueError(f"parameter 'class_frequency': multiplier for {name!r} must be >= 0, got {mult!r}")
        return self

    @property
    def lidar(self):
        """The resolved LiDAR (:class:`lidarlift.synth.sensors.LidarSpec`): the preset with the overrides."""
        from lidarlift.synth.sensors import resolve_lidar

        return resolve_lidar(self)

    @property
    def sweep_period(self) -> float:
        """Seconds per LiDAR revolution (one sweep)."""
        return self.lidar.period_s

    @property
    def keyframe_sweeps(self) -> int:
        """Sweeps per keyframe period (``sweeps_per_keyframe`` or 0.5 s at the sensor's rotation rate)."""
        if self.sweeps_per_keyframe is not None:
            return int(self.sweeps_per_keyframe)
        return max(1, int(round(KEYFRAME_PERIOD_S / self.sweep_period)))

    @property
    def lead_sweeps(self) -> int:
        """Sweeps before the first keyframe (``sweeps_before_first`` or ``keyframe_sweeps - 1``)."""
        return int(self.sweeps_before_first) if self.sweeps_before_first is not None else self.keyframe_sweeps - 1

    def freq(self, fine_name: str) -> float:
        return float(self.class_frequency.get(fine_name, 1.0))

    @property
    def sweeps_per_scene(self) -> int:
        return self.lead_sweeps + (self.samples_per_scene - 1) * self.keyframe_sweeps + 1

    @property
    def scene_duration(self) -> float:
        """Seconds from the first sweep to the end of the last sweep and its camera exposures (+ 50 ms).

        With the default sweep counts it is the same for every sensor preset (the last keyframe at
        0.5 s x (samples - 1) + 0.5 s - one period), so one seed gives the same streets to every sensor."""
        return (self.sweeps_per_scene - 1) * self.sweep_period + self.sweep_period + 0.05


# --------------------------------------------------------------------------------------------------
# Meshes
# --------------------------------------------------------------------------------------------------


@dataclass
class TriMesh:
    """Triangle soup with per-face attributes.

    vertices (V, 3) float64; faces (F, 3) int32; fine (F,) uint8; instance (F,) uint16;
    color (F, 3) float32 in [0, 1] (sRGB-ish albedo); reflectivity (F,) float32 in [0, 1];
    pattern (F,) uint8 (PAT_*).
    """

    vertices: np.ndarray
    faces: np.ndarray
    fine: np.ndarray
    instance: np.ndarray
    color: np.ndarray
    reflectivity: np.ndarray
    pattern: np.ndarray

    @property
    def n_faces(self) -> int:
        return len(self.faces)

    @staticmethod
    def empty() -> "TriMesh":
        return TriMesh(
            np.zeros((0, 3)), np.zeros((0, 3), np.int32), np.zeros(0, np.uint8), np.zeros(0, np.uint16),
            np.zeros((0, 3), np.float32), np.zeros(0, np.float32), np.zeros(0, np.uint8),
        )

    @staticmethod
    def concat(meshes: list["TriMesh"]) -> "TriMesh":
        meshes = [m for m in meshes if m.n_faces]
        if not meshes:
            return TriMesh.empty()
        offs = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
        return TriMesh(
            np.concatenate([m.vertices for m in meshes]),
            np.concatenate([m.faces + o for m, o in zip(meshes, offs)]).astype(np.int32),
            np.concatenate([m.fine for m in meshes]),
            np.concatenate([m.instance for m in meshes]),
            np.concatenate([m.color for m in meshes]),
            np.concatenate([m.reflectivity for m in meshes]),
            np.concatenate([m.pattern for m in meshes]),
        )

    def transformed(self, R: np.ndarray, t: np.ndarray) -> "TriMesh":
        return TriMesh(self.vertices @ R.T + t, self.faces, self.fine, self.instance, self.color,
                       self.reflectivity, self.pattern)


def rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


_BOX_FACES = np.array(
    [[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
     [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]], np.int32)


def box(size, center=(0.0, 0.0, 0.0), R: np.ndarray | None = None):
    """Box of size (lx, ly, lz) centred at ``center`` (rotated by R about its centre). -> (V, F)."""
    hx, hy, hz = 0.5 * np.asarray(size, float)
    V = np.array([[-hx, -hy, -hz], [hx, -hy, -hz], [hx, hy, -hz], [-hx, hy, -hz],
                  [-hx, -hy, hz], [hx, -hy, hz], [hx, hy, hz], [-hx, hy, hz]])
    if R is not None:
        V = V @ R.T
    return V + np.asarray(center, float), _BOX_FACES


def frustum(r0: float, r1: float, h: float, n: int = 10, z0: float = 0.0, caps: bool = True):
    """Truncated cone along +z from z0 (radius r0) to z0 + h (radius r1), n sides. -> (V, F)."""
    a = np.arange(n) * (2 * np.pi / n)
    ring = np.stack([np.cos(a), np.sin(a)], 1)
    V = np.concatenate([
        np.column_stack([r0 * ring, np.full(n, z0)]),
        np.column_stack([r1 * ring, np.full(n, z0 + h)]),
        [[0.0, 0.0, z0], [0.0, 0.0, z0 + h]],
    ])
    k = np.arange(n)
    k1 = (k + 1) % n
    F = [np.stack([k, k1, n + k1], 1), np.stack([k, n + k1, n + k], 1)]
    if caps:
        F += [np.stack([np.full(n, 2 * n), k1, k], 1), np.stack([np.full(n, 2 * n + 1), n + k, n + k1], 1)]
    return V, np.concatenate(F).astype(np.int32)


def cylinder(r: float, h: float, n: int = 10, z0: float = 0.0):
    return frustum(r, r, h, n, z0)


def ellipsoid(radii, center=(0.0, 0.0, 0.0), n_lat: int = 6, n_lon: int = 10, jitter: float = 0.0,
              rng: np.random.Generator | None = None):
    """UV ellipsoid; ``jitter`` scales radial noise (lumpy crowns, debris). -> (V, F)."""
    lat = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    lon = np.arange(n_lon) * (2 * np.pi / n_lon)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    dirs = np.column_stack([(np.sin(la) * np.cos(lo)).ravel(), (np.sin(la) * np.sin(lo)).ravel(), np.cos(la).ravel()])
    dirs = np.concatenate([dirs, [[0, 0, 1.0], [0, 0, -1.0]]])
    scale = np.ones(len(dirs))
    if jitter > 0 and rng is not None:
        scale = 1.0 + jitter * (rng.random(len(dirs)) - 0.5) * 2
    V = dirs * scale[:, None] * np.asarray(radii, float) + np.asarray(center, float)
    F = []
    nr = n_lat - 1
    for i in range(nr - 1):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, b + n_lon
            F += [[a, c, b], [b, c, d]]
    top, bot = nr * n_lon, nr * n_lon + 1
    for j in range(n_lon):
        F.append([top, j, (j + 1) % n_lon])
        a, b = (nr - 1) * n_lon + j, (nr - 1) * n_lon + (j + 1) % n_lon
        F.append([bot, b, a])
    return V, np.asarray(F, np.int32)


def rod(p0, p1, thickness: float):
    """Square rod between points p0 and p1 (thin frames, arms, legs, rails). -> (V, F)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    L = float(np.linalg.norm(d))
    x = d / max(L, 1e-9)
    helper = np.array([0.0, 0.0, 1.0]) if abs(x[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    y = np.cross(helper, x)
    y /= np.linalg.norm(y)
    z = np.cross(x, y)
    return box((L, thickness, thickness), 0.5 * (p0 + p1), np.column_stack([x, y, z]))


def wheel(r: float, width: float, center, n: int = 10):
    """Solid wheel with its axis along y. -> (V, F)."""
    V, F = cylinder(r, width, n, -0.5 * width)
    return V @ rot_x(np.pi / 2).T + np.asarray(center, float), F


def ring_wheel(r: float, tube: float, center, n: int = 14):
    """Bicycle wheel: a ring of thin boxes in the x-z plane (few LiDAR returns, like spokes+tyre)."""
    a = np.arange(n + 1) * (2 * np.pi / n)
    pts = np.column_stack([r * np.cos(a), np.zeros(n + 1), r * np.sin(a)]) + np.asarray(center, float)
    parts = [rod(pts[i], pts[i + 1], tube) for i in range(n)]
    return _merge_vf(parts)


def _merge_vf(parts):
    Vs, Fs, off = [], [], 0
    for V, F in parts:
        Vs.append(V)
        Fs.append(F + off)
        off += len(V)
    return np.concatenate(Vs), np.concatenate(Fs).astype(np.int32)


class Parts:
    """Collects coloured primitives of one object; ``mesh(fine, instance)`` makes a TriMesh."""

    def __init__(self) -> None:
        self.items: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, int]] = []

    def add(self, vf, color, refl: float = 0.2, pattern: int = PAT_PLAIN, offset=None) -> "Parts":
        """Add a primitive (V, F) with albedo ``color``, LiDAR reflectivity and texture pattern,
        translated by ``offset`` (3,) if given."""
        V, F = vf
        V = np.asarray(V, float) if offset is None else np.asarray(V, float) + np.asarray(offset, float)
        self.items.append((V, np.asarray(F, np.int32), np.clip(np.asarray(color, np.float32), 0, 1),
                           float(refl), int(pattern)))
        return self

    def mesh(self, fine: int, instance: int = 0) -> TriMesh:
        meshes = []
        for V, F, c, r, p in self.items:
            n = len(F)
            meshes.append(TriMesh(V, F, np.full(n, fine, np.uint8), np.full(n, instance, np.uint16),
                                  np.tile(c, (n, 1)).astype(np.float32), np.full(n, r, np.float32),
                                  np.full(n, p, np.uint8)))
        return TriMesh.concat(meshes)


# --------------------------------------------------------------------------------------------------
# Colours (shared greys across classes on purpose: a per-pixel colour rule must fail)
# --------------------------------------------------------------------------------------------------

_PAINT = (
    ((0.82, 0.82, 0.83), 0.22), ((0.56, 0.57, 0.59), 0.2), ((0.38, 0.39, 0.41), 0.16), ((0.07, 0.07, 0.08), 0.17),
    ((0.12, 0.16, 0.3), 0.07), ((0.55, 0.08, 0.07), 0.07), ((0.2, 0.32, 0.58), 0.04), ((0.62, 0.57, 0.47), 0.04),
    ((0.16, 0.3, 0.2), 0.03),
)
_FACADE = (
    ((0.55, 0.55, 0.56), 0.25), ((0.72, 0.72, 0.7), 0.18), ((0.7, 0.63, 0.5), 0.15), ((0.55, 0.3, 0.22), 0.14),
    ((0.86, 0.85, 0.82), 0.1), ((0.25, 0.28, 0.32), 0.1), ((0.42, 0.42, 0.44), 0.08),
)
_CLOTH = (
    ((0.1, 0.1, 0.12), 0.25), ((0.4, 0.4, 0.42), 0.15), ((0.18, 0.22, 0.38), 0.2), ((0.7, 0.7, 0.7), 0.1),
    ((0.5, 0.12, 0.1), 0.08), ((0.45, 0.38, 0.28), 0.1), ((0.2, 0.35, 0.25), 0.07), ((0.8, 0.75, 0.55), 0.05),
)
_SKIN = ((0.85, 0.67, 0.55), (0.62, 0.45, 0.33), (0.4, 0.27, 0.18), (0.93, 0.78, 0.68))
_GLASS = (0.09, 0.11, 0.13)
_TYRE = (0.05, 0.05, 0.05)


def _pick(rng: np.random.Generator, palette) -> np.ndarray:
    cols = [c for c, _ in palette]
    w = np.array([p for _, p in palette], float)
    return np.array(cols[int(rng.choice(len(cols), p=w / w.sum()))])


def _vary(rng: np.random.Generator, c, s: float = 0.06) -> np.ndarray:
    """Per-instance colour variation: brightness and per-channel jitter."""
    return np.clip(np.asarray(c, float) * rng.uniform(1 - s, 1 + s) + rng.normal(0, s * 0.25, 3), 0, 1)


def _grey(rng, lo, hi):
    g = rng.uniform(lo, hi)
    return np.array([g, g, g * rng.uniform(0.97, 1.04)])


# --------------------------------------------------------------------------------------------------
# Object templates. Local frame: x forward, y left, z up, origin at the bottom centre of the box.
# Each returns (Parts, fine class name).
# --------------------------------------------------------------------------------------------------


def make_car(rng):
    p = Parts()
    L, W, H = rng.uniform(3.9, 5.0), rng.uniform(1.72, 1.95), rng.uniform(1.42, 1.78)
    r, clr = rng.uniform(0.3, 0.35), 0.2
    paint = _vary(rng, _pick(rng, _PAINT))
    zb = clr + rng.uniform(0.55, 0.7)
    p.add(box((L, W, zb - clr), (0, 0, 0.5 * (clr + zb))), paint, 0.25)
    cl = L * rng.uniform(0.45, 0.62)
    cx = -L * rng.uniform(0.0, 0.1)
    p.add(box((cl, W - 0.14, H - zb - 0.06), (cx, 0, 0.5 * (zb + H - 0.06))), _vary(rng, _GLASS, 0.2), 0.05, PAT_GLASS)
    p.add(box((cl - 0.15, W - 0.2, 0.06), (cx, 0, H - 0.03)), paint, 0.25)
    for sx in (-1, 1):
        for sy in (-1, 1):
            p.add(wheel(r, 0.22, (sx * (L / 2 - 0.78), sy * (W / 2 - 0.13), r)), _TYRE, 0.05)
    return p, "vehicle.car"


def make_truck(rng, tractor: bool = False):
    p = Parts()
    W = rng.uniform(2.35, 2.55)
    cabL, cabH = rng.uniform(1.9, 2.4), rng.uniform(2.7, 3.3)
    cargoL = 0.0 if tractor else rng.uniform(3.5, 7.0)
    L = cabL + 0.2 + (cargoL if not tractor else rng.uniform(2.8, 3.8))
    cab = _vary(rng, _pick(rng, ((np.array((0.85, 0.85, 0.85)), 0.4), (np.array((0.5, 0.5, 0.52)), 0.2),
                                 (np.array((0.6, 0.1, 0.08)), 0.15), (np.array((0.15, 0.25, 0.5)), 0.15),
                                 (np.array((0.1, 0.1, 0.1)), 0.1))))
    x_front = L / 2
    p.add(box((cabL, W, cabH - 0.55), (x_front - cabL / 2, 0, 0.55 + (cabH - 0.55) / 2)), cab, 0.3)
    p.add(box((0.05, W - 0.3, 0.8), (x_front + 0.02, 0, cabH - 0.75)), _GLASS, 0.05, PAT_GLASS)
    p.add(box((L, 1.0, 0.45), (0, 0, 0.75)), (0.15, 0.15, 0.16), 0.1)  # chassis
    if not tractor:
        cargo = _vary(rng, _pick(rng, ((np.array((0.88, 0.88, 0.87)), 0.5), (np.array((0.62, 0.63, 0.64)), 0.3),
                                       (np.array((0.35, 0.36, 0.38)), 0.2))))
        cH = rng.uniform(3.0, 3.8)
        p.add(box((cargoL, W + 0.05, cH - 1.0), (-L / 2 + cargoL / 2, 0, 1.0 + (cH - 1.0) / 2)), cargo, 0.35)
    else:
        p.add(box((1.2, 1.6, 0.15), (-L / 2 + 1.2, 0, 1.1)), (0.1, 0.1, 0.1), 0.1)  # fifth wheel plate
    r = 0.5
    axles = [x_front - 1.1, -L / 2 + 1.3] + ([-L / 2 + 2.6] if L > 7 else [])
    for ax in axles:
        for sy in (-1, 1):
            p.add(wheel(r, 0.35, (ax, sy * (W / 2 - 0.2), r)), _TYRE, 0.05)
    return p, "vehicle.truck"


def make_bus(rng):
    p = Parts()
    L, W, H = rng.uniform(10.5, 12.5), 2.55, rng.uniform(3.0, 3.3)
    col = _vary(rng, _pick(rng, ((np.array((0.86, 0.86, 0.84)), 0.35), (np.array((0.55, 0.56, 0.58)), 0.2),
                                 (np.array((0.65, 0.12, 0.1)), 0.2), (np.array((0.15, 0.3, 0.6)), 0.15),
                                 (np.array((0.85, 0.7, 0.15)), 0.1))))
    p.add(box((L, W, H - 0.3), (0, 0, 0.3 + (H - 0.3) / 2)), col, 0.3)
    p.add(box((L - 0.8, W + 0.04, 1.2), (0, 0, 1.95)), _vary(rng, _GLASS, 0.2), 0.05, PAT_GLASS)
    p.add(box((0.04, W - 0.2, 1.3), (L / 2 + 0.02, 0, 1.9)), _GLASS, 0.05, PAT_GLASS)
    for ax in (L / 2 - 2.6, -L / 2 + 3.0):
        for sy in (-1, 1):
            p.add(wheel(0.5, 0.3, (ax, sy * (W / 2 - 0.18), 0.5)), _TYRE, 0.05)
    return p, "vehicle.bus.rigid"


def make_trailer(rng):
    p = Parts()
    L, W, H = rng.uniform(7.0, 12.0), 2.5, rng.uniform(3.6, 4.0)
    col = _vary(rng, _pick(rng, ((np.array((0.87, 0.87, 0.86)), 0.45), (np.array((0.6, 0.61, 0.62)), 0.35),
                                 (np.array((0.45, 0.15, 0.12)), 0.1), (np.array((0.3, 0.3, 0.32)), 0.1))))
    p.add(box((L, W, H - 1.15), (0, 0, 1.15 + (H - 1.15) / 2)), col, 0.35)
    for ax in (-L / 2 + 1.2, -L / 2 + 2.5):
        for sy in (-1, 1):
            p.add(wheel(0.5, 0.3, (ax, sy * (W / 2 - 0.2), 0.5)), _TYRE, 0.05)
    for sy in (-1, 1):
        p.add(box((0.15, 0.15, 1.15), (L / 2 - 2.0, sy * 0.8, 0.575)), (0.2, 0.2, 0.2), 0.15)
    return p, "vehicle.trailer"


def make_construction(rng):
    p = Parts()
    yellow = _vary(rng, _pick(rng, ((np.array((0.88, 0.66, 0.1)), 0.6), (np.array((0.9, 0.45, 0.08)), 0.2),
                                    (np.array((0.7, 0.7, 0.7)), 0.2))))
    if rng.random() < 0.6:  # excavator
        tl = rng.uniform(3.2, 4.0)
        for sy in (-1, 1):
            p.add(box((tl, 0.6, 0.8), (0, sy * 1.05, 0.4)), (0.12, 0.12, 0.12), 0.08)
        p.add(box((3.0, 2.4, 1.1), (-0.3, 0, 1.45)), yellow, 0.3)
        p.add(box((1.0, 0.9, 1.4), (0.6, 0.65, 2.7)), _GLASS, 0.05, PAT_GLASS)
        a = rng.uniform(0.4, 0.8)
        p0 = np.array([1.0, -0.3, 1.9])
        p1 = p0 + 3.4 * np.array([math.cos(a), 0, math.sin(a)])
        p2 = p1 + np.array([1.4, 0, -rng.uniform(1.2, 2.0)])
        p.add(rod(p0, p1, 0.45), yellow, 0.3).add(rod(p1, p2, 0.35), yellow, 0.3)
        p.add(box((0.9, 1.0, 0.8), p2 + np.array([0.3, 0, -0.2])), (0.2, 0.2, 0.2), 0.15)
    else:  # wheel loader
        for ax in (-1.3, 1.3):
            for sy in (-1, 1):
                p.add(wheel(0.75, 0.55, (ax, sy * 1.05, 0.75)), _TYRE, 0.05)
        p.add(box((4.2, 1.6, 1.2), (-0.2, 0, 1.3)), yellow, 0.3)
        p.add(box((1.3, 1.4, 1.5), (-0.4, 0, 2.65)), _GLASS, 0.05, PAT_GLASS)
        for sy in (-1, 1):
            p.add(rod((1.2, sy * 0.6, 1.4), (2.6, sy * 0.6, 0.8), 0.25), yellow, 0.3)
        p.add(box((0.9, 2.6, 0.9), (2.9, 0, 0.65)), (0.25, 0.25, 0.25), 0.15)
    return p, "vehicle.construction"


def make_motorcycle(rng):
    p = Parts()
    col = _vary(rng, _pick(rng, _PAINT))
    for sx in (-0.7, 0.7):
        p.add(wheel(0.31, 0.13, (sx, 0, 0.31)), _TYRE, 0.05)
    p.add(box((0.45, 0.3, 0.32), (0.0, 0, 0.48)), (0.2, 0.2, 0.21), 0.2)
    p.add(box((0.8, 0.34, 0.3), (0.05, 0, 0.8)), col, 0.25)
    p.add(box((0.6, 0.28, 0.1), (-0.35, 0, 0.92)), (0.08, 0.08, 0.08), 0.1)
    p.add(rod((0.7, 0, 0.31), (0.5, 0, 1.05), 0.06), (0.5, 0.5, 0.5), 0.3)
    p.add(rod((0.5, -0.37, 1.08), (0.5, 0.37, 1.08), 0.05), (0.3, 0.3, 0.3), 0.3)
    return p, "vehicle.motorcycle"


def make_bicycle(rng):
    p = Parts()
    col = _vary(rng, _pick(rng, _PAINT + (((0.1, 0.45, 0.2), 0.05),)))
    r = rng.uniform(0.32, 0.36)
    for sx in (-0.52, 0.52):
        p.add(ring_wheel(r, 0.04, (sx, 0, r)), _TYRE, 0.05)
    rear, bb = np.array([-0.52, 0, r]), np.array([-0.05, 0, r - 0.04])
    seat, head_t, head_b, front = (np.array([-0.2, 0, 0.85]), np.array([0.38, 0, 0.88]), np.array([0.42, 0, 0.68]),
                                   np.array([0.52, 0, r]))
    for a, b in ((rear, bb), (rear, seat), (bb, seat), (bb, head_b), (seat, head_t), (head_b, front), (head_t, head_b)):
        p.add(rod(a, b, 0.035), col, 0.3)
    p.add(box((0.25, 0.12, 0.06), seat + np.array([0, 0, 0.05])), (0.08, 0.08, 0.08), 0.1)
    p.add(rod(head_t + np.array([0, -0.28, 0.1]), head_t + np.array([0, 0.28, 0.1]), 0.03), (0.3, 0.3, 0.3), 0.3)
    return p, "vehicle.bicycle"


def make_pedestrian(rng, kind: str = "adult", walking: bool = False):
    """kind in adult / child / construction_worker / police_officer."""
    p = Parts()
    hgt = rng.uniform(1.05, 1.38) if kind == "child" else rng.uniform(1.55, 1.95)
    s = hgt / 1.75
    stride = rng.uniform(0.15, 0.3) * s if walking else rng.uniform(0.0, 0.06) * s
    pants = _vary(rng, _pick(rng, _CLOTH), 0.1)
    shirt = _vary(rng, _pick(rng, _CLOTH), 0.1)
    if kind == "construction_worker":
        shirt = _vary(rng, (0.92, 0.75, 0.1) if rng.random() < 0.6 else (0.95, 0.45, 0.1), 0.05)
    if kind == "police_officer":
        shirt = pants = _vary(rng, (0.08, 0.1, 0.2), 0.05)
    skin = _vary(rng, _SKIN[int(rng.integers(len(_SKIN)))], 0.05)
    for sy, sx in ((-1, stride), (1, -stride)):
        p.add(rod((0, sy * 0.1 * s, 0.92 * s), (sx, sy * 0.1 * s, 0.06), 0.14 * s), pants, 0.15)
        p.add(box((0.24 * s, 0.1 * s, 0.07), (sx + 0.04, sy * 0.1 * s, 0.035)), (0.08, 0.07, 0.07), 0.1)
    p.add(box((0.24 * s, 0.4 * s, 0.6 * s), (0, 0, 1.19 * s)), shirt, 0.2 if kind != "construction_worker" else 0.7)
    for sy, sx in ((-1, -stride), (1, stride)):
        p.add(rod((0, sy * 0.24 * s, 1.45 * s), (0.6 * sx, sy * 0.27 * s, 0.82 * s), 0.09 * s), shirt, 0.2)
    p.add(ellipsoid((0.1 * s, 0.085 * s, 0.12 * s), (0, 0, 1.62 * s), 4, 6), skin, 0.15)
    if kind == "construction_worker":
        p.add(ellipsoid((0.13 * s, 0.12 * s, 0.07 * s), (0, 0, 1.72 * s), 3, 6), (0.95, 0.9, 0.2), 0.4)
    return p, "human.pedestrian." + kind


def make_cone(rng):
    p = Parts()
    h = rng.uniform(0.5, 1.0)
    orange = _vary(rng, (0.95, 0.4, 0.08), 0.05)
    p.add(box((0.36 * h / 0.7, 0.36 * h / 0.7, 0.03), (0, 0, 0.015)), orange * 0.8, 0.2)
    r0, r1 = 0.15 * h / 0.7, 0.03
    cuts = [0.03, 0.45 * h, 0.65 * h, h]
    cols = [orange, (0.9, 0.9, 0.9), orange]
    refl = [0.35, 0.85, 0.35]
    for i in range(3):
        ra = r0 + (r1 - r0) * (cuts[i] - 0.03) / (h - 0.03)
        rb = r0 + (r1 - r0) * (cuts[i + 1] - 0.03) / (h - 0.03)
        p.add(frustum(ra, rb, cuts[i + 1] - cuts[i], 8, cuts[i]), cols[i], refl[i])
    return p, "movable_object.trafficcone"


def make_barrier(rng, length: float | None = None):
    p = Parts()
    L = length if length is not None else rng.uniform(1.8, 3.0)
    if rng.random() < 0.6:  # concrete / plastic jersey barrier
        col = _vary(rng, _pick(rng, (((0.62, 0.62, 0.6), 0.5), ((0.85, 0.85, 0.84), 0.25), ((0.9, 0.45, 0.1), 0.15),
                                     ((0.7, 0.15, 0.12), 0.1))))
        h = rng.uniform(0.8, 1.05)
        p.add(box((L, 0.6, 0.3 * h), (0, 0, 0.15 * h)), col, 0.3)
        p.add(box((L, 0.34, 0.5 * h), (0, 0, 0.55 * h)), col, 0.3)
        p.add(box((L, 0.22, 0.2 * h), (0, 0, 0.9 * h)), col, 0.3)
    else:  # A-frame board barrier: legs + striped boards (thin, few returns)
        red = _vary(rng, (0.75, 0.12, 0.1), 0.05)
        for sx in (-L / 2 + 0.1, L / 2 - 0.1):
            p.add(rod((sx, -0.3, 0.0), (sx, 0.0, 1.0), 0.05), (0.3, 0.3, 0.3), 0.2)
            p.add(rod((sx, 0.3, 0.0), (sx, 0.0, 1.0), 0.05), (0.3, 0.3, 0.3), 0.2)
        p.add(box((L, 0.04, 0.25), (0, 0, 0.85)), red, 0.8)
        p.add(box((L, 0.04, 0.2), (0, 0, 0.45)), (0.9, 0.9, 0.9), 0.8)
    return p, "movable_object.barrier"


def make_trash_bin(rng):
    p = Parts()
    col = _vary(rng, _pick(rng, (((0.2, 0.35, 0.2), 0.3), ((0.4, 0.41, 0.43), 0.4), ((0.1, 0.1, 0.1), 0.3))))
    p.add(box((0.58, 0.68, 0.95), (0, 0, 0.475)), col, 0.2)
    p.add(box((0.62, 0.72, 0.06), (0, 0, 0.98)), col * 0.8, 0.2)
    return p, "movable_object.pushable_pullable"


def make_debris(rng):
    p = Parts()
    col = _vary(rng, _pick(rng, (((0.45, 0.4, 0.33), 0.5), ((0.5, 0.5, 0.5), 0.5))))
    for _ in range(int(rng.integers(1, 4))):
        rr = (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.6), rng.uniform(0.12, 0.3))
        c = (rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.3), rr[2] * 0.6)
        p.add(ellipsoid(rr, c, 4, 7, 0.35, rng), col, 0.2)
    return p, "movable_object.debris"


def make_bicycle_rack(rng, length: float):
    p = Parts()
    col = _grey(rng, 0.45, 0.7)
    n = max(2, int(length / 0.8))
    for i in range(n):
        x = -length / 2 + (i + 0.5) * length / n
        p.add(rod((x, -0.3, 0.0), (x, -0.3, 0.8), 0.05), col, 0.4)
        p.add(rod((x, 0.3, 0.0), (x, 0.3, 0.8), 0.05), col, 0.4)
        p.add(rod((x, -0.3, 0.8), (x, 0.3, 0.8), 0.05), col, 0.4)
    return p, "static_object.bicycle_rack"


THING_MAKERS: dict[str, Callable] = {
    "vehicle.car": make_car,
    "vehicle.truck": make_truck,
    "vehicle.bus.rigid": make_bus,
    "vehicle.trailer": make_trailer,
    "vehicle.construction": make_construction,
    "vehicle.motorcycle": make_motorcycle,
    "vehicle.bicycle": make_bicycle,
    "human.pedestrian.adult": make_pedestrian,
    "movable_object.trafficcone": make_cone,
    "movable_object.barrier": make_barrier,
    "movable_object.debris": make_debris,
    "movable_object.pushable_pullable": make_trash_bin,
}


# --------------------------------------------------------------------------------------------------
# Things (objects with an instance id and a box)
# --------------------------------------------------------------------------------------------------


@dataclass
class Thing:
    """An annotated object. ``mesh`` is in the object frame (x forward, y left, z up), its xy bounding
    box centred at the origin and its bottom at z = 0. ``size`` = (w, l, h) as nuScenes boxes.
    Pose at time tau (s): centre-bottom ``position + velocity * tau``, heading ``yaw``."""

    instance_id: int
    fine: int
    mesh: TriMesh
    size: tuple[float, float, float]
    position: np.ndarray  # (3,) local scene frame, bottom centre at tau = 0
    yaw: float
    velocity: np.ndarray  # (3,) m/s, local frame
    attribute: str

    @property
    def moving(self) -> bool:
        return bool(np.linalg.norm(self.velocity) > 1e-6)

    @property
    def fine_name(self) -> str:
        return FINE_CLASSES[self.fine]

    def pose(self, tau: float) -> tuple[np.ndarray, np.ndarray]:
        """(R (3,3), t (3,)) mapping object coordinates to local scene coordinates at time tau."""
        return rot_z(self.yaw), self.position + self.velocity * tau

    def box_center(self, tau: float) -> np.ndarray:
        R, t = self.pose(tau)
        return t + np.array([0.0, 0.0, self.size[2] / 2])

    def footprint(self, tau0: float = 0.0, tau1: float = 0.0, margin: float = 0.0) -> np.ndarray:
        """Axis-aligned xy rectangle (x0, y0, x1, y1) covering the object over [tau0, tau1]."""
        w, l, _ = self.size
        c, s = abs(math.cos(self.yaw)), abs(math.sin(self.yaw))
        hx, hy = 0.5 * (l * c + w * s) + margin, 0.5 * (l * s + w * c) + margin
        p0, p1 = self.position + self.velocity * tau0, self.position + self.velocity * tau1
        return np.array([min(p0[0], p1[0]) - hx, min(p0[1], p1[1]) - hy, max(p0[0], p1[0]) + hx, max(p0[1], p1[1]) + hy])


def _default_attribute(fine_name: str, moving: bool) -> str:
    """nuScenes attribute for a class and motion state ('' for classes without attributes)."""
    if fine_name in ("vehicle.bicycle", "vehicle.motorcycle"):
        return "cycle.without_rider"
    if fine_name.startswith("vehicle."):
        return "vehicle.moving" if moving else "vehicle.parked"
    if fine_name.startswith("human.pedestrian."):
        return "pedestrian.moving" if moving else "pedestrian.standing"
    return ""


def _center_mesh(mesh: TriMesh) -> tuple[TriMesh, tuple[float, float, float]]:
    """Shift a template mesh so its xy bbox is centred and its bottom at z = 0; return (mesh, (w, l, h))."""
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    shift = np.array([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]])
    m = mesh.transformed(np.eye(3), shift)
    # nuScenes boxes are (width, length, height) with length along the heading (x)
    # 5 cm margin per side, as annotators draw boxes (LiDAR range noise is ~2 cm)
    return m, (float(hi[1] - lo[1]) + 0.1, float(hi[0] - lo[0]) + 0.1, float(hi[2] - lo[2]) + 0.1)


# --------------------------------------------------------------------------------------------------
# Smooth noise
# --------------------------------------------------------------------------------------------------


class SmoothNoise2D:
    """Sum of random plane waves: a smooth, deterministic height field in [-1, 1]-ish."""

    def __init__(self, rng: np.random.Generator, n: int = 8, wl: tuple[float, float] = (3.0, 25.0)):
        ang = rng.uniform(0, np.pi, n)
        k = 2 * np.pi / rng.uniform(*wl, n)
        self.kx, self.ky = k * np.cos(ang), k * np.sin(ang)
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.norm = 1.0 / math.sqrt(n / 2)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast(x, y).shape)
        for kx, ky, ph in zip(self.kx, self.ky, self.phase):
            out += np.sin(kx * x + ky * y + ph)
        return out * self.norm


# --------------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------------


@dataclass
class Marking:
    """A painted stripe family on the road: along-axis ``axis`` (0 = x, 1 = y); stripes of half width
    ``half_width`` around cross-coordinate ``c0``, dashed (``dash`` on, ``gap`` off) within [lo, hi]."""

    axis: int
    c0: float
    half_width: float
    lo: float
    hi: float
    dash: float
    gap: float
    color: tuple[float, float, float]


@dataclass
class EgoTrajectory:
    """Ego pose in the local frame: x(tau) = x0 + v0 tau + a tau^2 / 2, y = y0 + A sin(w tau + phi)."""

    x0: float
    y0: float
    v0: float
    accel: float
    weave_amp: float
    weave_omega: float
    weave_phase: float

    def state(self, tau: float) -> tuple[float, float, float]:
        """(x, y, yaw) of the ego (rear axle centre on the ground) at time tau."""
        x = self.x0 + self.v0 * tau + 0.5 * self.accel * tau * tau
        y = self.y0 + self.weave_amp * math.sin(self.weave_omega * tau + self.weave_phase)
        vx = self.v0 + self.accel * tau
        vy = self.weave_amp * self.weave_omega * math.cos(self.weave_omega * tau + self.weave_phase)
        return x, y, math.atan2(vy, vx)

    def pose(self, tau: float) -> tuple[np.ndarray, np.ndarray]:
        """(R (3,3), t (3,)): ego frame -> local scene frame at time tau."""
        x, y, yaw = self.state(tau)
        return rot_z(yaw), np.array([x, y, 0.0])

    def poses(self, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised :meth:`pose`: tau (n,) -> (R (n, 3, 3), t (n, 3))."""
        tau = np.asarray(tau, float)
        x = self.x0 + self.v0 * tau + 0.5 * self.accel * tau * tau
        arg = self.weave_omega * tau + self.weave_phase
        y = self.y0 + self.weave_amp * np.sin(arg)
        yaw = np.arctan2(self.weave_amp * self.weave_omega * np.cos(arg), self.v0 + self.accel * tau)
        c, s = np.cos(yaw), np.sin(yaw)
        R = np.zeros((len(tau), 3, 3))
        R[:, 0, 0], R[:, 0, 1], R[:, 1, 0], R[:, 1, 1], R[:, 2, 2] = c, -s, s, c, 1.0
        return R, np.column_stack([x, y, np.zeros_like(x)])


@dataclass
class SceneWorld:
    """Everything the sensors need for one scene, in the local frame."""

    index: int
    static_mesh: TriMesh
    things: list[Thing]  # all annotated objects (static and moving); instance_id = position + 1
    moving: list[int]  # indices into ``things`` of moving objects (in the dynamic mesh)
    ego: EgoTrajectory
    markings: list[Marking]
    global_yaw: float
    global_translation: np.ndarray  # (3,)
    sun_dir: np.ndarray  # (3,) unit vector towards the sun (local frame)
    ambient: float
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    exposure: float
    texture_seed: int
    location: str
    description: str
    stats: dict = field(default_factory=dict)

    def global_from_local(self) -> tuple[np.ndarray, np.ndarray]:
        return rot_z(self.global_yaw), self.global_translation


class _Occupancy:
    """Axis-aligned xy rectangles already taken; used to keep objects from interpenetrating."""

    def __init__(self) -> None:
        self.rects = np.zeros((0, 4))

    def free(self, r: np.ndarray) -> bool:
        R = self.rects
        if not len(R):
            return True
        return not np.any((R[:, 0] < r[2]) & (R[:, 2] > r[0]) & (R[:, 1] < r[3]) & (R[:, 3] > r[1]))

    def take(self, r: np.ndarray) -> None:
        self.rects = np.vstack([self.rects, r[None]])


class _Ground:
    """Rasterised ground: class, base height, albedo and reflectivity per cell (cell_size m)."""

    AMP = {F_ROAD: 0.012, F_SIDEWALK: 0.004, F_OTHER: 0.01, F_TERRAIN: 0.07}

    def __init__(self, x0, x1, y0, y1, cell, rng):
        self.x0, self.y0, self.cell = x0, y0, cell
        self.nx, self.ny = int(round((x1 - x0) / cell)), int(round((y1 - y0) / cell))
        self.cls = np.full((self.ny, self.nx), F_TERRAIN, np.uint8)
        self.base = np.zeros((self.ny, self.nx), np.float32)
        self.color = np.zeros((self.ny, self.nx, 3), np.float32)
        self.refl = np.zeros((self.ny, self.nx), np.float32)
        self.noise = SmoothNoise2D(rng, 10, (2.0, 18.0))
        self.patch = SmoothNoise2D(rng, 6, (4.0, 30.0))
        self._amp = np.zeros(256, np.float32)  # height-noise amplitude per class
        for k, v in self.AMP.items():
            self._amp[k] = v

    def paint(self, x0, y0, x1, y1, cls, base, color, refl):
        j0, j1 = np.clip([int(round((x0 - self.x0) / self.cell)), int(round((x1 - self.x0) / self.cell))], 0, self.nx)
        i0, i1 = np.clip([int(round((y0 - self.y0) / self.cell)), int(round((y1 - self.y0) / self.cell))], 0, self.ny)
        self.cls[i0:i1, j0:j1] = cls
        self.base[i0:i1, j0:j1] = base
        self.color[i0:i1, j0:j1] = color
        self.refl[i0:i1, j0:j1] = refl

    def height(self, x, y) -> np.ndarray:
        j = np.clip(((np.asarray(x) - self.x0) / self.cell).astype(int), 0, self.nx - 1)
        i = np.clip(((np.asarray(y) - self.y0) / self.cell).astype(int), 0, self.ny - 1)
        return self.base[i, j] + self._amp[self.cls[i, j]] * self.noise(np.asarray(x, float), np.asarray(y, float))

    def mesh(self, rng) -> TriMesh:
        """Top faces (2 per cell) + vertical faces (curbs) between cells of different height functions."""
        ny, nx, c = self.ny, self.nx, self.cell
        xs = self.x0 + np.arange(nx + 1) * c
        ys = self.y0 + np.arange(ny + 1) * c
        nz = self.noise(xs[None, :], ys[:, None])  # (ny+1, nx+1) shared noise at grid vertices
        A = self._amp[self.cls]  # (ny, nx)
        # corner heights per cell: (ny, nx, 4) in order (i,j), (i,j+1), (i+1,j+1), (i+1,j)
        corners = np.stack([nz[:-1, :-1], nz[:-1, 1:], nz[1:, 1:], nz[1:, :-1]], -1)
        h = self.base[..., None] + A[..., None] * corners
        X = np.stack([xs[None, :-1].repeat(ny, 0), xs[None, 1:].repeat(ny, 0)] * 2, -1)[..., [0, 1, 3, 2]]
        Y = np.stack([ys[:-1, None].repeat(nx, 1)] * 2 + [ys[1:, None].repeat(nx, 1)] * 2, -1)
        V_top = np.stack([X, Y, h], -1).reshape(-1, 3)
        base_idx = (np.arange(ny * nx) * 4)[:, None]
        F_top = np.concatenate([base_idx + [0, 1, 2], base_idx + [0, 2, 3]])
        cell_ids = np.concatenate([np.arange(ny * nx)] * 2)
        # per-cell albedo variation (asphalt patches, dry grass), then per-triangle attributes
        cx = (xs[:-1][None, :] + c / 2).repeat(ny, 0)
        cy = (ys[:-1][:, None] + c / 2).repeat(nx, 1)
        var = 1.0 + 0.08 * self.patch(cx, cy) + rng.normal(0, 0.025, (ny, nx))
        col = np.clip(self.color * var[..., None], 0, 1).reshape(-1, 3)
        dry = (self.cls == F_TERRAIN) & (self.patch(cy * 1.3, cx * 0.7) > 0.6)
        col = col.reshape(ny, nx, 3)
        col[dry] = col[dry] * 0.4 + np.array([0.5, 0.45, 0.33]) * 0.6  # dry-grass patches: brownish grey
        col = col.reshape(-1, 3)
        cls_flat, refl_flat = self.cls.reshape(-1), self.refl.reshape(-1)
        pat_of = np.zeros(256, np.uint8)
        pat_of[F_ROAD] = PAT_ROAD
        pat_of[F_TERRAIN] = PAT_VEG
        # vertical faces between horizontally adjacent cells whose height functions differ
        Vs, Fs, attr = [V_top], [F_top], [cell_ids]
        off = len(V_top)
        for axis in (1, 0):
            if axis == 1:  # neighbours (i, j) | (i, j+1), shared edge at x = xs[j+1]
                a = (slice(None), slice(None, -1))
                b = (slice(None), slice(1, None))
                hA = h[:, :-1][..., [1, 2]]
                hB = h[:, 1:][..., [0, 3]]
                ex = xs[1:-1][None, :].repeat(ny, 0)
                P0 = np.stack([ex, ys[:-1, None].repeat(nx - 1, 1)], -1)
                P1 = np.stack([ex, ys[1:, None].repeat(nx - 1, 1)], -1)
            else:  # neighbours (i, j) / (i+1, j), shared edge at y = ys[i+1]
                a = (slice(None, -1), slice(None))
                b = (slice(1, None), slice(None))
                hA = h[:-1, :][..., [3, 2]]
                hB = h[1:, :][..., [0, 1]]
                ey = ys[1:-1][:, None].repeat(nx, 1)
                P0 = np.stack([xs[None, :-1].repeat(ny - 1, 0), ey], -1)
                P1 = np.stack([xs[None, 1:].repeat(ny - 1, 0), ey], -1)
            diff = (self.cls[a] != self.cls[b]) | (self.base[a] != self.base[b])
            diff &= np.abs(hA - hB).max(-1) > 1e-3
            if not diff.any():
                continue
            hA, hB, P0, P1 = hA[diff], hB[diff], P0[diff], P1[diff]
            ids = np.arange(ny * nx).reshape(ny, nx)
            idA, idB = ids[a][diff], ids[b][diff]
            owner = np.where(hA.mean(-1) >= hB.mean(-1), idA, idB)  # the curb belongs to the higher side
            n = len(hA)
            V = np.stack([np.column_stack([P0, hA[:, 0]]), np.column_stack([P1, hA[:, 1]]),
                          np.column_stack([P1, hB[:, 1]]), np.column_stack([P0, hB[:, 0]])], 1).reshape(-1, 3)
            q = off + (np.arange(n) * 4)[:, None]
            Vs.append(V)
            Fs.append(np.concatenate([q + [0, 1, 2], q + [0, 2, 3]]))
            attr.append(np.concatenate([owner, owner]))
            off += len(V)
        cid = np.concatenate(attr)
        fine = cls_flat[cid]
        return TriMesh(np.concatenate(Vs), np.concatenate(Fs).astype(np.int32), fine,
                       np.zeros(len(cid), np.uint16), col[cid].astype(np.float32), refl_flat[cid], pat_of[fine])


LOCATIONS = ("boston-seaport", "singapore-onenorth", "singapore-queenstown", "singapore-hollandvillage")


class _SceneBuilder:
    """Builds one SceneWorld. Layout (local frame): main road along x with an intersection."""

    def __init__(self, params: WorldParams, index: int, rng: np.random.Generator):
        self.p, self.index, self.rng = params, index, rng
        self.occ = _Occupancy()
        self.static_parts: list[TriMesh] = []
        self.things: list[Thing] = []
        self.markings: list[Marking] = []

    # ---- helpers ---------------------------------------------------------------------------------
    def n_of(self, fine_name: str, mean: float) -> int:
        return int(self.rng.poisson(mean * self.p.freq(fine_name)))

    def add_static(self, parts: Parts, fine_name: str, R=None, t=None) -> None:
        m = parts.mesh(FINE_INDEX[fine_name], 0)
        if R is not None:
            m = m.transformed(R, np.asarray(t, float))
        self.static_parts.append(m)

    def add_thing(self, parts: Parts, fine_name: str, xy, yaw: float, velocity=(0.0, 0.0), attribute: str = "",
                  margin: float = 0.05, check: bool = True, z: float | None = None) -> Thing | None:
        """Place a thing with bottom centre at xy (ground height looked up). Returns None when the
        (swept) footprint collides with something already placed."""
        mesh, size = _center_mesh(parts.mesh(FINE_INDEX[fine_name], len(self.things) + 1))
        vel = np.array([velocity[0], velocity[1], 0.0])
        attribute = attribute or _default_attribute(fine_name, bool(np.any(vel)))
        zz = float(self.ground.height(xy[0], xy[1])) if z is None else z
        th = Thing(len(self.things) + 1, FINE_INDEX[fine_name], mesh, size, np.array([xy[0], xy[1], zz]),
                   float(yaw), vel, attribute)
        fp = th.footprint(0.0, self.p.scene_duration, margin)
        if check and not self.occ.free(fp):
            return None
        self.occ.take(th.footprint(0.0, self.p.scene_duration, 0.0))
        self.things.append(th)
        return th

    # ---- layout ----------------------------------------------------------------------------------
    def build(self) -> SceneWorld:
        rng, p = self.rng, self.p
        T = p.scene_duration
        # road cross-section (y < 0: ego's side, right-hand traffic, ego drives +x)
        self.lane_w = rng.uniform(3.1, 3.6)
        self.nl = int(rng.choice([1, 2], p=[0.4, 0.6]))
        self.median = rng.uniform(1.2, 3.0) if (self.nl == 2 and rng.random() < 0.35) else 0.0
        self.park_r = rng.random() < 0.8
        self.park_l = (rng.random() < 0.6) or not self.park_r
        pw = 2.3
        self.y_lo = -(self.median / 2 + self.nl * self.lane_w + self.park_r * pw)
        self.y_hi = self.median / 2 + self.nl * self.lane_w + self.park_l * pw
        self.sw_h = rng.uniform(0.12, 0.18)
        self.verge = [rng.uniform(1.0, 2.5) if rng.random() < 0.4 else 0.0 for _ in range(2)]  # [south, north]
        self.sw_w = [rng.uniform(2.2, 4.5) for _ in range(2)]
        # ego
        v0 = rng.uniform(p.ego_speed_min, p.ego_speed_max)
        accel = rng.uniform(-0.4, 0.4) if v0 > 2 else 0.0
        ego_lane = int(rng.integers(self.nl))
        self.ego_y = -(self.median / 2 + (ego_lane + 0.5) * self.lane_w)
        self.ego = EgoTrajectory(0.0, self.ego_y, v0, accel, rng.uniform(0.0, 0.3),
                                 2 * np.pi / rng.uniform(4.0, 9.0), rng.uniform(0, 2 * np.pi))
        self.D = max(self.ego.state(T)[0], 1.0)
        # cross street: ahead of the ego mostly, sometimes behind
        self.cw = rng.uniform(3.2, 6.5)  # half width of its carriageway
        self.cx = (rng.uniform(self.D * 0.6 + 12, self.D + 45) if rng.random() < 0.75 else rng.uniform(-45, -15))
        # grid extent around the driven segment
        self.gx0, self.gx1, self.gy0, self.gy1 = -75.0, self.D + 95.0, -60.0, 60.0
        self.ground = _Ground(self.gx0, self.gx1, self.gy0, self.gy1, p.cell_size, rng)
        self.window = (-40.0, self.D + 60.0)  # where most objects go (seen by the sensors)

        self._paint_ground()
        # the ego's own corridor stays clear
        x_end = self.ego.state(T)[0]
        half = 0.95 + self.ego.weave_amp
        self.occ.take(np.array([-1.5, self.ego_y - half, x_end + 4.0, self.ego_y + half]))
        self._lots_and_buildings()
        self._reserve_zones()
        self._street_furniture()
        self._vehicles()
        self._construction_zone()
        self._cycles()
        self._pedestrians()
        self._ignore_objects()
        if p.guarantee_things:
            self._guarantee()
        self._far_ground()

        static_things = [t.mesh.transformed(*t.pose(0.0)) for t in self.things if not t.moving]
        static_mesh = TriMesh.concat([self.ground.mesh(rng)] + self.static_parts + static_things)
        moving = [i for i, t in enumerate(self.things) if t.moving]
        # lighting
        sun_el, sun_az = rng.uniform(np.radians(20), np.radians(65)), rng.uniform(0, 2 * np.pi)
        sun = np.array([math.cos(sun_el) * math.cos(sun_az), math.cos(sun_el) * math.sin(sun_az), math.sin(sun_el)])
        overcast = rng.random() < 0.3
        loc = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
        world = SceneWorld(
            index=self.index,
            static_mesh=static_mesh,
            things=self.things,
            moving=moving,
            ego=self.ego,
            markings=self.markings,
            global_yaw=float(rng.uniform(-np.pi, np.pi)),
            global_translation=np.array([rng.uniform(300, 2000), rng.uniform(300, 2000), 0.0]),
            sun_dir=sun,
            ambient=float(rng.uniform(0.55, 0.7) if overcast else rng.uniform(0.3, 0.42)),
            sky_top=np.array([0.62, 0.64, 0.66]) if overcast else np.array([0.3, 0.48, 0.78]) * rng.uniform(0.9, 1.1),
            sky_horizon=np.array([0.78, 0.8, 0.82]) if overcast else np.array([0.7, 0.8, 0.9]),
            exposure=float(rng.uniform(0.85, 1.1)),
            texture_seed=int(rng.integers(1, 2**31 - 1)),
            location=loc,
            description=self._description(overcast),
        )
        counts: dict[str, int] = {}
        for t in self.things:
            counts[t.fine_name] = counts.get(t.fine_name, 0) + 1
        world.stats = {"things": counts, "moving": len(moving), "static_triangles": int(static_mesh.n_faces),
                       "ego_speed": round(v0, 2), "lanes_per_direction": self.nl}
        return world

    def _description(self, overcast: bool) -> str:
        words = ["synthetic", "intersection", "parked cars", "construction zone", "pedestrians"]
        if overcast:
            words.append("overcast")
        return ", ".join(words)

    def _paint_ground(self) -> None:
        rng, g = self.rng, self.ground
        road_col = _grey(rng, 0.28, 0.4)
        sw_col = _grey(rng, 0.5, 0.66)
        terr_col = _vary(rng, (0.3, 0.42, 0.18), 0.15)
        g.paint(g.x0, g.y0, self.gx1, self.gy1, F_TERRAIN, self.sw_h + 0.02, terr_col, 0.18)
        # sidewalks (and grass verges between curb and sidewalk) along the main road
        for side in (0, 1):
            sgn = -1 if side == 0 else 1
            y_curb = self.y_lo if side == 0 else self.y_hi
            v, w = self.verge[side], self.sw_w[side]
            a, b = sorted([y_curb, y_curb + sgn * (v + w)])
            g.paint(g.x0, a, self.gx1, b, F_SIDEWALK, self.sw_h, sw_col, 0.22)
            if v > 0:
                a, b = sorted([y_curb, y_curb + sgn * v])
                g.paint(g.x0, a, self.gx1, b, F_TERRAIN, self.sw_h - 0.02, terr_col, 0.18)
        # cross street sidewalks
        sw = rng.uniform(2.2, 4.0)
        for sx in (-1, 1):
            a, b = sorted([self.cx + sx * self.cw, self.cx + sx * (self.cw + sw)])
            g.paint(a, g.y0, b, self.y_lo, F_SIDEWALK, self.sw_h, sw_col, 0.22)
            g.paint(a, self.y_hi, b, self.gy1, F_SIDEWALK, self.sw_h, sw_col, 0.22)
        self.cross_sw = sw
        # roads
        g.paint(g.x0, self.y_lo, self.gx1, self.y_hi, F_ROAD, 0.0, road_col, 0.1)
        g.paint(self.cx - self.cw, g.y0, self.cx + self.cw, self.gy1, F_ROAD, 0.0, road_col * rng.uniform(0.9, 1.1), 0.1)
        if self.median > 0:  # raised median (flat.other or grass), open at the intersection
            cls, col = (F_OTHER, _grey(rng, 0.45, 0.6)) if rng.random() < 0.5 else (F_TERRAIN, terr_col)
            for a, b in ((g.x0, self.cx - self.cw - 3), (self.cx + self.cw + 3, self.gx1)):
                g.paint(a, -self.median / 2, b, self.median / 2, cls, self.sw_h, col, 0.2)
        self.road_col = road_col
        # markings: lane lines (dashed), centre line, edge lines at parking lanes, crosswalks
        white, yellow = (0.85, 0.85, 0.82), (0.85, 0.7, 0.2)
        xa, xb = self.gx0, self.gx1
        cut = (self.cx - self.cw - 4, self.cx + self.cw + 4)
        for lo, hi in ((xa, cut[0]), (cut[1], xb)):
            if self.median == 0:
                self.markings.append(Marking(0, 0.0, 0.07, lo, hi, 1e9, 0.0, yellow))
            for k in range(1, self.nl):
                for sgn in (-1, 1):
                    self.markings.append(Marking(0, sgn * (self.median / 2 + k * self.lane_w), 0.06, lo, hi, 3.0, 6.0, white))
            for sgn, park in ((-1, self.park_r), (1, self.park_l)):
                if park:
                    self.markings.append(Marking(0, sgn * (self.median / 2 + self.nl * self.lane_w), 0.06, lo, hi, 1e9, 0, white))
        # zebra crossings over the cross street, in line with the main sidewalks
        for side in (0, 1):
            y_curb = self.y_lo if side == 0 else self.y_hi
            sgn = -1 if side == 0 else 1
            yc = y_curb + sgn * (self.verge[side] + self.sw_w[side] / 2)
            self.markings.append(Marking(0, yc, 1.5, self.cx - self.cw, self.cx + self.cw, 0.5, 0.5, white))
        for sx in (-1, 1):  # stop lines / crossing over the main road
            self.markings.append(Marking(1, self.cx + sx * (self.cw + self.cross_sw / 2), 1.5, self.y_lo, self.y_hi, 0.5, 0.5, white))

    def _lots_and_buildings(self) -> None:
        """Lots along both frontages (buildings, parks, parking lots, plazas, yards) + backdrop."""
        rng, g = self.rng, self.ground
        self.parking_lots: list[tuple[float, float, float, float, int]] = []
        self.lots_free: list[tuple[float, float, float, float, int]] = []  # open lots for extra objects
        for side in (0, 1):
            sgn = -1 if side == 0 else 1
            y_front = (self.y_lo if side == 0 else self.y_hi) + sgn * (self.verge[side] + self.sw_w[side])
            x = self.gx0
            while x < self.gx1:
                kind = rng.choice(["building", "park", "parking", "plaza", "yard"], p=[0.45, 0.15, 0.15, 0.1, 0.15])
                length = float(rng.uniform(10, 35))
                x0, x1 = x, min(x + length, self.gx1)
                x = x1 + (rng.uniform(0, 3) if rng.random() < 0.5 else 0)
                # keep the cross street free
                if x1 > self.cx - self.cw - self.cross_sw and x0 < self.cx + self.cw + self.cross_sw:
                    if x0 < self.cx - self.cw - self.cross_sw:
                        x1 = self.cx - self.cw - self.cross_sw
                    else:
                        x0 = max(x0, self.cx + self.cw + self.cross_sw)
                        if x1 <= x0:
                            continue
                if x1 - x0 < 4:
                    continue
                depth = float(rng.uniform(15, 35))
                ya, yb = sorted([y_front, y_front + sgn * depth])
                if kind == "building":
                    setback = rng.uniform(0, 4) if rng.random() < 0.6 else 0.0
                    fore = F_OTHER if rng.random() < 0.6 else F_TERRAIN
                    g.paint(x0, ya, x1, yb, fore, self.sw_h + rng.uniform(0, 0.06),
                            _grey(rng, 0.45, 0.65) if fore == F_OTHER else _vary(rng, (0.3, 0.42, 0.18), 0.15), 0.2)
                    gap = rng.uniform(0, 1.5)
                    bx0, bx1 = x0 + gap, x1 - gap
                    by0 = y_front + sgn * setback
                    by1 = y_front + sgn * depth
                    self._building(bx0, bx1, *sorted([by0, by1]))
                elif kind == "park":
                    g.paint(x0, ya, x1, yb, F_TERRAIN, self.sw_h + rng.uniform(-0.05, 0.15),
                            _vary(rng, (0.28, 0.42, 0.16), 0.15), 0.18)
                    for _ in range(self.n_of("static.vegetation", 4)):
                        self._tree(rng.uniform(x0 + 2, x1 - 2), y_front + sgn * rng.uniform(3, depth - 2))
                    for _ in range(self.n_of("static.vegetation", 3)):
                        self._bush(rng.uniform(x0 + 1, x1 - 1), y_front + sgn * rng.uniform(1.5, depth - 1))
                    if rng.random() < 0.4:
                        self._fence(x0, x1, y_front + sgn * 0.3)
                    self.lots_free.append((x0, x1, ya, yb, sgn))
                elif kind == "parking":
                    g.paint(x0, ya, x1, yb, F_OTHER, rng.uniform(0.02, 0.08), _grey(rng, 0.3, 0.45), 0.12)
                    self.parking_lots.append((x0, x1, ya, yb, sgn))
                elif kind == "plaza":
                    g.paint(x0, ya, x1, yb, F_OTHER, self.sw_h + rng.uniform(0.0, 0.05), _grey(rng, 0.5, 0.7), 0.22)
                    for _ in range(self.n_of("static.vegetation", 2)):
                        self._tree(rng.uniform(x0 + 2, x1 - 2), y_front + sgn * rng.uniform(3, depth - 3))
                    self.lots_free.append((x0, x1, ya, yb, sgn))
                else:  # yard: grass + wall/fence at the front + small building behind
                    g.paint(x0, ya, x1, yb, F_TERRAIN, self.sw_h + rng.uniform(0, 0.1), _vary(rng, (0.32, 0.4, 0.2), 0.15), 0.18)
                    if rng.random() < 0.5:
                        self._wall(x0, x1, y_front + sgn * 0.4)
                    else:
                        self._fence(x0, x1, y_front + sgn * 0.4)
                    if rng.random() < 0.5:
                        self._hedge(x0 + 0.5, x1 - 0.5, y_front + sgn * 1.4)
                    self._building(x0 + 2, x1 - 2, *sorted([y_front + sgn * rng.uniform(8, 12), y_front + sgn * depth]),
                                   h=(3.5, 9.0))
        # backdrop buildings closing the view at the grid's long edges
        for sgn in (-1, 1):
            x = self.gx0
            while x < self.gx1:
                L = rng.uniform(15, 40)
                if not (x + L > self.cx - self.cw - 2 and x < self.cx + self.cw + 2):
                    self._building(x, min(x + L, self.gx1), *sorted([sgn * 52.0, sgn * 59.0]), h=(10, 40))
                x += L + rng.uniform(0, 4)

    # ---- stuff objects ---------------------------------------------------------------------------
    def _building(self, x0, x1, y0, y1, h=(5.0, 30.0)) -> None:
        rng = self.rng
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        H = rng.uniform(*h)
        col = _vary(self.rng, _pick(rng, _FACADE), 0.07)
        z0 = float(self.ground.height((x0 + x1) / 2, (y0 + y1) / 2)) - 0.3
        p = Parts().add(box((x1 - x0, y1 - y0, H), ((x0 + x1) / 2, (y0 + y1) / 2, z0 + H / 2)), col, 0.25, PAT_FACADE)
        if rng.random() < 0.35 and H > 8:  # setback upper storey
            s = rng.uniform(1.0, 3.0)
            if x1 - x0 > 2 * s + 2 and y1 - y0 > 2 * s + 2:
                H2 = rng.uniform(3, 10)
                p.add(box((x1 - x0 - 2 * s, y1 - y0 - 2 * s, H2), ((x0 + x1) / 2, (y0 + y1) / 2, z0 + H + H2 / 2)),
                      _vary(rng, col, 0.05), 0.25, PAT_FACADE)
        self.add_static(p, "static.manmade")
        self.occ.take(np.array([x0, y0, x1, y1]))

    def _wall(self, x0, x1, y) -> None:
        rng = self.rng
        h, t = rng.uniform(1.0, 2.8), rng.uniform(0.2, 0.4)
        col = _vary(rng, _pick(rng, _FACADE), 0.07)
        z0 = float(self.ground.height((x0 + x1) / 2, y)) - 0.1
        self.add_static(Parts().add(box((x1 - x0, t, h), ((x0 + x1) / 2, y, z0 + h / 2)), col, 0.25), "static.manmade")
        self.occ.take(np.array([x0, y - t / 2, x1, y + t / 2]))

    def _fence(self, x0, x1, y) -> None:
        """Posts and rails: thin structure, few LiDAR returns."""
        rng = self.rng
        h = rng.uniform(1.1, 2.0)
        col = _grey(rng, 0.3, 0.6)
        z0 = float(self.ground.height((x0 + x1) / 2, y)) - 0.05
        p = Parts()
        n = max(2, int((x1 - x0) / 2.5) + 1)
        for x in np.linspace(x0 + 0.1, x1 - 0.1, n):
            p.add(cylinder(0.04, h, 6, z0), col, 0.3, offset=(x, y, 0))
        for zz in (0.35 * h, 0.9 * h):
            p.add(box((x1 - x0 - 0.2, 0.04, 0.05), ((x0 + x1) / 2, y, z0 + zz)), col, 0.3)
        if rng.random() < 0.4:  # solid board fence
            p.add(box((x1 - x0 - 0.2, 0.03, 0.8 * h), ((x0 + x1) / 2, y + 0.03, z0 + 0.5 * h)),
                  _vary(rng, (0.45, 0.35, 0.25), 0.1), 0.2)
        self.add_static(p, "static.manmade")
        self.occ.take(np.array([x0, y - 0.1, x1, y + 0.1]))

    def _hedge(self, x0, x1, y) -> None:
        rng = self.rng
        h, t = rng.uniform(0.8, 1.6), rng.uniform(0.6, 1.0)
        z0 = float(self.ground.height((x0 + x1) / 2, y))
        col = _vary(rng, (0.15, 0.3, 0.12), 0.15)
        V, F = ellipsoid(((x1 - x0) / 2, t / 2, h / 2), ((x0 + x1) / 2, y, z0 + h / 2 - 0.1), 4, 16, 0.1, rng)
        self.add_static(Parts().add((V, F), col, 0.25, PAT_VEG), "static.vegetation")

    def _tree(self, x, y, check=True) -> bool:
        rng = self.rng
        r = rng.uniform(1.5, 3.8)
        if check and not self.occ.free(np.array([x - 0.4, y - 0.4, x + 0.4, y + 0.4])):
            return False
        z0 = float(self.ground.height(x, y))
        th, tr = rng.uniform(1.8, 3.5), rng.uniform(0.1, 0.28)
        p = Parts().add(cylinder(tr, th + r * 0.6, 7, z0 - 0.05), _vary(rng, (0.32, 0.27, 0.22), 0.15), 0.2,
                        offset=(x, y, 0))
        green = _vary(rng, _pick(rng, (((0.17, 0.3, 0.12), 0.5), ((0.25, 0.38, 0.15), 0.3), ((0.3, 0.32, 0.26), 0.2))), 0.12)
        for k in range(int(rng.integers(1, 4))):
            c = (x + rng.uniform(-0.6, 0.6) * r * 0.5, y + rng.uniform(-0.6, 0.6) * r * 0.5, z0 + th + r * rng.uniform(0.7, 1.0))
            rr = (r * rng.uniform(0.7, 1.0), r * rng.uniform(0.7, 1.0), r * rng.uniform(0.6, 0.9))
            p.add(ellipsoid(rr, c, 5, 9, 0.25, rng), _vary(rng, green, 0.06), 0.3, PAT_VEG)
        self.add_static(p, "static.vegetation")
        self.occ.take(np.array([x - tr, y - tr, x + tr, y + tr]))
        return True

    def _bush(self, x, y) -> None:
        rng = self.rng
        r = rng.uniform(0.4, 1.3)
        if not self.occ.free(np.array([x - r, y - r, x + r, y + r])):
            return
        z0 = float(self.ground.height(x, y))
        col = _vary(rng, (0.2, 0.33, 0.14), 0.15)
        self.add_static(Parts().add(ellipsoid((r, r * rng.uniform(0.7, 1.2), r * 0.75), (x, y, z0 + r * 0.5), 4, 8, 0.25, rng),
                                    col, 0.28, PAT_VEG), "static.vegetation")
        self.occ.take(np.array([x - r, y - r, x + r, y + r]))

    def _pole(self, x, y, kind: str, toward_road: float) -> None:
        """Street light / sign / traffic light / bollard / hydrant (static.manmade)."""
        rng = self.rng
        z0 = float(self.ground.height(x, y)) - 0.05
        p = Parts()
        grey = _grey(rng, 0.35, 0.65)
        if kind == "light":
            h = rng.uniform(6.5, 9.0)
            p.add(cylinder(0.09, h, 8, z0), grey, 0.3)
            p.add(rod((0, 0, z0 + h - 0.2), (0, toward_road * 1.8, z0 + h + 0.2), 0.08), grey, 0.3)
            p.add(box((0.6, 0.3, 0.15), (0, toward_road * 1.9, z0 + h + 0.15)), grey * 0.8, 0.3)
        elif kind == "sign":
            h = rng.uniform(2.3, 3.0)
            p.add(cylinder(0.035, h, 6, z0), grey, 0.3)
            col = _pick(rng, (((0.75, 0.1, 0.1), 0.3), ((0.1, 0.25, 0.65), 0.3), ((0.9, 0.9, 0.9), 0.2), ((0.9, 0.75, 0.1), 0.2)))
            p.add(box((0.04, 0.65, 0.65), (0.0, 0.0, z0 + h - 0.3)), col, 0.9)
        elif kind == "traffic_light":
            h = rng.uniform(3.2, 4.2)
            p.add(cylinder(0.1, h, 8, z0), grey, 0.3)
            p.add(box((0.35, 0.35, 1.0), (0, 0, z0 + h + 0.3)), (0.1, 0.1, 0.1), 0.2)
        elif kind == "bollard":
            p.add(cylinder(0.1, rng.uniform(0.7, 1.0), 8, z0), grey, 0.35)
        else:  # hydrant
            p.add(cylinder(0.14, 0.7, 8, z0), (0.7, 0.15, 0.1), 0.3)
        self.add_static(p, "static.manmade", np.eye(3), (x, y, 0.0))
        self.occ.take(np.array([x - 0.15, y - 0.15, x + 0.15, y + 0.15]))

    def _street_furniture(self) -> None:
        """Lights, signs, trees along the curbs; traffic lights at the intersection corners."""
        rng = self.rng
        for side in (0, 1):
            sgn = -1 if side == 0 else 1
            y_curb = self.y_lo if side == 0 else self.y_hi
            band = y_curb + sgn * (self.verge[side] / 2 if self.verge[side] > 0 else 0.5)
            x = self.gx0 + rng.uniform(0, 10)
            while x < self.gx1:
                in_zone = any(z0 - 2 < x < z1 + 2 and zs == side for z0, z1, zs in self.zones[:1])
                if abs(x - self.cx) > self.cw + self.cross_sw + 1 and not in_zone:
                    kind = rng.choice(["light", "tree", "sign", "bollard", "hydrant", "none"],
                                      p=[0.25, 0.35, 0.12, 0.08, 0.05, 0.15])
                    if kind == "tree":
                        self._tree(x, band + sgn * rng.uniform(0, 0.3))
                    elif kind != "none":
                        if self.occ.free(np.array([x - 0.3, band - 0.3, x + 0.3, band + 0.3])):
                            self._pole(x, band, str(kind), -sgn)
                x += rng.uniform(6, 16)
        for sx in (-1, 1):
            for sy, y_curb in ((-1, self.y_lo), (1, self.y_hi)):
                self._pole(self.cx + sx * (self.cw + 0.6), y_curb + sy * 0.6, "traffic_light", -sy)

    # ---- things ----------------------------------------------------------------------------------
    def _vehicle_of(self, name: str):
        rng = self.rng
        if name == "vehicle.truck":
            return make_truck(rng)
        return THING_MAKERS[name](rng)

    def _lane_y(self, side: int) -> float:
        """y of the parking lane's centre line on ``side`` (0: right/south, 1: left/north)."""
        return (self.y_lo + 1.15) if side == 0 else (self.y_hi - 1.15)

    @staticmethod
    def _lane_yaw(side: int) -> float:
        return 0.0 if side == 0 else np.pi

    def _reserve_zones(self) -> None:
        """Reserve parking-lane stretches for the construction zone (near the ego's path), a bus stop,
        a semi-trailer and delivery trucks, before anything else claims the curb."""
        rng, p = self.rng, self.p
        w0, w1 = self.window
        cut = (self.cx - self.cw - 6, self.cx + self.cw + 6)
        self.lanes = [s for s, ok in ((0, self.park_r), (1, self.park_l)) if ok]
        self.zones: list[tuple[float, float, int]] = []  # (x0, x1, side)

        def free_zone(length: float, lo: float, hi: float) -> tuple[float, int] | None:
            xs = np.arange(lo, hi - length, 1.0)
            rng.shuffle(xs)
            sides = list(self.lanes)
            rng.shuffle(sides)
            for side in sides:
                for x0 in xs:
                    if x0 + length > cut[0] and x0 < cut[1]:
                        continue
                    if all(x0 + length + 2 < a or x0 > b + 2 or s != side for a, b, s in self.zones):
                        self.zones.append((float(x0), float(x0 + length), int(side)))
                        return float(x0), int(side)
            return None

        cz = free_zone(float(rng.uniform(14, 22)), -20.0, self.D + 35.0)
        self.cz, self.cz_side = (cz if cz is not None else (None, 0))
        self.bus_zone = None
        if rng.random() < 0.6 and self.n_of("vehicle.bus.rigid", 0.8) + int(p.guarantee_things) > 0:
            self.bus_zone = free_zone(15.0, -30.0, self.D + 45.0)
        self.semi_zone = None
        if self.n_of("vehicle.trailer", 0.7) + int(p.guarantee_things) > 0:
            self.semi_zone = free_zone(19.0, -30.0, self.D + 45.0)
        self.truck_zones = []
        for _ in range(max(self.n_of("vehicle.truck", 0.8), int(p.guarantee_things))):
            z = free_zone(10.0, w0 + 5, w1 - 5)
            if z is not None:
                self.truck_zones.append(z)

    def _vehicles(self) -> None:
        rng, p = self.rng, self.p
        T = p.scene_duration
        w0, w1 = self.window
        cut = (self.cx - self.cw - 6, self.cx + self.cw + 6)
        lanes = self.lanes
        lane_y, lane_yaw = self._lane_y, self._lane_yaw
        bus_moving = self.bus_zone is None
        if self.bus_zone is not None:  # bus at a stop
            x0, side = self.bus_zone
            parts, name = make_bus(rng)
            self.add_thing(parts, name, (x0 + 7.5, lane_y(side) + 0.1 * (1 - 2 * side)), lane_yaw(side),
                           attribute="vehicle.stopped")
        if self.semi_zone is not None:  # semi-trailer truck (tractor + trailer touching) parked
            x0, side = self.semi_zone
            tp, tn = make_truck(rng, tractor=True)
            rp, rn = make_trailer(rng)
            trailer_l = _center_mesh(rp.mesh(0))[1][1]
            tractor_l = _center_mesh(tp.mesh(0))[1][1]
            yaw = lane_yaw(side)
            d = 1.0 if side == 0 else -1.0
            xs = x0 + 0.5 if side == 0 else x0 + 18.5
            self.add_thing(rp, rn, (xs + d * trailer_l / 2, lane_y(side)), yaw, attribute="vehicle.parked")
            # the trailer overhangs the tractor's fifth wheel: the boxes touch/overlap as in real rigs
            self.add_thing(tp, tn, (xs + d * (trailer_l - 1.6 + tractor_l / 2), lane_y(side)), yaw,
                           attribute="vehicle.parked", check=False)
        for x0, side in self.truck_zones:  # delivery trucks
            parts, name = make_truck(rng)
            self.add_thing(parts, name, (x0 + 5, lane_y(side)), lane_yaw(side), attribute="vehicle.parked")
        # parked rows: cars touching-close, some motorcycles, gaps
        for side in lanes:
            x = w0 - 10 + rng.uniform(0, 3)
            while x < w1 + 15:
                if cut[0] - 3 < x < cut[1]:
                    x = cut[1]
                    continue
                blocked = [z for z in self.zones if z[2] == side and z[0] - 1 < x + 5 and x < z[1] + 1]
                if blocked:
                    x = max(b for _, b, _ in blocked) + 1.0
                    continue
                if rng.random() < 0.12:
                    x += rng.uniform(3, 12)
                    continue
                u = rng.random()
                if u < 0.06 * p.freq("vehicle.motorcycle"):
                    parts, name = make_motorcycle(rng)
                    th = self.add_thing(parts, name, (x + 0.5, lane_y(side) + rng.uniform(-0.3, 0.3)),
                                        np.pi / 2 + rng.uniform(-0.3, 0.3) + np.pi * side, attribute="cycle.without_rider")
                    x += 1.2
                elif u < 0.06 * p.freq("vehicle.motorcycle") + 0.9 * p.freq("vehicle.car"):
                    parts, name = make_car(rng)
                    m, size = _center_mesh(parts.mesh(0))
                    L = size[1]
                    th = self.add_thing(parts, name, (x + L / 2, lane_y(side) + rng.uniform(-0.2, 0.2)),
                                        lane_yaw(side) + rng.uniform(-0.04, 0.04), attribute="vehicle.parked", margin=0.0)
                    x += L + (rng.uniform(0.25, 1.2) if rng.random() < 0.7 else rng.uniform(1.2, 3.0))
                else:
                    x += rng.uniform(2, 6)
        # parking lots: perpendicular rows
        for (x0, x1, ya, yb, sgn) in self.parking_lots:
            if x1 < w0 - 20 or x0 > w1 + 20:
                continue
            row_y = ya + 3.0 if sgn > 0 else yb - 3.0
            for yy in (row_y, row_y + sgn * 8.0):
                x = x0 + 1.5
                while x < x1 - 1.5:
                    if rng.random() < 0.75 * min(1.0, p.freq("vehicle.car")):
                        parts, name = make_car(rng)
                        self.add_thing(parts, name, (x, yy), (np.pi / 2 if rng.random() < 0.5 else -np.pi / 2) + rng.uniform(-0.05, 0.05),
                                       attribute="vehicle.parked")
                    x += rng.uniform(2.4, 2.9)
        # moving traffic: platoons per lane (same speed within a lane: no rear-ending)
        for k in range(self.nl):
            for direction in (-1, 1):  # -1: oncoming (y > 0 lanes), +1: ego direction (y < 0 lanes)
                y = -direction * (self.median / 2 + (k + 0.5) * self.lane_w)
                if direction == 1 and abs(y - self.ego_y) < 0.1:
                    self._ego_lane_traffic(y)
                    continue
                speed = rng.uniform(5, 12) if direction == -1 else self.ego.v0 + rng.uniform(-3, 3)
                speed = max(speed, 2.0)
                n = self.n_of("vehicle.car", 2.5)
                mid = T / 2
                x = rng.uniform(w0, w0 + 20) if direction == 1 else rng.uniform(w0, w0 + 20)
                for _ in range(n + 1):
                    u = rng.random()
                    if u < 0.1 * p.freq("vehicle.bus.rigid") and (bus_moving or rng.random() < 0.3):
                        parts, name = make_bus(rng)
                    elif u < 0.25 * p.freq("vehicle.truck"):
                        parts, name = make_truck(rng)
                    else:
                        parts, name = make_car(rng)
                    L = _center_mesh(parts.mesh(0))[1][1]
                    x += L / 2
                    # position at mid-scene is x; back-compute tau = 0
                    pos = (x - direction * speed * mid, y + rng.uniform(-0.2, 0.2))
                    self.add_thing(parts, name, pos, 0.0 if direction == 1 else np.pi,
                                   velocity=(direction * speed, 0.0), attribute="vehicle.moving")
                    x += L / 2 + rng.uniform(8, 30)
                    if x > w1:
                        break
        # cross street: stopped queues at the main road, moving away beyond
        for sgn in (-1, 1):
            lx = self.cx + sgn * self.lane_w / 2 if self.cw > 4.5 else self.cx + sgn * self.cw / 2
            y_stop = (self.y_lo - self.verge[0] - self.sw_w[0] - 1.5) if sgn > 0 else (self.y_hi + self.verge[1] + self.sw_w[1] + 1.5)
            y = y_stop
            for _ in range(self.n_of("vehicle.car", 1.2)):
                parts, name = make_car(rng)
                L = _center_mesh(parts.mesh(0))[1][1]
                y -= sgn * L / 2
                self.add_thing(parts, name, (lx, y), sgn * np.pi / 2, attribute="vehicle.stopped")
                y -= sgn * (L / 2 + rng.uniform(1.5, 3.0))

    def _ego_lane_traffic(self, y: float) -> None:
        """A lead vehicle ahead and a follower behind, at the ego's initial speed (no overtaking)."""
        rng = self.rng
        v = self.ego.v0
        for sgn, prob in ((1, 0.6), (-1, 0.5)):
            if rng.random() < prob * min(1.0, self.p.freq("vehicle.car")):
                parts, name = make_car(rng)
                L = _center_mesh(parts.mesh(0))[1][1]
                d = rng.uniform(12, 25) + L / 2 + 3.5
                self.add_thing(parts, name, (sgn * d, y), 0.0, velocity=(v, 0.0), attribute="vehicle.moving", check=False)

    def _construction_zone(self) -> None:
        """A work zone in a parking lane: a cone taper at the upstream end, a row of touching
        barriers along the lane edge with cones outside it, a machine straddling the curb inside,
        workers and some debris."""
        rng, p = self.rng, self.p
        if self.cz is None:
            return
        side = self.cz_side
        sgn = -1 if side == 0 else 1
        y_curb = self.y_lo if side == 0 else self.y_hi
        z0 = self.cz
        z1 = max(z[1] for z in self.zones if z[0] == z0)
        taper = 5.0
        # traffic on side 0 drives +x: the taper is at the low-x end there, at the high-x end on side 1
        x0, x1 = (z0 + taper, z1) if side == 0 else (z0, z1 - taper)
        y_line = y_curb - sgn * 1.85  # barrier row centre, inside the parking lane
        y_cones = y_curb - sgn * 2.5  # cones just outside the barriers
        x = x0
        while x < x1 - 1.0 and p.freq("movable_object.barrier") > 0:
            parts, name = make_barrier(rng, length=rng.uniform(1.8, 2.6))
            L = _center_mesh(parts.mesh(0))[1][1]
            if x + L > x1:
                break
            self.add_thing(parts, name, (x + L / 2, y_line), 0.0, attribute="", margin=-0.04)
            x += L + rng.uniform(0.0, 0.05)
        n_cones = max(self.n_of("movable_object.trafficcone", 7), int(p.guarantee_things))
        n_taper = min(n_cones, 4)
        for i in range(n_cones):
            if i < n_taper:  # diagonal from the curb to the lane edge
                t = (i + 1) / (n_taper + 1)
                cx = z0 + taper * t if side == 0 else z1 - taper * t
                cy = y_curb - sgn * (0.5 + t * 2.0)
            else:
                cx = x0 + (x1 - x0) * (i - n_taper + 0.5) / max(n_cones - n_taper, 1)
                cy = y_cones
            parts, name = make_cone(rng)
            self.add_thing(parts, name, (cx, cy), rng.uniform(0, np.pi))
        for _ in range(max(self.n_of("vehicle.construction", 1.0), int(p.guarantee_things))):
            parts, name = make_construction(rng)
            w, L, _ = _center_mesh(parts.mesh(0))[1]
            for _try in range(20):
                # behind the barriers, straddling the curb (work zones take the sidewalk too)
                pos = (rng.uniform(x0 + L / 2, max(x0 + L / 2 + 0.1, x1 - L / 2)),
                       y_line + sgn * (0.4 + w / 2 + rng.uniform(0, 0.3)))
                if self.add_thing(parts, name, pos, rng.choice([0.0, np.pi]) + rng.uniform(-0.05, 0.05),
                                  attribute="vehicle.parked", z=0.0):
                    break
        for _ in range(self.n_of("human.pedestrian.construction_worker", 2.0)):
            parts, name = make_pedestrian(rng, "construction_worker")
            for _try in range(10):
                if self.add_thing(parts, name, (rng.uniform(x0 + 0.5, x1 - 0.5), y_line + sgn * rng.uniform(0.6, 2.5)),
                                  rng.uniform(-np.pi, np.pi), attribute="pedestrian.standing"):
                    break
        if rng.random() < 0.7 * p.freq("movable_object.debris"):
            parts, name = make_debris(rng)
            self.add_thing(parts, name, (rng.uniform(x0 + 1, x1 - 1), y_line + sgn * 1.0), rng.uniform(0, np.pi))

    def _sidewalk_band(self, side: int, frac: float) -> float:
        """y of a line inside the main sidewalk on ``side``; frac 0 = curb side, 1 = building side."""
        sgn = -1 if side == 0 else 1
        y_curb = self.y_lo if side == 0 else self.y_hi
        return y_curb + sgn * (self.verge[side] + 0.4 + frac * (self.sw_w[side] - 0.8))

    def _cycles(self) -> None:
        rng, p = self.rng, self.p
        w0, w1 = self.window
        n_racks = max(self.n_of("vehicle.bicycle", 1.0), int(p.guarantee_things))
        for _ in range(n_racks):
            side = int(rng.integers(2))
            sgn = -1 if side == 0 else 1
            nb = int(rng.integers(2, 6))
            spacing = rng.uniform(0.62, 0.8)
            for _try in range(30):
                x0 = rng.uniform(w0 + 5, w1 - 5)
                if abs(x0 - self.cx) < self.cw + self.cross_sw + 4:
                    continue
                y = self._sidewalk_band(side, 0.85)
                rect = np.array([x0 - 0.5, y - 1.0, x0 + nb * spacing + 0.5, y + 1.0])
                if self.occ.free(rect):
                    break
            else:
                continue
            if rng.random() < 0.6:
                rparts, rname = make_bicycle_rack(rng, nb * spacing)
                self.add_thing(rparts, rname, (x0 + nb * spacing / 2 - spacing / 2, y), 0.0, check=False)
            for i in range(nb):
                parts, name = make_bicycle(rng)
                self.add_thing(parts, name, (x0 + i * spacing, y), sgn * np.pi / 2 + rng.uniform(-0.08, 0.08),
                               attribute="cycle.without_rider", check=False)
        n_moto = max(self.n_of("vehicle.motorcycle", 1.0), int(p.guarantee_things))
        for _ in range(n_moto):  # on the sidewalk's curb band, angled
            side = int(rng.integers(2))
            for _try in range(30):
                x = rng.uniform(w0 + 5, w1 - 5)
                if abs(x - self.cx) < self.cw + self.cross_sw + 3:
                    continue
                parts, name = make_motorcycle(rng)
                if self.add_thing(parts, name, (x, self._sidewalk_band(side, 0.25)), rng.uniform(-np.pi, np.pi),
                                  attribute="cycle.without_rider"):
                    break

    def _pedestrians(self) -> None:
        rng, p = self.rng, self.p
        w0, w1 = self.window
        T = p.scene_duration

        def kind() -> str:
            u = rng.random()
            if u < 0.12 * p.freq("human.pedestrian.child"):
                return "child"
            if u < 0.12 * p.freq("human.pedestrian.child") + 0.04 * p.freq("human.pedestrian.police_officer"):
                return "police_officer"
            return "adult"

        # standing groups (touching-close)
        n_groups = max(self.n_of("human.pedestrian.adult", 3.0), int(p.guarantee_things))
        for _ in range(n_groups):
            side = int(rng.integers(2))
            xc = rng.uniform(w0 + 5, w1 - 5)
            yc = self._sidewalk_band(side, rng.uniform(0.3, 0.7))
            for i in range(int(rng.integers(1, 6))):
                parts, name = make_pedestrian(rng, kind())
                for _try in range(8):
                    pos = (xc + rng.uniform(-1.2, 1.2), yc + rng.uniform(-0.7, 0.7))
                    if self.add_thing(parts, name, pos, rng.uniform(-np.pi, np.pi), attribute="pedestrian.standing",
                                      margin=0.02):
                        break
        # walkers along the sidewalks (small groups side by side)
        for _ in range(self.n_of("human.pedestrian.adult", 4.0)):
            side = int(rng.integers(2))
            direction = rng.choice([-1.0, 1.0])
            speed = rng.uniform(0.9, 1.6)
            xc = rng.uniform(w0, w1)
            n = int(rng.choice([1, 1, 2, 3]))
            for i in range(n):
                parts, name = make_pedestrian(rng, kind(), walking=True)
                y = self._sidewalk_band(side, 0.35 + 0.28 * i)
                self.add_thing(parts, name, (xc + rng.uniform(-0.3, 0.3), y), 0.0 if direction > 0 else np.pi,
                               velocity=(direction * speed, 0.0), attribute="pedestrian.moving", margin=0.05)

    def _ignore_objects(self) -> None:
        """Benches, cabinets (static.other), bins (pushable_pullable), debris: ignore classes."""
        rng = self.rng
        w0, w1 = self.window
        for _ in range(self.n_of("static.other", 3.0)):
            side = int(rng.integers(2))
            x, y = rng.uniform(w0, w1), self._sidewalk_band(side, 1.0)
            if not self.occ.free(np.array([x - 1.0, y - 0.5, x + 1.0, y + 0.5])):
                continue
            z0 = float(self.ground.height(x, y))
            q = Parts()
            if rng.random() < 0.5:  # bench
                col = _vary(rng, _pick(rng, (((0.4, 0.3, 0.2), 0.5), ((0.45, 0.45, 0.47), 0.5))))
                q.add(box((1.8, 0.45, 0.06), (x, y, z0 + 0.45)), col, 0.2)
                q.add(box((1.8, 0.06, 0.45), (x, y + 0.2 * (1 if side else -1), z0 + 0.7)), col, 0.2)
                for sx in (-0.8, 0.8):
                    q.add(box((0.06, 0.4, 0.45), (x + sx, y, z0 + 0.22)), (0.2, 0.2, 0.2), 0.2)
            else:  # utility cabinet
                q.add(box((0.9, 0.45, 1.3), (x, y, z0 + 0.65)), _grey(rng, 0.35, 0.65), 0.25)
            self.add_static(q, "static.other")
            self.occ.take(np.array([x - 1.0, y - 0.3, x + 1.0, y + 0.3]))
        for _ in range(self.n_of("movable_object.pushable_pullable", 2.0)):
            side = int(rng.integers(2))
            parts, name = make_trash_bin(rng)
            self.add_thing(parts, name, (rng.uniform(w0, w1), self._sidewalk_band(side, 0.95)), rng.uniform(-0.2, 0.2))
        for (x0, x1, ya, yb, sgn) in self.lots_free:
            if x1 > w0 and x0 < w1 and rng.random() < 0.3 * self.p.freq("movable_object.debris"):
                parts, name = make_debris(rng)
                self.add_thing(parts, name, (rng.uniform(x0 + 1, x1 - 1), rng.uniform(ya + 1, yb - 1)), 0.0)

    def _guarantee(self) -> None:
        """Make sure each of the ten challenge thing classes occurs, near the ego's path."""
        have = {t.fine_name for t in self.things}
        rng = self.rng
        w0, w1 = -25.0, self.D + 35.0  # close to the ego's path, where the sensors see it
        near_lots = [l for l in self.lots_free if l[1] > w0 + 4 and l[0] < w1 - 4]
        for name in THING_FINE_NAMES:
            if name in have:
                continue
            for _try in range(400):
                if near_lots and rng.random() < 0.5:
                    x0, x1, ya, yb, sgn = near_lots[int(rng.integers(len(near_lots)))]
                    x = rng.uniform(max(x0, w0) + 2, min(x1, w1) - 2)
                    y = (ya + rng.uniform(1.5, 8.0)) if sgn > 0 else (yb - rng.uniform(1.5, 8.0))
                else:
                    side = int(rng.integers(2))
                    x, y = rng.uniform(w0, w1), self._sidewalk_band(side, rng.uniform(0.2, 0.8))
                parts, fname = (make_pedestrian(rng) if name == "human.pedestrian.adult" else self._vehicle_of(name))
                if self.add_thing(parts, fname, (x, y), rng.choice([0.0, np.pi / 2, np.pi]), attribute=""):
                    break

    def _far_ground(self) -> None:
        """Big low-detail planes beyond the grid so distant camera views show ground, not void."""
        S = 900.0
        pr = Parts().add((np.array([[-S, -S, -0.15], [S, -S, -0.15], [S, S, -0.15], [-S, S, -0.15]]),
                          np.array([[0, 1, 2], [0, 2, 3]], np.int32)), (0.33, 0.4, 0.22), 0.18, PAT_VEG)
        self.add_static(pr, "flat.terrain")
        rd = Parts()
        rd.add((np.array([[-S, self.y_lo, -0.08], [S, self.y_lo, -0.08], [S, self.y_hi, -0.08], [-S, self.y_hi, -0.08]]),
                np.array([[0, 1, 2], [0, 2, 3]], np.int32)), self.road_col, 0.1, PAT_ROAD)
        rd.add((np.array([[self.cx - self.cw, -S, -0.08], [self.cx + self.cw, -S, -0.08], [self.cx + self.cw, S, -0.08],
                          [self.cx - self.cw, S, -0.08]]), np.array([[0, 1, 2], [0, 2, 3]], np.int32)), self.road_col, 0.1, PAT_ROAD)
        self.add_static(rd, "flat.driveable_surface")


def build_scene(params: WorldParams, index: int) -> SceneWorld:
    """Scene ``index`` of a world; depends only on (params.seed, index) and the params."""
    rng = np.random.default_rng(np.random.SeedSequence([int(params.seed), int(index), 0x5CE4E]))
    return _SceneBuilder(params, index, rng).build()
