"""Superpixels of every camera image (OpenCV-contrib SEEDS as IUPC runs it, or SLIC), measured against 2D truth.

Stage ``superpixels``: per shard, one label map per camera image at the *working resolution* — the stored
image scaled by ``scale`` — in the ``superpixels`` store (image ``i = s * C + c``; attrs ``scale``,
``scale_xy``, ``method``, ``image_size``, ``working_size``). An image skipped under
``dataset.bad_sample_policy: skip`` keeps -1 everywhere (the other images of its sample are kept).

Working resolution and pixel lookup. A stored image of W x H pixels is processed at
``w = round(W * scale)`` x ``h = round(H * scale)``. ``scale: auto`` picks ``min(1, working_width / W)``:
with IUPC's ``working_width`` 640 that is exactly IUPC's 0.4 on nuScenes' 1600 x 900 images, and 1.0 on
the synthetic world's smaller images (they are already below IUPC's working size). A full-resolution
pixel coordinate ``u`` (continuous, pixel ``x`` covers ``[x, x + 1)``) lies in working column
``floor(u * w / W)`` (:func:`to_working`); metrics upsample the label maps the same way (pixel centres).

Methods (``method`` in config, registry :data:`METHODS`):
- ``seeds`` (default, IUPC's settings): image resized with area averaging, Y of YUV histogram-equalised,
  converted to HSV; ``createSuperpixelSEEDS(w, h, 3, 1024, num_levels=5, prior=5, histogram_bins=10,
  double_step=True)`` and 10 iterations. The SEEDS object is built once per image size and reused
  (OpenCV re-initialises it in ``iterate``; the labels are identical), which saves its large histogram
  allocation per image.
- ``slic``: ``createSuperpixelSLIC`` (SLICO by default) on the CIE-Lab image, region size chosen so that
  the image holds about ``num_superpixels`` superpixels, then ``enforceLabelConnectivity``.

Stats (what the job did, no ground truth; quality is measured by :mod:`lidarlift.evaluate.superpixels`):
images, superpixels, and seconds per image (resize, colour conversion and superpixels, not file
reading) on ``threads`` cores.
"""
from __future__ import annotations

import logging
import time
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from lidarlift import artifacts as A
from lidarlift.datasets.readers import DatasetError, read_image
from lidarlift.manifest import Manifest
from lidarlift.workflow import write_json

log = logging.getLogger("lidarlift.superpixels")

#: IUPC's working width: nuScenes images (1600 px) scaled by 0.4.
IUPC_WORKING_WIDTH = 640


@dataclass(frozen=True)
class SeedsParams:
    """OpenCV SEEDS settings (``superpixels.seeds``; the schema's defaults are IUPC's, prepare_nusc_superpixel.py)."""

    num_levels: int
    prior: int
    histogram_bins: int
    double_step: bool
    iterations: int
    equalize_y: bool  # equalise the Y channel of YUV before the HSV conversion


@dataclass(frozen=True)
class SlicParams:
    """OpenCV SLIC settings (``superpixels.slic``; ``algorithm``: slic | slico | mslic)."""

    algorithm: str
    ruler: float
    iterations: int
    min_element_size: int  # percent of the nominal superpixel size, for enforceLabelConnectivity
    blur: bool  # 3x3 Gaussian blur first, as OpenCV recommends


@dataclass(frozen=True)
class SuperpixelParams:
    """The ``superpixels`` config section (defaults: config/schema.yaml)."""

    method: str
    scale: float | str
    working_width: int
    num_superpixels: int
    seeds: SeedsParams
    slic: SlicParams

    @staticmethod
    def from_config(cfg: dict[str, Any] | None = None) -> "SuperpixelParams":
        """From the section (missing keys take the schema's defaults); bad values raise naming the key."""
        from lidarlift.config import typed

        p = typed(SuperpixelParams, "superpixels", cfg)
        if isinstance(p.scale, str) and p.scale != "auto":  # a number given as text (--config)
            try:
                p = dataclasses.replace(p, scale=float(p.scale))
            except ValueError:
                pass
        if p.scale != "auto" and not (isinstance(p.scale, (int, float)) and not isinstance(p.scale, bool)
                                      and 0 < float(p.scale) <= 4):
            raise ValueError(f"config key superpixels.scale must be 'auto' or a number in (0, 4], got {p.scale!r}")
        return p


def working_scale(width: int, params: SuperpixelParams) -> float:
    """Scale from the stored image (``width`` px wide) to the working resolution."""
    if params.scale == "auto":
        return min(1.0, params.working_width / float(width))
    return float(params.scale)


def working_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(w, h) of the working resolution for a ``width`` x ``height`` image."""
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def to_working(uv: np.ndarray, image_size: tuple[int, int], work_size: tuple[int, int]) -> np.ndarray:
    """Working-resolution pixel (col, row) int64 of full-resolution coordinates ``uv`` (N, 2) float.

    ``image_size`` and ``work_size`` are (width, height). Coordinates outside the image are clipped;
    callers test ``in_image`` first.
    """
    sx = work_size[0] / image_size[0]
    sy = work_size[1] / image_size[1]
    col = np.clip(np.floor(uv[:, 0] * sx), 0, work_size[0] - 1)
    row = np.clip(np.floor(uv[:, 1] * sy), 0, work_size[1] - 1)
    return np.stack([col, row], axis=1).astype(np.int64)


def upsample_labels(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """(height, width) int32 map of working-resolution ``labels`` (h, w), sampled at full-res pixel centres."""
    h, w = labels.shape
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


# ---------------------------------------------------------------------------------------------- methods

_SEEDS_CACHE: dict[tuple, Any] = {}


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if (image.shape[1], image.shape[0]) == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def seeds_labels(image: np.ndarray, size: tuple[int, int], num_superpixels: int, p: SeedsParams) -> np.ndarray:
    """SEEDS superpixels of an (H, W, 3) uint8 RGB image at working ``size`` (w, h): (h, w) int32 ids 0..n-1."""
    import cv2

    img = _resize(image, size)
    if p.equalize_y:
        yuv = cv2.cvtColor(img, cv2.COLOR_RGB2YUV)
        yuv[..., 0] = cv2.equalizeHist(np.ascontiguousarray(yuv[..., 0]))
        img = cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    key = (size, num_superpixels, p.num_levels, p.prior, p.histogram_bins, p.double_step)
    engine = _SEEDS_CACHE.get(key)
    if engine is None:
        _SEEDS_CACHE.clear()  # one image size at a time: the engine holds large histograms
        engine = cv2.ximgproc.createSuperpixelSEEDS(size[0], size[1], 3, num_superpixels, p.num_levels,
                                                    p.prior, p.histogram_bins, p.double_step)
        _SEEDS_CACHE[key] = engine
    engine.iterate(hsv, p.iterations)
    return engine.getLabels().astype(np.int32, copy=False)


_SLIC_ALGORITHMS = {"slic": 100, "slico": 101, "mslic": 102}  # cv2.ximgproc.SLIC / SLICO / MSLIC


def slic_labels(image: np.ndarray, size: tuple[int, int], num_superpixels: int, p: SlicParams) -> np.ndarray:
    """SLIC superpixels of an (H, W, 3) uint8 RGB image at working ``size`` (w, h): (h, w) int32 ids 0..n-1."""
    import cv2

    img = _resize(image, size)
    if p.blur:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    region = max(2, int(round(np.sqrt(size[0] * size[1] / float(num_superpixels)))))
    slic = cv2.ximgproc.createSuperpixelSLIC(lab, _SLIC_ALGORITHMS[p.algorithm], region, float(p.ruler))
    slic.iterate(p.iterations)
    if p.min_element_size > 0:
        slic.enforceLabelConnectivity(p.min_element_size)
    return slic.getLabels().astype(np.int32, copy=False)


def _seeds(image: np.ndarray, size: tuple[int, int], p: SuperpixelParams) -> np.ndarray:
    return seeds_labels(image, size, p.num_superpixels, p.seeds)


def _slic(image: np.ndarray, size: tuple[int, int], p: SuperpixelParams) -> np.ndarray:
    return slic_labels(image, size, p.num_superpixels, p.slic)


#: ``superpixels.method`` -> function(image (H, W, 3) uint8 RGB, working size (w, h), params) -> (h, w) int32.
METHODS: dict[str, Callable[[np.ndarray, tuple[int, int], SuperpixelParams], np.ndarray]] = {
    "seeds": _seeds,
    "slic": _slic,
}


def superpixel_labels(image: np.ndarray, params: SuperpixelParams | None = None) -> tuple[np.ndarray, float]:
    """Superpixels of one (H, W, 3) uint8 RGB image: ((h, w) int32 ids, scale) at the working resolution."""
    params = params or SuperpixelParams.from_config()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"superpixels need an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    scale = working_scale(image.shape[1], params)
    size = working_size(image.shape[1], image.shape[0], scale)
    return METHODS[params.method](image, size, params), scale


# ---------------------------------------------------------------------------------------------- stage

def run_shard(manifest_path: str, shard: str, store_path: str, stats_path: str | None,
              params: dict[str, Any] | None = None, bad_sample_policy: str = "error", threads: int = 1) -> dict[str, Any]:
    """Superpixels of every camera image of ``shard``: writes the store and the stats file.

    ``bad_sample_policy``: 'error' raises the reader's DatasetError (naming sample and file); 'skip' leaves
    that image's label map at -1 and records ``{sample, file, reason}`` under ``skipped`` in the stats.
    """
    import cv2

    from lidarlift.config import section

    bad_sample_policy = section("dataset", {"bad_sample_policy": bad_sample_policy})["bad_sample_policy"]
    cv2.setNumThreads(max(1, int(threads)))
    p = SuperpixelParams.from_config(params)
    manifest = Manifest.from_json(manifest_path)
    samples = manifest.shard_samples(shard)
    sizes = {(c.width, c.height) for s in samples for c in s.cameras}
    if not sizes:
        raise DatasetError(f"shard {shard}: the manifest lists no camera images")
    if len(sizes) != 1:
        raise DatasetError(f"shard {shard}: camera images differ in size {sorted(sizes)}; "
                           "the superpixels store needs one size per shard")
    (W, H), = sizes
    scale = working_scale(W, p)
    w, h = working_size(W, H, scale)
    n_cam = len(manifest.cameras)
    labels = np.full((len(samples) * n_cam, h, w), -1, np.int32)
    counts = {"images": 0, "superpixels": 0, "seconds": 0.0, "cpu_seconds": 0.0}
    skipped: list[dict[str, str]] = []
    for s_i, sample in enumerate(samples):
        for c_i, cam in enumerate(sample.cameras):
            path = manifest.resolve(cam.path)
            try:
                image = read_image(path, sample.token)
                if image.shape[:2] != (H, W):
                    raise DatasetError(f"sample {sample.token}: image {path} is {image.shape[1]}x{image.shape[0]}, "
                                       f"the manifest says {W}x{H}")
            except DatasetError as e:
                if bad_sample_policy == "error":
                    raise
                log.warning("skipping image: %s", e)
                skipped.append({"sample": sample.token, "file": str(path), "reason": str(e)})
                continue
            t0, c0 = time.perf_counter(), time.process_time()
            sp = METHODS[p.method](image, (w, h), p)
            counts["seconds"] += time.perf_counter() - t0
            counts["cpu_seconds"] += time.process_time() - c0
            counts["images"] += 1
            counts["superpixels"] += int(len(np.unique(sp)))
            labels[s_i * n_cam + c_i] = sp
    _SEEDS_CACHE.clear()  # free SEEDS' histograms
    attrs = {"scale": scale, "scale_xy": [w / W, h / H], "method": p.method, "image_size": [W, H], "working_size": [w, h]}
    with A.write_store(store_path, "superpixels", shard=shard, sample_tokens=[s.token for s in samples],
                       params=_plain(params or {}), **attrs) as g:
        A.put(g, "labels", labels)
    stats = {"shard": shard, **attrs, **counts, "skipped": skipped}
    if stats_path is not None:
        write_json(stats_path, stats)
    log.info("shard %s: %d images, %.3f s/image", shard, counts["images"], counts["seconds"] / max(1, counts["images"]))
    return stats


def _plain(d: Any) -> Any:
    """JSON-safe copy of a (snakemake Namespace-like) params mapping."""
    if isinstance(d, dict):
        return {str(k): _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    return d
