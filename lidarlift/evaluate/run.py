"""Splits of a run, the nuScenes devkit cross-check, and the exports in the official formats.

Scoring lives in :mod:`lidarlift.evaluate.shard` (per shard) and :mod:`lidarlift.evaluate.merge`
(the run); this module holds what they and the export rule share.
"""
from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lidarlift import artifacts as A
from lidarlift.classes import LabelSpace, label_space
from lidarlift.datasets.readers import read_lidar
from lidarlift.evaluate import devkit as D
from lidarlift.evaluate import export as E
from lidarlift.evaluate.instances import InstanceParams, cluster_instances, compact_instances
from lidarlift.evaluate.metrics import max_abs_diff
from lidarlift.manifest import Manifest, SampleRecord

log = logging.getLogger(__name__)


class EvaluationError(RuntimeError):
    """Inputs the evaluation cannot score (point counts that disagree, missing ground truth, ...)."""


def keyframe_xyz(manifest: Manifest, sample: SampleRecord) -> np.ndarray:
    """(N, 3) float32 keyframe points, lidar frame."""
    return read_lidar(manifest.resolve(sample.lidar.path), sample.lidar.fmt, sample.token)[:, :3]


# ---------------------------------------------------------------------------------------------
# The devkit cross-check


def devkit_check(manifest: Manifest, arrays: list, project: dict[str, Any], result_dir: Path, min_points: int,
                 tol: float, *, panoptic: bool, nusc=None) -> dict[str, Any]:
    """Write ``arrays`` [(sample, sem (N,) uint8 1..16, inst (N,) int32 or None)] in the submission
    layout under ``result_dir``, run the devkit and compare with ``project`` (see :func:`devkit_compare`)."""
    splits = sorted({s.split for s, _, _ in arrays})
    if len(splits) != 1:
        raise D.DevkitUnavailable(f"devkit check needs predictions of one split, got {splits}; "
                                  "set evaluate.devkit_check: false to run without the cross-check")
    writer = D.SubmissionWriter(result_dir, D.eval_set_name(manifest.version, splits[0]))
    for sample, sem, inst in arrays:
        writer.add(sample.lidar.token, sem, inst)
    writer.close()
    return devkit_compare(manifest, writer, project, min_points, tol, panoptic=panoptic, nusc=nusc)


def devkit_compare(manifest: Manifest, writer: D.SubmissionWriter, project: dict[str, Any], min_points: int,
                   tol: float, *, panoptic: bool, nusc=None) -> dict[str, Any]:
    """Run LidarSegEval and NuScenesPanopticEval on the submission ``writer`` wrote and compare every
    number they share with ``project`` (the project's scores of the same predictions).

    ``nusc``: a loaded devkit NuScenes object of the manifest's dataroot and version (loaded here when
    None). Returns ``devkit``, ``max_abs_diff``, ``max_abs_diff_at``, ``devkit_status``, ``eval_set``,
    ``devkit_seconds``, ``devkit_tolerance``; raises DevkitMismatch above ``tol`` and
    DevkitUnavailable when a keyframe of the eval set has no prediction.
    """
    from lidarlift.datasets.nuscenes import load_nusc

    t0 = time.perf_counter()
    eval_set, result_dir = writer.eval_set, writer.root
    if nusc is None:
        nusc = load_nusc(manifest.dataroot, manifest.version)
    wanted = D.eval_set_lidar_tokens(nusc, eval_set)
    have = set(writer.tokens)
    missing = [t for t in wanted if t not in have]
    if missing:
        raise D.DevkitUnavailable(
            f"devkit check: {len(missing)} of {len(wanted)} keyframes of eval set {eval_set} have no prediction "
            f"(scenes filtered by dataset.scenes, or samples skipped upstream), e.g. lidar token {missing[0]}; "
            "set evaluate.devkit_check: false to run without the cross-check")
    log.info("devkit check: %d keyframes of %s in %s; running LidarSegEval and NuScenesPanopticEval",
             len(wanted), eval_set, result_dir)
    raw = D.run_devkit(nusc, result_dir, eval_set, min_inst_points=min_points)
    if not panoptic:
        raw["panoptic"] = None
    theirs = D.devkit_report(raw)
    diff, where = max_abs_diff(project, theirs)
    log.info("devkit check: max |project - devkit| = %.3g (at %s)", diff, where or "-")
    if not diff <= tol:
        raise D.DevkitMismatch(
            f"project and devkit metrics differ by {diff:.3g} at '{where}' (tolerance {tol:g}): "
            f"project {_lookup(project, where)} vs devkit {_lookup(theirs, where)}; submission in {result_dir}")
    return {"devkit": theirs, "max_abs_diff": diff, "max_abs_diff_at": where, "devkit_status": "agrees",
            "eval_set": eval_set, "devkit_seconds": time.perf_counter() - t0, "devkit_tolerance": tol}


def _lookup(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split(".") if dotted else []:
        d = d.get(part) if isinstance(d, dict) else None
    return d


# ---------------------------------------------------------------------------------------------
# Exports


def export_source(manifest_path: str | Path, stores: dict[str, Path], stage: str, out_dir: str | Path,
                  formats: list[str], cfg: dict[str, Any]) -> dict[str, Any]:
    """Export every keyframe of the given stores ({shard: path}) in ``formats`` under ``out_dir``.

    stage 'predict': labels ``pred`` (1..K), instances by clustering; stage 'pseudolabels': ``label``
    (0 = unlabelled kept as 0) with the store's ``instance_id`` renumbered per class (thing points
    without one are clustered). Returns counts per format.
    """
    manifest = Manifest.from_json(manifest_path)
    space = label_space(manifest.label_space)
    params = InstanceParams.from_config(cfg.get("instances"))
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    names = ["pred"] if stage == "predict" else ["label", "instance_id"]
    skipped_formats = []
    if "clusterlabel" in formats and space.name != "nuscenes16":
        log.warning("export: clusterlabel holds nuScenes thing classes only; skipped for label space %s", space.name)
        skipped_formats.append("clusterlabel")
        formats = [f for f in formats if f != "clusterlabel"]
    counts = {f: 0 for f in formats}
    splits: set[str] = set()
    for shard, path in stores.items():
        group = A.open_store(path, stage)
        offsets = A.read(group, "point_offsets")
        data = {n: A.read(group, n) for n in names}
        by_token = {s.token: s for s in manifest.samples}
        for s, token in enumerate(tqdm(group.attrs["sample_tokens"], desc=f"export {shard}", file=sys.stderr, mininterval=5)):
            sample = by_token[token]
            sl = A.sample_slice(offsets, s)
            if sl.stop == sl.start:
                continue  # skipped upstream
            if stage == "predict":
                sem = data["pred"][sl].astype(np.int64)
                inst = cluster_instances(keyframe_xyz(manifest, sample), sem, space, params)
            else:
                sem = data["label"][sl].astype(np.int64)
                inst = compact_instances(sem, data["instance_id"][sl], space)
                need = space.thing_mask[sem] & (inst == 0)
                if need.any():
                    extra = cluster_instances(keyframe_xyz(manifest, sample), np.where(need, sem, 0), space, params)
                    inst = np.where(need, extra + np.where(need, _per_class_max(sem, inst, space), 0), inst)
                    inst = np.minimum(inst, 999)
            split_folder = D.eval_set_name(manifest.version, sample.split) if manifest.kind == "nuscenes" else sample.split
            splits.add(split_folder)
            files = E.export_sample(
                out_dir, formats=formats, split_folder=split_folder, sd_token=sample.lidar.token or sample.token,
                shard=shard, index=sample.index, lidar_basename=Path(sample.lidar.path).name, sem=sem, inst=inst,
                thing_mask=space.thing_mask, kitti_raw_ids=space.name == "semantickitti19",
                allow_ignore=stage != "predict", num_classes=space.num_classes)
            for f in formats:
                counts[f] += 1
            log.debug("exported %s: %d files", token, len(files))
    if "nuscenes" in formats:
        for sp in sorted(splits):
            E.write_submission_json(out_dir / "nuscenes" / sp / "submission.json", meta={"task": "segmentation"})
    return {"stage": stage, "formats": formats, "skipped_formats": skipped_formats, "samples": counts,
            "splits": sorted(splits)}


def _per_class_max(sem: np.ndarray, inst: np.ndarray, space: LabelSpace) -> np.ndarray:
    """(N,) the largest instance id already used in each point's class (so new clusters do not collide)."""
    top = np.zeros(space.num_classes + 1, np.int64)
    np.maximum.at(top, sem, inst)
    return top[sem]
