"""Every stage artifact in one place: store paths, arrays, dtypes, shapes, chunking, schema versions.

Convention (all stages):
- one zarr store per (stage, shard[, round]): ``results/<stage>/<shard>.zarr`` or
  ``results/<stage>/r<round>/<shard>.zarr``;
- per-point data of a shard is ragged: arrays of all keyframes concatenated in manifest order, plus
  ``point_offsets`` (S + 1,) int64 so sample ``s`` owns rows ``point_offsets[s]:point_offsets[s+1]``;
- per-image data is (n_images, H, W), one image per chunk, image ``i = s * C + c`` (sample s, camera c
  in the manifest's camera order);
- per-mask (or other per-image ragged) data uses ``<name>_offsets`` (n_images + 1,) int64 likewise;
- attributes carry ``schema_version``, ``stage``, ``shard``, ``sample_tokens`` and ``params`` (the
  parameters that produced the store); readers check the stage and schema version;
- a store is written under ``<path>.tmp-<pid>`` and renamed onto ``<path>`` only when complete.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr

from lidarlift.tmpfiles import temporary_path


@dataclass(frozen=True)
class ArraySpec:
    """One array of a store. ``shape`` names its axes; ``chunk_rows`` is the chunk length on axis 0."""

    dtype: str
    shape: str
    doc: str
    chunk_rows: int | None = None  # None: one chunk per image (for (n, H, W) arrays) or default


@dataclass(frozen=True)
class StoreSpec:
    stage: str
    version: int
    doc: str
    arrays: dict[str, ArraySpec] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()


POINT_CHUNK = 262_144

#: P = points of all keyframes in the shard, S = keyframes, C = cameras, I = S * C images, W = intermediate
#: sweeps of the shard, Q = their points,
#: M = masks of all images, K = classes of the label space, F = feature width.
STORES: dict[str, StoreSpec] = {
    "associate": StoreSpec(
        "associate", 1,
        "Point-pixel association of keyframe points with every camera.",
        {
            "point_offsets": ArraySpec("int64", "(S+1,)", "ragged offsets of keyframe points"),
            "uv": ArraySpec("float32", "(P, C, 2)", "pixel (u, v) of the point in camera c at full image resolution, pixel centres at integer coordinates (pixel = round(uv); at scale s use lidarlift.associate.pixel_index); NaN where depth <= 0", POINT_CHUNK),
            "depth": ArraySpec("float32", "(P, C)", "depth along the camera axis (m), ego-motion compensated", POINT_CHUNK),
            "in_image": ArraySpec("bool", "(P, C)", "raw projection: depth > min_depth and pixel inside the image (what the anchors keep)", POINT_CHUNK),
            "visible": ArraySpec("bool", "(P, C)", "in_image and passes the occlusion test", POINT_CHUNK),
        },
    ),
    "superpixels": StoreSpec(
        "superpixels", 1,
        "Per camera image superpixel label maps at the working resolution (attrs: scale, method).",
        {
            "labels": ArraySpec("int32", "(I, h, w)", "superpixel id per pixel, unique within the image, at scale attrs['scale']"),
        },
    ),
    "presegment": StoreSpec(
        "presegment", 1,
        "Ground segmentation and HDBSCAN segments of the keyframe points.",
        {
            "point_offsets": ArraySpec("int64", "(S+1,)", "ragged offsets of keyframe points"),
            "ground": ArraySpec("bool", "(P,)", "point is ground", POINT_CHUNK),
            "segment_id": ArraySpec("int32", "(P,)", "non-ground segment id unique within the keyframe, -1 = noise or ground", POINT_CHUNK),
            "ground_cell": ArraySpec("int32", "(P,)", "ground cell id (polar cell) of ground points, -1 elsewhere", POINT_CHUNK),
        },
    ),
    "masks": StoreSpec(
        "masks", 1,
        "2D masks per camera image at h, w = round(scale * (H, W)) (attrs: backend, generator, scale, image_size, "
        "mask_size, overlap_rule + overlap_rule_doc, prompt_sources, device, backend_info). Mask j of image i is "
        "row mask_offsets[i] + j of the per-mask arrays and the value j in mask_labels[i].",
        {
            "mask_labels": ArraySpec("int32", "(I, h, w)", "index of the mask that owns the pixel within its image (0..n-1), -1 = none; overlaps resolved by attrs['overlap_rule']"),
            "mask_offsets": ArraySpec("int64", "(I+1,)", "ragged offsets of the masks of each image"),
            "score": ArraySpec("float32", "(M,)", "predicted IoU (SAM) or share of the segment's points inside the mask (weight-free); masks of an image are numbered by decreasing score"),
            "stability": ArraySpec("float32", "(M,)", "stability score (SAM) or share of the mask in regions holding the segment's points (weight-free)"),
            "area": ArraySpec("int64", "(M,)", "pixels the mask owns in mask_labels (after overlaps)"),
            "box": ArraySpec("float32", "(M, 4)", "x0, y0, x1, y1 of the owned pixels at the stored resolution (x1, y1 exclusive)"),
            "prompt_source": ArraySpec("uint8", "(M,)", "0 grid, 1 lidar segment centre, 2 lidar farthest-point sample, 3 weight-free region without LiDAR, 4 weight-free region grown from a LiDAR segment"),
            "segment_id": ArraySpec("int32", "(M,)", "presegment segment_id (within the keyframe) that prompted or seeded the mask, -1 = none"),
            "prompt_uv": ArraySpec("float32", "(M, 2)", "prompt point (u, v) at the stored resolution (weight-free: the segment centre), NaN = none"),
        },
    ),
    "pseudolabels": StoreSpec(
        "pseudolabels", 1,
        "E-step output for one EM round.",
        {
            "point_offsets": ArraySpec("int64", "(S+1,)", "ragged offsets of keyframe points"),
            "label": ArraySpec("uint8", "(P,)", "class 1..K, 0 = ignore", POINT_CHUNK),
            "confidence": ArraySpec("float32", "(P,)", "confidence of label in 0..1 (0 where ignore)", POINT_CHUNK),
            "instance_id": ArraySpec("int32", "(P,)", "instance id within the keyframe for thing labels, 0 = none", POINT_CHUNK),
            "candidate_mask": ArraySpec("uint32", "(P,)", "bit c-1 set where class c is still possible; all bits where unknown", POINT_CHUNK),
            "source": ArraySpec("uint8", "(P,)", "what decided the point, see lidarlift.artifacts.SOURCES", POINT_CHUNK),
            "round": ArraySpec("uint8", "(P,)", "EM round that set the label", POINT_CHUNK),
        },
    ),
    "temporal": StoreSpec(
        "temporal", 1,
        "Keyframe pseudo-labels of one EM round carried to the intermediate sweeps (lidarlift.temporal). Per-point "
        "data of all W sweeps of the shard concatenated (keyframe order, each keyframe's sweeps in time order); "
        "attrs: sample_tokens (the shard's keyframes), sweep_tokens (W sample_data tokens), round, sources "
        "(code -> name of lidarlift.temporal.TEMPORAL_SOURCES), keyframe_labelled and keyframe_points (the "
        "labelled and all points of the keyframes the labels came from).",
        {
            "sweep_offsets": ArraySpec("int64", "(W+1,)", "ragged offsets of sweep points: sweep w owns rows sweep_offsets[w]:sweep_offsets[w+1], in its file's point order"),
            "keyframe_index": ArraySpec("int32", "(W,)", "the keyframe (index in sample_tokens) whose intermediate sweep it is: it lies between that keyframe and the one before"),
            "timestamp": ArraySpec("int64", "(W,)", "the sweep's timestamp (microseconds)"),
            "label": ArraySpec("uint8", "(Q,)", "class 1..K, 0 = no label", POINT_CHUNK),
            "confidence": ArraySpec("float32", "(Q,)", "confidence of label in 0..1 (0 where no label)", POINT_CHUNK),
            "source": ArraySpec("uint8", "(Q,)", "what decided the point, see lidarlift.temporal.TEMPORAL_SOURCES", POINT_CHUNK),
            "moved": ArraySpec("bool", "(Q,)", "the label came from a keyframe segment moved to the sweep's time", POINT_CHUNK),
        },
    ),
    "predict": StoreSpec(
        "predict", 1,
        "Network predictions for one EM round.",
        {
            "point_offsets": ArraySpec("int64", "(S+1,)", "ragged offsets of keyframe points"),
            "logits": ArraySpec("float16", "(P, K)", "class logits", POINT_CHUNK),
            "features": ArraySpec("float16", "(P, F)", "last decoder features (for prototypes)", POINT_CHUNK),
            "pred": ArraySpec("uint8", "(P,)", "argmax class 1..K", POINT_CHUNK),
        },
    ),
}

#: Pseudo-label ``source`` codes.
SOURCES: dict[int, str] = {
    0: "none",
    1: "click",
    2: "propagated",
    3: "candidates",
    4: "network",
    5: "image2d",
    6: "ground",
}


class ArtifactError(RuntimeError):
    """A store is missing, from another stage, or of another schema version."""


def store_path(results: str | os.PathLike, stage: str, shard: str, round: int | None = None) -> Path:
    base = Path(results) / stage
    if round is not None:
        base = base / f"r{round}"
    return base / f"{shard}.zarr"


@contextmanager
def write_store(path: str | os.PathLike, stage: str, *, shard: str, sample_tokens: list[str],
                params: dict[str, Any] | None = None, **attrs: Any) -> Iterator[zarr.Group]:
    """Open a fresh store at a temporary path; on success rename it onto ``path``.

    On any exception the temporary store is removed and ``path`` keeps whatever it had before.
    """
    spec = STORES[stage]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)  # also removes what a killed writer of this store left
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    group.attrs.update({
        "schema_version": spec.version,
        "stage": stage,
        "shard": shard,
        "sample_tokens": list(sample_tokens),
        "params": params or {},
        **attrs,
    })
    try:
        yield group
        missing = [n for n in spec.arrays if n not in group and n not in spec.optional]
        if missing:
            raise ArtifactError(f"{stage} store {path}: arrays not written: {missing}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def put(group: zarr.Group, name: str, data: np.ndarray) -> None:
    """Write one array of the group's stage with the declared dtype and chunking."""
    stage = group.attrs["stage"]
    spec = STORES[stage].arrays.get(name)
    if spec is None:
        raise ArtifactError(f"{stage} store has no array {name!r} in lidarlift.artifacts.STORES")
    data = np.ascontiguousarray(data, dtype=spec.dtype)
    if "(I" in spec.shape and data.ndim == 3:
        chunks = (1, *data.shape[1:])
    elif spec.chunk_rows is not None and data.ndim >= 1:
        chunks = (max(1, min(spec.chunk_rows, data.shape[0])), *data.shape[1:])
    else:
        chunks = tuple(max(1, s) for s in data.shape) if data.ndim else ()
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks or None, overwrite=True)
    if data.size:
        arr[...] = data


def open_store(path: str | os.PathLike, stage: str) -> zarr.Group:
    """Open a finished store read-only and check its stage and schema version."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{stage} store {path} does not exist (run the '{stage}' rule first)")
    group = zarr.open_group(str(path), mode="r")
    got_stage = group.attrs.get("stage")
    if got_stage != stage:
        raise ArtifactError(f"store {path} holds stage {got_stage!r}, expected {stage!r}")
    want, got = STORES[stage].version, group.attrs.get("schema_version")
    if got != want:
        raise ArtifactError(f"{stage} store {path} has schema version {got}, this lidarlift reads {want}: re-run the '{stage}' rule")
    return group


def read(group: zarr.Group, name: str) -> np.ndarray:
    if name not in group:
        raise ArtifactError(f"{group.attrs.get('stage')} store {group.store} has no array {name!r}")
    return np.asarray(group[name][...])


def sample_slice(offsets: np.ndarray, s: int) -> slice:
    return slice(int(offsets[s]), int(offsets[s + 1]))


def offsets_from_counts(counts: list[int] | np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))]).astype(np.int64)


def describe() -> str:
    """Markdown table of every store's arrays (used for the README / docs)."""
    lines = ["| store | array | dtype | shape | meaning |", "|---|---|---|---|---|"]
    for spec in STORES.values():
        for name, a in spec.arrays.items():
            lines.append(f"| {spec.stage} v{spec.version} | `{name}` | {a.dtype} | {a.shape} | {a.doc} |")
    return "\n".join(lines)
