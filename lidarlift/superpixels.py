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

Metrics (per image, against :func:`lidarlift.groundtruth.image_truth`, at full image resolution). The
ground-truth segment of a pixel is its instance key where it has one, else its class (0..16; sky and
ignored classes share class 0):
- boundary recall: ground-truth boundary pixels (pixels whose right or lower neighbour lies in another
  segment) with a superpixel boundary pixel (same rule) within ``boundary_tolerance`` px (Euclidean);
- undersegmentation error, Neubert & Protzel's corrected form:
  ``UE = (1 / N) * sum_S sum_G min(|S & G|, |S - G|)`` over superpixels S and ground-truth segments G
  that overlap S, N = number of pixels; every pixel leaking out of a segment counts once, the smaller
  side of each overlap;
- seconds per image: resize, colour conversion and superpixels (not file reading), on ``threads`` cores.
Metrics files hold counts; :func:`summarize` sums them before dividing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from lidarlift import artifacts as A
from lidarlift.datasets.readers import DatasetError, read_image
from lidarlift.manifest import Manifest
from lidarlift.workflow import write_json

log = logging.getLogger("lidarlift.superpixels")

#: IUPC's working width: nuScenes images (1600 px) scaled by 0.4.
IUPC_WORKING_WIDTH = 640


@dataclass
class SeedsParams:
    """OpenCV SEEDS settings; defaults are IUPC's (prepare_nusc_superpixel.py)."""

    num_levels: int = 5
    prior: int = 5
    histogram_bins: int = 10
    double_step: bool = True
    iterations: int = 10
    equalize_y: bool = True  # equalise the Y channel of YUV before the HSV conversion


@dataclass
class SlicParams:
    """OpenCV SLIC settings (``algorithm``: slic | slico | mslic)."""

    algorithm: str = "slico"
    ruler: float = 10.0
    iterations: int = 10
    min_element_size: int = 25  # percent of the nominal superpixel size, for enforceLabelConnectivity
    blur: bool = True  # 3x3 Gaussian blur first, as OpenCV recommends


@dataclass
class SuperpixelParams:
    """The ``superpixels`` config section."""

    method: str = "seeds"
    scale: float | str = "auto"
    working_width: int = IUPC_WORKING_WIDTH
    num_superpixels: int = 1024
    boundary_tolerance: float = 2.0
    seeds: SeedsParams = field(default_factory=SeedsParams)
    slic: SlicParams = field(default_factory=SlicParams)

    @staticmethod
    def from_config(cfg: dict[str, Any] | None) -> "SuperpixelParams":
        cfg = dict(cfg or {})
        seeds = SeedsParams(**dict(cfg.pop("seeds", {}) or {}))
        slic = SlicParams(**dict(cfg.pop("slic", {}) or {}))
        unknown = sorted(set(cfg) - set(SuperpixelParams.__dataclass_fields__))
        if unknown:
            raise ValueError(f"config section superpixels: unknown keys {unknown}")
        p = SuperpixelParams(seeds=seeds, slic=slic, **cfg)
        if isinstance(p.scale, str) and p.scale != "auto":
            try:  # Snakemake's --config leaves numbers in nested sections as strings
                p.scale = float(p.scale)
            except ValueError:
                pass
        if p.method not in METHODS:
            raise ValueError(f"config key superpixels.method: unknown method {p.method!r}; choose one of {sorted(METHODS)}")
        if p.scale != "auto" and not (isinstance(p.scale, (int, float)) and not isinstance(p.scale, bool)
                                      and 0 < float(p.scale) <= 4):
            raise ValueError(f"config key superpixels.scale must be 'auto' or a number in (0, 4], got {p.scale!r}")
        if p.slic.algorithm not in _SLIC_ALGORITHMS:
            raise ValueError(f"config key superpixels.slic.algorithm: unknown {p.slic.algorithm!r}; "
                             f"choose one of {sorted(_SLIC_ALGORITHMS)}")
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
    params = params or SuperpixelParams()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"superpixels need an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    scale = working_scale(image.shape[1], params)
    size = working_size(image.shape[1], image.shape[0], scale)
    return METHODS[params.method](image, size, params), scale


# ---------------------------------------------------------------------------------------------- metrics

def segment_key(label: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """Ground-truth segment of each pixel: its instance key where > 0, else its class (int64)."""
    return np.where(instance > 0, instance, label.astype(np.int64))


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour belongs to another segment."""
    b = np.zeros(seg.shape, bool)
    b[:, :-1] |= seg[:, :-1] != seg[:, 1:]
    b[:-1, :] |= seg[:-1, :] != seg[1:, :]
    return b


def boundary_recall_counts(sp: np.ndarray, gt: np.ndarray, tolerance: float = 2.0,
                           valid: np.ndarray | None = None) -> tuple[int, int]:
    """(recalled, total) ground-truth boundary pixels with a superpixel boundary within ``tolerance`` px.

    ``sp`` and ``gt``: (H, W) integer maps at the same resolution; ``valid``: optional (H, W) bool of
    pixels to count.
    """
    import cv2

    gt_b = boundary_map(gt)
    if valid is not None:
        gt_b &= valid
    total = int(gt_b.sum())
    if total == 0:
        return 0, 0
    sp_b = boundary_map(sp)
    # distance of every pixel to the nearest superpixel boundary pixel (0 on boundary pixels)
    dist = cv2.distanceTransform((~sp_b).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return int((dist[gt_b] <= tolerance).sum()), total


def undersegmentation_counts(sp: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> tuple[int, int]:
    """(leak, N): ``sum_S sum_G min(|S & G|, |S - G|)`` and the pixel count N (corrected UE = leak / N).

    ``sp`` and ``gt``: (H, W) integer maps at the same resolution; pixels outside ``valid`` are left out.
    """
    sp = sp.ravel()
    gt = gt.ravel()
    if valid is not None:
        sp, gt = sp[valid.ravel()], gt[valid.ravel()]
    if sp.size == 0:
        return 0, 0
    _, s_idx = np.unique(sp, return_inverse=True)
    _, g_idx = np.unique(gt, return_inverse=True)
    n_g = int(g_idx.max()) + 1
    pair, counts = np.unique(s_idx.astype(np.int64) * n_g + g_idx, return_counts=True)
    area = np.bincount(s_idx)[pair // n_g]
    return int(np.minimum(counts, area - counts).sum()), int(sp.size)


def image_metrics(sp: np.ndarray, label: np.ndarray, instance: np.ndarray, tolerance: float = 2.0) -> dict[str, int]:
    """Counts of one image: ``sp`` (h, w) working-resolution ids; truth (H, W) at full resolution."""
    H, W = label.shape
    full = upsample_labels(sp, W, H)
    gt = segment_key(label, instance)
    recalled, total = boundary_recall_counts(full, gt, tolerance)
    leak, n = undersegmentation_counts(full, gt)
    return {"recalled_boundary_pixels": recalled, "gt_boundary_pixels": total,
            "undersegmentation_leak": leak, "truth_pixels": n}


# ---------------------------------------------------------------------------------------------- stage

def run_shard(manifest_path: str, shard: str, store_path: str, metrics_path: str,
              params: dict[str, Any] | None = None, bad_sample_policy: str = "error", threads: int = 1) -> dict[str, Any]:
    """Superpixels of every camera image of ``shard``: writes the store and the metrics file.

    ``bad_sample_policy``: 'error' raises the reader's DatasetError (naming sample and file); 'skip' leaves
    that image's label map at -1 and records ``{sample, file, reason}`` under ``skipped`` in the metrics.
    """
    import cv2

    from lidarlift.groundtruth import image_truth

    if bad_sample_policy not in ("error", "skip"):
        raise ValueError(f"config key dataset.bad_sample_policy: expected 'error' or 'skip', got {bad_sample_policy!r}")
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
    counts = {"images": 0, "superpixels": 0, "seconds": 0.0, "cpu_seconds": 0.0, "recalled_boundary_pixels": 0,
              "gt_boundary_pixels": 0, "undersegmentation_leak": 0, "truth_pixels": 0, "images_with_truth": 0}
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
            truth = image_truth(manifest, sample, c_i)
            if truth is not None:
                for k, v in image_metrics(sp, *truth, tolerance=p.boundary_tolerance).items():
                    counts[k] += v
                counts["images_with_truth"] += 1
    _SEEDS_CACHE.clear()  # free SEEDS' histograms
    attrs = {"scale": scale, "scale_xy": [w / W, h / H], "method": p.method, "image_size": [W, H], "working_size": [w, h]}
    with A.write_store(store_path, "superpixels", shard=shard, sample_tokens=[s.token for s in samples],
                       params=_plain(params or {}), **attrs) as g:
        A.put(g, "labels", labels)
    metrics = {"shard": shard, **attrs, **counts, "skipped": skipped}
    write_json(metrics_path, metrics)
    log.info("shard %s: %d images, %.3f s/image, %s", shard, counts["images"],
             counts["seconds"] / max(1, counts["images"]), summarize([metrics]))
    return metrics


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary key ``superpixels``: boundary_recall, undersegmentation_error, seconds_per_image (counts summed first)."""
    tot = {k: sum(m.get(k, 0) for m in metrics) for k in (
        "images", "superpixels", "seconds", "cpu_seconds", "recalled_boundary_pixels", "gt_boundary_pixels",
        "undersegmentation_leak", "truth_pixels", "images_with_truth")}
    ratio = lambda a, b: (float(a) / b) if b else None  # noqa: E731
    methods = sorted({m.get("method") for m in metrics if m.get("method")})
    scales = sorted({m.get("scale") for m in metrics if m.get("scale") is not None})
    return {
        "boundary_recall": ratio(tot["recalled_boundary_pixels"], tot["gt_boundary_pixels"]),
        "undersegmentation_error": ratio(tot["undersegmentation_leak"], tot["truth_pixels"]),
        "seconds_per_image": ratio(tot["seconds"], tot["images"]),
        "cpu_seconds_per_image": ratio(tot["cpu_seconds"], tot["images"]),
        "superpixels_per_image": ratio(tot["superpixels"], tot["images"]),
        "images": tot["images"],
        "images_with_truth": tot["images_with_truth"],
        "method": methods[0] if len(methods) == 1 else methods,
        "scale": scales[0] if len(scales) == 1 else scales,
        "skipped": [s for m in metrics for s in m.get("skipped", [])],
    }


def _plain(d: Any) -> Any:
    """JSON-safe copy of a (snakemake Namespace-like) params mapping."""
    if isinstance(d, dict):
        return {str(k): _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    return d
