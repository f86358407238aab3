"""Temporary names for outputs written then renamed (``<name>.tmp-<pid>`` beside the output).

A job killed with SIGKILL cannot remove its temporary output; :func:`temporary_path` removes such
leftovers of the same output -- siblings ``<name>.tmp-<pid>`` whose process no longer runs on this host
-- before the next writer starts. Only names of that exact form are touched, so nothing the tool did not
write is ever deleted; a leftover of a live process (another writer on this host) is left alone.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def temporary_path(path: str | os.PathLike, prefix: str = "") -> Path:
    """``<dir>/<prefix><name>.tmp-<this pid>`` for output ``path``, after removing leftovers of dead
    processes (``<prefix><name>.tmp-<pid>``, files or folders) and an earlier one of this process."""
    path = Path(path)
    stem = f"{prefix}{path.name}.tmp-"
    if path.parent.is_dir():
        for old in path.parent.glob(f"{stem}*"):
            pid = old.name[len(stem):]
            if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
    return path.with_name(f"{stem}{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], prefix: str = "") -> Path:
    """Write an output file through ``write(tmp)`` under its :func:`temporary_path`, then rename it onto
    ``path``; on an error the temporary file is removed and ``path`` keeps what it had. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path, prefix)
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path
