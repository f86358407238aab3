"""Quality of the temporal labels (:mod:`lidarlift.temporal`) against the synthetic world's sweep truth
(summary key ``pseudolabels.temporal``): the one implementation.

Per shard and EM round (:func:`temporal_counts`, additive counts), summed over shards, then divided
(:func:`temporal_figures`). As for keyframe pseudo-labels, a sweep point is *scored* when its true class
is not ignore (0); a label on an ignored point is neither right nor wrong.
- ``sweep_points_labelled_per_keyframe_point``: labelled sweep points (any) over the labelled points of
  the keyframes they came from (the store's ``keyframe_labelled``);
- ``labelled_share``: labelled among scored sweep points; ``precision``: correct among labelled scored;
- ``miou`` / ``iou_per_class`` of the labelled scored points; ``per_class`` precision and recall;
- ``by_source`` (:data:`lidarlift.temporal.TEMPORAL_SOURCES`): share of scored points, labelled share
  and precision; ``moved``: labels carried through a segment's motion; ``by_confidence``: precision
  and labelled count per confidence tenth; ``by_position``: per sweep position between the keyframes
  (1 = the sweep after the previous keyframe), labelled share and precision.
:mod:`lidarlift.evaluate.merge` adds ``miou_with`` / ``miou_without``: the val mIoU of the final round's
network trained with the temporal labels (rule ``train``) and of the same round's network trained on
the keyframes alone (rule ``train_keyframes``: same pseudo-labels, same config).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lidarlift import artifacts as A
from lidarlift.classes import LabelSpace
from lidarlift.evaluate.counts import ratio
from lidarlift.evaluate.metrics import confusion_matrix, semantic_report
from lidarlift.groundtruth import sweep_truth
from lidarlift.manifest import Manifest, SampleRecord

#: Confidence bins of ``by_confidence`` (tenths of 0..1).
CONFIDENCE_BINS = 10


class TemporalEvaluationError(RuntimeError):
    """A temporal store that does not fit the manifest or its truth."""


def label_counts(label: np.ndarray, truth: np.ndarray, space: LabelSpace) -> dict[str, Any]:
    """Counts of labels (Q,) 0..K against truth (Q,) 0..K (0 ignore): points, scored, labelled_any,
    labelled (scored), correct, confusion (K+1, K+1) of labelled scored points, class_true (K+1,)."""
    k = space.num_classes
    label = np.asarray(label, np.int64)
    truth = np.asarray(truth, np.int64)
    scored = truth > 0
    lab = (label > 0) & scored
    return {"points": int(label.size), "scored": int(scored.sum()), "labelled_any": int((label > 0).sum()),
            "labelled": int(lab.sum()), "correct": int((lab & (label == truth)).sum()),
            "confusion": confusion_matrix(np.where(lab, truth, 0), np.where(lab, label, 0), k).tolist(),
            "class_true": np.bincount(truth[scored], minlength=k + 1)[: k + 1].tolist()}


def _brief(label: np.ndarray, truth: np.ndarray, sel: np.ndarray) -> dict[str, int]:
    scored = (truth > 0) & sel
    lab = scored & (label > 0)
    return {"points": int(scored.sum()), "labelled": int(lab.sum()), "correct": int((lab & (label == truth)).sum())}


def temporal_counts(manifest: Manifest, samples: list[SampleRecord], store: str | Path, space: LabelSpace) -> dict[str, Any]:
    """Counts of one shard's temporal store against the sweep truth (module docstring). Raises
    TemporalEvaluationError when the store's keyframes or sweeps are not the manifest's, a sweep has no
    truth, or its point count differs from the truth's."""
    g = A.open_store(store, "temporal")
    if list(g.attrs["sample_tokens"]) != [s.token for s in samples]:
        raise TemporalEvaluationError(f"temporal store {store} holds other keyframes than the manifest's shard (stale "
                                      f"store? re-run 'temporal')")
    frames = {f.token: (j, f) for j, s in enumerate(samples) for f in s.intermediate_sweeps}
    position = {f.token: i + 1 for s in samples
                for i, f in enumerate(sorted(s.intermediate_sweeps, key=lambda f: f.timestamp))}
    offsets = A.read(g, "sweep_offsets").astype(np.int64)
    label, conf = A.read(g, "label"), A.read(g, "confidence")
    source, moved = A.read(g, "source"), A.read(g, "moved")
    sources = {int(k): v for k, v in (g.attrs.get("sources") or {}).items()}
    k = space.num_classes
    out: dict[str, Any] = {"sweeps": 0, "keyframe_labelled": int(g.attrs.get("keyframe_labelled", 0)),
                           **label_counts(np.zeros(0), np.zeros(0), space),
                           "by_source": {}, "moved": {"labelled": 0, "correct": 0},
                           "by_confidence": {"labelled": [0] * CONFIDENCE_BINS, "correct": [0] * CONFIDENCE_BINS},
                           "by_position": {}}
    for w, token in enumerate(g.attrs["sweep_tokens"]):
        if token not in frames:
            raise TemporalEvaluationError(f"temporal store {store}: sweep {token} is no intermediate sweep of the "
                                          f"manifest's shard (stale store? re-run 'temporal')")
        _, frame = frames[token]
        truth = sweep_truth(manifest, frame)
        if truth is None:
            raise TemporalEvaluationError(f"sweep {token} ({frame.path}) has no ground truth to score against "
                                          f"(a synthetic world writes lidarlift_gt/<version>/sweeps/)")
        sl = A.sample_slice(offsets, w)
        tl = truth.label.astype(np.int64)
        if sl.stop - sl.start != len(tl):
            raise TemporalEvaluationError(f"temporal store {store}: sweep {token} has {sl.stop - sl.start} points, "
                                          f"its ground truth {len(tl)}")
        lab = label[sl].astype(np.int64)
        if lab.size and lab.max() > k:
            raise TemporalEvaluationError(f"temporal store {store}: sweep {token} has labels beyond class {k}")
        c = label_counts(lab, tl, space)
        for key in ("points", "scored", "labelled_any", "labelled", "correct"):
            out[key] += c[key]
        out["confusion"] = (np.asarray(out["confusion"]) + np.asarray(c["confusion"])).tolist()
        out["class_true"] = (np.asarray(out["class_true"]) + np.asarray(c["class_true"])).tolist()
        out["sweeps"] += 1
        src = source[sl]
        for code in np.unique(src):
            name = sources.get(int(code), f"source{int(code)}")
            b = _brief(lab, tl, src == code)
            prev = out["by_source"].get(name, {"points": 0, "labelled": 0, "correct": 0})
            out["by_source"][name] = {key: prev[key] + b[key] for key in b}
        b = _brief(lab, tl, moved[sl])
        out["moved"] = {"labelled": out["moved"]["labelled"] + b["labelled"], "correct": out["moved"]["correct"] + b["correct"]}
        ok = (lab > 0) & (tl > 0)
        bins = np.minimum((conf[sl] * CONFIDENCE_BINS).astype(np.int64), CONFIDENCE_BINS - 1)
        out["by_confidence"]["labelled"] = (np.asarray(out["by_confidence"]["labelled"])
                                            + np.bincount(bins[ok], minlength=CONFIDENCE_BINS)).tolist()
        out["by_confidence"]["correct"] = (np.asarray(out["by_confidence"]["correct"])
                                           + np.bincount(bins[ok & (lab == tl)], minlength=CONFIDENCE_BINS)).tolist()
        pos = str(position[token])
        prev = out["by_position"].get(pos, {"points": 0, "labelled": 0, "correct": 0})
        b = _brief(lab, tl, np.ones(len(lab), bool))
        out["by_position"][pos] = {key: prev[key] + b[key] for key in b}
    return out


def temporal_figures(c: dict[str, Any], space: LabelSpace) -> dict[str, Any]:
    """The figures of summed :func:`temporal_counts` ({} where nothing was measured)."""
    if not c or not c.get("sweeps"):
        return {}
    cm = np.asarray(c["confusion"], np.int64)
    sem = semantic_report(cm, space)
    tp = np.diagonal(cm)[1:].astype(float)
    pred = cm[1:, 1:].sum(axis=0).astype(float)
    true = np.asarray(c["class_true"], float)[1:]
    conf = c["by_confidence"]

    def brief(v: dict[str, int]) -> dict[str, Any]:
        return {"labelled_share": ratio(v["labelled"], v["points"]), "precision": ratio(v["correct"], v["labelled"]),
                "labelled": v["labelled"]}

    return {
        "sweeps": c["sweeps"], "points": c["points"], "scored_points": c["scored"],
        "labelled_points": c["labelled_any"], "keyframe_labelled_points": c["keyframe_labelled"],
        "sweep_points_labelled_per_keyframe_point": ratio(c["labelled_any"], c["keyframe_labelled"]),
        "labelled_share": ratio(c["labelled"], c["scored"]),
        "precision": ratio(c["correct"], c["labelled"]),
        "miou": sem["miou"], "iou_per_class": sem["iou_per_class"],
        "per_class": {name: {"precision": ratio(tp[i], pred[i]), "recall": ratio(tp[i], true[i]), "labelled": int(pred[i])}
                      for i, name in enumerate(space.classes)},
        "by_source": {name: {"share": ratio(v["points"], c["scored"]), **brief(v)} for name, v in sorted(c["by_source"].items())},
        "moved": {"labelled": c["moved"]["labelled"], "precision": ratio(c["moved"]["correct"], c["moved"]["labelled"])},
        "by_confidence": [{"confidence": [i / CONFIDENCE_BINS, (i + 1) / CONFIDENCE_BINS], "labelled": conf["labelled"][i],
                           "precision": ratio(conf["correct"][i], conf["labelled"][i])} for i in range(CONFIDENCE_BINS)
                          if conf["labelled"][i]],
        "by_position": {pos: brief(v) for pos, v in sorted(c["by_position"].items(), key=lambda kv: int(kv[0]))},
    }


def temporal_summary(shards: list[dict[str, Any]], eval_shards: list[str], space: LabelSpace,
                     final_round: int = -1) -> dict[str, Any]:
    """Summary key ``pseudolabels.temporal`` from the per-shard evaluation files: the final round's
    figures (:func:`temporal_figures` of the counts summed over shards), every round's under ``rounds``,
    and ``miou_with`` / ``miou_without``: the val mIoU of the final round's network (rule ``train``, with
    the temporal labels) and of the keyframe-only network (rule ``train_keyframes``; network key
    ``keyframes``) on ``eval_shards``. {} when no shard has temporal counts."""
    from lidarlift.evaluate.counts import total

    per = [s["temporal"] for s in shards if s.get("temporal")]
    if not per:
        return {}
    rounds = sorted({k for p in per for k in p}, key=int)
    figs = {r: temporal_figures(total(p.get(r) for p in per), space) for r in rounds}
    last = str(final_round) if str(final_round) in figs else rounds[-1]
    by_shard = {s["shard"]: s for s in shards}

    def val_miou(key: str) -> float | None:
        c = total((by_shard[s].get("network") or {}).get(key) for s in eval_shards if s in by_shard)
        return semantic_report(np.asarray(c["confusion"], np.int64), space)["miou"] if c else None

    with_, without = val_miou(last), val_miou("keyframes")
    return {"round": int(last), **figs[last], "miou_with": with_, "miou_without": without,
            "miou_gain": (with_ - without) if with_ is not None and without is not None else None,
            "eval_shards": sorted(eval_shards), "rounds": figs}
