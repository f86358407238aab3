"""The recorded GPU run of the whole DAG (issue 13): runs ``snakemake --configfile config/gpu.yaml`` on the
GPU machine (or only collects a finished run) and writes ``bench/gpu_dag.json``: the summary's
``training.*`` and ``evaluation.*`` keys, the device and versions, and the wall time of every rule
(from Snakemake's benchmark files).

    python3 bench/gpu_dag.py --run --timeout 560        # run (resumable: call again after a timeout)
    python3 bench/gpu_dag.py --collect --out bench/gpu_dag.json

A machine call lasts at most 10 minutes: ``--run`` stops Snakemake cleanly before ``--timeout`` and a
second call resumes it (``--unlock``, then ``--rerun-incomplete``).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "gpu.yaml"


def results_dir(extra: list[str] = ()) -> Path:
    """The run's results folder: config/gpu.yaml's ``results``, or a ``results=...`` of the extra config."""
    import yaml

    for item in extra:
        if item.startswith("results="):
            return REPO / item.split("=", 1)[1]
    return REPO / yaml.safe_load(CONFIG.read_text())["results"]


def run(timeout: float, cores: int, gpus: int, extra: list[str] = ()) -> int:
    """Run (or resume) the DAG, with ``extra`` config (``KEY=VALUE`` as ``snakemake --config`` takes it)
    over config/gpu.yaml; returns Snakemake's exit code (124 when stopped at the timeout). The generator
    gets every core (the profile sizes it for 2)."""
    base = [sys.executable, "-m", "snakemake", "--profile", "profiles/default", "--configfile", str(CONFIG),
            "--cores", str(cores), "--resources", f"gpu={gpus}", "--set-threads", f"synth={cores}"]
    if extra:
        base += ["--config", *extra]
    subprocess.run(base + ["--unlock"], cwd=REPO, capture_output=True)
    t0 = time.time()
    proc = subprocess.Popen(base + ["--rerun-incomplete", "--keep-going"], cwd=REPO, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 15)  # SIGTERM: Snakemake stops its jobs and marks them incomplete
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        print(f"stopped after {time.time() - t0:.0f} s; call again to resume", flush=True)
        return 124


def rule_seconds(bench_dir: Path) -> dict[str, dict[str, float]]:
    """{rule: {jobs, seconds (sum), max_seconds}} from Snakemake's benchmark files."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "max_seconds": 0.0})
    for path in sorted(bench_dir.rglob("*.tsv")):
        rel = path.relative_to(bench_dir)
        rule = "/".join(rel.parts[:-1]) or rel.stem
        with path.open() as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if not rows:
            continue
        s = float(rows[-1]["s"])
        rec = out[rule]
        rec["jobs"] += 1
        rec["seconds"] += s
        rec["max_seconds"] = max(rec["max_seconds"], s)
    return dict(out)


def collect(out_path: Path, wall_s: float | None, extra: list[str] = ()) -> dict:
    import torch

    res = results_dir(extra)
    summary = json.loads((res / "summary.json").read_text())
    keys = ("miou", "miou_rounds", "miou_full_supervision", "ratio_to_full", "chance_miou", "pseudolabel_miou_rounds",
            "pseudolabel_coverage_rounds", "pseudolabel_precision_rounds", "train_seconds_rounds",
            "train_seconds_full_supervision", "throughput_rounds", "throughput_full_supervision", "iou_per_class",
            "iou_per_class_full_supervision", "device")
    training = {k: summary.get("training", {}).get(k) for k in keys}
    ev = summary.get("evaluation", {})
    evaluation = {k: ev.get(k) for k in ("miou", "pq", "sq", "rq", "pq_things", "pq_stuff", "devkit_status", "max_abs_diff",
                                         "eval_split", "final_round", "share_of_full")}
    import lidarlift

    record = {
        "config": str(CONFIG.relative_to(REPO)),
        "command": "python3 bench/gpu_dag.py --run (twice if it stops at the call limit); python3 bench/gpu_dag.py --collect",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "lidarlift": getattr(lidarlift, "__version__", None), "commit": _git_commit()},
        "dataset": summary.get("dataset"),
        "pseudolabels": {k: summary.get("pseudolabels", {}).get(k) for k in ("click_share", "labelled_share", "precision")},
        "training": training,
        "evaluation": evaluation,
        "rule_seconds": rule_seconds(res / "benchmarks"),
        "wall_seconds": wall_s,
    }
    out_path.write_text(json.dumps(record, indent=2))
    return record


def _git_commit() -> str | None:
    if os.environ.get("LIDARLIFT_COMMIT"):  # the GPU machine's copy of the tree has no .git
        return os.environ["LIDARLIFT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip() or None
    except OSError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--collect", action="store_true")
    ap.add_argument("--timeout", type=float, default=560)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 16)
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "gpu_dag.json")
    ap.add_argument("--config", nargs="*", default=[], help="extra DAG config over config/gpu.yaml, KEY=VALUE as "
                    "snakemake --config takes it (a results=... moves the run; bench/bench_temporal.py --collect reads it)")
    ap.add_argument("--wall-file", type=Path, default=None, help="accumulate wall seconds of --run calls here")
    a = ap.parse_args()
    rc = 0
    if a.run:
        t0 = time.time()
        rc = run(a.timeout, a.cores, a.gpus, a.config)
        if a.wall_file:
            prev = float(a.wall_file.read_text()) if a.wall_file.exists() else 0.0
            a.wall_file.write_text(str(prev + time.time() - t0))
    if a.collect:
        wall = float(a.wall_file.read_text()) if a.wall_file and a.wall_file.exists() else None
        rec = collect(a.out, wall, a.config)
        print(json.dumps({k: rec[k] for k in ("device", "training", "evaluation", "wall_seconds")}, indent=1))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
