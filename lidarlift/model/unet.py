"""A sparse-conv UNet for LiDAR semantic segmentation (MinkUNet / SPVCNN class) on ``spconv.pytorch``.

Points -> voxels (mean of the point features of each occupied voxel) -> residual sparse UNet
(submanifold 3x3x3 blocks, stride-2 down- and inverse up-convolutions, skip concatenation) ->
voxel features devoxelized to the points (nearest voxel) and fused with a per-point MLP branch
(SPVCNN's point branch), -> per-point class logits.

Input features per point: x, y, z (lidar frame, metres) and intensity. Output per point: logits
(P, K) for classes 1..K (column ``c - 1`` is class ``c``) and the fused features (P, F) that the
E-step uses for prototypes. The architecture is fixed by :class:`UNetConfig`; checkpoints carry it
so a checkpoint of another architecture or class count is refused with a clear message.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from lidarlift.model import spconv_compat

spconv_compat.install()
import spconv.pytorch as spconv  # noqa: E402 - after the CPU workarounds are installed


@dataclass(frozen=True)
class UNetConfig:
    """Everything that fixes the network's parameters and its voxel grid.

    ``channels``: encoder widths, one per level (level 0 at the voxel size, each next level at
    twice the voxel size); the decoder mirrors them. ``blocks``: residual blocks per level.
    ``point_range``: (x0, y0, z0, x1, y1, z1) metres; points outside are clamped into the boundary
    voxels (they still get a prediction). ``intensity_scale``: intensity is divided by it.
    """

    num_classes: int  # the label space's classes (labels.space), not a train.model key
    in_features: int
    channels: tuple[int, ...]
    blocks: int
    voxel_size: float
    point_range: tuple[float, ...]
    intensity_scale: float
    point_branch: bool

    @staticmethod
    def from_config(cfg: dict[str, Any] | None, num_classes: int) -> "UNetConfig":
        """From the ``train.model`` section (missing keys take the schema's defaults) and the label
        space's class count; bad values raise ConfigError naming the config key."""
        from lidarlift.config import typed

        cfg = typed(UNetConfig, "train.model", cfg, extra={"num_classes": num_classes})
        cfg.validate()
        return cfg

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "UNetConfig":
        """From :meth:`to_dict`'s form (a checkpoint's ``arch``): the ``train.model`` keys plus ``num_classes``."""
        from lidarlift.config import ConfigError

        d = dict(d)
        if "num_classes" not in d:
            raise ConfigError(["config key train.model: the network's dict needs num_classes (the label space's classes) "
                               "beside the train.model keys"])
        n = d.pop("num_classes")
        return UNetConfig.from_config(d, n)

    def validate(self) -> None:
        """What the schema cannot say (num_classes is no config key; point_range is ordered)."""
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"train.model num_classes (the label space's classes) must be an integer >= 2, got {self.num_classes!r}")
        if any(self.point_range[i] >= self.point_range[i + 3] for i in range(3)):
            raise ValueError(f"config key train.model.point_range must be (x0, y0, z0, x1, y1, z1) with x0 < x1 etc., got {list(self.point_range)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["point_range"] = list(self.point_range)
        return d

    @property
    def feature_dim(self) -> int:
        """F: width of the per-point features."""
        return self.channels[0]

    @property
    def levels(self) -> int:
        return len(self.channels)

    def spatial_shape(self) -> list[int]:
        """Voxel grid (X, Y, Z), padded to a multiple of 2^(levels - 1) so every level aligns."""
        m = 2 ** (self.levels - 1)
        out = []
        for i in range(3):
            n = int(round((self.point_range[i + 3] - self.point_range[i]) / self.voxel_size))
            out.append(max(m, -(-n // m) * m))
        return out


@dataclass
class Voxels:
    """A batch of points on the voxel grid.

    ``coords``: (V, 4) int32 (batch, x, y, z); ``point_to_voxel``: (P,) int64 index of each point's
    voxel; ``batch_size``: number of sweeps.
    """

    coords: torch.Tensor
    point_to_voxel: torch.Tensor
    batch_size: int


def voxelize(points: torch.Tensor, batch: torch.Tensor, batch_size: int, cfg: UNetConfig) -> Voxels:
    """Assign every point to a voxel, on the points' device.

    points: (P, >=3) float, lidar frame metres; batch: (P,) int64 sweep index 0..batch_size-1. The grid
    bounds enter as Python numbers (a small host tensor copied to the GPU would wait for queued work);
    the one host sync is ``torch.unique``'s output size, which the sparse convolutions need anyway.
    """
    shape = cfg.spatial_shape()
    cols = []
    for axis in range(3):
        g = torch.floor((points[:, axis] - cfg.point_range[axis]) / cfg.voxel_size).long()
        cols.append(g.clamp_(0, shape[axis] - 1))
    key = ((batch.long() * shape[0] + cols[0]) * shape[1] + cols[1]) * shape[2] + cols[2]
    uniq, inverse = torch.unique(key, return_inverse=True)
    z = uniq % shape[2]
    rest = uniq // shape[2]
    y = rest % shape[1]
    rest = rest // shape[1]
    x = rest % shape[0]
    b = rest // shape[0]
    coords = torch.stack([b, x, y, z], 1).int()
    return Voxels(coords=coords.contiguous(), point_to_voxel=inverse, batch_size=batch_size)


def scatter_mean(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """(n, C) mean of the rows of ``values`` (P, C) grouped by ``index`` (P,) int64."""
    out = torch.zeros(n, values.shape[1], dtype=values.dtype, device=values.device)
    out.index_add_(0, index, values)
    count = torch.zeros(n, dtype=values.dtype, device=values.device)
    count.index_add_(0, index, torch.ones_like(index, dtype=values.dtype))
    return out / count.clamp(min=1).unsqueeze(1)


class ResidualBlock(spconv.SparseModule):
    """Two submanifold 3x3x3 convolutions with batch norm and a (projected) identity shortcut."""

    def __init__(self, cin: int, cout: int, key: str):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(cin, cout, 3, padding=1, bias=False, indice_key=key)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = spconv.SubMConv3d(cout, cout, 3, padding=1, bias=False, indice_key=key)
        self.bn2 = nn.BatchNorm1d(cout)
        self.shortcut = nn.Identity() if cin == cout else nn.Sequential(nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = self.shortcut(x.features)
        out = self.conv1(x)
        out = out.replace_feature(self.act(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(self.act(self.bn2(out.features) + identity))


def _conv_bn_relu(conv: spconv.SparseModule, c: int) -> spconv.SparseSequential:
    return spconv.SparseSequential(conv, nn.BatchNorm1d(c), nn.ReLU(inplace=True))


class SparseUNet(nn.Module):
    """Sparse residual UNet with an SPVCNN point branch. See the module docstring."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        ch, nb = list(cfg.channels), cfg.blocks
        self.input_norm = nn.BatchNorm1d(cfg.in_features)
        self.stem = spconv.SparseSequential(
            _conv_bn_relu(spconv.SubMConv3d(cfg.in_features, ch[0], 3, padding=1, bias=False, indice_key="subm0"), ch[0]),
            *[ResidualBlock(ch[0], ch[0], "subm0") for _ in range(nb)],
        )
        self.down = nn.ModuleList()
        self.encoder = nn.ModuleList()
        for i in range(1, cfg.levels):
            self.down.append(_conv_bn_relu(spconv.SparseConv3d(ch[i - 1], ch[i - 1], 2, stride=2, bias=False, indice_key=f"down{i}"), ch[i - 1]))
            self.encoder.append(spconv.SparseSequential(
                *[ResidualBlock(ch[i - 1] if b == 0 else ch[i], ch[i], f"subm{i}") for b in range(nb)]))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(cfg.levels - 1, 0, -1):  # decoder level i -> i-1
            self.up.append(_conv_bn_relu(spconv.SparseInverseConv3d(ch[i], ch[i - 1], 2, bias=False, indice_key=f"down{i}"), ch[i - 1]))
            self.decoder.append(spconv.SparseSequential(
                *[ResidualBlock(2 * ch[i - 1] if b == 0 else ch[i - 1], ch[i - 1], f"subm{i - 1}") for b in range(nb)]))
        f = cfg.feature_dim
        self.point_mlp = nn.Sequential(nn.Linear(cfg.in_features, f, bias=False), nn.BatchNorm1d(f), nn.ReLU(inplace=True),
                                       nn.Linear(f, f, bias=False), nn.BatchNorm1d(f), nn.ReLU(inplace=True)) if cfg.point_branch else None
        self.fuse = nn.Sequential(nn.Linear(f, f, bias=False), nn.BatchNorm1d(f), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(f, cfg.num_classes)

    def point_features(self, points: torch.Tensor) -> torch.Tensor:
        """(P, in_features) normalised network input from (P, >=4) x, y, z, intensity."""
        feats = points[:, : self.cfg.in_features].clone()
        if self.cfg.in_features >= 4:
            feats[:, 3] = feats[:, 3] / self.cfg.intensity_scale
        return self.input_norm(feats)

    def forward(self, points: torch.Tensor, batch: torch.Tensor, batch_size: int,
                mark: Callable[[str], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """points: (P, >=4) float32 x, y, z, intensity (lidar frame); batch: (P,) int64 sweep index.

        Returns logits (P, K) and features (P, F), in the dtype autocast gives (float32 without it).
        ``mark(phase)`` is called after each phase (voxelize, encoder, decoder, head), for benchmarks.
        """
        mark = mark or _no_mark
        vox = voxelize(points, batch, batch_size, self.cfg)
        pfeat = self.point_features(points)
        vfeat = scatter_mean(pfeat.float(), vox.point_to_voxel, len(vox.coords)).to(pfeat.dtype)
        x = spconv.SparseConvTensor(vfeat, vox.coords, self.cfg.spatial_shape(), batch_size)
        mark("voxelize")
        x = self.stem(x)
        skips = [x]
        for down, enc in zip(self.down, self.encoder):
            x = enc(down(x))
            skips.append(x)
        mark("encoder")
        for j, (up, dec) in enumerate(zip(self.up, self.decoder)):
            skip = skips[-2 - j]
            x = up(x)
            x = x.replace_feature(torch.cat([x.features, skip.features.to(x.features.dtype)], 1))
            x = dec(x)
        mark("decoder")
        point = x.features[vox.point_to_voxel]
        if self.point_mlp is not None:
            point = point + self.point_mlp(pfeat).to(point.dtype)
        features = self.fuse(point)
        logits = self.classifier(features)
        mark("head")
        return logits, features


def _no_mark(phase: str) -> None:
    return None


def build_model(cfg: UNetConfig | dict[str, Any]) -> SparseUNet:
    """The network for a config (a :class:`UNetConfig` or its dict form)."""
    if isinstance(cfg, dict):
        cfg = UNetConfig.from_dict(cfg)
    return SparseUNet(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
