"""Run several Snakemake command lines fast: JSON list of argv lists on stdin, JSON [[rc, output], ...] out.

The modules the workflow imports while it is parsed (torch among them) are imported once here; each
command line then runs in a forked child, so it starts with them loaded but with a fresh Snakemake
state (Snakemake keeps config and settings in module globals, so runs must not share a process).
Children run side by side, as many as there are CPUs. Used by tests/test_workflow.py.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path


def preload(workdir: Path) -> None:
    """Import what the Snakefile and rules/*.smk import, plus Snakemake's command line."""
    import snakemake.cli  # noqa: F401

    for path in [workdir / "Snakefile", *sorted((workdir / "rules").glob("*.smk"))]:
        if path.exists():
            for module in re.findall(r"^from ([\w.]+) import", path.read_text(), flags=re.M):
                try:
                    importlib.import_module(module)
                except Exception:  # noqa: BLE001 - the child reports it properly
                    pass


def child(argv: list[str], out_path: str) -> None:
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    rc = 1
    try:
        from snakemake.cli import args_to_api, parse_args

        parser, args = parse_args(argv)
        rc = 0 if args_to_api(args, parser) else 1
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # noqa: BLE001
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def run_all(argvs: list[list[str]], parallel: int) -> list[tuple[int, str]]:
    tmp = tempfile.mkdtemp(prefix="snakemake_batch_")
    outs = [os.path.join(tmp, f"{i}.txt") for i in range(len(argvs))]
    rcs: dict[int, int] = {}
    running: dict[int, int] = {}  # pid -> index
    pending = list(range(len(argvs)))
    while pending or running:
        while pending and len(running) < parallel:
            i = pending.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                child(argvs[i], outs[i])
            running[pid] = i
        pid, status = os.wait()
        if pid in running:
            rcs[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    results = []
    for i, path in enumerate(outs):
        results.append((rcs[i], Path(path).read_text(errors="replace") if os.path.exists(path) else ""))
        if os.path.exists(path):
            os.remove(path)
    os.rmdir(tmp)
    return results


if __name__ == "__main__":
    argvs = json.load(sys.stdin)
    preload(Path.cwd())
    json.dump(run_all(argvs, parallel=max(1, os.cpu_count() or 1)), sys.stdout)
