"""Network predictions for every keyframe point of a shard: the ``predict`` store (logits, features,
argmax) that the next E-step and the evaluation read, and the job's stats (points, seconds, device;
quality is measured by :mod:`lidarlift.evaluate`)."""
from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from typing import Any, Sequence

import numpy as np
import torch

from lidarlift.model.unet import SparseUNet

log = logging.getLogger("lidarlift.model.predict")


@torch.no_grad()
def predict_points(model: SparseUNet, sweeps: Sequence[np.ndarray], device: torch.device | str = "cpu",
                   amp: bool = False) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Run the network on a batch of sweeps (one forward pass).

    sweeps: each (N_i, 4) float32 x, y, z, intensity in the lidar frame. Returns per sweep the store's
    arrays: logits (N_i, K) float16 for classes 1..K, features (N_i, F) float16, and pred (N_i,) uint8
    class 1..K, the argmax of the float16 logits (so it agrees with the stored logits). The casts and
    the argmax run on the device: half the bytes cross to the host and nothing is recomputed there.
    """
    device = torch.device(device)
    model.eval()
    counts = [len(s) for s in sweeps]
    points = torch.from_numpy(np.concatenate(sweeps).astype(np.float32, copy=False)).to(device, non_blocking=True)
    batch = torch.cat([torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(counts)])
    ctx = torch.autocast("cuda", dtype=torch.float16) if (amp and device.type == "cuda") else nullcontext()
    with ctx:
        logits, features = model(points, batch, len(sweeps))
    logits, features = logits.half(), features.half()
    pred = (logits.argmax(1) + 1).to(torch.uint8)
    logits, features, pred = logits.cpu().numpy(), features.cpu().numpy(), pred.cpu().numpy()
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [(logits[a:b], features[a:b], pred[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def predict_shard(model_path: str | os.PathLike, manifest_path: str | os.PathLike, shard: str,
                  out_path: str | os.PathLike, *, round: int | str, label_space: str,
                  metrics_path: str | os.PathLike | None = None, expect_arch: dict[str, Any] | None = None,
                  device: str = "auto", batch_size: int = 4, amp: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Predict every keyframe of ``shard`` into ``out_path`` (the ``predict`` store); returns the stats
    (also written to ``metrics_path``): split, points, seconds, device."""
    from lidarlift.artifacts import offsets_from_counts, put, write_store
    from lidarlift.classes import label_space as get_space
    from lidarlift.datasets.readers import read_lidar
    from lidarlift.gpu import torch_device
    from lidarlift.manifest import Manifest
    from lidarlift.model.train import load_model
    from lidarlift.workflow import write_json

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    space = get_space(label_space)
    model, meta = load_model(model_path, expect=expect_arch, num_classes=space.num_classes)
    dev = torch_device(device, key="train.device")  # the GPU this job leased, else the CPU (lidarlift.gpu)
    model.to(dev)
    manifest = Manifest.from_json(manifest_path)
    samples = manifest.shard_samples(shard)
    k, f = model.cfg.num_classes, model.cfg.feature_dim
    sweeps = [read_lidar(manifest.resolve(s.lidar.path), s.lidar.fmt, sample=s.token) for s in samples]
    counts = [len(p) for p in sweeps]
    bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    logits = np.empty((bounds[-1], k), np.float16)
    features = np.empty((bounds[-1], f), np.float16)
    pred = np.empty(bounds[-1], np.uint8)
    t_read = time.perf_counter()
    step = max(1, batch_size)
    for i in range(0, len(samples), step):
        for j, (lg, ft, pr) in enumerate(predict_points(model, sweeps[i: i + step], dev, amp=amp), start=i):
            logits[bounds[j]: bounds[j + 1]], features[bounds[j]: bounds[j + 1]], pred[bounds[j]: bounds[j + 1]] = lg, ft, pr
    t_forward = time.perf_counter()
    params = {"round": round, "model": str(model_path), "label_space": space.name, "classes": list(space.classes),
              "feature_dim": f, "arch": meta.get("arch")}
    with write_store(out_path, "predict", shard=shard, sample_tokens=[s.token for s in samples], params=params) as g:
        put(g, "point_offsets", offsets_from_counts(counts))
        put(g, "logits", logits)
        put(g, "features", features)
        put(g, "pred", pred)
    seconds = time.perf_counter() - t0
    metrics = {"kind": "predict", "round": round, "shard": shard, "split": manifest.split_of(shard),
               "classes": list(space.classes), "sweeps": len(samples), "points": int(sum(counts)),
               "seconds": seconds, "device": str(dev)}
    log.info("predicted %d sweeps (%d points) of %s in %.2f s on %s (model and sweeps %.2f s, forward %.2f s, store %.2f s)",
             len(samples), sum(counts), shard, seconds, dev, t_read - t0, t_forward - t_read, time.perf_counter() - t_forward)
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return metrics


def predict_job(model_path: str | os.PathLike, manifest_path: str | os.PathLike, shard: str, out_path: str | os.PathLike, *,
                round: int | str, label_space: str, metrics_path: str | os.PathLike,
                model_config: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """One ``predict`` / ``predict_full`` job (lease a GPU before calling, see
    :func:`lidarlift.gpu.job_gpus`; without a lease it runs on the CPU). ``model_config`` (the ``train.model`` config
    section) makes a model of another architecture an error."""
    from lidarlift.classes import label_space as get_space

    expect = None
    if model_config is not None:
        expect = {**model_config, "num_classes": get_space(label_space).num_classes}
    return predict_shard(model_path, manifest_path, shard, out_path, round=round, label_space=label_space,
                         metrics_path=metrics_path, expect_arch=expect, **kw)
