"""The ``pseudolabels`` stage: read one shard's input stores, make one EM round's labels, write store + stats.

Inputs (all through :mod:`lidarlift.artifacts`): ``associate`` (uv, in_image, visible), ``presegment``
(ground, segment_id, ground_cell), ``superpixels`` and ``masks`` (label maps at their working
resolution; the scale is taken from the map size against the manifest's image size), the shard's
clicks file (clicks mode), and for rounds >= 1 the round-0 ``pseudolabels`` store and the ``predict``
store of round ``r - 1``. Points come from the manifest's files; no ground truth is read here (the
clicks come from :mod:`.annotator`, simulated 2D maps from :mod:`.simulate2d`, quality from
:mod:`lidarlift.evaluate.pseudolabels`).

A keyframe the upstream stages skipped (zero rows under ``bad_sample_policy: skip``) gets zero rows
here too; any other disagreement in point counts between the stores and the LiDAR file is an error
naming the store and the sample.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lidarlift import artifacts as A
from lidarlift.classes import LabelSpace, label_space
from lidarlift.datasets.readers import read_image, read_lidar
from lidarlift.manifest import Manifest, SampleRecord
from lidarlift.workflow import write_json

from . import annotation_free as af
from . import clicks as ck
from .estep import EStepParams, calibrate, estep
from .propagate import Evidence, GraphParams, Labels, estimate_rings, iupc_propagate, ours_propagate
from .simulate2d import Corruption, class_lookup, read_map, simulated_camera_map

log = logging.getLogger(__name__)


class PseudoLabelError(RuntimeError):
    """Inputs of the pseudolabels stage disagree (point counts, shards, missing stores)."""


@dataclass(frozen=True)
class ClickParams:
    """Config ``pseudolabels.clicks`` (defaults and meaning: config/schema.yaml)."""

    protocol: str
    share: float
    seed: int
    min_region_points: int
    stuff_link_m: float
    file: str | None
    active_rounds: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None = None) -> "ClickParams":
        from lidarlift.config import ConfigError, typed

        p = typed(cls, "pseudolabels.clicks", cfg)
        if p.protocol == "file" and not p.file:
            raise ConfigError(["config key pseudolabels.clicks.file: protocol 'file' needs the path of a clicks file"])
        return p


@dataclass(frozen=True)
class Semantic2DParams:
    """Config ``pseudolabels.annotation_free.semantic2d`` (defaults and meaning: config/schema.yaml)."""

    source: str
    dir: str | None
    classes: tuple[str, ...]
    mapping: dict[str, str | None]

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None = None) -> "Semantic2DParams":
        from lidarlift.config import ConfigError, typed

        p = typed(cls, "pseudolabels.annotation_free.semantic2d", cfg)
        if p.source == "files" and not p.dir:
            raise ConfigError(["config key pseudolabels.annotation_free.semantic2d.dir: source 'files' needs the maps' folder"])
        return p


@dataclass(frozen=True)
class StageParams:
    """The ``pseudolabels`` config section, parsed and checked (its evaluation-scoped keys left out;
    ``af_method``, ``semantic2d``, ``corruption`` and ``refine`` are ``annotation_free``'s ``method``,
    ``semantic2d``, ``simulated`` and ``refine``)."""

    mode: str
    propagation: str
    clicks: ClickParams
    ours: GraphParams
    af_method: str
    semantic2d: Semantic2DParams
    corruption: Corruption
    refine: af.AnnotationFreeParams
    estep: EStepParams

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None = None) -> "StageParams":
        """From the section (missing keys take the schema's defaults); bad values raise ConfigError
        naming the config key."""
        from lidarlift.config import section, without_scoped

        c = section("pseudolabels", without_scoped("pseudolabels", cfg))
        afc = c["annotation_free"]
        return cls(
            mode=c["mode"], propagation=c["propagation"],
            clicks=ClickParams.from_config(c["clicks"]), ours=GraphParams.from_config(c["ours"]),
            af_method=afc["method"], semantic2d=Semantic2DParams.from_config(afc["semantic2d"]),
            corruption=Corruption.from_config(afc["simulated"]), refine=af.AnnotationFreeParams.from_config(afc["refine"]),
            estep=EStepParams.from_config(c["estep"]),
        )


# ----------------------------------------------------------------------------------------------
# loading


@dataclass
class SampleData:
    """One keyframe's inputs. ``uv`` (N, C, 2), ``in_image`` / ``visible`` (N, C); ``evidence`` for the
    propagation; ``image_index`` = s * C (first camera's image)."""

    record: SampleRecord
    evidence: Evidence
    uv: np.ndarray
    in_image: np.ndarray
    visible: np.ndarray
    image_index: int


def _image_sizes(sample: SampleRecord) -> list[tuple[int, int]]:
    return [(c.height, c.width) for c in sample.cameras]


def _per_view_ids(store, uv: np.ndarray, flag: np.ndarray, first_image: int, sizes: list[tuple[int, int]],
                  array: str) -> np.ndarray:
    """(N, C) int32: id in ``array`` (label maps (I, h, w)) under each point's pixel where ``flag``, else -1."""
    n, c = flag.shape
    out = np.full((n, c), -1, np.int32)
    for cam in range(c):
        pts = np.flatnonzero(flag[:, cam])
        if len(pts) == 0:
            continue
        img = np.asarray(store[array][first_image + cam])
        H, W = sizes[cam]
        out[pts, cam] = af.pixel_lookup(img, uv[pts, cam], (img.shape[1] / W, img.shape[0] / H), fill=-1)
    return out


def _rings(manifest: Manifest, sample: SampleRecord, pts: np.ndarray) -> np.ndarray:
    """Beam index of each point: the nuScenes file's ring column (its 5th), else estimated from elevation."""
    if sample.lidar.fmt == "nuscenes":
        raw = np.fromfile(manifest.resolve(sample.lidar.path), dtype=np.float32).reshape(-1, 5)
        return raw[:, 4].astype(np.int64)
    return estimate_rings(pts[:, :3])


def point_colours(manifest: Manifest, sample: SampleRecord, uv: np.ndarray, visible: np.ndarray, blur: int = 3) -> np.ndarray:
    """(N, 3) float32 CIE-Lab colour of each point in the camera images that see it (``blur`` x ``blur``
    box-filtered, averaged over the views); NaN where no camera sees it."""
    n, c = visible.shape
    total = np.zeros((n, 3))
    count = np.zeros(n)
    for cam in range(c):
        pts = np.flatnonzero(visible[:, cam])
        if len(pts) == 0:
            continue
        image = read_image(manifest.resolve(sample.cameras[cam].path), sample.token)
        lab = cv2.cvtColor(cv2.blur(image, (blur, blur)), cv2.COLOR_RGB2LAB)
        h, w = lab.shape[:2]
        x = np.clip(np.floor(uv[pts, cam, 0]).astype(np.int64), 0, w - 1)
        y = np.clip(np.floor(uv[pts, cam, 1]).astype(np.int64), 0, h - 1)
        total[pts] += lab[y, x]
        count[pts] += 1
    out = np.full((n, 3), np.nan, np.float32)
    has = count > 0
    out[has] = total[has] / count[has, None]
    return out


def load_shard(manifest: Manifest, shard: str, associate: str | Path, presegment: str | Path,
               superpixels: str | Path | None = None, masks: str | Path | None = None,
               colours: bool = True) -> list[SampleData]:
    """Every keyframe of ``shard`` with its evidence (see :class:`SampleData`); with ``colours``, the
    points' colours in the camera images."""
    samples = manifest.shard_samples(shard)
    assoc = A.open_store(associate, "associate")
    pre = A.open_store(presegment, "presegment")
    off = A.read(assoc, "point_offsets").astype(np.int64)
    off_pre = A.read(pre, "point_offsets").astype(np.int64)
    if len(off) != len(samples) + 1:
        raise PseudoLabelError(f"associate store {associate} has {len(off) - 1} keyframes, shard {shard} has {len(samples)}")
    if not np.array_equal(off, off_pre):
        raise PseudoLabelError(f"presegment store {presegment} and associate store {associate} disagree on the points of shard {shard}")
    sp = A.open_store(superpixels, "superpixels") if superpixels else None
    mk = A.open_store(masks, "masks") if masks else None
    uv_all, in_all, vis_all = (A.read(assoc, k) for k in ("uv", "in_image", "visible"))
    ground_all, seg_all, cell_all = (A.read(pre, k) for k in ("ground", "segment_id", "ground_cell"))
    c = len(manifest.cameras)
    out = []
    for s, sample in enumerate(samples):
        sl = A.sample_slice(off, s)
        n = sl.stop - sl.start
        ring = None
        if n:
            pts = read_lidar(manifest.resolve(sample.lidar.path), sample.lidar.fmt, sample.token)
            ring = _rings(manifest, sample, pts)
            if len(pts) != n:
                raise PseudoLabelError(f"sample {sample.token}: associate store {associate} has {n} points, "
                                       f"lidar file {sample.lidar.path} has {len(pts)}")
        else:
            pts = np.zeros((0, 4), np.float32)
        uv, in_image, visible = uv_all[sl], in_all[sl], vis_all[sl]
        sizes = _image_sizes(sample)
        ev = Evidence(
            xyz=pts[:, :3].astype(np.float32), intensity=pts[:, 3].astype(np.float32),
            ground=ground_all[sl].astype(bool), segment_id=seg_all[sl].astype(np.int32),
            ground_cell=cell_all[sl].astype(np.int32), fov=in_image.any(axis=1) if n else np.zeros(0, bool), ring=ring,
            mask=_per_view_ids(mk, uv, visible, s * c, sizes, "mask_labels") if mk is not None else None,
            superpixel=_per_view_ids(sp, uv, visible, s * c, sizes, "labels") if sp is not None else None,
        )
        if colours and n:
            ev.color = point_colours(manifest, sample, uv, visible)
        out.append(SampleData(sample, ev, uv, in_image, visible, s * c))
    return out


# ----------------------------------------------------------------------------------------------
# 2D maps (annotation-free mode)


def camera_maps(manifest: Manifest, d: SampleData, masks_store, space: LabelSpace, p: StageParams) -> list[af.CameraMaps]:
    """Per camera: the mask map and the 2D semantic map resampled to the mask resolution."""
    table = None
    if p.semantic2d.source == "files":
        table = class_lookup(list(p.semantic2d.classes), p.semantic2d.mapping, space)
    out = []
    for c, cam in enumerate(d.record.cameras):
        mask = np.asarray(masks_store["mask_labels"][d.image_index + c]).astype(np.int32)
        if p.semantic2d.source == "files":
            sem = read_map(p.semantic2d.dir, cam.token, (cam.height, cam.width), table)
        else:
            sem = simulated_camera_map(manifest, d.record, c, space, p.corruption)
        h, w = mask.shape
        if sem.shape != (h, w):
            sem = cv2.resize(sem, (w, h), interpolation=cv2.INTER_NEAREST)
        out.append(af.CameraMaps(mask, sem, (w / cam.width, h / cam.height)))
    return out


# ----------------------------------------------------------------------------------------------
# one round


def _concat(labels: list[Labels]) -> Labels:
    return Labels(*(np.concatenate([getattr(l, f.name) for l in labels]) for f in fields(Labels)))


def _read_labels(group, sl: slice) -> Labels:
    return Labels(*(np.asarray(group[f.name][sl]) for f in fields(Labels)))


def run_shard(manifest_path: str | Path, shard: str, round: int, out_store: str | Path, stats_path: str | Path | None,
              cfg: dict[str, Any], *, associate: str | Path, presegment: str | Path,
              superpixels: str | Path | None = None, masks: str | Path | None = None,
              clicks: str | Path | None = None, round0: str | Path | None = None,
              predict: str | Path | None = None, baseline: bool = False) -> dict[str, Any]:
    """Make and write the pseudo-labels of one shard and EM round; returns the stats written (what was
    made and how long it took; :mod:`lidarlift.evaluate.pseudolabels` scores the store).

    Round 0 needs ``clicks`` (clicks mode) or ``masks`` (annotation-free mode); rounds >= 1 need
    ``round0`` (the round-0 pseudolabels store) and ``predict`` (the predict store of round - 1).
    ``baseline`` (round 0 only; rule ``pseudolabels_baseline``): make the baseline's labels from the same
    inputs instead -- IUPC's rule set in clicks mode, PointSAM-faithful lifting in annotation-free mode.
    """
    t0 = time.perf_counter()
    p = StageParams.from_config(cfg)
    if baseline and round != 0:
        raise PseudoLabelError(f"the baseline pseudo-labels are made in round 0 only, not round {round}")
    method = (("iupc" if baseline else p.propagation) if p.mode == "clicks"
              else ("pointsam" if baseline else p.af_method)) if round == 0 else p.estep.method
    manifest = Manifest.from_json(manifest_path)
    space = label_space(manifest.label_space)
    ours_clicks = round == 0 and p.mode == "clicks" and method == "ours"
    data = load_shard(manifest, shard, associate, presegment, superpixels if ours_clicks else None,
                      masks if ours_clicks else None, colours=ours_clicks and p.ours.w_color > 0)
    n_per = [d.evidence.n for d in data]
    t_load = time.perf_counter() - t0
    made: list[Labels] = []
    extra: dict[str, Any] = {}
    if round == 0 and p.mode == "clicks":
        if clicks is None:
            raise PseudoLabelError("round 0 in clicks mode needs the shard's clicks file")
        all_clicks = ck.read_clicks(clicks, space, {d.record.token: d.evidence.n for d in data},
                                    known_tokens=[s.token for s in manifest.samples])
        for d in data:
            c = all_clicks[d.record.token]
            ev = d.evidence
            if method == "ours":
                made.append(ours_propagate(ev, c.point_index, c.label, space, p.ours))
            else:
                made.append(iupc_propagate(ev.n, c.point_index, c.label, ev.ground, ev.segment_id, ev.ground_cell, ev.fov, space))
        extra["clicks"] = {"protocol": p.clicks.protocol,
                           "share_target": p.clicks.share if p.clicks.protocol in ("budget", "active") else None,
                           "active_rounds": p.clicks.active_rounds if p.clicks.protocol == "active" else None}
    elif round == 0:
        if masks is None:
            raise PseudoLabelError("round 0 in annotation_free mode needs the masks store")
        mk = A.open_store(masks, "masks")
        for d in data:
            ev = d.evidence
            if ev.n == 0:  # a keyframe the upstream stages skipped
                made.append(Labels.unknown(0, space.num_classes))
                continue
            cams = camera_maps(manifest, d, mk, space, p)
            if method == "ours":
                flag = d.visible if p.refine.occlusion else d.in_image
                made.append(af.ours_annotation_free(ev.xyz, flag, d.uv, ev.ground, ev.segment_id, cams, space, p.refine,
                                                    in_image=d.in_image))
            else:
                made.append(af.pointsam_baseline(ev.xyz, d.in_image, d.uv, cams, space, p.refine))
        extra["annotation_free"] = {"semantic2d": p.semantic2d.source,
                                    "corruption": p.corruption.describe() if p.semantic2d.source == "simulated" else None}
    else:
        if round0 is None or predict is None:
            raise PseudoLabelError(f"round {round} needs the round-0 pseudolabels store and the round-{round - 1} predict store")
        g0 = A.open_store(round0, "pseudolabels")
        gp = A.open_store(predict, "predict")
        off = A.read(g0, "point_offsets").astype(np.int64)
        off_p = A.read(gp, "point_offsets").astype(np.int64)
        if not np.array_equal(off, A.offsets_from_counts(n_per)):
            raise PseudoLabelError(f"round-0 store {round0} does not match the points of shard {shard}")
        if not np.array_equal(off, off_p):
            raise PseudoLabelError(f"predict store {predict} has other point counts than the round-0 store {round0}")
        logits_all, feat_all = A.read(gp, "logits"), A.read(gp, "features")
        if logits_all.shape[1] != space.num_classes:
            raise PseudoLabelError(f"predict store {predict} has {logits_all.shape[1]} classes, label space "
                                   f"{space.name} has {space.num_classes}")
        r0 = [_read_labels(g0, A.sample_slice(off, s)) for s in range(len(data))]
        logits = [logits_all[A.sample_slice(off, s)] for s in range(len(data))]
        thresholds = None
        if p.estep.method == "ours" and p.estep.calibration is not None:
            thresholds = calibrate(r0, logits, space.num_classes, p.estep.calibration)
        for s in range(len(data)):
            made.append(estep(r0[s], logits[s], feat_all[A.sample_slice(off, s)], space, p.estep, round, thresholds))
        extra["estep"] = {"confidence": p.estep.confidence,
                          "thresholds": None if thresholds is None else
                          {c: (None if not np.isfinite(t) else round_(float(t))) for c, t in zip(space.classes, thresholds)}}
    t_run = time.perf_counter() - t0 - t_load

    labels = _concat(made) if made else Labels.unknown(0, space.num_classes)
    offsets = A.offsets_from_counts(n_per)
    with A.write_store(out_store, "pseudolabels", shard=shard, sample_tokens=[d.record.token for d in data],
                       params=cfg, round=round, mode=p.mode, method=method, label_space=space.name) as g:
        A.put(g, "point_offsets", offsets)
        for f in fields(Labels):
            A.put(g, f.name, getattr(labels, f.name))
    stats = {
        "shard": shard, "round": round, "split": manifest.split_of(shard), "mode": p.mode, "label_space": space.name,
        "method": method, "baseline": baseline, "samples": len(data), "points": int(offsets[-1]),
        "seconds": {"load": round_(t_load), "run": round_(t_run), "total": round_(time.perf_counter() - t0)},
        **extra,
    }
    if stats_path is not None:
        write_json(stats_path, stats)
    log.info("shard %s round %d (%s): %d points, %d labelled, %.2f s", shard, round, method, labels.label.size,
             int((labels.label > 0).sum()), time.perf_counter() - t0)
    return stats


def round_(x: float) -> float:
    return float(f"{x:.3f}")
