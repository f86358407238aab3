"""Types shared by every mask backend, and the one overlap rule that turns masks into a label map.

Frames and resolutions: a camera image is (H, W) at full resolution; LiDAR pixel coordinates
(``uv``) are at full resolution, (u, v) = (column, row) with pixel centres at integer + 0.5 as in
the nuScenes projection. Masks are stored at the working resolution (h, w) = round(scale * (H, W)).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: the weight-free backend's jobs run without it
    import torch

#: ``prompt_source`` codes of the masks store (also in lidarlift.artifacts.STORES["masks"]).
PROMPT_SOURCES: dict[int, str] = {
    0: "grid",
    1: "lidar_segment_centre",
    2: "lidar_farthest_point_sample",
    3: "weightfree_region",
    4: "weightfree_lidar_segment",
}
SOURCE_GRID, SOURCE_CENTRE, SOURCE_FPS, SOURCE_REGION, SOURCE_WF_SEGMENT = 0, 1, 2, 3, 4

#: How overlapping masks are resolved in the label map (stored in the store's attrs).
OVERLAP_RULES: dict[str, str] = {
    "smaller_on_top": "masks are painted largest first, so where masks overlap the smaller one owns the pixel "
                      "(PointSAM's rule: parts and small objects survive inside larger masks); ties: higher score on top",
    "score_on_top": "masks are painted lowest score first, so where masks overlap the higher-scoring one owns the pixel",
    "nearest_on_top": "weight-free masks are disjoint by construction; where a pixel could belong to several "
                      "LiDAR segments the segment with the nearest projected point owns it",
}


class MaskBackendError(RuntimeError):
    """A mask backend cannot run (missing package, bad checkpoint, bad config)."""


@dataclass
class CameraView:
    """One camera image and the keyframe LiDAR points visible in it.

    image: (H, W, 3) uint8 RGB. uv: (n, 2) float32 pixel (u, v) at full resolution. depth: (n,)
    float32 metres along the camera axis. segment_id: (n,) int32 LiDAR pre-segment of the point
    (-1 = noise or ground). ground: (n,) bool. ``index`` is the image index ``s * C + c`` in the shard.
    """

    image: np.ndarray
    uv: np.ndarray
    depth: np.ndarray
    segment_id: np.ndarray
    ground: np.ndarray
    index: int = 0
    name: str = ""

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    @staticmethod
    def empty_points(image: np.ndarray, index: int = 0, name: str = "") -> "CameraView":
        return CameraView(image, np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32),
                          np.zeros(0, bool), index, name)


@dataclass
class ImageMasks:
    """The masks of one image at the stored resolution (h, w); M masks, index = value in ``labels``.

    labels: (h, w) int32 mask index owning the pixel, -1 none. score: (M,) float32 predicted IoU or
    backend score. stability: (M,) float32. area: (M,) int64 pixels the mask owns in ``labels``.
    box: (M, 4) float32 x0, y0, x1, y1 of the owned pixels (x1, y1 exclusive). prompt_source: (M,)
    uint8 (PROMPT_SOURCES). segment_id: (M,) int32 LiDAR pre-segment behind the mask, -1 none.
    prompt_uv: (M, 2) float32 prompt pixel at the stored resolution, NaN none.
    """

    labels: np.ndarray
    score: np.ndarray
    stability: np.ndarray
    area: np.ndarray
    box: np.ndarray
    prompt_source: np.ndarray
    segment_id: np.ndarray
    prompt_uv: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_masks(self) -> int:
        return int(self.score.shape[0])

    @staticmethod
    def empty(h: int, w: int) -> "ImageMasks":
        return ImageMasks(np.full((h, w), -1, np.int32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                          np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.uint8),
                          np.zeros(0, np.int32), np.zeros((0, 2), np.float32))


def paint_order(area: torch.Tensor, score: torch.Tensor, rule: str) -> torch.Tensor:
    """Indices in painting order (the last painted mask ends on top)."""
    import torch

    if rule == "smaller_on_top":
        # largest first; among equal areas the higher score is painted later (on top)
        key = area.double() * 4.0 - score.double().clamp(0, 1)
        return torch.argsort(key, descending=True, stable=True)
    if rule == "score_on_top":
        return torch.argsort(score.double(), descending=False, stable=True)
    raise ValueError(f"config key masks.overlap: unknown overlap rule {rule!r}; choose one of smaller_on_top, score_on_top")


def _rank_dtype(k: int) -> torch.dtype:
    """Smallest integer dtype holding paint ranks 0..k (0 = no mask)."""
    import torch

    return torch.uint8 if k < 256 else torch.int16 if k < 32768 else torch.int32


def _paint(masks: torch.Tensor, rank: torch.Tensor, block: int = 32) -> torch.Tensor:
    """(G, h, w) highest paint rank among the masks covering each pixel, 0 where none.

    masks: (G, K, h, w) bool; rank: (G, K) integer paint rank of each mask (1..K, 0 = not painted).
    Equivalent to painting the masks one by one in increasing rank, computed as a running maximum of
    ranks over blocks of masks (few kernels on a GPU, vectorised on a CPU, no host synchronisation).
    """
    import torch

    G, K = rank.shape
    top = torch.zeros((G, *masks.shape[2:]), dtype=rank.dtype, device=masks.device)
    masks = masks.view(torch.uint8)  # bool * uint8 would first copy the masks to uint8
    for a in range(0, K, block):
        r = rank[:, a:a + block, None, None]
        top = torch.maximum(top, (masks[:, a:a + block] * r).amax(1))
    return top


def _row_counts(top: torch.Tensor, nbins: int, ones: torch.Tensor) -> torch.Tensor:
    """(G, h, nbins) int32 number of pixels of each value of ``top`` (G, h, w) in [0, nbins) per image row.

    Per-row bins keep the contention of the GPU's atomic adds to at most ``w`` per address (one
    histogram per image would put every pixel of a large mask on one address), and need no host sync.
    """
    import torch

    G, h, w = top.shape
    base = torch.arange(G * h, device=top.device, dtype=torch.int64).mul_(nbins).view(G, h, 1)
    idx = (base + top.to(torch.int64)).flatten()
    return torch.zeros(G * h * nbins, dtype=torch.int32, device=top.device).index_add_(0, idx, ones).view(G, h, nbins)


def _first_true(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Index of the first True along ``dim`` (0 where none)."""
    import torch

    return x.to(torch.uint8).argmax(dim)


@dataclass
class PaintedBatch:
    """Label maps and per-mask arrays of G images on the device, padded to K masks per image.

    labels: (G, h, w) int32 (-1 none); count: (G,) int64 masks per image; the per-mask arrays are
    (G, K[, c]) in output order (decreasing score), valid in their first ``count[g]`` rows.
    """

    labels: torch.Tensor
    count: torch.Tensor
    score: torch.Tensor
    stability: torch.Tensor
    area: torch.Tensor
    box: torch.Tensor
    prompt_source: torch.Tensor
    segment_id: torch.Tensor
    prompt_uv: torch.Tensor

    def to_host(self) -> list[ImageMasks]:
        """One ImageMasks per image: two device-to-host copies (labels, packed per-mask arrays) and one sync."""
        import torch

        G, K = self.score.shape
        h, w = self.labels.shape[1:]
        if G == 0:
            return []
        packed = torch.cat([self.count.double()[:, None, None].expand(G, K, 1), self.score.double()[..., None],
                            self.stability.double()[..., None], self.area.double()[..., None], self.box.double(),
                            self.prompt_source.double()[..., None], self.segment_id.double()[..., None],
                            self.prompt_uv.double()], dim=2)  # every value is exact in float64
        if self.labels.device.type == "cuda":  # into pinned buffers, then one wait on an event
            labels = torch.empty(self.labels.shape, dtype=torch.int32, pin_memory=True)
            labels.copy_(self.labels, non_blocking=True)
            host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            host.copy_(packed, non_blocking=True)
            with torch.cuda.device(self.labels.device):
                done = torch.cuda.Event()
                done.record()
            done.synchronize()
            packed, labels_np = host, labels.numpy()  # each image's labels: a view of the batch's buffer
        else:
            packed, labels_np = packed.cpu(), self.labels.numpy()
        p = packed.numpy()
        out = []
        for g in range(G):
            m = int(p[g, 0, 0]) if K else 0
            q = p[g, :m]
            out.append(ImageMasks(
                labels=labels_np[g], score=q[:, 1].astype(np.float32), stability=q[:, 2].astype(np.float32),
                area=q[:, 3].astype(np.int64), box=q[:, 4:8].astype(np.float32), prompt_source=q[:, 8].astype(np.uint8),
                segment_id=q[:, 9].astype(np.int32), prompt_uv=q[:, 10:12].astype(np.float32).reshape(-1, 2)))
        return out


def resolve_overlaps_batched(masks: torch.Tensor, valid: torch.Tensor, score: torch.Tensor, stability: torch.Tensor,
                             prompt_source: torch.Tensor, segment_id: torch.Tensor, prompt_uv: torch.Tensor, *,
                             rule: str = "smaller_on_top", min_area: int = 1) -> PaintedBatch:
    """:func:`resolve_overlaps` of G images at once, on the masks' device, without host synchronisation.

    masks: (G, K, h, w) bool; valid: (G, K) bool (False: padding, never painted); score, stability,
    prompt_source, segment_id: (G, K); prompt_uv: (G, K, 2). Same rule as :func:`resolve_overlaps`:
    masks with fewer than ``min_area`` pixels are dropped, the rest painted in ``rule`` order, masks
    left owning fewer than ``min_area`` pixels dropped and the rest repainted (the second pass is always
    run: when nothing was dropped it repeats the first), numbered by decreasing score.
    """
    import torch

    G, K, h, w = masks.shape
    dev = masks.device
    min_area = max(1, int(min_area))
    masks = masks.bool()
    valid = valid.bool()
    area_full = masks.view(torch.uint8).flatten(2).sum(2, dtype=torch.int32).long()
    keep = valid & (area_full >= min_area)
    # paint order over all K (stable sort): the relative order of the kept masks is the one
    # paint_order gives on the kept subset; not-kept masks get rank 0 (never painted)
    if rule == "smaller_on_top":
        key = area_full.double() * 4.0 - score.double().clamp(0, 1)
        order = torch.argsort(key, dim=1, descending=True, stable=True)
    elif rule == "score_on_top":
        order = torch.argsort(score.double(), dim=1, descending=False, stable=True)
    else:
        raise ValueError(f"config key masks.overlap: unknown overlap rule {rule!r}; choose one of smaller_on_top, score_on_top")
    rdt = _rank_dtype(K)
    rank_full = torch.empty((G, K), dtype=torch.int64, device=dev)
    rank_full.scatter_(1, order, torch.arange(1, K + 1, device=dev).expand(G, K).contiguous())
    ones = torch.ones(G * h * w, dtype=torch.int32, device=dev)
    for _ in range(2):  # paint, drop masks left with too few pixels, repaint
        painted = keep
        top = _paint(masks, torch.where(painted, rank_full, 0).to(rdt))
        rows = _row_counts(top, K + 1, ones)
        owned = torch.where(painted, rows.sum(1, dtype=torch.int64).gather(1, rank_full), 0)
        keep = painted & (owned >= min_area)
    # every mask painted in the second pass owns >= min_area (removing masks only hands their pixels
    # to masks underneath); masks that own nothing vanish
    alive = painted & (owned > 0)
    count = alive.sum(1)
    out_order = torch.argsort(torch.where(alive, score.double(), float("-inf")), dim=1, descending=True, stable=True)
    pos = torch.arange(K, device=dev).expand(G, K)
    new_index = torch.full((G, K), -1, dtype=torch.int64, device=dev)
    new_index.scatter_(1, out_order, torch.where(pos < count[:, None], pos, -1))
    label_of_rank = torch.full((G, K + 1), -1, dtype=torch.int32, device=dev)
    label_of_rank.scatter_(1, rank_full, new_index.to(torch.int32))
    labels = label_of_rank.gather(1, top.view(G, -1).to(torch.int64)).view(G, h, w)
    # boxes of the owned pixels from per-row and per-column counts (by paint rank)
    cols = _row_counts(top.transpose(1, 2), K + 1, ones)  # (G, w, K + 1)
    on_rows, on_cols = rows > 0, cols > 0
    y0 = _first_true(on_rows, 1)
    y1 = h - _first_true(on_rows.flip(1), 1)
    x0 = _first_true(on_cols, 1)
    x1 = w - _first_true(on_cols.flip(1), 1)
    box_by_rank = torch.stack([x0, y0, x1, y1], 2).float()  # (G, K + 1, 4), x1 / y1 exclusive
    box = box_by_rank.gather(1, rank_full[..., None].expand(G, K, 4))

    def sort(t: torch.Tensor) -> torch.Tensor:
        idx = out_order.view(G, K, *([1] * (t.dim() - 2))).expand(t.shape)
        return t.gather(1, idx)

    return PaintedBatch(labels=labels, count=count, score=sort(score.float()), stability=sort(stability.float()),
                        area=sort(owned), box=sort(box), prompt_source=sort(prompt_source.to(torch.int64)),
                        segment_id=sort(segment_id.to(torch.int64)), prompt_uv=sort(prompt_uv.float()))


def resolve_overlaps(masks: torch.Tensor, score: torch.Tensor, stability: torch.Tensor, prompt_source: torch.Tensor,
                     segment_id: torch.Tensor, prompt_uv: torch.Tensor, *, rule: str = "smaller_on_top",
                     min_area: int = 1) -> ImageMasks:
    """Label map and per-mask arrays from K binary masks, on the masks' device.

    masks: (K, h, w) bool; score, stability: (K,) float; prompt_source: (K,) int; segment_id: (K,) int;
    prompt_uv: (K, 2) float at the stored resolution. Masks are painted in ``rule`` order; a mask that
    owns fewer than ``min_area`` pixels afterwards is dropped and the rest repainted (removing masks
    only gives their pixels back to masks underneath). Output masks are numbered by decreasing score.
    One image of :func:`resolve_overlaps_batched`.
    """
    import torch

    h, w = int(masks.shape[-2]), int(masks.shape[-1])
    if masks.shape[0] == 0:
        if rule not in ("smaller_on_top", "score_on_top"):
            paint_order(torch.zeros(0), torch.zeros(0), rule)  # the same error for an unknown rule
        return ImageMasks.empty(h, w)
    k = masks.shape[0]
    return resolve_overlaps_batched(
        masks[None], torch.ones((1, k), dtype=torch.bool, device=masks.device), score.reshape(1, k),
        stability.reshape(1, k), prompt_source.reshape(1, k), segment_id.reshape(1, k), prompt_uv.reshape(1, k, 2),
        rule=rule, min_area=min_area).to_host()[0]


def out_size(image_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Stored (h, w) for a full-resolution (H, W) and ``masks.scale``."""
    return max(1, int(round(image_size[0] * scale))), max(1, int(round(image_size[1] * scale)))
