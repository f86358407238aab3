"""GPU leasing: give each concurrent GPU job its own device(s).

Snakemake does not assign devices (snakemake issue #281): under ``--resources gpu=N`` it only caps
how many GPU jobs run at once, and every job sees every GPU. A job therefore leases devices itself:

- the candidate devices are the tokens of an inherited ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs;
  leasing happens only among those), else ``0 .. n-1`` with ``n`` from ``LIDARLIFT_NUM_GPUS``
  (simulated devices, for tests), else ``nvidia-smi``, else torch (queried in a subprocess so that
  CUDA is not initialised here);
- a device is leased by a non-blocking ``flock`` on one lock file per device in the lock directory
  (``LIDARLIFT_GPU_LOCK_DIR``, default ``/tmp/lidarlift-gpu-locks-<uid>``; use a node-local folder);
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
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("lidarlift.gpu")

ENV_NUM_GPUS = "LIDARLIFT_NUM_GPUS"
ENV_LOCK_DIR = "LIDARLIFT_GPU_LOCK_DIR"
ENV_TIMEOUT = "LIDARLIFT_GPU_LEASE_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600.0


class GpuLeaseError(RuntimeError):
    """No device can be leased (none exists, more asked than exist, or CUDA already initialised)."""


class GpuLeaseTimeout(GpuLeaseError):
    """Devices exist but too few stayed free until the timeout."""


def default_lock_dir() -> Path:
    return Path(os.environ.get(ENV_LOCK_DIR) or f"/tmp/lidarlift-gpu-locks-{os.getuid()}")


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


def main(argv: list[str] | None = None) -> int:
    """``python -m lidarlift.gpu [k] -- command ...``: run a command on k leased GPUs (k = 0: no lease);
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
    if a.k <= 0:  # a job given no GPU (e.g. a run with gpu=0): run it as it is
        return subprocess.call(cmd)
    lease = lease_gpus(a.k)
    try:
        return subprocess.call(cmd)
    finally:
        lease.release()


if __name__ == "__main__":
    raise SystemExit(main())
