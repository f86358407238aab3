"""Every report figure is a real PNG of the size its function promises, with more than a handful of
distinct colours (not a blank or single-colour canvas); the HTML tables and the benchmark reader."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lidarlift.classes import NUSCENES16, SEMANTICKITTI19
from lidarlift.evaluate import figures as F
from lidarlift.evaluate.report import curves_from_metrics, read_benchmarks, report_index

K = NUSCENES16.num_classes


def _check_png(path, size, min_colours=20):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == size, (path.name, im.size)
        rgb = np.asarray(im.convert("RGB"))
    colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    assert colours > min_colours, (path.name, colours)
    return rgb


@pytest.fixture(scope="module")
def scene():
    """A synthetic keyframe: a ring of road, two boxes (car, pedestrian), a wall; labels with noise."""
    rng = np.random.default_rng(0)
    ang = rng.uniform(0, 2 * np.pi, 3000)
    rad = rng.uniform(3, 35, 3000)
    road = np.c_[rad * np.cos(ang), rad * np.sin(ang), np.full(3000, -1.8)]
    car = rng.normal([8, 2, -1], [1.5, 0.8, 0.4], (300, 3))
    ped = rng.normal([5, -4, -1], [0.2, 0.2, 0.5], (80, 3))
    wall = np.c_[rng.uniform(-20, 20, 600), np.full(600, 15.0), rng.uniform(-2, 3, 600)]
    xyz = np.vstack([road, car, ped, wall]).astype(np.float32)
    gt = np.array([11] * 3000 + [4] * 300 + [7] * 80 + [15] * 600)
    pred = np.where(rng.random(gt.size) < 0.9, gt, rng.integers(1, K + 1, gt.size))
    pseudo = np.where(rng.random(gt.size) < 0.6, gt, 0)
    return xyz, gt, pred, pseudo


def test_bev_triptych_size_and_colours(scene, tmp_path):
    xyz, gt, pred, pseudo = scene
    path = F.bev_figure(xyz, [("pseudo-labels", pseudo), ("prediction", pred), ("ground truth", gt)], NUSCENES16,
                        tmp_path / "bev.png", extent=40, panel_px=400, title="t")
    rgb = _check_png(path, (1200, 490))
    # the class colours themselves are drawn: driveable_surface's devkit colour occurs
    assert (np.abs(rgb.astype(int) - F.NUSCENES16_COLORS[11]).sum(axis=2) < 30).sum() > 100


def test_camera_overlay_size_and_colours(scene, tmp_path):
    xyz, gt, pred, pseudo = scene
    rng = np.random.default_rng(1)
    img = (rng.random((90, 160, 3)) * 80 + 100).astype(np.uint8)
    uv = np.c_[rng.uniform(-20, 180, gt.size), rng.uniform(-10, 100, gt.size)].astype(np.float32)
    uv[:50] = np.nan
    depth = rng.uniform(-5, 50, gt.size).astype(np.float32)
    path = F.camera_overlay_figure([img, img], [uv, uv], [depth, depth], [("pseudo", pseudo), ("pred", pred), ("gt", gt)],
                                   NUSCENES16, tmp_path / "overlay.png", camera_names=["CAM_FRONT", "CAM_BACK"],
                                   panel_width=320, title="sample")
    _check_png(path, (960, 180 * 2 + 90))


def test_confusion_matrix_figure(scene, tmp_path):
    from lidarlift.evaluate.metrics import confusion_matrix

    _, gt, pred, _ = scene
    path = F.confusion_figure(confusion_matrix(gt, pred, K), NUSCENES16, tmp_path / "cm.png", "t", size=(900, 800))
    _check_png(path, (900, 800))


def test_training_curves_figure_from_history(tmp_path):
    metrics = {"kind": "train", "history": [{"epoch": e + 1, "loss": 1 / (e + 1), "ce": 0.8 / (e + 1),
                                              "lovasz": 0.2 / (e + 1), "steps": 10 * e, "seconds": 3.0} for e in range(6)]}
    curves = curves_from_metrics(metrics)
    assert set(curves) == {"loss", "ce", "lovasz"} and curves["loss"][0] == [1, 2, 3, 4, 5, 6]
    assert set(curves_from_metrics({"train_loss": [3, 2, 1], "val_miou": [0.1, 0.2, 0.3]})) == {"train_loss", "val_miou"}
    path = F.training_curves_figure({"round 0": curves, "round 1": curves_from_metrics({"loss": [2, 1, 0.5], "miou": [0.1, 0.3, 0.4]})},
                                    tmp_path / "curves.png")
    _check_png(path, (1200, 500))


def test_headline_stage_and_benchmark_figures(tmp_path):
    rows = [{"round": 0, "network_miou": 0.6, "pseudolabel_miou": 0.9, "full_supervision_miou": 0.8, "share_of_full": 0.75},
            {"round": 1, "network_miou": 0.7, "pseudolabel_miou": None, "full_supervision_miou": 0.8, "share_of_full": 0.875}]
    _check_png(F.headline_figure(rows, tmp_path / "h.png"), (1000, 500))
    sections = {"association": {"visible_precision": 0.97, "visible_recall": 0.9, "points_per_second": 2e7},
                "presegment": {"ground_precision": 0.95, "segment_purity": 0.9, "seconds_per_sweep": 0.1,
                               "baseline": {"ground_precision": 0.9, "segment_purity": 0.8}},
                "masks": {"backend": "weightfree", "mean_best_iou_things": 0.6}}
    _check_png(F.stage_quality_figure(sections, tmp_path / "s.png"), (1120, 760))
    bench = [{"rule": r, "job": str(i), "s": 1.0 + i, "max_rss_mb": 100.0 * i} for i, r in enumerate(["a", "a", "b", "c"])]
    _check_png(F.benchmark_figure(bench, tmp_path / "b.png"), (1200, 300))


def test_semantickitti_palette_and_kitti_figure(scene, tmp_path):
    xyz, gt, _, _ = scene
    assert F.palette(SEMANTICKITTI19).shape == (20, 3)
    labels = (gt % 19) + 1
    _check_png(F.bev_figure(xyz, [("gt", labels)], SEMANTICKITTI19, tmp_path / "k.png", panel_px=300), (300, 390), min_colours=8)


def test_benchmark_reader_and_html_tables(tmp_path):
    bench = tmp_path / "benchmarks"
    (bench / "associate").mkdir(parents=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (bench / "synth.tsv").write_text(header + "12.5\t0:00:12\t310.2\t900\t300\t305\t0\t10\t95.0\t11.9\n")
    (bench / "associate" / "scene-0061.tsv").write_text(header + "2.0\t0:00:02\t150\t-\t-\t-\t-\t-\t-\t1.9\n"
                                                        + "4.0\t0:00:04\t170\t-\t-\t-\t-\t-\t-\t3.9\n")
    (tmp_path / "associate").mkdir()  # the job's stats beside its store: 1.25 s of work
    (tmp_path / "associate" / "scene-0061.stats.json").write_text('{"seconds": {"load": 0.25, "total": 1.25}}')
    rows = read_benchmarks(bench)
    by = {(r["rule"], r["job"]): r for r in rows}
    assert by[("synth", "")]["s"] == 12.5 and by[("synth", "")]["max_rss_mb"] == pytest.approx(310.2)
    assert by[("associate", "scene-0061")]["s"] == 3.0 and by[("associate", "scene-0061")]["max_rss_mb"] == 170
    assert by[("associate", "scene-0061")]["work_s"] == 1.25 and by[("associate", "scene-0061")]["overhead_s"] == 1.75
    assert by[("synth", "")]["work_s"] is None and by[("synth", "")]["overhead_s"] is None
    html = F.html_page("t", F.nested_html({"miou": 0.5, "rounds": [{"round": 0, "miou": 0.4}], "per_class": {"car": {"p": 1.0}}}))
    assert "<table>" in html and "0.5000" in html and "car" in html
    idx = report_index([F.headline_figure([], tmp_path / "empty.png")])
    assert idx["files"][0]["width"] == 1000
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a valid PNG"):
        report_index([tmp_path / "bad.png"])
    with pytest.raises(FileNotFoundError, match="missing or empty"):
        report_index([tmp_path / "nothing.png"])
