"""Integration with the synthetic world (fixture ``tiny_world``): train on pseudo-label stores of its
train split and on its ground truth, predict every shard, and check the predict store against what
the E-step reads (same keyframes and point counts as the pseudo-label stores, K logits, F features)."""
import numpy as np
import pytest
import torch

from lidarlift.artifacts import open_store, read
from lidarlift.datasets.readers import read_lidar
from lidarlift.groundtruth import point_truth
from lidarlift.model.predict import predict_shard
from lidarlift.model.toyscene import simulated_pseudolabels, write_pseudolabel_store
from lidarlift.model.train import run_training


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_train_and_predict_on_the_synthetic_world(tiny_world, tmp_path):
    from lidarlift.config import load_config
    from lidarlift.datasets import build_manifest

    cfg = load_config(None, {"dataset": {"kind": "existing", "dataroot": str(tiny_world)}})
    manifest = build_manifest(dict(cfg["dataset"], label_space=cfg["labels"]["space"]))
    manifest_path = tmp_path / "manifest.json"
    manifest.to_json(manifest_path)
    train_shards = [s for s in manifest.shards if manifest.split_of(s) == "train"]
    assert train_shards, "tiny_world has a train scene"
    stores = {}
    for shard in train_shards:
        arrays = [simulated_pseudolabels(point_truth(manifest, s).label, seed=i) for i, s in enumerate(manifest.shard_samples(shard))]
        stores[shard] = tmp_path / "pseudolabels" / f"{shard}.zarr"
        write_pseudolabel_store(stores[shard], manifest, shard, arrays)
    train_cfg = dict(cfg["train"], epochs=2, model=dict(cfg["train"]["model"], channels=[8, 16, 32], voxel_size=0.4))
    for rnd, source in ((0, "pseudolabels"), ("full", "ground_truth")):
        out = tmp_path / "train" / str(rnd)
        spec = {"train": train_cfg, "label_space": "nuscenes16", "manifest": str(manifest_path), "round": rnd,
                "label_source": source, "stores": {k: str(v) for k, v in stores.items()}, "shards": train_shards,
                "model": str(out / "model.pt"), "metrics": str(out / "metrics.json"), "out_dir": str(out),
                "tensorboard": None, "threads": 1}
        m = run_training(spec)
        assert m["sweeps"] == 2 * len(train_shards) and np.isfinite(m["final_loss"])
        for shard in manifest.shards:
            store = tmp_path / "predict" / str(rnd) / f"{shard}.zarr"
            stats = predict_shard(out / "model.pt", manifest_path, shard, store, round=rnd, label_space="nuscenes16", batch_size=2)
            assert stats["sweeps"] == len(manifest.shard_samples(shard))
            g = open_store(store, "predict")
            samples = manifest.shard_samples(shard)
            counts = [len(read_lidar(manifest.resolve(s.lidar.path), s.lidar.fmt)) for s in samples]
            assert g.attrs["sample_tokens"] == [s.token for s in samples]
            assert read(g, "point_offsets").tolist() == np.concatenate([[0], np.cumsum(counts)]).tolist()
            assert g["logits"].shape == (sum(counts), 16) and g["features"].shape == (sum(counts), 8)
            if shard in stores:  # the E-step's check: same rows as the pseudo-label store
                assert read(open_store(stores[shard], "pseudolabels"), "point_offsets").tolist() == read(g, "point_offsets").tolist()
