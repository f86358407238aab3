"""Jobs and cluster submissions of the demo and of nuScenes trainval, from Snakemake's own dry runs.

    .venv/bin/python bench/job_counts.py            # prints a table, writes bench/job_counts.json

For each plan (:data:`PLANS`) it runs ``snakemake -n`` twice against empty results and dataroot folders
(nothing is generated; the synthetic world's scene list gives the shards):

- ``jobs``: what a local run executes (``--profile profiles/default``), by rule;
- ``submissions``: what ``--workflow-profile profiles/slurm`` sends to SLURM: the dry run lists each
  group job once (``Group job shard_cpu``: the per-shard CPU chain, ``group-components: [shard_cpu=8]``
  packs eight of them per submission) and ``localrules`` run in the Snakemake process, so
  submissions = top-level entries - local jobs. ``submissions_without_grouping`` is the same with
  ``--group-components shard_cpu=1`` (every job of the group its own submission), i.e. before grouping.

Also the wall seconds of each dry run (parsing the workflow and building the DAG).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

#: name -> extra --config assignments (the demo is the shipped config as it is)
PLANS: dict[str, list[str]] = {
    "demo": [],
    "trainval": ["synth={scenes: 850}", "dataset={version: v1.0-trainval}"],
}
LOCAL_RULES = ("all", "summary", "report_index")


def dry_run(extra: list[str], profile: list[str], tmp: Path) -> tuple[str, float]:
    cmd = [SNAKEMAKE, "-n", *profile, "--config", f"results={tmp / 'results'}",
           f"dataset={{dataroot: {tmp / 'world'}}}", *extra]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return out.stdout, time.perf_counter() - t0


def job_stats(text: str) -> dict[str, int]:
    """{rule: count} of the dry run's 'Job stats' table (the first one)."""
    block = text.split("Job stats:", 1)[1]
    counts: dict[str, int] = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def top_level(text: str) -> tuple[int, int]:
    """(top-level entries, group jobs) of a dry run: jobs at column 0 and ``Group job`` headers."""
    entries = groups = 0
    listing = text.split("Job stats:")[1]  # the jobs are listed after the first table (and before the last)
    for line in listing.splitlines():
        if re.match(r"^\[[^\]]+\]", line):
            entries += 1
            groups += "Group job" in line
    return entries, groups


def plan(name: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="job_counts_") as t:
        tmp = Path(t)
        local, local_s = dry_run(extra, ["--profile", "profiles/default"], tmp)
        slurm, slurm_s = dry_run(extra, ["--workflow-profile", "profiles/slurm"], tmp)
        ungrouped, _ = dry_run(extra, ["--workflow-profile", "profiles/slurm", "--group-components", "shard_cpu=1"], tmp)
    counts = job_stats(local)
    jobs = counts.pop("total")
    local_jobs = sum(counts.get(r, 0) for r in LOCAL_RULES)
    entries, groups = top_level(slurm)
    entries_u, _ = top_level(ungrouped)
    return {
        "config": extra,
        "jobs": jobs,
        "jobs_by_rule": counts,
        "local_jobs": local_jobs,
        "group_jobs": groups,
        "submissions": entries - local_jobs,
        "submissions_without_grouping": entries_u - local_jobs,
        "dry_run_s": {"local": round(local_s, 1), "slurm": round(slurm_s, 1)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", choices=list(PLANS), default=list(PLANS))
    ap.add_argument("--json", default=str(REPO / "bench" / "job_counts.json"))
    a = ap.parse_args(argv)
    out = {"command": "bench/job_counts.py", "plans": {}}
    print(f"{'plan':10s} {'jobs':>7s} {'local':>6s} {'submissions before grouping':>28s} {'after':>7s} {'dry run s':>10s}")
    for name in a.only:
        r = plan(name, PLANS[name])
        out["plans"][name] = r
        print(f"{name:10s} {r['jobs']:7d} {r['local_jobs']:6d} {r['submissions_without_grouping']:28d} "
              f"{r['submissions']:7d} {r['dry_run_s']['local']:10.1f}")
    Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
