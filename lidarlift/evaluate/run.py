"""The ``evaluate`` stage: score network predictions, the fully supervised baseline and every
pseudo-label round against ground truth, cross-check the final round with the nuScenes devkit, and
export labels in the official formats.

Inputs are stores of other stages (read through :mod:`lidarlift.artifacts`):
``predict/r<round>/<shard>.zarr`` and ``predict/full/<shard>.zarr`` (``pred`` (P,) 1..K) and
``pseudolabels/r<round>/<shard>.zarr`` (``label`` 0..K, ``instance_id``, ``candidate_mask``,
``source``). Ground truth comes from :func:`lidarlift.groundtruth.point_truth`.
"""
from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm import tqdm

from lidarlift import artifacts as A
from lidarlift.classes import LabelSpace, candidate_bit, label_space
from lidarlift.datasets.readers import read_lidar
from lidarlift.evaluate import devkit as D
from lidarlift.evaluate import export as E
from lidarlift.evaluate.instances import InstanceParams, cluster_instances, compact_instances
from lidarlift.evaluate.metrics import (
    PanopticAccumulator, confusion_matrix, max_abs_diff, panoptic_report, semantic_report,
)
from lidarlift.groundtruth import point_truth
from lidarlift.manifest import Manifest, SampleRecord

log = logging.getLogger(__name__)


class EvaluationError(RuntimeError):
    """Inputs the evaluation cannot score (point counts that disagree, missing ground truth, ...)."""


def shard_split(config: dict[str, Any], shard: str) -> str:
    """'train' | 'val' | 'test' of a shard, known when the workflow is parsed (no manifest needed)."""
    ds = config["dataset"]
    if ds.get("format", "nuscenes") == "semantickitti":
        from lidarlift.datasets.semantickitti import SPLITS

        return SPLITS.get(shard, "test")
    from lidarlift.datasets.nuscenes import scene_splits

    return scene_splits(ds.get("version", "v1.0-mini")).get(shard, "test")


def shards_of_splits(config: dict[str, Any], shards: list[str], splits: list[str]) -> list[str]:
    return [s for s in shards if shard_split(config, s) in splits]


def eval_shards(config: dict[str, Any], shards: list[str]) -> list[str]:
    """The shards the network is scored on: the val split, or every shard when the run has no val shard."""
    return shards_of_splits(config, shards, ["val"]) or list(shards)


# ---------------------------------------------------------------------------------------------
# Reading stores


@dataclass
class SampleLabels:
    """One keyframe's labels from a store, with its ground truth. Arrays are (N,)."""

    sample: SampleRecord
    gt: np.ndarray  # class 0..K
    gt_key: np.ndarray  # int64 ground-truth segment key (instance, or per-class stuff key)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def gt_segment_key(fine: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """(N,) int64 key of each point's ground-truth segment: its instance where it has one, else its
    native (fine) class — for nuScenes this partitions points exactly as the devkit's
    ``1000 * fine + id`` panoptic values do."""
    instance = np.asarray(instance, np.int64)
    return np.where(instance > 0, 2 * instance + 1, 2 * np.asarray(fine, np.int64))


def iter_store(manifest: Manifest, path: str | Path, stage: str, names: list[str], *, desc: str = "",
               skipped: list[dict[str, str]] | None = None) -> Iterator[SampleLabels]:
    """Each keyframe of a shard store with its ground truth.

    A sample the store holds with zero points while the dataset has points (a stage skipped it under
    ``bad_sample_policy: skip``) is left out and listed in ``skipped``; any other disagreement in point
    count raises EvaluationError naming the store and the sample.
    """
    group = A.open_store(path, stage)
    tokens = list(group.attrs["sample_tokens"])
    shard = group.attrs["shard"]
    by_token = {s.token: s for s in manifest.samples}
    offsets = A.read(group, "point_offsets")
    data = {n: A.read(group, n) for n in names}
    if len(offsets) != len(tokens) + 1:
        raise EvaluationError(f"{stage} store {path}: {len(tokens)} sample tokens but {len(offsets) - 1} offsets")
    for s, token in enumerate(tqdm(tokens, desc=desc or f"{stage} {shard}", file=sys.stderr, mininterval=5, leave=False)):
        if token not in by_token:
            raise EvaluationError(f"{stage} store {path}: sample {token} is not in the manifest (stale store? re-run '{stage}')")
        sample = by_token[token]
        truth = point_truth(manifest, sample)
        if truth is None:
            raise EvaluationError(f"sample {token} ({shard}) has no ground truth to score {stage} against")
        sl = A.sample_slice(offsets, s)
        n = sl.stop - sl.start
        if n != truth.label.size:
            if n == 0 and skipped is not None:
                skipped.append({"sample": token, "store": str(path), "reason": "no points in store (skipped upstream)"})
                continue
            raise EvaluationError(f"{stage} store {path}: sample {token} has {n} points, its ground truth {truth.label.size}")
        yield SampleLabels(sample, truth.label.astype(np.int64), gt_segment_key(truth.fine, truth.instance),
                           {k: v[sl] for k, v in data.items()})


def keyframe_xyz(manifest: Manifest, sample: SampleRecord) -> np.ndarray:
    """(N, 3) float32 keyframe points, lidar frame."""
    return read_lidar(manifest.resolve(sample.lidar.path), sample.lidar.fmt, sample.token)[:, :3]


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Scorer:
    """Semantic confusion matrix plus panoptic sums over many keyframes."""

    space: LabelSpace
    min_points: int
    cm: np.ndarray = field(init=False)
    panoptic: PanopticAccumulator = field(init=False)
    samples: int = 0

    def __post_init__(self) -> None:
        self.cm = np.zeros((self.space.num_classes + 1,) * 2, np.int64)
        self.panoptic = PanopticAccumulator(self.space, self.min_points)

    def add(self, gt: np.ndarray, gt_key: np.ndarray, sem: np.ndarray, inst: np.ndarray | None) -> None:
        self.cm += confusion_matrix(gt, sem, self.space.num_classes)
        if inst is not None:
            self.panoptic.add(sem, inst, gt, gt_key)
        self.samples += 1

    def report(self) -> dict[str, Any]:
        out = semantic_report(self.cm, self.space)
        if self.panoptic.scans:
            out.update(panoptic_report(self.panoptic))
        out["samples"] = self.samples
        return out


def score_network(manifest: Manifest, stores: dict[str, Path], space: LabelSpace, params: InstanceParams,
                  min_points: int, *, panoptic: bool, sink: Callable | None = None,
                  skipped: list | None = None, desc: str = "") -> Scorer:
    """Score the ``pred`` of predict stores ({shard: path}); instances by :func:`cluster_instances`.

    ``sink`` (optional) is called with (sample, sem (N,) uint8 1..K, inst (N,) int32 or None) per
    keyframe, e.g. to write the devkit submission while scoring.
    """
    scorer = Scorer(space, min_points)
    for shard, path in stores.items():
        for sl in iter_store(manifest, path, "predict", ["pred"], desc=f"{desc} {shard}", skipped=skipped):
            sem = sl.arrays["pred"].astype(np.int64)
            if sem.size and (sem.min() < 1 or sem.max() > space.num_classes):
                raise EvaluationError(f"predict store {path}: sample {sl.sample.token} has predictions outside 1..{space.num_classes} ({sem.min()}..{sem.max()})")
            inst = cluster_instances(keyframe_xyz(manifest, sl.sample), sem, space, params) if panoptic else None
            scorer.add(sl.gt, sl.gt_key, sem, inst)
            if sink is not None:
                sink(sl.sample, sem.astype(np.uint8), inst)
    return scorer


def score_pseudolabels(manifest: Manifest, stores: dict[str, Path], space: LabelSpace, min_points: int,
                       skipped: list | None = None, desc: str = "") -> dict[str, Any]:
    """Quality of one round of pseudo-labels against ground truth, on points with a ground-truth class.

    Returns ``labelled_share`` (label > 0), ``precision`` (correct among labelled), ``miou`` / per-class
    IoU on the labelled points (the label-space convention), ``candidate_share`` (unlabelled with a
    narrowed candidate set), ``candidate_contains_truth``, ``mean_candidate_size``, ``per_source``
    {name: {share, labelled, precision}}, and ``pq_things`` etc. where the labels carry instance ids.
    """
    k = space.num_classes
    cm = np.zeros((k + 1, k + 1), np.int64)
    acc = PanopticAccumulator(space, min_points)
    has_instances = False
    n_scored = n_labelled = n_correct = n_cand = n_cand_true = cand_size = 0
    per_source: dict[int, list[int]] = {}
    all_bits = space.all_candidates
    samples = 0
    for shard, path in stores.items():
        for sl in iter_store(manifest, path, "pseudolabels", ["label", "instance_id", "candidate_mask", "source"],
                             desc=f"{desc} {shard}", skipped=skipped):
            samples += 1
            scored = sl.gt > 0
            label = sl.arrays["label"].astype(np.int64)
            if label.size and label.max() > k:
                raise EvaluationError(f"pseudolabels store {path}: sample {sl.sample.token} has labels above {k}")
            lab = (label > 0) & scored
            cm += confusion_matrix(np.where(lab, sl.gt, 0), np.where(lab, label, 0), k)
            n_scored += int(scored.sum())
            n_labelled += int(lab.sum())
            n_correct += int((label[lab] == sl.gt[lab]).sum())
            mask = sl.arrays["candidate_mask"].astype(np.uint32) & np.uint32(all_bits)
            cand = (label == 0) & scored & (mask != all_bits) & (mask != 0)
            n_cand += int(cand.sum())
            n_cand_true += int(((mask[cand] & candidate_bit(sl.gt[cand])) != 0).sum())
            if cand.any():
                cand_size += int(np.unpackbits(mask[cand].view(np.uint8)).sum())
            src = sl.arrays["source"].astype(np.int64)
            for code in np.unique(src[scored]):
                m = scored & (src == code)
                rec = per_source.setdefault(int(code), [0, 0, 0])
                rec[0] += int(m.sum())
                rec[1] += int((m & (label > 0)).sum())
                rec[2] += int((m & (label > 0) & (label == sl.gt)).sum())
            inst = sl.arrays["instance_id"].astype(np.int64)
            has_instances |= bool((inst > 0).any())
            acc.add(label, np.where(label > 0, inst, 0), sl.gt, sl.gt_key)
    sem = semantic_report(cm, space)
    out: dict[str, Any] = {
        "samples": samples,
        "points": n_scored,
        "labelled_share": n_labelled / n_scored if n_scored else None,
        "precision": n_correct / n_labelled if n_labelled else None,
        "miou": sem["miou"],
        "iou_per_class": sem["iou_per_class"],
        "candidate_share": n_cand / n_scored if n_scored else None,
        "candidate_contains_truth": n_cand_true / n_cand if n_cand else None,
        "mean_candidate_size": cand_size / n_cand if n_cand else None,
        "per_source": {
            A.SOURCES.get(code, f"source{code}"): {
                "share": v[0] / n_scored if n_scored else None, "points": v[0],
                "labelled": v[1], "precision": v[2] / v[1] if v[1] else None,
            } for code, v in sorted(per_source.items())
        },
    }
    if has_instances:
        pan = panoptic_report(acc)
        out.update({key: pan[key] for key in ("pq_things", "sq_things", "rq_things")})
    return out


# ---------------------------------------------------------------------------------------------
# The stage


@dataclass
class EvaluateInputs:
    """Store paths by role: ``network`` {round: {shard: path}}, ``full`` {shard: path} or {},
    ``pseudolabels`` {round: {shard: path}}."""

    network: dict[int, dict[str, Path]]
    full: dict[str, Path]
    pseudolabels: dict[int, dict[str, Path]]


def evaluate(manifest_path: str | Path, inputs: EvaluateInputs, cfg: dict[str, Any], *,
             devkit_dir: str | Path, confusion_path: str | Path | None = None) -> dict[str, Any]:
    """Score everything; cross-check the final round with the devkit; return the metrics dict
    (the ``evaluation`` metrics file). ``cfg``: the ``evaluate`` config section.

    Raises :class:`lidarlift.evaluate.devkit.DevkitMismatch` when project and devkit differ by more
    than ``cfg['tolerance']``.
    """
    t0 = time.perf_counter()
    manifest = Manifest.from_json(manifest_path)
    space = label_space(manifest.label_space)
    params = InstanceParams.from_config(cfg.get("instances"))
    min_points = int(cfg.get("min_inst_points", 15))
    has_panoptic_gt = manifest.kind == "semantickitti" or all(s.gt_panoptic for s in manifest.samples)
    if not inputs.network:
        raise EvaluationError("evaluate: no network rounds to score (config key em.rounds)")
    final = max(inputs.network)
    skipped: list[dict[str, str]] = []
    out: dict[str, Any] = {"kind": "evaluation", "label_space": space.name, "dataset": manifest.kind, "devkit_status": "not run",
                           "version": manifest.version, "final_round": final,
                           "eval_shards": sorted(inputs.network[final]),
                           "eval_split": sorted({manifest.split_of(s) for s in inputs.network[final]}),
                           "instances": {"method": "components", **params.__dict__}, "min_inst_points": min_points}
    confusion: dict[str, np.ndarray] = {}

    # the devkit cross-check is decided first, so its submission is written while the final round is scored
    tol = float(cfg.get("tolerance", 1e-6))
    writer = None
    if not cfg.get("devkit_check", True):
        out["devkit_status"] = "skipped: config key evaluate.devkit_check is false"
    elif manifest.kind != "nuscenes":
        out["devkit_status"] = f"skipped: the devkit evaluates nuScenes-format data, this run is {manifest.kind}"
    elif space.name != "nuscenes16":
        out["devkit_status"] = f"skipped: label space {space.name} is not the nuScenes challenge's"
    else:
        if len(out["eval_split"]) != 1:
            raise D.DevkitUnavailable(
                f"devkit check: the network is scored on shards of several splits {out['eval_split']} (the run has no "
                "val scene); set evaluate.devkit_check: false to run without the cross-check")
        writer = D.SubmissionWriter(devkit_dir, D.eval_set_name(manifest.version, out["eval_split"][0]))

    def to_submission(sample, sem, inst):
        writer.add(sample.lidar.token, sem, inst)

    rounds = []
    for r in sorted(inputs.network):
        scorer = score_network(manifest, inputs.network[r], space, params, min_points, panoptic=has_panoptic_gt,
                               sink=to_submission if (writer is not None and r == final) else None,
                               skipped=skipped, desc=f"network r{r}")
        confusion[f"network_r{r}"] = scorer.cm
        rounds.append({"round": r, "network": scorer.report()})
    out["network"] = rounds[-1]["network"]

    full = None
    if inputs.full:
        scorer = score_network(manifest, inputs.full, space, params, min_points, panoptic=has_panoptic_gt,
                               skipped=skipped, desc="full supervision")
        confusion["full_supervision"] = scorer.cm
        full = scorer.report()
    out["full_supervision"] = full

    for rec in rounds:
        r = rec["round"]
        if r in inputs.pseudolabels:
            rec["pseudolabels"] = score_pseudolabels(manifest, inputs.pseudolabels[r], space, min_points,
                                                     skipped=skipped, desc=f"pseudolabels r{r}")
    out["rounds"] = rounds
    out["headline"] = headline_rows(rounds, full)

    out.update({"devkit": None, "max_abs_diff": None})
    if writer is not None:
        writer.close()
        out.update(devkit_compare(manifest, writer, out["network"], min_points, tol, panoptic=has_panoptic_gt))
    out["skipped"] = skipped
    out["seconds"] = time.perf_counter() - t0
    if confusion_path is not None:
        Path(confusion_path).parent.mkdir(parents=True, exist_ok=True)
        with open(confusion_path, "wb") as fh:
            np.savez(fh, classes=np.array(space.classes), **confusion)
    return out


def headline_rows(rounds: list[dict[str, Any]], full: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per EM round: network mIoU / PQ, pseudo-label mIoU / labelled share / precision, full
    supervision mIoU and the network's share of it."""
    full_miou = full.get("miou") if full else None
    rows = []
    for rec in rounds:
        net, pl = rec["network"], rec.get("pseudolabels") or {}
        rows.append({
            "round": rec["round"],
            "network_miou": net.get("miou"),
            "network_pq": net.get("pq"),
            "pseudolabel_miou": pl.get("miou"),
            "pseudolabel_labelled_share": pl.get("labelled_share"),
            "pseudolabel_precision": pl.get("precision"),
            "full_supervision_miou": full_miou,
            "share_of_full": (net["miou"] / full_miou) if (full_miou and net.get("miou") is not None) else None,
        })
    return rows


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
