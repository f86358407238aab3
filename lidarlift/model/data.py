"""Training data: keyframe sweeps (through the manifest and ``lidarlift.datasets.read_lidar``) with labels
from pseudo-label stores (EM rounds) or from ground truth (the fully supervised baseline).

A sweep is identified by a :class:`SweepRef`; :class:`SweepDataset` loads it (points (N, 4) float32
x, y, z, intensity in the lidar frame; label (N,) uint8 1..K, 0 = ignore; candidate_mask (N,) uint32;
confidence (N,) float32), augments it (rotation about z, flips, scaling, jitter; seeded per
(seed, epoch, sweep) so a resumed run sees the same data), and :func:`collate_sweeps` concatenates a
batch with a per-point sweep index.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lidarlift.artifacts import open_store, read
from lidarlift.datasets.readers import read_lidar
from lidarlift.manifest import Manifest, SampleRecord

log = logging.getLogger("lidarlift.model.data")

LABEL_SOURCES = ("pseudolabels", "ground_truth")


class TrainingDataError(ValueError):
    """Training input that cannot be used: an empty shard, a shard without any supervision, a store
    that does not match the manifest. The message names the shard, store or sample."""


# --------------------------------------------------------------------------------------------- splits

def shard_splits(config: dict[str, Any]) -> dict[str, str]:
    """{shard: 'train' | 'val' | 'test'} known when the workflow is parsed (no manifest needed).

    nuScenes: the devkit's scene splits for ``dataset.version`` (mini_train / mini_val for the mini
    version); SemanticKITTI: the official sequence split. Shards in no split are 'test'.
    """
    from lidarlift.shards import list_shards

    shards = list_shards(config)
    ds = config["dataset"]
    if ds.get("format", "nuscenes") == "semantickitti":
        from lidarlift.datasets.semantickitti import SPLITS

        return {s: SPLITS.get(s, "test") for s in shards}
    from lidarlift.datasets.nuscenes import scene_splits

    splits = scene_splits(ds["version"])
    return {s: splits.get(s, "test") for s in shards}


def shards_of_split(config: dict[str, Any], split: str) -> list[str]:
    """The shards of one split, in shard order."""
    return [s for s, sp in shard_splits(config).items() if sp == split]


@dataclass(frozen=True)
class TrainLayout:
    """What rules/train.smk needs at parse time: the train and val shards of this run, the GPUs a
    training job leases (``train.gpus``) and a predict job leases (at most 1), and a training job's
    threads: 1 on the CPU (spconv's CPU kernels run single-threaded, spconv#679, so an EM round and
    the baseline train side by side on two cores), else 2 + data loader workers."""

    train_shards: list[str]
    val_shards: list[str]
    gpus: int
    predict_gpus: int
    threads: int


def train_layout(config: dict[str, Any], shards: Sequence[str]) -> TrainLayout:
    splits = shard_splits(config)
    train = config.get("train", {})
    gpus = int(train.get("gpus", 0))
    return TrainLayout(
        train_shards=[s for s in shards if splits.get(s) == "train"],
        val_shards=[s for s in shards if splits.get(s) == "val"],
        gpus=gpus,
        predict_gpus=min(1, gpus),
        threads=1 if gpus == 0 else 2 + int(train.get("workers", 0)),
    )


# ------------------------------------------------------------------------------------------ references

@dataclass(frozen=True)
class SweepRef:
    """Where one keyframe's points and labels are. ``label_store``: pseudo-label store (None for truth);
    ``rows``: the keyframe's rows in that store."""

    token: str
    shard: str
    index: int
    lidar_path: str
    lidar_fmt: str
    label_store: str | None = None
    rows: tuple[int, int] | None = None


def groundtruth_refs(manifest: Manifest, shards: Sequence[str]) -> list[SweepRef]:
    """References to every keyframe of ``shards``, labelled by ground truth."""
    refs = []
    for shard in shards:
        for s in manifest.shard_samples(shard):
            refs.append(SweepRef(s.token, shard, s.index, str(manifest.resolve(s.lidar.path)), s.lidar.fmt))
    return refs


def pseudolabel_refs(manifest: Manifest, stores: dict[str, str | Path]) -> list[SweepRef]:
    """References to every keyframe of the shards in ``stores`` ({shard: pseudo-label store path}).

    Raises TrainingDataError when a store's keyframes differ from the manifest's, or a shard is empty.
    """
    refs = []
    for shard, path in stores.items():
        group = open_store(path, "pseudolabels")
        tokens = list(group.attrs.get("sample_tokens", []))
        offsets = read(group, "point_offsets")
        samples = manifest.shard_samples(shard)
        want = [s.token for s in samples]
        if tokens != want:
            raise TrainingDataError(f"pseudolabel store {path}: its keyframes {tokens[:3]}... ({len(tokens)}) are not the "
                                    f"manifest's keyframes of shard {shard} {want[:3]}... ({len(want)}): re-run the 'pseudolabels' rule")
        if len(offsets) != len(samples) + 1:
            raise TrainingDataError(f"pseudolabel store {path}: point_offsets has {len(offsets)} entries for {len(samples)} keyframes")
        if len(samples) == 0 or offsets[-1] == 0:
            raise TrainingDataError(f"pseudolabel store {path}: shard {shard} is empty (no keyframes or no points)")
        for i, s in enumerate(samples):
            refs.append(SweepRef(s.token, shard, s.index, str(manifest.resolve(s.lidar.path)), s.lidar.fmt,
                                 str(path), (int(offsets[i]), int(offsets[i + 1]))))
    return refs


# ------------------------------------------------------------------------------------------- loading

@dataclass
class LabelledSweep:
    """One keyframe. points (N, 4) float32 lidar frame; label (N,) uint8 0..K; candidate_mask (N,)
    uint32; confidence (N,) float32."""

    token: str
    points: np.ndarray
    label: np.ndarray
    candidate_mask: np.ndarray
    confidence: np.ndarray


class _StoreCache:
    """The per-point arrays of pseudo-label stores, read once per store."""

    def __init__(self) -> None:
        self._arrays: dict[str, dict[str, np.ndarray]] = {}

    def get(self, path: str) -> dict[str, np.ndarray]:
        if path not in self._arrays:
            group = open_store(path, "pseudolabels")
            self._arrays[path] = {n: read(group, n) for n in ("label", "candidate_mask", "confidence")}
        return self._arrays[path]


def load_sweep(ref: SweepRef, sample: SampleRecord, manifest: Manifest, num_classes: int,
               stores: _StoreCache | None = None) -> LabelledSweep:
    """Read one keyframe's points and its labels (store rows, or ground truth when ``ref.label_store`` is None)."""
    points = read_lidar(ref.lidar_path, ref.lidar_fmt, sample=ref.token)
    n = len(points)
    full = np.uint32((1 << num_classes) - 1)
    if ref.label_store is None:
        from lidarlift.groundtruth import point_truth

        truth = point_truth(manifest, sample)
        if truth is None:
            raise TrainingDataError(f"sample {ref.token} (shard {ref.shard}): the dataset has no ground-truth labels, "
                                    f"so the fully supervised baseline cannot train on it")
        label = truth.label.astype(np.uint8)
        if len(label) != n:
            raise TrainingDataError(f"sample {ref.token}: ground truth has {len(label)} points but {ref.lidar_path} has {n}")
        cand = np.where(label > 0, np.left_shift(np.uint32(1), np.maximum(label, 1).astype(np.uint32) - 1), full).astype(np.uint32)
        conf = (label > 0).astype(np.float32)
    else:
        arrays = (stores or _StoreCache()).get(ref.label_store)
        a, b = ref.rows
        if b - a != n:
            raise TrainingDataError(f"pseudolabel store {ref.label_store}: keyframe {ref.token} has {b - a} rows but "
                                    f"its sweep {ref.lidar_path} has {n} points: the store is from another dataset version")
        label = arrays["label"][a:b]
        cand = arrays["candidate_mask"][a:b]
        conf = arrays["confidence"][a:b]
        if label.size and int(label.max()) > num_classes:
            raise TrainingDataError(f"pseudolabel store {ref.label_store}: keyframe {ref.token} has label {int(label.max())} "
                                    f"but the label space has {num_classes} classes")
    return LabelledSweep(ref.token, points, label, cand, conf)


# -------------------------------------------------------------------------------------- augmentation

@dataclass(frozen=True)
class AugmentConfig:
    """Random rotation about z (``rotate``), flips of x and y (``flip``), isotropic scaling in
    ``scale`` (lo, hi), Gaussian jitter of std ``jitter`` metres clipped at ``jitter_clip``."""

    rotate: bool = True
    flip: bool = True
    scale: tuple[float, float] = (0.95, 1.05)
    jitter: float = 0.01
    jitter_clip: float = 0.05

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> "AugmentConfig | None":
        if d is None or d.get("enabled", True) is False:
            return None
        d = {k: v for k, v in d.items() if k != "enabled"}
        if "scale" in d:
            d["scale"] = tuple(d["scale"])
        return AugmentConfig(**d)


def augment_points(points: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Augmented copy of (N, 4) points (intensity untouched)."""
    xyz = points[:, :3].astype(np.float64)
    if cfg.rotate:
        a = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(a), np.sin(a)
        xyz = xyz @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
    if cfg.flip:
        if rng.random() < 0.5:
            xyz[:, 0] = -xyz[:, 0]
        if rng.random() < 0.5:
            xyz[:, 1] = -xyz[:, 1]
    if cfg.scale and cfg.scale[0] != cfg.scale[1]:
        xyz = xyz * rng.uniform(*cfg.scale)
    if cfg.jitter:
        xyz = xyz + np.clip(rng.normal(0, cfg.jitter, xyz.shape), -cfg.jitter_clip, cfg.jitter_clip)
    out = points.copy()
    out[:, :3] = xyz
    return out


# ------------------------------------------------------------------------------------------- dataset

class SweepDataset(torch.utils.data.Dataset):
    """Keyframe sweeps with labels; items are dicts of arrays (see :func:`collate_sweeps`).

    ``cache``: keep loaded sweeps in memory (the synthetic world and small datasets); ``max_points``:
    a random subset of at most that many points per sweep, drawn anew each epoch (0 = all).
    """

    def __init__(self, manifest: Manifest, refs: Sequence[SweepRef], num_classes: int,
                 augment: AugmentConfig | None = None, seed: int = 0, cache: bool = True, max_points: int = 0):
        self.manifest = manifest
        self.refs = list(refs)
        self.num_classes = num_classes
        self.augment = augment
        self.seed = seed
        self.cache = cache
        self.max_points = max_points
        self.epoch = 0
        self._samples = {s.token: s for s in manifest.samples}
        self._stores = _StoreCache()
        self._loaded: dict[int, LabelledSweep] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def sweep(self, i: int) -> LabelledSweep:
        if i in self._loaded:
            return self._loaded[i]
        ref = self.refs[i]
        sweep = load_sweep(ref, self._samples[ref.token], self.manifest, self.num_classes, self._stores)
        if self.cache:
            self._loaded[i] = sweep
        return sweep

    def __getitem__(self, i: int) -> dict[str, Any]:
        sw = self.sweep(i)
        points, label, cand, conf = sw.points, sw.label, sw.candidate_mask, sw.confidence
        index = np.arange(len(points))
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if self.max_points and len(points) > self.max_points:
            index = np.sort(rng.choice(len(points), self.max_points, replace=False))
            points, label, cand, conf = points[index], label[index], cand[index], conf[index]
        if self.augment is not None:
            points = augment_points(points, self.augment, rng)
        return {"points": points, "label": label, "candidate_mask": cand, "confidence": conf,
                "token": sw.token, "index": i, "point_index": index}


def collate_sweeps(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate sweeps: points (P, 4) float32, batch (P,) int64 sweep index, label (P,) int64,
    candidate_mask (P,) int64, confidence (P,) float32, counts, tokens, indices, batch_size."""
    counts = [len(it["points"]) for it in items]
    return {
        "points": torch.from_numpy(np.concatenate([it["points"] for it in items]).astype(np.float32)),
        "batch": torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts)),
        "label": torch.from_numpy(np.concatenate([it["label"] for it in items]).astype(np.int64)),
        "candidate_mask": torch.from_numpy(np.concatenate([it["candidate_mask"] for it in items]).astype(np.int64)),
        "confidence": torch.from_numpy(np.concatenate([it["confidence"] for it in items]).astype(np.float32)),
        "counts": counts,
        "tokens": [it["token"] for it in items],
        "indices": [it["index"] for it in items],
        "batch_size": len(items),
    }


# ------------------------------------------------------------------------------------------ checking

@dataclass
class SupervisionStats:
    """Counts of what the training labels supervise, per shard and in total."""

    points: int = 0
    labelled: int = 0
    candidates: int = 0
    label_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (K + 1,)
    per_shard: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped_shards: list[dict[str, str]] = field(default_factory=list)


def check_supervision(dataset: SweepDataset, policy: str = "error") -> SupervisionStats:
    """Count labelled and candidate-set points per shard; a shard with none is an error (``policy``
    'error') or dropped from ``dataset`` and recorded (``policy`` 'skip'). Raises TrainingDataError
    when nothing is left to train on."""
    k = dataset.num_classes
    full = (1 << k) - 1
    stats = SupervisionStats(label_counts=np.zeros(k + 1, np.int64))
    by_shard: dict[str, list[int]] = {}
    for i, ref in enumerate(dataset.refs):
        by_shard.setdefault(ref.shard, []).append(i)
    keep: list[int] = []
    for shard, idx in by_shard.items():
        n = lab = cand = 0
        counts = np.zeros(k + 1, np.int64)
        for i in idx:
            sw = dataset.sweep(i)
            n += len(sw.label)
            lab_mask = sw.label > 0
            lab += int(lab_mask.sum())
            cm = sw.candidate_mask.astype(np.int64) & full
            cand += int(((~lab_mask) & (cm != 0) & (cm != full)).sum())
            counts += np.bincount(sw.label, minlength=k + 1)[: k + 1]
        store = dataset.refs[idx[0]].label_store or "ground truth"
        problem = None
        if n == 0:
            problem = "has no points"
        elif lab + cand == 0:
            problem = "has no labelled points and no candidate sets (every point is ignore)"
        if problem:
            msg = f"training shard {shard} ({store}) {problem}: nothing to learn from"
            if policy != "skip":
                raise TrainingDataError(msg + " (set train.unlabelled_shard_policy: skip to drop such shards)")
            log.warning("%s; skipped", msg)
            stats.skipped_shards.append({"shard": shard, "reason": problem})
            continue
        keep.extend(idx)
        stats.points += n
        stats.labelled += lab
        stats.candidates += cand
        stats.label_counts += counts
        stats.per_shard[shard] = {"points": n, "labelled": lab, "candidates": cand}
    if not keep:
        raise TrainingDataError("no training shard has any supervision: every label is ignore "
                                f"({len(by_shard)} shard(s): {', '.join(by_shard)})")
    if len(keep) != len(dataset.refs):
        kept_refs = [dataset.refs[i] for i in keep]
        loaded = {j: dataset._loaded[i] for j, i in enumerate(keep) if i in dataset._loaded}
        dataset.refs, dataset._loaded = kept_refs, loaded
    return stats
