"""Glue between Snakemake's ``snakemake`` object and lidarlift functions (used by workflow/scripts/)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

from lidarlift.tmpfiles import atomic_write

log = logging.getLogger("lidarlift")


@contextlib.contextmanager
def job_logging(log_path: str | os.PathLike | None, threads: int = 1) -> Iterator[logging.Logger]:
    """Send logging, stdout and stderr of a job to its ``log:`` file; cap numeric threads at ``threads``."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(max(1, threads))
    if not log_path:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
        yield log
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            t0 = time.perf_counter()
            try:
                yield log
            except Exception:
                log.exception("job failed")
                raise
            finally:
                log.info("job finished in %.2f s", time.perf_counter() - t0)


def runtime_settings(smk: Any, section: str) -> dict[str, Any]:
    """The runtime-only keys (schema ``x-scope: runtime``) of a config section, read from the job's
    config rather than its ``params:``: they change where or how fast a job runs, not what it makes,
    so changing them re-runs nothing (:mod:`lidarlift.config`)."""
    from lidarlift.config import scoped_section

    return scoped_section(smk.config, section, "runtime")


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    text = json.dumps(payload, indent=2, sort_keys=False, default=_jsonable)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _jsonable(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
