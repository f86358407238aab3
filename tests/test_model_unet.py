"""The sparse UNet: voxelization, output shapes, independence of point order and of batch mates."""
import numpy as np
import pytest
import torch

from lidarlift.model.toyscene import make_sweep
from lidarlift.model.unet import UNetConfig, build_model, scatter_mean, voxelize


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread (as training runs on the CPU); 2 cores shared by 2 test workers."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

CFG = UNetConfig.from_config(dict(channels=[8, 16, 32], voxel_size=0.3), num_classes=16)


def test_voxelize_groups_points_of_a_voxel_and_clamps_outside_points():
    cfg = UNetConfig.from_config(dict(voxel_size=0.5, point_range=[0, 0, 0, 4, 4, 4], channels=[4, 8]), num_classes=16)
    pts = torch.tensor([[0.1, 0.1, 0.1], [0.4, 0.2, 0.3], [0.6, 0.1, 0.1], [100.0, -3.0, 2.2], [3.9, 0.0, 2.4]])
    vox = voxelize(pts, torch.tensor([0, 0, 0, 0, 1]), 2, cfg)
    p2v = vox.point_to_voxel
    assert p2v[0] == p2v[1] and p2v[0] != p2v[2]
    assert vox.coords[p2v[0]].tolist() == [0, 0, 0, 0]
    assert vox.coords[p2v[3]].tolist() == [0, 7, 0, 4]  # clamped into the border voxel
    assert vox.coords[p2v[4]].tolist() == [1, 7, 0, 4]  # same cell, other sweep: another voxel
    assert len(vox.coords) == 4
    assert cfg.spatial_shape() == [8, 8, 8]
    means = scatter_mean(torch.arange(5.0).unsqueeze(1), p2v, len(vox.coords))
    assert means[p2v[0], 0].item() == pytest.approx(0.5)


def test_forward_shapes_and_point_order_equivariance():
    """Permuting the input points permutes the outputs (eval mode), for logits and features."""
    torch.manual_seed(0)
    model = build_model(CFG).eval()
    sw = make_sweep(1, beams=16, azimuths=200)
    pts = torch.from_numpy(sw.points)
    batch = torch.zeros(len(pts), dtype=torch.long)
    with torch.no_grad():
        logits, feats = model(pts, batch, 1)
        perm = torch.randperm(len(pts))
        logits_p, feats_p = model(pts[perm], batch, 1)
    assert logits.shape == (len(pts), 16) and feats.shape == (len(pts), CFG.feature_dim)
    assert torch.allclose(logits[perm], logits_p, atol=1e-4)
    assert torch.allclose(feats[perm], feats_p, atol=1e-4)


def test_sweeps_in_a_batch_do_not_see_each_other():
    """A sweep's outputs are the same alone or batched with another sweep (eval mode)."""
    torch.manual_seed(0)
    model = build_model(CFG).eval()
    a, b = (torch.from_numpy(make_sweep(s, beams=16, azimuths=200).points) for s in (2, 3))
    with torch.no_grad():
        alone, _ = model(a, torch.zeros(len(a), dtype=torch.long), 1)
        both, _ = model(torch.cat([a, b]), torch.cat([torch.zeros(len(a)), torch.ones(len(b))]).long(), 2)
    assert torch.allclose(alone, both[: len(a)], atol=1e-4)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"config key train\.model\.voxel_size: 0 is less than or equal to the minimum"):
        UNetConfig.from_config({"voxel_size": 0}, num_classes=16)
    with pytest.raises(ValueError, match=r"config key train\.model\.widths: unknown key"):
        UNetConfig.from_config({"widths": [1]}, num_classes=16)
    with pytest.raises(ValueError, match=r"config key train\.model\.point_range"):
        UNetConfig.from_config({"point_range": [0, 0, 0, -1, 1, 1]}, num_classes=16)
    with pytest.raises(ValueError, match=r"config key train\.model: the network's dict needs num_classes"):
        UNetConfig.from_dict({"voxel_size": 0.2})
    arch = UNetConfig.from_config({}, num_classes=19).to_dict()  # a checkpoint's arch round-trips
    assert UNetConfig.from_dict(arch) == UNetConfig.from_config({}, num_classes=19)


def test_xyz_only_input():
    torch.manual_seed(0)
    model = build_model(UNetConfig.from_config(dict(channels=[8, 16], voxel_size=0.5, in_features=3), num_classes=16)).eval()
    pts = torch.from_numpy(make_sweep(4, beams=8, azimuths=100).points)
    with torch.no_grad():
        logits, _ = model(pts, torch.zeros(len(pts), dtype=torch.long), 1)
    assert torch.isfinite(logits).all()
    assert np.isfinite(logits.numpy()).all()
