"""The clicks of a shard (rule ``pseudolabel_clicks``): the simulated annotator, which reads ground truth
because it stands for a person clicking, or a user's clicks file (protocol ``file``, no truth read).

Protocols (``pseudolabels.clicks.protocol``): ``budget`` (a share of each keyframe's points spread per
object and stuff region), ``iupc`` (IUPC's one click per class per pre-segment, which needs the shard's
association and pre-segments), ``active`` (the same share, chosen by :mod:`.active` from the evidence in
rounds; it needs the association, pre-segments and masks, and takes the superpixels) and ``file``. The clicks are
seeded per sample token and shared by every EM round.

In the active protocol the simulated annotator answers each round the way a person does: through the
next-clicks file (:func:`answer_next_clicks` fills its class column from the truth; ``ignore`` for a
point of no class), which is then read back as a clicks file.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lidarlift.classes import LabelSpace, label_space
from lidarlift.datasets.readers import read_lidar
from lidarlift.groundtruth import PointTruth, point_truth
from lidarlift.manifest import Manifest

from . import active
from . import clicks as ck
from .propagate import GraphParams
from .stage import ClickParams, PseudoLabelError, load_shard

log = logging.getLogger(__name__)


def _truth(manifest: Manifest, sample, n: int | None = None) -> PointTruth:
    """The sample's point truth (the simulated annotator's), checked against ``n`` points of the stores."""
    gt = point_truth(manifest, sample)
    if gt is None:
        raise PseudoLabelError(f"sample {sample.token}: the simulated annotator needs ground truth; "
                               "use pseudolabels.clicks.protocol 'file' on data without it")
    if n is not None and len(gt.label) != n:
        raise PseudoLabelError(f"sample {sample.token}: ground truth has {len(gt.label)} points, the stores {n}")
    return gt


def answer_next_clicks(path: str | Path, truth: dict[str, np.ndarray], space: LabelSpace) -> int:
    """The simulated annotator answers a next-clicks file in place: each empty class cell gets the point's
    true class (``truth``: sample token -> (N,) uint8 1..K, 0 = ignore), ``ignore`` where it has none.
    Returns the number of answers."""
    def answer(token: str, index: np.ndarray) -> np.ndarray:
        if token not in truth:
            raise PseudoLabelError(f"next-clicks file {path}: sample {token} has no truth to answer from")
        return truth[token][index]

    return ck.fill_next_clicks(path, answer, space)


def active_clicks(manifest: Manifest, shard: str, p: ClickParams, graph: GraphParams, space: LabelSpace,
                  stores: dict[str, Any]) -> dict[str, ck.SampleClicks]:
    """Protocol ``active`` on one shard: :func:`.active.click_rounds`, each round's next-clicks file
    answered by the simulated annotator and read back (in a temporary folder of the job)."""
    data = load_shard(manifest, shard, **stores, colours=graph.w_color > 0)
    truth = {d.record.token: _truth(manifest, d.record, d.evidence.n).label for d in data}
    counts = {d.record.token: d.evidence.n for d in data}
    choosers, budgets = {}, {}
    for d in data:
        rng = ck.click_rng(p.seed, d.record.token)
        budgets[d.record.token] = ck.click_count(p.share, d.evidence.n, rng)  # the budget protocol's draw
        choosers[d.record.token] = active.KeyframeChooser(d.evidence, space, graph, rng)
    with tempfile.TemporaryDirectory(prefix="lidarlift_next_") as tmp:
        next_path = Path(tmp) / "next.tsv"

        def answer(proposals: dict[str, active.Proposals]) -> dict[str, ck.SampleClicks]:
            ck.write_next_clicks(next_path, {t: (q.point_index, q.xyz, q.reason) for t, q in proposals.items()}, space)
            answer_next_clicks(next_path, truth, space)
            return ck.read_clicks(next_path, space, counts)

        return active.click_rounds(choosers, budgets, p.active_rounds, answer)


def shard_clicks(manifest_path: str | Path, shard: str, out_path: str | Path, cfg: dict[str, Any],
                 associate: str | Path | None = None, presegment: str | Path | None = None,
                 superpixels: str | Path | None = None, masks: str | Path | None = None,
                 graph: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the clicks file of one shard; returns counts (clicks, points asked incl. ``ignore`` answers,
    clicks per sample). ``cfg``: config ``pseudolabels.clicks``; ``graph``: ``pseudolabels.ours`` (the
    active protocol's propagation)."""
    manifest = Manifest.from_json(manifest_path)
    space = label_space(manifest.label_space)
    p = ClickParams.from_config(cfg)
    samples = manifest.shard_samples(shard)
    t0 = time.perf_counter()
    result: dict[str, ck.SampleClicks] = {}
    if p.protocol == "active":
        if not (associate and presegment and masks):  # superpixels: an optional cue of the propagation
            raise PseudoLabelError("clicks protocol 'active' needs the associate, presegment and masks stores")
        stores = dict(associate=associate, presegment=presegment, superpixels=superpixels, masks=masks)
        result = active_clicks(manifest, shard, p, GraphParams.from_config(graph), space, stores)
    elif p.protocol == "file":
        counts = {}
        for sample in samples:
            counts[sample.token] = len(read_lidar(manifest.resolve(sample.lidar.path), sample.lidar.fmt, sample.token))
        result = ck.read_clicks(p.file, space, counts, known_tokens=[s.token for s in manifest.samples])
    else:
        loaded = None
        if p.protocol == "iupc":
            if not (associate and presegment):
                raise PseudoLabelError("clicks protocol 'iupc' needs the associate and presegment stores")
            loaded = load_shard(manifest, shard, associate, presegment, colours=False)
        for s, sample in enumerate(samples):
            rng = ck.click_rng(p.seed, sample.token)
            if loaded is not None:
                ev = loaded[s].evidence
                gt = _truth(manifest, sample, ev.n)
                result[sample.token] = ck.iupc_clicks(gt.label, ev.ground, ev.segment_id, ev.ground_cell, ev.fov, space, rng)
                continue
            gt = _truth(manifest, sample)
            pts = read_lidar(manifest.resolve(sample.lidar.path), sample.lidar.fmt, sample.token)
            result[sample.token] = ck.budget_clicks(pts[:, :3], gt.label, gt.instance, space, p.share, rng,
                                                    min_region_points=p.min_region_points, stuff_link_m=p.stuff_link_m)
    ck.write_clicks(out_path, result, space)
    n_clicks = sum(len(c) for c in result.values())
    asked = sum(len(c.asked) for c in result.values())
    log.info("shard %s: %d clicks, %d points asked (%s protocol) in %.2f s", shard, n_clicks, asked, p.protocol,
             time.perf_counter() - t0)
    return {"clicks": n_clicks, "asked": asked, "per_sample": {t: len(c) for t, c in result.items()}}
