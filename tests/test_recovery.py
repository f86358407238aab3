"""Recovering after a crash (README "Your data is safe"): a run killed with SIGKILL in the middle leaves
its lock and incomplete-output marks, and a plain rerun stops saying what to do; ``snakemake --unlock``
then ``--rerun-incomplete`` finishes it, and every store equals that of a run that was never
interrupted."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from test_slurm import STORES, store_differences
from test_workflow import SNAKEMAKE, TINY_CONFIG, copy_workflow


def test_a_temporary_output_of_a_dead_writer_is_removed_and_nothing_else(tmp_path):
    from lidarlift.tmpfiles import temporary_path

    dead = subprocess.Popen(["true"])
    dead.wait()
    for name in (f"a.zarr.tmp-{dead.pid}", f"a.zarr.tmp-{os.getppid()}", "a.zarr.tmp-mine", "b.zarr.tmp-1", "a.zarr"):
        (tmp_path / name).mkdir()
    (tmp_path / f".a.zarr.tmp-{dead.pid}").write_text("x")  # another prefix: not this output's
    tmp = temporary_path(tmp_path / "a.zarr")
    assert tmp == tmp_path / f"a.zarr.tmp-{os.getpid()}"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([f"a.zarr.tmp-{os.getppid()}", "a.zarr.tmp-mine", "b.zarr.tmp-1", "a.zarr", f".a.zarr.tmp-{dead.pid}"])
    assert temporary_path(tmp_path / "a.zarr", prefix=".") == tmp_path / f".a.zarr.tmp-{os.getpid()}"
    assert not (tmp_path / f".a.zarr.tmp-{dead.pid}").exists()


def _snakemake(args: list[str], cwd: Path, timeout: float = 600) -> tuple[int, str]:
    proc = subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Object at .snakemake_timestamp")
def test_a_killed_run_resumes_to_the_stores_of_an_uninterrupted_one(tmp_path):
    from lidarlift.config import merge
    from lidarlift.synth import generate

    tiny = yaml.safe_load(TINY_CONFIG.read_text())
    world = tmp_path / "world"
    generate(world, version="v1.0-mini", **tiny["synth"])
    wd = copy_workflow(tmp_path / "wf")
    for name in ("killed", "clean"):
        cfg = merge(tiny, {"dataset": {"kind": "existing", "dataroot": str(world)}, "results": f"results_{name}"})
        (wd / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    killed = [*(f"results_killed/{s}" for s in STORES), "--cores", "2", "--configfile", "killed.yaml"]

    # kill the whole run (Snakemake and its jobs) once the first store is complete and later jobs run
    proc = subprocess.Popen([SNAKEMAKE, *killed], cwd=wd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    first = wd / "results_killed" / STORES[0]
    while not first.exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no store after 300 s"
        time.sleep(0.1)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = [s for s in STORES if (wd / "results_killed" / s).exists()]
    assert len(done_before) < len(STORES), "the run finished before the kill"

    # what the kill left: no store under its real name that is not complete, and Snakemake's lock
    leftovers = [p.name for p in (wd / "results_killed").rglob("*") if ".tmp-" in p.name]
    # a plain rerun stops and says what to do: the outputs of the jobs that were running are incomplete
    # (--rerun-incomplete; checked first, while the DAG is built) or, when the kill fell between jobs,
    # the killed run's lock is still there (--unlock)
    rc, out = _snakemake(killed, wd)
    assert rc != 0 and ("--unlock" in out or "--rerun-incomplete" in out), out[-2000:]

    rc, out = _snakemake([*killed, "--unlock"], wd)
    assert rc == 0, out[-3000:]
    rc, out = _snakemake([*killed, "--rerun-incomplete"], wd)
    assert rc == 0, out[-6000:]
    rc, out = _snakemake([*(f"results_clean/{s}" for s in STORES), "--cores", "2", "--configfile", "clean.yaml"], wd)
    assert rc == 0, out[-6000:]

    differences = {s: d for s in STORES if (d := store_differences(wd / "results_killed" / s, wd / "results_clean" / s))}
    assert not differences, f"stores after the resumed run differ from an uninterrupted run: {differences}"
    # the resumed run cleaned up after the killed jobs' temporary stores (or none were left)
    still = [p.name for p in (wd / "results_killed").rglob("*") if ".tmp-" in p.name]
    assert not still, f"temporary stores left after the resumed run: {still} (after the kill: {leftovers})"
