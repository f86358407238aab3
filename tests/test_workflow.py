"""The Snakemake layer: lint and format, conventions, profiles, environments, planning at scale, SLURM
submission, GPU leasing under --resources gpu=N, and re-running one stage after a full run.

Truths checked:
- `snakemake --lint` reports nothing and every rule file is snakefmt-formatted;
- every rule has a log and a conda environment, and an entry in both profiles; env pins equal constraints.txt;
- `snakemake --cores 32 --resources gpu=8 -n` plans every rule; GPU jobs ask for GPUs there and for none
  on this GPU-less box (pool gpu=0);
- through the SLURM executor every job carries the profile's resources, and the sbatch command lines
  (sbatch mocked on PATH) request the partition, account, runtime, memory and GPUs;
- concurrent masks, train (2 devices) and predict jobs under --resources gpu=6 hold the 6 (simulated)
  devices at the same time, each its own, through their real scripts' leases; under --resources gpu=0
  the same jobs lease nothing, see no device and have CUDA refused;
- after a full run on a tiny world: nothing is left to do; changing one stage's parameters plans exactly
  that stage's jobs and everything downstream of them, nothing upstream; --forcerun <rule> likewise;
  a single shard or a single EM round can be targeted alone.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
SNAKEFMT = str(BIN / "snakefmt")
TINY_CONFIG = REPO / "tests" / "data" / "tiny_config.yaml"
BATCH = REPO / "tests" / "snakemake_batch.py"

#: What a run directory needs: the workflow as a user's clone has it (no results).
WORKFLOW_FILES = ("Snakefile", "rules", "workflow", "config", "envs", "profiles", "report")

#: Rules that use GPUs (gpu resource in the profiles) and their devices per job in profiles/default.
GPU_RULES = {"masks": 1, "predict": 1, "predict_full": 1, "predict_keyframes": 1, "train": 4, "train_full": 4,
             "train_keyframes": 4}

#: One parameter change per stage: (config key, new value, the rules that take it as params).
#: Expected plan = those rules' jobs and every job downstream of them; nothing else.
PARAM_CHANGES = [
    ("synth.seed", 4, ["synth"]),
    ("dataset.sweeps_prev", 4, ["manifest"]),
    ("associate.depth_abs_tol", 0.4, ["associate"]),
    ("superpixels.num_superpixels", 512, ["superpixels"]),
    ("presegment.fast.sweeps", 1, ["presegment"]),
    # evaluation-only keys re-score, runtime-only keys re-run nothing (schema x-scope)
    ("presegment.split_min_points", 11, ["evaluate_shard"]),
    ("superpixels.boundary_tolerance", 3.0, ["evaluate_shard"]),
    ("masks.encoder_batch", 2, []),
    ("train.predict_batch_size", 2, []),
    ("masks.max_masks", 64, ["masks"]),
    ("pseudolabels.clicks.seed", 1, ["pseudolabel_clicks", "pseudolabels"]),
    ("pseudolabels.ours.knn", 8, ["pseudolabels"]),
    ("train.lr", 0.02, ["train", "train_full", "predict", "predict_full"]),
    ("temporal.gate_beams", 2.0, ["temporal"]),  # checked where the run has temporal jobs (temporal.enabled)
    ("evaluate.min_inst_points", 10, ["evaluate_shard", "evaluate", "export"]),
]
#: Top-level config sections that are not one stage's parameters (structure, label space, paths).
NOT_STAGE_SECTIONS = {"results", "em", "labels"}
#: --forcerun targets checked after the full run (each plans itself and its downstream jobs).
FORCERUN_RULES = ["presegment", "masks", "train"]


# --- helpers -------------------------------------------------------------------------------------------


def copy_workflow(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dst / name)
    return dst


def run(cmd: list[str], cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def snakemake_batch(cwd: Path, argvs: list[list[str]], timeout: float = 900) -> list[tuple[int, str]]:
    """Several Snakemake command lines in one process (the workflow's imports are paid once)."""
    proc = subprocess.run([sys.executable, str(BATCH)], input=json.dumps(argvs), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(proc.stdout)]


def rules_in_files() -> list[str]:
    names = []
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        names += re.findall(r"^(?:rule|checkpoint) (\w+):", path.read_text(), flags=re.M)
    return names


def rule_blocks() -> dict[str, str]:
    """{rule name: its text} from Snakefile and rules/*.smk."""
    blocks = {}
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        text = path.read_text()
        heads = list(re.finditer(r"^(?:rule|checkpoint) (\w+):\n", text, flags=re.M))
        for i, m in enumerate(heads):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
            body = text[m.end():end]
            body = body[: re.search(r"^\S", body, flags=re.M).start()] if re.search(r"^\S", body, flags=re.M) else body
            blocks[m.group(1)] = body
    return blocks


@dataclass
class PlannedJob:
    rule: str
    wildcards: tuple[tuple[str, str], ...] = ()
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    resources: dict[str, str] = field(default_factory=dict)
    threads: int = 1

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.rule, self.wildcards


def parse_plan(text: str) -> list[PlannedJob]:
    """The jobs a Snakemake dry run lists, with wildcards, files, threads and resources (jobs of a
    group -- rules with ``group:`` -- are listed indented one level)."""
    jobs: list[PlannedJob] = []
    job, indent = None, ""
    for line in text.splitlines():
        head = re.match(r"^( *)(?:local)?rule (\S+):$", line)
        if head:
            indent = head.group(1)
            job = PlannedJob(head.group(2))
            jobs.append(job)
            continue
        if job is None:
            continue
        m = re.match(rf"^{indent}    (\w+): (.*)$", line)
        if not m:
            if not line.startswith(indent + "    "):
                job = None
            continue
        key, value = m.groups()
        if key == "wildcards":
            job.wildcards = tuple(sorted(tuple(kv.split("=", 1)) for kv in value.split(", ")))
        elif key == "input":
            job.inputs = value.split(", ")
        elif key == "output":
            job.outputs = value.split(", ")
        elif key == "threads":
            job.threads = int(value)
        elif key == "resources":
            job.resources = dict(kv.split("=", 1) for kv in value.split(", "))
    return jobs


def downstream(jobs: list[PlannedJob], roots: set) -> set:
    """Keys of the root jobs and of every job that (transitively) reads one of their outputs."""
    producer = {out: j.key for j in jobs for out in j.outputs}
    children: dict = {}
    for j in jobs:
        for inp in j.inputs:
            if inp in producer:
                children.setdefault(producer[inp], set()).add(j.key)
    seen, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def nested(dotted: str, value) -> dict:
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def merged_config(change: dict) -> dict:
    from lidarlift.config import merge

    return merge(yaml.safe_load(TINY_CONFIG.read_text()), change)


def fmt_diff(planned: set, expected: set) -> str:
    extra, missing = sorted(planned - expected), sorted(expected - planned)
    return f"planned but not expected: {extra}\nexpected but not planned: {missing}"


# --- static checks -------------------------------------------------------------------------------------


def test_snakemake_lint_reports_nothing():
    proc = run([SNAKEMAKE, "--lint"], cwd=REPO, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-4000:]


def test_rule_files_are_snakefmt_formatted():
    files = ["Snakefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "rules").glob("*.smk"))]
    proc = run([SNAKEFMT, "--check", "--diff", *files], cwd=REPO, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def test_every_rule_has_log_and_a_conda_env_that_exists():
    """GPU rules use envs/gpu.yaml, the others envs/lidarlift.yaml (profiles/README.md)."""
    problems = []
    for name, body in rule_blocks().items():
        if name == "all":
            continue
        if not re.search(r"^    log:", body, flags=re.M):
            problems.append(f"rule {name}: no log:")
        env = re.search(r"^    conda:\n\s+\"([^\"]+)\"", body, flags=re.M)
        if not env:
            problems.append(f"rule {name}: no conda: directive")
        elif not (REPO / "rules" / env.group(1)).resolve().is_file():
            problems.append(f"rule {name}: conda env {env.group(1)} does not exist")
        elif name in GPU_RULES and env.group(1) != "../envs/gpu.yaml":
            problems.append(f"rule {name} runs on GPUs: its conda env must be ../envs/gpu.yaml (CUDA torch, spconv-cu126)")
    assert not problems, "\n".join(problems)


def test_workflow_scripts_take_config_only_through_params():
    """A script reading snakemake.config bypasses the params trigger: its rule would not re-run on a change."""
    offenders = [p.name for p in sorted((REPO / "workflow" / "scripts").glob("*.py")) if "snakemake.config" in p.read_text()]
    assert not offenders, f"scripts reading snakemake.config instead of snakemake.params: {offenders}"


def _profile(name: str) -> dict:
    return yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())


@pytest.mark.parametrize("profile", ["default", "slurm"])
def test_profile_covers_every_rule(profile):
    cfg = _profile(profile)
    rules = set(rules_in_files()) - {"all"}
    threads, resources = cfg.get("set-threads", {}), cfg.get("set-resources", {})
    assert rules - set(threads) == set(), f"rules without set-threads in profiles/{profile}"
    assert rules - set(resources) == set(), f"rules without set-resources in profiles/{profile}"
    assert set(threads) - rules == set(), f"profiles/{profile} set-threads names rules that do not exist"
    assert set(resources) - rules == set(), f"profiles/{profile} set-resources names rules that do not exist"
    for rule, res in resources.items():
        assert "mem_mb" in res, f"profiles/{profile}: {rule} has no mem_mb"
        if rule in GPU_RULES:
            assert res.get("gpu", 0) >= 1, f"profiles/{profile}: GPU rule {rule} requests no gpu"
        else:
            assert "gpu" not in res and "gres" not in res, f"profiles/{profile}: CPU rule {rule} requests a GPU"
    if profile == "default":
        assert cfg["resources"] == ["gpu=0"] and cfg["cores"] == 2
        assert {r: resources[r]["gpu"] for r in GPU_RULES if r in resources} == {r: k for r, k in GPU_RULES.items() if r in resources}
    else:
        assert cfg["executor"] == "slurm"
        for key in ("slurm_account", "slurm_partition", "runtime", "mem_mb"):
            assert key in cfg["default-resources"], key
        for rule in GPU_RULES:
            if rule in resources:
                res = resources[rule]
                assert res["slurm_partition"] != cfg["default-resources"]["slurm_partition"], rule
                assert res.get("gpu_model") and res.get("cpus_per_gpu", 0) >= 1, rule
                assert threads[rule] == res["gpu"] * res["cpus_per_gpu"], f"{rule}: threads != gpu x cpus_per_gpu"


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)", str(line))
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_conda_envs_pin_what_constraints_pin():
    constraints = _pins((REPO / "constraints.txt").read_text().splitlines())
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert {p.name for p in envs} >= {"lidarlift.yaml", "gpu.yaml"}
    for path in envs:
        env = yaml.safe_load(path.read_text())
        deps = env["dependencies"]
        assert any(str(d).startswith("python=3.11") for d in deps), f"{path.name}: python 3.11 not pinned"
        pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
        pins = _pins(pip)
        unpinned = [p for p in pip if not str(p).startswith("-") and "==" not in str(p)]
        assert not unpinned, f"{path.name}: unpinned {unpinned}"
        differ = {n: (v, constraints[n]) for n, v in pins.items() if n in constraints and constraints[n].split("+")[0] != v}
        assert not differ, f"{path.name} pins differ from constraints.txt: {differ}"
        assert (path.with_suffix("").with_suffix(".post-deploy.sh")).is_file() or \
            (REPO / "envs" / f"{path.stem}.post-deploy.sh").is_file(), f"{path.name}: no post-deploy script"
    assert "spconv-cu126" in _pins(next(d["pip"] for d in yaml.safe_load((REPO / "envs/gpu.yaml").read_text())["dependencies"] if isinstance(d, dict)))


def test_workflow_catalog_file():
    meta = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    assert meta["usage"]["software-stack-deployment"]["conda"] is True
    assert "mandatory-flags" in meta["usage"] and "report" in meta["usage"]


# --- planning ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, tuple[int, str]]:
    """Dry runs of a fresh clone of the workflow: the 8-GPU host, this box (default config), SLURM; the
    host and SLURM with active clicks and temporal labels, whose extra rules (the uniform-protocol baseline,
    temporal, the keyframe-only network) complete the set of rules."""
    wd = copy_workflow(tmp_path_factory.mktemp("plan"))
    every_rule = ["--config", "pseudolabels={clicks: {protocol: active}}", "temporal={enabled: true}",
                  "presegment={compare_baseline: true}"]
    runs = {
        "gpu_host": ["-n", "--cores", "32", "--resources", "gpu=8", *every_rule],
        "this_box": ["-n"],
        "slurm": ["-n", "--workflow-profile", "profiles/slurm", *every_rule],
        "no_full": ["-n", "--config", "evaluate={full_supervision: false}"],
    }
    return dict(zip(runs, snakemake_batch(wd, list(runs.values()))))


def test_gpu_host_plans_the_whole_dag(plans):
    rc, out = plans["gpu_host"]
    assert rc == 0, out[-4000:]
    jobs = parse_plan(out)
    assert {j.rule for j in jobs} == set(rules_in_files()), "rules missing from the plan"
    for j in jobs:
        if j.rule in GPU_RULES:
            assert j.resources.get("gpu") == str(GPU_RULES[j.rule]), (j.rule, j.resources)
        else:
            assert j.resources.get("gpu", "0") == "0", (j.rule, j.resources)
    # per-shard jobs: every shard of the default world gets its own job of each per-shard stage
    shards = {dict(j.wildcards)["shard"] for j in jobs if j.rule == "associate"}
    assert len(shards) == yaml.safe_load((REPO / "config/config.yaml").read_text())["synth"]["scenes"]


def test_this_box_runs_gpu_rules_on_cpu(plans):
    rc, out = plans["this_box"]
    assert rc == 0, out[-4000:]
    gpu_jobs = [j for j in parse_plan(out) if j.rule in GPU_RULES]
    assert gpu_jobs and all(j.resources.get("gpu") == "0" for j in gpu_jobs)
    assert all(j.threads <= 2 for j in parse_plan(out))


def test_no_full_supervision_plans_no_fully_supervised_network(plans):
    """evaluate.full_supervision: false drops the fully supervised network's jobs (train_full,
    predict_full) from the plan; the EM rounds' networks stay."""
    rc, out = plans["no_full"]
    assert rc == 0, out[-4000:]
    rules = {j.rule for j in parse_plan(out)}
    assert {"train", "predict"} <= rules
    assert not rules & {"train_full", "predict_full"}, sorted(rules)
    assert "train/full" not in out and "predict/full" not in out


def test_slurm_dry_run_jobs_carry_the_profile_resources(plans):
    rc, out = plans["slurm"]
    assert rc == 0, out[-4000:]
    profile = _profile("slurm")
    defaults = profile["default-resources"]
    jobs = parse_plan(out)
    assert {j.rule for j in jobs} == set(rules_in_files())
    for j in jobs:
        if j.rule == "all":
            continue
        expected = dict(defaults, **profile["set-resources"][j.rule])
        got = j.resources
        for key, value in expected.items():
            assert got.get(key) == str(value), f"{j.rule}: {key}={got.get(key)}, profile says {value}"
        if j.rule in GPU_RULES:
            assert int(got["gpu"]) >= 1 and got["slurm_partition"] == profile["set-resources"][j.rule]["slurm_partition"]
        else:
            assert "gpu" not in got, (j.rule, got)


def test_slurm_submission_commands(tmp_path):
    """Through the real SLURM executor with sbatch (and the account check) mocked on PATH: the sbatch
    command lines ask for the profile's account, partition, runtime, memory, CPUs and GPUs."""
    wd = tmp_path / "wf"
    (wd / "profiles").mkdir(parents=True)
    shutil.copytree(REPO / "profiles" / "slurm", wd / "profiles" / "slurm")
    rules = ["associate", "masks", "train"]
    (wd / "Snakefile").write_text(
        "rule all:\n    input:\n" + "".join(f'        "{r}.out",\n' for r in rules)
        + "".join(f'\n\nrule {r}:\n    output:\n        "{r}.out",\n    shell:\n        "touch {{output}}"\n' for r in rules)
    )
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "sbatch_calls.txt"
    (fake / "sbatch").write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\necho 4242\n')
    (fake / "sacctmgr").write_text("#!/bin/sh\necho lidarlift\n")
    for tool in ("sinfo", "squeue", "sacct", "scontrol", "scancel", "sshare"):
        (fake / tool).write_text("#!/bin/sh\nexit 0\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.Popen([SNAKEMAKE, "--workflow-profile", "profiles/slurm", "--jobs", "3"], cwd=wd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if calls.exists() and len(calls.read_text().splitlines()) >= len(rules):
                break
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log = proc.communicate()[0].decode(errors="replace")
    lines = calls.read_text().splitlines() if calls.exists() else []
    assert len(lines) == len(rules), log[-3000:]
    by_rule = {re.search(r"--comment rule_(\w+)", line).group(1): line.split(" --wrap=")[0] for line in lines}
    res = _profile("slurm")["set-resources"]
    defaults = _profile("slurm")["default-resources"]
    account = f"-A {defaults['slurm_account']}"
    for rule, line in by_rule.items():
        r = dict(defaults, **res[rule])
        assert account in line and f"-p {r['slurm_partition']}" in line, line
        assert f"-t {r['runtime']}" in line and f"--mem {r['mem_mb']}" in line, line
    assert f"--cpus-per-task={_profile('slurm')['set-threads']['associate']}" in by_rule["associate"]
    assert "--gpus" not in by_rule["associate"]
    for rule in ("masks", "train"):
        assert f"--gpus={res[rule]['gpu_model']}:{res[rule]['gpu']}" in by_rule[rule], by_rule[rule]
        assert f"--cpus-per-gpu={res[rule]['cpus_per_gpu']}" in by_rule[rule], by_rule[rule]
    assert "--ntasks-per-gpu" not in by_rule["train"], "train must be one task (torchrun starts the ranks)"


# --- GPU leasing under --resources gpu=N -----------------------------------------------------------------

#: Put before a copy of a real GPU workflow script (workflow/scripts/{masks,train,predict}.py): the stage
#: function it calls (run_masks, train_job, predict_job) becomes a probe that records what the job saw
#: while the script's own lease is held, and waits until every job of the run holds its lease. So the
#: scripts' real leasing lines run, with the job's real Snakemake resource gpu.
_STAGE_PROBE = r"""
import json as _json, os as _os, sys as _sys, time as _time, types as _types
from pathlib import Path as _Path


def _probe(*args, **kwargs):
    import torch
    from lidarlift import gpu

    seen = {"rule": snakemake.rule, "given": snakemake.resources.gpu, "devices": gpu.job_devices(),
            "cuda_visible_devices": _os.environ.get("CUDA_VISIBLE_DEVICES"), "processes": kwargs.get("processes"),
            "device": str(gpu.torch_device("auto", key="train.device"))}
    try:
        torch.zeros(1, device="cuda")
        seen["cuda"] = "initialised"
    except gpu.CudaWithoutLeaseError:
        seen["cuda"] = "refused by the guard"
    except (AssertionError, RuntimeError):
        seen["cuda"] = "not in this torch"  # a lease on a CPU build of torch
    barrier = _Path("barrier")
    (barrier / snakemake.output[0].replace("/", "_")).write_text("held")
    deadline = _time.monotonic() + 120
    while len(list(barrier.iterdir())) < snakemake.params.together:  # hold the lease until every job holds one
        if _time.monotonic() > deadline:
            _sys.exit(f"only {len(list(barrier.iterdir()))} of {snakemake.params.together} jobs ran at once")
        _time.sleep(0.2)
    for out in snakemake.output:
        _Path(out).parent.mkdir(parents=True, exist_ok=True)
        _Path(out).write_text(_json.dumps(seen))
    return {}


for _name, _attr in (("lidarlift.masks.stage", "run_masks"), ("lidarlift.model.train", "train_job"),
                     ("lidarlift.model.predict", "predict_job")):
    _module = _types.ModuleType(_name)
    setattr(_module, _attr, _probe)
    _sys.modules[_name] = _module
"""

#: The three GPU rules with the inputs, outputs and params their scripts read; masks with the SAM backend
#: (the weight-free one leases nothing), train given 2 devices; nothing depends on anything, so all run at once.
_GPU_RULES_SNAKEFILE = """
SHARDS = ["scene-a", "scene-b"]
config.setdefault("masks", {"backend": "sam", "device": "auto"})
config.setdefault("train", {"device": "auto", "predict_batch_size": 4})
TOGETHER = int(config.get("together", 5))


rule all:
    input:
        expand("out/masks/{shard}.stats.json", shard=SHARDS),
        expand("out/predict/r0/{shard}.stats.json", shard=SHARDS),
        "out/train/r0/model.pt",


rule masks:
    input:
        manifest="in/manifest.json",
        presegment="in/presegment",
        associate="in/associate",
    output:
        store="out/masks/{shard}.zarr",
        stats="out/masks/{shard}.stats.json",
        metrics="out/masks/{shard}.metrics.json",
    log:
        "logs/masks/{shard}.log",
    resources:
        gpu=1,
    params:
        masks=config["masks"],
        labels={"space": "nuscenes16"},
        together=TOGETHER,
    script:
        "scripts/masks.py"


rule train:
    input:
        pseudolabels=expand("in/pseudolabels/{shard}", shard=SHARDS),
        manifest="in/manifest.json",
    output:
        model="out/train/r{round}/model.pt",
        stats="out/train/r{round}/stats.json",
        metrics="out/train/r{round}/metrics.json",
    log:
        "logs/train/r{round}.log",
    resources:
        gpu=2,
    params:
        train={"model": {}, "amp": True},
        labels={"space": "nuscenes16"},
        shards=SHARDS,
        together=TOGETHER,
    script:
        "scripts/train.py"


rule predict:
    input:
        model="in/model.pt",
        manifest="in/manifest.json",
    output:
        store="out/predict/r{round}/{shard}.zarr",
        stats="out/predict/r{round}/{shard}.stats.json",
        metrics="out/predict/r{round}/{shard}.metrics.json",
    log:
        "logs/predict/r{round}/{shard}.log",
    resources:
        gpu=1,
    params:
        train={"model": {}, "amp": True},
        labels={"space": "nuscenes16"},
        together=TOGETHER,
    script:
        "scripts/predict.py"
"""


def _gpu_rules_run(tmp_path: Path, pool: int, together: int) -> list[dict]:
    """Run masks x2, train x1 (gpu=2) and predict x2 under --resources gpu=<pool> with 6 simulated
    devices; returns what each job saw (rule, given, devices, CUDA_VISIBLE_DEVICES, torch device, CUDA)."""
    (tmp_path / "scripts").mkdir()
    for rule in ("masks", "train", "predict"):
        (tmp_path / "scripts" / f"{rule}.py").write_text(_STAGE_PROBE + (REPO / "workflow" / "scripts" / f"{rule}.py").read_text())
    for name in ("in/manifest.json", "in/model.pt", "in/presegment", "in/associate", "in/pseudolabels/scene-a",
                 "in/pseudolabels/scene-b"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    (tmp_path / "barrier").mkdir()
    (tmp_path / "Snakefile").write_text(_GPU_RULES_SNAKEFILE)
    env = dict(os.environ, LIDARLIFT_NUM_GPUS="6", LIDARLIFT_GPU_LOCK_DIR=str(tmp_path / "locks"),
               LIDARLIFT_GPU_LEASE_TIMEOUT="5", PYTHONPATH=str(REPO))
    for name in ("CUDA_VISIBLE_DEVICES", "LIDARLIFT_GPU_JOB_DEVICES", "SLURM_JOB_ID"):
        env.pop(name, None)
    proc = run([SNAKEMAKE, "--workflow-profile", "none", "--cores", "5", "--resources", f"gpu={pool}",
                "--config", f"together={together}"], cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "out").rglob("*.stats.json")) + [tmp_path / "out/train/r0/stats.json"]]


def test_concurrent_jobs_of_mixed_gpu_rules_lease_distinct_devices(tmp_path):
    """masks, train (2 devices) and predict jobs under --resources gpu=6, 6 simulated devices: all five
    run at once (a barrier waits for every one), each through its real workflow script's lease, and
    together they hold the 6 devices, each its own: CUDA_VISIBLE_DEVICES names exactly the job's
    devices, and the training job runs 2 DDP processes on its 2."""
    seen = _gpu_rules_run(tmp_path, pool=6, together=5)
    assert sorted(j["rule"] for j in seen) == ["masks", "masks", "predict", "predict", "train"]
    for j in seen:
        assert len(j["devices"]) == j["given"] == (2 if j["rule"] == "train" else 1), j
        assert j["cuda_visible_devices"] == ",".join(j["devices"]), j
    assert next(j["processes"] for j in seen if j["rule"] == "train") == 2
    flat = [d for j in seen for d in j["devices"]]
    assert sorted(flat, key=int) == [str(i) for i in range(6)], seen


def test_a_gpu0_run_leases_nothing_and_never_initialises_cuda(tmp_path):
    """The same jobs under --resources gpu=0 on a host with 6 (simulated) devices: each is given 0
    devices (Snakemake scales the rules' gpu down to the pool), leases none (no lock file), sees none
    (CUDA_VISIBLE_DEVICES=""), chooses the CPU, and CUDA initialisation is refused by the guard."""
    seen = _gpu_rules_run(tmp_path, pool=0, together=1)
    assert sorted(j["rule"] for j in seen) == ["masks", "masks", "predict", "predict", "train"]
    for j in seen:
        assert (j["given"], j["devices"], j["cuda_visible_devices"], j["device"]) == (0, [], "", "cpu"), j
        assert j["cuda"] == "refused by the guard", j
    assert next(j["processes"] for j in seen if j["rule"] == "train") == 1
    assert not (tmp_path / "locks").exists() or not any((tmp_path / "locks").iterdir())


# --- re-running one stage after a full run ------------------------------------------------------------


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A fresh clone of the workflow, run to the end on the tiny world."""
    wd = copy_workflow(tmp_path_factory.mktemp("workflow_run"))
    shutil.copy2(TINY_CONFIG, wd / "tiny.yaml")
    proc = run([SNAKEMAKE, "--cores", "2", "--configfile", "tiny.yaml"], cwd=wd, timeout=1800)
    assert proc.returncode == 0, f"full run on the tiny world failed:\n{(proc.stdout + proc.stderr)[-6000:]}"
    return wd


def _rerun_argvs(wd: Path) -> dict[str, list[str]]:
    argvs = {"unchanged": ["-n", "--configfile", "tiny.yaml"],
             "forceall": ["-n", "--forceall", "--configfile", "tiny.yaml"]}
    for key, value, _ in PARAM_CHANGES:
        path = wd / f"changed_{key}.yaml"
        path.write_text(yaml.safe_dump(merged_config(nested(key, value))))
        argvs[f"change:{key}"] = ["-n", "--configfile", path.name]
    for rule in FORCERUN_RULES:
        argvs[f"forcerun:{rule}"] = ["-n", "--forcerun", rule, "--configfile", "tiny.yaml"]
    return argvs


@pytest.fixture(scope="session")
def rerun_plans(finished_run) -> dict[str, tuple[int, str]]:
    """Every dry run the rerun test looks at (run side by side in forked processes)."""
    wd = finished_run
    argvs = _rerun_argvs(wd)
    full = snakemake_batch(wd, [argvs.pop("forceall")])[0]
    jobs = parse_plan(full[1])
    for rule in ("associate", "train"):  # one shard of one stage; one EM round
        target = next((j for j in reversed(jobs) if j.rule == rule), None)
        if target is not None:
            argvs[f"target:{rule}"] = ["-n", "--configfile", "tiny.yaml", "-f", target.outputs[0]]
    results = dict(zip(argvs, snakemake_batch(wd, list(argvs.values()))))
    results["forceall"] = full
    return results


def test_every_stage_section_has_a_param_change_case():
    from lidarlift.config import load_schema

    sections = set(load_schema()["properties"]) - NOT_STAGE_SECTIONS
    covered = {key.split(".")[0] for key, _, _ in PARAM_CHANGES}
    assert sections <= covered, f"config sections without a re-run test case in PARAM_CHANGES: {sorted(sections - covered)}"


@pytest.mark.slow
def test_rerun_one_stage_after_a_full_run(rerun_plans):
    """One test item (so one pytest-xdist worker waits for the full run, not both); every case is
    checked and every failing case reported."""
    jobs = parse_plan(rerun_plans["forceall"][1])
    existing = {j.rule for j in jobs}
    failures, checked, skipped = [], [], []

    def check(name, rc_out, expected):
        rc, out = rc_out
        if rc != 0:
            failures.append(f"{name}: dry run failed:\n{out[-2000:]}")
            return
        planned = {j.key for j in parse_plan(out)}
        checked.append(name)
        if planned != expected:
            failures.append(f"{name}:\n{fmt_diff(planned, expected)}")

    rc, out = rerun_plans["unchanged"]
    if rc != 0 or "Nothing to be done" not in out:
        failures.append(f"after the full run something is left to do:\n{out[-3000:]}")
    for key, value, owners in PARAM_CHANGES:
        if not set(owners) <= existing:
            skipped.append(f"{key} (rules {sorted(set(owners) - existing)} not in the workflow yet)")
            continue
        check(f"changing {key}", rerun_plans[f"change:{key}"], downstream(jobs, {j.key for j in jobs if j.rule in owners}))
    for rule in FORCERUN_RULES:
        if rule in existing:
            check(f"--forcerun {rule}", rerun_plans[f"forcerun:{rule}"], downstream(jobs, {j.key for j in jobs if j.rule == rule}))
    # one shard of one stage, one EM round: `snakemake -f <its output>` plans that job alone
    for rule in ("associate", "train"):
        name = f"target:{rule}"
        if name in rerun_plans:
            target = next(j for j in reversed(jobs) if j.rule == rule)
            check(f"-f {target.outputs[0]}", rerun_plans[name], {target.key})
    assert not failures, "\n\n".join(failures) + (f"\n\nskipped: {skipped}" if skipped else "")
    assert checked, "no case checked"
