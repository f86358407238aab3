"""Cross-check against the nuScenes devkit's own evaluators on exports in their submission layouts.

Layout under ``result_dir`` (what ``LidarSegEval`` and ``NuScenesPanopticEval`` read)::

    lidarseg/<eval_set>/<sd_token>_lidarseg.bin     uint8, challenge index 1..16 per point
    panoptic/<eval_set>/<sd_token>_panoptic.npz     key 'data', uint16, 1000 * class + instance id
    <eval_set>/submission.json                      {"meta": {...}}

:func:`run_devkit` runs both evaluators; :func:`devkit_report` puts their numbers in the project's
summary layout so :func:`lidarlift.evaluate.metrics.max_abs_diff` can compare them.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lidarlift.classes import NUSCENES16
from lidarlift.evaluate import export as E


class DevkitMismatch(RuntimeError):
    """The project's metrics and the devkit's differ by more than the tolerance."""


class DevkitUnavailable(RuntimeError):
    """The devkit cannot evaluate this run (eval split not fully present, no ground truth, ...)."""


def eval_set_name(version: str, split: str) -> str:
    """The devkit's split name for a manifest split: v1.0-mini 'val' -> 'mini_val', trainval 'val' -> 'val'."""
    if version.endswith("mini"):
        return {"train": "mini_train", "val": "mini_val"}.get(split, split)
    return split


class SubmissionWriter:
    """Writes keyframes into the submission layout one at a time, as they are scored (nothing is kept
    in memory), then ``submission.json`` on :meth:`close`. The folder is emptied first."""

    def __init__(self, result_dir: str | os.PathLike, eval_set: str):
        self.root = Path(result_dir)
        self.eval_set = eval_set
        self.tokens: list[str] = []
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)

    def add(self, sd_token: str, sem: np.ndarray, inst: np.ndarray | None) -> None:
        """sem: (N,) challenge class 1..16 (the devkit rejects 0, so ignore-class ground-truth points
        need a class too); inst: (N,) per-class instance id 0..999 or None (no instances)."""
        inst = np.zeros(np.shape(sem), np.int32) if inst is None else inst
        E.write_lidarseg_bin(self.root / "lidarseg" / self.eval_set / f"{sd_token}_lidarseg.bin", sem, num_classes=16)
        E.write_panoptic_npz(self.root / "panoptic" / self.eval_set / f"{sd_token}_panoptic.npz",
                             E.panoptic_values(sem, inst, NUSCENES16.thing_mask))
        self.tokens.append(sd_token)

    def close(self) -> int:
        E.write_submission_json(self.root / self.eval_set / "submission.json", meta={"task": "segmentation"})
        return len(self.tokens)


def write_submission(result_dir: str | os.PathLike, eval_set: str,
                     samples: Iterable[tuple[str, np.ndarray, np.ndarray | None]]) -> int:
    """Write every (sd_token, sem (N,) 1..16, instance ids (N,) or None) and ``submission.json``;
    returns the number of keyframes written."""
    writer = SubmissionWriter(result_dir, eval_set)
    for sd_token, sem, inst in samples:
        writer.add(sd_token, sem, inst)
    return writer.close()


def eval_set_lidar_tokens(nusc, eval_set: str) -> list[str]:
    """LIDAR_TOP sample_data tokens of every keyframe the devkit evaluates for ``eval_set``.

    Raises DevkitUnavailable when a scene of the split is missing from the dataset's tables.
    """
    from nuscenes.utils.splits import create_splits_scenes

    names = {s["name"] for s in nusc.scene}
    split_scenes = create_splits_scenes(verbose=False).get(eval_set)
    if split_scenes is None:
        raise DevkitUnavailable(f"the devkit knows no eval set {eval_set!r}")
    missing = [s for s in split_scenes if s not in names]
    if missing:
        raise DevkitUnavailable(f"eval set {eval_set} needs scenes missing from {nusc.dataroot}/{nusc.version}: {missing}")
    from nuscenes.eval.lidarseg.utils import get_samples_in_eval_set

    return [nusc.get("sample", t)["data"]["LIDAR_TOP"] for t in get_samples_in_eval_set(nusc, eval_set)]


def run_devkit(nusc, result_dir: str | os.PathLike, eval_set: str, min_inst_points: int = 15,
               verbose: bool = False) -> dict[str, Any]:
    """Run ``LidarSegEval`` and ``NuScenesPanopticEval`` (task 'segmentation') on ``result_dir``.

    Returns ``{"lidarseg": <LidarSegEval.evaluate()>, "panoptic": <evaluate_segmentation()> | None}``;
    both raw results are also written to ``result_dir/devkit_lidarseg.json`` and
    ``result_dir/panoptic_eval/segmentation-result.json``. Panoptic is None where the dataset has no
    panoptic ground truth.
    """
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval
    from nuscenes.eval.panoptic.evaluate import NuScenesPanopticEval

    root = Path(result_dir)
    sink = io.StringIO()
    with redirect_stdout(sink):
        lidarseg = LidarSegEval(nusc, str(root), eval_set, verbose=verbose).evaluate()
    lidarseg = {"iou_per_class": {k: float(v) for k, v in lidarseg["iou_per_class"].items()},
                "miou": float(lidarseg["miou"]), "freq_weighted_iou": float(lidarseg["freq_weighted_iou"])}
    (root / "devkit_lidarseg.json").write_text(json.dumps(lidarseg, indent=2))
    panoptic = None
    if getattr(nusc, "panoptic", None):
        out_dir = root / "panoptic_eval"
        with redirect_stdout(sink):
            ev = NuScenesPanopticEval(nusc, str(root), eval_set, task="segmentation",
                                      min_inst_points=min_inst_points, out_dir=str(out_dir), verbose=verbose)
            panoptic = ev.evaluate_segmentation()
            ev.save_result({"segmentation": panoptic})
        panoptic = json.loads(json.dumps(panoptic, default=float))
    return {"lidarseg": lidarseg, "panoptic": panoptic}


def devkit_report(raw: dict[str, Any]) -> dict[str, Any]:
    """The devkit's numbers in the project's summary layout (NaN -> None).

    ``pq_things`` / ``pq_stuff`` (and SQ / RQ) are means of the devkit's per-class values over the ten
    thing and six stuff classes (the devkit prints only the overall means and PQ-dagger).
    """
    def fin(v):
        v = float(v)
        return v if np.isfinite(v) else None

    ls = raw["lidarseg"]
    out: dict[str, Any] = {
        "miou": fin(ls["miou"]),
        "iou_per_class": {c: fin(ls["iou_per_class"][c]) for c in NUSCENES16.classes},
        "freq_weighted_iou": fin(ls["freq_weighted_iou"]),
    }
    pan = raw.get("panoptic")
    if pan:
        things = [c for c in NUSCENES16.classes if c in NUSCENES16.things]
        stuff = [c for c in NUSCENES16.classes if c not in NUSCENES16.things]
        out.update({"pq": fin(pan["all"]["PQ"]), "sq": fin(pan["all"]["SQ"]), "rq": fin(pan["all"]["RQ"]),
                    "panoptic_miou": fin(pan["all"]["mIoU"]), "pq_dagger": fin(pan["all"]["PQ_dagger"])})
        for part, names in (("things", things), ("stuff", stuff)):
            for m in ("pq", "sq", "rq"):
                out[f"{m}_{part}"] = float(np.mean([pan[c][m.upper()] for c in names]))
        out["pq_per_class"] = {c: {"pq": fin(pan[c]["PQ"]), "sq": fin(pan[c]["SQ"]), "rq": fin(pan[c]["RQ"])}
                               for c in NUSCENES16.classes}
    return out
