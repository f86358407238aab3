"""Figures and HTML tables for the report. Every figure is a PNG of a fixed pixel size (``figsize *
dpi``; no tight bounding box), so tests and the report layout can rely on it.

Class colours: the nuScenes devkit's challenge colormap (``LidarsegClassMapper.get_coarse2color``)
for the 16 challenge classes, semantic-kitti.yaml's ``color_map`` for the 19 SemanticKITTI classes;
ignore / unlabelled points are grey.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from lidarlift.classes import LabelSpace  # noqa: E402

#: RGB 0..255 per class 1..K (index 0 = ignore).
NUSCENES16_COLORS = np.array([
    (150, 150, 150), (112, 128, 144), (220, 20, 60), (255, 127, 80), (255, 158, 0), (233, 150, 70),
    (255, 61, 99), (0, 0, 230), (47, 79, 79), (255, 140, 0), (255, 99, 71), (0, 207, 191), (175, 0, 75),
    (75, 0, 75), (112, 180, 60), (222, 184, 135), (0, 175, 0),
], dtype=np.uint8)
SEMANTICKITTI19_COLORS = np.array([
    (150, 150, 150), (100, 150, 245), (100, 230, 245), (30, 60, 150), (80, 30, 180), (0, 0, 255),
    (255, 30, 30), (255, 40, 200), (150, 30, 90), (255, 0, 255), (255, 150, 255), (75, 0, 75),
    (175, 0, 75), (255, 200, 0), (255, 120, 50), (0, 175, 0), (135, 60, 0), (150, 240, 80),
    (255, 240, 150), (255, 0, 0),
], dtype=np.uint8)


def palette(space: LabelSpace) -> np.ndarray:
    """(K + 1, 3) float RGB in 0..1, row 0 = ignore (grey)."""
    colors = NUSCENES16_COLORS if space.name == "nuscenes16" else SEMANTICKITTI19_COLORS
    if len(colors) != space.num_classes + 1:
        cmap = plt.get_cmap("tab20", space.num_classes)
        colors = np.vstack([[150, 150, 150], (np.array([cmap(i)[:3] for i in range(space.num_classes)]) * 255)])
    return np.asarray(colors, dtype=np.float64) / 255.0


def _figure(width_px: int, height_px: int, dpi: int = 100, **kw):
    return plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, **kw)


def _save(fig, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)
    return path


def _legend(fig, space: LabelSpace, present: Iterable[int] | None = None, *, loc: str = "lower center",
            ncol: int = 9, ignore_label: str = "ignore / unlabelled") -> None:
    pal = palette(space)
    keep = sorted(set(int(c) for c in present)) if present is not None else range(space.num_classes + 1)
    handles = [Patch(color=pal[c], label=space.classes[c - 1] if c else ignore_label) for c in keep]
    if handles:
        fig.legend(handles=handles, loc=loc, ncol=min(ncol, len(handles)), fontsize=8, frameon=False)


# --- confusion matrix ------------------------------------------------------------------------


def confusion_figure(cm: np.ndarray, space: LabelSpace, path: str | Path, title: str = "", *,
                     size: tuple[int, int] = (1000, 900), dpi: int = 100) -> Path:
    """Row-normalised confusion matrix (rows ground truth, columns prediction) over classes 1..K,
    ignore row and column left out; cells annotated with the row share in percent."""
    cm = np.asarray(cm, np.float64)[1:, 1:]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig = _figure(*size, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    k = space.num_classes
    ax.set_xticks(range(k), space.classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), [f"{c} ({int(n)})" for c, n in zip(space.classes, rows[:, 0])], fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth (points)")
    for i in range(k):
        for j in range(k):
            if norm[i, j] >= 0.005:
                ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=6,
                        color="black" if norm[i, j] > 0.6 else "white")
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the ground-truth row")
    ax.set_title(title or "Confusion matrix")
    return _save(fig, path, dpi)


# --- training curves -------------------------------------------------------------------------


def training_curves_figure(runs: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]], path: str | Path,
                           *, size: tuple[int, int] = (1200, 500), dpi: int = 100) -> Path:
    """One panel per quantity (loss-like series left, score-like series right), one line per run.

    runs: {run name: {series name: (x, y)}}. Series with 'loss' in the name go to the left panel.
    """
    fig = _figure(*size, dpi=dpi, layout="constrained")
    ax_loss, ax_score = fig.subplots(1, 2)
    colors = plt.get_cmap("tab10")
    drawn = [0, 0]
    for i, (run, series) in enumerate(runs.items()):
        for j, (name, (x, y)) in enumerate(series.items()):
            ax = ax_loss if "loss" in name.lower() else ax_score
            drawn[ax is ax_score] += 1
            style = ["-", "--", ":", "-."][j % 4]
            ax.plot(np.asarray(x, float), np.asarray(y, float), style, color=colors(i % 10), marker="o", markersize=3,
                    label=f"{run}: {name}")
    for ax, title, n in ((ax_loss, "losses", drawn[0]), (ax_score, "scores", drawn[1])):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if n:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no series recorded", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path, dpi)


# --- camera overlays and bird's-eye views ----------------------------------------------------


def camera_overlay_figure(images: list[np.ndarray], uvs: list[np.ndarray], depths: list[np.ndarray],
                          layers: list[tuple[str, np.ndarray]], space: LabelSpace, path: str | Path, *,
                          camera_names: list[str] | None = None, title: str = "", panel_width: int = 480,
                          dpi: int = 100, point_size: float = 4.0) -> Path:
    """Camera images (rows) with projected points coloured by each label layer (columns).

    images: [(H, W, 3) uint8]; uvs: [(N, 2) float32 pixel coordinates per point, NaN / outside = not
    drawn]; depths: [(N,) float32]; layers: [(title, (N,) class 0..K)] for the same N points.
    Far points are drawn first so near ones stay on top. Size: (panel_width * columns) x (rows *
    panel height + 90) pixels (30 px title band, 60 px legend band), panel height from the first
    image's aspect ratio.
    """
    rows, cols = len(images), len(layers)
    h, w = images[0].shape[:2]
    panel_h = int(round(panel_width * h / w))
    top, bottom = 30, 60
    total_h = panel_h * rows + top + bottom
    fig = _figure(panel_width * cols, total_h, dpi=dpi)
    pal = palette(space)
    present: set[int] = set()
    for r, (img, uv, depth) in enumerate(zip(images, uvs, depths)):
        ih, iw = img.shape[:2]
        ok = np.isfinite(uv).all(axis=1) & (depth > 1.0) & (uv[:, 0] >= 0) & (uv[:, 0] < iw) & (uv[:, 1] >= 0) & (uv[:, 1] < ih)
        order = np.flatnonzero(ok)[np.argsort(-depth[ok])]
        for c, (name, labels) in enumerate(layers):
            ax = fig.add_axes([c / cols, 1 - (top + (r + 1) * panel_h) / total_h, 1 / cols, panel_h / total_h])
            ax.imshow(img, extent=(0, iw, ih, 0), interpolation="bilinear")
            lab = np.asarray(labels)[order]
            present.update(np.unique(lab).tolist())
            ax.scatter(uv[order, 0], uv[order, 1], s=point_size, c=pal[lab], linewidths=0, alpha=0.95)
            ax.set_xlim(0, iw)
            ax.set_ylim(ih, 0)
            ax.set_axis_off()
            cam = camera_names[r] if camera_names else f"camera {r}"
            ax.text(0.01 * iw, 0.02 * ih, f"{name} — {cam}", color="white", fontsize=8, va="top",
                    bbox=dict(facecolor="black", alpha=0.6, pad=1, linewidth=0))
    if title:
        fig.text(0.5, 1 - 8 / total_h, title, ha="center", va="top", fontsize=9)
    _legend(fig, space, present, ncol=9)
    return _save(fig, path, dpi)


def bev_figure(xyz: np.ndarray, layers: list[tuple[str, np.ndarray]], space: LabelSpace, path: str | Path, *,
               extent: float = 40.0, title: str = "", panel_px: int = 520, dpi: int = 100,
               point_size: float = 1.5) -> Path:
    """Bird's-eye-view panels side by side (e.g. pseudo-labels | prediction | ground truth), one per
    layer, points coloured by class on a dark background, the ego (a white triangle) at the centre.

    xyz: (N, 3) in metres with x to the right and y upwards in the figure (see :func:`ego_bev`);
    layers: [(title, (N,) class 0..K)]; ``extent``: half-width in metres.
    Size: (panel_px * len(layers)) x (panel_px + 90) pixels.
    """
    n = len(layers)
    fig = _figure(panel_px * n, panel_px + 90, dpi=dpi, facecolor="#101010")
    pal = palette(space)
    xyz = np.asarray(xyz)
    inside = (np.abs(xyz[:, 0]) < extent) & (np.abs(xyz[:, 1]) < extent)
    order = np.flatnonzero(inside)[np.argsort(xyz[inside, 2])]  # low first, so tall things stay visible
    present: set[int] = set()
    top = 30 / (panel_px + 90)
    for i, (name, labels) in enumerate(layers):
        ax = fig.add_axes([i / n + 0.005, 60 / (panel_px + 90), 1 / n - 0.01, panel_px / (panel_px + 90) - top])
        ax.set_facecolor("#101010")
        lab = np.asarray(labels)[order]
        present.update(np.unique(lab).tolist())
        ax.scatter(xyz[order, 0], xyz[order, 1], s=point_size, c=pal[lab], linewidths=0)
        ax.plot([0], [0], marker=(3, 0, 0), color="white", markersize=8)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_color("#555555")
        ax.set_title(name, color="white", fontsize=10)
    if title:
        fig.text(0.5, 1 - 6 / (panel_px + 90), title, ha="center", va="top", fontsize=9, color="white")
    pal_fig = palette(space)
    handles = [Patch(color=pal_fig[c], label=space.classes[c - 1] if c else "ignore / unlabelled") for c in sorted(present)]
    if handles:
        leg = fig.legend(handles=handles, loc="lower center", ncol=min(9, len(handles)), fontsize=8, frameon=False)
        for t in leg.get_texts():
            t.set_color("white")
    return _save(fig, path, dpi)


def ego_bev(xyz_lidar: np.ndarray, lidar_to_ego: np.ndarray) -> np.ndarray:
    """(N, 3) lidar-frame points -> bird's-eye-view coordinates with the ego's forward direction up and
    its right to the right: (-y_ego, x_ego, z_ego)."""
    from lidarlift.geometry import transform_points

    ego = transform_points(np.asarray(lidar_to_ego, np.float64), np.asarray(xyz_lidar, np.float64))
    return np.c_[-ego[:, 1], ego[:, 0], ego[:, 2]]


# --- summary figures -------------------------------------------------------------------------


def headline_figure(rows: list[dict[str, Any]], path: str | Path, *, size: tuple[int, int] = (1000, 500),
                    dpi: int = 100) -> Path:
    """Grouped bars per EM round: network mIoU, pseudo-label mIoU (on labelled points), full supervision."""
    fig = _figure(*size, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    series = [("network_miou", "network (val)", "#1f77b4"),
              ("pseudolabel_miou", "pseudo-labels (labelled points)", "#ff7f0e"),
              ("full_supervision_miou", "full supervision (val)", "#2ca02c")]
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    for i, (key, label, color) in enumerate(series):
        vals = [r.get(key) for r in rows]
        heights = [v if v is not None else 0 for v in vals]
        bars = ax.bar(x + (i - 1) * width, heights, width, label=label, color=color)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01, "n/a" if v is None else f"{100 * v:.1f}",
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"round {r['round']}" for r in rows])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("mIoU")
    share = [r.get("share_of_full") for r in rows]
    ax.set_title("Network vs pseudo-labels vs full supervision" +
                 (f" — final share of full supervision {100 * share[-1]:.1f}%" if share and share[-1] is not None else ""))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path, dpi)


#: Words (between underscores) of keys whose numbers are not quality shares: timings, counts, settings.
_NOT_SHARES = frozenset({"second", "seconds", "round", "scale", "skipped", "per", "count", "samples", "points",
                         "images", "shards", "size", "prompts", "n", "num", "epochs", "steps", "threads", "workers"})


def _share_metrics(section: dict[str, Any]) -> dict[str, float]:
    """The quality shares of a stage summary: numbers in 0..1 whose key is not a timing, count or setting."""
    return {k: float(v) for k, v in section.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= float(v) <= 1.0
            and not _NOT_SHARES & set(k.split("_"))}


def stage_quality_figure(sections: dict[str, dict[str, Any]], path: str | Path, *, panel_px: tuple[int, int] = (560, 380),
                         dpi: int = 100) -> Path:
    """One panel per stage: its share-valued metrics (0..1) as horizontal bars; where a stage carries a
    ``baseline`` sub-dict with the same keys, default and baseline side by side. Size: 2 x panel_px[0]
    wide; each row of two panels max(panel_px[1], 70 + 20 x its most metrics) high."""
    names = [n for n, s in sections.items() if isinstance(s, dict) and _share_metrics(s)]
    cols = 2
    rows = max(1, math.ceil(len(names) / cols))
    # a row is panel_px[1] high, or taller where a panel has many metrics (20 px a bar)
    heights = [max([panel_px[1]] + [70 + 20 * len(_share_metrics(sections[n])) for n in names[r * cols:(r + 1) * cols]])
               for r in range(rows)]
    fig = _figure(panel_px[0] * cols, sum(heights), dpi=dpi, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, gridspec_kw={"height_ratios": heights})).ravel()
    for ax in axes[len(names):]:
        ax.set_axis_off()
    if not names:
        axes[0].text(0.5, 0.5, "no stage metrics in this run", ha="center", va="center", transform=axes[0].transAxes)
    for ax, name in zip(axes, names):
        sec = sections[name]
        ours = _share_metrics(sec)
        base = _share_metrics(sec["baseline"]) if isinstance(sec.get("baseline"), dict) else {}
        keys = list(ours)
        y = np.arange(len(keys))
        if base:
            ax.barh(y - 0.2, [ours[k] for k in keys], 0.4, label="default", color="#1f77b4")
            ax.barh(y + 0.2, [base.get(k, 0) for k in keys], 0.4, label="baseline", color="#bbbbbb")
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.barh(y, [ours[k] for k in keys], 0.6, color="#1f77b4")
        for yi, k in zip(y, keys):
            ax.text(min(ours[k], 0.98), yi - (0.2 if base else 0), f"{ours[k]:.3f}", va="center", ha="right", fontsize=7, color="white")
        ax.set_yticks(y, keys, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(name)
        ax.grid(axis="x", alpha=0.3)
    return _save(fig, path, dpi)


def benchmark_figure(rows: list[dict[str, Any]], path: str | Path, *, dpi: int = 100) -> Path:
    """Per rule: total wall seconds over its jobs and the largest max RSS of a job (two bar panels)."""
    by_rule: dict[str, list[float]] = {}
    for r in rows:
        rec = by_rule.setdefault(r["rule"], [0.0, 0.0, 0])
        rec[0] += r.get("s") or 0.0
        rec[1] = max(rec[1], r.get("max_rss_mb") or 0.0)
        rec[2] += 1
    rules = sorted(by_rule, key=lambda k: -by_rule[k][0])
    height = max(300, 40 + 26 * len(rules))
    fig = _figure(1200, height, dpi=dpi, layout="constrained")
    ax_t, ax_m = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rules))
    ax_t.barh(y, [by_rule[k][0] for k in rules], color="#1f77b4")
    ax_m.barh(y, [by_rule[k][1] for k in rules], color="#9467bd")
    ax_t.set_yticks(y, [f"{k} ({by_rule[k][2]} jobs)" for k in rules], fontsize=8)
    ax_t.invert_yaxis()
    ax_t.set_xlabel("seconds (sum over jobs)")
    ax_m.set_xlabel("max RSS of a job (MB)")
    for ax in (ax_t, ax_m):
        ax.grid(axis="x", alpha=0.3)
    if not rules:
        ax_t.text(0.5, 0.5, "no benchmark files", ha="center", va="center", transform=ax_t.transAxes)
    return _save(fig, path, dpi)


# --- HTML tables -----------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:16px;color:#222}
h1{font-size:18px} h2{font-size:15px;margin-top:22px} p.note{color:#555;font-size:12px}
table{border-collapse:collapse;font-size:12px;margin:6px 0 14px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f0f0f0}
td.k,th.k{text-align:left;font-family:monospace}
"""


def fmt(v: Any) -> str:
    """A cell: floats with 4 significant decimals, None as a dash."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        if v != 0 and abs(v) < 1e-3:
            return f"{v:.2e}"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, (list, dict)):
        return html.escape(str(v) if len(str(v)) < 80 else str(v)[:77] + "...")
    return html.escape(str(v))


def table_html(rows: list[dict[str, Any]], columns: list[str] | None = None, *, key_columns: int = 1,
               headers: dict[str, str] | None = None) -> str:
    """An HTML table of rows (dicts); the first ``key_columns`` columns are left aligned."""
    if not rows:
        return "<p class='note'>(none)</p>"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    headers = headers or {}
    out = ["<table><tr>" + "".join(f"<th class='{'k' if i < key_columns else ''}'>{html.escape(headers.get(c, c))}</th>"
                                   for i, c in enumerate(columns)) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td class='{'k' if i < key_columns else ''}'>{fmt(r.get(c))}</td>"
                                    for i, c in enumerate(columns)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def nested_html(obj: Any, title: str = "") -> str:
    """Render a metrics dict as tables: scalars as a key/value table, a dict of flat dicts or a list
    of flat dicts as one table, deeper dicts as sub-sections."""
    parts = [f"<h2>{html.escape(title)}</h2>"] if title else []
    if isinstance(obj, list):
        if all(isinstance(x, dict) for x in obj):
            flat = [{k: v for k, v in x.items() if not isinstance(v, (dict, list))} for x in obj]
            parts.append(table_html(flat))
            for i, x in enumerate(obj):
                for k, v in x.items():
                    if isinstance(v, (dict, list)) and v:
                        label = x.get("round", i)
                        parts.append(nested_html(v, f"{title} [{label}] {k}".strip()))
        else:
            parts.append(f"<p>{fmt(obj)}</p>")
        return "\n".join(parts)
    if not isinstance(obj, dict):
        parts.append(f"<p>{fmt(obj)}</p>")
        return "\n".join(parts)
    scalars = {k: v for k, v in obj.items() if not isinstance(v, (dict, list))}
    if scalars:
        parts.append(table_html([{"metric": k, "value": v} for k, v in scalars.items()]))
    nested = {k: v for k, v in obj.items() if isinstance(v, (dict, list)) and v}
    for k, v in nested.items():
        name = (title + " " + k).strip()
        if isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()):
            # a dict of records (per round, per class, per source): one table of their scalars, rows =
            # keys, then each record's deeper parts
            parts.append(f"<h2>{html.escape(name)}</h2>")
            parts.append(table_html([{"name": n, **{a: b for a, b in x.items() if not isinstance(b, (dict, list))}}
                                     for n, x in v.items()]))
            for n, x in v.items():
                deeper = {a: b for a, b in x.items() if isinstance(b, (dict, list)) and b}
                if deeper:
                    parts.append(nested_html(deeper, f"{name} {n}"))
        elif isinstance(v, list) and not all(isinstance(x, dict) for x in v):
            parts.append(table_html([{"metric": k, "value": v}]))
        else:
            parts.append(nested_html(v, name))
    return "\n".join(parts)


def html_page(title: str, body: str, note: str = "") -> str:
    """A self-contained HTML page (inline CSS) for the Snakemake report."""
    note_html = f"<p class='note'>{html.escape(note)}</p>" if note else ""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{note_html}{body}</body></html>")


def write_html(path: str | Path, title: str, body: str, note: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_page(title, body, note))
    return path
