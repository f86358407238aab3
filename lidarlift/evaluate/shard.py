"""Rule ``evaluate_shard``: every production store of one shard scored against its ground truth.

The truth of each keyframe is read once (:class:`lidarlift.evaluate.truth.SampleTruth`) and handed to
each stage's scorer; the result is one JSON of additive counts per shard
(``results/evaluate/shards/<shard>.json``), merged over shards by :mod:`lidarlift.evaluate.merge`:

    {"shard", "split", "label_space", "samples", "skipped": [...],
     "association": counts | None,
     "presegment": {"ours": counts, "baseline": counts | None} | None,
     "superpixels": counts | None, "masks": counts | None,
     "pseudolabels": {"0": counts, "1": counts, ..., "baseline": counts | None, "uniform": counts | None},
     "pseudolabels_clicks": {"protocol", "share", "active_rounds"} (with "uniform": the clicks config of round 0),
     "network": {"0": {"confusion", "panoptic"}, ..., "full": {...}, "keyframes": {...}},
     "temporal": {"0": counts, ...} (train shards with temporal.enabled; lidarlift.evaluate.temporal)}

Which stores a shard has depends on the run (``ShardStores``); a store that is absent is left out.
A keyframe a stage skipped (zero rows under ``bad_sample_policy: skip``) is left out of that stage's
counts and listed under ``skipped``; any other disagreement with the truth is an error naming the store.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lidarlift import artifacts as A
from lidarlift.classes import LabelSpace, label_space
from lidarlift.evaluate.association import association_counts
from lidarlift.evaluate.counts import add
from lidarlift.evaluate.instances import InstanceParams, cluster_instances
from lidarlift.evaluate.masks import image_metrics as mask_image_counts
from lidarlift.evaluate.masks import resize_nearest
from lidarlift.evaluate.metrics import PanopticAccumulator, confusion_matrix
from lidarlift.evaluate.presegment import presegment_counts
from lidarlift.evaluate.pseudolabels import pseudolabel_counts
from lidarlift.evaluate.superpixels import image_metrics as superpixel_image_counts
from lidarlift.evaluate.temporal import temporal_counts
from lidarlift.evaluate.truth import SampleTruth
from lidarlift.manifest import Manifest

log = logging.getLogger(__name__)


class EvaluationError(RuntimeError):
    """Inputs the evaluation cannot score (point counts that disagree, missing ground truth, ...)."""


@dataclass
class ShardStores:
    """The stores of one shard to score (paths; None or empty = not in this run)."""

    associate: str | None = None
    presegment: str | None = None
    presegment_baseline: str | None = None
    superpixels: str | None = None
    masks: str | None = None
    pseudolabels: dict[str, str] = field(default_factory=dict)  # round -> path
    pseudolabels_baseline: str | None = None
    pseudolabels_uniform: str | None = None  # round 0 from the uniform budget protocol beside active clicks
    network: dict[str, str] = field(default_factory=dict)  # round, "full" or "keyframes" -> path
    temporal: dict[str, str] = field(default_factory=dict)  # round -> temporal store (intermediate sweeps)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ShardStores":
        return cls(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()})


@dataclass(frozen=True)
class EvalSettings:
    """What the evaluation takes from the config (:func:`lidarlift.config.evaluation_settings`; defaults
    from the schema)."""

    min_inst_points: int
    instances: InstanceParams
    split_min_points: int
    split_min_share: float
    mask_min_area: int
    boundary_tolerance: float
    pq_min_points: int

    @classmethod
    def from_settings(cls, s: dict[str, Any] | None) -> "EvalSettings":
        from lidarlift.config import section

        s = s or {}
        ev = section("evaluate", s.get("evaluate"))
        pre = section("presegment", s.get("presegment"))
        return cls(
            min_inst_points=int(ev["min_inst_points"]),
            instances=InstanceParams.from_config(ev["instances"]),
            split_min_points=int(pre["split_min_points"]),
            split_min_share=float(pre["split_min_share"]),
            mask_min_area=int(section("masks", s.get("masks"))["eval_min_area"]),
            boundary_tolerance=float(section("superpixels", s.get("superpixels"))["boundary_tolerance"]),
            pq_min_points=int(section("pseudolabels", s.get("pseudolabels"))["pq_min_points"]),
        )


class _PointStore:
    """Per-keyframe rows of a point store, checked against the shard's keyframes."""

    def __init__(self, path: str, stage: str, names: tuple[str, ...], tokens: list[str]):
        self.path, self.stage = path, stage
        g = A.open_store(path, stage)
        got = list(g.attrs["sample_tokens"])
        if got != tokens:
            raise EvaluationError(f"{stage} store {path} holds other keyframes than the manifest's shard "
                                  f"(stale store? re-run '{stage}')")
        self.offsets = A.read(g, "point_offsets").astype(np.int64)
        self.arrays = {n: A.read(g, n) for n in names}
        self.attrs = dict(g.attrs)

    def rows(self, s: int, truth: SampleTruth, skipped: list[dict[str, str]]) -> dict[str, np.ndarray] | None:
        sl = A.sample_slice(self.offsets, s)
        n = sl.stop - sl.start
        if n != truth.n:
            if n == 0:
                skipped.append({"sample": truth.sample.token, "store": self.path, "reason": "no points in store (skipped upstream)"})
                return None
            raise EvaluationError(f"{self.stage} store {self.path}: sample {truth.sample.token} has {n} points, "
                                  f"its ground truth {truth.n}")
        return {k: v[sl] for k, v in self.arrays.items()}


def _image_stack(path: str, stage: str, array: str, tokens: list[str]) -> Any:
    g = A.open_store(path, stage)
    if list(g.attrs["sample_tokens"]) != tokens:
        raise EvaluationError(f"{stage} store {path} holds other keyframes than the manifest's shard (stale store? re-run '{stage}')")
    return g[array]


def _network_counts(rows: dict[str, np.ndarray], truth: SampleTruth, space: LabelSpace, cfg: EvalSettings,
                    panoptic: bool, path: str) -> dict[str, Any]:
    sem = rows["pred"].astype(np.int64)
    if sem.size and (sem.min() < 1 or sem.max() > space.num_classes):
        raise EvaluationError(f"predict store {path}: sample {truth.sample.token} has predictions outside "
                              f"1..{space.num_classes} ({sem.min()}..{sem.max()})")
    out: dict[str, Any] = {"samples": 1, "confusion": confusion_matrix(truth.label, sem, space.num_classes).tolist(),
                           "panoptic": None}
    if panoptic:
        acc = PanopticAccumulator(space, cfg.min_inst_points)
        acc.add(sem, cluster_instances(truth.xyz, sem, space, cfg.instances), truth.label, truth.segment_key)
        out["panoptic"] = acc.counts()
    return out


def evaluate_shard(manifest_path: str | Path, shard: str, stores: ShardStores | dict[str, Any],
                   settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every store of ``shard`` (see the module docstring); returns the counts dict."""
    t0 = time.perf_counter()
    stores = stores if isinstance(stores, ShardStores) else ShardStores.from_dict(stores)
    cfg = EvalSettings.from_settings(settings)
    manifest = Manifest.from_json(manifest_path)
    space = label_space(manifest.label_space)
    samples = manifest.shard_samples(shard)
    tokens = [s.token for s in samples]
    has_panoptic_gt = manifest.kind == "semantickitti" or all(s.gt_panoptic for s in samples)
    skipped: list[dict[str, str]] = []

    point_stores: dict[str, _PointStore] = {}
    if stores.associate:
        point_stores["association"] = _PointStore(stores.associate, "associate", ("uv", "in_image", "visible"), tokens)
    for key, path in (("presegment", stores.presegment), ("presegment_baseline", stores.presegment_baseline)):
        if path:
            point_stores[key] = _PointStore(path, "presegment", ("ground", "segment_id"), tokens)
    pl_names = ("label", "candidate_mask", "source", "instance_id")
    for r, path in sorted(stores.pseudolabels.items()):
        point_stores[f"pseudolabels/{r}"] = _PointStore(path, "pseudolabels", pl_names, tokens)
    if stores.pseudolabels_baseline:
        point_stores["pseudolabels/baseline"] = _PointStore(stores.pseudolabels_baseline, "pseudolabels", pl_names, tokens)
    if stores.pseudolabels_uniform:
        point_stores["pseudolabels/uniform"] = _PointStore(stores.pseudolabels_uniform, "pseudolabels", pl_names, tokens)
    for r, path in sorted(stores.network.items()):
        point_stores[f"network/{r}"] = _PointStore(path, "predict", ("pred",), tokens)
    superpixels = _image_stack(stores.superpixels, "superpixels", "labels", tokens) if stores.superpixels else None
    masks = _image_stack(stores.masks, "masks", "mask_labels", tokens) if stores.masks else None

    acc: dict[str, dict[str, Any]] = {}

    def add_to(key: str, counts: dict[str, Any]) -> None:
        acc[key] = add(acc.get(key, {}), counts)

    n_cam = len(manifest.cameras)
    for s, sample in enumerate(samples):
        truth = SampleTruth(manifest, sample)
        if point_stores and not truth.available:
            raise EvaluationError(f"sample {sample.token} ({shard}) has no ground truth to score against")
        for key, store in point_stores.items():
            rows = store.rows(s, truth, skipped)
            if rows is None:
                continue
            if key == "association":
                add_to(key, association_counts(rows["uv"], rows["in_image"], rows["visible"], truth, space))
            elif key.startswith("presegment"):
                add_to(key, presegment_counts(rows["ground"], rows["segment_id"], truth.label, truth.instance, truth.range,
                                              space, cfg.split_min_points, cfg.split_min_share))
            elif key.startswith("pseudolabels"):
                add_to(key, pseudolabel_counts(rows["label"], rows["candidate_mask"], rows["source"], rows["instance_id"],
                                               truth.label, truth.segment_key, space, cfg.pq_min_points))
            else:
                add_to(key, _network_counts(rows, truth, space, cfg, has_panoptic_gt, store.path))
        for c in range(n_cam):
            if superpixels is None and masks is None:
                break
            im = truth.image(c)
            if im is None:
                continue
            if superpixels is not None:
                sp = np.asarray(superpixels[s * n_cam + c])
                if (sp >= 0).any():  # an image skipped upstream keeps -1 everywhere
                    add_to("superpixels", {**superpixel_image_counts(sp, *im, tolerance=cfg.boundary_tolerance),
                                           "images_with_truth": 1})
            if masks is not None:
                ml = np.asarray(masks[s * n_cam + c])
                gl, gi = (resize_nearest(a, ml.shape) for a in im)
                add_to("masks", {**mask_image_counts(ml, gi, gl, space.thing_mask, cfg.mask_min_area, space.classes),
                                 "images_with_truth": 1})

    def rounds(prefix: str) -> dict[str, Any]:
        return {k.split("/", 1)[1]: v for k, v in acc.items() if k.startswith(prefix + "/")}

    out = {
        "kind": "evaluate_shard", "shard": shard, "split": manifest.split_of(shard), "label_space": space.name,
        "dataset": manifest.kind, "samples": len(samples), "panoptic_truth": has_panoptic_gt,
        "settings": {"min_inst_points": cfg.min_inst_points, "pq_min_points": cfg.pq_min_points,
                     "instances": {"method": "components", **cfg.instances.__dict__}},
        "association": acc.get("association"),
        "presegment": ({"ours": acc.get("presegment"), "baseline": acc.get("presegment_baseline"),
                        "method": point_stores["presegment"].attrs.get("method")} if "presegment" in point_stores else None),
        "superpixels": acc.get("superpixels"),
        "masks": acc.get("masks"),
        "pseudolabels": rounds("pseudolabels") or None,
        "network": rounds("network") or None,
        "skipped": skipped,
        "seconds": time.perf_counter() - t0,
    }
    if stores.temporal:  # the intermediate sweeps' labels against the sweep truth, per round
        out["temporal"] = {r: temporal_counts(manifest, samples, path, space) for r, path in sorted(stores.temporal.items())}
    if "pseudolabels/baseline" in point_stores:
        out["pseudolabels_baseline_method"] = point_stores["pseudolabels/baseline"].attrs.get("method")
    if "pseudolabels/uniform" in point_stores and "pseudolabels/0" in point_stores:
        clicks = (point_stores["pseudolabels/0"].attrs.get("params") or {}).get("clicks") or {}
        out["pseudolabels_clicks"] = {k: clicks.get(k) for k in ("protocol", "share", "active_rounds")}
    log.info("shard %s scored in %.1f s: %s", shard, out["seconds"], sorted(acc))
    return out


def iter_shard_files(paths: list[str | Path]) -> Iterator[dict[str, Any]]:
    """The per-shard evaluation files, read."""
    from lidarlift.workflow import read_json

    for p in paths:
        yield read_json(p)
