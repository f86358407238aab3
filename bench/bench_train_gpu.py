"""Benchmark: one training step of lidarlift's sparse UNet (spconv) on a batch of nuScenes-size sweeps.

On CUDA ("full"): a batch of 4 synthetic 32-beam sweeps of 35,000 points each (ray-cast street scenes,
lidarlift.model.toyscene, no dataset needed) with pseudo-label-like supervision (60% labelled, 35%
candidate sets), the 4-level UNet 32-64-128-256 (1 and 2 residual blocks per level), voxel 0.05 m
and 0.1 m, fp32 and AMP (fp16 autocast + GradScaler), AdamW; the loss is CE + Lovasz-softmax +
negative-label loss, as in training. Per configuration: the first step (spconv picks its kernels),
warm-up steps, then timed steps (ms per step: mean over a synchronised run and median / p90 of
individually synchronised steps), peak memory, and a breakdown of where the time goes (each phase
synchronised: host-to-device copy, voxelize, encoder, decoder, point head, loss, backward, optimizer);
for the goal configuration (0.05 m, AMP) also the top CUDA kernels from torch.profiler.
On CPU ("tiny"): the same code path on 2 small sweeps (a smoke run).

Prints progress (flushed) and a table; writes bench/out/train_gpu.json (GPU model, versions, date).
Each configuration runs in its own try block: a failure is recorded and the rest go on; configurations
are skipped once --budget-s is spent (the full run takes about 2-4 minutes on one H100).

    python bench/bench_train_gpu.py                   # full on CUDA, tiny on CPU
    python bench/bench_train_gpu.py --mode tiny       # smoke run anywhere
    python bench/bench_train_gpu.py --voxels 0.05 --precisions amp --steps 50
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lidarlift.model.losses import SegmentationLoss  # noqa: E402
from lidarlift.model.toyscene import make_sweep, simulated_pseudolabels  # noqa: E402
from lidarlift.model.unet import UNetConfig, build_model, count_parameters, voxelize  # noqa: E402

T0 = time.perf_counter()
OUT = ROOT / "bench" / "out" / "train_gpu.json"
GOAL_MS = 30.0  # issue #6: <= 30 ms per step on an H100 at 0.05 m with AMP


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "numpy": np.__version__}
    import importlib.metadata as md

    for mod in ("spconv", "cumm"):  # the CPU wheel or a CUDA one (spconv-cu126, cumm-cu126, ...)
        try:
            names = {d.metadata["Name"] for d in md.distributions() if (d.metadata["Name"] or "").lower().startswith(mod)}
            out[mod] = {n: md.version(n) for n in sorted(names)}
        except Exception as e:  # noqa: BLE001 - versions are informative only
            out[mod] = f"unknown ({e})"
    return out


def gpu_info() -> dict:
    if not torch.cuda.is_available():
        return {"device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)", "gpu_memory_gb": None}
    p = torch.cuda.get_device_properties(0)
    info = {"device": torch.cuda.get_device_name(0), "gpu_memory_gb": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    return info


def make_batch(n_sweeps: int, points: int, beams: int, azimuths: int, seed: int = 0):
    """Host tensors of a batch: points (P, 4), sweep index (P,), label (P,), candidate_mask (P,)."""
    pts, lab, cand, bidx = [], [], [], []
    for i in range(n_sweeps):
        sw = make_sweep(seed + i, beams=beams, azimuths=azimuths, max_points=points)
        label, candidates, _ = simulated_pseudolabels(sw.label, seed=seed + i, labelled_share=0.6, candidate_share=0.35)
        pts.append(sw.points)
        lab.append(label.astype(np.int64))
        cand.append(candidates.astype(np.int64))
        bidx.append(np.full(len(sw.points), i, np.int64))
    t = [torch.from_numpy(np.concatenate(a)) for a in (pts, bidx, lab, cand)]
    if torch.cuda.is_available():
        t = [x.pin_memory() for x in t]
    return t


class Phases:
    """Synchronised wall-clock marks between the phases of one step."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.last = device, {}, None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self.sync()
        self.last = time.perf_counter()

    def __call__(self, phase: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.times[phase] = self.times.get(phase, 0.0) + (now - self.last) * 1000
        self.last = now


def run_config(name: str, cfg: UNetConfig, amp: bool, host, device: torch.device, steps: int, warmup: int,
               profile: bool) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    crit = SegmentationLoss(cfg.num_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    points_h, batch_h, label_h, cand_h = host
    n_sweeps = int(batch_h.max()) + 1

    def step(mark=None):
        mark = mark or (lambda p: None)
        pts = points_h.to(device, non_blocking=True)
        b = batch_h.to(device, non_blocking=True)
        lab = label_h.to(device, non_blocking=True)
        cand = cand_h.to(device, non_blocking=True)
        mark("h2d")
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            logits, _ = model(pts, b, n_sweeps, mark=mark)
        terms = crit(logits, lab, cand)
        mark("loss")
        opt.zero_grad(set_to_none=True)
        scaler.scale(terms.total).backward()
        mark("backward")
        scaler.step(opt)
        scaler.update()
        mark("optimizer")
        return terms.total

    sync = Phases(device).sync
    with torch.no_grad():
        vox = voxelize(points_h.to(device), batch_h.to(device), n_sweeps, cfg)
    n_voxels = int(len(vox.coords))
    del vox
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
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        last = step()
    sync()
    mean_ms = (time.perf_counter() - t) * 1000 / steps
    per_step = []
    for _ in range(max(5, steps // 2)):
        sync()
        t = time.perf_counter()
        step()
        sync()
        per_step.append((time.perf_counter() - t) * 1000)
    phases = Phases(device)
    n_ph = max(5, steps // 3)
    for _ in range(n_ph):
        phases.start()
        step(phases)
    breakdown = {k: round(v / n_ph, 2) for k, v in phases.times.items()}
    res = {
        "name": name, "voxel_size": cfg.voxel_size, "precision": "amp" if use_amp else "fp32",
        "channels": list(cfg.channels), "blocks": cfg.blocks, "parameters": count_parameters(model),
        "sweeps": n_sweeps, "points": int(len(points_h)), "voxels": n_voxels,
        "first_step_ms": round(first_ms, 1), "ms_per_step": round(mean_ms, 2),
        "median_ms": round(float(np.median(per_step)), 2), "p90_ms": round(float(np.percentile(per_step, 90)), 2),
        "breakdown_ms": breakdown, "breakdown_sum_ms": round(sum(breakdown.values()), 2),
        "final_loss": float(last.detach()), "loss_finite": bool(torch.isfinite(last.detach()).item()),
    }
    if device.type == "cuda":
        res["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        res["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 3)
    if profile:
        try:
            res["top_kernels"] = profile_kernels(step, device)
        except Exception as e:  # noqa: BLE001 - the profile is extra; keep the timings
            res["top_kernels"] = f"profiler failed: {type(e).__name__}: {e}"
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def profile_kernels(step, device: torch.device, steps: int = 5, top: int = 20) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    rows = []
    averages = prof.key_averages()
    attr = "self_cpu_time_total"
    if device.type == "cuda":  # renamed from self_cuda_time_total in recent torch
        attr = "self_device_time_total" if any(hasattr(e, "self_device_time_total") for e in averages) else "self_cuda_time_total"
    events = [e for e in averages if (getattr(e, attr, 0) or 0) > 0]
    events.sort(key=lambda e: getattr(e, attr, 0), reverse=True)
    total = sum(getattr(e, attr, 0) for e in events)
    for e in events[:top]:
        t = getattr(e, attr, 0)
        rows.append({"name": e.key[:120], "ms_per_step": round(t / 1000 / steps, 3), "share": round(t / max(total, 1), 4),
                     "calls_per_step": round(e.count / steps, 1)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["auto", "full", "tiny"], default="auto")
    ap.add_argument("--voxels", type=float, nargs="+")
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "amp"])
    ap.add_argument("--blocks", type=int, nargs="+")
    ap.add_argument("--channels", type=int, nargs="+")
    ap.add_argument("--sweeps", type=int)
    ap.add_argument("--points", type=int, help="points per sweep")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip configurations once this much time is spent")
    ap.add_argument("--threads", type=int, help="CPU threads (tiny mode default 1: spconv's CPU kernels run single-threaded)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    mode = ("full" if cuda else "tiny") if a.mode == "auto" else a.mode
    if mode == "full" and not cuda:
        say("--mode full needs CUDA; torch sees no GPU")
        return 2
    device = torch.device("cuda" if (cuda and mode == "full") else "cpu")
    full = mode == "full"
    voxels = a.voxels or ([0.05, 0.1] if full else [0.2, 0.4])
    precisions = a.precisions or (["fp32", "amp"] if full else ["fp32"])
    blocks = a.blocks or ([1, 2] if full else [1])
    channels = tuple(a.channels or ([32, 64, 128, 256] if full else [16, 32, 48, 64]))
    sweeps = a.sweeps or (4 if full else 2)
    points = a.points or (35_000 if full else 8_000)
    steps = a.steps or (30 if full else 3)
    warmup = a.warmup if a.warmup is not None else (5 if full else 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(a.threads or 1)
    info = gpu_info()
    say(f"mode {mode} on {info['device']}; torch {torch.__version__} (CUDA {torch.version.cuda})")
    say(f"synthesising {sweeps} sweeps of {points} points ...")
    host = make_batch(sweeps, points, beams=32 if full else 16, azimuths=1400 if full else 600)
    say(f"batch: {len(host[0])} points, labelled {(host[2] > 0).float().mean():.2f}")
    results, skipped = [], []
    configs = [(b, v, p) for b in blocks for v in voxels for p in precisions]
    goal = (blocks[0], 0.05, "amp")
    for b, v, p in configs:
        name = f"unet{'-'.join(map(str, channels))}-b{b} voxel {v} {p}"
        if time.perf_counter() - T0 > a.budget_s:
            skipped.append(name)
            say(f"skip {name}: budget of {a.budget_s:.0f} s spent")
            continue
        say(f"config {name}")
        cfg = UNetConfig(channels=channels, blocks=b, voxel_size=v)
        try:
            results.append(run_config(name, cfg, p == "amp", host, device, steps, warmup,
                                      profile=not a.no_profile and ((b, v, p) == goal or (not full and (b, v, p) == configs[0]))))
            r = results[-1]
            say(f"  {name}: {r['ms_per_step']:.1f} ms/step (median {r['median_ms']:.1f}, p90 {r['p90_ms']:.1f})"
                + (f", peak {r['peak_allocated_gb']:.2f} GB" if 'peak_allocated_gb' in r else "")
                + f"; breakdown {r['breakdown_ms']}")
        except Exception as e:  # noqa: BLE001 - record and go on
            results.append({"name": name, "voxel_size": v, "precision": p, "blocks": b, "error": f"{type(e).__name__}: {e}",
                            "traceback": traceback.format_exc()[-3000:]})
            say(f"  {name}: FAILED {type(e).__name__}: {e}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    goal_rows = [r for r in results if r.get("voxel_size") == 0.05 and r.get("precision") == "amp" and "ms_per_step" in r]
    payload = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), **info, "versions": versions(), "mode": mode,
        "settings": {"sweeps": sweeps, "points_per_sweep": points, "channels": list(channels), "blocks": blocks,
                     "voxels": voxels, "precisions": precisions, "steps": steps, "warmup": warmup,
                     "optimizer": "AdamW", "loss": "CE + Lovasz-softmax + negative-label loss",
                     "supervision": "60% labelled, 35% candidate sets of 3 classes"},
        "goal": {"ms_per_step": GOAL_MS, "config": "voxel 0.05 m, AMP, batch 4 x 35k points",
                 "best_ms": min((r["ms_per_step"] for r in goal_rows), default=None),
                 "met": (min((r["ms_per_step"] for r in goal_rows), default=float("inf")) <= GOAL_MS) if full else None},
        "results": results, "skipped": skipped, "seconds": round(time.perf_counter() - T0, 1),
        "notes": ("ms_per_step: mean of a synchronised run of `steps` steps; median/p90: individually synchronised steps; "
                  "breakdown_ms: each phase synchronised (its sum exceeds ms_per_step by the lost overlap)"),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(payload, indent=2))
    print()
    print(f"{'configuration':44s} {'voxels':>8s} {'first ms':>9s} {'ms/step':>8s} {'median':>7s} {'peak GB':>8s}")
    for r in results:
        if "error" in r:
            print(f"{r['name']:44s} FAILED {r['error'][:60]}")
            continue
        print(f"{r['name']:44s} {r['voxels']:8d} {r['first_step_ms']:9.0f} {r['ms_per_step']:8.1f} {r['median_ms']:7.1f} "
              f"{r.get('peak_allocated_gb', float('nan')):8.2f}")
    say(f"wrote {a.out}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
