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
lock_dir = None if lock_dir == "-" else lock_dir  # "-": the default (LIDARLIFT_GPU_LOCK_DIR, SLURM subfolder)
try:
    lease = lease_gpus(k, lock_dir=lock_dir, timeout=timeout, poll=0.05)
except GpuLeaseError as e:
    print("ERROR", type(e).__name__, e, flush=True)
    sys.exit(3)
print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
while not os.path.exists(release_file):
    time.sleep(0.02)
"""


def start(tmp_path, k=1, timeout=5.0, n_gpus="4", cvd=None, lock_dir=None, **extra_env):
    env = dict(os.environ, LIDARLIFT_NUM_GPUS=str(n_gpus), **extra_env)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if cvd is not None:
        env["CUDA_VISIBLE_DEVICES"] = cvd
    lock_dir = str(tmp_path / "locks") if lock_dir is None else lock_dir
    return subprocess.Popen([sys.executable, "-c", WORKER, str(k), lock_dir, str(timeout),
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
    assert out.returncode == 0 and out.stdout.strip() == ""  # gpu=0: no lease, every device hidden


# --- one leasing path for jobs: lidarlift.gpu.job_gpus (issue 14) -----------------------------------------


@pytest.fixture
def gpu_host(monkeypatch):
    """A host whose torch reports 4 CUDA devices (torch.version.cuda set, is_available() True), 4
    simulated devices to lease, no inherited CUDA_VISIBLE_DEVICES: what the old device choice
    (`torch.cuda.is_available()` -> cuda:0) took without a lease."""
    import torch

    monkeypatch.setenv("LIDARLIFT_NUM_GPUS", "4")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(gpu.ENV_JOB_DEVICES, raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    return torch


def _choices():
    """The devices the masks, train and predict code choose in this process (predict calls torch_device)."""
    from lidarlift.masks.stage import resolve_device as masks_device
    from lidarlift.model.train import Dist
    from lidarlift.model.train import resolve_device as train_device

    return {"masks": str(masks_device({"backend": "sam", "device": "auto"})),
            "train": str(train_device("auto", Dist())),
            "predict": str(gpu.torch_device("auto", key="train.device"))}


def test_a_job_given_no_gpu_runs_on_the_cpu_and_never_initialises_cuda(gpu_host, tmp_path):
    """gpu = 0 on a host with GPUs: the job leases nothing (no lock file), sees no device
    (CUDA_VISIBLE_DEVICES=""), every stage chooses the CPU, and CUDA initialisation raises."""
    torch = gpu_host
    from lidarlift.masks import MaskBackendError

    with gpu.job_gpus(0, lock_dir=tmp_path) as job:
        assert job.devices == [] and job.processes == 1 and gpu.job_devices() == []
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
        assert torch.cuda.is_available() is False and torch.cuda.device_count() == 0
        assert _choices() == {"masks": "cpu", "train": "cpu", "predict": "cpu"}
        with pytest.raises(gpu.CudaWithoutLeaseError, match="leased no GPU"):
            torch.zeros(1, device="cuda")
        with pytest.raises(gpu.CudaWithoutLeaseError, match="leased no GPU"):
            torch.cuda.current_device()
        with pytest.raises(gpu.CudaWithoutLeaseError, match="config key train.device is cuda"):
            gpu.torch_device("cuda", key="train.device")
        with pytest.raises(MaskBackendError, match="config key masks.device is cuda"):
            from lidarlift.masks.stage import resolve_device

            resolve_device({"backend": "sam", "device": "cuda"})
    assert list(tmp_path.iterdir()) == []  # nothing was leased
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and gpu.ENV_JOB_DEVICES not in os.environ
    assert torch.cuda.is_available() is True  # the guard is gone with the job
    with gpu.job_gpus(1, use=0, lock_dir=tmp_path) as job:  # the weight-free masks backend given a GPU
        assert job.devices == [] and os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_device_choice_never_asks_cuda_without_a_lease(gpu_host, monkeypatch):
    """Outside a job lease the masks, train and predict device choice (auto) is the CPU and does not
    even ask torch whether CUDA exists (the old choice asked, got True and took cuda:0)."""
    torch = gpu_host

    def asked():
        raise AssertionError("torch.cuda was asked without a lease")

    monkeypatch.setattr(torch.cuda, "is_available", asked)
    monkeypatch.setattr(torch.cuda, "device_count", asked)
    monkeypatch.setattr(torch.cuda, "_lazy_init", asked)
    assert gpu.job_devices() is None
    assert _choices() == {"masks": "cpu", "train": "cpu", "predict": "cpu"}
    # asked for by name outside any job (a benchmark on a machine of its own): given as asked
    assert str(gpu.torch_device("cuda", key="train.device", local_rank=1)) == "cuda:1"


def test_a_job_given_k_gpus_runs_k_ranks_on_exactly_those(gpu_host, tmp_path, monkeypatch):
    """gpu = 2 where CUDA_VISIBLE_DEVICES (as SLURM sets it) allows 1,2,3: two of those are leased and
    named by CUDA_VISIBLE_DEVICES, the job runs 2 DDP ranks, rank r on cuda:r (the r-th leased device);
    predict (use=1) takes one device of its 2; the lease and environment go with the job."""
    from lidarlift.model.train import Dist, resolve_device, train_job

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2,3")
    with gpu.job_gpus(2, lock_dir=tmp_path) as job:
        assert len(job.devices) == 2 and set(job.devices) <= {"1", "2", "3"} and job.processes == 2
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(job.devices) and gpu.job_devices() == job.devices
        assert gpu.lease_status(tmp_path) == {d: True for d in job.devices}  # held (as the job sees its devices)
        assert [str(resolve_device("auto", Dist(r, 2, r))) for r in range(2)] == ["cuda:0", "cuda:1"]
        with pytest.raises(gpu.GpuLeaseError, match="rank 2 has no device"):
            resolve_device("auto", Dist(2, 3, 2))
        with pytest.raises(ValueError, match="one rank per leased device"):
            train_job({}, processes=3)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1,2,3" and gpu.lease_status(tmp_path) == {"1": False, "2": False, "3": False}
    with gpu.job_gpus(2, use=1, lock_dir=tmp_path) as job:
        assert len(job.devices) == 1 and str(gpu.torch_device("auto", key="train.device")) == "cuda:0"
    with pytest.raises(gpu.GpuLeaseError, match="resource gpu must be an integer"), gpu.job_gpus(-1, lock_dir=tmp_path):
        pass


def test_slurm_jobs_lease_among_their_own_devices_in_their_own_lock_folder(tmp_path):
    """Two SLURM jobs on one node, each allocated one GPU that it sees as index 0 (cgroup-constrained
    devices): both lease it at once (locks in slurm-<job id>), where one shared folder keyed by index
    would make the second wait; without CUDA_VISIBLE_DEVICES the host-wide folder is used."""
    base = str(tmp_path / "locks")
    jobs = [start(tmp_path, cvd="0", lock_dir="-", timeout=0.5, LIDARLIFT_GPU_LOCK_DIR=base, SLURM_JOB_ID=str(j))
            for j in (101, 102)]
    try:
        assert [first_line(p) for p in jobs] == ["0", "0"]
        assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["slurm-101", "slurm-102"]
    finally:
        finish(tmp_path, jobs)
    (tmp_path / "release").unlink()
    plain = [start(tmp_path, cvd="0", lock_dir="-", timeout=0.5, LIDARLIFT_GPU_LOCK_DIR=base) for _ in range(2)]
    try:
        got = sorted(first_line(p) for p in plain)
        assert got[0] == "0" and got[1].startswith("ERROR GpuLeaseTimeout"), got  # the second waited for "0"
    finally:
        finish(tmp_path, plain)
    assert (tmp_path / "locks" / "gpu-0.lock").exists()
