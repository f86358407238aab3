"""spconv's CPU wheel against a dense conv3d: the two measured defects (backward asks for a CUDA stream;
wrong rows and gradients with more than one thread, spconv#679) must stay fixed by
lidarlift.model.spconv_compat. Truth: a dense 3D convolution over the same occupied voxels."""
import pytest
import torch
import torch.nn.functional as F

from lidarlift.model import spconv_compat

spconv_compat.install()
import spconv.pytorch as spconv  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread (as training runs on the CPU); 2 cores shared by 2 test workers."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

D = 24


def _sparse_input(dtype, seed=0, c=4):
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(D, D, D, generator=g) < 0.15
    coords = occ.nonzero().int()
    idx = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], 1)
    feat = torch.randn(len(coords), c, generator=g, dtype=dtype)
    return coords.long(), idx, feat


def _dense(coords, feat):
    vol = torch.zeros(D, D, D, feat.shape[1], dtype=feat.dtype)
    vol = vol.index_put((coords[:, 0], coords[:, 1], coords[:, 2]), feat)
    return vol.permute(3, 0, 1, 2)[None]


def _gather(out, coords):
    out = out[0].permute(1, 2, 3, 0)
    return out[coords[:, 0], coords[:, 1], coords[:, 2]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["subm", "strided", "strided3", "inverse"])
def test_spconv_cpu_matches_dense_conv3d_with_two_threads(kind, dtype):
    """Forward rows and both gradients equal a dense conv3d's, with 2 intra-op threads (the setting
    that corrupts spconv 2.3.8 without the workaround), and backward runs on a CPU-only torch."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    coords, idx, feat = _sparse_input(dtype)
    c = feat.shape[1]
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    f_sp = feat.clone().requires_grad_(True)
    f_dn = feat.clone().requires_grad_(True)
    x = spconv.SparseConvTensor(f_sp, idx, [D] * 3, 1)
    if kind == "subm":
        conv = spconv.SubMConv3d(c, 5, 3, padding=1, bias=False).to(dtype)
        y = conv(x)
        out_coords = coords
        w = conv.weight.detach().clone().permute(0, 4, 1, 2, 3).contiguous().requires_grad_(True)  # KRSC -> OIDHW
        y_dn = _gather(F.conv3d(_dense(coords, f_dn), w, padding=1), out_coords)
    elif kind in ("strided", "strided3"):
        k, pad = (2, 0) if kind == "strided" else (3, 1)
        conv = spconv.SparseConv3d(c, 5, k, stride=2, padding=pad, bias=False).to(dtype)
        y = conv(x)
        out_coords = y.indices[:, 1:].long()
        w = conv.weight.detach().clone().permute(0, 4, 1, 2, 3).contiguous().requires_grad_(True)
        y_dn = _gather(F.conv3d(_dense(coords, f_dn), w, stride=2, padding=pad), out_coords)
    else:  # inverse of a stride-2 conv: back onto the input voxels (what the UNet decoder does)
        down = spconv.SparseConv3d(c, c, 2, stride=2, bias=False, indice_key="d").to(dtype)
        with torch.no_grad():
            down.weight.fill_(1.0)
        conv = spconv.SparseInverseConv3d(c, 5, 2, bias=False, indice_key="d").to(dtype)
        mid = down(x)
        y = conv(mid)
        assert torch.equal(y.indices, idx)
        out_coords = coords
        w = conv.weight.detach().clone().permute(4, 0, 1, 2, 3).contiguous().requires_grad_(True)  # KRSC -> in, out, k
        mid_dn = F.conv3d(_dense(coords, f_dn), torch.ones(c, c, 2, 2, 2, dtype=dtype), stride=2)
        y_dn = _gather(F.conv_transpose3d(mid_dn, w, stride=2), out_coords)
    grad_out = torch.randn(y.features.shape, dtype=dtype)
    (y.features * grad_out).sum().backward()
    (y_dn * grad_out).sum().backward()
    assert torch.allclose(y.features, y_dn, **tol), "forward rows differ from dense conv3d"
    assert torch.allclose(f_sp.grad, f_dn.grad, **tol), "input gradients differ from dense conv3d"
    w_grad = w.grad.permute(0, 2, 3, 4, 1) if kind != "inverse" else w.grad.permute(1, 2, 3, 4, 0)
    assert torch.allclose(conv.weight.grad, w_grad, **tol), "weight gradients differ from dense conv3d"
    assert torch.get_num_threads() == 2, "the caller's thread count must be restored after spconv calls"


def test_stream_getter_is_patched_on_cpu_only_torch():
    """Where torch has no CUDA the stream getter spconv calls in backward returns 0 instead of raising."""
    from spconv.pytorch import ops

    assert spconv_compat.installed()
    if not torch.cuda.is_available():
        assert ops.get_current_stream() == 0
    assert getattr(ops.indice_conv, "__lidarlift_single_threaded__", False)


def test_unet_forward_and_backward_equal_at_one_and_two_threads():
    """The whole network gives the same logits and gradients whatever the caller's thread count."""
    from lidarlift.model.toyscene import make_sweep
    from lidarlift.model.unet import UNetConfig, build_model

    sweep = make_sweep(3, beams=16, azimuths=200)
    pts = torch.from_numpy(sweep.points)
    batch = torch.zeros(len(pts), dtype=torch.long)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = build_model(UNetConfig.from_config(dict(channels=[8, 16, 32], voxel_size=0.3), num_classes=16))
        logits, _ = model(pts, batch, 1)
        logits.square().mean().backward()
        results.append((logits.detach(), model.stem[0][0].weight.grad.clone()))
    torch.set_num_threads(2)
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)
