"""2D semantic maps for the annotation-free mode: simulated predictions (read ground truth: they stand for a 2D model), or a user's maps from files.

**The input contract** (any 2D model): one class-id map per camera image, a declared class list and a
mapping of those classes to the training label space. Files are
``<dir>/<camera sample_data token>.png`` (uint8 or uint16 PNG, the image's size, each pixel an index
into ``classes``); ``mapping`` maps a class name to a label-space class name, or to null for classes
that are background (sky, unknown, classes the label space lacks). Config::

    semantic2d:
      source: files
      dir: resources/semantic2d
      classes: [background, car, person, road, ...]
      mapping: {background: null, car: car, person: pedestrian, road: driveable_surface, ...}

**Simulated 2D predictions** (``source: simulated``) stand in for a 2D model on the synthetic world:
the generator's 2D ground-truth maps (:func:`lidarlift.groundtruth.image_truth`) with seeded
corruption, documented in the report as simulated predictions with their corruption level:

- ``erosion_px``: every thing instance loses a band of this width along its boundary (painted 0);
- ``confusion``: probability that a thing instance, or a connected stuff region, takes a confusable
  class (car <-> truck, bicycle <-> motorcycle, sidewalk <-> other_flat, terrain <-> vegetation, ...);
- ``miss``: probability that a thing instance is not detected (painted 0); doubled for instances
  under ``small_area`` pixels;
- ``hallucination``: expected number of made-up thing blobs per image (ellipses of a random thing
  class on background).

Maps are in the label space's classes directly (0 = background/none), so the mapping is the identity.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from lidarlift.classes import LabelSpace

#: classes a 2D model plausibly confuses (nuscenes16 names); the first partner is the likeliest.
CONFUSABLE: dict[str, tuple[str, ...]] = {
    "car": ("truck", "bus"),
    "truck": ("car", "trailer", "construction_vehicle", "bus"),
    "bus": ("truck",),
    "trailer": ("truck",),
    "construction_vehicle": ("truck",),
    "bicycle": ("motorcycle",),
    "motorcycle": ("bicycle",),
    "pedestrian": ("bicycle",),
    "traffic_cone": ("barrier",),
    "barrier": ("traffic_cone", "manmade"),
    "driveable_surface": ("other_flat",),
    "other_flat": ("sidewalk", "driveable_surface"),
    "sidewalk": ("other_flat", "driveable_surface"),
    "terrain": ("vegetation", "sidewalk"),
    "manmade": ("vegetation",),
    "vegetation": ("terrain", "manmade"),
}


@dataclass(frozen=True)
class Corruption:
    """Corruption of the simulated 2D maps (config ``pseudolabels.annotation_free.simulated``; defaults:
    config/schema.yaml)."""

    erosion_px: int
    confusion: float
    miss: float
    small_area: int
    hallucination: float
    seed: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None = None) -> "Corruption":
        """From the section (missing keys take the schema's defaults); bad values raise ConfigError naming the key."""
        from lidarlift.config import typed

        return typed(cls, "pseudolabels.annotation_free.simulated", cfg)

    def describe(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _partner(name: str, space: LabelSpace, rng: np.random.Generator) -> int:
    options = [o for o in CONFUSABLE.get(name, ()) if o in space.classes]
    if not options:
        others = [c for c in space.classes if c != name]
        return space.index(str(rng.choice(others)))
    p = np.array([2.0 ** -i for i in range(len(options))])
    return space.index(options[int(rng.choice(len(options), p=p / p.sum()))])


def simulate_map(label: np.ndarray, instance: np.ndarray, space: LabelSpace, corruption: Corruption,
                 rng: np.random.Generator) -> np.ndarray:
    """One simulated 2D prediction from a ground-truth map.

    Args:
        label: (H, W) uint8 true class 1..K (0 = sky / ignore).
        instance: (H, W) int64 true instance key (0 = stuff / none).
        rng: the image's random stream (:func:`image_rng`).

    Returns: (H, W) uint8 predicted class 0..K (0 = background / no class).
    """
    out = label.astype(np.uint8).copy()
    thing = space.thing_mask
    names = space.classes
    # thing instances: missed, confused, eroded
    ids = np.unique(instance[(instance > 0) & thing[label]])
    for key in ids:
        m = instance == key
        area = int(m.sum())
        cls = int(np.bincount(label[m]).argmax())
        p_miss = min(1.0, corruption.miss * (2.0 if area < corruption.small_area else 1.0))
        if rng.random() < p_miss:
            out[m] = 0
            continue
        if rng.random() < corruption.confusion:
            out[m] = _partner(names[cls - 1], space, rng)
        if corruption.erosion_px > 0:
            k = 2 * corruption.erosion_px + 1
            inner = cv2.erode(m.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
            out[m & ~inner] = 0
    # stuff regions: confused as a whole
    if corruption.confusion > 0:
        for c in np.unique(label):
            if c == 0 or thing[c]:
                continue
            regions, n = ndimage.label(label == c)
            for r in range(1, n + 1):
                if rng.random() < corruption.confusion:
                    out[(regions == r) & (out == c)] = _partner(names[c - 1], space, rng)
    # hallucinated things on background
    h, w = label.shape
    thing_ids = np.flatnonzero(thing)
    for _ in range(rng.poisson(corruption.hallucination)):
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        if thing[label[cy, cx]]:
            continue
        ax = int(rng.integers(max(2, w // 60), max(3, w // 12)))
        ay = int(rng.integers(max(2, h // 40), max(3, h // 8)))
        blob = np.zeros((h, w), np.uint8)
        cv2.ellipse(blob, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        out[(blob > 0) & ~thing[label]] = int(rng.choice(thing_ids))
    return out


def image_rng(seed: int, camera_token: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(camera_token.encode()), 2])


def simulated_camera_map(manifest: Any, sample: Any, cam: int, space: LabelSpace, corruption: Corruption) -> np.ndarray:
    """The simulated 2D prediction of one camera image (H, W) uint8 0..K: the generator's 2D truth of
    ``sample`` (a :class:`lidarlift.manifest.SampleRecord`) corrupted by :func:`simulate_map`. Reads
    ground truth, as the 2D model it stands for would have been trained to predict it."""
    from lidarlift.groundtruth import image_truth

    record = sample.cameras[cam]
    truth = image_truth(manifest, sample, cam)
    if truth is None:
        raise ValueError(f"sample {sample.token} camera {record.channel}: simulated 2D maps need the synthetic "
                         "world's 2D ground truth; give real maps with pseudolabels.annotation_free.semantic2d.source: files")
    return simulate_map(truth[0], truth[1], space, corruption, image_rng(corruption.seed, record.token or record.path))


# ----------------------------------------------------------------------------------------------
# user-provided maps


class Semantic2DError(ValueError):
    """A 2D semantic map or its class declaration is wrong; the message names the file or key."""


def class_lookup(classes: list[str], mapping: dict[str, str | None], space: LabelSpace) -> np.ndarray:
    """(len(classes),) uint8: declared class index -> label-space class 1..K (0 = background)."""
    if not classes:
        raise Semantic2DError("config key pseudolabels.annotation_free.semantic2d.classes: empty class list")
    missing = [c for c in classes if c not in mapping]
    if missing:
        raise Semantic2DError(f"config key pseudolabels.annotation_free.semantic2d.mapping: no entry for classes {missing}")
    table = np.zeros(len(classes), np.uint8)
    for i, c in enumerate(classes):
        target = mapping[c]
        if target is None:
            continue
        if target not in space.classes:
            raise Semantic2DError(f"config key pseudolabels.annotation_free.semantic2d.mapping: class {c!r} maps to "
                                  f"{target!r}, not a class of label space {space.name!r} ({', '.join(space.classes)})")
        table[i] = space.index(target)
    return table


def read_map(directory: str | Path, camera_token: str, size_hw: tuple[int, int], table: np.ndarray) -> np.ndarray:
    """A user's 2D map of one camera image mapped to the label space: (H, W) uint8 0..K."""
    path = Path(directory) / f"{camera_token}.png"
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.exists() else None
    if img is None:
        raise Semantic2DError(f"2D semantic map {path} is missing or unreadable (camera sample_data {camera_token})")
    if img.ndim != 2:
        raise Semantic2DError(f"2D semantic map {path}: expected a single-channel class-id PNG, got shape {img.shape}")
    if tuple(img.shape) != tuple(size_hw):
        raise Semantic2DError(f"2D semantic map {path}: size {img.shape[1]}x{img.shape[0]} differs from the image's {size_hw[1]}x{size_hw[0]}")
    if int(img.max()) >= len(table):
        raise Semantic2DError(f"2D semantic map {path}: class id {int(img.max())} but only {len(table)} classes are declared")
    return table[img]
