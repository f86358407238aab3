"""Types shared by every mask backend, and the one overlap rule that turns masks into a label map.

Frames and resolutions: a camera image is (H, W) at full resolution; LiDAR pixel coordinates
(``uv``) are at full resolution, (u, v) = (column, row) with pixel centres at integer + 0.5 as in
the nuScenes projection. Masks are stored at the working resolution (h, w) = round(scale * (H, W)).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
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
    if rule == "smaller_on_top":
        # largest first; among equal areas the higher score is painted later (on top)
        key = area.double() * 4.0 - score.double().clamp(0, 1)
        return torch.argsort(key, descending=True, stable=True)
    if rule == "score_on_top":
        return torch.argsort(score.double(), descending=False, stable=True)
    raise ValueError(f"config key masks.overlap: unknown overlap rule {rule!r}; choose one of smaller_on_top, score_on_top")


def _paint(masks: torch.Tensor, order: torch.Tensor, block: int = 32) -> torch.Tensor:
    """(h, w) int64 index of the topmost mask covering each pixel (-1 none); ``order``: painting order.

    Equivalent to painting the masks one by one in ``order``, computed as a running maximum of paint
    ranks over blocks of masks (few kernels on a GPU, vectorised on a CPU).
    """
    k = masks.shape[0]
    rank = torch.empty(k, dtype=torch.int32, device=masks.device)
    rank[order] = torch.arange(1, k + 1, dtype=torch.int32, device=masks.device)
    top = torch.zeros(masks.shape[1:], dtype=torch.int32, device=masks.device)
    for a in range(0, k, block):
        m = masks[a:a + block]
        top = torch.maximum(top, (m.to(torch.int32) * rank[a:a + block, None, None]).amax(0))
    index_of_rank = torch.cat([torch.full((1,), -1, dtype=torch.int64, device=masks.device), order.to(torch.int64)])
    return index_of_rank[top.long()]


def resolve_overlaps(masks: torch.Tensor, score: torch.Tensor, stability: torch.Tensor, prompt_source: torch.Tensor,
                     segment_id: torch.Tensor, prompt_uv: torch.Tensor, *, rule: str = "smaller_on_top",
                     min_area: int = 1) -> ImageMasks:
    """Label map and per-mask arrays from K binary masks, on the masks' device.

    masks: (K, h, w) bool; score, stability: (K,) float; prompt_source: (K,) int; segment_id: (K,) int;
    prompt_uv: (K, 2) float at the stored resolution. Masks are painted in ``rule`` order; a mask that
    owns fewer than ``min_area`` pixels afterwards is dropped and the rest repainted (removing masks
    only gives their pixels back to masks underneath). Output masks are numbered by decreasing score.
    """
    h, w = int(masks.shape[-2]), int(masks.shape[-1])
    if masks.shape[0] == 0:
        return ImageMasks.empty(h, w)
    masks = masks.bool()
    area_full = masks.flatten(1).sum(1)
    keep = area_full >= max(1, min_area)
    # paint, drop masks left with too few pixels, repaint: removing a mask only hands its pixels to
    # masks underneath, so every mask kept after the first pass still owns >= min_area after the second
    for _ in range(2):
        idx = torch.nonzero(keep).flatten()
        if idx.numel() == 0:
            return ImageMasks.empty(h, w)
        labels = _paint(masks[idx], paint_order(area_full[idx], score[idx], rule))
        owned = torch.bincount((labels + 1).flatten(), minlength=idx.numel() + 1)[1:]
        small = owned < max(1, min_area)
        if not bool(small.any()):
            break
        keep[idx[small]] = False
    # renumber by decreasing score; masks that own nothing vanish
    alive = owned > 0
    order = torch.argsort(score[idx].double(), descending=True, stable=True)
    order = order[alive[order]]
    remap = torch.full((idx.numel() + 1,), -1, dtype=torch.int64, device=masks.device)
    remap[order + 1] = torch.arange(order.numel(), device=masks.device)
    labels = remap[labels + 1]
    m = order.numel()
    # boxes of the owned pixels
    flat = labels.flatten()
    on = flat >= 0
    ys = torch.arange(h, device=masks.device).repeat_interleave(w)[on]
    xs = torch.arange(w, device=masks.device).repeat(h)[on]
    lab = flat[on]
    box = torch.zeros((m, 4), dtype=torch.float32, device=masks.device)
    if m:
        big = torch.full((m,), h + w + 1, dtype=torch.int64, device=masks.device)
        box[:, 0] = big.scatter_reduce(0, lab, xs, "amin").float()
        box[:, 1] = big.scatter_reduce(0, lab, ys, "amin").float()
        box[:, 2] = torch.full_like(big, -1).scatter_reduce(0, lab, xs, "amax").float() + 1
        box[:, 3] = torch.full_like(big, -1).scatter_reduce(0, lab, ys, "amax").float() + 1
    sel = idx[order]
    return ImageMasks(
        labels=labels.to(torch.int32).cpu().numpy(),
        score=score[sel].float().cpu().numpy(),
        stability=stability[sel].float().cpu().numpy(),
        area=owned[order].cpu().numpy().astype(np.int64),
        box=box.cpu().numpy(),
        prompt_source=prompt_source[sel].to(torch.uint8).cpu().numpy(),
        segment_id=segment_id[sel].to(torch.int32).cpu().numpy(),
        prompt_uv=prompt_uv[sel].float().cpu().numpy().reshape(-1, 2),
    )


def out_size(image_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Stored (h, w) for a full-resolution (H, W) and ``masks.scale``."""
    return max(1, int(round(image_size[0] * scale))), max(1, int(round(image_size[1] * scale)))
