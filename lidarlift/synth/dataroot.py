"""Ownership of a synthetic world's dataroot: never touch data the generator did not write.

A dataroot the generator writes to must be empty, absent, or hold only a world it wrote before. It
knows its own world by a marker file, ``<dataroot>/.lidarlift_synth.json``::

    {"generator": "lidarlift.synth", "state": "complete" | "writing" | "swapping",
     "entries": [top-level names of the world: "v1.0-mini", "samples", "sweeps", ...],
     "files": {entry: number of files the generator wrote under it}}

Anything else in the dataroot (a nuScenes or SemanticKITTI copy, a stray file), or more files in one
of its folders than the generator wrote there, makes the generator stop with
:class:`ForeignDatarootError` before it writes or deletes anything.

Complete or absent: :func:`staged_world` gives the writer a staging folder inside the dataroot (same
filesystem, so moving is a rename); the previous world stays untouched until the new one is complete.
Then the marker lists old and new entries (state ``swapping``), the old entries move to a trash
folder, the new ones are renamed into place, the marker is rewritten (state ``complete``, the new
entries) and the trash is deleted. A failure while writing removes the staging folder and leaves the
previous world (or the empty dataroot) as it was; a crash at any point leaves only names the marker
lists or the generator's own staging/trash names, so the next run can clean up.

A world written before markers existed (``lidarlift_gt/`` beside nothing but the generator's own
folders) is recognised as the generator's and regenerated.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = ".lidarlift_synth.json"
STAGING = ".lidarlift_synth.staging"
TRASH = ".lidarlift_synth.trash"
#: the generator's own working names: always its own, whatever the marker says
INTERNAL = (MARKER, MARKER + ".tmp", STAGING, TRASH)
#: files the synth rule writes beside the world (the Snakemake output marking it done): kept, never deleted
COMPANIONS = (".lidarlift_world_done",)
#: top-level names of worlds written before the marker existed (nuScenes and SemanticKITTI layouts)
LEGACY_ENTRIES = frozenset({"v1.0-mini", "v1.0-trainval", "samples", "sweeps", "lidarseg", "panoptic", "maps",
                            "lidarlift_gt", ".synth_jobs", "sequences"})


class ForeignDatarootError(ValueError):
    """The dataroot holds data the generator did not write (it is left untouched)."""


def _foreign_message(root: Path, foreign: list[str]) -> str:
    shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
    return (f"{root} holds data the synthetic-world generator did not write ({shown}); nothing was written or "
            f"deleted. The generator writes only into an empty or new folder, or one holding a world it wrote "
            f"(marker {MARKER}). To run on this dataset set dataset.kind: existing; to generate a world, point "
            f"dataset.dataroot at an empty or new folder.")


def read_marker(root: Path) -> dict | None:
    """The marker of ``root`` (None when there is none); a marker that is not the generator's is an error."""
    path = root / MARKER
    if not path.exists():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ForeignDatarootError(f"{path}: unreadable marker ({e}); remove it only if {root} holds nothing but "
                                   f"a synthetic world") from None
    if not isinstance(marker, dict) or marker.get("generator") != "lidarlift.synth" or not isinstance(marker.get("entries"), list):
        raise ForeignDatarootError(f"{path} is not a marker of lidarlift.synth; {root} is left untouched")
    return marker


def owned_entries(root: Path) -> list[str]:
    """Top-level names of ``root`` that belong to the generator's previous world (sorted).

    Raises :class:`ForeignDatarootError` when ``root`` holds anything else (apart from
    :data:`INTERNAL` and :data:`COMPANIONS` names). An absent or empty ``root`` owns nothing."""
    if not root.exists():
        return []
    if not root.is_dir():
        raise ForeignDatarootError(f"{root} is a file, not a folder; set dataset.dataroot to a folder")
    present = sorted(os.listdir(root))
    marker = read_marker(root)
    if marker is not None:
        listed = set(marker["entries"])
        counts = marker.get("files") or {}
        grown = [f"{e} ({n} files, {counts[e]} written)" for e, n in _file_counts(root, sorted(listed & set(present))).items()
                 if e in counts and n > counts[e]]
        if grown:
            raise ForeignDatarootError(_foreign_message(root, grown))
    elif (root / "lidarlift_gt").is_dir() and set(present) <= LEGACY_ENTRIES | set(INTERNAL) | set(COMPANIONS):
        listed = set(present) & LEGACY_ENTRIES  # a world from before the marker
    else:
        listed = set()
    foreign = [e for e in present if e not in listed and e not in INTERNAL and e not in COMPANIONS]
    if foreign:
        raise ForeignDatarootError(_foreign_message(root, foreign))
    return sorted(e for e in present if e in listed)


def _file_counts(base: Path, entries: list[str]) -> dict[str, int]:
    """{entry: files (and links) under base/entry}; a file entry counts 1."""
    out = {}
    for e in entries:
        path = base / e
        if path.is_dir() and not path.is_symlink():
            out[e] = sum(len(files) + sum(os.path.islink(os.path.join(d, x)) for x in dirs) for d, dirs, files in os.walk(path))
        else:
            out[e] = 1
    return out


def _write_marker(root: Path, state: str, entries: list[str], files: dict[str, int]) -> None:
    tmp = root / (MARKER + ".tmp")
    record = {"generator": "lidarlift.synth", "state": state, "entries": sorted(entries),
              "files": {e: files[e] for e in sorted(entries) if e in files}}
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, root / MARKER)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


@contextmanager
def staged_world(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder inside ``out_dir`` to write a world into; on success the staged
    entries replace the previous world (only names the marker lists are removed), on failure
    ``out_dir`` is left as it was. Raises :class:`ForeignDatarootError` (before writing anything)
    when ``out_dir`` holds data the generator did not write."""
    root = Path(out_dir)
    previous = owned_entries(root)  # refuses foreign data before anything is written
    prior_marker = read_marker(root)
    counts = dict((prior_marker or {}).get("files") or {})
    root.mkdir(parents=True, exist_ok=True)
    for name in (STAGING, TRASH):  # leftovers of a crashed run: the generator's own
        _remove(root / name)
    _write_marker(root, "writing", previous, counts)
    staging = root / STAGING
    staging.mkdir()

    def abandon() -> None:
        shutil.rmtree(staging, ignore_errors=True)
        if prior_marker is not None and prior_marker.get("state") == "complete":
            _write_marker(root, "complete", previous, counts)
        elif not previous:
            (root / MARKER).unlink(missing_ok=True)

    try:
        yield staging
        new = sorted(os.listdir(staging))
        reserved = [e for e in new if e in INTERNAL or e in COMPANIONS]
        if reserved:
            raise RuntimeError(f"the world written into {staging} holds reserved names {reserved}")
        appeared = [e for e in new if e not in previous and (os.path.lexists(root / e))]
        if appeared:  # written by someone else while the world was generated
            raise ForeignDatarootError(_foreign_message(root, appeared))
    except BaseException:
        abandon()
        raise
    new_counts = _file_counts(staging, new)
    _write_marker(root, "swapping", sorted(set(previous) | set(new)), {e: max(counts.get(e, 0), new_counts.get(e, 0)) for e in set(counts) | set(new_counts)})
    trash = root / TRASH
    trash.mkdir()
    for name in previous:
        if os.path.lexists(root / name):
            os.rename(root / name, trash / name)
    for name in new:
        os.rename(staging / name, root / name)
    _write_marker(root, "complete", new, new_counts)
    shutil.rmtree(trash)
    staging.rmdir()
