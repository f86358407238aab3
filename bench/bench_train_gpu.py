"""Benchmark: lidarlift's training step in isolation AND a real training job, side by side.

1. Isolated step (``isolated``): a batch of 4 synthetic 32-beam sweeps of 35,000 points each (ray-cast
   street scenes, lidarlift.model.toyscene) with pseudo-label-like supervision (60% labelled, 35%
   candidate sets) already on the device; the network of config/gpu.yaml (UNet 32-64-128-256, 2 blocks)
   and its 1-block variant at 0.05 m and 0.1 m, fp32 (TF32) and AMP; the production loss (CE + Lovasz-softmax + negative-label
   loss), fused AdamW and GradScaler exactly as lidarlift.model.train builds them. Per configuration:
   the first step (spconv picks its kernels), ms per step (mean of an unsynchronised run; median / p90
   of individually synchronised steps), points/s, peak memory, and where the time goes: CUDA events
   between the phases (voxelize, encoder, decoder, head, loss, backward, optimizer; no sync between
   phases, so the step runs as in training) beside the host time to reach each mark (a host time far
   above the GPU time means the step waits for Python/launches), and the GPU-busy time per step (sum
   of kernel durations from torch.profiler) with the top kernels.
2. Loss alone (``loss``): SegmentationLoss forward + backward on one batch's logits, against the
   earlier formulation that scanned an (N, C) tensor along dim 0 (the 28 ms of bench/train_gpu.json).
3. Real job (``job``): ``python -m lidarlift.model.train SPEC`` (what the train rule runs) on a generated
   world of 35k-point sweeps with simulated pseudo-label stores, with config/gpu.yaml's train section
   (fewer epochs); its metrics.json ``throughput`` (epochs after the first) against the isolated
   step of the same network and precision: ``comparison.job_vs_isolated`` (goal >= 0.9).
4. Predict job (``predict_job``): the predict rule's code path in a fresh process, with the time to
   import torch, import the model code (spconv), initialise CUDA and predict one shard.
5. ``gpu_yaml_projection``: minutes per training job of config/gpu.yaml at the measured job throughput.

    python bench/bench_train_gpu.py                       # on CUDA: everything, writes bench/train_gpu.json
    python bench/bench_train_gpu.py --device cpu --quick  # smoke run anywhere (tiny sizes, always on a CPU; bench/out/)
    python bench/bench_train_gpu.py --voxels 0.05 --precisions amp --algos MaskImplicitGemm MaskSplitImplicitGemm

Every section runs in its own try block (a failure is recorded and the rest go on); configurations are
skipped once --budget-s is spent. Prints progress (flushed) and a table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lidarlift.model.losses import SegmentationLoss  # noqa: E402
from lidarlift.model.toyscene import make_sweep, simulated_pseudolabels  # noqa: E402
from lidarlift.model.train import TrainConfig, _optimizer, allow_tf32  # noqa: E402
from lidarlift.model.unet import UNetConfig, build_model, count_parameters, voxelize  # noqa: E402

T0 = time.perf_counter()
GOAL_MS = 30.0  # issue 13: <= 30 ms per step for 4 x 35k points at 0.05 m on an H100/H200 (AMP allowed)
GOAL_JOB_RATIO = 0.9  # issue 13: in-DAG training throughput >= 90% of the isolated figure
PHASES = ("voxelize", "encoder", "decoder", "head", "loss", "backward", "optimizer")


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "numpy": np.__version__}
    for dist in md.distributions():  # the CPU wheel or a CUDA one (spconv-cu126, cumm-cu126, ...)
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith(("spconv", "cumm")):
            out[name] = dist.version
    return out


def device_info(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"}
    p = torch.cuda.get_device_properties(device)
    info = {"device": torch.cuda.get_device_name(device), "gpu_memory_gb": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    return info


def gpu_train_config() -> dict:
    """The train section of config/gpu.yaml layered over config/config.yaml (what the GPU DAG trains with)."""
    import yaml

    from lidarlift.config import load_config

    cfg = load_config(ROOT / "config" / "config.yaml", yaml.safe_load((ROOT / "config" / "gpu.yaml").read_text()))
    return cfg


# ------------------------------------------------------------------------------------ isolated step

def make_batch(n_sweeps: int, points: int, beams: int, azimuths: int, device: torch.device, seed: int = 0) -> dict:
    """A batch on ``device``: points (P, 4), batch (P,), label (P,), candidate_mask (P,)."""
    pts, lab, cand, bidx = [], [], [], []
    for i in range(n_sweeps):
        sw = make_sweep(seed + i, beams=beams, azimuths=azimuths, max_points=points)
        label, candidates, _ = simulated_pseudolabels(sw.label, seed=seed + i, labelled_share=0.6, candidate_share=0.35)
        pts.append(sw.points)
        lab.append(label.astype(np.int64))
        cand.append(candidates.astype(np.int64))
        bidx.append(np.full(len(sw.points), i, np.int64))
    t = [torch.from_numpy(np.concatenate(a)).to(device) for a in (pts, bidx, lab, cand)]
    return {"points": t[0], "batch": t[1], "label": t[2], "candidate_mask": t[3], "batch_size": n_sweeps}


def timed_ms(fn, repeats: int, sync) -> tuple[float, object]:
    """Mean ms of ``repeats`` back-to-back calls of ``fn`` (synchronised before and after, not between)
    and the last call's result."""
    sync()
    t = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    sync()
    return (time.perf_counter() - t) * 1000 / repeats, result


class Marks:
    """CUDA events (no sync) and host timestamps at the phase boundaries of one step."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.events: list[tuple[str, object, float]] = []

    def __call__(self, phase: str) -> None:
        ev = None
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
        self.events.append((phase, ev, time.perf_counter()))

    def phases(self) -> tuple[dict, dict]:
        """(GPU ms, host ms) between consecutive marks, by phase (after the step's final sync)."""
        gpu, host = {}, {}
        for (_, ev0, t0), (name, ev1, t1) in zip(self.events, self.events[1:]):
            host[name] = (t1 - t0) * 1000
            if self.cuda:
                gpu[name] = ev0.elapsed_time(ev1)
        return gpu, host


def run_isolated(name: str, cfg: UNetConfig, amp: bool, batch: dict, device: torch.device, steps: int, warmup: int,
                 profile: bool, algo: str | None) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    if algo:
        from spconv.core import ConvAlgo

        for m in model.modules():
            if hasattr(m, "algo"):
                m.algo = getattr(ConvAlgo, algo)
    crit = SegmentationLoss.from_config(cfg.num_classes, {"class_weights": [1.0] * cfg.num_classes}).to(device)
    opt = _optimizer(TrainConfig.from_config({"lr": 1e-3}, num_classes=cfg.num_classes), model, device)
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(mark=None):
        mark = mark or (lambda p: None)
        mark("start")
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            logits, _ = model(batch["points"], batch["batch"], batch["batch_size"], mark=mark)
        terms = crit(logits, batch["label"], batch["candidate_mask"])
        mark("loss")
        opt.zero_grad(set_to_none=True)
        scaler.scale(terms.total).backward()
        mark("backward")
        scaler.step(opt)
        scaler.update()
        mark("optimizer")
        return terms.total

    with torch.no_grad():
        n_voxels = int(len(voxelize(batch["points"], batch["batch"], batch["batch_size"], cfg).coords))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    t = time.perf_counter()
    loss0 = float(step().detach())
    sync()
    first_ms = (time.perf_counter() - t) * 1000
    say(f"  {name}: first step {first_ms:.0f} ms ({n_voxels} voxels, loss {loss0:.3f})")
    for _ in range(warmup):
        step()
    mean_ms, last = timed_ms(step, steps, sync)
    per_step, gpu_ph, host_ph = [], {}, {}
    n_marked = max(3, steps // 2)
    for _ in range(n_marked):
        marks = Marks(device)
        t = time.perf_counter()
        step(marks)
        sync()
        per_step.append((time.perf_counter() - t) * 1000)
        g, h = marks.phases()
        for k, v in g.items():
            gpu_ph[k] = gpu_ph.get(k, 0.0) + v / n_marked
        for k, v in h.items():
            host_ph[k] = host_ph.get(k, 0.0) + v / n_marked
    points = int(len(batch["points"]))
    res = {
        "name": name, "voxel_size": cfg.voxel_size, "precision": "amp" if use_amp else ("fp32 (TF32)" if device.type == "cuda" else "fp32"),
        "algo": algo or "spconv default", "channels": list(cfg.channels), "blocks": cfg.blocks,
        "parameters": count_parameters(model), "sweeps": batch["batch_size"], "points": points, "voxels": n_voxels,
        "first_step_ms": round(first_ms, 1), "ms_per_step": round(mean_ms, 2),
        "points_per_s": round(points / (mean_ms / 1000)),
        "median_ms": round(float(np.median(per_step)), 2), "p90_ms": round(float(np.percentile(per_step, 90)), 2),
        "gpu_phase_ms": {k: round(gpu_ph[k], 2) for k in PHASES if k in gpu_ph},
        "host_phase_ms": {k: round(host_ph[k], 2) for k in PHASES if k in host_ph},
        "final_loss": float(last.detach()), "loss_finite": bool(torch.isfinite(last.detach()).item()),
    }
    if device.type == "cuda":
        res["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    if profile:
        try:
            res.update(profile_kernels(step, device))
        except Exception as e:  # noqa: BLE001 - the profile is extra; keep the timings
            res["profile_error"] = f"{type(e).__name__}: {e}"
    return res


def profile_kernels(step, device: torch.device, steps: int = 5, top: int = 15) -> dict:
    """GPU-busy ms per step (sum of kernel durations, each kernel once) and the top kernels; on the CPU
    the top operators by self CPU time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    by_name: dict[str, list[float]] = {}
    if device.type == "cuda":
        for e in prof.events():
            if e.device_type == DeviceType.CUDA:
                by_name.setdefault(e.name, []).append(e.time_range.elapsed_us())
    else:
        for e in prof.key_averages():
            if e.self_cpu_time_total > 0:
                by_name[e.key] = [e.self_cpu_time_total]
    total = sum(sum(v) for v in by_name.values())
    rows = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {"busy_ms_per_step": round(total / 1000 / steps, 2),
            "top_kernels": [{"name": k[:110], "ms_per_step": round(sum(v) / 1000 / steps, 3),
                             "share": round(sum(v) / max(total, 1e-9), 4), "calls_per_step": round(len(v) / steps, 1)}
                            for k, v in rows]}


# ------------------------------------------------------------------------------------------ the loss

def _lovasz_dim0_scan(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The formulation before issue 13 (for comparison only): present classes as (N, C) columns, every
    running sum a scan along dim 0, boolean indexing and torch.unique (host syncs)."""
    present = torch.unique(target)
    fg = (target.unsqueeze(1) == present.unsqueeze(0)).to(probs.dtype)
    errors = (fg - probs[:, present]).abs()
    errors_sorted, perm = torch.sort(errors, 0, descending=True)
    fg_sorted = torch.gather(fg, 0, perm)
    gts = fg_sorted.sum(0, keepdim=True)
    jaccard = 1.0 - (gts - fg_sorted.cumsum(0)) / (gts + (1.0 - fg_sorted).cumsum(0))
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], 0)
    return (errors_sorted * grad).sum(0).mean()


def bench_loss(batch: dict, num_classes: int, device: torch.device, repeats: int) -> dict:
    """ms of SegmentationLoss forward + backward on one batch's logits, and of the dim-0-scan Lovasz it
    replaced (forward + backward of the Lovasz term alone, labelled points only)."""
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(len(batch["points"]), num_classes, device=device, generator=g, requires_grad=True)
    crit = SegmentationLoss.from_config(num_classes, {"class_weights": [1.0] * num_classes}).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    lab = batch["label"] > 0

    def new():
        t = crit(logits, batch["label"], batch["candidate_mask"])
        t.total.backward()
        return t.lovasz

    def new_lovasz_only():
        from lidarlift.model.losses import lovasz_softmax

        v = lovasz_softmax(torch.softmax(logits, 1), (batch["label"] - 1).clamp(min=0), lab)
        v.backward()
        return v

    def old_lovasz_only():
        v = _lovasz_dim0_scan(torch.softmax(logits[lab], 1), batch["label"][lab] - 1)
        v.backward()
        return v

    out = {"points": int(len(logits)), "classes": num_classes}
    for name, fn in (("segmentation_loss_ms", new), ("lovasz_ms", new_lovasz_only), ("lovasz_dim0_scan_ms", old_lovasz_only)):
        fn()
        ms, v = timed_ms(fn, repeats, sync)
        out[name] = round(ms, 3)
        out[name.replace("_ms", "_value")] = float(v.detach())
    return out


# ------------------------------------------------------------------------------------------ real job

def write_job_world(root: Path, scenes: int, sweeps: int, points: int, beams: int, azimuths: int) -> dict:
    """A toy world of ``scenes`` x ``sweeps`` sweeps (nuScenes files + lidarseg truth) and simulated
    pseudo-label stores for every scene; returns the paths a train spec needs."""
    from lidarlift.groundtruth import point_truth
    from lidarlift.model.toyscene import write_pseudolabel_store, write_toy_world

    names = [f"scene-{i:04d}" for i in range(1, scenes + 1)]
    manifest = write_toy_world(root / "world", [(n, "train") for n in names], sweeps_per_scene=sweeps,
                               beams=beams, azimuths=azimuths, max_points=points)
    stores = {}
    for shard in names:
        arrays = [simulated_pseudolabels(point_truth(manifest, s).label, seed=i, labelled_share=0.6, candidate_share=0.35)
                  for i, s in enumerate(manifest.shard_samples(shard))]
        stores[shard] = str(root / "pseudolabels" / f"{shard}.zarr")
        write_pseudolabel_store(stores[shard], manifest, shard, arrays)
    return {"manifest": str(root / "world" / "manifest.json"), "stores": stores, "shards": names,
            "sweeps": scenes * sweeps}


def run_job(world: dict, train: dict, root: Path, device: torch.device, timeout: float) -> dict:
    """One training job in a fresh process (``python -m lidarlift.model.train SPEC``, as the train rule
    and torchrun run it); returns its metrics' operational part and the process wall time."""
    out = root / "job"
    out.mkdir(parents=True, exist_ok=True)
    spec = {"train": train, "label_space": "nuscenes16", "manifest": world["manifest"], "round": 0,
            "label_source": "pseudolabels", "stores": world["stores"], "shards": world["shards"],
            "model": str(out / "model.pt"), "metrics": str(out / "metrics.json"), "out_dir": str(out),
            "tensorboard": None, "threads": 1 if device.type == "cpu" else 2}
    (out / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lidarlift.model.train", str(out / "spec.json")], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"training job failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    epochs = [{k: h.get(k) for k in ("epoch", "seconds", "ms_per_step", "points_per_s", "loss")} for h in m["history"]]
    return {"process_wall_s": round(wall, 2), "train_seconds": round(m["seconds"], 2), "device": m["device"],
            "sweeps": m["sweeps"], "epochs": m["epochs"], "steps": m["steps"], "throughput": m["throughput"],
            "epoch_records": epochs, "model": str(out / "model.pt"), "final_loss": m["final_loss"],
            "first_epoch_loss": m["first_epoch_loss"]}


PREDICT_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t_torch = time.perf_counter()
from lidarlift.model.predict import predict_job
t_model_code = time.perf_counter()
if torch.cuda.is_available():
    torch.zeros(1, device="cuda"); torch.cuda.synchronize()
t_cuda = time.perf_counter()
a = json.loads(sys.argv[1])
m = predict_job(a["model"], a["manifest"], a["shard"], a["out"], round=0, label_space="nuscenes16", metrics_path=a["metrics"],
                model_config=a["model_config"], device=a["device"], batch_size=a["batch_size"], amp=a["amp"], threads=1)
t_end = time.perf_counter()
print(json.dumps({"import_torch_s": t_torch - t0, "import_model_code_s": t_model_code - t_torch, "cuda_init_s": t_cuda - t_model_code,
                  "predict_shard_s": m["seconds"], "points": m["points"], "sweeps": m["sweeps"], "in_process_s": t_end - t0}))
"""


def run_predict_job(world: dict, job: dict, train: dict, root: Path, device: torch.device) -> dict:
    """The predict rule's code path in a fresh process, timed by phase (the Snakemake wrapper not included)."""
    args = {"model": job["model"], "manifest": world["manifest"], "shard": world["shards"][0], "out": str(root / "predict.zarr"),
            "metrics": str(root / "predict.json"), "model_config": train["model"], "device": "cuda" if device.type == "cuda" else "cpu",
            "batch_size": int(train["predict_batch_size"]), "amp": bool(train["amp"])}
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PREDICT_PROBE, json.dumps(args)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"predict job failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}
    out["process_wall_s"] = round(wall, 2)
    return out


def gpu_yaml_projection(job_points_per_s: float | None, points_per_keyframe: int = 34_000) -> dict:
    """Minutes per training job of config/gpu.yaml (train split keyframes x epochs) at a throughput."""
    from lidarlift.model.layout import train_layout
    from lidarlift.shards import list_shards

    cfg = gpu_train_config()
    layout = train_layout(cfg, list_shards(cfg))
    keyframes = len(layout.train_shards) * cfg["synth"]["samples_per_scene"]
    points = keyframes * points_per_keyframe * cfg["train"]["epochs"]
    return {"train_keyframes": keyframes, "points_per_keyframe_assumed": points_per_keyframe, "epochs": cfg["train"]["epochs"],
            "points_per_job": points, "job_points_per_s": job_points_per_s,
            "minutes_per_job": round(points / job_points_per_s / 60, 2) if job_points_per_s else None, "goal_minutes": 10}


# -------------------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (CPU tests use it)")
    ap.add_argument("--voxels", type=float, nargs="+")
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "amp"])
    ap.add_argument("--blocks", type=int, nargs="+")
    ap.add_argument("--algos", nargs="+", help="spconv ConvAlgo names for the goal configuration (default: spconv's choice)")
    ap.add_argument("--sweeps", type=int, help="sweeps per batch")
    ap.add_argument("--points", type=int, help="points per sweep")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--job-epochs", type=int, help="epochs of the real training job")
    ap.add_argument("--job-scenes", type=int, help="scenes (of 8 sweeps) of the real job's world")
    ap.add_argument("--no-job", action="store_true")
    ap.add_argument("--budget-s", type=float, default=240.0, help="skip isolated configurations once this much time is spent")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    if a.device == "cuda" and not cuda:
        say("--device cuda: torch sees no GPU")
        return 2
    device = torch.device("cuda" if (cuda and a.device != "cpu") else "cpu")
    quick = a.quick or device.type == "cpu"  # the full sizes take hours on a CPU (make bench runs this file)
    out_path = a.out or (ROOT / "bench" / ("train_gpu.json" if device.type == "cuda" and not quick else "out/train_gpu_cpu.json"))
    gpu_cfg = gpu_train_config()["train"]
    net = gpu_cfg["model"]
    if device.type == "cuda":
        allow_tf32()
    else:
        torch.set_num_threads(1)  # spconv's CPU kernels run single-threaded (spconv#679)
    voxels = a.voxels or ([0.4] if quick else [0.05, 0.1])
    precisions = a.precisions or (["fp32"] if device.type == "cpu" else ["fp32", "amp"])
    blocks = a.blocks or ([1] if quick else sorted({net["blocks"], 1}, reverse=True))  # gpu.yaml's network, and 1 block
    channels = (8, 16, 32) if quick else tuple(net["channels"])
    sweeps = a.sweeps or (2 if quick else 4)
    points = a.points or (3000 if quick else 35_000)
    steps = a.steps or (2 if quick else 30)
    warmup = 1 if quick else 5
    info = device_info(device)
    say(f"{'quick' if quick else 'full'} run on {info['device']}; torch {torch.__version__} (CUDA {torch.version.cuda})")
    batch = make_batch(sweeps, points, beams=16 if quick else 32, azimuths=400 if quick else 1400, device=device)
    say(f"batch: {len(batch['points'])} points in {sweeps} sweeps, labelled {(batch['label'] > 0).float().mean():.2f}")

    isolated, skipped = [], []
    goal_amp = "amp" if "amp" in precisions else precisions[0]
    # gpu.yaml's network first, then other spconv algorithms for the goal configuration, then the rest
    configs = [(blocks[0], v, p, None) for v in voxels for p in precisions]
    configs += [(blocks[0], voxels[0], goal_amp, algo) for algo in (a.algos or [])]
    configs += [(b, v, p, None) for b in blocks[1:] for v in voxels for p in precisions]
    for b, v, p, algo in configs:
        name = f"unet{'-'.join(map(str, channels))}-b{b} voxel {v} {p}" + (f" {algo}" if algo else "")
        if time.perf_counter() - T0 > a.budget_s:
            skipped.append(name)
            say(f"skip {name}: budget of {a.budget_s:.0f} s spent")
            continue
        say(f"config {name}")
        cfg = UNetConfig.from_config({"channels": list(channels), "blocks": b, "voxel_size": v}, num_classes=16)
        try:
            isolated.append(run_isolated(name, cfg, p == "amp", batch, device, steps, warmup,
                                         profile=(b, v, p, algo) == (blocks[0], voxels[0], goal_amp, None), algo=algo))
            r = isolated[-1]
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the configuration's network and optimizer are gone with its frame
            say(f"  {name}: {r['ms_per_step']:.1f} ms/step ({r['points_per_s'] / 1e6:.2f} M points/s; median {r['median_ms']:.1f}, "
                f"p90 {r['p90_ms']:.1f}); GPU {r['gpu_phase_ms']}; host {r['host_phase_ms']}"
                + (f"; GPU busy {r['busy_ms_per_step']} ms" if "busy_ms_per_step" in r else ""))
        except Exception as e:  # noqa: BLE001 - record and go on
            isolated.append({"name": name, "voxel_size": v, "precision": p, "blocks": b, "algo": algo,
                             "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]})
            say(f"  {name}: FAILED {type(e).__name__}: {e}")
            if device.type == "cuda":
                torch.cuda.empty_cache()

    loss = None
    try:
        loss = bench_loss(batch, 16, device, repeats=3 if quick else 20)
        say(f"loss alone: {loss}")
    except Exception as e:  # noqa: BLE001
        loss = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        say(f"loss bench FAILED {e}")

    job = predict = None
    job_train = None
    if not a.no_job:
        with tempfile.TemporaryDirectory(prefix="bench_train_job_") as tmp:
            root = Path(tmp)
            try:
                scenes = a.job_scenes or (2 if quick else 6)
                world = write_job_world(root, scenes, 2 if quick else 8, points, beams=16 if quick else 32,
                                        azimuths=400 if quick else 1400)
                say(f"job world: {world['sweeps']} sweeps of <= {points} points")
                job_train = dict(gpu_cfg, epochs=a.job_epochs or (2 if quick else 6), checkpoint_every_s=gpu_cfg["checkpoint_every_s"])
                if quick:
                    job_train.update(model=dict(net, channels=list(channels), blocks=1, voxel_size=voxels[0]), batch_size=sweeps)
                job_train["device"] = "cuda" if device.type == "cuda" else "cpu"
                job = run_job(world, job_train, root, device, timeout=120 if quick else 420)
                say(f"job: {job['throughput']}; process {job['process_wall_s']} s")
            except Exception as e:  # noqa: BLE001
                job = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
                say(f"job FAILED {e}")
            if job and "error" not in job:
                try:
                    predict = run_predict_job(world, job, job_train, root, device)
                    say(f"predict job: {predict}")
                except Exception as e:  # noqa: BLE001
                    predict = {"error": f"{type(e).__name__}: {e}"}
                    say(f"predict job FAILED {e}")

    # the job against the isolated step of the same network, voxel size and precision
    comparison = None
    if job and "error" not in job and job_train:
        want = (job_train["model"]["voxel_size"], job_train["model"]["blocks"],
                ("amp" if job_train["amp"] and device.type == "cuda" else "fp32"))
        same = [r for r in isolated if "ms_per_step" in r and (r["voxel_size"], r["blocks"], r["precision"].split()[0]) == want
                and r["algo"] == "spconv default"]
        if same:
            iso = same[0]
            jp = job["throughput"]["points_per_s"]
            comparison = {"isolated": iso["name"], "isolated_points_per_s": iso["points_per_s"],
                          "isolated_ms_per_step": iso["ms_per_step"], "job_points_per_s": round(jp) if jp else None,
                          "job_ms_per_step": job["throughput"]["ms_per_step"],
                          "job_points_per_step": job["throughput"]["points_per_step"],
                          "job_vs_isolated": round(jp / iso["points_per_s"], 3) if jp else None, "goal": GOAL_JOB_RATIO}
    goal_rows = [r for r in isolated if r.get("voxel_size") == 0.05 and str(r.get("precision", "")).startswith(("amp", "fp32"))
                 and "ms_per_step" in r and r.get("sweeps") == 4 and r.get("points", 0) >= 4 * 34_000]
    best = min((r["ms_per_step"] for r in goal_rows), default=None)
    payload = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": platform.node(), **info,
        "versions": versions(), "mode": "quick" if quick else "full",
        "settings": {"sweeps": sweeps, "points_per_sweep": points, "channels": list(channels), "blocks": blocks, "voxels": voxels,
                     "precisions": precisions, "algos": a.algos, "steps": steps, "warmup": warmup, "optimizer": "AdamW (fused on CUDA)",
                     "loss": "CE + Lovasz-softmax + negative-label loss (class weights)",
                     "supervision": "60% labelled, 35% candidate sets of 3 classes"},
        "goal": {"ms_per_step": GOAL_MS, "config": "voxel 0.05 m, batch 4 x 35k points, fp32 or AMP", "best_ms": best,
                 "met": (best is not None and best <= GOAL_MS) if device.type == "cuda" and not quick else None},
        "isolated": isolated, "skipped": skipped, "loss": loss, "job": job, "predict_job": predict, "comparison": comparison,
        "gpu_yaml_projection": gpu_yaml_projection(job["throughput"]["points_per_s"] if job and "error" not in job else None)
        if not quick else None,
        "seconds": round(time.perf_counter() - T0, 1),
        "notes": ("ms_per_step: mean of an unsynchronised run of `steps` steps; median/p90: individually synchronised steps; "
                  "gpu_phase_ms: CUDA events between phase marks (no sync between phases); host_phase_ms: host time to reach "
                  "each mark (includes spconv's own syncs); busy_ms_per_step: sum of kernel durations; job throughput: "
                  "epochs after the first of a real `python -m lidarlift.model.train` job (data path, loss read-back, "
                  "checkpoints included)"),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(payload, indent=2))
    print()
    print(f"{'isolated step':52s} {'voxels':>8s} {'first ms':>9s} {'ms/step':>8s} {'median':>7s} {'Mpts/s':>7s} {'busy ms':>8s}")
    for r in isolated:
        if "error" in r:
            print(f"{r['name']:52s} FAILED {r['error'][:60]}")
            continue
        print(f"{r['name']:52s} {r['voxels']:8d} {r['first_step_ms']:9.0f} {r['ms_per_step']:8.1f} {r['median_ms']:7.1f} "
              f"{r['points_per_s'] / 1e6:7.2f} {r.get('busy_ms_per_step', float('nan')):8.1f}")
    if loss and "error" not in loss:
        print(f"loss alone ({loss['points']} points): SegmentationLoss {loss['segmentation_loss_ms']} ms; Lovasz {loss['lovasz_ms']} ms "
              f"vs the dim-0 scan {loss['lovasz_dim0_scan_ms']} ms")
    if comparison:
        print(f"real job: {comparison['job_points_per_s'] / 1e6:.2f} M points/s ({comparison['job_ms_per_step']:.1f} ms/step) vs isolated "
              f"{comparison['isolated_points_per_s'] / 1e6:.2f} M points/s: {comparison['job_vs_isolated']:.2f} (goal {GOAL_JOB_RATIO})")
    if payload["gpu_yaml_projection"]:
        print(f"config/gpu.yaml training job: {payload['gpu_yaml_projection']['minutes_per_job']} min at the job's throughput (goal 10)")
    if predict and "error" not in predict:
        print(f"predict job: {predict}")
    say(f"wrote {out_path}")
    failed = any("error" in r for r in isolated) or (job is not None and "error" in job) or (loss is not None and "error" in loss)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
