"""Small labelled LiDAR sweeps made by ray casting a street scene, for tests and benchmarks of the network.

Independent of the synthetic world (``lidarlift.synth``): no files, no cameras, seconds to make. A
sweep is a spinning LiDAR at the origin of its frame (mounted ``sensor_height`` above a flat ground)
casting ``beams`` x ``azimuths`` rays at a road with sidewalks, terrain, buildings, trees, cars,
trucks, buses, pedestrians, barriers and cones. Labels are the nuscenes16 challenge classes 1..16.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lidarlift.classes import NUSCENES16

C = {name: NUSCENES16.index(name) for name in NUSCENES16.classes}

#: mean intensity per class (0..255 like nuScenes); sweeps add noise and a range fall-off.
_INTENSITY = {
    C["barrier"]: 60, C["bicycle"]: 30, C["bus"]: 45, C["car"]: 35, C["construction_vehicle"]: 40,
    C["motorcycle"]: 30, C["pedestrian"]: 20, C["traffic_cone"]: 90, C["trailer"]: 40, C["truck"]: 40,
    C["driveable_surface"]: 8, C["other_flat"]: 12, C["sidewalk"]: 15, C["terrain"]: 6,
    C["manmade"]: 25, C["vegetation"]: 10,
}


@dataclass
class ToySweep:
    """``points`` (N, 4) float32 x, y, z, intensity in the lidar frame; ``label`` (N,) uint8 class 1..16."""

    points: np.ndarray
    label: np.ndarray


def _boxes_hit(o: np.ndarray, d: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(R, B) ray distance to z-rotated boxes (cx, cy, cz, lx, ly, lz, yaw); inf where missed."""
    if len(boxes) == 0:
        return np.full((len(d), 0), np.inf)
    c, s = np.cos(-boxes[:, 6]), np.sin(-boxes[:, 6])
    ox, oy = o[0] - boxes[:, 0], o[1] - boxes[:, 1]
    lo = np.stack([c * ox - s * oy, s * ox + c * oy, np.full(len(boxes), o[2]) - boxes[:, 2]], 1)  # (B, 3)
    dx = d[:, None, 0] * c - d[:, None, 1] * s
    dy = d[:, None, 0] * s + d[:, None, 1] * c
    dz = np.broadcast_to(d[:, None, 2], dx.shape)
    half = boxes[:, 3:6] / 2
    tmin = np.full(dx.shape, -np.inf)
    tmax = np.full(dx.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis, dd in enumerate((dx, dy, dz)):
            t1 = (-half[:, axis] - lo[:, axis]) / dd
            t2 = (half[:, axis] - lo[:, axis]) / dd
            tmin = np.maximum(tmin, np.minimum(t1, t2))
            tmax = np.minimum(tmax, np.maximum(t1, t2))
    hit = (tmax >= tmin) & (tmin > 0.5)
    return np.where(hit, tmin, np.inf)


def _cylinders_hit(o: np.ndarray, d: np.ndarray, cyl: np.ndarray) -> np.ndarray:
    """(R, Y) ray distance to vertical cylinders (cx, cy, radius, z0, z1); inf where missed."""
    if len(cyl) == 0:
        return np.full((len(d), 0), np.inf)
    ox, oy = o[0] - cyl[:, 0], o[1] - cyl[:, 1]
    a = (d[:, 0] ** 2 + d[:, 1] ** 2)[:, None]
    b = 2 * (d[:, None, 0] * ox + d[:, None, 1] * oy)
    cc = ox ** 2 + oy ** 2 - cyl[:, 2] ** 2
    disc = b ** 2 - 4 * a * cc
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / (2 * a)
    z = o[2] + t * d[:, None, 2]
    hit = (disc > 0) & (t > 0.5) & (z >= cyl[:, 3]) & (z <= cyl[:, 4])
    return np.where(hit, t, np.inf)


def _spheres_hit(o: np.ndarray, d: np.ndarray, sph: np.ndarray) -> np.ndarray:
    """(R, Q) ray distance to spheres (cx, cy, cz, radius); inf where missed."""
    if len(sph) == 0:
        return np.full((len(d), 0), np.inf)
    oc = o[None, :] - sph[:, :3]  # (Q, 3)
    b = 2 * d @ oc.T
    cc = (oc ** 2).sum(1) - sph[:, 3] ** 2
    disc = b ** 2 - 4 * cc
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / 2
    return np.where((disc > 0) & (t > 0.5), t, np.inf)


def _ground_class(x: np.ndarray, y: np.ndarray, crossing: float) -> np.ndarray:
    ay = np.abs(y)
    cls = np.full(x.shape, C["terrain"], np.uint8)
    cls[ay < 6.5] = C["sidewalk"]
    cls[(ay < 4.0) | (np.abs(x - crossing) < 4.0)] = C["driveable_surface"]
    cls[(ay >= 6.5) & (ay < 7.5) & (np.abs(x - crossing) >= 4.0)] = C["other_flat"]
    return cls


def make_sweep(seed: int = 0, beams: int = 32, azimuths: int = 1090, max_range: float = 70.0,
               sensor_height: float = 1.84, max_points: int | None = None) -> ToySweep:
    """Ray-cast one sweep of a random street scene (deterministic for a given ``seed``).

    ``beams`` rings from -30 to +10 degrees elevation (nuScenes' HDL-32E), ``azimuths`` rays per ring;
    rays that hit nothing within ``max_range`` are dropped; ``max_points`` subsamples at random.
    """
    rng = np.random.default_rng(seed)
    zg = -sensor_height
    crossing = rng.uniform(-30, 30)
    boxes, box_cls, cyls, cyl_cls, sph, sph_cls = [], [], [], [], [], []

    def on_ground(h: float) -> float:
        return zg + h / 2

    # buildings on both sides, with gaps
    for side in (-1, 1):
        x = -60.0
        while x < 60:
            length = rng.uniform(8, 25)
            if rng.random() < 0.8:
                depth, height = rng.uniform(6, 15), rng.uniform(4, 15)
                y = side * (rng.uniform(9, 12) + depth / 2)
                boxes.append([x + length / 2, y, on_ground(height), length, depth, height, 0.0])
                box_cls.append(C["manmade"])
            x += length + rng.uniform(0, 6)
    # trees along the sidewalk edge
    for _ in range(rng.integers(8, 16)):
        x, y = rng.uniform(-50, 50), rng.choice([-1, 1]) * rng.uniform(7.8, 8.6)
        h = rng.uniform(2.0, 3.5)
        cyls.append([x, y, 0.15, zg, zg + h]); cyl_cls.append(C["vegetation"])
        r = rng.uniform(1.2, 2.5)
        sph.append([x, y, zg + h + r * 0.7, r]); sph_cls.append(C["vegetation"])
    # bushes on terrain
    for _ in range(rng.integers(4, 10)):
        x, y = rng.uniform(-40, 40), rng.choice([-1, 1]) * rng.uniform(7.6, 9.0)
        r = rng.uniform(0.5, 1.0)
        sph.append([x, y, zg + r * 0.6, r]); sph_cls.append(C["vegetation"])
    # vehicles on the road
    sizes = {C["car"]: (4.5, 1.9, 1.6), C["truck"]: (7.0, 2.5, 3.0), C["bus"]: (11.0, 2.9, 3.3),
             C["trailer"]: (9.0, 2.6, 3.6), C["construction_vehicle"]: (6.0, 2.8, 3.0),
             C["motorcycle"]: (2.1, 0.8, 1.4), C["bicycle"]: (1.8, 0.6, 1.2)}
    kinds = [C["car"]] * 8 + [C["truck"], C["bus"], C["trailer"], C["construction_vehicle"], C["motorcycle"], C["bicycle"]]
    for _ in range(rng.integers(6, 14)):
        k = kinds[rng.integers(len(kinds))]
        lx, ly, lz = (np.array(sizes[k]) * rng.uniform(0.9, 1.1, 3))
        x = rng.uniform(-45, 45)
        y = rng.choice([-2.0, 2.0]) + rng.normal(0, 0.3)
        if abs(x) < 3.5 and abs(y) < 3:
            continue
        boxes.append([x, y, on_ground(lz), lx, ly, lz, rng.normal(0, 0.08)]); box_cls.append(k)
    # parked cars near the kerb
    for _ in range(rng.integers(2, 6)):
        x, y = rng.uniform(-40, 40), rng.choice([-1, 1]) * 3.1
        boxes.append([x, y, on_ground(1.5), 4.4, 1.8, 1.5, rng.normal(0, 0.05)]); box_cls.append(C["car"])
    # pedestrians on sidewalks and the crossing
    for _ in range(rng.integers(4, 12)):
        if rng.random() < 0.7:
            x, y = rng.uniform(-30, 30), rng.choice([-1, 1]) * rng.uniform(4.5, 6.2)
        else:
            x, y = crossing + rng.uniform(-3, 3), rng.uniform(-3.5, 3.5)
        if x * x + y * y < 4:
            continue
        h = rng.uniform(1.5, 1.9)
        cyls.append([x, y, 0.25, zg, zg + h]); cyl_cls.append(C["pedestrian"])
    # barriers and cones
    for _ in range(rng.integers(2, 6)):
        x, y = rng.uniform(-30, 30), rng.choice([-1, 1]) * rng.uniform(3.7, 4.2)
        boxes.append([x, y, on_ground(1.0), 2.0, 0.4, 1.0, rng.normal(0, 0.1)]); box_cls.append(C["barrier"])
    for _ in range(rng.integers(3, 8)):
        x, y = rng.uniform(-25, 25), rng.choice([-1, 1]) * rng.uniform(3.0, 4.0)
        cyls.append([x, y, 0.18, zg, zg + 0.7]); cyl_cls.append(C["traffic_cone"])

    elev = np.deg2rad(np.linspace(-30.0, 10.0, beams))
    az = np.linspace(-np.pi, np.pi, azimuths, endpoint=False) + rng.uniform(0, 2 * np.pi / azimuths)
    el, azg = np.meshgrid(elev, az, indexing="ij")
    el = el.ravel() + rng.normal(0, 0.0005, el.size)
    azg = azg.ravel()
    d = np.stack([np.cos(el) * np.cos(azg), np.cos(el) * np.sin(azg), np.sin(el)], 1)
    o = np.zeros(3)
    with np.errstate(divide="ignore"):
        t_ground = np.where(d[:, 2] < -1e-6, zg / d[:, 2], np.inf)
    hits = [t_ground[:, None],
            _boxes_hit(o, d, np.asarray(boxes, dtype=np.float64).reshape(-1, 7)),
            _cylinders_hit(o, d, np.asarray(cyls, dtype=np.float64).reshape(-1, 5)),
            _spheres_hit(o, d, np.asarray(sph, dtype=np.float64).reshape(-1, 4))]
    t_all = np.concatenate(hits, 1)
    cls_all = np.concatenate([[0], box_cls, cyl_cls, sph_cls]).astype(np.uint8)
    first = np.argmin(t_all, 1)
    t = t_all[np.arange(len(d)), first]
    keep = np.isfinite(t) & (t < max_range)
    t, first, d = t[keep], first[keep], d[keep]
    t = t + rng.normal(0, 0.02, t.shape)
    xyz = d * t[:, None]
    label = cls_all[first]
    ground = first == 0
    label[ground] = _ground_class(xyz[ground, 0], xyz[ground, 1], crossing)
    base = np.array([_INTENSITY.get(int(c), 10) for c in range(17)], dtype=np.float64)[label]
    intensity = np.clip(base * rng.lognormal(0, 0.35, len(t)) * np.clip(20 / (t + 5), 0.3, 2.0), 0, 255)
    points = np.concatenate([xyz, intensity[:, None]], 1).astype(np.float32)
    if max_points is not None and len(points) > max_points:
        idx = np.sort(rng.choice(len(points), max_points, replace=False))
        points, label = points[idx], label[idx]
    return ToySweep(points=np.ascontiguousarray(points), label=label.astype(np.uint8))


# ----------------------------------------------------------------------------- a toy world on disk

#: one nuScenes fine class per challenge class (for writing ground truth in the lidarseg format)
def _challenge_to_fine() -> np.ndarray:
    from lidarlift.classes import FINE_TO_CHALLENGE

    lut = np.zeros(17, np.uint8)
    for fine in range(len(FINE_TO_CHALLENGE) - 1, -1, -1):
        if FINE_TO_CHALLENGE[fine]:
            lut[FINE_TO_CHALLENGE[fine]] = fine
    return lut


def write_toy_world(root, scenes: Sequence[tuple[str, str]] = (("scene-0061", "train"), ("scene-0103", "val")),
                    sweeps_per_scene: int = 2, seed: int = 0, **sweep_kw):
    """Write toy sweeps as nuScenes ``.pcd.bin`` files with lidarseg ground truth under ``root`` and return
    the :class:`~lidarlift.manifest.Manifest` (also written to ``root/manifest.json``).

    ``scenes``: (shard name, split) pairs. Sample tokens are ``<shard>-<index>``. No cameras.
    """
    from pathlib import Path

    from lidarlift.manifest import LidarFrame, Manifest, SampleRecord

    root = Path(root)
    (root / "samples").mkdir(parents=True, exist_ok=True)
    (root / "lidarseg").mkdir(parents=True, exist_ok=True)
    to_fine = _challenge_to_fine()
    eye = np.eye(4).tolist()
    samples = []
    for si, (shard, split) in enumerate(scenes):
        for i in range(sweeps_per_scene):
            token = f"{shard}-{i}"
            sweep = make_sweep(seed * 100_003 + si * 1000 + i, **sweep_kw)
            raw = np.concatenate([sweep.points, np.zeros((len(sweep.points), 1), np.float32)], 1)
            raw.astype(np.float32).tofile(root / "samples" / f"{token}.pcd.bin")
            to_fine[sweep.label].tofile(root / "lidarseg" / f"{token}_lidarseg.bin")
            samples.append(SampleRecord(token=token, shard=shard, split=split, index=i,
                                        lidar=LidarFrame(path=f"samples/{token}.pcd.bin", timestamp=i * 500_000,
                                                         lidar_to_ego=eye, ego_to_global=eye, token=token),
                                        cameras=[], gt_lidarseg=f"lidarseg/{token}_lidarseg.bin"))
    manifest = Manifest(kind="nuscenes", dataroot=str(root), version="v1.0-mini", cameras=[],
                        label_space="nuscenes16", samples=samples)
    manifest.to_json(root / "manifest.json")
    return manifest


def simulated_pseudolabels(label: np.ndarray, seed: int = 0, labelled_share: float = 0.6, precision: float = 0.98,
                           candidate_share: float = 0.3, candidate_size: int = 3, num_classes: int = 16):
    """Pseudo-labels made from ground truth as an E-step might: a ``labelled_share`` of the points get a
    label (wrong for a ``1 - precision`` share of them), a ``candidate_share`` get a candidate set of
    ``candidate_size`` classes containing the truth, the rest are ignore.

    Returns (label (N,) uint8, candidate_mask (N,) uint32, confidence (N,) float32).
    """
    rng = np.random.default_rng(seed)
    n = len(label)
    u = rng.random(n)
    lab = np.where(u < labelled_share, label, 0).astype(np.uint8)
    wrong = (lab > 0) & (rng.random(n) > precision)
    lab[wrong] = rng.integers(1, num_classes + 1, int(wrong.sum()))
    full = np.uint32((1 << num_classes) - 1)
    cand = np.full(n, full, np.uint32)
    cand[lab > 0] = np.left_shift(np.uint32(1), lab[lab > 0].astype(np.uint32) - 1)
    has_set = (u >= labelled_share) & (u < labelled_share + candidate_share) & (label > 0)
    truth = label[has_set].astype(np.int64)
    # candidate_size - 1 distinct other classes per point: the smallest random keys, the truth's key pushed last
    keys = rng.random((len(truth), num_classes))
    keys[np.arange(len(truth)), truth - 1] = np.inf
    others = np.argsort(keys, 1)[:, : candidate_size - 1]  # class index 0..K-1
    bits = np.left_shift(np.uint32(1), (truth - 1).astype(np.uint32))
    for j in range(candidate_size - 1):
        bits |= np.left_shift(np.uint32(1), others[:, j].astype(np.uint32))
    cand[has_set] = bits
    conf = (lab > 0).astype(np.float32)
    return lab, cand, conf


def write_pseudolabel_store(path, manifest, shard: str, arrays: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                            round: int = 0) -> None:
    """Write a ``pseudolabels`` store for ``shard`` from per-keyframe (label, candidate_mask, confidence)."""
    from lidarlift.artifacts import offsets_from_counts, put, write_store

    samples = manifest.shard_samples(shard)
    if len(arrays) != len(samples):
        raise ValueError(f"shard {shard} has {len(samples)} keyframes, got {len(arrays)} label arrays")
    label = np.concatenate([a[0] for a in arrays]) if arrays else np.zeros(0, np.uint8)
    with write_store(path, "pseudolabels", shard=shard, sample_tokens=[s.token for s in samples],
                     params={"source": "simulated"}) as g:
        put(g, "point_offsets", offsets_from_counts([len(a[0]) for a in arrays]))
        put(g, "label", label)
        put(g, "confidence", np.concatenate([a[2] for a in arrays]) if arrays else np.zeros(0, np.float32))
        put(g, "instance_id", np.zeros(len(label), np.int32))
        put(g, "candidate_mask", np.concatenate([a[1] for a in arrays]) if arrays else np.zeros(0, np.uint32))
        put(g, "source", np.where(label > 0, 2, 0).astype(np.uint8))
        put(g, "round", np.full(len(label), round, np.uint8))
