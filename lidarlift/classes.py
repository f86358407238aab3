"""Label spaces: the 32 nuScenes fine classes, the 16 challenge classes, SemanticKITTI's 19.

Conventions used everywhere in lidarlift:
- ``fine`` indices are the nuScenes lidarseg indices 0..31 (devkit colormap order).
- ``challenge`` / training labels are 1..K (K = 16 for nuScenes), 0 = ignore/unlabelled.
- a candidate-class bitmask is uint32 with bit ``c - 1`` set when class ``c`` is still possible.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: nuScenes-lidarseg fine class names, index = position (devkit colormap order).
FINE_CLASSES: tuple[str, ...] = (
    "noise",
    "animal",
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "movable_object.barrier",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "movable_object.trafficcone",
    "static_object.bicycle_rack",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.motorcycle",
    "vehicle.trailer",
    "vehicle.truck",
    "flat.driveable_surface",
    "flat.other",
    "flat.sidewalk",
    "flat.terrain",
    "static.manmade",
    "static.other",
    "static.vegetation",
    "vehicle.ego",
)
FINE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FINE_CLASSES)}

#: The 16 lidarseg challenge classes, index = position + 1 (0 is ignore).
CHALLENGE_CLASSES: tuple[str, ...] = (
    "barrier",
    "bicycle",
    "bus",
    "car",
    "construction_vehicle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "trailer",
    "truck",
    "driveable_surface",
    "other_flat",
    "sidewalk",
    "terrain",
    "manmade",
    "vegetation",
)

#: Official fine -> challenge mapping (nuscenes.eval.lidarseg.utils.LidarsegClassMapper).
FINE_TO_CHALLENGE_NAME: dict[str, str] = {
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "vehicle.car": "car",
    "vehicle.motorcycle": "motorcycle",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.truck": "truck",
    "vehicle.construction": "construction_vehicle",
    "vehicle.trailer": "trailer",
    "movable_object.barrier": "barrier",
    "movable_object.trafficcone": "traffic_cone",
    "flat.driveable_surface": "driveable_surface",
    "flat.sidewalk": "sidewalk",
    "flat.terrain": "terrain",
    "flat.other": "other_flat",
    "static.manmade": "manmade",
    "static.vegetation": "vegetation",
}  # every other fine class maps to ignore (0)

#: (32,) uint8 lookup: fine index -> challenge index (0 = ignore).
FINE_TO_CHALLENGE: np.ndarray = np.array(
    [
        CHALLENGE_CLASSES.index(FINE_TO_CHALLENGE_NAME[n]) + 1 if n in FINE_TO_CHALLENGE_NAME else 0
        for n in FINE_CLASSES
    ],
    dtype=np.uint8,
)

#: SemanticKITTI's 19 evaluation classes (train ids 1..19, 0 = unlabelled).
SEMANTICKITTI_CLASSES: tuple[str, ...] = (
    "car",
    "bicycle",
    "motorcycle",
    "truck",
    "other-vehicle",
    "person",
    "bicyclist",
    "motorcyclist",
    "road",
    "parking",
    "sidewalk",
    "other-ground",
    "building",
    "fence",
    "vegetation",
    "trunk",
    "terrain",
    "pole",
    "traffic-sign",
)


@dataclass(frozen=True)
class LabelSpace:
    """A set of K training classes with indices 1..K (0 = ignore)."""

    name: str
    classes: tuple[str, ...]
    things: frozenset[str]
    flat: frozenset[str] = frozenset()  # the ground classes (the ground / non-ground prior, ground metrics)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, name: str) -> int:
        """1-based index of a class name; raises ValueError naming the label space."""
        try:
            return self.classes.index(name) + 1
        except ValueError:
            raise ValueError(f"unknown class {name!r} in label space {self.name!r}; known: {', '.join(self.classes)}") from None

    @property
    def thing_mask(self) -> np.ndarray:
        """(K + 1,) bool, True at the indices of thing classes (index 0 is False)."""
        return np.array([False] + [c in self.things for c in self.classes])

    @property
    def flat_mask(self) -> np.ndarray:
        """(K + 1,) bool, True at the indices of flat (ground) classes (index 0 is False)."""
        return np.array([False] + [c in self.flat for c in self.classes])

    @property
    def all_candidates(self) -> int:
        """Bitmask with every class possible."""
        return (1 << self.num_classes) - 1


NUSCENES16 = LabelSpace(
    "nuscenes16",
    CHALLENGE_CLASSES,
    frozenset(CHALLENGE_CLASSES[:10]),
    frozenset({"driveable_surface", "other_flat", "sidewalk", "terrain"}),
)
SEMANTICKITTI19 = LabelSpace(
    "semantickitti19",
    SEMANTICKITTI_CLASSES,
    frozenset(SEMANTICKITTI_CLASSES[:8]),
    frozenset({"road", "parking", "sidewalk", "other-ground", "terrain"}),
)
LABEL_SPACES: dict[str, LabelSpace] = {s.name: s for s in (NUSCENES16, SEMANTICKITTI19)}


def label_space(name: str) -> LabelSpace:
    """Look up a label space by config name (``labels.space``)."""
    if name not in LABEL_SPACES:
        raise ValueError(f"config key labels.space: unknown label space {name!r}; choose one of {sorted(LABEL_SPACES)}")
    return LABEL_SPACES[name]


def candidate_bit(label: np.ndarray | int) -> np.ndarray | int:
    """Bit for 1-based class ``label`` in a candidate mask (0 -> no bit)."""
    label = np.asarray(label, dtype=np.int64)
    return np.where(label > 0, np.left_shift(1, np.maximum(label - 1, 0)), 0).astype(np.uint32)


def candidates_to_sets(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) uint32 bitmask -> (N, K) bool, column ``c - 1`` True when class ``c`` is possible."""
    bits = np.left_shift(np.uint32(1), np.arange(num_classes, dtype=np.uint32))
    return (np.asarray(mask, dtype=np.uint32)[:, None] & bits[None, :]) != 0
