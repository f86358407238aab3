"""Config-driven training of the segmentation network: checkpoints every epoch and resume, TensorBoard,
seeds, AMP on GPU, DDP through ``torchrun`` (NCCL on GPU, gloo on CPU); ``summarize`` for the summary
key ``training``.

Entry points:
- :func:`train` trains a model on a :class:`~lidarlift.model.data.SweepDataset` into an output folder;
- :func:`run_training` does one ``train`` / ``train_full`` job from a JSON-able spec (reads the
  manifest and label stores, trains, writes ``model.pt`` and ``metrics.json``); every DDP process runs it;
- ``python -m lidarlift.model.train SPEC.json`` runs :func:`run_training` (what ``torchrun`` launches);
- :func:`load_model` reads ``model.pt`` and refuses one of another architecture or class count.

Reproducibility: the model is initialised from ``seed``; the sweep order of epoch ``e`` and every
augmentation draw derive from ``(seed, e, sweep)``; so a run killed after epoch ``e`` and resumed from
its checkpoint ends with the same weights as an uninterrupted run (on the same device and threads).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lidarlift.model.data import (AugmentConfig, SweepDataset, TrainingDataError, check_supervision, collate_sweeps,
                                  groundtruth_refs, pseudolabel_refs)
from lidarlift.model.losses import SegmentationLoss, inverse_frequency_weights
from lidarlift.model.unet import SparseUNet, UNetConfig, build_model, count_parameters

log = logging.getLogger("lidarlift.model.train")

MODEL_FORMAT = "lidarlift-segmentation-model"
MODEL_VERSION = 1
CHECKPOINT_FORMAT = "lidarlift-training-checkpoint"
#: test hook: a process kills itself (SIGKILL) right after writing the checkpoint of this epoch.
KILL_ENV = "LIDARLIFT_TEST_KILL_AFTER_EPOCH"


class CheckpointError(RuntimeError):
    """A model or checkpoint file is missing, corrupted, or from another architecture or class count."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the epoch, step and batch."""


# ------------------------------------------------------------------------------------------- config

@dataclass
class TrainConfig:
    """The ``train`` config section (see config/schema.yaml for every key's meaning)."""

    model: dict[str, Any] = field(default_factory=dict)
    epochs: int = 16
    batch_size: int = 1
    optimizer: str = "adamw"
    lr: float = 0.007
    momentum: float = 0.9
    weight_decay: float = 0.0001
    schedule: str = "cosine"
    warmup_steps: int = 20
    loss: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)
    amp: bool = True
    seed: int = 0
    workers: int = 0
    cache: bool = True
    max_points: int = 10000
    device: str = "auto"
    gpus: int = 0
    log_every: int = 10
    predict_batch_size: int = 4
    unlabelled_shard_policy: str = "error"

    #: keys that do not change the trained weights (left out of the resume fingerprint)
    RUNTIME_KEYS = ("workers", "log_every", "gpus", "device", "predict_batch_size", "cache")

    @staticmethod
    def from_dict(d: dict[str, Any] | None, num_classes: int | None = None) -> "TrainConfig":
        d = dict(d or {})
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config key train: unknown keys {unknown}; known: {sorted(known)}")
        cfg = TrainConfig(**d)
        if num_classes is not None:
            cfg.model = {**cfg.model, "num_classes": num_classes}
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"config key train.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"config key train.batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"config key train.optimizer: {self.optimizer!r} is not one of sgd, adamw")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"config key train.schedule: {self.schedule!r} is not one of cosine, constant")
        if self.unlabelled_shard_policy not in ("error", "skip"):
            raise ValueError(f"config key train.unlabelled_shard_policy: {self.unlabelled_shard_policy!r} is not one of error, skip")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"config key train.device: {self.device!r} is not one of auto, cpu, cuda")
        UNetConfig.from_dict(self.model)

    @property
    def unet(self) -> UNetConfig:
        return UNetConfig.from_dict(self.model)

    def fingerprint_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in self.RUNTIME_KEYS:
            d.pop(k, None)
        d["model"] = self.unet.to_dict()
        return d


# -------------------------------------------------------------------------------------- distributed

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return Dist(rank, world, local)


def _all_reduce_min(value: float, d: Dist) -> float:
    if not d.enabled:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t.item())


def _barrier(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


def resolve_device(name: str, d: Dist) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("config key train.device is 'cuda' but torch sees no CUDA device")
    return torch.device("cuda", d.local_rank)


# ------------------------------------------------------------------------------------ checkpoints

def _atomic_save(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _torch_load(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - every unreadable file is the same problem for the user
        raise CheckpointError(f"{what} {path} is corrupted or not a torch file ({type(e).__name__}: {e}); "
                              f"delete it and re-run the training") from e
    if not isinstance(payload, dict):
        raise CheckpointError(f"{what} {path} is not a lidarlift file (holds a {type(payload).__name__})")
    return payload


def _arch_mismatch(saved: dict[str, Any], want: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(want))
    return [f"{k}: file {saved.get(k)!r} vs config {want.get(k)!r}" for k in keys if saved.get(k) != want.get(k)]


def _load_state(model: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit the network ({str(e).splitlines()[0]})") from e


def load_model(path: str | os.PathLike, expect: UNetConfig | dict[str, Any] | None = None,
               num_classes: int | None = None) -> tuple[SparseUNet, dict[str, Any]]:
    """Read ``model.pt``; returns (model in eval mode on the CPU, its metadata).

    Raises CheckpointError for a missing or corrupted file, a file that is not a lidarlift model, a
    class count other than ``num_classes``, or an architecture other than ``expect``.
    """
    path = Path(path)
    payload = _torch_load(path, "model")
    if payload.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not a lidarlift segmentation model (format {payload.get('format')!r}, "
                              f"expected {MODEL_FORMAT!r})")
    if payload.get("version") != MODEL_VERSION:
        raise CheckpointError(f"{path} is a model file of version {payload.get('version')}, this lidarlift reads {MODEL_VERSION}: re-run the training")
    try:
        arch = UNetConfig.from_dict(payload["arch"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable architecture record ({e})") from e
    if num_classes is not None and arch.num_classes != num_classes:
        raise CheckpointError(f"{path} predicts {arch.num_classes} classes ({payload.get('label_space')}) but the "
                              f"configured label space has {num_classes}: train a model for this label space")
    if expect is not None:
        want = UNetConfig.from_dict(expect) if isinstance(expect, dict) else expect
        diff = _arch_mismatch(arch.to_dict(), want.to_dict())
        if diff:
            raise CheckpointError(f"{path} is a network of another architecture than config train.model asks for: " + "; ".join(diff))
    model = build_model(arch)
    _load_state(model, payload["state_dict"], path)
    model.eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta


# ---------------------------------------------------------------------------------------- training

def _unwrap(model: torch.nn.Module) -> SparseUNet:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def _optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _schedule(cfg: TrainConfig, opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(0, min(cfg.warmup_steps, total_steps // 4))

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        t = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def epoch_order(n: int, seed: int, epoch: int, d: Dist) -> list[int]:
    """This rank's sweep indices for an epoch: a seeded permutation, dealt round-robin to the ranks and
    padded (wrapping) so every rank takes the same number of steps."""
    order = np.random.default_rng([seed, epoch, 7919]).permutation(n)
    per_rank = -(-n // d.world)
    padded = np.concatenate([order, order[: per_rank * d.world - n]]) if per_rank * d.world > n else order
    return padded[d.rank::d.world].tolist()


def _loss_for(cfg: TrainConfig, stats_counts: np.ndarray | None, num_classes: int) -> SegmentationLoss:
    lc = dict(cfg.loss)
    weights = lc.pop("class_weights", "inverse_sqrt_frequency")
    if weights in (None, "none"):
        w = None
    elif weights in ("inverse_sqrt_frequency", "inverse_frequency"):
        counts = stats_counts[1:] if stats_counts is not None else np.ones(num_classes)
        w = inverse_frequency_weights(counts, 0.5 if weights == "inverse_sqrt_frequency" else 1.0)
    elif isinstance(weights, (list, tuple)):
        w = list(weights)
    else:
        raise ValueError(f"config key train.loss.class_weights: {weights!r} is not none, inverse_sqrt_frequency, "
                         f"inverse_frequency or a list of {num_classes} numbers")
    known = {"ce_weight", "lovasz_weight", "negative_weight", "confidence_weighting"}
    unknown = sorted(set(lc) - known)
    if unknown:
        raise ValueError(f"config key train.loss: unknown keys {unknown}; known: {sorted(known | {'class_weights'})}")
    return SegmentationLoss(num_classes, class_weights=w, **lc)


@dataclass
class TrainResult:
    model: SparseUNet
    epochs: int
    steps: int
    seconds: float
    history: list[dict[str, float]]
    resumed_from_epoch: int
    device: str
    world_size: int
    parameters: int


def train(cfg: TrainConfig, dataset: SweepDataset, out_dir: str | os.PathLike, *,
          tensorboard_dir: str | os.PathLike | None = None, label_counts: np.ndarray | None = None,
          data_fingerprint: str = "", resume: bool = True, threads: int | None = None,
          on_epoch_end: Callable[[int, SparseUNet], dict[str, float] | None] | None = None) -> TrainResult:
    """Train on ``dataset``; checkpoint after every epoch to ``out_dir/checkpoint.pt`` and resume from it.

    A checkpoint whose fingerprint (training config, architecture, data) differs from this run's is
    not resumed: training starts afresh with a warning. Stops with NonFiniteLossError on a NaN or
    infinite loss. Under torchrun every process calls this; rank 0 writes checkpoints and logs.
    ``on_epoch_end(epoch, model)`` (rank 0, model in eval mode) may return scalars (e.g. a validation
    mIoU) that join the epoch's history record and TensorBoard.
    """
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    model_cfg = cfg.unet
    device = resolve_device(cfg.device, Dist())
    d = init_distributed(device.type)
    device = resolve_device(cfg.device, d)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp = bool(cfg.amp and device.type == "cuda")
    fingerprint = hashlib.sha256(json.dumps({"train": cfg.fingerprint_dict(), "data": data_fingerprint,
                                             "sweeps": [r.token for r in dataset.refs]}, sort_keys=True).encode()).hexdigest()

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model: torch.nn.Module = build_model(model_cfg).to(device)
    criterion = _loss_for(cfg, label_counts, model_cfg.num_classes).to(device)
    opt = _optimizer(cfg, model)
    steps_per_epoch = -(-len(epoch_order(len(dataset), cfg.seed, 0, d)) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    sched = _schedule(cfg, opt, total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    start_epoch, step, history = 0, 0, []
    if resume and ckpt_path.exists():
        ck = _torch_load(ckpt_path, "training checkpoint")
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{ckpt_path} is not a lidarlift training checkpoint; delete it and re-run")
        if ck.get("fingerprint") != fingerprint:
            if d.main:
                log.warning("checkpoint %s is from another configuration or other training data: not resumed, training from scratch", ckpt_path)
        else:
            _load_state(model, ck["model"], ckpt_path)
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            scaler.load_state_dict(ck["scaler"])
            start_epoch, step, history = int(ck["epoch"]), int(ck["step"]), list(ck["history"])
            if d.main:
                log.info("resumed from %s after epoch %d (step %d)", ckpt_path, start_epoch, step)
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    writer = None
    if d.main and tensorboard_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(tensorboard_dir), purge_step=step if step else None)
    if d.main:
        log.info("training %d sweeps for %d epochs (%d steps/epoch, batch %d x %d process(es)) on %s%s, %d parameters",
                 len(dataset), cfg.epochs, steps_per_epoch, cfg.batch_size, d.world, device, " with AMP" if amp else "",
                 count_parameters(model))
    t_start = time.perf_counter()
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if amp else nullcontext
    for epoch in range(start_epoch, cfg.epochs):
        dataset.set_epoch(epoch)
        order = epoch_order(len(dataset), cfg.seed, epoch, d)
        batches = [order[i: i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate_sweeps,
                                             num_workers=cfg.workers, persistent_workers=False)
        model.train()
        sums = {"loss": 0.0, "ce": 0.0, "lovasz": 0.0, "negative": 0.0}
        n_batches, points, t_epoch, cpu_epoch = 0, 0, time.perf_counter(), time.process_time()
        for b, batch in enumerate(loader):
            pts = batch["points"].to(device, non_blocking=True)
            with autocast():
                logits, _ = model(pts, batch["batch"].to(device), batch["batch_size"])
            terms = criterion(logits, batch["label"].to(device), batch["candidate_mask"].to(device), batch["confidence"].to(device))
            value = float(terms.total.detach())
            parts = {"ce": float(terms.ce.detach()), "lovasz": float(terms.lovasz.detach()), "negative": float(terms.negative.detach())}
            if _all_reduce_min(1.0 if math.isfinite(value) else 0.0, d) < 1.0:
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch + 1}, step {step + 1} (batch {b + 1} of the epoch, sweeps "
                    f"{', '.join(batch['tokens'])}) on rank {d.rank}: total {value}, ce {parts['ce']}, "
                    f"lovasz {parts['lovasz']}, negative {parts['negative']}; training stopped "
                    f"(try a lower train.lr{' or train.amp: false' if amp else ''})")
            opt.zero_grad(set_to_none=True)
            scaler.scale(terms.total).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            n_batches += 1
            points += len(pts)
            for k, v in (("loss", value), *parts.items()):
                sums[k] += v
            if writer is not None and (step % max(1, cfg.log_every) == 0 or step == 1):
                writer.add_scalar("loss/total", value, step)
                for k, v in parts.items():
                    writer.add_scalar(f"loss/{k}", v, step)
                writer.add_scalar("lr", opt.param_groups[0]["lr"], step)
        secs = time.perf_counter() - t_epoch
        record = {k: v / max(1, n_batches) for k, v in sums.items()}
        record.update(epoch=epoch + 1, steps=step, seconds=secs, cpu_seconds=time.process_time() - cpu_epoch,
                      points_per_s=points * d.world / max(secs, 1e-9))
        history.append(record)
        if d.main:
            if on_epoch_end is not None:
                net = _unwrap(model)
                net.eval()
                extra = on_epoch_end(epoch + 1, net) or {}
                net.train()
                record.update(extra)
            log.info("epoch %d/%d: loss %.4f (ce %.4f, lovasz %.4f, negative %.4f), %.1f s, %.0f points/s%s",
                     epoch + 1, cfg.epochs, record["loss"], record["ce"], record["lovasz"], record["negative"], secs,
                     record["points_per_s"], "".join(f", {k} {v:.4f}" for k, v in record.items() if k.startswith("val_")))
            if writer is not None:
                for k, v in record.items():
                    if k == "loss" or k.startswith("val_"):
                        writer.add_scalar(f"epoch/{k}", v, epoch + 1)
                writer.flush()
            _atomic_save({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": epoch + 1, "step": step,
                          "history": history, "model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                          "arch": model_cfg.to_dict()}, ckpt_path)
            if os.environ.get(KILL_ENV) == str(epoch + 1):
                os.kill(os.getpid(), signal.SIGKILL)
        _barrier(d)
    if writer is not None:
        writer.close()
    net = _unwrap(model)
    net.eval()
    return TrainResult(net, cfg.epochs, step, time.perf_counter() - t_start, history, start_epoch, str(device), d.world,
                       count_parameters(net))


def save_model(result: TrainResult, cfg: TrainConfig, path: str | os.PathLike, *, label_space: str,
               classes: Sequence[str], extra: dict[str, Any] | None = None) -> None:
    """Write ``model.pt``: weights, architecture, label space and how it was trained."""
    _atomic_save({"format": MODEL_FORMAT, "version": MODEL_VERSION, "arch": result.model.cfg.to_dict(),
                  "label_space": label_space, "classes": list(classes),
                  "train_config": asdict(cfg), "history": result.history, **(extra or {}),
                  "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()}}, Path(path))


# ----------------------------------------------------------------------------------- one rule's job

def _data_fingerprint(dataset: SweepDataset) -> str:
    h = hashlib.sha256()
    for i in range(len(dataset)):
        sw = dataset.sweep(i)
        h.update(sw.token.encode())
        h.update(np.ascontiguousarray(sw.label).tobytes())
        h.update(np.ascontiguousarray(sw.candidate_mask).tobytes())
        h.update(np.ascontiguousarray(sw.confidence).tobytes())
    return h.hexdigest()


def pseudolabel_quality(dataset: SweepDataset, num_classes: int) -> dict[str, Any] | None:
    """How good the training labels are against ground truth, on the points they cover: confusion of
    labelled points, coverage, candidate-set share, size and truth containment. None without truth."""
    from lidarlift.groundtruth import point_truth
    from lidarlift.classes import candidates_to_sets
    from lidarlift.model.scores import confusion

    samples = {s.token: s for s in dataset.manifest.samples}
    cm = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    n = labelled = cand = cand_truth = cand_size = 0
    full = (1 << num_classes) - 1
    for i in range(len(dataset)):
        sw = dataset.sweep(i)
        truth = point_truth(dataset.manifest, samples[sw.token])
        if truth is None:
            return None
        gt = truth.label.astype(np.int64)
        lab = sw.label.astype(np.int64)
        covered = lab > 0
        cm += confusion(gt[covered], lab[covered], num_classes)
        n += int((gt > 0).sum())
        labelled += int((covered & (gt > 0)).sum())
        cmask = sw.candidate_mask.astype(np.int64) & full
        has_set = (~covered) & (cmask != 0) & (cmask != full) & (gt > 0)
        if has_set.any():
            sets = candidates_to_sets(cmask[has_set].astype(np.uint32), num_classes)
            cand += int(has_set.sum())
            cand_size += int(sets.sum())
            cand_truth += int(sets[np.arange(len(sets)), gt[has_set] - 1].sum())
    return {"confusion": cm.tolist(), "points": n, "labelled": labelled, "candidates": cand,
            "candidate_contains_truth": cand_truth, "candidate_size_sum": cand_size}


def run_training(spec: dict[str, Any]) -> dict[str, Any]:
    """One training job. ``spec`` keys: ``train`` (config section), ``label_space``, ``manifest``,
    ``round`` (int or 'full'), ``label_source`` ('pseudolabels' with ``stores`` {shard: path}, or
    'ground_truth' with ``shards``), ``model``, ``metrics``, ``out_dir`` (checkpoint), ``tensorboard``,
    ``threads``. Returns the metrics (written by rank 0 only)."""
    from lidarlift.classes import label_space
    from lidarlift.manifest import Manifest
    from lidarlift.model.scores import report
    from lidarlift.workflow import write_json

    space = label_space(spec["label_space"])
    cfg = TrainConfig.from_dict(spec["train"], num_classes=space.num_classes)
    manifest = Manifest.from_json(spec["manifest"])
    if spec["label_source"] == "pseudolabels":
        refs = pseudolabel_refs(manifest, spec["stores"])
    elif spec["label_source"] == "ground_truth":
        refs = groundtruth_refs(manifest, spec["shards"])
    else:
        raise ValueError(f"unknown label source {spec['label_source']!r}")
    if not refs:
        raise TrainingDataError("no training keyframes: the train split has no shards")
    augment = AugmentConfig.from_dict(cfg.augment)
    dataset = SweepDataset(manifest, refs, space.num_classes, augment=augment, seed=cfg.seed,
                           cache=cfg.cache, max_points=cfg.max_points)
    stats = check_supervision(dataset, cfg.unlabelled_shard_policy)
    result = train(cfg, dataset, spec["out_dir"], tensorboard_dir=spec.get("tensorboard"), label_counts=stats.label_counts,
                   data_fingerprint=_data_fingerprint(dataset), threads=spec.get("threads"))
    in_sync = _weights_in_sync(result.model)
    metrics: dict[str, Any] = {}
    if int(os.environ.get("RANK", "0")) == 0:
        quality = pseudolabel_quality(dataset, space.num_classes) if spec["label_source"] == "pseudolabels" else None
        metrics = {
            "kind": "train", "round": spec["round"], "label_source": spec["label_source"], "label_space": space.name,
            "classes": list(space.classes), "sweeps": len(dataset), "points": stats.points,
            "labelled_points": stats.labelled, "candidate_points": stats.candidates,
            "skipped_shards": stats.skipped_shards, "epochs": result.epochs, "steps": result.steps,
            "seconds": result.seconds, "resumed_from_epoch": result.resumed_from_epoch, "device": result.device,
            "world_size": result.world_size, "parameters": result.parameters, "ddp_weights_in_sync": in_sync,
            "final_loss": result.history[-1]["loss"] if result.history else None,
            "first_epoch_loss": result.history[0]["loss"] if result.history else None,
            "history": result.history, "pseudolabels": quality,
        }
        if quality is not None:
            metrics["pseudolabel_scores"] = report(np.array(quality["confusion"]), space.classes)
        save_model(result, cfg, spec["model"], label_space=space.name, classes=space.classes,
                   extra={"round": spec["round"], "label_source": spec["label_source"]})
        write_json(spec["metrics"], metrics)
    _barrier(Dist(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))))
    return metrics


def _weights_in_sync(model: torch.nn.Module) -> bool | None:
    """Under DDP: whether every process ended with the same weights (a checksum per process, gathered);
    None without DDP."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist

    with torch.no_grad():
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    if dist.get_backend() == "nccl":
        checksum = checksum.cuda()
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    values = [float(g.item()) for g in gathered]
    if max(values) - min(values) > 1e-6 * max(1.0, abs(values[0])):
        log.warning("DDP processes ended with different weights (checksums %s)", values)
        return False
    return True


def torchrun_command(spec_path: str | os.PathLike, nproc: int) -> list[str]:
    """The command that runs :func:`run_training` on ``nproc`` processes (DDP) through torchrun."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "lidarlift.model.train", str(spec_path)]


def _stream_fd(stream: Any) -> Any:
    try:
        stream.fileno()
        return stream
    except (AttributeError, OSError, ValueError):
        return None


def train_job(spec: dict[str, Any], processes: int = 1) -> None:
    """One ``train`` / ``train_full`` job: train in this process, or in ``processes`` DDP processes
    launched by torchrun (the spec travels as JSON next to the model). Lease GPUs before calling
    (:func:`lidarlift.model.devices.leased_gpus`)."""
    import subprocess

    if processes <= 1:
        run_training(spec)
        return
    spec_path = Path(spec["out_dir"]) / "spec.json"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, indent=1))
    cmd = torchrun_command(spec_path, processes)
    log.info("launching %d DDP processes: %s", processes, " ".join(cmd))
    out = _stream_fd(sys.stdout)
    proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT if out is not None else None, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun with {processes} processes failed (exit {proc.returncode}); see the log above")


# -------------------------------------------------------------------------------------- summary

def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary key ``training`` from the train metrics (per round and 'full') and the per-shard
    predict metrics (confusions summed per round and split before mIoU is taken)."""
    from lidarlift.model.scores import chance_miou, miou, report

    classes: list[str] = []
    train_by_round: dict[Any, dict[str, Any]] = {}
    cms: dict[tuple[Any, str], np.ndarray] = {}
    predict_seconds: dict[Any, float] = {}
    for m in metrics:
        classes = m.get("classes") or classes
        if m.get("kind") == "train":
            train_by_round[m["round"]] = m
        elif m.get("kind") == "predict":
            predict_seconds[m["round"]] = predict_seconds.get(m["round"], 0.0) + float(m.get("seconds", 0.0))
            if m.get("confusion") is not None:
                key = (m["round"], m["split"])
                cm = np.asarray(m["confusion"], dtype=np.int64)
                cms[key] = cms[key] + cm if key in cms else cm
    rounds = sorted(r for r in {*train_by_round, *(k[0] for k in cms)} if r != "full")

    def split_miou(r: Any, split: str) -> float | None:
        return miou(cms[(r, split)]) if (r, split) in cms else None

    out: dict[str, Any] = {}
    miou_rounds = [split_miou(r, "val") for r in rounds]
    out["miou"] = miou_rounds[-1] if miou_rounds else None
    out["miou_rounds"] = miou_rounds
    out["miou_full_supervision"] = split_miou("full", "val")
    out["ratio_to_full"] = (out["miou"] / out["miou_full_supervision"]
                            if out["miou"] is not None and out["miou_full_supervision"] else None)
    pl = [(train_by_round.get(r) or {}).get("pseudolabel_scores") or {} for r in rounds]
    out["pseudolabel_miou"] = pl[-1].get("miou") if pl else None
    out["pseudolabel_miou_rounds"] = [p.get("miou") for p in pl]
    out["pseudolabel_coverage_rounds"] = [
        ((train_by_round.get(r) or {}).get("pseudolabels") or {}).get("labelled", 0) / max(1, ((train_by_round.get(r) or {}).get("pseudolabels") or {}).get("points", 0))
        if (train_by_round.get(r) or {}).get("pseudolabels") else None for r in rounds]
    out["miou_train_split_rounds"] = [split_miou(r, "train") for r in rounds]
    out["miou_train_split_full_supervision"] = split_miou("full", "train")
    if rounds and (rounds[-1], "val") in cms:
        out["chance_miou"] = chance_miou(cms[(rounds[-1], "val")])
        final = report(cms[(rounds[-1], "val")], classes)
        out["iou_per_class"] = final["iou"]
        out["classes_present"] = final["classes_present"]
        out["val_points"] = final["points"]
    if ("full", "val") in cms:
        out["iou_per_class_full_supervision"] = report(cms[("full", "val")], classes)["iou"]
    out["train_seconds_rounds"] = [(train_by_round.get(r) or {}).get("seconds") for r in rounds]
    out["train_seconds_full_supervision"] = (train_by_round.get("full") or {}).get("seconds")
    out["predict_seconds_rounds"] = [predict_seconds.get(r) for r in rounds]
    out["final_loss_rounds"] = [(train_by_round.get(r) or {}).get("final_loss") for r in rounds]
    out["device"] = next((m.get("device") for m in train_by_round.values()), None)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m lidarlift.model.train SPEC.json``: one training job (every torchrun process runs it)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m lidarlift.model.train SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(argv[0]).read_text())
    try:
        run_training(spec)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
