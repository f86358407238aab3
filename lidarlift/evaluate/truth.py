"""Ground truth of one keyframe for the evaluation rules, read once and shared by every stage's scorer.

Only :mod:`lidarlift.evaluate` (and the inputs that stand for a person or an outside model: the
simulated annotator, simulated 2D maps, and the fully supervised baseline's label loader) read ground
truth; production stages never do.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np

from lidarlift import groundtruth as gt
from lidarlift.datasets.readers import DatasetError, read_lidar
from lidarlift.manifest import Manifest, SampleRecord


def segment_key(fine: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """(N,) int64 ground-truth segment of each point: its instance where it has one, else its native
    (fine) class; for nuScenes this partitions points exactly as the devkit's ``1000 * fine + id``."""
    instance = np.asarray(instance, np.int64)
    return np.where(instance > 0, 2 * instance + 1, 2 * np.asarray(fine, np.int64))


class SampleTruth:
    """Lazily read truth of one keyframe: per point ``label`` (N,) int64 1..K (0 ignore), ``fine``,
    ``instance`` (N,) int64 (0 = stuff), ``segment_key`` (the devkit's panoptic segment); per camera
    2D ``image(c)`` -> (label (H, W), instance (H, W)) or None; ``visibility`` (N, C) bool or None; and
    the keyframe's ``xyz`` (N, 3) float32 (lidar frame) and ``range`` (N,) m."""

    def __init__(self, manifest: Manifest, sample: SampleRecord):
        self.manifest = manifest
        self.sample = sample
        self._images: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}

    @cached_property
    def point(self) -> gt.PointTruth | None:
        return gt.point_truth(self.manifest, self.sample)

    @property
    def available(self) -> bool:
        return self.point is not None

    @cached_property
    def label(self) -> np.ndarray:
        return self._need().label.astype(np.int64)

    @cached_property
    def instance(self) -> np.ndarray:
        return self._need().instance.astype(np.int64)

    @cached_property
    def segment_key(self) -> np.ndarray:
        """(N,) int64 ground-truth panoptic segment of each point (:func:`segment_key`)."""
        p = self._need()
        return segment_key(p.fine, p.instance)

    @cached_property
    def xyz(self) -> np.ndarray:
        return read_lidar(self.manifest.resolve(self.sample.lidar.path), self.sample.lidar.fmt, self.sample.token)[:, :3]

    @cached_property
    def range(self) -> np.ndarray:
        return np.linalg.norm(self.xyz[:, :2].astype(np.float64), axis=1)

    @cached_property
    def visibility(self) -> np.ndarray | None:
        try:
            vis = gt.visibility_truth(self.manifest, self.sample)
        except (OSError, ValueError) as e:
            if isinstance(e, DatasetError):
                raise
            raise DatasetError(f"sample {self.sample.token}: visibility truth "
                               f"{self.manifest.resolve(self.sample.gt_visibility)} is unreadable: {e}") from e
        return None if vis is None else np.asarray(vis, bool)

    def image(self, cam: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(label (H, W) int64 1..K, instance (H, W) int64) of camera ``cam``, checked against its size."""
        if cam not in self._images:
            im = gt.image_truth(self.manifest, self.sample, cam)
            if im is not None:
                c = self.sample.cameras[cam]
                if im[0].shape != (c.height, c.width):
                    raise DatasetError(f"sample {self.sample.token}: 2D truth {self.manifest.resolve(c.gt_panoptic2d)} is "
                                       f"{im[0].shape[1]}x{im[0].shape[0]}, the image {c.width}x{c.height}")
                im = (im[0].astype(np.int64), im[1].astype(np.int64))
            self._images[cam] = im
        return self._images[cam]

    @property
    def n(self) -> int:
        return int(self._need().label.size)

    def _need(self) -> gt.PointTruth:
        if self.point is None:
            raise DatasetError(f"sample {self.sample.token} has no ground truth to score against")
        return self.point
