"""What each job of a finished run costs beyond its work, from Snakemake's benchmark files.

    .venv/bin/python bench/job_overhead.py [--results results] [--json bench/job_overhead.json]

For every job with a benchmark file and a stats file that reports its work seconds
(:func:`lidarlift.evaluate.report.read_benchmarks`: ``overhead_s`` = the benchmark's wall seconds - the
job's own ``seconds``), per rule (and EM round): jobs, median wall seconds, median work seconds, median
and maximum overhead -- the process start, imports and config reading every job pays. Meaningful on a
quiet machine only (under load every job's wall time stretches).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lidarlift.evaluate.report import read_benchmarks  # noqa: E402


def per_rule(results: Path) -> dict[str, dict[str, float]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in read_benchmarks(results / "benchmarks"):
        if r["overhead_s"] is None:
            continue
        key = r["rule"]
        if r["rule"] in ("predict", "pseudolabels", "temporal", "baselines") and "/" in r["job"]:
            key += "/" + r["job"].split("/")[0]
        groups[key].append(r)
    out = {}
    for key, rows in sorted(groups.items()):
        out[key] = {"jobs": len(rows),
                    "median_s": round(statistics.median(r["s"] for r in rows), 2),
                    "median_work_s": round(statistics.median(r["work_s"] for r in rows), 2),
                    "median_overhead_s": round(statistics.median(r["overhead_s"] for r in rows), 2),
                    "max_overhead_s": round(max(r["overhead_s"] for r in rows), 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--json", default=None, help="also write the table here")
    a = ap.parse_args(argv)
    table = per_rule(Path(a.results))
    print(f"{'rule':24s} {'jobs':>5s} {'median s':>9s} {'work s':>7s} {'overhead s':>11s} {'max':>6s}")
    for k, v in table.items():
        print(f"{k:24s} {v['jobs']:5d} {v['median_s']:9.2f} {v['median_work_s']:7.2f} {v['median_overhead_s']:11.2f} "
              f"{v['max_overhead_s']:6.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"results": a.results, "rules": table}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
