"""Quality of the pre-segmentation against point truth (summary key ``presegment``).

Points whose true class is 0 (ignore) are left out of every count. Per keyframe
(:func:`presegment_counts`), summed over keyframes and shards, then divided (:func:`presegment_figures`):
- ground precision / recall: predicted ground against the label space's flat classes;
- segment purity: of the non-ground points in a segment (segment_id >= 0), the share whose true key
  (instance key for things, class for stuff) is the majority key of their segment; ``noise_share`` is
  the share of non-ground points left as noise;
- ``split_instance_share``: of the true thing instances with at least ``split_min_points`` keyframe
  points, the share whose segmented points fall into two or more segments that each hold at least
  ``split_min_share`` of them (an instance with no segmented point is ``lost``, not split);
- ``merge_instance_share``: of the same instances (those not lost), the share whose *own segment* (the
  segment holding most of its points) also holds at least ``split_min_share`` of another thing
  instance's segmented points, or is more than ``merge_stuff_share`` (20%) stuff points; the same over
  the instances whose centroid lies beyond 30 m (``merge_instance_share_beyond_30m``), where sparse
  rows make range-adaptive links reach furthest. Merged instances are also counted by cause
  (``merged_by_cause``: another instance of the same class, of another thing class, or stuff -- the
  first that applies) and per thing class (``merged_by_class``: [merged, scored]).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lidarlift.classes import LabelSpace
from lidarlift.evaluate.counts import ratio

FAR_M = 30.0
MERGE_STUFF_SHARE = 0.2


def presegment_counts(ground: np.ndarray, segment_id: np.ndarray, label: np.ndarray, instance: np.ndarray,
                      point_range: np.ndarray, space: LabelSpace, split_min_points: int = 10,
                      split_min_share: float = 0.1) -> dict[str, int]:
    """Counts of one keyframe.

    ground (N,) bool, segment_id (N,) int (-1 = ground or noise) from the presegment store; label (N,)
    int 1..K (0 ignore), instance (N,) int64 (0 = stuff), point_range (N,) m horizontal range.
    """
    label = np.asarray(label, np.int64)
    instance = np.asarray(instance, np.int64)
    if len(label) != len(ground):
        raise ValueError(f"truth has {len(label)} points, the pre-segmentation {len(ground)}")
    valid = label > 0
    g, seg = np.asarray(ground, bool)[valid], np.asarray(segment_id, np.int64)[valid]
    lab, inst, rng = label[valid], instance[valid], np.asarray(point_range, np.float64)[valid]
    true_ground = space.flat_mask[lab]
    out = {
        "sweeps": 1,
        "points": int(valid.sum()),
        "ground_tp": int((g & true_ground).sum()),
        "ground_fp": int((g & ~true_ground).sum()),
        "ground_fn": int((~g & true_ground).sum()),
        "nonground_points": int((~g).sum()),
        "noise_points": int((~g & (seg < 0)).sum()),
    }
    key = np.where(inst > 0, inst, lab)
    in_seg = ~g & (seg >= 0)
    s, k = seg[in_seg], key[in_seg]
    out["segmented_points"] = int(in_seg.sum())
    out["segments"] = int(len(np.unique(s)))
    out["pure_points"] = 0
    if s.size:
        _, k_idx = np.unique(k, return_inverse=True)
        n_k = int(k_idx.max()) + 1
        pair, cnt = np.unique(s * n_k + k_idx, return_counts=True)
        best = np.zeros(int(s.max()) + 1, np.int64)
        np.maximum.at(best, pair // n_k, cnt)
        out["pure_points"] = int(best.sum())
    out.update(_instance_counts(seg, in_seg, lab, inst, rng, space, split_min_points, split_min_share))
    return out


def _instance_counts(seg: np.ndarray, in_seg: np.ndarray, lab: np.ndarray, inst: np.ndarray, rng: np.ndarray,
                     space: LabelSpace, split_min_points: int, split_min_share: float) -> dict[str, int]:
    """Split, lost and merged thing instances (overall and beyond :data:`FAR_M`)."""
    is_thing = (inst > 0) & space.thing_mask[lab]
    ids, total = np.unique(inst[is_thing], return_counts=True)
    eligible = ids[total >= split_min_points]
    out = {"instances": int(len(eligible)), "instances_split": 0, "instances_lost": 0, "instances_scored": 0,
           "instances_merged": 0, "instances_far": 0, "instances_far_merged": 0,
           "merged_by_cause": {"same_class": 0, "other_class": 0, "stuff": 0}, "merged_by_class": {}}
    if not len(eligible):
        return out
    # (segment, instance) point counts over segmented points; stuff points carry instance 0
    s_all, i_all = seg[in_seg], np.where(is_thing, inst, 0)[in_seg]
    seg_points = np.bincount(s_all, minlength=int(seg.max()) + 1) if s_all.size else np.zeros(1, np.int64)
    seg_stuff = np.bincount(s_all[i_all == 0], minlength=len(seg_points)) if s_all.size else np.zeros(1, np.int64)
    inst_segmented = {int(i): int(n) for i, n in zip(*np.unique(i_all[i_all > 0], return_counts=True))}
    pairs: dict[int, dict[int, int]] = {}
    if s_all.size:
        p, n = np.unique(np.stack([s_all, i_all], 1), axis=0, return_counts=True)
        for (sg, ii), cnt in zip(p.tolist(), n.tolist()):
            if ii > 0:
                pairs.setdefault(sg, {})[ii] = cnt
    by_inst: dict[int, dict[int, int]] = {}
    for sg, members in pairs.items():
        for ii, cnt in members.items():
            by_inst.setdefault(ii, {})[sg] = cnt
    inst_class, inst_range = _instance_class_and_range(inst, lab, rng)
    for i in eligible.tolist():
        n = inst_segmented.get(i, 0)
        if n == 0:
            out["instances_lost"] += 1
            continue
        mine = by_inst[i]
        out["instances_scored"] += 1
        out["instances_split"] += int(sum(c >= split_min_share * n for c in mine.values()) >= 2)
        own = max(mine, key=mine.get)
        others = [j for j, cnt in pairs[own].items() if j != i and cnt >= split_min_share * inst_segmented[j]]
        stuffy = bool(seg_stuff[own] > MERGE_STUFF_SHARE * seg_points[own])
        merged = bool(others) or stuffy
        far = inst_range[i] >= FAR_M
        cls = inst_class[i]
        per_class = out["merged_by_class"].setdefault(space.classes[cls - 1], [0, 0])
        per_class[0] += int(merged)
        per_class[1] += 1
        if merged:  # the first cause that applies: another instance of the class, of another class, stuff
            other_classes = {inst_class[j] for j in others}
            cause = "same_class" if cls in other_classes else "other_class" if other_classes else "stuff"
            out["merged_by_cause"][cause] += 1
        out["instances_merged"] += int(merged)
        out["instances_far"] += int(far)
        out["instances_far_merged"] += int(merged and far)
    return out


def _instance_class_and_range(inst: np.ndarray, lab: np.ndarray, rng: np.ndarray) -> tuple[dict[int, int], dict[int, float]]:
    """Per instance id (> 0): its majority class (the smallest on a tie) and the mean range of its
    points, in one pass over the points."""
    has = inst > 0
    ids, idx = np.unique(inst[has], return_inverse=True)
    mean_range = np.bincount(idx, weights=rng[has]) / np.bincount(idx)
    pair, count = np.unique(np.stack([idx, lab[has]], 1), axis=0, return_counts=True)
    best: dict[int, tuple[int, int]] = {}
    for (k, c), n in zip(pair.tolist(), count.tolist()):  # ascending class within an instance
        if k not in best or n > best[k][0]:
            best[k] = (n, c)
    ids_list = ids.tolist()
    return ({ids_list[k]: c for k, (_, c) in best.items()},
            {i: float(r) for i, r in zip(ids_list, mean_range.tolist())})


def presegment_figures(c: dict[str, Any]) -> dict[str, Any]:
    """The summary figures from summed counts."""
    g = c.get
    return {
        "ground_precision": ratio(g("ground_tp", 0), g("ground_tp", 0) + g("ground_fp", 0)),
        "ground_recall": ratio(g("ground_tp", 0), g("ground_tp", 0) + g("ground_fn", 0)),
        "segment_purity": ratio(g("pure_points", 0), g("segmented_points", 0)),
        "split_instance_share": ratio(g("instances_split", 0), g("instances", 0)),
        "lost_instance_share": ratio(g("instances_lost", 0), g("instances", 0)),
        "merge_instance_share": ratio(g("instances_merged", 0), g("instances_scored", 0)),
        "merge_instance_share_beyond_30m": ratio(g("instances_far_merged", 0), g("instances_far", 0)),
        "noise_share": ratio(g("noise_points", 0), g("nonground_points", 0)),
        "segments_per_sweep": ratio(g("segments", 0), g("sweeps", 0)),
        "instances": g("instances", 0),
        # merged instances by cause (their own segment also holds an instance of the same class, of
        # another thing class, or too much stuff) and [merged, scored] per thing class
        "merged_by_cause": dict(g("merged_by_cause") or {}),
        "merged_by_class": {k: list(v) for k, v in sorted((g("merged_by_class") or {}).items())},
    }
