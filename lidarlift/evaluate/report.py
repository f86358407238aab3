"""The report's content: tables and figures built from the run's summary (results/summary.json), the
benchmark files, the training curves and a few sample keyframes.

Each function writes its files and returns what it wrote; the Snakemake figure rules call them
(workflow/scripts/evaluate_*.py) and flag the files with ``report()``.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from lidarlift import artifacts as A
from lidarlift.classes import LabelSpace, label_space
from lidarlift.datasets.readers import read_image, read_lidar
from lidarlift.evaluate import figures as F
from lidarlift.geometry import lidar_to_cam, project, transform_points
from lidarlift.groundtruth import point_truth
from lidarlift.manifest import Manifest, as_matrix
from lidarlift.workflow import read_json

log = logging.getLogger(__name__)


# --- headline and quality tables -------------------------------------------------------------


def headline_report(metrics: dict[str, Any], html_path: str | Path, png_path: str | Path) -> list[Path]:
    """The headline table (network vs pseudo-labels vs full supervision per EM round, share of full
    supervision), per-class IoU of each model, panoptic quality, and the devkit cross-check."""
    space = label_space(metrics["label_space"])
    rows = metrics.get("headline", [])
    body = [F.table_html(rows, ["round", "network_miou", "network_pq", "pseudolabel_miou", "pseudolabel_labelled_share",
                                "pseudolabel_precision", "full_supervision_miou", "share_of_full"],
                         headers={"network_miou": "network mIoU (val)", "network_pq": "network PQ (val)",
                                  "pseudolabel_miou": "pseudo-label mIoU (labelled pts)",
                                  "pseudolabel_labelled_share": "pseudo-labelled share",
                                  "pseudolabel_precision": "pseudo-label precision",
                                  "full_supervision_miou": "full supervision mIoU (val)",
                                  "share_of_full": "share of full supervision"})]
    models = [(f"network r{r['round']}", r["network"]) for r in metrics.get("rounds", [])]
    if metrics.get("full_supervision"):
        models.append(("full supervision", metrics["full_supervision"]))
    models += [(f"pseudo-labels r{r['round']}", r["pseudolabels"]) for r in metrics.get("rounds", []) if r.get("pseudolabels")]
    body.append("<h2>IoU per class</h2>")
    iou_rows = [{"class": c, **{name: m.get("iou_per_class", {}).get(c) for name, m in models}} for c in space.classes]
    iou_rows.append({"class": "mIoU", **{name: m.get("miou") for name, m in models}})
    body.append(F.table_html(iou_rows))
    pan_models = [(n, m) for n, m in models if m.get("pq") is not None or m.get("pq_things") is not None]
    if pan_models:
        body.append("<h2>Panoptic quality</h2>")
        keys = ["pq", "sq", "rq", "pq_things", "sq_things", "rq_things", "pq_stuff", "sq_stuff", "rq_stuff", "pq_dagger"]
        body.append(F.table_html([{"model": n, **{k: m.get(k) for k in keys}} for n, m in pan_models]))
        inst = metrics.get("instances", {})
        body.append(f"<p class='note'>Network instances: range-adaptive connected components of each predicted thing "
                    f"class (radius {inst.get('radius')} m, vehicles {inst.get('vehicle_radius')} m, range factor "
                    f"{inst.get('range_factor')}); min_inst_points {metrics.get('min_inst_points')}. Pseudo-label "
                    f"instances are the E-step's own instance ids (scored only where it writes them).</p>")
    body.append("<h2>Cross-check with the nuScenes devkit</h2>")
    dk = metrics.get("devkit")
    if dk:
        final = metrics["network"]
        comp = [{"metric": k, "project": final.get(k), "devkit": dk.get(k),
                 "abs diff": abs(final[k] - dk[k]) if isinstance(final.get(k), float) and isinstance(dk.get(k), float) else None}
                for k in ("miou", "freq_weighted_iou", "pq", "sq", "rq", "pq_things", "pq_stuff", "pq_dagger", "panoptic_miou")]
        body.append(F.table_html(comp))
        body.append(f"<p class='note'>LidarSegEval and NuScenesPanopticEval on eval set {metrics.get('eval_set')}: "
                    f"max |project - devkit| over all shared numbers = {metrics.get('max_abs_diff'):.3g} "
                    f"(tolerance {metrics.get('devkit_tolerance')}).</p>")
    else:
        body.append(f"<p class='note'>{F.fmt(metrics.get('devkit_status'))}</p>")
    html = F.write_html(html_path, "Headline: network vs pseudo-labels vs full supervision", "\n".join(body),
                        note=f"Final round {metrics.get('final_round')}; network scored on the {', '.join(metrics.get('eval_split', []))} "
                             f"split ({len(metrics.get('eval_shards', []))} shards); pseudo-labels on the points they label.")
    png = F.headline_figure(rows, png_path)
    return [html, png]


def label_quality_report(summary: dict[str, Any], html_path: str | Path) -> Path:
    """Label-quality tables: per EM round, the pseudo-labels against ground truth (shares, precision,
    candidate sets, per source, per class), and the round-0 baseline on the same inputs."""
    body = []
    pl = summary.get("pseudolabels") or {}
    rounds = dict(pl.get("rounds") or {})
    if pl.get("baseline"):
        rounds[f"0 baseline ({pl['baseline'].get('method')})"] = pl["baseline"]
    if not rounds:
        body.append("<p class='note'>No pseudo-labels were scored in this run.</p>")
    for name, p in rounds.items():
        body.append(f"<h2>Round {name}: pseudo-labels against ground truth</h2>")
        scal = {k: p.get(k) for k in ("samples", "points", "click_share", "labelled_share", "precision", "miou",
                                      "min_class_recall", "candidate_share", "candidate_contains_truth",
                                      "mean_candidate_set_size", "pq_things", "sq_things", "rq_things")}
        body.append(F.table_html([{"metric": k, "value": v} for k, v in scal.items() if v is not None]))
        body.append(F.table_html([{"source": s, **v} for s, v in p.get("by_source", {}).items()],
                                 headers={"share": "share of points", "labelled_share": "labelled share"}))
        body.append(F.table_html([{"class": c, **v} for c, v in p.get("per_class", {}).items()]))
    return F.write_html(html_path, "Label quality", "\n".join(body))


STAGE_KEYS = ("association", "superpixels", "presegment", "masks", "pseudolabels", "training")


def stage_quality_report(stage_summary: dict[str, Any], html_path: str | Path, png_path: str | Path) -> list[Path]:
    """Stage-quality figure (share-valued metrics per stage, default vs baseline) and the full tables."""
    sections = {k: stage_summary[k] for k in STAGE_KEYS if isinstance(stage_summary.get(k), dict)}
    png = F.stage_quality_figure(sections, png_path)
    body = "\n".join(F.nested_html(v, k) for k, v in sections.items()) or "<p class='note'>no stage summaries</p>"
    html = F.write_html(html_path, "Stage quality", body)
    return [html, png]


# --- benchmarks ------------------------------------------------------------------------------


def _work_seconds(stats_path: Path) -> float | None:
    """The seconds a job says it spent on its work (its ``.stats.json``: ``seconds``, ``seconds.total``
    or ``seconds_total``), None without such a file or key."""
    try:
        d = json.loads(stats_path.read_text())
    except (OSError, ValueError):
        return None
    v = d.get("seconds", d.get("seconds_total")) if isinstance(d, dict) else None
    if isinstance(v, dict):
        v = v.get("total")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def read_benchmarks(bench_dir: str | Path) -> list[dict[str, Any]]:
    """Rows {rule, job, s, max_rss_mb, mean_load, cpu_time, repeats, work_s, overhead_s} from every
    Snakemake benchmark ``.tsv`` under ``bench_dir`` (``<rule>.tsv`` or ``<rule>/<job>.tsv``); repeated
    runs are averaged (seconds) and maxed (RSS). ``work_s``: the seconds the job reports for its own work
    in its stats file (``<results>/<same path>.stats.json``, ``<results>`` being the folder above
    ``bench_dir``), ``overhead_s`` = ``s`` - ``work_s``: process start, imports, reading the config --
    what the job costs beyond its work."""
    bench_dir = Path(bench_dir)
    rows = []
    for path in sorted(bench_dir.rglob("*.tsv")):
        rel = path.relative_to(bench_dir).with_suffix("")
        parts = rel.parts
        rule, job = (parts[0], "/".join(parts[1:])) if len(parts) > 1 else (parts[0], "")
        try:
            with open(path, newline="") as fh:
                recs = list(csv.DictReader(fh, delimiter="\t"))
        except OSError as e:
            log.warning("benchmark file %s unreadable: %s", path, e)
            continue
        if not recs:
            continue

        def num(key):
            vals = []
            for r in recs:
                try:
                    vals.append(float(r.get(key, "nan")))
                except (TypeError, ValueError):
                    pass
            vals = [v for v in vals if math.isfinite(v)]
            return vals

        s, rss, load, cpu = num("s"), num("max_rss"), num("mean_load"), num("cpu_time")
        work = _work_seconds(bench_dir.parent / rel.with_suffix(".stats.json"))
        mean_s = float(np.mean(s)) if s else None
        rows.append({"rule": rule, "job": job, "s": mean_s,
                     "max_rss_mb": max(rss) if rss else None, "mean_load": float(np.mean(load)) if load else None,
                     "cpu_time": float(np.mean(cpu)) if cpu else None, "repeats": len(recs), "work_s": work,
                     "overhead_s": mean_s - work if mean_s is not None and work is not None else None})
    return rows


def benchmark_report(bench_dir: str | Path, html_path: str | Path, png_path: str | Path) -> list[Path]:
    """The benchmark table (seconds and max RSS per job, per-rule totals) and its figure."""
    rows = read_benchmarks(bench_dir)
    totals: dict[str, dict[str, Any]] = {}
    for r in rows:
        t = totals.setdefault(r["rule"], {"rule": r["rule"], "jobs": 0, "seconds": 0.0, "max_rss_mb": 0.0})
        t["jobs"] += 1
        t["seconds"] += r["s"] or 0.0
        t["max_rss_mb"] = max(t["max_rss_mb"], r["max_rss_mb"] or 0.0)
    body = ["<h2>Per rule</h2>", F.table_html(sorted(totals.values(), key=lambda t: -t["seconds"]),
                                                 headers={"seconds": "seconds (sum)", "max_rss_mb": "max RSS (MB)"}),
            "<h2>Per job</h2>", F.table_html(rows, ["rule", "job", "s", "work_s", "overhead_s", "max_rss_mb", "cpu_time", "mean_load"],
                                              key_columns=2,
                                              headers={"s": "seconds", "work_s": "work (s, the job's stats)",
                                                       "overhead_s": "beyond the work (s)", "max_rss_mb": "max RSS (MB)",
                                                       "cpu_time": "CPU seconds"})]
    html = F.write_html(html_path, "Benchmarks", "\n".join(body),
                        note=f"From every rule's benchmark: file under {bench_dir} at the time this table was built "
                             "(jobs that ran after it, e.g. the report rules themselves, are not listed).")
    png = F.benchmark_figure(rows, png_path)
    return [html, png]


# --- training curves -------------------------------------------------------------------------

_HISTORY_KEYS = ("history", "curves", "epochs", "log", "train_log", "per_epoch")
_X_KEYS = ("epoch", "step", "iteration", "iter")
_NOT_CURVES = ("steps", "points_per_s", "samples", "points", "world")


def curves_from_metrics(d: Any) -> dict[str, tuple[list[float], list[float]]]:
    """Numeric series from a training metrics JSON, whatever its exact layout: a list of per-epoch
    dicts (under 'history', 'curves', 'epochs', ...), or a dict of equal-length number lists."""
    def numeric(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        xkey = next((k for k in _X_KEYS if all(k in x for x in d)), None)
        xs = [float(x[xkey]) for x in d] if xkey else list(range(len(d)))
        names = [k for k in dict.fromkeys(k for x in d for k in x) if k not in _X_KEYS and k not in _NOT_CURVES
                 and "time" not in k and "seconds" not in k]
        out = {}
        for n in names:
            pts = [(xv, float(x[n])) for xv, x in zip(xs, d) if numeric(x.get(n))]
            if len(pts) >= 1:
                out[n] = ([p[0] for p in pts], [p[1] for p in pts])
        return out
    if isinstance(d, dict):
        for k in _HISTORY_KEYS:
            if k in d:
                got = curves_from_metrics(d[k])
                if got:
                    return got
        lists = {k: v for k, v in d.items() if isinstance(v, list) and len(v) > 1 and all(numeric(x) for x in v)}
        if lists:
            xkey = next((k for k in _X_KEYS if k in lists), None)
            out = {}
            for k, v in lists.items():
                if k == xkey:
                    continue
                xs = lists[xkey] if xkey and len(lists[xkey]) == len(v) else list(range(len(v)))
                out[k] = ([float(x) for x in xs], [float(y) for y in v])
            return out
        for v in d.values():
            if isinstance(v, (dict, list)):
                got = curves_from_metrics(v)
                if got:
                    return got
    return {}


def training_report(metric_files: dict[str, str | Path], png_path: str | Path) -> Path:
    """Training curves of every run ({run name: metrics.json path})."""
    runs = {}
    for name, path in metric_files.items():
        try:
            runs[name] = curves_from_metrics(read_json(path))
        except (OSError, ValueError) as e:
            log.warning("training metrics %s unreadable: %s", path, e)
    return F.training_curves_figure(runs, png_path)


def confusion_report(confusion_npz: str | Path, space: LabelSpace, png_path: str | Path, key: str, title: str) -> Path:
    with np.load(confusion_npz) as z:
        cm = z[key]
    return F.confusion_figure(cm, space, png_path, title)


# --- sample figures --------------------------------------------------------------------------


def _sample_arrays(path: str | Path, stage: str, name: str, token: str) -> np.ndarray:
    group = A.open_store(path, stage)
    tokens = list(group.attrs["sample_tokens"])
    if token not in tokens:
        raise KeyError(f"{stage} store {path} has no sample {token}")
    s = tokens.index(token)
    off = A.read(group, "point_offsets")
    return np.asarray(group[name][int(off[s]):int(off[s + 1])])


def sample_figures(manifest_path: str | Path, shard: str, index: int, *, pseudolabels: str | Path | None,
                   prediction: str | Path, overlay_path: str | Path, bev_path: str | Path,
                   cameras: list[str], bev_extent: float = 40.0, pseudo_title: str = "pseudo-labels",
                   prediction_title: str = "prediction") -> dict[str, Any]:
    """Camera overlays and the bird's-eye-view triptych of one keyframe (``index`` within ``shard``,
    clipped to the shard's length): pseudo-labels | network prediction | ground truth."""
    manifest = Manifest.from_json(manifest_path)
    space = label_space(manifest.label_space)
    samples = manifest.shard_samples(shard)
    sample = samples[min(max(index, 0), len(samples) - 1)]
    xyz = read_lidar(manifest.resolve(sample.lidar.path), sample.lidar.fmt, sample.token)[:, :3]
    truth = point_truth(manifest, sample)
    gt = truth.label if truth is not None else np.zeros(len(xyz), np.uint8)
    pred = _sample_arrays(prediction, "predict", "pred", sample.token)
    layers = []
    if pseudolabels is not None:
        pl = _sample_arrays(pseudolabels, "pseudolabels", "label", sample.token)
        layers.append((f"{pseudo_title} ({100 * (pl > 0).mean():.0f}% labelled)", pl))
    acc = float((pred[gt > 0] == gt[gt > 0]).mean()) if (gt > 0).any() else float("nan")
    layers.append((f"{prediction_title} (accuracy {100 * acc:.1f}%)", pred))
    layers.append(("ground truth", gt))
    for name, lab in layers:
        if len(lab) != len(xyz):
            raise ValueError(f"sample {sample.token}: layer '{name}' has {len(lab)} points, the sweep {len(xyz)}")
    title = f"{shard} keyframe {sample.index} (sample {sample.token}, {sample.split} split)"
    F.bev_figure(F.ego_bev(xyz, as_matrix(sample.lidar.lidar_to_ego)), layers, space, bev_path, extent=bev_extent,
                 title=title)
    images, uvs, depths, names = [], [], [], []
    l2e, e2g = as_matrix(sample.lidar.lidar_to_ego), as_matrix(sample.lidar.ego_to_global)
    channels = [c.channel for c in sample.cameras]
    if not cameras:
        cameras = [c for c in ("CAM_FRONT", "CAM_BACK") if c in channels] or channels[:1]
    for cam in sample.cameras:
        if cam.channel not in cameras:
            continue
        t = lidar_to_cam(l2e, e2g, as_matrix(cam.ego_to_global), as_matrix(cam.cam_to_ego))
        uv, depth = project(transform_points(t, xyz.astype(np.float64)), np.asarray(cam.intrinsic))
        images.append(read_image(manifest.resolve(cam.path), sample.token))
        uvs.append(uv)
        depths.append(depth)
        names.append(cam.channel)
    if not images:
        raise ValueError(f"config key evaluate.figures.cameras: none of {cameras} is a camera of sample {sample.token} "
                         f"(cameras: {[c.channel for c in sample.cameras]})")
    F.camera_overlay_figure(images, uvs, depths, layers, space, overlay_path, camera_names=names, title=title)
    return {"sample": sample.token, "shard": shard, "index": sample.index, "cameras": names}


def report_index(paths: list[str | Path]) -> dict[str, Any]:
    """``{"kind": "report", "files": [{path, bytes, width, height}]}`` for the report's files; raises
    FileNotFoundError for a missing or empty one and ValueError for a PNG that does not decode."""
    from PIL import Image

    files = []
    for p in paths:
        p = Path(p)
        if not p.exists() or p.stat().st_size == 0:
            raise FileNotFoundError(f"report file {p} is missing or empty")
        rec: dict[str, Any] = {"path": str(p), "bytes": p.stat().st_size}
        if p.suffix == ".png":
            try:
                with Image.open(p) as im:
                    im.verify()
                with Image.open(p) as im:
                    rec["width"], rec["height"] = im.size
            except Exception as e:  # noqa: BLE001 - any decoding failure is the same problem
                raise ValueError(f"report figure {p} is not a valid PNG: {e}") from e
        files.append(rec)
    return {"kind": "report", "files": files}
