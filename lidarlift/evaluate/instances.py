"""Panoptic instances from semantic predictions: range-adaptive connected components per thing class.

The network predicts classes only; for panoptic scoring, the points of each predicted thing class
are split into instances by connected components of a distance graph, as PointSAM's separation-aware
refinement builds it: two points of the same predicted class are linked when their distance is below
``max(range_factor * range, radius_c)`` of either point (range = distance from the sensor in the
ground plane; ``radius_c`` = ``vehicle_radius`` for car, truck, bus, trailer and construction
vehicle, ``radius`` otherwise). Components are numbered 1, 2, ... per class by decreasing size;
components past 999 (the panoptic format's limit) join instance 999.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from lidarlift.classes import LabelSpace

VEHICLES = frozenset({"car", "truck", "bus", "trailer", "construction_vehicle", "other-vehicle"})
MAX_INSTANCE = 999


@dataclass(frozen=True)
class InstanceParams:
    """Clustering parameters (config section ``evaluate.instances``)."""

    radius: float = 0.65
    vehicle_radius: float = 1.0
    range_factor: float = 0.04

    @staticmethod
    def from_config(cfg: dict[str, Any] | None) -> "InstanceParams":
        cfg = dict(cfg or {})
        method = cfg.pop("method", "components")
        if method != "components":
            raise ValueError(f"config key evaluate.instances.method: unknown method {method!r}; choose 'components'")
        unknown = set(cfg) - {"radius", "vehicle_radius", "range_factor"}
        if unknown:
            raise ValueError(f"config key evaluate.instances: unknown keys {sorted(unknown)}")
        return InstanceParams(**cfg)


def cluster_instances(xyz: np.ndarray, sem: np.ndarray, space: LabelSpace,
                      params: InstanceParams = InstanceParams()) -> np.ndarray:
    """Per-class instance ids of the thing points of one keyframe.

    xyz: (N, 3) float, lidar frame (the sensor at the origin); sem: (N,) int class 0..K.
    Returns (N,) int32: 1..999 for points of thing classes, 0 for stuff and ignore.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    sem = np.asarray(sem)
    if xyz.ndim != 2 or xyz.shape[1] < 3 or xyz.shape[0] != sem.shape[0]:
        raise ValueError(f"cluster_instances: xyz must be (N, 3) matching sem (N,), got {xyz.shape} and {sem.shape}")
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


def radius_components(xyz: np.ndarray, radius: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Connected components of the graph linking i and j when ``|x_i - x_j| < max(radius_i, radius_j)``.

    xyz: (N, 3) float64; radius: (N,) float. Returns (N,) int component index. Exact, with memory
    bounded by ``chunk``: the neighbours of ``chunk`` points at a time are merged into the components
    found so far (kept as one edge per point to its component's representative), so dense clusters
    (near ground, a bus side) never hold all their neighbour pairs at once.
    """
    n = xyz.shape[0]
    labels = np.arange(n)
    if n <= 1:
        return labels
    tree = cKDTree(xyz)
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk))
        neigh = tree.query_ball_point(xyz[idx], radius[idx], return_sorted=False)
        lens = np.fromiter((len(x) for x in neigh), dtype=np.int64, count=idx.size)
        rows = np.concatenate([np.repeat(idx, lens), np.arange(n)])
        cols = np.concatenate([np.fromiter(chain.from_iterable(neigh), dtype=np.int64, count=int(lens.sum())), labels])
        del neigh
        graph = coo_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(n, n))
        _, comp = connected_components(graph, directed=True, connection="weak")
        # one representative (the smallest index) per component, so the next chunk links to it
        rep = np.full(comp.max() + 1, n, np.int64)
        np.minimum.at(rep, comp, np.arange(n))
        labels = rep[comp]
    return np.unique(labels, return_inverse=True)[1]


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
