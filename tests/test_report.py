"""The report end to end: the evaluation rules of the real rule files on a small synthetic world, with
stand-in rules for the stages upstream of them (network predictions and pseudo-labels made from ground
truth with known noise), then ``snakemake --report`` and a headless-Chromium screenshot of the report.

The stand-ins write the same stores the real ``predict``, ``pseudolabels`` and ``train`` rules write
(lidarlift.artifacts), so this checks the evaluation layer alone, in well under a minute.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

STUB_RULES = r'''
# Stand-in for the predict / pseudolabels / train rules, one job (each Snakemake job costs a process):
# stores made from ground truth with known noise, in the layouts lidarlift.artifacts defines.
import numpy as np
from lidarlift import artifacts as A
from lidarlift.classes import candidate_bit
from lidarlift.groundtruth import point_truth
from lidarlift.manifest import Manifest
from lidarlift.workflow import write_json

STUB_PREDICT = {f"r{r}": list(SHARDS) for r in ROUNDS} | {"full": list(EVAL.eval_shards)}
STUB_PSEUDO = list(SHARDS)  # the E-step labels every shard
NOISE = {"r0": 0.30, "r1": 0.15, "full": 0.05}


def write_stubs(manifest_file):
    m = Manifest.from_json(manifest_file)
    rng = np.random.default_rng(7)
    for shard in SHARDS:
        samples = m.shard_samples(shard)
        truths = [point_truth(m, s) for s in samples]
        tokens = [s.token for s in samples]
        offsets = A.offsets_from_counts([t.label.size for t in truths])
        gt = np.concatenate([t.label for t in truths]).astype(np.int64)
        for name, shards in STUB_PREDICT.items():
            if shard not in shards:
                continue
            pred = np.where(gt > 0, gt, rng.integers(1, 17, gt.size))
            flip = rng.random(gt.size) < NOISE.get(name, 0.1)
            pred[flip] = rng.integers(1, 17, int(flip.sum()))
            with A.write_store(f"{RESULTS}/predict/{name}/{shard}.zarr", "predict", shard=shard, sample_tokens=tokens) as g:
                A.put(g, "point_offsets", offsets)
                A.put(g, "pred", pred)
                A.put(g, "logits", np.zeros((gt.size, 16)))
                A.put(g, "features", np.zeros((gt.size, 2)))
        if shard not in STUB_PSEUDO:
            continue
        inst = np.concatenate([t.instance for t in truths]) % 1000
        for r in ROUNDS:
            labelled = (rng.random(gt.size) < 0.5 + 0.2 * r) & (gt > 0)
            label = np.where(labelled, gt, 0)
            wrong = labelled & (rng.random(gt.size) < 0.02)
            label[wrong] = rng.integers(1, 17, int(wrong.sum()))
            cand = np.where(label == 0, candidate_bit(np.maximum(gt, 1)) | candidate_bit(rng.integers(1, 17, gt.size)),
                            candidate_bit(label))
            with A.write_store(f"{RESULTS}/pseudolabels/r{r}/{shard}.zarr", "pseudolabels", shard=shard, sample_tokens=tokens) as g:
                A.put(g, "point_offsets", offsets)
                A.put(g, "label", label)
                A.put(g, "confidence", labelled.astype(np.float32))
                A.put(g, "instance_id", np.where(labelled, inst, 0))
                A.put(g, "candidate_mask", cand)
                A.put(g, "source", np.where(labelled, 2, 3))
                A.put(g, "round", np.full(gt.size, r))
    for r in [*ROUNDS, "full"]:
        k = 3 if r == "full" else r
        hist = [{"epoch": e + 1, "loss": 2.0 / (e + 1 + k), "ce": 1.5 / (e + 1 + k), "lovasz": 0.5 / (e + 1 + k), "steps": 10 * e}
                for e in range(5)]
        write_json(f"{RESULTS}/train/{'full' if r == 'full' else f'r{r}'}/metrics.json", {"kind": "train", "round": r, "history": hist})


rule stub_upstream:
    input:
        manifest=manifest_path(),
    output:
        [directory(f"{RESULTS}/predict/{n}/{s}.zarr") for n, shards in STUB_PREDICT.items() for s in shards]
        + [directory(f"{RESULTS}/pseudolabels/r{r}/{s}.zarr") for r in ROUNDS for s in STUB_PSEUDO]
        + [f"{RESULTS}/train/r{r}/metrics.json" for r in ROUNDS] + [f"{RESULTS}/train/full/metrics.json"],
    run:
        write_stubs(input.manifest)
'''


def write_workdir(root: Path, dataroot: Path) -> Path:
    """A Snakemake working directory running the repository's dataset and evaluate rules plus the
    stand-ins, on an existing nuScenes-format world at ``dataroot``.

    The rule files, scripts and report captions are copied from the repository unchanged, so the rules'
    relative paths (``../workflow/scripts``, ``../envs``, ``../report``) resolve inside the workdir."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("rules", "workflow/scripts", "report", "config"):
        shutil.copytree(REPO / sub, root / sub, dirs_exist_ok=True)
    env = REPO / "envs" / "lidarlift.yaml"
    (root / "envs").mkdir(exist_ok=True)
    if env.exists():
        shutil.copy(env, root / "envs" / "lidarlift.yaml")
    else:  # the rules name a conda env; Snakemake reads the file when it records job metadata
        (root / "envs" / "lidarlift.yaml").write_text("name: lidarlift\ndependencies: [python=3.11]\n")
    (root / "rules" / "stubs.smk").write_text(STUB_RULES)
    from lidarlift.datasets.nuscenes import scene_splits

    names = sorted(sc["name"] for sc in json.loads((Path(dataroot) / "v1.0-mini" / "scene.json").read_text()))
    splits = scene_splits("v1.0-mini")
    train = [n for n in names if splits.get(n) == "train"]
    devkit = {"scene-0103", "scene-0916"} <= set(names)  # the devkit's mini_val must be complete
    config = {
        "results": "results",
        "dataset": {"kind": "existing", "format": "nuscenes", "dataroot": str(dataroot), "version": "v1.0-mini"},
        "em": {"rounds": 2},
        "evaluate": {"devkit_check": devkit, "figures": {"shards": train[:1], "bev_extent": 30.0},
                     "export": {"sources": ["network"], "formats": ["nuscenes", "semantickitti", "clusterlabel"]}},
    }
    (root / "config.json").write_text(json.dumps(config))
    (root / "Snakefile").write_text(textwrap.dedent('''
        from lidarlift.config import validate_config

        configfile: "config.json"
        validate_config(config, "config/schema.yaml")
        report: "report/workflow.rst"

        include: "rules/common.smk"
        include: "rules/dataset.smk"
        include: "rules/evaluate.smk"
        include: "rules/stubs.smk"

        EVAL.stages = frozenset({"pseudolabels", "network"})  # the stand-ins make these stores only

        rule all:
            default_target: True
            input:
                f"{RESULTS}/summary.json",
                f"{EVAL.report_dir}/index.json",
    '''))
    return root


def run_snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SNAKEMAKE, "--cores", "2", *args], cwd=workdir, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def world(request, tmp_path_factory):
    """The synth engineer's ``tiny_world`` when tests/conftest.py provides it, else a small mini world
    (6 scenes: both mini_val scenes, so the devkit check runs on the official split)."""
    try:
        return Path(request.getfixturevalue("tiny_world"))
    except pytest.FixtureLookupError:
        from lidarlift.synth import generate

        root = tmp_path_factory.mktemp("report_world")
        generate(root, seed=3, scenes=6, samples_per_scene=2, image_width=192, image_height=108, beams=16,
                 azimuth_steps=540, sweeps_per_keyframe=2, sweeps_before_first=1)
        return root


@pytest.fixture(scope="module")
def report_run(world, tmp_path_factory):
    work = write_workdir(tmp_path_factory.mktemp("report"), world)
    run_snakemake(work)
    run_snakemake(work, "--report", str(work / "report.html"))
    return work


def test_dag_scores_exports_and_summary(report_run):
    summary = json.loads((report_run / "results" / "summary.json").read_text())
    ev = summary["evaluation"]
    n_samples = summary["dataset"]["samples"]
    # the stand-in network of the final round is right on ~85% of points
    assert 0.3 < ev["miou"] < 0.95
    for key in ("pq", "sq", "rq", "pq_things", "pq_stuff"):
        assert ev[key] is not None and 0 <= ev[key] <= 1
    if ev["devkit_status"] != "agrees":
        assert "devkit_check is false" in ev["devkit_status"]
        pytest.skip("the world lacks a mini_val scene: devkit cross-check not run in the DAG (covered by test_evaluate_devkit)")
    assert ev["max_abs_diff"] <= 1e-6
    assert ev["devkit"]["miou"] == pytest.approx(ev["miou"], abs=1e-6)
    assert set(ev["iou_per_class"]) == set(ev["devkit"]["iou_per_class"])
    assert [r["round"] for r in ev["headline"]] == [0, 1]
    assert ev["headline"][1]["network_miou"] > ev["headline"][0]["network_miou"]  # less noise in round 1
    assert 0 < ev["share_of_full"] < 1
    assert ev["rounds"][0]["pseudolabels"]["precision"] > 0.95
    assert ev["exports"]["network"]["samples"] == {"nuscenes": n_samples, "semantickitti": n_samples, "clusterlabel": n_samples}
    figures = json.loads((report_run / "results" / "report" / "index.json").read_text())["files"]
    assert len(figures) == 11 and all(f["bytes"] > 400 for f in figures)
    # exports in place, in the submission layout
    exp = report_run / "results" / "export" / "network"
    assert (exp / "nuscenes" / "mini_val" / "submission.json").exists()
    assert len(list((exp / "nuscenes" / "lidarseg").glob("*/*_lidarseg.bin"))) == n_samples
    assert len(list((exp / "semantickitti" / "sequences").glob("*/predictions/*.label"))) == n_samples
    log = (report_run / "results" / "logs" / "evaluate.log").read_text()
    assert "devkit check: max |project - devkit|" in log


def test_report_html_has_every_category(report_run):
    html = (report_run / "report.html").read_text()
    assert len(html) > 100_000
    for cat in ("1. Headline", "2. Label quality", "3. Stage quality", "4. Network", "5. Samples", "6. Benchmarks"):
        assert cat in html, cat
    for name in ("headline.html", "confusion.png", "training_curves.png", "benchmarks.html", "_bev.png", "_overlay.png"):
        assert name in html, name


def test_report_opens_in_headless_chromium(report_run, tmp_path):
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless browser: install Debian's 'chromium' package (apt-get install chromium) to run this check")
    shot = tmp_path / "report.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1400,1000", "--virtual-time-budget=3000", f"--screenshot={shot}",
                           (report_run / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (1000, 1400)
    # a rendered report, not a blank page or the "enable JavaScript" notice: many colours, not one
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 50, len(colours)
    assert (img.std(axis=(0, 1)) > 10).all()
