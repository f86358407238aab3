"""The ``masks`` stage of one shard: read the pre-segments and the association, make masks, write the store.

Inputs: the manifest, the shard's ``presegment`` store (per keyframe point: ``segment_id``, ``ground``)
and ``associate`` store (per point and camera: ``uv``, ``depth``, ``visible``). The points given to a
backend for camera image ``i = s * C + c`` are keyframe ``s``'s points with ``visible[:, c]``.
Output: the ``masks`` store (lidarlift.artifacts.STORES["masks"]) and a metrics JSON with counts for
:func:`lidarlift.masks.summarize`.
"""
from __future__ import annotations

import importlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from lidarlift import artifacts
from lidarlift.datasets.readers import DatasetError, read_image
from lidarlift.manifest import Manifest, SampleRecord
from lidarlift.masks import BACKENDS, NETWORK_BACKENDS, OVERLAP_RULES, PROMPT_SOURCES, with_defaults
from lidarlift.masks.core import CameraView, ImageMasks, MaskBackendError, out_size
from lidarlift.masks.prompts import Prompts, lidar_prompts
from lidarlift.workflow import write_json

log = logging.getLogger("lidarlift.masks")


# -- backends ----------------------------------------------------------------------------------------
class PromptedBackend:
    """Wraps a SAM / SAM 2 generator: builds the LiDAR prompts of each view, then generates."""

    def __init__(self, name: str, generator: Any, cfg: dict[str, Any], attrs: dict[str, Any]):
        self.name = name
        self.generator = generator
        self.cfg = cfg
        self.attrs = attrs
        self.overlap = cfg["overlap"]
        self.prompts_made = 0

    @property
    def timings(self) -> dict[str, float]:
        return self.generator.timings

    def prompts_for(self, view: CameraView) -> Prompts:
        c = self.cfg
        return lidar_prompts(view.uv, view.segment_id, view.size, max_prompts=c["max_prompts"],
                             points_per_segment=c["points_per_segment"], points_per_prompt=c["points_per_prompt"],
                             min_segment_points=c["min_segment_points"], grid_per_side=c["grid_per_side"],
                             grid_min_distance=c["grid_min_distance"], all_uv=view.uv)

    def generate(self, views: list[CameraView], out_hw: tuple[int, int]) -> list[ImageMasks]:
        if self.cfg["generator"] == "vanilla":
            prompts = None
        else:
            prompts = [self.prompts_for(v) for v in views]
            self.prompts_made += sum(len(p) for p in prompts)
        return self.generator.generate([v.image for v in views], prompts, out_hw)

    def describe(self) -> dict[str, Any]:
        return dict(self.attrs)


def make_weightfree(cfg: dict[str, Any], device: Any = None) -> Any:
    from lidarlift.masks.weightfree import WeightFreeGenerator, WeightFreeParams

    return WeightFreeGenerator(WeightFreeParams.from_config(cfg["weightfree"]))


def _generator_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    return dict(encoder_batch=cfg["encoder_batch"], points_per_batch=cfg["points_per_batch"], multimask=cfg["multimask"],
                pred_iou_thresh=cfg["pred_iou_thresh"], stability_thresh=cfg["stability_thresh"],
                stability_offset=cfg["stability_offset"], nms_thresh=cfg["nms_thresh"], max_masks=cfg["max_masks"],
                min_mask_area=cfg["min_mask_area"], overlap=cfg["overlap"], bf16=cfg["bf16"])


def default_checkpoint(model_type: str) -> str:
    from lidarlift.masks.sam import OFFICIAL_CHECKPOINTS

    name = OFFICIAL_CHECKPOINTS.get(model_type, (f"sam_{model_type}.pth",))[0]
    return str(Path("resources") / name)


def make_sam(cfg: dict[str, Any], device: Any) -> PromptedBackend:
    from lidarlift.masks.sam import SamPromptedGenerator, VanillaSamGenerator, load_sam

    s = cfg["sam"]
    ckpt = s.get("checkpoint") or default_checkpoint(s["model_type"])
    model = load_sam(s["model_type"], ckpt, sha256=s.get("sha256") or None, device=device)
    if cfg["generator"] == "vanilla":
        v = cfg["vanilla"]
        gen = VanillaSamGenerator(model, points_per_side=v["points_per_side"], points_per_batch=v["points_per_batch"],
                                  pred_iou_thresh=v["pred_iou_thresh"], stability_thresh=v["stability_thresh"],
                                  nms_thresh=v["nms_thresh"], max_masks=v["max_masks"], min_mask_area=cfg["min_mask_area"],
                                  overlap=cfg["overlap"], device=device)
    else:
        gen = SamPromptedGenerator(model, device=device, **_generator_kwargs(cfg))
    return PromptedBackend("sam", gen, cfg, {"model_type": s["model_type"], "checkpoint": Path(ckpt).name})


def make_sam2(cfg: dict[str, Any], device: Any) -> PromptedBackend:
    from lidarlift.masks.sam2 import Sam2PromptedGenerator

    if cfg["generator"] == "vanilla":
        raise MaskBackendError("config key masks.generator: vanilla is the segment-anything grid baseline; use it with masks.backend: sam")
    s = cfg["sam2"]
    gen = Sam2PromptedGenerator(s["config"], s["checkpoint"], sha256=s.get("sha256") or None, device=device,
                                **_generator_kwargs(cfg))
    return PromptedBackend("sam2", gen, cfg, {"model_type": s["config"], "checkpoint": Path(s["checkpoint"]).name})


def make_backend(cfg: dict[str, Any], device: Any = None) -> Any:
    module, func = BACKENDS[cfg["backend"]].split(":")
    return getattr(importlib.import_module(module), func)(cfg, device)


def resolve_device(cfg: dict[str, Any]):
    """The torch device for a network backend (None for the weight-free one): the GPU this job leased
    (the workflow script leases it through :func:`lidarlift.gpu.job_gpus` with the job's Snakemake
    resource gpu), else the CPU; CUDA is never touched without a lease (:func:`lidarlift.gpu.torch_device`)."""
    if cfg["backend"] not in NETWORK_BACKENDS:
        return None
    from lidarlift import gpu

    try:
        device = gpu.torch_device(cfg["device"], key="masks.device")
    except gpu.GpuLeaseError as e:
        raise MaskBackendError(str(e)) from None
    if device.type == "cpu" and cfg["device"] != "cpu":
        log.warning("masks backend %s on the CPU (slow): this job leased no GPU it can use", cfg["backend"])
    return device


# -- inputs ------------------------------------------------------------------------------------------
def _check_tokens(group: Any, path: str, samples: list[SampleRecord]) -> None:
    tokens = group.attrs.get("sample_tokens")
    want = [s.token for s in samples]
    if tokens is not None and list(tokens) != want:
        raise artifacts.ArtifactError(f"store {path} holds samples {list(tokens)[:3]}... but the manifest's shard has "
                                      f"{want[:3]}... ({len(tokens)} vs {len(want)}): re-run its rule")


def load_points(presegment_path: str, associate_path: str, samples: list[SampleRecord], n_cams: int) -> dict[str, np.ndarray]:
    """Arrays of both stores, checked against each other and the manifest."""
    pre = artifacts.open_store(presegment_path, "presegment")
    asc = artifacts.open_store(associate_path, "associate")
    _check_tokens(pre, presegment_path, samples)
    _check_tokens(asc, associate_path, samples)
    off_p = artifacts.read(pre, "point_offsets")
    off_a = artifacts.read(asc, "point_offsets")
    if off_p.shape != (len(samples) + 1,) or not np.array_equal(off_p, off_a):
        raise artifacts.ArtifactError(f"point offsets of {presegment_path} ({off_p.shape[0] - 1} keyframes, {int(off_p[-1])} points) "
                                      f"and {associate_path} ({off_a.shape[0] - 1} keyframes, {int(off_a[-1])} points) disagree "
                                      f"or do not match the {len(samples)} keyframes of the shard: re-run presegment and associate")
    out = {"offsets": off_p, "segment_id": artifacts.read(pre, "segment_id"), "ground": artifacts.read(pre, "ground"),
           "uv": artifacts.read(asc, "uv"), "depth": artifacts.read(asc, "depth"), "visible": artifacts.read(asc, "visible")}
    P = int(off_p[-1])
    if out["uv"].shape != (P, n_cams, 2) or out["visible"].shape != (P, n_cams):
        raise artifacts.ArtifactError(f"associate store {associate_path}: uv {out['uv'].shape} / visible {out['visible'].shape} "
                                      f"do not match {P} points x {n_cams} cameras")
    if out["segment_id"].shape != (P,) or out["ground"].shape != (P,):
        raise artifacts.ArtifactError(f"presegment store {presegment_path}: segment_id {out['segment_id'].shape} / ground "
                                      f"{out['ground'].shape} do not match {P} points")
    return out


def _read_sample_images(manifest: Manifest, sample: SampleRecord) -> list[np.ndarray]:
    images = []
    for cam in sample.cameras:
        img = read_image(manifest.resolve(cam.path), sample.token)
        if img.shape[:2] != (cam.height, cam.width):
            raise DatasetError(f"sample {sample.token}: image {manifest.resolve(cam.path)} is {img.shape[1]}x{img.shape[0]}, "
                               f"the manifest says {cam.width}x{cam.height}")
        images.append(img)
    return images


def _views(images: list[np.ndarray], pts: dict[str, np.ndarray], s: int, n_cams: int) -> list[CameraView]:
    sl = artifacts.sample_slice(pts["offsets"], s)
    vis = pts["visible"][sl]
    views = []
    for c, img in enumerate(images):
        m = vis[:, c]
        views.append(CameraView(img, pts["uv"][sl][m, c], pts["depth"][sl][m, c], pts["segment_id"][sl][m],
                                pts["ground"][sl][m], index=s * n_cams + c))
    return views


# -- the stage ---------------------------------------------------------------------------------------
def run_masks(manifest_path: str | os.PathLike, shard: str, presegment_path: str | os.PathLike,
              associate_path: str | os.PathLike, store_path: str | os.PathLike, stats_path: str | os.PathLike | None,
              params: dict[str, Any] | None = None, backend: Any = None,
              threads: int | None = None) -> dict[str, Any]:
    """Masks of every camera image of ``shard``; writes the ``masks`` store and returns (and writes) the
    job's stats (masks, prompts, timings; no ground truth: :mod:`lidarlift.evaluate.masks` scores them).

    ``params``: the ``masks`` config section (defaults filled in). ``backend``: an already built backend
    (tests); by default it is built from ``params`` (network backends on the GPU the job leased, see :func:`resolve_device`). ``threads``:
    CPU threads for torch (the rule's ``threads``; torch would otherwise take every core of the host).
    """
    t_job = time.perf_counter()
    cfg = with_defaults(params)
    if threads and (backend is not None or cfg["backend"] in NETWORK_BACKENDS):  # weight-free jobs never import torch
        import torch

        torch.set_num_threads(max(1, int(threads)))
    manifest = Manifest.from_json(manifest_path)
    samples = manifest.shard_samples(shard)
    n_cams = len(manifest.cameras)
    sizes = {(c.height, c.width) for s in samples for c in s.cameras}
    if len(sizes) != 1:
        raise DatasetError(f"shard {shard}: camera images of different sizes {sorted(sizes)}; the masks store needs one size")
    image_size = sizes.pop()
    hw = out_size(image_size, float(cfg["scale"]))
    pts = load_points(str(presegment_path), str(associate_path), samples, n_cams)

    if backend is None:
        device = resolve_device(cfg)
        backend = make_backend(cfg, device)
    else:
        device = getattr(getattr(backend, "generator", None), "device", None)
    name = getattr(backend, "name", cfg["backend"])
    log.info("masks of shard %s: %d keyframes x %d cameras, backend %s (%s), stored at %dx%d, device %s",
             shard, len(samples), n_cams, name, cfg["generator"] if name != "weightfree" else "lidar-guided regions",
             hw[1], hw[0], device or "cpu")

    n_images = len(samples) * n_cams
    labels = np.full((n_images, *hw), -1, np.int32)
    per_image: list[ImageMasks] = []
    t_gen = 0.0
    with ThreadPoolExecutor(max_workers=1) as pool:  # decode the next keyframe's images while this one runs
        future = pool.submit(_read_sample_images, manifest, samples[0]) if samples else None
        for s, sample in enumerate(samples):
            images = future.result()
            if s + 1 < len(samples):
                future = pool.submit(_read_sample_images, manifest, samples[s + 1])
            views = _views(images, pts, s, n_cams)
            t0 = time.perf_counter()
            results = backend.generate(views, hw)
            t_gen += time.perf_counter() - t0
            for c, r in enumerate(results):
                labels[s * n_cams + c] = r.labels
                per_image.append(r)
            log.info("keyframe %d/%d: %s masks", s + 1, len(samples), [r.num_masks for r in results])

    counts = [r.num_masks for r in per_image]
    attrs = {
        "backend": name,
        "generator": cfg["generator"] if name != "weightfree" else "weightfree",
        "scale": float(cfg["scale"]),
        "image_size": list(image_size),
        "mask_size": list(hw),
        "overlap_rule": getattr(backend, "overlap", cfg["overlap"]),
        "overlap_rule_doc": OVERLAP_RULES.get(getattr(backend, "overlap", cfg["overlap"]), ""),
        "prompt_sources": {str(k): v for k, v in PROMPT_SOURCES.items()},
        "device": str(device or "cpu"),
        "backend_info": backend.describe() if hasattr(backend, "describe") else {},
    }
    with artifacts.write_store(store_path, "masks", shard=shard, sample_tokens=[s.token for s in samples],
                               params=cfg, **attrs) as group:
        artifacts.put(group, "mask_labels", labels)
        artifacts.put(group, "mask_offsets", artifacts.offsets_from_counts(counts))
        cat = (lambda key, shape, dtype: np.concatenate([getattr(r, key) for r in per_image]).reshape(shape)
               if per_image else np.zeros(shape, dtype))
        artifacts.put(group, "score", cat("score", (-1,), np.float32))
        artifacts.put(group, "stability", cat("stability", (-1,), np.float32))
        artifacts.put(group, "area", cat("area", (-1,), np.int64))
        artifacts.put(group, "box", cat("box", (-1, 4), np.float32))
        artifacts.put(group, "prompt_source", cat("prompt_source", (-1,), np.uint8))
        artifacts.put(group, "segment_id", cat("segment_id", (-1,), np.int32))
        artifacts.put(group, "prompt_uv", cat("prompt_uv", (-1, 2), np.float32))

    stats = {
        "shard": shard,
        "backend": name,
        "generator": attrs["generator"],
        "model": attrs["backend_info"].get("model_type", ""),
        "device": attrs["device"],
        "images": n_images,
        "masks": int(sum(counts)),
        "prompts": int(getattr(backend, "prompts_made", 0)),
        "generate_s": t_gen,
        "images_per_s": n_images / t_gen if t_gen > 0 else None,
        "timings": dict(getattr(backend, "timings", {})),
        "job_s": time.perf_counter() - t_job,
    }
    log.info("shard %s: %d masks on %d images (%.1f per image), %.2f images/s", shard, stats["masks"], n_images,
             stats["masks"] / max(1, n_images), stats["images_per_s"] or 0)
    if stats_path is not None:
        write_json(stats_path, stats)
    return stats
