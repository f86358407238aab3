"""Config-driven training of the segmentation network: checkpoints (every epoch or every
``train.checkpoint_every_s``) and resume, TensorBoard,
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lidarlift.tmpfiles import atomic_write
from lidarlift.model.data import (AugmentConfig, ResidentSweeps, SweepDataset, TrainingDataError, check_supervision,
                                  collate_sweeps, groundtruth_refs, pseudolabel_refs, temporal_refs)
from lidarlift.model.losses import SegmentationLoss
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
    """The ``train`` config section (defaults and meaning of every key: config/schema.yaml). ``model``,
    ``loss`` and ``augment`` are the validated sub-sections as mappings (the checkpoint fingerprint and
    the model file carry them); ``model`` also holds ``num_classes`` (the label space's)."""

    model: dict[str, Any]
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    warmup_steps: int
    loss: dict[str, Any]
    augment: dict[str, Any]
    amp: bool
    seed: int
    workers: int
    cache: bool
    max_points: int
    device: str
    gpus: int
    log_every: int
    checkpoint_every_s: float
    predict_batch_size: int
    unlabelled_shard_policy: str
    temporal_sweeps: int

    #: keys that do not change the trained weights (left out of the resume fingerprint)
    RUNTIME_KEYS = ("workers", "log_every", "gpus", "device", "predict_batch_size", "cache", "checkpoint_every_s")

    @staticmethod
    def from_config(d: dict[str, Any] | None, num_classes: int) -> "TrainConfig":
        """From the ``train`` section (runtime keys included; missing keys take the schema's defaults)
        and the label space's class count; bad values raise ConfigError naming the config key."""
        from lidarlift.config import typed

        cfg = typed(TrainConfig, "train", d)
        cfg.model = {**cfg.model, "num_classes": num_classes}
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """The network's checks beyond the schema (:meth:`UNetConfig.validate`)."""
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
    """This rank's device: ``cuda:<local rank>`` (the local rank-th GPU the job leased, see
    :func:`lidarlift.gpu.job_gpus`) when the job holds a lease and torch is a CUDA build, else the CPU.
    ``name`` is ``train.device`` (auto | cpu | cuda). CUDA is never touched without a lease."""
    from lidarlift.gpu import torch_device

    return torch_device(name, key="train.device", local_rank=d.local_rank)


# ------------------------------------------------------------------------------------ checkpoints

def _atomic_save(payload: dict[str, Any], path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


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


def _optimizer(cfg: TrainConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    # fused on CUDA: one kernel for every parameter, and GradScaler hands it the inf check without a host sync
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")


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


def allow_tf32() -> None:
    """TF32 tensor cores for the fp32 parts on CUDA (dense layers and spconv's fp32 kernels): fp32 training
    at close to fp16 speed with a 10-bit mantissa in the products, as is usual for segmentation training."""
    torch.set_float32_matmul_precision("high")
    from spconv import constants as spconv_constants

    spconv_constants.SPCONV_ALLOW_TF32 = True


def epoch_order(n: int, seed: int, epoch: int, d: Dist) -> list[int]:
    """This rank's sweep indices for an epoch: a seeded permutation, dealt round-robin to the ranks and
    padded (wrapping) so every rank takes the same number of steps."""
    order = np.random.default_rng([seed, epoch, 7919]).permutation(n)
    per_rank = -(-n // d.world)
    padded = np.concatenate([order, order[: per_rank * d.world - n]]) if per_rank * d.world > n else order
    return padded[d.rank::d.world].tolist()


class _LossWindow:
    """The loss terms of the steps since the last flush, kept on the device so a step never waits for
    the GPU; :meth:`flush` reads them in one copy, stops on a non-finite loss (naming the epoch, step,
    batch and sweeps; every DDP process agrees) and writes TensorBoard points."""

    def __init__(self, device: torch.device):
        self.device = device
        self.values: list[torch.Tensor] = []
        self.steps: list[tuple[int, int, list[str], float]] = []

    def add(self, terms: Any, step: int, batch: int, tokens: list[str], lr: float) -> None:
        self.values.append(torch.stack([terms.total, terms.ce, terms.lovasz, terms.negative]).detach())
        self.steps.append((step, batch, list(tokens), lr))

    def flush(self, epoch: int, d: Dist, amp: bool, writer: Any, log_every: int) -> np.ndarray:
        """(4,) sums of loss, ce, lovasz, negative over the window's steps."""
        if not self.values:
            _all_reduce_min(1.0, d)  # every process flushes at the same steps: keep the collectives paired
            return np.zeros(4)
        vals = torch.stack(self.values).double().cpu().numpy()
        finite = np.isfinite(vals[:, 0])
        if _all_reduce_min(1.0 if finite.all() else 0.0, d) < 1.0:
            j = int(np.argmin(finite)) if not finite.all() else len(finite) - 1
            step, b, tokens, _ = self.steps[j]
            total, ce, lov, neg = vals[j]
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch + 1}, step {step} (batch {b + 1} of the epoch, sweeps "
                f"{', '.join(tokens)}) on rank {d.rank}: total {total}, ce {ce}, lovasz {lov}, negative {neg}; "
                f"training stopped (try a lower train.lr{' or train.amp: false' if amp else ''})")
        if writer is not None:
            for (step, _, _, lr), (total, ce, lov, neg) in zip(self.steps, vals):
                if step % max(1, log_every) == 0 or step == 1:
                    for name, v in (("total", total), ("ce", ce), ("lovasz", lov), ("negative", neg)):
                        writer.add_scalar(f"loss/{name}", v, step)
                    writer.add_scalar("lr", lr, step)
        self.values.clear()
        self.steps.clear()
        return vals.sum(0)


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
    """Train on ``dataset``; checkpoint to ``out_dir/checkpoint.pt`` after the first epoch that ends
    ``cfg.checkpoint_every_s`` after the last checkpoint (0: every epoch) and after the last, and resume from it.

    With ``cfg.cache`` every sweep is held on the training device (:class:`ResidentSweeps`) and batched
    there; otherwise DataLoader workers (``cfg.workers``) read and augment them into pinned memory. The
    step never waits for the GPU: loss terms stay on the device until every ``cfg.log_every`` steps.

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
        allow_tf32()
    amp = bool(cfg.amp and device.type == "cuda")
    fingerprint = hashlib.sha256(json.dumps({"train": cfg.fingerprint_dict(), "data": data_fingerprint,
                                             "sweeps": [r.token for r in dataset.refs]}, sort_keys=True).encode()).hexdigest()

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model: torch.nn.Module = build_model(model_cfg).to(device)
    criterion = SegmentationLoss.from_config(model_cfg.num_classes, cfg.loss, label_counts).to(device)
    opt = _optimizer(cfg, model, device)
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
    # cached sweeps live on the training device and batches are made there; otherwise DataLoader workers
    # read, augment and pin them (same draws, same batches on the CPU)
    resident = ResidentSweeps(dataset, device) if cfg.cache else None
    window = _LossWindow(device)
    last_save = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        dataset.set_epoch(epoch)
        order = epoch_order(len(dataset), cfg.seed, epoch, d)
        batches = [order[i: i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        if resident is not None:
            loader: Any = (resident.batch(idx, epoch) for idx in batches)
        else:
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate_sweeps,
                                                 num_workers=cfg.workers, pin_memory=device.type == "cuda",
                                                 prefetch_factor=4 if cfg.workers else None)
        model.train()
        sums = np.zeros(4)
        n_batches, points, t_epoch, cpu_epoch = 0, 0, time.perf_counter(), time.process_time()
        for b, batch in enumerate(loader):
            pts = batch["points"].to(device, non_blocking=True)
            with autocast():
                logits, _ = model(pts, batch["batch"].to(device, non_blocking=True), batch["batch_size"])
            terms = criterion(logits, batch["label"].to(device, non_blocking=True),
                              batch["candidate_mask"].to(device, non_blocking=True),
                              batch["confidence"].to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            scaler.scale(terms.total).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            n_batches += 1
            points += sum(batch["counts"])
            window.add(terms, step, b, batch["tokens"], opt.param_groups[0]["lr"])
            if step % max(1, cfg.log_every) == 0:  # the only host syncs of the loop (besides spconv's own)
                sums += window.flush(epoch, d, amp, writer, cfg.log_every)
        sums += window.flush(epoch, d, amp, writer, cfg.log_every)  # waits for the epoch's last step
        secs = time.perf_counter() - t_epoch
        record = dict(zip(("loss", "ce", "lovasz", "negative"), (sums / max(1, n_batches)).tolist()))
        record.update(epoch=epoch + 1, steps=step, seconds=secs, cpu_seconds=time.process_time() - cpu_epoch,
                      points=points * d.world, points_per_s=points * d.world / max(secs, 1e-9),
                      ms_per_step=1000 * secs / max(1, n_batches))
        history.append(record)
        if d.main:
            if on_epoch_end is not None:
                net = _unwrap(model)
                net.eval()
                extra = on_epoch_end(epoch + 1, net) or {}
                net.train()
                record.update(extra)
            log.info("epoch %d/%d: loss %.4f (ce %.4f, lovasz %.4f, negative %.4f), %.1f s, %.1f ms/step, %.0f points/s%s",
                     epoch + 1, cfg.epochs, record["loss"], record["ce"], record["lovasz"], record["negative"], secs,
                     record["ms_per_step"], record["points_per_s"],
                     "".join(f", {k} {v:.4f}" for k, v in record.items() if k.startswith("val_")))
            if writer is not None:
                for k, v in record.items():
                    if k == "loss" or k.startswith("val_"):
                        writer.add_scalar(f"epoch/{k}", v, epoch + 1)
                writer.flush()
            if epoch + 1 == cfg.epochs or time.perf_counter() - last_save >= cfg.checkpoint_every_s:
                _atomic_save({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": epoch + 1, "step": step,
                              "history": history, "model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                              "arch": model_cfg.to_dict()}, ckpt_path)
                last_save = time.perf_counter()
                if os.environ.get(KILL_ENV) == str(epoch + 1):
                    os.kill(os.getpid(), signal.SIGKILL)
        _barrier(d)
    if writer is not None:
        writer.close()
    net = _unwrap(model)
    net.eval()
    return TrainResult(net, cfg.epochs, step, time.perf_counter() - t_start, history, start_epoch, str(device), d.world,
                       count_parameters(net))


def throughput(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Operational speed of a training job from its epoch records: points/s and ms/step over the epochs
    after the first (the first pays spconv's kernel selection), or over the first when there is only
    one; ``points_per_step`` for comparing with the isolated step of bench/bench_train_gpu.py, and
    ``all_epochs_points_per_s`` with the first epoch included."""
    timed = list(history[1:]) or list(history[:1])
    secs = sum(h["seconds"] for h in timed)
    steps = (timed[-1]["steps"] - (history[0]["steps"] if len(history) > 1 else 0)) if timed else 0
    points = sum(h.get("points", 0) for h in timed)
    all_secs = sum(h["seconds"] for h in history)
    return {"epochs_timed": len(timed), "steps_timed": steps, "seconds_timed": secs,
            "points_per_s": points / secs if secs > 0 else None,
            "ms_per_step": 1000 * secs / steps if steps else None,
            "points_per_step": points / steps if steps else None,
            "all_epochs_points_per_s": sum(h.get("points", 0) for h in history) / all_secs if all_secs > 0 else None}


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


def run_training(spec: dict[str, Any]) -> dict[str, Any]:
    """One training job. ``spec`` keys: ``train`` (config section), ``label_space``, ``manifest``,
    ``round`` (int or 'full'), ``label_source`` ('pseudolabels' with ``stores`` {shard: path}, or
    'ground_truth' with ``shards``), ``temporal`` (optional {shard: temporal store}: their intermediate
    sweeps join the pseudo-labelled keyframes, ``train.temporal_sweeps`` per keyframe),
    ``steps_of_temporal`` (optional, keyframes only: as many steps as with the temporal sweeps,
    :func:`epochs_for_steps_of_temporal`), ``model``, ``metrics``, ``out_dir`` (checkpoint), ``tensorboard``,
    ``threads``. Returns the metrics (written by rank 0 only)."""
    from lidarlift.classes import label_space
    from lidarlift.manifest import Manifest
    from lidarlift.workflow import write_json

    space = label_space(spec["label_space"])
    cfg = TrainConfig.from_config(spec["train"], num_classes=space.num_classes)
    manifest = Manifest.from_json(spec["manifest"])
    if spec["label_source"] == "pseudolabels":
        refs = pseudolabel_refs(manifest, spec["stores"])
    elif spec["label_source"] == "ground_truth":
        refs = groundtruth_refs(manifest, spec["shards"])
    else:
        raise ValueError(f"unknown label source {spec['label_source']!r}")
    if not refs:
        raise TrainingDataError("no training keyframes: the train split has no shards")
    if spec.get("temporal"):
        if spec["label_source"] != "pseudolabels":
            raise ValueError("temporal labels join pseudo-label training only (label_source 'pseudolabels')")
        refs += temporal_refs(manifest, spec["temporal"], cfg.temporal_sweeps)
    elif spec.get("steps_of_temporal"):
        cfg.epochs = epochs_for_steps_of_temporal(cfg, manifest, refs)
    augment = AugmentConfig.from_config(cfg.augment)
    dataset = SweepDataset(manifest, refs, space.num_classes, augment=augment, seed=cfg.seed,
                           cache=cfg.cache, max_points=cfg.max_points)
    stats = check_supervision(dataset, cfg.unlabelled_shard_policy)
    result = train(cfg, dataset, spec["out_dir"], tensorboard_dir=spec.get("tensorboard"), label_counts=stats.label_counts,
                   data_fingerprint=_data_fingerprint(dataset), threads=spec.get("threads"))
    in_sync = _weights_in_sync(result.model)
    metrics: dict[str, Any] = {}
    if int(os.environ.get("RANK", "0")) == 0:
        metrics = {
            "kind": "train", "round": spec["round"], "label_source": spec["label_source"], "label_space": space.name,
            "classes": list(space.classes), "sweeps": len(dataset),
            "temporal_sweeps": sum(r.label_kind == "temporal" for r in dataset.refs), "points": stats.points,
            "labelled_points": stats.labelled, "candidate_points": stats.candidates,
            "skipped_shards": stats.skipped_shards, "epochs": result.epochs, "steps": result.steps,
            "seconds": result.seconds, "resumed_from_epoch": result.resumed_from_epoch, "device": result.device,
            "world_size": result.world_size, "parameters": result.parameters, "ddp_weights_in_sync": in_sync,
            "final_loss": result.history[-1]["loss"] if result.history else None,
            "first_epoch_loss": result.history[0]["loss"] if result.history else None,
            "history": result.history, "throughput": throughput(result.history),
        }
        save_model(result, cfg, spec["model"], label_space=space.name, classes=space.classes,
                   extra={"round": spec["round"], "label_source": spec["label_source"]})
        write_json(spec["metrics"], metrics)
    _barrier(Dist(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))))
    return metrics


def epochs_for_steps_of_temporal(cfg: TrainConfig, manifest: Any, refs: Sequence[Any]) -> int:
    """Epochs that give keyframe-only training (``refs``) as many optimizer steps as the same config takes
    with ``train.temporal_sweeps`` of each keyframe's intermediate sweeps beside it (rule train_keyframes
    with temporal.compare: steps): the config's epochs times the ratio of steps per epoch, rounded."""
    from lidarlift.model.data import evenly_spaced

    by_token = {s.token: s for s in manifest.samples}
    with_sweeps = sum(1 + len(evenly_spaced(len(by_token[r.token].intermediate_sweeps), cfg.temporal_sweeps)) for r in refs)
    per_epoch = (lambda n: -(-n // cfg.batch_size))  # noqa: E731
    return max(1, round(cfg.epochs * per_epoch(with_sweeps) / max(1, per_epoch(len(refs)))))


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


def train_job(spec: dict[str, Any], processes: int | None = None) -> None:
    """One ``train`` / ``train_full`` job: train in this process, or in ``processes`` DDP processes
    launched by torchrun (the spec travels as JSON next to the model). Lease GPUs before calling
    (:func:`lidarlift.gpu.job_gpus` with the job's Snakemake resource gpu): ``processes`` defaults to
    one rank per leased device (1 without a lease) and, with a lease, must equal that number, so a job
    given k GPUs runs k ranks, rank r on the r-th leased device."""
    import subprocess

    from lidarlift.gpu import job_devices

    leased = job_devices() or []
    if processes is None:
        processes = max(1, len(leased))
    if leased and processes != len(leased):
        raise ValueError(f"{processes} DDP processes for the {len(leased)} GPU(s) this job leased ({','.join(leased)}): "
                         "a training job runs one rank per leased device")
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
