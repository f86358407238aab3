"""profiles/slurm on a real SLURM: a single-node cluster on localhost (tests/slurm/local_cluster.py: munge,
MariaDB + slurmdbd, slurmctld, slurmd) runs the DAG up to round-0 pseudo-labels of one shard through
snakemake-executor-plugin-slurm with ``--workflow-profile profiles/slurm``; the same targets run locally.

Truths checked:
- every job of the run is in sacct, COMPLETED, on the node, with the account, partition, time limit,
  CPUs (AllocCPUS = the rule's threads; GPU rules: gpu x cpus_per_gpu) and memory (ReqMem = mem_mb) the
  profile gives its rule, and GPUs where it asks for them; one sacct job per job Snakemake planned;
- the stores the SLURM run wrote equal the local run's, array by array (names, dtypes, shapes, values)
  and attribute by attribute.

The profile is used as it ships, except where this host cannot honour it: without GPUs, the GPU rules
go to the CPU partition with their threads as CPUs (what profiles/default does on a GPU-less box); with
GPUs, they ask for this host's GPU model. Skipped, with the reason, where the cluster cannot run (not
root, Debian's SLURM packages not installed: ``make system-deps`` installs them).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from test_workflow import REPO, SNAKEMAKE, TINY_CONFIG, _profile, copy_workflow

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from local_cluster import (  # noqa: E402
    CPU_PARTITION, NODE_NAME, ClusterStartError, ClusterUnavailable, start_cluster)

#: What both runs make (rule outputs that stay put while rules change): every per-shard store up to the
#: round-0 pseudo-labels of one shard. Jobs: manifest, associate, presegment, superpixels, masks (a GPU
#: rule), pseudolabel_clicks, pseudolabels.
SHARD = "scene-0061"
STORES = [f"associate/{SHARD}.zarr", f"presegment/{SHARD}.zarr", f"superpixels/{SHARD}.zarr",
          f"masks/{SHARD}.zarr", f"pseudolabels/r0/{SHARD}.zarr"]
#: The profile's keys that ask for GPUs (dropped for a cluster without GPUs).
GPU_KEYS = ("gpu", "gpu_model", "cpus_per_gpu", "tasks_per_gpu", "gres")
SACCT_FIELDS = ("JobID", "Comment", "State", "ExitCode", "AllocCPUS", "ReqMem", "AllocTRES", "Partition",
                "Account", "TimelimitRaw", "NodeList")
RUN_TIMEOUT_S = 900


def test_readme_table_is_the_profile():
    """profiles/README.md's table of what each rule asks for holds the values of profiles/slurm, every rule once."""
    text = (REPO / "profiles" / "README.md").read_text().split("### What each rule asks for", 1)[1].split("###", 1)[0]
    cell = r"\|\s*(\w*)\s*"
    rows = re.findall(r"^\|\s*`(\w+)`\s*\|[^|]*" + cell * 5 + r"\|\s*$", text, flags=re.M)
    table = {rule: {"partition": part, "cpus": int(cpus), "gpus": int(gpus or 0), "mem_mb": int(mem), "runtime": int(rt)}
             for rule, part, cpus, gpus, mem, rt in rows}
    profile = _profile("slurm")
    assert len(rows) == len(table), "a rule is listed twice in profiles/README.md"
    assert set(table) == set(profile["set-resources"]), \
        f"rules only in the README table: {sorted(set(table) - set(profile['set-resources']))}; " \
        f"only in profiles/slurm: {sorted(set(profile['set-resources']) - set(table))}"
    wrong = {rule: (row, want) for rule, row in table.items()
             if row != (want := {k: v for k, v in expected_request(profile, rule).items() if k != "account"})}
    assert not wrong, f"profiles/README.md rows (README, profile) that differ from profiles/slurm: {wrong}"


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node cluster, stopped and deleted when the session ends."""
    try:
        cluster = start_cluster()
    except ClusterUnavailable as e:
        pytest.skip(f"no local SLURM cluster: {e}")
    except ClusterStartError as e:
        pytest.fail(f"SLURM packages are installed but the cluster did not start: {e}")
    yield cluster
    cluster.remove()


def profile_for(cluster) -> dict:
    """profiles/slurm as this cluster can honour it (see the module docstring)."""
    profile = _profile("slurm")
    for rule, res in profile["set-resources"].items():
        if not any(k in res for k in ("gpu", "gres")):
            continue
        if cluster.gpus:
            res["gpu_model"] = cluster.gpus[0]
        else:
            for key in GPU_KEYS:
                res.pop(key, None)
            res["slurm_partition"] = CPU_PARTITION
    return profile


def expected_request(profile: dict, rule: str) -> dict:
    """What sacct must show for a job of ``rule``: cpus, mem_mb, partition, account, runtime, gpus."""
    res = dict(profile["default-resources"], **profile["set-resources"][rule])
    gpus = res.get("gpu", 0)
    return {"cpus": gpus * res["cpus_per_gpu"] if gpus else profile["set-threads"][rule], "mem_mb": res["mem_mb"],
            "partition": res["slurm_partition"], "account": res["slurm_account"], "runtime": res["runtime"],
            "gpus": gpus}


def expected_group_request(profile: dict, members: list[str]) -> dict:
    """What sacct must show for a group submission of one job of each of ``members`` (run side by side):
    CPUs and memory added, the longest runtime, the group's common partition and account."""
    reqs = [expected_request(profile, r) for r in members]
    assert len({(r["partition"], r["account"]) for r in reqs}) == 1, f"group members on several partitions: {members}"
    return {"cpus": sum(r["cpus"] for r in reqs), "mem_mb": sum(r["mem_mb"] for r in reqs), "partition": reqs[0]["partition"],
            "account": reqs[0]["account"], "runtime": max(r["runtime"] for r in reqs), "gpus": sum(r["gpus"] for r in reqs)}


def submission_rules(comment: str, groups: dict[str, list[str]]) -> tuple[list[str], str | None]:
    """(rules, group) of one sbatch submission from its comment: ``rule_<rule>_wildcards_...`` for a job,
    ``rule_<group>_<rule>_<rule>...`` for a group submission (profiles/slurm group-components)."""
    for group, rules in groups.items():
        if comment.startswith(f"rule_{group}_"):
            rest = comment[len(f"rule_{group}_"):]
            return [r for r in sorted(rules, key=len, reverse=True) if r in rest.split("_wildcards")[0]], group
    return [re.fullmatch(r"rule_(\w+?)(?:_wildcards_.*)?", comment).group(1)], None


def mem_mb(req_mem: str) -> float:
    """sacct's ReqMem ('6000M', '32G', older '6000Mn') in MB."""
    m = re.fullmatch(r"([\d.]+)([KMGT])[nc]?", req_mem)
    assert m, f"unexpected ReqMem {req_mem!r}"
    return float(m.group(1)) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[m.group(2)]


def job_stats(log: str) -> Counter:
    """Jobs per rule from Snakemake's 'Job stats' table."""
    table = log.split("Job stats:", 1)[1].split("total", 1)[0]
    return Counter({m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)})


def arrays(path: Path) -> dict[str, zarr.Array]:
    """Every array of a zarr store, by its path inside the store."""
    out = {}

    def walk(group, prefix):
        for name, arr in group.arrays():
            out[prefix + name] = arr
        for name, sub in group.groups():
            walk(sub, f"{prefix}{name}/")

    walk(zarr.open_group(str(path), mode="r"), "")
    return out


def store_differences(a: Path, b: Path) -> list[str]:
    """What differs between two zarr stores: array names, dtypes, shapes, values, attributes."""
    xa, xb = arrays(a), arrays(b)
    if xa.keys() != xb.keys():
        return [f"arrays {sorted(xa.keys() ^ xb.keys())} are in only one store"]
    out = []
    for name, arr in xa.items():
        other = xb[name]
        if (arr.dtype, arr.shape) != (other.dtype, other.shape):
            out.append(f"{name}: {arr.dtype}{arr.shape} vs {other.dtype}{other.shape}")
        elif not np.array_equal(arr[...], other[...], equal_nan=arr.dtype.kind in "fc"):
            out.append(f"{name}: values differ")
        elif dict(arr.attrs) != dict(other.attrs):
            out.append(f"{name}: attributes differ")
    attrs_a, attrs_b = dict(zarr.open_group(str(a), mode="r").attrs), dict(zarr.open_group(str(b), mode="r").attrs)
    out += [f"attribute {k}: {attrs_a.get(k)!r} vs {attrs_b.get(k)!r}" for k in sorted(attrs_a.keys() | attrs_b.keys())
            if attrs_a.get(k) != attrs_b.get(k)]
    return out


def run_snakemake(args: list[str], cwd: Path, env: dict, timeout: float = RUN_TIMEOUT_S) -> tuple[int, str]:
    """Run Snakemake in its own process group (killed whole on timeout); (exit code, output)."""
    proc = subprocess.Popen([SNAKEMAKE, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -1, out + f"\n(killed after {timeout} s)"
    return proc.returncode, out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Object at .snakemake_timestamp")  # Snakemake's marker inside directory outputs
def test_dag_under_slurm_uses_the_profile_and_matches_a_local_run(slurm_cluster, tmp_path):
    from lidarlift.config import merge
    from lidarlift.synth import generate

    started = time.monotonic()
    tiny = yaml.safe_load(TINY_CONFIG.read_text())
    world = tmp_path / "world"
    generate(world, version="v1.0-mini", **tiny["synth"])
    wd = copy_workflow(tmp_path / "wf")
    profile = profile_for(slurm_cluster)
    (wd / "profiles" / "slurm" / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    for name in ("slurm", "local"):
        config = merge(tiny, {"dataset": {"kind": "existing", "dataroot": str(world)}, "results": f"results_{name}"})
        (wd / f"{name}.yaml").write_text(yaml.safe_dump(config))

    # SLURM: the shipped profile (as adapted above) plus what this test needs: few jobs at once and an
    # early first status check (the plugin's default waits 40 s).
    env = slurm_cluster.env()
    rc, log = run_snakemake([*(f"results_slurm/{s}" for s in STORES), "--workflow-profile", "profiles/slurm",
                             "--configfile", "slurm.yaml", "--jobs", "3",
                             "--slurm-init-seconds-before-status-checks", "2"], wd, env)
    slurm_s = time.monotonic() - started
    assert rc == 0, f"SLURM run failed:\n{log[-6000:]}\n{slurm_cluster.log_tail()}"
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    jobs = slurm_cluster.accounting(run_id, SACCT_FIELDS)

    # every planned job in a COMPLETED sacct job, a group submission (rules with group: in the profile's
    # group-components) holding several, each submission with its rules' request
    groups = {"shard_cpu": ["associate", "superpixels", "presegment", "presegment_baseline"]}
    subs = {j["JobID"]: submission_rules(j["Comment"], groups) for j in jobs}
    ran = Counter(r for rules, _ in subs.values() for r in rules)
    assert ran == job_stats(log), f"sacct jobs {sorted(ran)} vs the plan"
    assert any(len(rules) > 1 for rules, g in subs.values() if g), "no group submission held several jobs"
    problems = []
    for j in jobs:
        rules, group = subs[j["JobID"]]
        rule = group or rules[0]
        want = expected_group_request(profile, rules) if group else expected_request(profile, rule)
        got = {"cpus": int(j["AllocCPUS"]), "mem_mb": mem_mb(j["ReqMem"]), "partition": j["Partition"],
               "account": j["Account"], "runtime": int(j["TimelimitRaw"]),
               "gpus": int(m.group(1)) if (m := re.search(r"gres/gpu=(\d+)", j["AllocTRES"])) else 0}
        if (j["State"], j["ExitCode"], j["NodeList"]) != ("COMPLETED", "0:0", NODE_NAME):
            problems.append(f"{rule} (job {j['JobID']}): {j['State']} {j['ExitCode']} on {j['NodeList']}")
        if got != want:
            problems.append(f"{rule} (job {j['JobID']}): sacct {got}, profile {want}")
    assert not problems, "\n".join(problems)

    # the same targets locally (profiles/default, this box's 2 cores): the same stores
    rc, local_log = run_snakemake([*(f"results_local/{s}" for s in STORES), "--cores", "2",
                                   "--configfile", "local.yaml"], wd, os.environ.copy())
    assert rc == 0, f"local run failed:\n{local_log[-6000:]}"
    differences = {s: d for s in STORES if (d := store_differences(wd / "results_slurm" / s, wd / "results_local" / s))}
    assert not differences, f"SLURM and local stores differ: {differences}"
    print(f"SLURM run {slurm_s:.0f} s, {len(jobs)} jobs; whole test {time.monotonic() - started:.0f} s")
