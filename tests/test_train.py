"""Training: the loss falls and a tiny scene is overfit; a killed run resumes to the same weights; DDP
on CPU (gloo, 2 processes); bad input stops with a clear error; predictions and the summary.

Data: a toy world of ray-cast sweeps (lidarlift.model.toyscene) with exact per-point truth, and
pseudo-label stores made from that truth (until the pseudo-label stage's fixture is used)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lidarlift.artifacts import open_store, read
from lidarlift.groundtruth import point_truth
from lidarlift.model.data import (AugmentConfig, SweepDataset, TrainingDataError, check_supervision, groundtruth_refs,
                                  pseudolabel_refs)
from lidarlift.model.toyscene import simulated_pseudolabels, write_pseudolabel_store, write_toy_world
from lidarlift.model.train import (CheckpointError, NonFiniteLossError, TrainConfig, load_model, run_training,
                                   torchrun_command, train)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread (as training runs on the CPU); 2 cores shared by 2 test workers."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

SCENES = (("scene-0061", "train"), ("scene-0553", "train"), ("scene-0103", "val"))
TINY = {"channels": [8, 16, 32], "voxel_size": 0.4}
TRAIN = {"epochs": 2, "batch_size": 2, "lr": 0.02, "warmup_steps": 0, "model": TINY}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toyworld")
    manifest = write_toy_world(root / "world", SCENES, sweeps_per_scene=2, beams=16, azimuths=240)
    stores = {}
    for shard, split in SCENES:
        if split != "train":
            continue
        arrays = [simulated_pseudolabels(point_truth(manifest, s).label, seed=i) for i, s in enumerate(manifest.shard_samples(shard))]
        stores[shard] = str(root / "pseudolabels" / "r0" / f"{shard}.zarr")
        write_pseudolabel_store(stores[shard], manifest, shard, arrays)
    return {"root": root, "manifest": manifest, "manifest_path": str(root / "world" / "manifest.json"), "stores": stores}


def spec_for(toy, out, **overrides):
    spec = {"train": dict(TRAIN), "label_space": "nuscenes16", "manifest": toy["manifest_path"], "round": 0,
            "label_source": "pseudolabels", "stores": toy["stores"], "shards": list(toy["stores"]),
            "model": str(out / "model.pt"), "metrics": str(out / "metrics.json"), "out_dir": str(out),
            "tensorboard": str(out / "tb"), "threads": 1}
    spec.update(overrides)
    return spec


def test_tiny_training_decreases_loss_and_overfits_a_scene(toy):
    """One sweep, no augmentation, 40 steps: the loss falls and the training points are fit (> 90%)."""
    m = toy["manifest"]
    refs = groundtruth_refs(m, ["scene-0061"])[:1]
    ds = SweepDataset(m, refs, 16, augment=None)
    cfg = TrainConfig.from_config({**TRAIN, "epochs": 40, "batch_size": 1, "lr": 0.03, "schedule": "constant",
                                 "loss": {"lovasz_weight": 0.0}},
                                num_classes=16)
    result = train(cfg, ds, toy["root"] / "overfit", threads=1)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.15 * losses[0]
    item = ds[0]
    with torch.no_grad():
        logits, _ = result.model(item["points"], torch.zeros(len(item["points"]), dtype=torch.long), 1)
    label = item["label"].numpy()
    acc = (logits.argmax(1).numpy() + 1 == label)[label > 0].mean()
    assert acc > 0.9, f"training accuracy {acc:.3f} after overfitting one sweep"


def _start_spec(spec_path, env=None):
    return subprocess.Popen([sys.executable, "-m", "lidarlift.model.train", str(spec_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _finish(proc):
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_killed_run_resumes_to_the_same_weights(toy, tmp_path):
    """SIGKILL right after epoch 1's checkpoint, then a fresh process resumes: the final weights equal
    an uninterrupted run's."""
    specs = {}
    for name in ("straight", "killed"):
        out = tmp_path / name
        out.mkdir()
        spec = spec_for(toy, out, tensorboard=None, train={**TRAIN, "epochs": 3})
        specs[name] = out / "spec.json"
        specs[name].write_text(json.dumps(spec))
    straight = _start_spec(specs["straight"])  # the two first runs side by side
    killed = _finish(_start_spec(specs["killed"], {"LIDARLIFT_TEST_KILL_AFTER_EPOCH": "1"}))
    assert killed.returncode == -9, "the run was meant to die by SIGKILL after epoch 1"
    assert (tmp_path / "killed" / "checkpoint.pt").exists() and not (tmp_path / "killed" / "model.pt").exists()
    resumed = _finish(_start_spec(specs["killed"]))
    straight = _finish(straight)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs"] == 3
    speed = metrics["throughput"]  # epochs 2 and 3 (the first pays kernel selection and the upload)
    assert speed["epochs_timed"] == 2 and speed["steps_timed"] == 2 * 2
    assert speed["points_per_step"] == pytest.approx(sum(h["points"] for h in metrics["history"][1:]) / 4)
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=False)["state_dict"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), f"weights {k} differ after resume"


def test_ddp_on_cpu_with_gloo_and_two_processes(toy, tmp_path):
    """torchrun with 2 CPU processes (gloo): each takes half the sweeps per epoch, both end with the same
    weights (gradients are averaged), rank 0 writes one model."""
    out = tmp_path / "ddp"
    out.mkdir()
    spec = spec_for(toy, out, tensorboard=None, train={**TRAIN, "batch_size": 1})
    (out / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    proc = subprocess.run(torchrun_command(out / "spec.json", 2), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["steps"] == 2 * 2  # 4 sweeps / 2 ranks / batch 1 = 2 steps per epoch, 2 epochs
    assert metrics["ddp_weights_in_sync"] is True, "the two processes must end with the same weights"
    model, meta = load_model(out / "model.pt", num_classes=16)
    assert meta["label_space"] == "nuscenes16"


def test_run_training_and_predict(toy, tmp_path):
    """A round on pseudo-label stores, the baseline on truth, predictions of every shard into valid
    predict stores, and the jobs' operational metrics."""
    from lidarlift.model.predict import predict_shard

    metrics = []
    for rnd, source in ((0, "pseudolabels"), ("full", "ground_truth")):
        out = tmp_path / str(rnd)
        metrics.append(run_training(spec_for(toy, out, round=rnd, label_source=source)))
        assert (out / "tb").is_dir() and any((out / "tb").iterdir()), "TensorBoard events missing"
        for shard, _ in SCENES:
            store = tmp_path / "predict" / str(rnd) / f"{shard}.zarr"
            metrics.append(predict_shard(out / "model.pt", toy["manifest_path"], shard, store, round=rnd,
                                         label_space="nuscenes16", metrics_path=tmp_path / f"{rnd}-{shard}.json"))
            g = open_store(store, "predict")
            logits, feats, pred = read(g, "logits"), read(g, "features"), read(g, "pred")
            n = sum(len(np.fromfile(toy["manifest"].resolve(s.lidar.path), np.float32)) // 5
                    for s in toy["manifest"].shard_samples(shard))
            assert logits.shape == (n, 16) and logits.dtype == np.float16
            assert feats.shape == (n, 8) and feats.dtype == np.float16
            assert pred.dtype == np.uint8 and pred.min() >= 1 and pred.max() <= 16
            assert np.array_equal(pred, logits.astype(np.float32).argmax(1) + 1)
            assert read(g, "point_offsets")[-1] == n
    train_metrics = [m for m in metrics if m["kind"] == "train"]
    assert [m["round"] for m in train_metrics] == [0, "full"]
    for m in train_metrics:  # operational figures only: quality is lidarlift.evaluate's
        assert m["throughput"]["points_per_s"] > 0 and m["throughput"]["ms_per_step"] > 0
        assert "pseudolabels" not in m and "confusion" not in m


# ------------------------------------------------------------------------------------------ bad input

def test_empty_shard_is_a_clear_error(toy, tmp_path):
    m = toy["manifest"]
    path = tmp_path / "empty.zarr"
    write_pseudolabel_store(path, m, "scene-0061", [(np.zeros(0, np.uint8), np.zeros(0, np.uint32), np.zeros(0, np.float32))] * 2)
    with pytest.raises(TrainingDataError, match="scene-0061.*empty"):
        pseudolabel_refs(m, {"scene-0061": path})


def test_all_ignore_shard_is_a_clear_error_or_skipped(toy, tmp_path):
    m = toy["manifest"]
    path = tmp_path / "ignore.zarr"
    arrays = []
    for s in m.shard_samples("scene-0061"):
        n = len(point_truth(m, s).label)
        arrays.append((np.zeros(n, np.uint8), np.full(n, (1 << 16) - 1, np.uint32), np.zeros(n, np.float32)))
    write_pseudolabel_store(path, m, "scene-0061", arrays)
    refs = pseudolabel_refs(m, {"scene-0061": path, "scene-0553": toy["stores"]["scene-0553"]})
    with pytest.raises(TrainingDataError, match="scene-0061.*every point is ignore"):
        check_supervision(SweepDataset(m, refs, 16))
    ds = SweepDataset(m, refs, 16)
    stats = check_supervision(ds, policy="skip")
    assert stats.skipped_shards[0]["shard"] == "scene-0061" and {r.shard for r in ds.refs} == {"scene-0553"}
    only_ignore = SweepDataset(m, pseudolabel_refs(m, {"scene-0061": path}), 16)
    with pytest.raises(TrainingDataError, match="no training shard has any supervision"):
        check_supervision(only_ignore, policy="skip")


def test_store_of_other_keyframes_is_refused(toy):
    with pytest.raises(TrainingDataError, match="not the manifest's keyframes"):
        pseudolabel_refs(toy["manifest"], {"scene-0553": toy["stores"]["scene-0061"]})


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    run_training(spec_for(toy, out, train={**TRAIN, "epochs": 1}, tensorboard=None))
    return out / "model.pt"


def test_checkpoint_of_other_architecture_or_class_count_is_refused(trained, tmp_path):
    model, meta = load_model(trained, expect={**TINY, "num_classes": 16}, num_classes=16)
    with pytest.raises(CheckpointError, match="another architecture.*channels"):
        load_model(trained, expect={**TINY, "channels": [8, 16, 32, 64], "num_classes": 16})
    with pytest.raises(CheckpointError, match="predicts 16 classes.*19"):
        load_model(trained, num_classes=19)
    payload = torch.load(trained, weights_only=False)
    payload["state_dict"] = {k: v for k, v in payload["state_dict"].items() if "classifier" not in k}
    torch.save(payload, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(tmp_path / "cut.pt")


def test_corrupted_checkpoint_is_a_clear_error(trained, toy, tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(trained.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_model(bad)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a lidarlift segmentation model"):
        load_model(tmp_path / "other.pt")
    out = tmp_path / "resume"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="checkpoint.*corrupted"):
        run_training(spec_for(toy, out, tensorboard=None))


def test_non_finite_loss_stops_naming_step_and_batch(toy, tmp_path):
    """A sweep with NaN intensities makes the loss NaN at its first batch: the error names it."""
    m = toy["manifest"]
    ds = SweepDataset(m, groundtruth_refs(m, ["scene-0061"]), 16, augment=None)
    bad = ds.sweep(1)
    bad.points[:, 3] = np.nan
    cfg = TrainConfig.from_config({**TRAIN, "batch_size": 1}, num_classes=16)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+ \(batch \d+ of the epoch, sweeps scene-0061-1\)"):
        train(cfg, ds, tmp_path, threads=1)


def test_augmentation_is_seeded_per_epoch_and_sweep(toy):
    m = toy["manifest"]
    ds = SweepDataset(m, groundtruth_refs(m, ["scene-0061"]), 16, augment=AugmentConfig.from_config(), seed=3)
    a = ds[0]["points"].numpy()
    assert np.array_equal(a, ds[0]["points"].numpy())
    ds.set_epoch(1)
    b = ds[0]["points"].numpy()
    assert not np.allclose(a[:, :3], b[:, :3])
    assert np.allclose(np.linalg.norm(a[:, :2], axis=1) / np.linalg.norm(ds.sweep(0).points[:, :2], axis=1),
                       np.linalg.norm(a[:, :2], axis=1)[0] / np.linalg.norm(ds.sweep(0).points[:1, :2]), atol=0.02)


def test_resident_batches_equal_the_data_loader_batches(toy):
    """ResidentSweeps (sweeps kept on the training device, batched there) gives the DataLoader path's
    batches exactly on the CPU: same point subset, augmentation, labels and sweep index."""
    from lidarlift.model.data import ResidentSweeps, collate_sweeps

    m = toy["manifest"]
    ds = SweepDataset(m, pseudolabel_refs(m, toy["stores"]), 16, augment=AugmentConfig.from_config(), seed=5, max_points=2000)
    resident = ResidentSweeps(ds, "cpu")
    for epoch in (0, 3):
        ds.set_epoch(epoch)
        want = collate_sweeps([ds[i] for i in (2, 0, 3)])
        got = resident.batch([2, 0, 3], epoch)
        assert got["counts"] == want["counts"] == [2000, 2000, 2000] and got["tokens"] == want["tokens"]
        for k in ("points", "batch", "label", "candidate_mask", "confidence"):
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    sw = ds.sweep(0)  # the subset is of the sweep's own rows: labels travel with their points
    full = resident.batch([0], 0)
    assert set(full["label"].tolist()) <= set(sw.label.tolist())


def test_cached_and_streamed_training_end_with_the_same_weights(toy, tmp_path):
    """train.cache true (batches made on the training device) and false (DataLoader with a worker)
    train to the same weights on the CPU; the epoch records count every point once."""
    m = toy["manifest"]
    results = {}
    for cache, workers in ((True, 0), (False, 1)):
        ds = SweepDataset(m, pseudolabel_refs(m, toy["stores"]), 16, augment=AugmentConfig.from_config(), seed=1, max_points=3000)
        cfg = TrainConfig.from_config({**TRAIN, "cache": cache, "workers": workers, "max_points": 3000}, num_classes=16)
        results[cache] = train(cfg, ds, tmp_path / str(cache), threads=1)
    a, b = results[True].model.state_dict(), results[False].model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights {k} differ between the resident and the DataLoader path"
    n = sum(min(3000, len(ds.sweep(i).points)) for i in range(len(ds)))
    assert [h["points"] for h in results[True].history] == [n, n]
    assert all(h["ms_per_step"] > 0 and h["points_per_s"] > 0 for h in results[True].history)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
def test_batch_loss_and_optimizer_step_never_wait_for_the_gpu(toy):
    """On CUDA, making a resident batch (subset, augmentation), the loss, backward, AMP scaling and the
    fused AdamW step run under torch.cuda.set_sync_debug_mode('error'): no host sync (the network's own
    syncs, torch.unique and spconv's pair counts, are outside this check)."""
    from lidarlift.model.data import ResidentSweeps
    from lidarlift.model.losses import SegmentationLoss

    m = toy["manifest"]
    ds = SweepDataset(m, pseudolabel_refs(m, toy["stores"]), 16, augment=AugmentConfig.from_config(), seed=0, max_points=2000)
    resident = ResidentSweeps(ds, "cuda")
    head = torch.nn.Linear(4, 16).cuda()
    crit = SegmentationLoss.from_config(16, {"class_weights": [1.0] * 16}).cuda()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda")
    resident.batch([0, 1], 0)  # first use: CUDA context, allocator, pinned-memory pool
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for epoch in range(3):
            batch = resident.batch([2, 0], epoch)
            with torch.autocast("cuda", dtype=torch.float16):
                logits = head(batch["points"])
            terms = crit(logits, batch["label"], batch["candidate_mask"], batch["confidence"])
            opt.zero_grad(set_to_none=True)
            scaler.scale(terms.total).backward()
            scaler.step(opt)
            scaler.update()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(terms.total).item()


def test_checkpoint_interval(toy, tmp_path, monkeypatch):
    """checkpoint_every_s 0 writes a checkpoint after every epoch; a long interval only after the last."""
    import lidarlift.model.train as train_module

    m = toy["manifest"]
    saved = []
    real = train_module._atomic_save
    monkeypatch.setattr(train_module, "_atomic_save", lambda payload, path: (saved.append(payload["epoch"]), real(payload, path)))
    for interval, want in ((0.0, [1, 2, 3]), (1e9, [3])):
        saved.clear()
        cfg = TrainConfig.from_config({**TRAIN, "epochs": 3, "checkpoint_every_s": interval}, num_classes=16)
        train(cfg, SweepDataset(m, groundtruth_refs(m, ["scene-0061"]), 16), tmp_path / str(interval), threads=1, resume=False)
        assert saved == want


def test_shard_splits_of_the_default_config():
    from lidarlift.config import load_config
    from lidarlift.model.layout import train_layout
    from lidarlift.shards import list_shards, shard_split

    cfg = load_config()
    splits = {s: shard_split(cfg, s) for s in list_shards(cfg)}
    assert sorted(s for s, sp in splits.items() if sp == "val") == ["scene-0103", "scene-0916"]
    assert sum(sp == "train" for sp in splits.values()) == 8
    layout = train_layout(cfg, list(splits))
    assert len(layout.train_shards) == 8 and layout.val_shards == ["scene-0103", "scene-0916"]
    assert (layout.gpus, layout.predict_gpus, layout.threads) == (0, 0, 1)
    gpu = train_layout({**cfg, "train": {**cfg["train"], "gpus": 4, "workers": 2}}, list(splits))
    assert (gpu.gpus, gpu.predict_gpus, gpu.threads) == (4, 1, 4)


def test_gpu_lease_sets_visible_devices_and_process_count(monkeypatch, tmp_path):
    """train.gpus = 2 on a host with 2 (simulated) GPUs: 2 processes, CUDA_VISIBLE_DEVICES = 0,1 inside
    the lease and restored after; train.gpus = 0: one CPU process."""
    from lidarlift.model.devices import leased_gpus

    monkeypatch.setenv("LIDARLIFT_NUM_GPUS", "2")
    monkeypatch.setenv("LIDARLIFT_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with leased_gpus(2) as n:
        assert n == 2 and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with leased_gpus(0) as n:
        assert n == 1


def test_gpu_config_validates_and_plans(tmp_path):
    """config/gpu.yaml layered over config/config.yaml (as --configfile does): it validates, asks for
    >= 200 keyframes, 0.1 % clicks and a MinkUNet-class network with the same schedule for the rounds and
    the baseline, and Snakemake plans the whole DAG with it (train and train_full on 1 GPU)."""
    import re
    import shutil
    from pathlib import Path

    import yaml

    from lidarlift.config import load_config
    from lidarlift.model.layout import train_layout
    from lidarlift.shards import list_shards

    repo = Path(__file__).resolve().parents[1]
    layer = yaml.safe_load((repo / "config" / "gpu.yaml").read_text())
    cfg = load_config(repo / "config" / "config.yaml", layer)
    assert cfg["synth"]["scenes"] * cfg["synth"]["samples_per_scene"] >= 200
    assert cfg["pseudolabels"]["clicks"]["share"] == 0.001
    tc = TrainConfig.from_config(cfg["train"], num_classes=16)
    assert tc.unet.channels == (32, 64, 128, 256) and tc.unet.blocks == 2 and tc.unet.voxel_size == 0.05
    layout = train_layout(cfg, list_shards(cfg))
    assert (len(layout.train_shards), len(layout.val_shards), layout.gpus) == (8, 2, 1)

    for name in ("Snakefile", "rules", "workflow", "config", "envs", "profiles", "report"):
        src = repo / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / name)
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--configfile", "config/gpu.yaml",
                           "--cores", "16", "--resources", "gpu=1"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    plan = proc.stdout + proc.stderr
    jobs = re.findall(r"^(?:local)?rule (\w+):$", plan, flags=re.M)
    rounds = cfg["em"]["rounds"]
    assert jobs.count("train") == rounds and jobs.count("train_full") == 1
    assert jobs.count("predict") == rounds * 10 and "results/gpu/train/full/model.pt" in plan


def test_training_bench_quick_mode_runs_on_cpu(tmp_path):
    """bench/bench_train_gpu.py --device cpu --quick: the isolated step, the loss alone, a real training job
    and a predict job run and are recorded side by side (no timing is asserted: speed is the bench's)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "train_gpu.json"
    cmd = [sys.executable, str(repo / "bench" / "bench_train_gpu.py"), "--device", "cpu", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=repo, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    r = json.loads(out.read_text())
    (iso,) = r["isolated"]
    assert iso["loss_finite"] and iso["points"] == 2 * 3000 and set(iso["host_phase_ms"]) >= {"encoder", "loss", "backward"}
    assert r["loss"]["lovasz_value"] == pytest.approx(r["loss"]["lovasz_dim0_scan_value"], abs=1e-5)
    assert r["job"]["sweeps"] == 4 and r["job"]["throughput"]["points_per_step"] == 2 * 3000
    assert r["comparison"]["isolated"] == iso["name"] and r["predict_job"]["points"] == 2 * 3000
