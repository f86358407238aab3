"""Fitting the propagation's constants (lidarlift.pseudolabels.fit) and the benchmark protocol's document
(bench/bench_worlds.py): known tables recovered from synthetic edge statistics, a known threshold
optimum, the distance unit in beams, and the keys of bench/worlds.json on a minimal run."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from lidarlift.classes import NUSCENES16
from lidarlift.pseudolabels import fit
from lidarlift.pseudolabels import propagate as pp

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _truth_tables(rng: np.random.Generator) -> tuple[dict, dict]:
    """Per kind: prior and, per cue, the probabilities of each bin given same / differ (continuous
    cues: the knots then 'unseen'; categorical: the states)."""
    priors = {"ground": -1.0, "object": -1.5, "mixed": 0.3}
    probs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for kind in pp.EDGE_KINDS:
        probs[kind] = {}
        for cue in pp.KIND_CUES[kind]:
            bins = len(fit.KNOTS[cue]) + 1 if cue in pp.CONTINUOUS_CUES else len(pp.CUE_STATES[cue])
            same, differ = rng.dirichlet(np.full(bins, 4.0)), rng.dirichlet(np.full(bins, 4.0))
            probs[kind][cue] = (same, differ)
    return priors, probs


def _draw_edges(priors: dict, probs: dict, n: int, rng: np.random.Generator) -> tuple[pp.EdgeCues, np.ndarray]:
    """Edges whose cues are independent given 'differ' (the naive-Bayes model), values at the knots."""
    kind = rng.integers(0, 3, n).astype(np.int8)
    differ = np.zeros(n, bool)
    values = {c: np.full(n, np.nan, np.float32) for c in pp.CONTINUOUS_CUES}
    states = {c: np.full(n, -1, np.int8) for c in pp.CUE_STATES}
    for k, name in enumerate(pp.EDGE_KINDS):
        sel = np.flatnonzero(kind == k)
        differ[sel] = rng.random(len(sel)) < 1 / (1 + math.exp(-priors[name]))
        for cue, (same, diff) in probs[name].items():
            u = rng.random(len(sel))
            bins = np.where(differ[sel], np.searchsorted(np.cumsum(diff), u), np.searchsorted(np.cumsum(same), u))
            bins = np.minimum(bins, len(same) - 1)
            if cue in pp.CONTINUOUS_CUES:
                knots = np.asarray(fit.KNOTS[cue] + (np.nan,), np.float32)  # the last bin: unseen
                values[cue][sel] = knots[bins]
            else:
                states[cue][sel] = bins
    cues = pp.EdgeCues(i=np.arange(n), j=np.arange(n) + 1, kind=kind, distance=values["distance"],
                       height=values["height"], intensity=values["intensity"], color=values["color"],
                       superpixel=states["superpixel"], mask=states["mask"], segment=states["segment"])
    return cues, differ


def test_fit_recovers_a_known_log_odds_table():
    """Edges drawn from a naive-Bayes model with known priors and per-cue likelihood ratios: the fit
    finds the prior and every bin's log-ratio (log p(bin | differ) / p(bin | same))."""
    rng = np.random.default_rng(3)
    priors, probs = _truth_tables(rng)
    stats = fit.EdgeStats()
    for _ in range(2):  # two 'keyframes': counts add up
        cues, differ = _draw_edges(priors, probs, 150_000, rng)
        stats.add(cues, differ)
    tables = fit.fit_log_odds(stats)
    for kind in pp.EDGE_KINDS:
        assert tables[kind]["prior"] == pytest.approx(priors[kind], abs=0.03)
        for cue, (same, differ) in probs[kind].items():
            want = np.log(differ / same)
            t = tables[kind][cue]
            got = np.array(t["llr"] + [t["unseen"]] if cue in pp.CONTINUOUS_CUES else [t[s] for s in pp.CUE_STATES[cue]])
            # sampling error: ~1/sqrt(count) per bin; only bins seen often enough are held to it
            n_differ = stats.edges[kind][1]
            ok = (np.minimum(same, differ) * n_differ) > 800
            assert ok.sum() >= len(want) // 2, (kind, cue)
            np.testing.assert_allclose(got[ok], want[ok], atol=0.15, err_msg=f"{kind} {cue}")
    # the fitted tables are what the propagation reads: the file format loads and prices edges
    cost = pp.cue_log_odds("color", np.array([np.nan, 0.0, 1.25]), tables["object"]["color"])
    c = tables["object"]["color"]
    assert cost[0] == pytest.approx(c["unseen"]) and cost[1] == pytest.approx(c["llr"][0])
    assert cost[2] == pytest.approx((c["llr"][1] + c["llr"][2]) / 2, abs=1e-5)  # halfway between knots 0.5 and 2


def test_fit_weights_recovers_known_weights_and_offsets():
    """Edges whose true log-odds are offset[kind] + 0.5 x cue A + 1.5 x cue B (cue C says nothing, cue D
    is never seen): the logistic fit finds those weights, C's at 0 (not negative), D's left at 1."""
    rng = np.random.default_rng(1)
    n = 200_000
    kind = rng.integers(0, 3, n).astype(np.int8)
    llr = np.zeros((n, 4), np.float32)
    llr[:, 0] = rng.normal(0, 2, n)
    llr[:, 1] = rng.normal(0, 1, n)
    llr[:, 2] = rng.normal(0, 1, n)
    offset = np.array([-2.0, -3.0, 0.5])
    z = offset[kind] + 0.5 * llr[:, 0] + 1.5 * llr[:, 1]
    differ = rng.random(n) < 1 / (1 + np.exp(-z))
    got_offset, got_w = fit.fit_weights(np.full(n, -1.0, np.float32), llr, kind, differ)
    np.testing.assert_allclose(got_offset, offset, atol=0.06)
    np.testing.assert_allclose(got_w[:2], [0.5, 1.5], atol=0.05)
    assert 0 <= got_w[2] < 0.03 and got_w[3] == 1.0


def test_hat_weights_split_between_knots():
    lo, w, hi = fit.hat_weights(np.array([0.0, 0.5, 0.625, 3.0, 9.0, -1.0]), (0.0, 0.5, 0.75, 3.0))
    assert lo.tolist() == [0, 1, 1, 2, 2, 0] and hi.tolist() == [1, 2, 2, 3, 3, 1]
    np.testing.assert_allclose(w, [1.0, 1.0, 0.5, 0.0, 0.0, 1.0])


def test_empty_bin_says_nothing_and_a_missing_outcome_is_an_error():
    stats = fit.EdgeStats()
    n = 1000
    cues = pp.EdgeCues(i=np.arange(n), j=np.arange(n) + 1, kind=np.zeros(n, np.int8), distance=np.zeros(n, np.float32),
                       height=np.zeros(n, np.float32), intensity=None, color=None, superpixel=None, mask=None,
                       segment=np.full(n, -1, np.int8))
    with pytest.raises(ValueError, match="object"):
        stats.add(cues, np.arange(n) % 4 == 0)
        fit.fit_log_odds(stats)
    stats = fit.EdgeStats()
    stats.edges["object"][:] = stats.edges["mixed"][:] = 10
    stats.add(cues, np.arange(n) % 4 == 0)
    t = fit.fit_log_odds(stats)["ground"]
    assert t["prior"] == pytest.approx(math.log(250 / 750), abs=1e-3)
    assert t["distance"]["llr"][0] == pytest.approx(0.0, abs=1e-3)  # same share in both outcomes
    assert t["distance"]["llr"][3] == 0.0 and t["intensity"]["unseen"] == 0.0  # never seen


def test_threshold_fit_finds_the_known_optimum():
    """Points whose best path costs at most -2 are always right, the others right half the time: at
    precision 0.99 the largest labelled share takes exactly the points up to -2."""
    rng = np.random.default_rng(0)
    n = 4000
    d1 = rng.choice(np.arange(-6.0, 2.01, 0.25), n).astype(np.float32)
    car, ped = NUSCENES16.index("car"), NUSCENES16.index("pedestrian")
    best = np.full(n, car)
    truth = np.where((d1 <= -2) | (np.arange(n) % 2 == 0), car, ped)
    sample = fit.ThresholdSample(best=best, d1=d1, d2=np.full(n, np.inf, np.float32),
                                 per_class=d1[:, None], classes=np.array([car]), ground=np.zeros(n, bool),
                                 click=np.zeros(n, bool), truth=truth)
    got = fit.fit_thresholds([sample], NUSCENES16, pp.GraphParams.from_config(), min_precision=0.99, min_candidate_truth=0.0)
    assert got.label_cost == -2.0
    assert got.precision == 1.0 and got.labelled_share == pytest.approx((d1 <= -2).mean())
    with pytest.raises(ValueError, match="precision"):
        sample.truth = np.full(n, ped)
        fit.fit_thresholds([sample], NUSCENES16, pp.GraphParams.from_config(), min_precision=0.99, min_candidate_truth=0.0)


def test_distance_unit_is_in_beams():
    """The same points measured by a scanner with half the beam spacing are twice as many units apart;
    nearer than min_range_m the unit stops shrinking."""
    xyz = np.array([[20.0, 0, 0], [20.0, 0.3, 0], [5.0, 0, 0], [5.0, 0.3, 0]], np.float32)
    ev = pp.Evidence(xyz=xyz, ground=np.zeros(4, bool), segment_id=np.zeros(4, np.int32), ground_cell=np.full(4, -1, np.int32),
                     fov=np.ones(4, bool), spacing=np.full(4, math.radians(1.0)))
    p = pp.GraphParams.from_config()
    unit = pp.distance_unit(ev, p)
    assert unit[0] == pytest.approx(p.scale_beams * math.radians(1.0) * 20.0)
    assert unit[2] == pytest.approx(p.scale_beams * math.radians(1.0) * p.min_range_m)
    half = pp.edge_cues(pp.Evidence(**{**ev.__dict__, "spacing": ev.spacing / 2}), p)
    full = pp.edge_cues(ev, p)
    key = {(a, b): d for a, b, d in zip(full.i.tolist(), full.j.tolist(), full.distance.tolist())}
    for a, b, d in zip(half.i.tolist(), half.j.tolist(), half.distance.tolist()):
        if (a, b) in key:
            assert d == pytest.approx(2 * key[(a, b)], rel=1e-5)
    # beam_spacing_deg gives the spacing where the evidence has none
    ev.spacing = None
    assert pp.distance_unit(ev, pp.GraphParams.from_config(dict(beam_spacing_deg=1.0))) == pytest.approx(unit)


def test_log_odds_file_errors_name_the_file(tmp_path):
    good = json.loads(pp.LOG_ODDS_PATH.read_text())
    assert set(good["log_odds"]) == set(pp.EDGE_KINDS) and good["header"]["tuning_world"]["generator"]["seed"] == 1
    bad = json.loads(json.dumps(good))
    del bad["log_odds"]["object"]["mask"]["apart"]
    path = tmp_path / "log_odds.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(pp.LogOddsError, match=r"log_odds.json.*'object'.*'mask'"):
        pp.load_log_odds(path)
    with pytest.raises(pp.LogOddsError, match="missing.json"):
        pp.load_log_odds(tmp_path / "missing.json")


def test_defaults_are_the_fitted_ones():
    """GraphParams' weights and thresholds are the ones the log-odds file was fitted with (the fitting
    script writes both; a hand edit of either breaks this), and its graph settings are the defaults."""
    header = json.loads(pp.LOG_ODDS_PATH.read_text())["header"]
    p = pp.GraphParams.from_config()
    for key, value in {**header["weights"], **header["thresholds"]}.items():
        if hasattr(p, key):
            assert getattr(p, key) == value, key
    for key, value in header["graph"].items():
        assert getattr(p, key) == value, key


def _bench_worlds():
    spec = importlib.util.spec_from_file_location("bench_worlds", BENCH / "bench_worlds.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_worlds"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_bench_worlds_document_on_a_minimal_run(tmp_path):
    """One tiny world through every stage and the scorer; the document has the protocol's keys, the
    summary's mean and worst are the evaluation worlds' values, and each acceptance line follows them."""
    bw = _bench_worlds()
    from lidarlift.config import load_config

    world = bw.World("eval-tiny", "nuscenes32", 5, "evaluation", 1)
    size = dict(samples_per_scene=1, image_width=192, image_height=108, sweeps_before_first=1)
    rec = bw.run_world(world, tmp_path, size, load_config())
    other = json.loads(json.dumps(rec))
    other.update(name="eval-tiny-copy", sensor="os128")
    other["presegment"]["split_instance_share"] = 1.0  # a world that fails the split line
    tuning = {**json.loads(json.dumps(rec)), "name": "tune", "role": "tuning"}
    tuning["pseudolabels"]["labelled_share"] = 0.0  # the tuning world is neither summarised nor accepted
    doc = bw.document([tuning, rec, other], {"command": "test"})
    keys = {"association": {"visible_precision", "visible_recall", "transfer_accuracy", "transfer_accuracy_no_occlusion",
                            "hidden_ground_30_50m"},
            "presegment": {"segment_purity", "split_instance_share", "merge_instance_share", "merge_instance_share_beyond_30m"},
            "pseudolabels": {"click_share", "labelled_share", "precision"}}
    for w in doc["worlds"]:
        assert {"name", "sensor", "seed", "role"} <= set(w)
        for section, names in keys.items():
            assert set(w[section]) == names
    assert rec["pseudolabels"]["click_share"] == pytest.approx(0.001, rel=0.3)
    assert 0 < rec["pseudolabels"]["labelled_share"] <= 1 and rec["points_per_keyframe"] > 10_000
    s = doc["summary"]
    assert s["evaluation_worlds"] == ["eval-tiny", "eval-tiny-copy"]
    assert s["evaluation_worst"]["presegment"]["split_instance_share"] == 1.0
    assert s["evaluation_mean"]["presegment"]["split_instance_share"] == pytest.approx(
        (rec["presegment"]["split_instance_share"] + 1.0) / 2)
    assert s["evaluation_worst"]["pseudolabels"]["labelled_share"] == rec["pseudolabels"]["labelled_share"]
    lines = {a["line"]: a for a in doc["acceptance"]}
    split = lines["presegment.split_instance_share <= 0.12"]
    assert not split["pass"] and "eval-tiny-copy" in split["failed"]
    pl = lines["pseudolabels.labelled_share >= 0.70 at pseudolabels.precision >= 0.985"]
    want = rec["pseudolabels"]["labelled_share"] >= 0.70 and rec["pseudolabels"]["precision"] >= 0.985
    assert pl["pass"] == want and ("tune" not in pl["failed"])
    bw.write_document(tmp_path / "worlds.json", doc)
    assert json.loads((tmp_path / "worlds.json").read_text())["worlds"][1]["name"] == "eval-tiny"
