"""Fit the propagation's log-odds tables, cue weights and thresholds on the tuning world only, and
write them where the code reads them.

    .venv/bin/python bench/fit_tuning.py                  # fit and write (about 2 minutes)
    .venv/bin/python bench/fit_tuning.py --check --cv     # fit, cross-validate, compare with what is written

The tuning world is ``bench_worlds.TUNING`` (seed 1, nuScenes' 32-beam sensor, 8 scenes x 2 keyframes,
the settings of ``bench_worlds.SIZE``); the evaluation worlds of ``bench/bench_worlds.py`` are never read. The stages up
to the masks and the simulated annotator's clicks run with the default config; then, with
:mod:`lidarlift.pseudolabels.fit`:

1. every keyframe's evidence graph (:func:`lidarlift.pseudolabels.propagate.edge_cues`, the production
   code) is counted against the ground truth of its two ends (same class or not; edges touching an
   unlabelled point are left out) and the naive-Bayes log-odds tables are fitted;
2. the cue weights ``w_*`` and an offset per edge kind (the tables' ``prior``) by logistic regression
   on the cues' log-likelihood ratios (``--no-weights`` keeps the config's weights);
3. with those, the minimax costs from the clicks (:func:`~lidarlift.pseudolabels.propagate.seed_distances`)
   give the thresholds: the largest labelled share at precision >= ``--min-precision`` (0.99) pooled
   and >= ``--min-scene-precision`` (0.98) in every scene, with candidate sets holding the truth >=
   ``--min-candidate-truth`` (0.9). ``--cv`` also fits on half the scenes and measures on the other
   half (how the targets were chosen: the held-out halves keep precision >= 0.985).

Writes ``lidarlift/pseudolabels/log_odds.json`` (header: the tuning world's generator parameters, the
command, the edges counted, the weights, the thresholds and what they gave on the tuning world) and the
weights and thresholds as the defaults of ``pseudolabels.ours`` in config/schema.yaml (where
``GraphParams`` reads them) and config/config.yaml, then regenerates config/README.md. Deterministic: the world, the clicks and the
grids are seeded or fixed (``--check`` on a fresh world reproduces the file).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_worlds as bw  # noqa: E402

from lidarlift.classes import label_space  # noqa: E402
from lidarlift.config import CONFIG_PATH, SCHEMA_PATH, load_config, production_section  # noqa: E402
from lidarlift.evaluate.truth import SampleTruth  # noqa: E402
from lidarlift.manifest import Manifest  # noqa: E402
from lidarlift.pseudolabels import clicks as ck  # noqa: E402
from lidarlift.pseudolabels import fit  # noqa: E402
from lidarlift.pseudolabels import propagate as pp  # noqa: E402
from lidarlift.pseudolabels.stage import StageParams, load_shard  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = ("label_cost", "margin", "margin_flat", "candidate_cost")
WEIGHTS = tuple(f"w_{cue}" for cue in pp.CUES)


@dataclass
class Keyframe:
    """One tuning keyframe: its evidence (production code), clicks, true class per point, scene, and its
    evidence graph's cues with 'the ends differ in class' / 'both ends have a class' per edge."""

    evidence: pp.Evidence
    clicks: ck.SampleClicks
    truth: np.ndarray
    scene: str
    cues: pp.EdgeCues
    differ: np.ndarray
    valid: np.ndarray


def load_tuning(root: Path) -> tuple[Manifest, pp.GraphParams, list[Keyframe], dict, dict]:
    """Run the tuning world's stages under ``root``; returns (manifest, the default graph parameters,
    keyframes, the generator's parameters, stage seconds)."""
    cfg = load_config()
    dataroot = bw.build_world(bw.TUNING, root, bw.SIZE)
    manifest_path, stores, seconds = bw.run_stages(dataroot, root / "tuning-results", cfg, pseudolabels=False)
    manifest = Manifest.from_json(manifest_path)
    space = label_space(manifest.label_space)
    p = StageParams.from_config(production_section(cfg, "pseudolabels")).ours
    keyframes = []
    for shard, st in stores.items():
        data = load_shard(manifest, shard, st["associate"], st["presegment"], st["superpixels"], st["masks"],
                          colours=p.w_color > 0)
        clicks = ck.read_clicks(st["clicks"], space, {d.record.token: d.evidence.n for d in data},
                                known_tokens=[s.token for s in manifest.samples])
        for d in data:
            truth = SampleTruth(manifest, d.record).label
            cues = pp.edge_cues(d.evidence, p)
            a, b = truth[cues.i], truth[cues.j]
            keyframes.append(Keyframe(d.evidence, clicks[d.record.token], truth, shard, cues, a != b, (a > 0) & (b > 0)))
    gen = json.loads((dataroot / "lidarlift_gt" / bw.VERSION / "world.json").read_text())["params"]
    return manifest, p, keyframes, gen, seconds


def fit_constants(keyframes: list[Keyframe], space, base: pp.GraphParams, a: argparse.Namespace) -> dict:
    """Tables, cue weights (``a.weights``) and thresholds fitted on ``keyframes``; returns
    {tables, params (GraphParams with the fitted weights and thresholds), found (fit.ThresholdFit),
    stats (fit.EdgeStats), naive_bayes_priors}."""
    stats = fit.EdgeStats()
    for k in keyframes:
        stats.add(k.cues, k.differ, k.valid)
    tables = fit.fit_log_odds(stats)
    nb_priors = {kind: t["prior"] for kind, t in tables.items()}
    p = base
    if a.weights:
        parts = [(pp.cue_matrix(k.cues, tables), k.cues.kind, k.differ) for k in keyframes]
        sel = [k.valid for k in keyframes]
        prior = np.concatenate([x[0][0][v] for x, v in zip(parts, sel)])
        llr = np.concatenate([x[0][1][v] for x, v in zip(parts, sel)])
        kind = np.concatenate([x[1][v] for x, v in zip(parts, sel)])
        differ = np.concatenate([x[2][v] for x, v in zip(parts, sel)])
        offset, weights = fit.fit_weights(prior, llr, kind, differ)
        for kind_name, o in zip(pp.EDGE_KINDS, offset):
            tables[kind_name]["prior"] = round(float(o), 3)
        p = replace(p, **{f"w_{cue}": round(float(w), 3) for cue, w in zip(pp.CUES, weights)})
    max_cost = max(fit.LABEL_COSTS) + max(fit.CANDIDATE_STEPS)
    samples = []
    for k in keyframes:
        c = k.clicks
        sd = pp.seed_distances(k.evidence, c.point_index, c.label, space, p, max_cost=max_cost, log_odds=tables)
        best, d1, d2 = sd.best_two()
        click = np.zeros(k.evidence.n, bool)
        click[c.point_index] = True
        samples.append(fit.ThresholdSample(best, d1, d2, sd.per_class, sd.classes, k.evidence.ground, click, k.truth, k.scene))
    found = fit.fit_thresholds(samples, space, p, a.min_precision, a.min_candidate_truth, a.min_scene_precision)
    p = replace(p, **found.params())
    return {"tables": tables, "params": p, "found": found, "stats": stats, "naive_bayes_priors": nb_priors}


def labelled_figures(keyframes: list[Keyframe], space, p: pp.GraphParams, tables: dict) -> dict:
    """Labelled share and precision of the production propagation with ``p`` and ``tables`` on
    ``keyframes`` (pooled, and the worst scene's precision)."""
    per_scene: dict[str, np.ndarray] = {}
    for k in keyframes:
        out = pp.ours_propagate(k.evidence, k.clicks.point_index, k.clicks.label, space, p, log_odds=tables)
        scored = k.truth > 0
        lab = (out.label > 0) & scored
        per_scene[k.scene] = per_scene.get(k.scene, np.zeros(3, np.int64)) + [scored.sum(), lab.sum(),
                                                                               (lab & (out.label == k.truth)).sum()]
    tot = sum(per_scene.values())
    return {"labelled_share": round(tot[1] / tot[0], 4), "precision": round(tot[2] / tot[1], 4),
            "worst_scene_precision": round(min(v[2] / max(v[1], 1) for v in per_scene.values()), 4)}


def cross_validate(keyframes: list[Keyframe], space, base: pp.GraphParams, a: argparse.Namespace) -> list[dict]:
    """Two folds over the tuning world's scenes: fit on one half, measure on the other."""
    scenes = sorted({k.scene for k in keyframes})
    out = []
    for fold in range(2):
        held = set(scenes[fold::2])
        got = fit_constants([k for k in keyframes if k.scene not in held], space, base, a)
        out.append({"held_out": sorted(held), "fit_on_rest": {**got["found"].params()},
                    **labelled_figures([k for k in keyframes if k.scene in held], space, got["params"], got["tables"])})
    return out


def fit_world(root: Path, a: argparse.Namespace) -> tuple[dict, pp.GraphParams, list[dict] | None]:
    """Run the tuning world's stages under ``root`` and fit; returns (the log-odds file's content, the
    fitted parameters, the cross-validation rows or None)."""
    manifest, base, keyframes, gen, seconds = load_tuning(root)
    space = label_space(manifest.label_space)
    t0 = time.perf_counter()
    got = fit_constants(keyframes, space, base, a)
    t_fit = time.perf_counter() - t0
    found, p = got["found"], got["params"]
    cv = cross_validate(keyframes, space, base, a) if a.cv else None
    header = {
        "what": "log-odds tables of lidarlift.pseudolabels.propagate (edge costs); written by bench/fit_tuning.py, do not edit",
        "command": ".venv/bin/python bench/fit_tuning.py",
        "tuning_world": {"name": bw.TUNING.name, "generator": gen},
        "keyframes": len(keyframes),
        "edges": got["stats"].summary(),
        "graph": {k: v for k, v in asdict(p).items() if k not in THRESHOLDS + WEIGHTS},
        "shrink_edges": fit.SHRINK_EDGES,
        "naive_bayes_priors": got["naive_bayes_priors"],
        "weights": {k: getattr(p, k) for k in WEIGHTS} if a.weights else None,
        "thresholds": {**found.params(), "min_precision": a.min_precision, "min_scene_precision": a.min_scene_precision,
                       "min_candidate_truth": a.min_candidate_truth},
        "on_tuning_world": {"labelled_share": round(found.labelled_share, 4), "precision": round(found.precision, 4),
                            "worst_scene_precision": round(found.worst_group_precision, 4),
                            "candidate_contains_truth": None if found.candidate_contains_truth is None
                            else round(found.candidate_contains_truth, 4), "scored_points": found.scored},
    }
    print(f"stages {sum(seconds.values()):.0f} s, fit {t_fit:.0f} s", flush=True)
    return {"header": header, "log_odds": got["tables"]}, p, cv


def _replace_once(path: Path, pattern: str, repl: str) -> None:
    text = path.read_text()
    new, n = re.subn(pattern, repl, text, flags=re.M)
    if n != 1:
        raise RuntimeError(f"{path}: expected one line matching {pattern!r}, found {n}")
    path.write_text(new)


def write_defaults(values: dict[str, float]) -> None:
    """The fitted thresholds (and weights) as the defaults in the schema (GraphParams reads them from
    there) and the shipped config."""
    for key in values:
        v = repr(float(values[key]))
        _replace_once(SCHEMA_PATH, rf"^(          {key}: \{{type: [^}}]*?default: )[-0-9.]+", rf"\g<1>{v}")
        _replace_once(CONFIG_PATH, rf"^(    {key}: )[-0-9.]+", rf"\g<1>{v}")
    subprocess.run([str(Path(sys.executable).with_name("lidarlift")), "config-docs", "--write"], check=True, cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", default=None, help="keep (and reuse) the tuning world here (default: a temporary directory)")
    ap.add_argument("--min-precision", type=float, default=0.99)
    ap.add_argument("--min-scene-precision", type=float, default=0.98)
    ap.add_argument("--min-candidate-truth", type=float, default=0.9)
    ap.add_argument("--no-weights", dest="weights", action="store_false", help="keep the config's cue weights")
    ap.add_argument("--cv", action="store_true", help="also fit on half the tuning scenes and measure on the other half")
    ap.add_argument("--check", action="store_true", help="fit and compare with the written file; write nothing")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fit_tuning_") as tmp:
        root = Path(a.worlds or tmp)
        root.mkdir(parents=True, exist_ok=True)
        doc, p, cv = fit_world(root, a)
    h = doc["header"]
    print(f"tuning world {h['tuning_world']['name']}: {h['keyframes']} keyframes, edges {h['edges']}")
    for kind, t in doc["log_odds"].items():
        print(f"  {kind}: prior {t['prior']:+.2f}; " + "; ".join(
            f"{cue} " + (" ".join(f"{v:+.1f}" for v in c["llr"]) if "llr" in c else " ".join(f"{s}={v:+.1f}" for s, v in c.items()))
            for cue, c in t.items() if cue != "prior"))
    if h["weights"]:
        print("weights: " + ", ".join(f"{k} {v}" for k, v in h["weights"].items()))
    th, on = h["thresholds"], h["on_tuning_world"]
    print(f"thresholds: {', '.join(f'{k} {th[k]}' for k in THRESHOLDS)} -> labelled {on['labelled_share']} at precision "
          f"{on['precision']} (worst scene {on['worst_scene_precision']}; candidate sets hold the truth "
          f"{on['candidate_contains_truth']}) on the tuning world; {time.perf_counter() - t0:.0f} s")
    for row in cv or []:
        print(f"cross-validation: fit without {', '.join(row['held_out'])} ({row['fit_on_rest']}) -> on them labelled "
              f"{row['labelled_share']} at precision {row['precision']} (worst scene {row['worst_scene_precision']})")
    if a.check:
        have = json.loads(pp.LOG_ODDS_PATH.read_text())
        same = have["log_odds"] == doc["log_odds"] and have["header"]["thresholds"] == th and have["header"]["weights"] == h["weights"]
        print("the written tables, weights and thresholds " + ("match" if same else "DIFFER"))
        return 0 if same else 1
    tmp_path = pp.LOG_ODDS_PATH.with_name(pp.LOG_ODDS_PATH.name + ".tmp")
    tmp_path.write_text(json.dumps(doc, indent=1) + "\n")
    tmp_path.replace(pp.LOG_ODDS_PATH)
    write_defaults({k: getattr(p, k) for k in THRESHOLDS + (WEIGHTS if a.weights else ())})
    print(f"wrote {pp.LOG_ODDS_PATH.relative_to(REPO)} and the defaults (config/schema.yaml, config/config.yaml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
