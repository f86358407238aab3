"""The evaluation rules (evaluate_shard, evaluate) and the export on stores over the synthetic world:
known answers (ground truth scores 1), the summary's acceptance keys, exports that read back equal, and
clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from lidarlift import artifacts as A
from lidarlift.classes import NUSCENES16, candidate_bit
from lidarlift.evaluate import export as E
from lidarlift.evaluate.merge import merge
from lidarlift.evaluate.run import export_source
from lidarlift.evaluate.shard import EvaluationError, evaluate_shard
from lidarlift.summary import build_summary
from lidarlift.groundtruth import point_truth


@pytest.fixture(scope="module")
def world(request, tmp_path_factory):
    try:
        return request.getfixturevalue("tiny_world")
    except pytest.FixtureLookupError:
        from lidarlift.synth import generate

        root = tmp_path_factory.mktemp("stage_world")
        generate(root, seed=5, scenes=6, samples_per_scene=2, image_width=96, image_height=54, beams=16,
                 azimuth_steps=540, sweeps_per_keyframe=2, sweeps_before_first=1)
        return root


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    """A manifest plus stores: predictions = ground truth ('perfect', ignore points get class 1) and
    noisy (30% random), pseudo-labels = ground truth on half the points."""
    from lidarlift.datasets import build_manifest

    res = tmp_path_factory.mktemp("stage_results")
    m = build_manifest({"dataroot": str(world), "version": "v1.0-mini", "format": "nuscenes", "label_space": "nuscenes16"})
    m.to_json(res / "manifest.json")
    rng = np.random.default_rng(0)
    for shard in m.shards:
        samples = m.shard_samples(shard)
        gt = [point_truth(m, s).label.astype(np.int64) for s in samples]
        off = A.offsets_from_counts([g.size for g in gt])
        g = np.concatenate(gt)
        for name, noise in (("perfect", 0.0), ("noisy", 0.3)):
            pred = np.where(g > 0, g, 1)
            flip = rng.random(g.size) < noise
            pred[flip] = rng.integers(1, 17, int(flip.sum()))
            with A.write_store(res / "predict" / name / f"{shard}.zarr", "predict", shard=shard, sample_tokens=[s.token for s in samples]) as st:
                A.put(st, "point_offsets", off)
                A.put(st, "pred", pred)
                A.put(st, "logits", np.zeros((g.size, 16)))
                A.put(st, "features", np.zeros((g.size, 1)))
        lab = np.where(rng.random(g.size) < 0.5, g, 0)
        with A.write_store(res / "pseudolabels" / f"{shard}.zarr", "pseudolabels", shard=shard, sample_tokens=[s.token for s in samples]) as st:
            A.put(st, "point_offsets", off)
            A.put(st, "label", lab)
            A.put(st, "confidence", (lab > 0).astype(np.float32))
            A.put(st, "instance_id", np.zeros(g.size))
            A.put(st, "candidate_mask", np.where(lab > 0, candidate_bit(lab), candidate_bit(np.maximum(g, 1)) | candidate_bit(np.full(g.size, 16))))
            A.put(st, "source", np.where(lab > 0, 1, 3))
            A.put(st, "round", np.zeros(g.size))
    return m, res


def evaluate(m, res, network, devkit_dir, confusion_path=None, cfg=None):
    """evaluate_shard on every shard (network on val, full supervision = perfect, pseudo-labels on
    train), then the merge with the devkit cross-check of the val shards."""
    files = []
    for s in m.shards:
        val = m.split_of(s) == "val"
        stores = {"network": {"0": str(res / "predict" / network / f"{s}.zarr")}}
        if val:
            stores["network"]["full"] = str(res / "predict" / "perfect" / f"{s}.zarr")
        else:
            stores["pseudolabels"] = {"0": str(res / "pseudolabels" / f"{s}.zarr")}
        files.append(evaluate_shard(res / "manifest.json", s, stores, {"evaluate": cfg or {}}))
    val = [s for s in m.shards if m.split_of(s) == "val"]
    return merge(res / "manifest.json", files, val, {"evaluate": cfg or {}}, final_round=0,
                 network_stores={s: str(res / "predict" / network / f"{s}.zarr") for s in val},
                 devkit_dir=devkit_dir, confusion_path=confusion_path)


def test_ground_truth_scores_one_and_devkit_agrees(run, tmp_path):
    m, res = run
    metrics = evaluate(m, res, "perfect", tmp_path / "devkit", tmp_path / "cm.npz")
    out = metrics["evaluation"]
    net = out["network"]
    assert net["miou"] == pytest.approx(1.0) and net["accuracy"] == 1.0
    assert out["devkit_status"] == "agrees" and out["max_abs_diff"] <= 1e-6
    assert out["devkit"]["miou"] == pytest.approx(1.0)
    # semantic truth, but instances from clustering: SQ / RQ below 1 are possible, stuff is exact
    assert net["pq_stuff"] == pytest.approx(np.mean([1.0 if net["iou_per_class"][c] is not None else 0.0
                                                      for c in NUSCENES16.classes if c not in NUSCENES16.things]))
    pl = metrics["pseudolabels"]
    assert pl["precision"] == 1.0 and 0.45 < pl["labelled_share"] < 0.55
    assert pl["candidate_contains_truth"] == 1.0 and pl["mean_candidate_set_size"] <= 2.0
    assert set(pl["by_source"]) == {"click", "candidates"}
    assert out["rounds"][0]["pseudolabels"]["precision"] == 1.0
    assert metrics["training"]["ratio_to_full"] == pytest.approx(1.0)
    assert out["headline"][0]["share_of_full"] == pytest.approx(1.0)
    with np.load(tmp_path / "cm.npz") as z:
        assert z["network_r0"].shape == (17, 17) and np.trace(z["network_r0"][1:, 1:]) == z["network_r0"][1:, 1:].sum()


def test_summary_key_evaluation_has_the_acceptance_keys(run, tmp_path):
    m, res = run
    import json

    (tmp_path / "metrics.json").write_text(json.dumps(evaluate(m, res, "noisy", tmp_path / "devkit")))
    (tmp_path / "export.json").write_text(json.dumps({"kind": "export", "source": "network", "formats": ["nuscenes"],
                                                      "samples": {"nuscenes": 6}}))
    summary = build_summary({}, str(tmp_path / "metrics.json"), [str(tmp_path / "export.json")])
    s = summary["evaluation"]
    for key in ("miou", "iou_per_class", "pq", "sq", "rq", "pq_things", "pq_stuff", "devkit", "max_abs_diff"):
        assert key in s, key
    assert 0.2 < s["miou"] < 0.9 and set(s["iou_per_class"]) == set(NUSCENES16.classes)
    assert s["max_abs_diff"] <= 1e-6 and s["devkit"]["pq"] == pytest.approx(s["pq"], abs=1e-6)
    assert s["share_of_full"] == pytest.approx(s["miou"])  # full supervision here is perfect
    assert s["exports"]["network"]["samples"] == {"nuscenes": 6}
    t = summary["training"]
    assert t["miou"] == s["miou"] and t["ratio_to_full"] == pytest.approx(s["miou"]) and len(t["miou_rounds"]) == 1


def test_point_count_mismatch_names_store_and_sample(run, tmp_path):
    m, res = run
    shard = next(s for s in m.shards if m.split_of(s) == "val")
    samples = m.shard_samples(shard)
    bad = tmp_path / f"{shard}.zarr"
    with A.write_store(bad, "predict", shard=shard, sample_tokens=[s.token for s in samples]) as st:
        A.put(st, "point_offsets", A.offsets_from_counts([5] * len(samples)))
        A.put(st, "pred", np.ones(5 * len(samples)))
        A.put(st, "logits", np.zeros((5 * len(samples), 16)))
        A.put(st, "features", np.zeros((5 * len(samples), 1)))
    with pytest.raises(EvaluationError, match=f"{bad}.*sample {samples[0].token} has 5 points"):
        evaluate_shard(res / "manifest.json", shard, {"network": {"0": str(bad)}})


def test_export_source_reads_back_equal(run, tmp_path):
    m, res = run
    stores = {s: res / "predict" / "noisy" / f"{s}.zarr" for s in m.shards}
    rec = export_source(res / "manifest.json", stores, "predict", tmp_path / "export", ["nuscenes", "semantickitti", "clusterlabel"], {})
    assert rec["samples"] == {"nuscenes": 6, "semantickitti": 6, "clusterlabel": 6}
    for shard in m.shards:
        g = A.open_store(stores[shard], "predict")
        off, pred = A.read(g, "point_offsets"), A.read(g, "pred")
        for i, s in enumerate(m.shard_samples(shard)):
            want = pred[off[i]:off[i + 1]]
            split = "mini_val" if s.split == "val" else "mini_train"
            got = E.read_lidarseg_bin(tmp_path / "export" / "nuscenes" / "lidarseg" / split / f"{s.lidar.token}_lidarseg.bin")
            assert np.array_equal(got, want)
            pan = E.read_panoptic_npz(tmp_path / "export" / "nuscenes" / "panoptic" / split / f"{s.lidar.token}_panoptic.npz")
            assert np.array_equal(pan // 1000, want)
            sem, inst = E.read_kitti_label(tmp_path / "export" / "semantickitti" / "sequences" / shard / "predictions" / f"{s.index:06d}.label")
            assert np.array_equal(sem, want) and np.array_equal(inst, pan % 1000)
    assert (tmp_path / "export" / "nuscenes" / "mini_val" / "submission.json").exists()


def test_semantickitti_run_uses_19_classes_and_skips_the_devkit(run, tmp_path):
    """The same world in SemanticKITTI layout: 19-class mIoU in semantic-kitti-api's convention, raw ids
    in the .label export, no devkit check and no cluster-label export (nuScenes classes only)."""
    from lidarlift.datasets import build_manifest
    from lidarlift.synth.kitti_writer import write_semantickitti

    m, _ = run
    write_semantickitti(m, tmp_path / "kitti")
    km = build_manifest({"dataroot": str(tmp_path / "kitti"), "format": "semantickitti", "label_space": "semantickitti19"})
    km.to_json(tmp_path / "manifest.json")
    stores = {}
    for shard in km.shards:
        samples = km.shard_samples(shard)
        gt = [point_truth(km, s).label.astype(np.int64) for s in samples]
        g = np.concatenate(gt)
        stores[shard] = tmp_path / "predict" / f"{shard}.zarr"
        with A.write_store(stores[shard], "predict", shard=shard, sample_tokens=[s.token for s in samples]) as st:
            A.put(st, "point_offsets", A.offsets_from_counts([x.size for x in gt]))
            A.put(st, "pred", np.where(g > 0, g, 1))
            A.put(st, "logits", np.zeros((g.size, 19)))
            A.put(st, "features", np.zeros((g.size, 1)))
    files = [evaluate_shard(tmp_path / "manifest.json", sh, {"network": {"0": str(p)}}) for sh, p in stores.items()]
    out = merge(tmp_path / "manifest.json", files, list(stores), {}, network_stores={k: str(v) for k, v in stores.items()},
                devkit_dir=tmp_path / "devkit")["evaluation"]
    net = out["network"]
    assert net["convention"] == "semantic-kitti-api" and len(net["iou_per_class"]) == 19
    present = [v for v in net["iou_per_class"].values() if v > 0]
    assert present and all(v == pytest.approx(1.0) for v in present)
    assert net["miou"] == pytest.approx(len(present) / 19)  # absent classes count as 0, as semantic-kitti-api does
    assert out["devkit_status"].startswith("skipped") and out["devkit"] is None
    rec = export_source(tmp_path / "manifest.json", stores, "predict", tmp_path / "export", ["semantickitti", "clusterlabel"], {})
    assert rec["skipped_formats"] == ["clusterlabel"]
    shard = km.shards[0]
    label = tmp_path / "export" / "semantickitti" / "sequences" / shard / "predictions" / "000000.label"
    sem, _ = E.read_kitti_label(label, raw_ids=True)
    want = A.read(A.open_store(stores[shard], "predict"), "pred")[:sem.size]
    assert np.array_equal(sem, want)
    raw = np.fromfile(label, dtype=np.uint32) & 0xFFFF
    assert set(np.unique(raw)) <= set(E.KITTI_LEARNING_MAP_INV.tolist())
