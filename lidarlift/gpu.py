"""GPU leasing: give each concurrent GPU job its own device(s), and CUDA to no job without one.

Snakemake does not assign devices (snakemake issue #281): under ``--resources gpu=N`` it only caps
how many GPU jobs run at once, and every job sees every GPU. A job therefore leases devices itself,
through one path, :func:`job_gpus`, called by the ``masks``, ``train`` and ``predict`` workflow
scripts with the job's Snakemake resource (``snakemake.resources.gpu``; Snakemake scales it down to
the pool, so under ``--resources gpu=0`` it is 0):

- a job given ``k`` >= 1 devices leases ``k`` of them (below) and runs on exactly those: ``cuda:0 ..
  cuda:k-1`` inside the job; a training job starts ``k`` DDP ranks, rank ``r`` on ``cuda:r``;
- a job given 0 devices runs on the CPU: ``CUDA_VISIBLE_DEVICES`` is set to ``""`` (for the job and
  every process it starts), and a guard makes any CUDA initialisation in the job's process raise
  :class:`CudaWithoutLeaseError` (``torch.cuda.is_available()`` answers False without asking the
  driver);
- code choosing a torch device asks :func:`torch_device`, which never touches CUDA unless the job
  holds a lease (:func:`job_devices`, inherited by the job's child processes through
  ``LIDARLIFT_GPU_JOB_DEVICES``), or, outside any job, is asked for ``cuda`` by name.

Leasing:

- the candidate devices are the tokens of an inherited ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs;
  leasing happens only among those), else ``0 .. n-1`` with ``n`` from ``LIDARLIFT_NUM_GPUS``
  (simulated devices, for tests), else ``nvidia-smi``, else torch (queried in a subprocess so that
  CUDA is not initialised here);
- a device is leased by a non-blocking ``flock`` on one lock file per device in the lock directory
  (``LIDARLIFT_GPU_LOCK_DIR``, default ``/tmp/lidarlift-gpu-locks-<uid>``; use a node-local folder);
- under SLURM (``SLURM_JOB_ID`` set) with an inherited ``CUDA_VISIBLE_DEVICES`` (the devices SLURM
  allocated to the job), leasing happens only among those, with locks in a per-job subfolder
  ``slurm-<job id>`` of the lock directory: SLURM already gives each job its own devices, and with
  cgroup-constrained devices two jobs on one node both see index 0, so locks keyed by index in one
  shared folder would make the second job wait for a device it does not share. Snakemake jobs run
  inside one allocation (``salloc``, then a local run) share its job id and so lease among its
  devices as on any host. Without ``CUDA_VISIBLE_DEVICES`` the host-wide folder is used;
- ``k`` devices are taken all at once or not at all (no hold-and-wait, so jobs leasing several devices
  cannot deadlock); when too few are free the job polls until ``timeout`` (``LIDARLIFT_GPU_LEASE_TIMEOUT``
  seconds, default 3600) and then raises :class:`GpuLeaseTimeout`;
- on success ``CUDA_VISIBLE_DEVICES`` is set to the leased tokens, so inside the job the leased
  devices are ``cuda:0 .. cuda:k-1``. This must happen before CUDA initialises in the process
  (``torch.cuda.is_available()`` already initialises it): lease first, then touch CUDA;
- the lock is released when :meth:`GpuLease.release` is called, when the ``with`` block ends, or when
  the process exits or dies (the kernel drops a dead process's flocks), so a killed job's device is
  free again at once.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("lidarlift.gpu")

ENV_NUM_GPUS = "LIDARLIFT_NUM_GPUS"
ENV_LOCK_DIR = "LIDARLIFT_GPU_LOCK_DIR"
ENV_TIMEOUT = "LIDARLIFT_GPU_LEASE_TIMEOUT"
#: the devices the running job leased, comma-separated ("" for a job given none); unset outside a job
ENV_JOB_DEVICES = "LIDARLIFT_GPU_JOB_DEVICES"
DEFAULT_TIMEOUT_S = 3600.0


class GpuLeaseError(RuntimeError):
    """No device can be leased (none exists, more asked than exist, or CUDA already initialised)."""


class GpuLeaseTimeout(GpuLeaseError):
    """Devices exist but too few stayed free until the timeout."""


class CudaWithoutLeaseError(GpuLeaseError):
    """CUDA was asked for in a job that leased no GPU (or by a device choice that needs one)."""


def default_lock_dir() -> Path:
    """LIDARLIFT_GPU_LOCK_DIR (default /tmp/lidarlift-gpu-locks-<uid>); under SLURM with the job's
    CUDA_VISIBLE_DEVICES, its subfolder slurm-<SLURM_JOB_ID> (module docstring)."""
    base = Path(os.environ.get(ENV_LOCK_DIR) or f"/tmp/lidarlift-gpu-locks-{os.getuid()}")
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return base / ("slurm-" + re.sub(r"[^A-Za-z0-9_.-]", "_", job))
    return base


def _inherited_tokens() -> list[str] | None:
    """Tokens of an inherited CUDA_VISIBLE_DEVICES (None when unset; [] when it hides every device)."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    tokens = [t.strip() for t in raw.split(",") if t.strip()]
    out = []
    for t in tokens:
        if t.lstrip("-").isdigit() and int(t) < 0:
            break  # CUDA stops at the first invalid (negative) index
        out.append(t)
    return out


def _count_nvidia_smi() -> int | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _count_torch_subprocess() -> int:
    code = "import torch; print(torch.cuda.device_count() if torch.version.cuda else 0)"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
        return int(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return 0


def device_count() -> int:
    """Devices on this host before any CUDA_VISIBLE_DEVICES filter: LIDARLIFT_NUM_GPUS, else nvidia-smi, else torch."""
    sim = os.environ.get(ENV_NUM_GPUS)
    if sim not in (None, ""):
        try:
            n = int(sim)
        except ValueError:
            raise GpuLeaseError(f"environment variable {ENV_NUM_GPUS}={sim!r} is not an integer") from None
        if n < 0:
            raise GpuLeaseError(f"environment variable {ENV_NUM_GPUS}={sim!r} must be >= 0")
        return n
    n = _count_nvidia_smi()
    return n if n is not None else _count_torch_subprocess()


def candidate_devices() -> list[str]:
    """Device tokens this job may lease: the inherited CUDA_VISIBLE_DEVICES, else '0'..'n-1'."""
    inherited = _inherited_tokens()
    if inherited is not None:
        return inherited
    return [str(i) for i in range(device_count())]


def _lock_name(token: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", token) + ".lock"


@dataclass
class GpuLease:
    """Leased device tokens (as CUDA_VISIBLE_DEVICES now lists them) and the open, locked lock files."""

    devices: list[str]
    lock_paths: list[Path]
    previous_cuda_visible_devices: str | None
    _fds: list[int] = field(default_factory=list, repr=False)

    @property
    def active(self) -> bool:
        return bool(self._fds)

    def release(self, restore_env: bool = False) -> None:
        """Drop the locks (idempotent). ``restore_env`` puts back the previous CUDA_VISIBLE_DEVICES."""
        for fd in self._fds:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        if self._fds:
            log.info("released GPU(s) %s", ",".join(self.devices))
        self._fds = []
        if restore_env:
            if self.previous_cuda_visible_devices is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = self.previous_cuda_visible_devices

    def __enter__(self) -> "GpuLease":
        return self

    def __exit__(self, *exc) -> None:
        self.release(restore_env=True)


def _try_lock(path: Path, note: bool = True) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    if not note:
        return fd
    # who holds it, for people debugging a busy host (the lock, not the text, is what counts)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} host {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
    return fd


def _cuda_already_initialised() -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001 - a broken torch is not our business here
        return False


def lease_gpus(k: int = 1, *, lock_dir: str | os.PathLike | None = None, timeout: float | None = None,
               poll: float = 1.0, set_env: bool = True) -> GpuLease:
    """Lease ``k`` free devices and (by default) set CUDA_VISIBLE_DEVICES to them.

    Returns a :class:`GpuLease` (a context manager); the locks last until it is released or the
    process ends. Raises :class:`GpuLeaseError` when fewer than ``k`` candidate devices exist or CUDA is
    already initialised in this process, :class:`GpuLeaseTimeout` when they stay busy for ``timeout``
    seconds (default: env LIDARLIFT_GPU_LEASE_TIMEOUT, else 3600).
    """
    if k < 1:
        raise GpuLeaseError(f"asked to lease {k} GPUs; lease at least 1")
    if set_env and _cuda_already_initialised():
        raise GpuLeaseError("CUDA is already initialised in this process, so CUDA_VISIBLE_DEVICES can no longer "
                            "take effect: call lidarlift.gpu.lease_gpus() before any torch.cuda call")
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = candidate_devices()
    if len(devices) < k:
        where = (f"CUDA_VISIBLE_DEVICES={inherited!r}" if inherited is not None
                 else f"{len(devices)} device(s) found ({ENV_NUM_GPUS} / nvidia-smi / torch)")
        raise GpuLeaseError(f"asked to lease {k} GPU(s) but only {len(devices)} can be used: {where}")
    if timeout is None:
        timeout = float(os.environ.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT_S)
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    waited = False
    rng = random.Random(os.getpid())
    while True:
        taken: list[tuple[str, Path, int]] = []
        # start at a pid-dependent offset so simultaneous starters rarely race for the same file
        start = os.getpid() % len(devices)
        for token in devices[start:] + devices[:start]:
            path = lock_dir / _lock_name(token)
            fd = _try_lock(path)
            if fd is not None:
                taken.append((token, path, fd))
                if len(taken) == k:
                    break
        if len(taken) == k:
            taken.sort(key=lambda t: devices.index(t[0]))
            lease = GpuLease([t[0] for t in taken], [t[1] for t in taken], inherited, [t[2] for t in taken])
            if set_env:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(lease.devices)
            log.info("leased GPU(s) %s of %s (locks in %s)%s", ",".join(lease.devices), ",".join(devices), lock_dir,
                     " after waiting" if waited else "")
            return lease
        for _, _, fd in taken:  # all or nothing: never hold some while waiting for others
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        if time.monotonic() >= deadline:
            raise GpuLeaseTimeout(f"no {k} of the GPU(s) {','.join(devices)} became free within {timeout:.0f} s "
                                  f"(lock files in {lock_dir}; each names the pid holding it)")
        if not waited:
            log.info("all %d candidate GPU(s) busy; waiting up to %.0f s for %d to free up", len(devices), timeout, k)
            waited = True
        time.sleep(min(max(0.0, deadline - time.monotonic()), poll * (0.5 + rng.random())))


def lease_status(lock_dir: str | os.PathLike | None = None) -> dict[str, bool]:
    """{device token: busy} for the candidate devices (probes each lock without holding it)."""
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for token in candidate_devices():
        fd = _try_lock(lock_dir / _lock_name(token), note=False)
        out[token] = fd is None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    return out


# ------------------------------------------------------------------------------------------ jobs

@dataclass
class JobGpus:
    """What a job got: ``given`` (its Snakemake resource gpu), ``devices`` (the leased tokens, as
    CUDA_VISIBLE_DEVICES lists them inside the job; [] = CPU) and the lease (None on the CPU)."""

    given: int
    devices: list[str]
    lease: GpuLease | None = None

    @property
    def processes(self) -> int:
        """Processes a training job starts: one DDP rank per leased device, 1 on the CPU."""
        return max(1, len(self.devices))


def install_cuda_guard() -> Callable[[], None]:
    """Make this process refuse CUDA (for a job that leased no GPU); returns the function that removes it.

    torch initialises CUDA through ``torch.cuda._lazy_init`` (also when C++ code such as
    ``torch.zeros(1, device="cuda")`` needs it): that now raises :class:`CudaWithoutLeaseError`.
    ``torch.cuda.is_available()`` / ``device_count()`` answer False / 0 without asking the driver,
    as they would with ``CUDA_VISIBLE_DEVICES=""``. Importing torch does not initialise CUDA."""
    import torch

    cuda = torch.cuda
    saved = {name: getattr(cuda, name) for name in ("_lazy_init", "is_available", "device_count")}

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise CudaWithoutLeaseError("CUDA was initialised in a job that leased no GPU (its Snakemake resource gpu is 0, "
                                    "or the stage runs no network): run on the CPU, or give the rule a gpu resource "
                                    "(--resources gpu=N with profiles/*/config.yaml set-resources)")

    cuda._lazy_init = refuse
    cuda.is_available = lambda: False
    cuda.device_count = lambda: 0

    def remove() -> None:
        for name, fn in saved.items():
            setattr(cuda, name, fn)

    return remove


@contextmanager
def job_gpus(given: int, *, use: int | None = None, lock_dir: str | os.PathLike | None = None,
             timeout: float | None = None, guard: bool = True) -> Iterator[JobGpus]:
    """The one leasing path of a GPU job (``masks``, ``train``, ``predict``): lease the ``given``
    devices of the job's Snakemake resource (``snakemake.resources.gpu``), or ``min(given, use)`` for a
    job that can use at most ``use`` devices (one for prediction, none for the weight-free masks).

    ``k`` >= 1: ``k`` devices leased (:func:`lease_gpus`), CUDA_VISIBLE_DEVICES names them.
    ``k`` = 0: CUDA_VISIBLE_DEVICES is "" (hidden from this process and its children) and, with
    ``guard``, CUDA initialisation in this process raises :class:`CudaWithoutLeaseError`.
    Either way LIDARLIFT_GPU_JOB_DEVICES records the job's devices for :func:`job_devices`; everything
    is released and restored when the block ends."""
    if isinstance(given, str) and given.strip().isdigit():
        given = int(given)
    if isinstance(given, bool) or not isinstance(given, int) or given < 0:
        raise GpuLeaseError(f"the job's Snakemake resource gpu must be an integer >= 0, got {given!r}")
    k = given if use is None else max(0, min(given, int(use)))
    if k == 0 and _cuda_already_initialised():
        raise CudaWithoutLeaseError("CUDA is already initialised in this process: a job given no GPU must not touch it")
    saved = {name: os.environ.get(name) for name in ("CUDA_VISIBLE_DEVICES", ENV_JOB_DEVICES)}
    lease, remove_guard = None, None
    try:
        if k == 0:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
            os.environ[ENV_JOB_DEVICES] = ""
            remove_guard = install_cuda_guard() if guard else None
            log.info("job given %d GPU(s), uses none: running on the CPU with CUDA_VISIBLE_DEVICES=''", given)
        else:
            lease = lease_gpus(k, lock_dir=lock_dir, timeout=timeout)
            os.environ[ENV_JOB_DEVICES] = ",".join(lease.devices)
            if k < given:
                log.info("job given %d GPU(s) uses %d; the others stay idle", given, k)
        yield JobGpus(given, list(lease.devices) if lease else [], lease)
    finally:
        if lease is not None:
            lease.release()
        if remove_guard is not None:
            remove_guard()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def job_devices() -> list[str] | None:
    """The devices the running job leased (tokens; [] for a job given none); None outside a job."""
    raw = os.environ.get(ENV_JOB_DEVICES)
    if raw is None:
        return None
    return [t for t in raw.split(",") if t]


def torch_device(requested: str = "auto", *, key: str, local_rank: int = 0) -> Any:
    """The torch device of this process: ``cuda:local_rank`` when its job leased GPUs
    (:func:`job_devices`; rank ``r`` of a DDP job takes the r-th leased device) and torch is a CUDA
    build, else the CPU. ``auto`` never touches CUDA without a lease (outside a job: lease first with
    ``with job_gpus(1):``).

    ``requested``: the runtime config value at ``key`` (``train.device``, ``masks.device``): ``auto``
    (the above), ``cpu`` (always the CPU), ``cuda`` (in a job: its leased device, else
    :class:`CudaWithoutLeaseError` naming ``key``; outside any job, e.g. a benchmark on a machine of
    its own: ``cuda:local_rank`` as asked, without a lease)."""
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"config key {key}: {requested!r} is not one of auto, cpu, cuda")
    if requested == "cpu":
        return torch.device("cpu")
    devices = job_devices()
    if devices is None and requested == "cuda":  # not a workflow job: the caller's explicit choice
        if torch.version.cuda is None:
            raise CudaWithoutLeaseError(f"config key {key} is cuda but this torch is a CPU build (torch.version.cuda is None)")
        log.warning("%s is cuda outside a lidarlift.gpu lease: using cuda:%d without a lease", key, local_rank)
        return torch.device("cuda", local_rank)
    if not devices:
        if requested == "cuda":
            raise CudaWithoutLeaseError(f"config key {key} is cuda but this job leased no GPU (its Snakemake resource "
                                        "gpu is 0: run with --resources gpu=N, or lease with lidarlift.gpu.job_gpus)")
        return torch.device("cpu")
    if torch.version.cuda is None:
        if requested == "cuda":
            raise CudaWithoutLeaseError(f"config key {key} is cuda but this torch is a CPU build (torch.version.cuda is None)")
        log.warning("job leased GPU(s) %s but this torch is a CPU build: running on the CPU", ",".join(devices))
        return torch.device("cpu")
    if not 0 <= local_rank < len(devices):
        raise GpuLeaseError(f"rank {local_rank} has no device: the job leased {len(devices)} ({','.join(devices)})")
    return torch.device("cuda", local_rank)


def main(argv: list[str] | None = None) -> int:
    """``python -m lidarlift.gpu [k] -- command ...``: run a command on k leased GPUs (k = 0: none visible);
    without a command, print which candidate devices are busy."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m lidarlift.gpu", description=main.__doc__)
    p.add_argument("k", type=int, nargs="?", default=1)
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        print(lease_status())
        return 0
    with job_gpus(max(0, a.k), guard=False):  # k = 0: the command sees no device
        return subprocess.call(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
