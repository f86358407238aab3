"""GPU leasing (lidarlift.gpu) with simulated devices: distinct devices for concurrent jobs, a killed
job's device freed at once, an inherited CUDA_VISIBLE_DEVICES respected, k devices all or nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from lidarlift import gpu

WORKER = r"""
import os, sys, time
from lidarlift.gpu import lease_gpus, GpuLeaseError
k, lock_dir, timeout, release_file = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
try:
    lease = lease_gpus(k, lock_dir=lock_dir, timeout=timeout, poll=0.05)
except GpuLeaseError as e:
    print("ERROR", type(e).__name__, e, flush=True)
    sys.exit(3)
print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
while not os.path.exists(release_file):
    time.sleep(0.02)
"""


def start(tmp_path, k=1, timeout=5.0, n_gpus="4", cvd=None):
    env = dict(os.environ, LIDARLIFT_NUM_GPUS=str(n_gpus))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if cvd is not None:
        env["CUDA_VISIBLE_DEVICES"] = cvd
    return subprocess.Popen([sys.executable, "-c", WORKER, str(k), str(tmp_path / "locks"), str(timeout),
                             str(tmp_path / "release")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def first_line(proc, wait=20.0):
    """The worker's first output line: its CUDA_VISIBLE_DEVICES, or 'ERROR ...'."""
    t0 = time.monotonic()
    line = proc.stdout.readline().strip()
    assert time.monotonic() - t0 < wait, "worker too slow"
    if not line:
        raise AssertionError(f"worker said nothing; stderr: {proc.stderr.read()}")
    return line


def finish(tmp_path, procs):
    (tmp_path / "release").write_text("go")
    for p in procs:
        p.wait(timeout=20)


def test_concurrent_jobs_get_distinct_devices_and_the_next_one_waits(tmp_path):
    procs = [start(tmp_path) for _ in range(4)]
    try:
        got = [first_line(p) for p in procs]
        assert sorted(got) == ["0", "1", "2", "3"]  # four jobs, four distinct devices
        late = start(tmp_path, timeout=0.5)
        line = first_line(late)
        assert line.startswith("ERROR GpuLeaseTimeout") and "became free within" in line
        assert late.wait(timeout=10) == 3
    finally:
        finish(tmp_path, procs)
    # all released: a new job gets a device at once
    again = start(tmp_path, timeout=0.5)
    try:
        assert first_line(again) in {"0", "1", "2", "3"}
    finally:
        finish(tmp_path, [again])


def test_a_killed_job_frees_its_device(tmp_path):
    holder = start(tmp_path, n_gpus="1")
    assert first_line(holder) == "0"
    waiter = start(tmp_path, n_gpus="1", timeout=30.0)
    try:
        time.sleep(0.3)
        assert waiter.poll() is None  # waiting for the only device
        os.kill(holder.pid, signal.SIGKILL)  # the job dies without releasing anything
        holder.wait(timeout=10)
        assert first_line(waiter) == "0"  # the kernel dropped the dead job's flock
    finally:
        finish(tmp_path, [waiter])


def test_inherited_cuda_visible_devices_limits_the_choice(tmp_path):
    procs = [start(tmp_path, n_gpus="8", cvd="3,5") for _ in range(2)]
    try:
        assert sorted(first_line(p) for p in procs) == ["3", "5"]
        third = start(tmp_path, n_gpus="8", cvd="3,5", timeout=0.3)
        assert first_line(third).startswith("ERROR GpuLeaseTimeout")
        assert third.wait(timeout=10) == 3
    finally:
        finish(tmp_path, procs)
    hidden = start(tmp_path, n_gpus="8", cvd="")
    assert first_line(hidden).startswith("ERROR GpuLeaseError") and hidden.wait(timeout=10) == 3


def test_k_devices_are_leased_all_or_nothing(tmp_path):
    pair = start(tmp_path, k=2, n_gpus="3")
    single = None
    try:
        devices = first_line(pair).split(",")
        assert len(devices) == 2 and len(set(devices)) == 2
        other_pair = start(tmp_path, k=2, n_gpus="3", timeout=0.3)  # one left: must not take it and wait
        assert first_line(other_pair).startswith("ERROR GpuLeaseTimeout")
        single = start(tmp_path, k=1, n_gpus="3", timeout=0.3)
        assert first_line(single) not in devices  # the remaining device was left free
    finally:
        finish(tmp_path, [p for p in (pair, single) if p is not None])


def test_in_process_lease_sets_and_restores_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LIDARLIFT_NUM_GPUS", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with gpu.lease_gpus(1, lock_dir=tmp_path, timeout=1) as lease:
        assert lease.devices == ["1"] and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
        assert gpu.lease_status(tmp_path) == {"1": True}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1" and gpu.lease_status(tmp_path) == {"1": False}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    lease = gpu.lease_gpus(2, lock_dir=tmp_path, timeout=1)
    assert lease.devices == ["0", "1"] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    lease.release(restore_env=True)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with pytest.raises(gpu.GpuLeaseError, match="asked to lease 3 GPU"):
        gpu.lease_gpus(3, lock_dir=tmp_path, timeout=1)
    monkeypatch.setenv("LIDARLIFT_NUM_GPUS", "two")
    with pytest.raises(gpu.GpuLeaseError, match="LIDARLIFT_NUM_GPUS='two' is not an integer"):
        gpu.device_count()


def test_cli_runs_a_command_on_leased_devices(tmp_path):
    env = dict(os.environ, LIDARLIFT_NUM_GPUS="2", LIDARLIFT_GPU_LOCK_DIR=str(tmp_path))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    show = [sys.executable, "-c", "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'))"]
    out = subprocess.run([sys.executable, "-m", "lidarlift.gpu", "2", "--", *show], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "0,1", out.stderr
    out = subprocess.run([sys.executable, "-m", "lidarlift.gpu", "0", "--", *show], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "None"  # gpu=0: no lease, nothing set
