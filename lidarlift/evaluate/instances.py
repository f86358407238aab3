"""Panoptic instances from semantic predictions: range-adaptive connected components per thing class.

The network predicts classes only; for panoptic scoring, the points of each predicted thing class
are split into instances by connected components of a distance graph, as PointSAM's separation-aware
refinement builds it: two points of the same predicted class are linked when one is among the other's
16 nearest neighbours and their distance is below ``max(range_factor * range, radius_c)`` of either point (range = distance from the sensor in the
ground plane; ``radius_c`` = ``vehicle_radius`` for car, truck, bus, trailer and construction
vehicle, ``radius`` otherwise). Components are numbered 1, 2, ... per class by decreasing size;
components past 999 (the panoptic format's limit) join instance 999.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from lidarlift.classes import LabelSpace

VEHICLES = frozenset({"car", "truck", "bus", "trailer", "construction_vehicle", "other-vehicle"})
MAX_INSTANCE = 999


@dataclass(frozen=True)
class InstanceParams:
    """Clustering parameters (config section ``evaluate.instances``; defaults from the schema)."""

    radius: float
    vehicle_radius: float
    range_factor: float

    @staticmethod
    def from_config(cfg: dict[str, Any] | None = None) -> "InstanceParams":
        from lidarlift.config import section

        c = section("evaluate.instances", cfg)
        return InstanceParams(radius=float(c["radius"]), vehicle_radius=float(c["vehicle_radius"]),
                              range_factor=float(c["range_factor"]))


def cluster_instances(xyz: np.ndarray, sem: np.ndarray, space: LabelSpace,
                      params: InstanceParams | None = None) -> np.ndarray:
    """Per-class instance ids of the thing points of one keyframe.

    xyz: (N, 3) float, lidar frame (the sensor at the origin); sem: (N,) int class 0..K.
    Returns (N,) int32: 1..999 for points of thing classes, 0 for stuff and ignore.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    sem = np.asarray(sem)
    if xyz.ndim != 2 or xyz.shape[1] < 3 or xyz.shape[0] != sem.shape[0]:
        raise ValueError(f"cluster_instances: xyz must be (N, 3) matching sem (N,), got {xyz.shape} and {sem.shape}")
    params = params or InstanceParams.from_config()
    out = np.zeros(sem.shape[0], np.int32)
    rng = np.linalg.norm(xyz[:, :2], axis=1)
    for c in range(1, space.num_classes + 1):
        name = space.classes[c - 1]
        if name not in space.things:
            continue
        idx = np.flatnonzero(sem == c)
        if idx.size == 0:
            continue
        base = params.vehicle_radius if name in VEHICLES else params.radius
        r = np.maximum(params.range_factor * rng[idx], base)
        comp = radius_components(xyz[idx, :3], r)
        sizes = np.bincount(comp)
        order = np.argsort(-sizes, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        out[idx] = np.minimum(rank[comp] + 1, MAX_INSTANCE)
    return out


def radius_components(xyz: np.ndarray, radius: np.ndarray, k: int = 16) -> np.ndarray:
    """Connected components of the graph linking each point to those of its ``k`` nearest neighbours
    that lie within ``max(radius_i, radius_j)``.

    xyz: (N, 3) float64; radius: (N,) float. Returns (N,) int component index (0..n_components-1, in
    order of each component's smallest point index). Bounding the neighbours by ``k`` keeps the cost
    O(N k log N) on dense surfaces (a bus side near the sensor holds thousands of points within a
    metre, all in one component anyway); components are joined through a union-find forest.
    """
    n = xyz.shape[0]
    parent = np.arange(n, dtype=np.int64)
    if n <= 1:
        return parent
    kk = min(k + 1, n)
    dist, nn = cKDTree(xyz).query(xyz, k=kk, distance_upper_bound=float(np.max(radius)))
    dist, nn = dist[:, 1:], nn[:, 1:]  # the first neighbour is the point itself
    src = np.repeat(np.arange(n), kk - 1).reshape(n, kk - 1)
    ok = nn < n  # missing neighbours come back as index n with distance inf
    nn_safe = np.where(ok, nn, 0)
    ok &= dist < np.maximum(radius[:, None], radius[nn_safe])
    _union(parent, src[ok], nn[ok])
    return np.unique(_flatten(parent), return_inverse=True)[1]


def _union(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Join the sets of a[k] and b[k] for every k (union by smaller root, path halving)."""
    from lidarlift.evaluate._unionfind import union_pairs

    union_pairs(parent, a, b)


def _flatten(parent: np.ndarray) -> np.ndarray:
    from lidarlift.evaluate._unionfind import find_all

    return find_all(parent)


def compact_instances(sem: np.ndarray, inst: np.ndarray, space: LabelSpace) -> np.ndarray:
    """Renumber arbitrary instance keys to per-class ids 1..999 (by decreasing size; 0 stays 0; stuff -> 0).

    sem: (N,) class 0..K; inst: (N,) int instance key (0 = none). Returns (N,) int32.
    """
    sem = np.asarray(sem, np.int64)
    inst = np.asarray(inst, np.int64)
    out = np.zeros(sem.shape[0], np.int32)
    thing = space.thing_mask[sem] & (inst > 0)
    for c in np.unique(sem[thing]):
        idx = np.flatnonzero(thing & (sem == c))
        keys, inv, counts = np.unique(inst[idx], return_inverse=True, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        out[idx] = np.minimum(rank[inv] + 1, MAX_INSTANCE)
    return out
