"""A single-node SLURM cluster on localhost, for tests/test_slurm.py and by hand. Needs root and Debian's
SLURM packages (``make system-deps`` installs them; the list is PACKAGES).

Every daemon is private to one cluster folder (default: a new ``/tmp/lidarlift-slurm-*``): munged on
its own socket and key, MariaDB + slurmdbd (``sacct`` answers only from the accounting database in
SLURM 22.05; without it ``sacct`` says "Slurm accounting storage is disabled"), slurmctld and one
slurmd, on free TCP ports. So it touches no system service and two clusters can run side by side.
The account ``lidarlift`` (what profiles/slurm asks for) is registered for the user, and associations
are enforced, so a job with another account is refused as on a real site.

Node: declared with ``NODE_CPUS`` CPUs and ``NODE_MEM_MB`` MB (``SlurmdParameters=config_overrides``),
more than a 2-core test machine has, so a job gets exactly what the profile asks for (sacct shows it);
how many jobs run at once is capped by Snakemake's ``--jobs``, not by SLURM. Without cgroups (as in a
container) limits are not enforced (``TaskPlugin=task/none``, ``ProctrackType=proctrack/linuxproc``).
Partitions ``cpu`` (default) and ``gpu`` (the names profiles/slurm uses), both on the one node; the
host's NVIDIA GPUs (``nvidia-smi``) become GRES ``gpu:<model>:<n>`` on it, none when there are none.

Command line::

    python tests/slurm/local_cluster.py start [DIR]   # prints DIR; then export SLURM_CONF=DIR/slurm.conf
    python tests/slurm/local_cluster.py stop DIR
"""
from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

#: Debian (bookworm) packages: the daemons, the client commands, the accounting database.
PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client", "slurmdbd", "mariadb-server")
#: Executables the cluster runs, and the package each comes from.
EXECUTABLES = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client",
               "slurmdbd": "slurmdbd", "mariadbd": "mariadb-server", "mariadb-install-db": "mariadb-server"}
CLUSTER_NAME = "lidarlift"
NODE_NAME = "node1"
ACCOUNT = "lidarlift"
CPU_PARTITION, GPU_PARTITION = "cpu", "gpu"
NODE_CPUS = 32
NODE_MEM_MB = 262144  # so every request of profiles/slurm fits (train: 32 CPUs, 256000 MB)
#: Client commands that get a shim bound to the cluster's config (LocalCluster._write_client_shims).
CLIENT_COMMANDS = ("srun", "sbatch", "squeue", "sacct", "sinfo", "scontrol", "scancel", "sacctmgr", "sshare", "salloc")
#: Daemons in start order; stopped in reverse.
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")


class ClusterUnavailable(RuntimeError):
    """The cluster cannot run on this machine (not root, packages missing); the message says why."""


class ClusterStartError(RuntimeError):
    """The packages are there but a daemon did not come up; the message holds the daemons' log tails."""


def missing_packages() -> list[str]:
    """Packages (of PACKAGES) whose executables are not on PATH (sbin included)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return sorted({pkg for exe, pkg in EXECUTABLES.items() if shutil.which(exe, path=path) is None})


def gpu_models() -> list[str]:
    """One GRES type per NVIDIA GPU of this host (``nvidia-smi`` names, e.g. 'NVIDIA H200' -> 'h200'); [] if none."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    models = []
    for name in out.splitlines():
        m = re.search(r"([a-z]+\d+)", name.lower().replace("nvidia", ""))
        models.append(m.group(1) if m else "gpu")
    return models


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


@dataclass
class LocalCluster:
    """The cluster in folder ``root``: its config, daemons' pid files, logs and state live there."""

    root: Path
    _children: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    @property
    def gpus(self) -> list[str]:
        """The GRES type of each GPU the node offers ([] when the host has none)."""
        path = self.root / "gpus"
        return path.read_text().split() if path.exists() else []

    @property
    def slurm_conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def bin_dir(self) -> Path:
        """Client commands bound to this cluster (see _write_client_shims)."""
        return self.root / "bin"

    def env(self, base: dict | None = None) -> dict[str, str]:
        """``base`` (default os.environ) with SLURM_CONF pointing at this cluster and its client shims first
        on PATH; SLURM job variables removed."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.slurm_conf)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
        return env

    def run(self, *cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command (sacct, sinfo, sacctmgr ...) against this cluster."""
        proc = subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def accounting(self, job_name: str, fields: Sequence[str], since: str = "now-7days") -> list[dict[str, str]]:
        """sacct's record of every job named ``job_name`` (allocations, not steps): one dict per job, keyed
        by ``fields`` (sacct --format names, e.g. State, AllocCPUS, ReqMem, Comment)."""
        proc = self.run("sacct", "-X", "-a", "--parsable2", "--noheader", "-S", since, "--name", job_name,
                        "--format", ",".join(fields))
        return [dict(zip(fields, line.split("|"))) for line in proc.stdout.splitlines() if line]

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of every daemon log (for error messages)."""
        out = []
        for log in sorted((self.root / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log}\n" + "\n".join(text))
        return "\n".join(out)

    def _pid(self, daemon: str) -> int | None:
        path = self.root / f"{daemon}.pid"
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def running(self, daemon: str) -> bool:
        pid = self._pid(daemon)
        return pid is not None and _pid_alive(pid)

    def is_up(self) -> bool:
        """Every daemon alive and the node answering in sinfo."""
        if not self.slurm_conf.exists() or not all(self.running(d) for d in DAEMONS):
            return False
        proc = self.run("sinfo", "-h", "-n", NODE_NAME, "-o", "%t", check=False, timeout=20)
        return proc.returncode == 0 and proc.stdout.strip().rstrip("*") in ("idle", "mix", "alloc")

    # --- start ------------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> "LocalCluster":
        """Start every daemon that is not running (idempotent). Raises ClusterUnavailable (this machine
        cannot run it) or ClusterStartError (a daemon failed; what did start is stopped again)."""
        if os.geteuid() != 0:
            raise ClusterUnavailable("a local SLURM cluster needs root (slurmd starts jobs as their user)")
        missing = missing_packages()
        if missing:
            raise ClusterUnavailable(f"Debian packages missing: {' '.join(missing)} (as root: make system-deps, "
                                     f"or apt-get install --no-install-recommends {' '.join(PACKAGES)})")
        if self.is_up():
            return self
        self.stop()  # a half-started cluster: begin again from a clean state
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # munged wants its socket's folder searchable by all
        for sub in ("log", "state", "spool", "mysql"):
            (self.root / sub).mkdir(exist_ok=True)
        self._write_config()
        deadline = time.monotonic() + timeout
        self._start_munged(deadline)
        self._start_mariadb(deadline)
        self._start_slurmdbd(deadline)
        self._register_accounts()
        self._spawn("slurmctld", ["slurmctld", "-f", str(self.slurm_conf)])
        self._spawn("slurmd", ["slurmd", "-f", str(self.slurm_conf), "-N", NODE_NAME])
        self._wait(deadline, self.is_up, "the node to be idle in sinfo")

    def _write_config(self) -> None:
        ctld, slurmd, dbd, mysql = _free_ports(4)
        r = self.root
        host = socket.gethostname().split(".")[0]
        gpus = gpu_models()
        (r / "gpus").write_text("".join(f"{m}\n" for m in gpus))
        gres, node_gres = "", ""
        if gpus:
            counts: dict[str, list[int]] = {}
            for i, model in enumerate(gpus):
                counts.setdefault(model, []).append(i)
            node_gres = " Gres=" + ",".join(f"gpu:{m}:{len(ix)}" for m, ix in counts.items())
            gres = "GresTypes=gpu\n"
            (r / "gres.conf").write_text("".join(
                f"NodeName={NODE_NAME} Name=gpu Type={m} File=/dev/nvidia{i}\n" for m, ix in counts.items() for i in ix))
        (r / "ports").write_text(f"{ctld} {slurmd} {dbd} {mysql}\n")
        (r / "slurm.conf").write_text(f"""# A single-node SLURM cluster on localhost (tests/slurm/local_cluster.py); every path is private to {r}.
ClusterName={CLUSTER_NAME}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge.socket
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
# no cgroups in a container: track processes by parent, enforce nothing
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# the node as declared below, not as detected, so jobs get the profile's sizes
SlurmdParameters=config_overrides
ReturnToService=2
# sacct reads the accounting database (slurmdbd); the alternative munge socket is given as the 'password'
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd}
AccountingStoragePass={r}/munge.socket
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
{gres}NodeName={NODE_NAME} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEM_MB}{node_gres} State=UNKNOWN
PartitionName={CPU_PARTITION} Nodes={NODE_NAME} Default=YES MaxTime=INFINITE State=UP
PartitionName={GPU_PARTITION} Nodes={NODE_NAME} MaxTime=INFINITE State=UP
""")
        dbd_conf = r / "slurmdbd.conf"
        dbd_conf.write_text(f"""AuthType=auth/munge
AuthInfo=socket={r}/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd}
SlurmUser=root
PidFile={r}/slurmdbd.pid
LogFile={r}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={mysql}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
""")
        dbd_conf.chmod(0o600)  # slurmdbd refuses a readable config (it holds the database password)
        (r / "mysql-init.sql").write_text(
            "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';\n"
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';\n")
        self._write_client_shims()
        key = r / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(128))
            key.chmod(0o600)

    def _write_client_shims(self) -> None:
        """``bin/<command>`` for every SLURM client command: sets SLURM_CONF, then runs the real one.

        Inside a job, snakemake-executor-plugin-slurm-jobstep (0.6.1) starts the rule with ``srun`` after
        removing every SLURM_* variable, SLURM_CONF included (upstream issue #164), so srun would look for
        /etc/slurm/slurm.conf; a real site has its config there. The shims keep this cluster private
        without writing to /etc."""
        self.bin_dir.mkdir(exist_ok=True)
        for command in CLIENT_COMMANDS:
            real = shutil.which(command, path="/usr/bin:/bin:/usr/sbin:/sbin")
            if real is None:
                continue
            shim = self.bin_dir / command
            shim.write_text(f'#!/bin/sh\nSLURM_CONF="{self.slurm_conf}" exec {real} "$@"\n')
            shim.chmod(0o755)

    def _spawn(self, daemon: str, cmd: list[str], wait_for_exit: bool = True) -> None:
        """Run a daemon's start command (it forks and writes its pid file) and check it started."""
        log = (self.root / "log" / f"{daemon}.start.log").open("ab")
        if wait_for_exit:
            proc = subprocess.run(cmd, env=self.env(), stdout=log, stderr=log, timeout=60)
            if proc.returncode != 0:
                raise ClusterStartError(f"{daemon} did not start (exit {proc.returncode}):\n{self.log_tail()}")
        else:  # a daemon that stays in the foreground of its own session
            proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=log, start_new_session=True)
            self._children[daemon] = proc
            (self.root / f"{daemon}.pid").write_text(f"{proc.pid}\n")

    def _wait(self, deadline: float, ready, what: str) -> None:
        while not ready():
            if time.monotonic() > deadline:
                raise ClusterStartError(f"timed out waiting for {what}:\n{self.log_tail()}")
            time.sleep(0.2)

    def _start_munged(self, deadline: float) -> None:
        r = self.root
        self._spawn("munged", ["munged", f"--socket={r}/munge.socket", f"--key-file={r}/munge.key",
                               f"--log-file={r}/log/munged.log", f"--pid-file={r}/munged.pid",
                               f"--seed-file={r}/munged.seed", "--force"])
        self._wait(deadline, lambda: self.running("munged") and (r / "munge.socket").exists(), "munged")

    def _start_mariadb(self, deadline: float) -> None:
        r = self.root
        if not (r / "mysql" / "mysql").is_dir():
            proc = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={r}/mysql", "--user=root",
                                   "--auth-root-authentication-method=normal", "--skip-test-db"],
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise ClusterStartError(f"mariadb-install-db failed: {proc.stderr[-2000:]}")
        port = (r / "ports").read_text().split()[3]
        self._spawn("mariadbd", ["mariadbd", "--no-defaults", f"--datadir={r}/mysql", "--user=root", f"--port={port}",
                                 "--bind-address=127.0.0.1", f"--socket={r}/mysql.sock", f"--log-error={r}/log/mariadbd.log",
                                 f"--init-file={r}/mysql-init.sql", "--skip-name-resolve",
                                 "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M"], wait_for_exit=False)

        def answers() -> bool:
            if not self.running("mariadbd"):
                raise ClusterStartError(f"mariadbd exited:\n{self.log_tail()}")
            return subprocess.run(["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", port, "-u", "slurm", "-pslurm",
                                   "-e", "SELECT 1"], capture_output=True, timeout=20).returncode == 0

        self._wait(deadline, answers, "MariaDB")

    def _start_slurmdbd(self, deadline: float) -> None:
        self._spawn("slurmdbd", ["slurmdbd"])
        self._wait(deadline, lambda: self.run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0,
                   "slurmdbd to answer sacctmgr")

    def _register_accounts(self) -> None:
        user = getpass.getuser()
        for args in (["add", "cluster", CLUSTER_NAME], ["add", "account", ACCOUNT, f"cluster={CLUSTER_NAME}"],
                     ["add", "user", user, f"account={ACCOUNT}", f"cluster={CLUSTER_NAME}"]):
            proc = self.run("sacctmgr", "-i", *args, check=False)
            if proc.returncode != 0 and "already exist" not in proc.stdout + proc.stderr:
                raise ClusterStartError(f"sacctmgr {' '.join(args)} failed: {proc.stderr.strip()}")

    # --- stop -------------------------------------------------------------------------------------

    def stop(self, timeout: float = 30) -> None:
        """Cancel every job, then stop every daemon (idempotent). Files stay; remove() deletes them."""
        if self.running("slurmctld"):
            self.run("scancel", "--full", "-u", getpass.getuser(), check=False, timeout=20)
        for daemon in reversed(DAEMONS):
            pid = self._pid(daemon)
            if pid is None or not _pid_alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
            child = self._children.pop(daemon, None)
            if child is not None:
                child.wait(timeout=timeout)

    def remove(self) -> None:
        """Stop the cluster and delete its folder."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(root: str | Path | None = None) -> LocalCluster:
    """Start (or find running) the cluster in ``root`` (default: a new folder under /tmp; pytest's own
    temporary folders are private to their owner, which munged refuses for its socket's folder). After a
    ClusterStartError the folder stays, with the daemons' logs."""
    if root is not None:
        return LocalCluster(Path(root)).start()
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="lidarlift-slurm-", dir="/tmp")))
    try:
        return cluster.start()
    except ClusterUnavailable:
        shutil.rmtree(cluster.root, ignore_errors=True)
        raise


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("start", "stop") or (argv[1] == "stop" and len(argv) < 3):
        print(__doc__.split("Command line::")[1], file=sys.stderr)
        return 2
    if argv[1] == "start":
        try:
            cluster = start_cluster(argv[2] if len(argv) > 2 else None)
        except (ClusterUnavailable, ClusterStartError) as e:
            print(f"cannot start the cluster: {e}", file=sys.stderr)
            return 1
        print(cluster.root)
        return 0
    LocalCluster(Path(argv[2])).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
