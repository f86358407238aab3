"""Network predictions for every keyframe point of a shard: the ``predict`` store (logits, features,
argmax) that the next E-step reads, and per-shard metrics (confusion against ground truth where the
dataset has it, so the summary can sum counts per split before taking mIoU)."""
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
                   amp: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Run the network on a batch of sweeps.

    sweeps: each (N_i, 4) float32 x, y, z, intensity in the lidar frame. Returns per sweep
    (logits (N_i, K) float32 for classes 1..K, features (N_i, F) float32).
    """
    device = torch.device(device)
    model.eval()
    counts = [len(s) for s in sweeps]
    points = torch.from_numpy(np.concatenate(sweeps).astype(np.float32)).to(device)
    batch = torch.repeat_interleave(torch.arange(len(sweeps)), torch.tensor(counts)).to(device)
    ctx = torch.autocast("cuda", dtype=torch.float16) if (amp and device.type == "cuda") else nullcontext()
    with ctx:
        logits, features = model(points, batch, len(sweeps))
    logits, features = logits.float().cpu().numpy(), features.float().cpu().numpy()
    out, a = [], 0
    for n in counts:
        out.append((logits[a: a + n], features[a: a + n]))
        a += n
    return out


def predict_shard(model_path: str | os.PathLike, manifest_path: str | os.PathLike, shard: str,
                  out_path: str | os.PathLike, *, round: int | str, label_space: str,
                  metrics_path: str | os.PathLike | None = None, expect_arch: dict[str, Any] | None = None,
                  device: str = "auto", batch_size: int = 4, amp: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Predict every keyframe of ``shard`` into ``out_path`` (the ``predict`` store); returns the metrics
    (also written to ``metrics_path``): split, points, seconds and, where the dataset has ground
    truth, the (K+1, K+1) confusion of the argmax against it."""
    from lidarlift.artifacts import offsets_from_counts, put, write_store
    from lidarlift.classes import label_space as get_space
    from lidarlift.datasets.readers import read_lidar
    from lidarlift.groundtruth import point_truth
    from lidarlift.manifest import Manifest
    from lidarlift.model.scores import confusion
    from lidarlift.model.train import load_model
    from lidarlift.workflow import write_json

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    space = get_space(label_space)
    model, meta = load_model(model_path, expect=expect_arch, num_classes=space.num_classes)
    dev = torch.device("cuda" if (device in ("auto", "cuda") and torch.cuda.is_available()) else "cpu")
    model.to(dev)
    manifest = Manifest.from_json(manifest_path)
    samples = manifest.shard_samples(shard)
    k, f = model.cfg.num_classes, model.cfg.feature_dim
    logits_all, feats_all, counts = [], [], []
    cm = np.zeros((k + 1, k + 1), np.int64)
    has_truth = True
    for i in range(0, len(samples), max(1, batch_size)):
        chunk = samples[i: i + batch_size]
        sweeps = [read_lidar(manifest.resolve(s.lidar.path), s.lidar.fmt, sample=s.token) for s in chunk]
        for s, pts, (lg, ft) in zip(chunk, sweeps, predict_points(model, sweeps, dev, amp=amp)):
            logits_all.append(lg.astype(np.float16))
            feats_all.append(ft.astype(np.float16))
            counts.append(len(pts))
            if has_truth:
                truth = point_truth(manifest, s)
                if truth is None:
                    has_truth = False
                else:
                    cm += confusion(truth.label, lg.argmax(1) + 1, k)
    logits = np.concatenate(logits_all) if logits_all else np.zeros((0, k), np.float16)
    features = np.concatenate(feats_all) if feats_all else np.zeros((0, f), np.float16)
    pred = (logits.astype(np.float32).argmax(1) + 1).astype(np.uint8) if len(logits) else np.zeros(0, np.uint8)
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
               "seconds": seconds, "device": str(dev), "confusion": cm.tolist() if has_truth else None}
    log.info("predicted %d sweeps (%d points) of %s in %.2f s on %s", len(samples), sum(counts), shard, seconds, dev)
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return metrics


def predict_job(model_path: str | os.PathLike, manifest_path: str | os.PathLike, shard: str, out_path: str | os.PathLike, *,
                round: int | str, label_space: str, metrics_path: str | os.PathLike,
                model_config: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """One ``predict`` / ``predict_full`` job (lease a GPU before calling, see
    :func:`lidarlift.model.devices.leased_gpus`). ``model_config`` (the ``train.model`` config
    section) makes a model of another architecture an error."""
    from lidarlift.classes import label_space as get_space

    expect = None
    if model_config is not None:
        expect = {**model_config, "num_classes": get_space(label_space).num_classes}
    return predict_shard(model_path, manifest_path, shard, out_path, round=round, label_space=label_space,
                         metrics_path=metrics_path, expect_arch=expect, **kw)
