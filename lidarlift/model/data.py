"""Training data: keyframe sweeps (through the manifest and ``lidarlift.datasets.read_lidar``) with labels
from pseudo-label stores (EM rounds) or from ground truth (the fully supervised baseline), and
intermediate sweeps with the labels the ``temporal`` stage carried to them from the keyframes
(:func:`temporal_refs`; label where the store has one, confidence as stored, no candidate set).

A sweep is identified by a :class:`SweepRef`; :class:`SweepDataset` loads it (points (N, 4) float32
x, y, z, intensity in the lidar frame; label (N,) uint8 1..K, 0 = ignore; candidate_mask (N,) uint32;
confidence (N,) float32). :func:`prepare_sweep` subsamples and augments a sweep with torch ops where
its points are (rotation about z, flips and scaling drawn on the host per (seed, epoch, sweep) by
:func:`draw_sweep`; subset and jitter from a generator seeded by the same draw), so a resumed run sees
the same data; :func:`collate_sweeps` concatenates a batch with a per-point sweep index.

Two ways to feed training, same batches: :class:`ResidentSweeps` keeps every sweep on the training
device and makes each batch there (no host-to-device copy, no host sync); a DataLoader over
:class:`SweepDataset` makes them in worker processes (datasets larger than memory).
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


# ------------------------------------------------------------------------------------------ references

@dataclass(frozen=True)
class SweepRef:
    """Where one sweep's points and labels are. ``label_store``: pseudo-label store (None for truth) or,
    with ``label_kind`` 'temporal', a temporal store (``token`` is then the intermediate sweep's
    sample_data token and ``index`` the keyframe it precedes); ``rows``: the sweep's rows in that store."""

    token: str
    shard: str
    index: int
    lidar_path: str
    lidar_fmt: str
    label_store: str | None = None
    rows: tuple[int, int] | None = None
    label_kind: str = "pseudolabels"


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


def evenly_spaced(n: int, k: int) -> list[int]:
    """``k`` of the indices 0..n-1 spread evenly (the middle of k equal parts); all of them when k is 0
    or >= n."""
    if k <= 0 or k >= n:
        return list(range(n))
    return [int((i + 0.5) * n / k) for i in range(k)]


def temporal_refs(manifest: Manifest, stores: dict[str, str | Path], per_keyframe: int = 0) -> list[SweepRef]:
    """References to the intermediate sweeps of the shards in ``stores`` ({shard: temporal store path}),
    labelled by that store: of each keyframe's sweeps (in time order) ``per_keyframe`` evenly spaced
    ones (0 = all).

    Raises TrainingDataError when a store's keyframes or sweeps are not the manifest's."""
    refs = []
    for shard, path in stores.items():
        group = open_store(path, "temporal")
        samples = manifest.shard_samples(shard)
        if list(group.attrs.get("sample_tokens", [])) != [s.token for s in samples]:
            raise TrainingDataError(f"temporal store {path}: its keyframes are not the manifest's keyframes of shard "
                                    f"{shard}: re-run the 'temporal' rule")
        frames = {f.token: f for s in samples for f in s.intermediate_sweeps}
        tokens = list(group.attrs.get("sweep_tokens", []))
        offsets = read(group, "sweep_offsets")
        keyframe = read(group, "keyframe_index")
        if len(offsets) != len(tokens) + 1 or len(keyframe) != len(tokens):
            raise TrainingDataError(f"temporal store {path}: {len(tokens)} sweep tokens but {len(offsets)} offsets and "
                                    f"{len(keyframe)} keyframe indices")
        by_keyframe: dict[int, list[int]] = {}
        for w, token in enumerate(tokens):
            if token not in frames:
                raise TrainingDataError(f"temporal store {path}: sweep {token} is no intermediate sweep of shard {shard} "
                                        f"in the manifest: re-run the 'temporal' rule")
            by_keyframe.setdefault(int(keyframe[w]), []).append(w)
        for j in sorted(by_keyframe):
            ws = sorted(by_keyframe[j], key=lambda w: frames[tokens[w]].timestamp)
            for w in (ws[i] for i in evenly_spaced(len(ws), per_keyframe)):
                f = frames[tokens[w]]
                refs.append(SweepRef(f.token, shard, j, str(manifest.resolve(f.path)), f.fmt, str(path),
                                     (int(offsets[w]), int(offsets[w + 1])), "temporal"))
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
    """The per-point arrays of pseudo-label and temporal stores, read once per store."""

    ARRAYS = {"pseudolabels": ("label", "candidate_mask", "confidence"), "temporal": ("label", "confidence")}

    def __init__(self) -> None:
        self._arrays: dict[str, dict[str, np.ndarray]] = {}

    def get(self, path: str, stage: str = "pseudolabels") -> dict[str, np.ndarray]:
        if path not in self._arrays:
            group = open_store(path, stage)
            self._arrays[path] = {n: read(group, n) for n in self.ARRAYS[stage]}
        return self._arrays[path]


def load_sweep(ref: SweepRef, sample: SampleRecord | None, manifest: Manifest, num_classes: int,
               stores: _StoreCache | None = None) -> LabelledSweep:
    """Read one sweep's points and its labels (store rows, or ground truth when ``ref.label_store`` is None;
    ``sample``: the keyframe's record, needed for ground truth only)."""
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
        arrays = (stores or _StoreCache()).get(ref.label_store, ref.label_kind)
        a, b = ref.rows
        if b - a != n:
            raise TrainingDataError(f"{ref.label_kind} store {ref.label_store}: sweep {ref.token} has {b - a} rows but "
                                    f"its file {ref.lidar_path} has {n} points: the store is from another dataset version")
        label = arrays["label"][a:b]
        conf = arrays["confidence"][a:b]
        if ref.label_kind == "temporal":  # a label or nothing: no candidate sets are carried to sweeps
            cand = np.where(label > 0, np.left_shift(np.uint32(1), np.maximum(label, 1).astype(np.uint32) - 1),
                            full).astype(np.uint32)
        else:
            cand = arrays["candidate_mask"][a:b]
        if label.size and int(label.max()) > num_classes:
            raise TrainingDataError(f"{ref.label_kind} store {ref.label_store}: sweep {ref.token} has label {int(label.max())} "
                                    f"but the label space has {num_classes} classes")
    return LabelledSweep(ref.token, points, label, cand, conf)


# -------------------------------------------------------------------------------------- augmentation

@dataclass(frozen=True)
class AugmentConfig:
    """Random rotation about z (``rotate``), flips of x and y (``flip``), isotropic scaling in
    ``scale`` (lo, hi), Gaussian jitter of std ``jitter`` metres clipped at ``jitter_clip``
    (config ``train.augment``; defaults: config/schema.yaml)."""

    rotate: bool
    flip: bool
    scale: tuple[float, float]
    jitter: float
    jitter_clip: float

    @staticmethod
    def from_config(d: dict[str, Any] | None = None) -> "AugmentConfig | None":
        """From the ``train.augment`` section (missing keys take the schema's defaults); None when
        ``enabled`` is false. Bad values raise ConfigError naming the config key."""
        from lidarlift.config import section, typed

        if not section("train.augment", d)["enabled"]:
            return None
        return typed(AugmentConfig, "train.augment", d)


def augment_matrix(cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """(3, 3) float64 linear map for row vectors (``xyz @ M``): a rotation about z, flips of x and y,
    an isotropic scale, drawn from ``rng`` in that order."""
    m = np.eye(3)
    if cfg.rotate:
        a = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(a), np.sin(a)
        m = m @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
    if cfg.flip:
        m = m @ np.diag([-1.0 if rng.random() < 0.5 else 1.0, -1.0 if rng.random() < 0.5 else 1.0, 1.0])
    if cfg.scale and cfg.scale[0] != cfg.scale[1]:
        m = m * rng.uniform(*cfg.scale)
    return m


@dataclass(frozen=True)
class SweepDraw:
    """The random choices for one sweep in one epoch, drawn on the host from ``(seed, epoch, sweep)``:
    ``matrix`` (3, 3) float64 (None without augmentation) and ``torch_seed`` for the per-point draws
    (point subset, jitter) that run where the points are."""

    matrix: np.ndarray | None
    torch_seed: int


def draw_sweep(seed: int, epoch: int, index: int, augment: AugmentConfig | None) -> SweepDraw:
    rng = np.random.default_rng([seed, epoch, index])
    matrix = augment_matrix(augment, rng) if augment is not None else None
    return SweepDraw(matrix, int(rng.integers(2**62)))


def prepare_sweep(points: torch.Tensor, matrix: torch.Tensor | None, torch_seed: int, augment: AugmentConfig | None,
                  max_points: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One training sweep as the network sees it, computed where ``points`` live (no host sync).

    points: (N, 4) float32 x, y, z, intensity (lidar frame); matrix: (3, 3) float32 on the same device
    (:attr:`SweepDraw.matrix`) or None. Returns the points (M, 4) float32 and the (M,) int64 indices of
    the kept points (None when all N are kept in order): a random subset of ``max_points`` (0 = all),
    then ``xyz @ matrix`` plus Gaussian jitter clipped at ``augment.jitter_clip``. The same
    (``torch_seed``, device) gives the same result.
    """
    gen = torch.Generator(device=points.device)
    gen.manual_seed(torch_seed)
    index = None
    if max_points and len(points) > max_points:
        keys = torch.rand(len(points), generator=gen, device=points.device)
        index = torch.sort(torch.argsort(keys)[:max_points]).values
        points = points[index]
    if matrix is None:
        return points, index
    xyz = points[:, :3] @ matrix
    if augment is not None and augment.jitter:
        noise = torch.randn(xyz.shape, generator=gen, device=points.device, dtype=xyz.dtype) * augment.jitter
        xyz = xyz + noise.clamp_(-augment.jitter_clip, augment.jitter_clip)
    return torch.cat([xyz, points[:, 3:]], 1), index


def draw_matrices(draws: Sequence[SweepDraw], device: torch.device) -> list[torch.Tensor | None]:
    """The draws' (3, 3) matrices as float32 tensors on ``device``, in one asynchronous copy (pinned host
    memory on CUDA: a pageable copy would wait for the queued GPU work)."""
    if all(d.matrix is None for d in draws):
        return [None] * len(draws)
    stacked = torch.from_numpy(np.stack([d.matrix if d.matrix is not None else np.eye(3) for d in draws]).astype(np.float32))
    if device.type == "cuda":
        stacked = stacked.pin_memory().to(device, non_blocking=True)
    return [stacked[j] if d.matrix is not None else None for j, d in enumerate(draws)]


# ------------------------------------------------------------------------------------------- dataset

class SweepDataset(torch.utils.data.Dataset):
    """Keyframe sweeps with labels; items are dicts of CPU tensors (see :func:`collate_sweeps`), made
    by :func:`prepare_sweep` exactly as :class:`ResidentSweeps` makes them on the training device.

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
        sweep = load_sweep(ref, self._samples.get(ref.token), self.manifest, self.num_classes, self._stores)
        if self.cache:
            self._loaded[i] = sweep
        return sweep

    def __getitem__(self, i: int) -> dict[str, Any]:
        sw = self.sweep(i)
        tensors = _sweep_tensors(sw, self.num_classes)
        draw = draw_sweep(self.seed, self.epoch, i, self.augment)
        (matrix,) = draw_matrices([draw], torch.device("cpu"))
        points, index = prepare_sweep(tensors["points"], matrix, draw.torch_seed, self.augment, self.max_points)
        out = {k: (v if index is None else v[index]) for k, v in tensors.items() if k != "points"}
        return {"points": points, **out, "token": sw.token, "index": i}


def _sweep_tensors(sw: LabelledSweep, num_classes: int) -> dict[str, torch.Tensor]:
    """A sweep's arrays as CPU tensors in the dtypes a batch is made from: points (N, 4) float32, label
    (N,) uint8, candidate_mask (N,) int32 (bits of classes 1..K only), confidence (N,) float32."""
    if num_classes > 31:
        raise ValueError(f"candidate masks are held as int32: {num_classes} classes do not fit")
    full = (1 << num_classes) - 1
    return {"points": torch.from_numpy(np.ascontiguousarray(sw.points, dtype=np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(sw.label, dtype=np.uint8)),
            "candidate_mask": torch.from_numpy((sw.candidate_mask.astype(np.int64) & full).astype(np.int32)),
            "confidence": torch.from_numpy(np.ascontiguousarray(sw.confidence, dtype=np.float32))}


def collate_sweeps(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate sweeps: points (P, 4) float32, batch (P,) int64 sweep index, label (P,) int64,
    candidate_mask (P,) int64, confidence (P,) float32, counts, tokens, indices, batch_size.
    Works on CPU and device tensors alike, without a host sync."""
    counts = [len(it["points"]) for it in items]
    device = items[0]["points"].device
    return {
        "points": torch.cat([it["points"] for it in items]),
        "batch": torch.cat([torch.full((n,), b, dtype=torch.int64, device=device) for b, n in enumerate(counts)]),
        "label": torch.cat([it["label"] for it in items]).long(),
        "candidate_mask": torch.cat([it["candidate_mask"] for it in items]).long(),
        "confidence": torch.cat([it["confidence"] for it in items]).float(),
        "counts": counts,
        "tokens": [it["token"] for it in items],
        "indices": [it["index"] for it in items],
        "batch_size": len(items),
    }


class ResidentSweeps:
    """Every sweep of a :class:`SweepDataset` held as tensors on the training device; a batch is gathered,
    subsampled and augmented there (:func:`prepare_sweep`), so a GPU step copies nothing from the host.

    Memory: 25 bytes per point (points 16, label 1, candidate mask 4, confidence 4): a 200-keyframe
    nuScenes-density world (6.8 M points) takes 170 MB. On the CPU the batches equal the
    :class:`SweepDataset` items' (same draws, same generator).
    """

    def __init__(self, dataset: SweepDataset, device: torch.device | str):
        self.dataset = dataset
        self.device = torch.device(device)
        parts = [_sweep_tensors(dataset.sweep(i), dataset.num_classes) for i in range(len(dataset))]
        self.counts = [len(p["points"]) for p in parts]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64).tolist()
        self.tokens = [dataset.refs[i].token for i in range(len(dataset))]
        self.arrays = {k: torch.cat([p[k] for p in parts]).to(self.device) for k in ("points", "label", "candidate_mask", "confidence")}

    def __len__(self) -> int:
        return len(self.counts)

    def batch(self, indices: Sequence[int], epoch: int) -> dict[str, Any]:
        """The batch of sweeps ``indices`` for ``epoch`` on the device (keys of :func:`collate_sweeps`)."""
        ds = self.dataset
        draws = [draw_sweep(ds.seed, epoch, i, ds.augment) for i in indices]
        items = []
        for i, draw, matrix in zip(indices, draws, draw_matrices(draws, self.device)):
            a, b = self.offsets[i], self.offsets[i + 1]
            points, index = prepare_sweep(self.arrays["points"][a:b], matrix, draw.torch_seed, ds.augment, ds.max_points)
            item = {k: self.arrays[k][a:b] for k in ("label", "candidate_mask", "confidence")}
            if index is not None:
                item = {k: v[index] for k, v in item.items()}
            items.append({"points": points, **item, "token": self.tokens[i], "index": i})
        return collate_sweeps(items)


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
