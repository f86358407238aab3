"""Superpixels: known truths of the metrics, rectangles recalled, the stage on hand-built and synthetic data."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from lidarlift import artifacts as A
from lidarlift.datasets import DatasetError
from lidarlift.manifest import CameraFrame, LidarFrame, Manifest, SampleRecord
from lidarlift.superpixels import (
    SuperpixelParams, run_shard, superpixel_labels, to_working, upsample_labels, working_scale, working_size,
)
from lidarlift.evaluate.merge import score_stores
from lidarlift.evaluate.superpixels import boundary_recall_counts, image_metrics, undersegmentation_counts
from lidarlift.summary import superpixels as summarize

EYE = np.eye(4).tolist()


def rectangles(h=270, w=480, n=8, seed=0):
    """An RGB image of coloured rectangles on a plain background, with its truth (class, instance key)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (120, 160, 200)
    label = np.full((h, w), 15, np.uint8)  # manmade background
    inst = np.zeros((h, w), np.int64)
    for k in range(n):
        rw, rh = int(rng.integers(w // 12, w // 5)), int(rng.integers(h // 9, h // 4))
        x, y = int(rng.integers(0, w - rw)), int(rng.integers(0, h - rh))
        img[y:y + rh, x:x + rw] = rng.integers(0, 256, 3)
        label[y:y + rh, x:x + rw] = 4
        inst[y:y + rh, x:x + rw] = 17000 + k + 1
    noisy = np.clip(img.astype(int) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    return noisy, label, inst


def test_metrics_known_values():
    seg = np.zeros((20, 40), int)
    seg[:, 20:] = 1
    # identical maps: every boundary recalled, nothing leaks
    assert boundary_recall_counts(seg, seg) == (20, 20)
    assert undersegmentation_counts(seg, seg) == (0, 800)
    # one superpixel over two equal halves: each half leaks min(400, 400) -> UE = 800 / 800
    one = np.zeros_like(seg)
    assert undersegmentation_counts(one, seg) == (800, 800)
    assert boundary_recall_counts(one, seg) == (0, 20)
    # a 3:1 split: min(600, 200) + min(200, 600) = 400
    gt = np.zeros_like(seg)
    gt[:, 30:] = 1
    assert undersegmentation_counts(one, gt) == (400, 800)
    # a boundary 2 px off is recalled at tolerance 2, not at 1
    off = np.zeros_like(seg)
    off[:, 22:] = 1
    assert boundary_recall_counts(off, seg, tolerance=2.0) == (20, 20)
    assert boundary_recall_counts(off, seg, tolerance=1.0) == (0, 20)


def test_working_resolution_and_lookup():
    p = SuperpixelParams.from_config()
    assert working_scale(1600, p) == pytest.approx(0.4)  # IUPC: 1600x900 -> 640x360
    assert working_size(1600, 900, 0.4) == (640, 360)
    assert working_scale(480, p) == 1.0  # the synthetic world's images are already smaller
    assert working_scale(480, SuperpixelParams.from_config({"scale": "0.5"})) == 0.5
    labels = np.arange(36 * 64, dtype=np.int32).reshape(36, 64)
    full = upsample_labels(labels, 160, 90)
    uv = np.array([[0.5, 0.5], [159.5, 89.5], [80.2, 45.7], [3.0, 7.9]])
    cr = to_working(uv, (160, 90), (64, 36))
    assert full[uv[:, 1].astype(int), uv[:, 0].astype(int)].tolist() == labels[cr[:, 1], cr[:, 0]].tolist()
    with pytest.raises(ValueError, match="superpixels.method"):
        SuperpixelParams.from_config({"method": "quickshift"})
    with pytest.raises(ValueError, match="superpixels.scale"):
        SuperpixelParams.from_config({"scale": 0})


@pytest.mark.parametrize("method", ["seeds", "slic"])
def test_superpixels_recall_rectangle_edges(method):
    img, label, inst = rectangles()
    sp, scale = superpixel_labels(img, SuperpixelParams.from_config({"method": method}))
    assert scale == 1.0 and sp.shape == label.shape and sp.dtype == np.int32
    assert len(np.unique(sp)) > 200
    m = image_metrics(sp, label, inst)
    assert m["recalled_boundary_pixels"] / m["gt_boundary_pixels"] > 0.9
    assert m["undersegmentation_leak"] / m["truth_pixels"] < 0.05
    # at a working scale below 1 the map is smaller and still recalls most edges at full resolution
    sp2, _ = superpixel_labels(img, SuperpixelParams.from_config({"method": method, "scale": 0.5}))
    assert sp2.shape == (135, 240)
    m2 = image_metrics(sp2, label, inst)
    assert m2["recalled_boundary_pixels"] / m2["gt_boundary_pixels"] > 0.8


def _hand_manifest(tmp_path, n_samples=2, corrupt=None, missing=None) -> str:
    """A manifest of ``n_samples`` keyframes with two 96x64 rectangle images each (no lidar needed)."""
    root = tmp_path / "data"
    root.mkdir()
    samples = []
    for s in range(n_samples):
        cams = []
        for c, ch in enumerate(("CAM_FRONT", "CAM_BACK")):
            rel = f"img_{s}_{c}.png"
            img, _, _ = rectangles(64, 96, n=3, seed=10 * s + c)
            cv2.imwrite(str(root / rel), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            cams.append(CameraFrame(ch, rel, 0, 96, 64, [[50, 0, 48], [0, 50, 32], [0, 0, 1]], EYE, EYE, token=f"c{s}{c}"))
        samples.append(SampleRecord(f"tok{s}", "shard-a", "train", s, LidarFrame("none.bin", 0, EYE, EYE), cams))
    if corrupt:
        (root / corrupt).write_bytes(b"not a png")
    if missing:
        (root / missing).unlink()
    path = tmp_path / "manifest.json"
    Manifest("nuscenes", str(root), "v1.0-mini", ["CAM_FRONT", "CAM_BACK"], "nuscenes16", samples).to_json(path)
    return str(path)


def test_run_shard_writes_store_and_metrics(tmp_path):
    man = _hand_manifest(tmp_path)
    store, met = tmp_path / "sp.zarr", tmp_path / "sp.metrics.json"
    m = run_shard(man, "shard-a", str(store), str(met), {"method": "slic", "num_superpixels": 64})
    g = A.open_store(store, "superpixels")
    labels = A.read(g, "labels")
    assert labels.shape == (4, 64, 96) and labels.min() >= 0
    assert g.attrs["method"] == "slic" and g.attrs["scale"] == 1.0 and g.attrs["sample_tokens"] == ["tok0", "tok1"]
    assert json.loads(met.read_text())["images"] == 4 == m["images"]
    s = summarize([m, m])
    assert s["images"] == 8 and "boundary_recall" not in s and s["seconds_per_image"] > 0  # the job reads no truth


@pytest.mark.parametrize("bad", ["corrupt", "missing"])
def test_bad_image_error_and_skip(tmp_path, bad):
    kw = {bad: "img_1_0.png"}
    man = _hand_manifest(tmp_path, **kw)
    store = tmp_path / "sp.zarr"
    with pytest.raises(DatasetError, match=r"sample tok1: image .*img_1_0\.png"):
        run_shard(man, "shard-a", str(store), str(tmp_path / "m.json"), {"num_superpixels": 64})
    assert not store.exists()  # no half-written store
    m = run_shard(man, "shard-a", str(store), str(tmp_path / "m.json"), {"num_superpixels": 64}, bad_sample_policy="skip")
    assert m["images"] == 3
    assert [(s["sample"], s["file"].endswith("img_1_0.png")) for s in m["skipped"]] == [("tok1", True)]
    labels = A.read(A.open_store(store, "superpixels"), "labels")
    assert (labels[2] == -1).all() and (labels[[0, 1, 3]] >= 0).all()  # image i = s * C + c
    assert summarize([m])["skipped"] == m["skipped"]


def test_synthetic_world_superpixels(tiny_world, tmp_path):
    from lidarlift.datasets import build_manifest

    manifest = build_manifest({"dataroot": str(tiny_world), "version": "v1.0-mini", "format": "nuscenes"})
    man = tmp_path / "manifest.json"
    manifest.to_json(man)
    shard = manifest.shards[0]
    n_img = len(manifest.shard_samples(shard)) * len(manifest.cameras)
    m = run_shard(str(man), shard, str(tmp_path / "sp.zarr"), str(tmp_path / "sp.json"), {})
    s = {**summarize([m]), **score_stores(man, {shard: {"superpixels": str(tmp_path / "sp.zarr")}})["superpixels"]}
    assert s["images"] == s["images_with_truth"] == n_img
    assert A.read(A.open_store(tmp_path / "sp.zarr", "superpixels"), "labels").shape[0] == n_img
    # SEEDS with IUPC's settings follows most object boundaries of the rendered world
    assert s["boundary_recall"] > 0.6
    assert 0 <= s["undersegmentation_error"] < 0.2
    assert s["method"] == "seeds"
