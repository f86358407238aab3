"""segment-anything backend: checkpoint checks, a LiDAR-prompted batched generator, the vanilla baseline.

- :func:`check_checkpoint` / :func:`load_sam`: a checkpoint in ``resources/`` is checked before use —
  it must load with ``torch.load(weights_only=True)``, fit the named architecture strictly (every key
  and shape) and, where config gives a sha256 (or ``official`` for the official file names), match
  it. Every failure raises :class:`CheckpointError` naming the file, the model type expected and where
  the official checkpoints come from.
- :class:`SamPromptedGenerator`: the image embedding is computed once per image, images go through the
  encoder in batches, prompts through the decoder in batches, under bf16 autocast on GPU; filtering
  (predicted IoU, stability), box NMS, top-k, upsampling and painting the label map run on the device.
- :class:`VanillaSamGenerator`: segment-anything's ``SamAutomaticMaskGenerator`` (32 x 32 grid), the
  baseline, optionally with :class:`TopKAutomaticMaskGenerator`'s fixed number of masks kept.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from lidarlift.compat import ensure_torchvision
from lidarlift.masks.core import (SOURCE_GRID, ImageMasks, MaskBackendError, resolve_overlaps,
                                  resolve_overlaps_batched)
from lidarlift.masks.prompts import Prompts

ensure_torchvision()  # segment_anything imports torchvision

from segment_anything import SamAutomaticMaskGenerator  # noqa: E402
from segment_anything.build_sam import build_sam_vit_b, build_sam_vit_h, build_sam_vit_l  # noqa: E402
from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,  # noqa: E402
                                       TwoWayTransformer)
from segment_anything.utils.amg import (MaskData, batched_mask_to_box, calculate_stability_score,  # noqa: E402
                                        is_box_near_crop_edge, mask_to_rle_pytorch, uncrop_masks)
from segment_anything.modeling.common import LayerNorm2d  # noqa: E402
from torchvision.ops import batched_nms, nms  # noqa: E402

log = logging.getLogger("lidarlift.masks.sam")

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
#: model type -> (official file name, size in bytes, sha256) of Meta's released checkpoints.
OFFICIAL_CHECKPOINTS: dict[str, tuple[str, int, str]] = {
    "vit_h": ("sam_vit_h_4b8939.pth", 2_564_550_879, "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
    "vit_l": ("sam_vit_l_0b3195.pth", 1_249_524_607, "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_b": ("sam_vit_b_01ec64.pth", 375_042_383, "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
}
_OFFICIAL_BY_NAME = {name: (mt, size, sha) for mt, (name, size, sha) in OFFICIAL_CHECKPOINTS.items()}


def build_tiny_sam(img_size: int = 256, embed_dim: int = 32, prompt_dim: int = 32, depth: int = 2, seed: int | None = 0) -> Sam:
    """A small segment-anything ``Sam`` with random weights, for tests and CPU benchmarks (not for masks).

    Same classes as the real models (ImageEncoderViT, PromptEncoder, MaskDecoder), tiny widths; the
    image is resized to ``img_size`` on its long side, embeddings are (prompt_dim, img_size/16, img_size/16).
    """
    if seed is not None:
        torch.manual_seed(seed)
    grid = img_size // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, patch_size=16, in_chans=3, embed_dim=embed_dim, depth=depth, num_heads=2,
            mlp_ratio=2.0, out_chans=prompt_dim, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=4, global_attn_indexes=(depth - 1,),
        ),
        prompt_encoder=PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
                                 transformer_dim=prompt_dim, iou_head_depth=2, iou_head_hidden_dim=32),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


#: model type -> builder of the architecture (random weights). ``vit_tiny`` is the test model.
SAM_ARCHITECTURES: dict[str, Callable[[], Sam]] = {
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "vit_tiny": build_tiny_sam,
}


class CheckpointError(MaskBackendError):
    """A SAM / SAM2 checkpoint is missing, unreadable, of another architecture or of another hash."""


def official_help(model_type: str) -> str:
    names = ", ".join(f"{n} ({mt})" for mt, (n, _, _) in OFFICIAL_CHECKPOINTS.items())
    want = OFFICIAL_CHECKPOINTS.get(model_type)
    hint = f"for {model_type} get {OFFICIAL_URL}{want[0]}" if want else f"model type {model_type!r} has no official checkpoint"
    return (f"The official segment-anything checkpoints are {names}, from {OFFICIAL_URL}<name> "
            f"(https://github.com/facebookresearch/segment-anything#model-checkpoints); {hint} and put it in "
            f"resources/ (see resources/README.md), or set masks.backend: weightfree to run without weights.")


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _guess_model_type(shapes: dict[str, tuple[int, ...]]) -> str:
    w = shapes.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return "not a segment-anything model (no image_encoder.patch_embed.proj.weight)"
    depth = len({k.split(".")[2] for k in shapes if k.startswith("image_encoder.blocks.")})
    known = {(1280, 32): "vit_h", (1024, 24): "vit_l", (768, 12): "vit_b"}
    guess = known.get((int(w[0]), depth))
    return f"a {guess}" if guess else f"an image encoder of width {int(w[0])} and depth {depth}"


def _architecture_shapes(model_type: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory, no random init
        model = SAM_ARCHITECTURES[model_type]()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_checkpoint(path: str | os.PathLike, model_type: str, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Check a segment-anything checkpoint and return its state dict (tensors on CPU, memory-mapped).

    ``sha256``: expected hex digest; ``"official"`` checks the official hash when the file has an
    official name (sizes in :data:`OFFICIAL_CHECKPOINTS` only explain a mismatch); None / "" skips hashing. Raises :class:`CheckpointError` (naming the file, the
    model type and the official checkpoints) when the file is missing, truncated, not a weights-only
    checkpoint, of another architecture (any missing, unexpected or mis-shaped key) or of another hash.
    """
    path = Path(path)
    if model_type not in SAM_ARCHITECTURES:
        raise CheckpointError(f"config key masks.sam.model_type: unknown SAM model type {model_type!r}; "
                              f"choose one of {', '.join(k for k in SAM_ARCHITECTURES if k != 'vit_tiny')}")
    what = f"SAM checkpoint {path} (expected model type {model_type})"
    if not path.is_file():
        raise CheckpointError(f"{what} does not exist. {official_help(model_type)}")
    size = path.stat().st_size
    official = _OFFICIAL_BY_NAME.get(path.name)
    if official and official[0] != model_type:
        raise CheckpointError(f"{what}: the file name is the official {official[0]} checkpoint, not {model_type}; "
                              f"set masks.sam.model_type: {official[0]} or point masks.sam.checkpoint at a {model_type} file. "
                              f"{official_help(model_type)}")
    want = sha256
    if want == "official":
        want = official[2] if official else None
    if want:
        got = sha256_of(path)
        if got.lower() != want.lower():
            why = "a different or corrupted file"
            if official and size != official[1]:
                why = (f"the file is {size:,} bytes but the official {path.name} is {official[1]:,} bytes: "
                       f"{'truncated (an interrupted download?)' if size < official[1] else 'not the official file'}")
            raise CheckpointError(f"{what} has sha256 {got}, expected {want} (config key masks.sam.sha256): "
                                  f"{why}. {official_help(model_type)}")
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # noqa: BLE001 - every failure here means the same thing to the user
        msg = str(e).splitlines()[0][:300]
        kind = ("it holds pickled Python objects, not only tensors (weights_only=True refuses them)"
                if "Weights only load failed" in str(e) else "truncated or not a PyTorch checkpoint")
        raise CheckpointError(f"{what} cannot be read with torch.load(weights_only=True): {kind} "
                              f"({type(e).__name__}: {msg}). {official_help(model_type)}") from None
    if isinstance(sd, dict) and len(sd) == 1 and next(iter(sd)) in ("model", "state_dict") and isinstance(next(iter(sd.values())), dict):
        sd = next(iter(sd.values()))
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{what} is not a state dict of tensors (got {type(sd).__name__}). {official_help(model_type)}")
    want_shapes = _architecture_shapes(model_type)
    got_shapes = {k: tuple(v.shape) for k, v in sd.items()}
    missing = sorted(set(want_shapes) - set(got_shapes))
    unexpected = sorted(set(got_shapes) - set(want_shapes))
    wrong = sorted(k for k in set(want_shapes) & set(got_shapes) if want_shapes[k] != got_shapes[k])
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensors of another shape (e.g. {k}: {list(got_shapes[k])} in the file, "
                         f"{list(want_shapes[k])} in {model_type})")
        if missing:
            parts.append(f"{len(missing)} keys missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"{what} does not fit the {model_type} architecture: {'; '.join(parts)}; "
                              f"the file looks like {_guess_model_type(got_shapes)}. {official_help(model_type)}")
    return sd


def load_sam(model_type: str, checkpoint: str | os.PathLike, *, sha256: str | None = "official",
             device: str | torch.device = "cpu") -> Sam:
    """Check ``checkpoint`` (see :func:`check_checkpoint`) and return the model on ``device`` in eval mode."""
    sd = check_checkpoint(checkpoint, model_type, sha256)
    with torch.device("meta"):
        model = SAM_ARCHITECTURES[model_type]()
    model.load_state_dict(sd, strict=True, assign=True)
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:  # non-persistent buffers are not in the state dict
            raise CheckpointError(f"SAM checkpoint {checkpoint}: buffer {name} was not materialised")
    return model.to(device).eval()


def _to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device`` without making the host wait: through pinned memory, non-blocking, on CUDA.

    (A plain ``.to("cuda")`` of host memory synchronises the stream after the copy.)
    """
    t = torch.from_numpy(np.ascontiguousarray(a))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


class SamPromptedGenerator:
    """LiDAR-prompted SAM through the predictor path (no grid), batched, filtered on the device.

    Per image: one embedding; prompts decoded ``points_per_batch`` at a time with multimask output
    (``multimask``: ``all`` keeps the 3 masks of each prompt as candidates (PointSAM), ``best`` the one
    with the highest predicted IoU, ``single`` asks SAM for one mask (multi-point prompts)); candidates
    with predicted IoU <= ``pred_iou_thresh`` or stability < ``stability_thresh`` (offset
    ``stability_offset``, computed on the low-resolution logits) are dropped; box NMS at ``nms_thresh``;
    the best ``max_masks`` by predicted IoU are upsampled to the stored resolution and painted with the
    ``overlap`` rule. bf16 autocast on CUDA when ``bf16``.

    :meth:`generate` runs each encoder batch as one batch end to end (``batched``, the default):
    prompts of all its images go through the decoder together (``points_per_batch`` per call, a call
    may span images), the upscaling of the decoder runs only on the part of the embedding that covers
    the image (not the padding), filtering and NMS run once for the batch (one host sync, in NMS), and
    masks are upsampled and painted for all images at once (see
    :func:`lidarlift.masks.core.resolve_overlaps_batched`); results come to the host in two copies.
    The first transformer layer's image-only projections are computed once per image, and
    ``attention`` ``sdpa`` (``auto``: on CUDA) runs the decoder's attentions as fused
    ``scaled_dot_product_attention`` (FlashAttention), ``exact`` with the module's matmul / softmax.
    ``batched=False`` is the reference: image by image through :meth:`decode` (same masks up to
    floating-point summation order; in bf16 that order changes roundings, see bench/masks_gpu.json).
    """

    def __init__(self, model: Sam, *, device: str | torch.device | None = None, encoder_batch: int = 6,
                 points_per_batch: int = 256, multimask: str = "all", pred_iou_thresh: float = 0.7,
                 stability_thresh: float = 0.8, stability_offset: float = 1.0, nms_thresh: float = 0.7,
                 max_masks: int = 128, min_mask_area: int = 16, overlap: str = "smaller_on_top", bf16: bool = True,
                 batched: bool = True, attention: str = "auto"):
        if multimask not in ("all", "best", "single"):
            raise ValueError(f"config key masks.multimask: {multimask!r} is not one of all, best, single")
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.encoder_batch = max(1, int(encoder_batch))
        self.points_per_batch = max(1, int(points_per_batch))
        self.multimask = multimask
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_thresh = stability_thresh
        self.stability_offset = stability_offset
        self.nms_thresh = nms_thresh
        self.max_masks = max_masks
        self.min_mask_area = min_mask_area
        self.overlap = overlap
        self.bf16 = bf16
        self.batched = batched
        self.profile_ranges = False  # torch.profiler ranges (sam.decoder, sam.nms, ...) in the batched path
        self.timings: dict[str, float] = {"encoder_s": 0.0, "decoder_s": 0.0, "images": 0}
        self._dense_pe: dict[torch.dtype, torch.Tensor] = {}
        self._crop_upscaling = _upscaling_is_local(self.model.mask_decoder)
        if attention not in ("auto", "exact", "sdpa"):
            raise ValueError(f"attention: {attention!r} is not one of auto, exact, sdpa")
        self.attention = ("sdpa" if self.device.type == "cuda" else "exact") if attention == "auto" else attention

    # -- encoder -------------------------------------------------------------------------------------
    def _input_size(self, h: int, w: int) -> tuple[int, int]:
        s = self.model.image_encoder.img_size / max(h, w)
        return int(h * s + 0.5), int(w * s + 0.5)

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Image embeddings (B, C, e, e) of B (H, W, 3) uint8 RGB images, and each image's resized (h, w)."""
        sizes = [tuple(im.shape[:2]) for im in images]
        if len(set(sizes)) == 1:
            x = torch.from_numpy(np.stack(images)).to(self.device, non_blocking=True)
            x = x.permute(0, 3, 1, 2).float()
            ih, iw = self._input_size(*sizes[0])
            x = F.interpolate(x, (ih, iw), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 255)
            x = self.model.preprocess(x)
            input_sizes = [(ih, iw)] * len(images)
        else:
            parts, input_sizes = [], []
            for im in images:
                t = torch.from_numpy(np.ascontiguousarray(im)).to(self.device).permute(2, 0, 1)[None].float()
                ih, iw = self._input_size(*im.shape[:2])
                t = F.interpolate(t, (ih, iw), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 255)
                parts.append(self.model.preprocess(t))
                input_sizes.append((ih, iw))
            x = torch.cat(parts)
        with _autocast(self.device, self.bf16):
            feats = self.model.image_encoder(x)
        if self.bf16 and self.device.type == "cuda":
            feats = feats.to(torch.bfloat16)  # the decoder repeats it once per prompt: half the bytes
        return feats, input_sizes

    # -- decoder + filtering -------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, feature: torch.Tensor, input_size: tuple[int, int], image_size: tuple[int, int],
               prompts: Prompts, out_hw: tuple[int, int]) -> ImageMasks:
        """Masks of one image from its embedding (C, e, e), resized input (h, w), original (H, W) and prompts."""
        h_out, w_out = out_hw
        if len(prompts) == 0:
            return ImageMasks.empty(h_out, w_out)
        dev = self.device
        H, W = image_size
        ih, iw = input_size
        img = self.model.image_encoder.img_size
        pe = self.model.prompt_encoder
        coords_all = torch.from_numpy(prompts.uv).to(dev).float() * torch.tensor([iw / W, ih / H], device=dev)
        labels_all = torch.where(torch.from_numpy(prompts.valid).to(dev), 1, -1).int()
        # the decoder repeats the image embedding and its positional encoding once per prompt: keep
        # them in the embedding's dtype (bf16 under autocast) to halve that memory traffic
        dense_pe = pe.get_dense_pe().to(feature.dtype)
        multimask_output = self.multimask != "single"
        keep_logits, keep_iou, keep_stab, keep_prompt = [], [], [], []
        for a in range(0, len(prompts), self.points_per_batch):
            b = min(len(prompts), a + self.points_per_batch)
            with _autocast(dev, self.bf16):
                sparse, dense = pe(points=(coords_all[a:b], labels_all[a:b]), boxes=None, masks=None)
                dense = dense.to(feature.dtype)
                low, iou = self.model.mask_decoder(image_embeddings=feature[None], image_pe=dense_pe,
                                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                   multimask_output=multimask_output)
            lh = max(1, int(round(ih * low.shape[-2] / img)))
            lw = max(1, int(round(iw * low.shape[-1] / img)))
            kept = filter_candidates(low[..., :lh, :lw], iou, a, multimask=self.multimask,
                                     pred_iou_thresh=self.pred_iou_thresh, stability_thresh=self.stability_thresh,
                                     stability_offset=self.stability_offset, mask_threshold=self.model.mask_threshold)
            for acc, t in zip((keep_logits, keep_iou, keep_stab, keep_prompt), kept):
                acc.append(t)
        return postprocess_candidates(
            torch.cat(keep_logits), torch.cat(keep_iou), torch.cat(keep_stab), torch.cat(keep_prompt), prompts,
            image_size, out_hw, mask_threshold=self.model.mask_threshold, nms_thresh=self.nms_thresh,
            max_masks=self.max_masks, overlap=self.overlap, min_mask_area=self.min_mask_area)

    def generate(self, images: list[np.ndarray], prompts: list[Prompts], out_hw: tuple[int, int]) -> list[ImageMasks]:
        """ImageMasks of each (H, W, 3) uint8 RGB image at the stored size ``out_hw`` = (h, w)."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompt sets")
        out: list[ImageMasks] = []
        sync = self.device.type == "cuda"
        for a in range(0, len(images), self.encoder_batch):
            t0 = time.perf_counter()
            feats, input_sizes = self.embed(images[a:a + self.encoder_batch])
            if sync:
                torch.cuda.synchronize(self.device)
            t1 = time.perf_counter()
            image_sizes = [tuple(im.shape[:2]) for im in images[a:a + len(feats)]]
            if self.batched:
                out += self.decode_batch(feats, input_sizes, image_sizes, prompts[a:a + len(feats)], out_hw)
            else:
                for j, feat in enumerate(feats):
                    out.append(self.decode(feat, input_sizes[j], image_sizes[j], prompts[a + j], out_hw))
            self.timings["encoder_s"] += t1 - t0
            self.timings["decoder_s"] += time.perf_counter() - t1
            self.timings["images"] += len(feats)
        return out

    # -- the batched path ----------------------------------------------------------------------------
    def _dense_pe_as(self, dtype: torch.dtype) -> torch.Tensor:
        """The decoder's dense positional encoding (1, C, e, e) in ``dtype`` (constant: computed once)."""
        if dtype not in self._dense_pe:
            with torch.inference_mode():
                self._dense_pe[dtype] = self.model.prompt_encoder.get_dense_pe().to(dtype)
        return self._dense_pe[dtype]

    def _sparse_embed(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``PromptEncoder(points=(coords, labels), boxes=None, masks=None)``'s sparse embeddings.

        The same operations and dtypes as segment-anything's ``_embed_points(pad=True)``, with the
        label-dependent updates as ``torch.where`` instead of boolean-mask indexing (which makes the
        host wait for the device four times per call).
        """
        pe = self.model.prompt_encoder
        points = coords + 0.5
        points = torch.cat([points, torch.zeros((points.shape[0], 1, 2), device=points.device)], dim=1)
        labels = torch.cat([labels, -torch.ones((labels.shape[0], 1), device=labels.device)], dim=1)[..., None]
        emb = pe.pe_layer.forward_with_coords(points, pe.input_image_size)
        dt = emb.dtype  # in-place updates of the original keep the embedding's dtype
        emb = torch.where(labels == -1, pe.not_a_point_embed.weight.to(dt), emb)
        emb = torch.where(labels == 0, (emb.float() + pe.point_embeddings[0].weight).to(dt), emb)
        emb = torch.where(labels == 1, (emb.float() + pe.point_embeddings[1].weight).to(dt), emb)
        return torch.cat([torch.empty((emb.shape[0], 0, pe.embed_dim), device=emb.device), emb], dim=1)

    def _decode_prompts(self, shared: "_SharedImages", segments: list[tuple[int, int, int]], sparse: torch.Tensor,
                        low_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``MaskDecoder`` on prompts of several images: low-res logits (n, k, lh, lw) cropped to the image, iou (n, k).

        ``segments``: (image, first, end) runs of the prompts of one image. As
        ``MaskDecoder.predict_masks`` (see :func:`_two_way_transformer` for the transformer), except
        that the output upscaling (two stride-2 transposed convolutions, a per-pixel norm and
        activations: each output pixel depends on one embedding pixel) runs only on the embedding
        pixels that cover the image.
        """
        md = self.model.mask_decoder
        output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
        tokens = torch.cat((output_tokens, sparse), dim=1)
        hs, keys = _two_way_transformer(md.transformer, shared, tokens, segments, self.attention == "sdpa")
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1:(1 + md.num_mask_tokens), :]
        b = keys.shape[0]
        c, h, w = shared.chw
        src = keys.transpose(1, 2).view(b, c, h, w)
        lh, lw = low_hw
        if self._crop_upscaling:
            src = src[:, :, :-(-lh // 4), :-(-lw // 4)]
        upscaled = md.output_upscaling(src)
        hyper_in = torch.stack([md.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :])
                                for i in range(md.num_mask_tokens)], dim=1)
        b, c, uh, uw = upscaled.shape
        if upscaled.is_contiguous():
            masks = (hyper_in @ upscaled.view(b, c, uh * uw)).view(b, -1, uh, uw)
        else:  # channels-last (the embedding is token-major): the same products without a transposing copy
            flat = upscaled.permute(0, 2, 3, 1).reshape(b, uh * uw, c)
            masks = (flat @ hyper_in.transpose(1, 2)).permute(0, 2, 1).reshape(b, -1, uh, uw)
        iou_pred = md.iou_prediction_head(iou_token_out)
        sl = slice(1, None) if self.multimask != "single" else slice(0, 1)
        return masks[:, sl, :lh, :lw], iou_pred[:, sl]

    @torch.inference_mode()
    def decode_batch(self, feats: torch.Tensor, input_sizes: list[tuple[int, int]], image_sizes: list[tuple[int, int]],
                     prompts: list[Prompts], out_hw: tuple[int, int]) -> list[ImageMasks]:
        """Masks of B images from their embeddings (B, C, e, e), resized input sizes, original sizes and prompts.

        The whole batch at once: same filtering, NMS, top-k and overlap rule as :meth:`decode`.
        Images whose low-resolution crop has the same size (and prompts the same number of points)
        are decoded and painted together.
        """
        h_out, w_out = out_hw
        out: list[ImageMasks | None] = [None] * len(prompts)
        groups: dict[tuple, list[int]] = {}
        img = self.model.image_encoder.img_size
        low_res = 4 * self.model.prompt_encoder.image_embedding_size[0]
        for i, p in enumerate(prompts):
            if len(p) == 0:
                out[i] = ImageMasks.empty(h_out, w_out)
                continue
            ih, iw = input_sizes[i]
            low_hw = (max(1, int(round(ih * low_res / img))), max(1, int(round(iw * low_res / img))))
            groups.setdefault((low_hw, p.uv.shape[1]), []).append(i)
        for (low_hw, _), members in groups.items():
            for i, r in zip(members, self._decode_group(feats, members, input_sizes, image_sizes, prompts, low_hw, out_hw)):
                out[i] = r
        return out  # type: ignore[return-value]

    def _decode_group(self, feats: torch.Tensor, members: list[int], input_sizes, image_sizes, prompts: list[Prompts],
                      low_hw: tuple[int, int], out_hw: tuple[int, int]) -> list[ImageMasks]:
        dev = self.device
        h_out, w_out = out_hw
        thr = self.model.mask_threshold
        pe = self.model.prompt_encoder
        # prompts of the group's images, scaled to each image's encoder input (as decode() does)
        coords_np, labels_np, image_np, prompt_np = [], [], [], []
        for g, i in enumerate(members):
            (H, W), (ih, iw) = image_sizes[i], input_sizes[i]
            p = prompts[i]
            coords_np.append(p.uv.astype(np.float32) * np.array([iw / W, ih / H], np.float32))
            labels_np.append(np.where(p.valid, 1, -1).astype(np.int32))
            image_np.append(np.full(len(p), g, np.int64))
            prompt_np.append(np.arange(len(p), dtype=np.int64))
        rf = torch.profiler.record_function if self.profile_ranges else (lambda name: nullcontext())
        coords_all = _to_device(np.concatenate(coords_np), dev)
        labels_all = _to_device(np.concatenate(labels_np), dev)
        image_all = np.concatenate(image_np)
        prompt_all = np.concatenate(prompt_np)
        image_dev = _to_device(image_all, dev)
        member_idx = _to_device(np.asarray(members, np.int64), dev)
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).to(feats.dtype)
        with _autocast(dev, self.bf16):  # the image side of the first transformer layer, once per image
            shared = _SharedImages.make(self.model.mask_decoder.transformer, feats[member_idx] + dense,
                                        self._dense_pe_as(feats.dtype), self.attention == "sdpa")
        starts = np.cumsum([0] + [len(prompts[i]) for i in members])
        cand_logits, cand_iou, cand_stab, cand_box, cand_ok = [], [], [], [], []
        n_prompts = coords_all.shape[0]
        for a in range(0, n_prompts, self.points_per_batch):
            b = min(n_prompts, a + self.points_per_batch)
            with rf("sam.decoder"), _autocast(dev, self.bf16):
                sparse = self._sparse_embed(coords_all[a:b], labels_all[a:b])
                segments = [(g, max(a, int(starts[g])) - a, min(b, int(starts[g + 1])) - a) for g in range(len(members))
                            if starts[g] < b and starts[g + 1] > a]
                low, iou = self._decode_prompts(shared, segments, sparse, low_hw)
            if self.multimask == "best" and low.shape[1] > 1:
                best = iou.float().argmax(1)
                ar = torch.arange(low.shape[0], device=dev)
                low, iou = low[ar, best][:, None], iou[ar, best][:, None]
            with rf("sam.filter"):
                low, iou = low.flatten(0, 1), iou.float().flatten()
                low32 = low.float()
                stab = calculate_stability_score(low32, thr, self.stability_offset)
                binary = low32 > thr
                box = batched_mask_to_box(binary)
                ok = (iou > self.pred_iou_thresh) & (stab >= self.stability_thresh) & binary.flatten(1).any(1)
            for acc, t in zip((cand_logits, cand_iou, cand_stab, cand_box, cand_ok), (low, iou, stab, box, ok)):
                acc.append(t)
        logits, iou, stab, ok = (torch.cat(t) for t in (cand_logits, cand_iou, cand_stab, cand_ok))
        box = torch.cat(cand_box).float()
        box[:, 2:] += 1
        k = logits.shape[0] // n_prompts  # candidates per prompt
        cand_image = image_dev.repeat_interleave(k)
        # NMS of the whole group (per image); candidates that failed the filters score -inf, so they are
        # considered last and cannot suppress any other; NMS is the one place the host waits
        with rf("sam.nms"):
            keep = batched_nms(box, torch.where(ok, iou, float("-inf")), cand_image, self.nms_thresh)
            keep_h = torch.stack([keep, ok[keep].long()]).cpu().numpy()
        keep_h = keep_h[0, keep_h[1] == 1]  # indices of passing candidates, by decreasing score
        cand_image_h = np.repeat(image_all, k)
        G = len(members)
        sel = [keep_h[cand_image_h[keep_h] == g][:self.max_masks] for g in range(G)]
        K = max(len(s_) for s_ in sel)
        if K == 0:
            return [ImageMasks.empty(h_out, w_out) for _ in members]
        index = np.zeros((G, K), np.int64)
        valid = np.zeros((G, K), bool)
        source = np.zeros((G, K), np.int64)
        segment = np.full((G, K), -1, np.int64)
        puv = np.zeros((G, K, 2), np.float32)
        for g, (i, s_) in enumerate(zip(members, sel)):
            n = len(s_)
            index[g, :n], valid[g, :n] = s_, True
            pidx = prompt_all[s_ // k]
            (H, W), p = image_sizes[i], prompts[i]
            source[g, :n] = p.source[pidx]
            segment[g, :n] = p.segment_id[pidx]
            puv[g, :n] = p.uv[pidx, 0, :] * np.array([w_out / W, h_out / H], np.float32)
        index_d = _to_device(index, dev)
        with rf("sam.upsample"):
            masks = self._upsample(logits, index_d.flatten(), out_hw).view(G, K, h_out, w_out)
        with rf("sam.paint"):
            painted = resolve_overlaps_batched(
                masks, _to_device(valid, dev), iou[index_d], stab[index_d], _to_device(source, dev),
                _to_device(segment, dev), _to_device(puv, dev), rule=self.overlap, min_area=self.min_mask_area)
        with rf("sam.to_host"):
            return painted.to_host()

    def _upsample(self, logits: torch.Tensor, index: torch.Tensor, out_hw: tuple[int, int],
                  chunk_pixels: int = 1 << 25) -> torch.Tensor:
        """(n, h, w) bool: ``logits[index]`` (low resolution) upsampled (bilinear) to ``out_hw`` and thresholded.

        In chunks of about ``chunk_pixels`` output pixels, so the float32 upsampled logits never exist
        for all masks at once.
        """
        h, w = out_hw
        n = index.shape[0]
        masks = torch.empty((n, h, w), dtype=torch.bool, device=logits.device)
        step = max(1, chunk_pixels // (h * w))
        for a in range(0, n, step):
            sel = logits[index[a:a + step]]
            up = F.interpolate(sel[:, None].float(), (h, w), mode="bilinear", align_corners=False)[:, 0]
            torch.gt(up, self.model.mask_threshold, out=masks[a:a + step])
        return masks


class _SharedImages:
    """Per-image inputs of the decoder's transformer, shared by all prompts of an image.

    keys: (B, HW, C) image embeddings plus the no-mask dense embedding, token-major and contiguous
    (elementwise ops and linears on every prompt's copy then need no transposing copies); pe: (1, HW, C)
    the dense positional encoding, broadcast to every prompt instead of copied; and the projections of
    the first layer that only see the image (its keys do not depend on the prompt until that layer's
    image-to-token attention): k / v of the token-to-image attention, q of the image-to-token one.
    """

    def __init__(self, keys, pe, chw, k1, v1, q2):
        self.keys, self.pe, self.chw, self.k1, self.v1, self.q2 = keys, pe, chw, k1, v1, q2

    @staticmethod
    def make(transformer, src: torch.Tensor, dense_pe: torch.Tensor, sdpa: bool) -> "_SharedImages":
        b, c, h, w = src.shape
        keys = src.flatten(2).transpose(1, 2).contiguous()
        pe = dense_pe.flatten(2).transpose(1, 2).contiguous()
        layer = transformer.layers[0]
        kp = keys + pe
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        heads = t2i._separate_heads
        return _SharedImages(keys, pe, (c, h, w), heads(t2i.k_proj(kp), t2i.num_heads),
                             heads(t2i.v_proj(keys), t2i.num_heads), heads(i2t.q_proj(kp), i2t.num_heads))


def _attention(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sdpa: bool) -> torch.Tensor:
    """segment-anything's ``Attention`` module on (b, n, C) inputs; ``sdpa``: the attention itself through
    ``F.scaled_dot_product_attention`` (fused; scores and softmax in float32 instead of rounding the
    scores to bf16 first) instead of the module's matmul / softmax / matmul."""
    if not sdpa:
        return attn(q=q, k=k, v=v)
    h = attn.num_heads
    out = F.scaled_dot_product_attention(attn._separate_heads(attn.q_proj(q), h), attn._separate_heads(attn.k_proj(k), h),
                                         attn._separate_heads(attn.v_proj(v), h))
    return attn.out_proj(attn._recombine_heads(out))


def _heads_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sdpa: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v on (b, heads, n, d) tensors: the module's formula, or fused."""
    if sdpa:
        return F.scaled_dot_product_attention(q, k, v)
    attn = q @ k.permute(0, 1, 3, 2)
    attn = attn / math.sqrt(q.shape[-1])
    attn = torch.softmax(attn, dim=-1)
    return attn @ v


def _block(layer, queries, keys, query_pe, key_pe, sdpa: bool):
    """``TwoWayAttentionBlock.forward`` with :func:`_attention`; ``keys + key_pe`` is computed once (the
    block computes it twice, and the keys do not change in between)."""
    if layer.skip_first_layer_pe:
        queries = _attention(layer.self_attn, queries, queries, queries, sdpa)
    else:
        q = queries + query_pe
        queries = queries + _attention(layer.self_attn, q, q, queries, sdpa)
    queries = layer.norm1(queries)
    q = queries + query_pe
    k = keys + key_pe
    queries = layer.norm2(queries + _attention(layer.cross_attn_token_to_image, q, k, keys, sdpa))
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + query_pe
    keys = layer.norm4(keys + _attention(layer.cross_attn_image_to_token, k, q, queries, sdpa))
    return queries, keys


def _sdpa_backends():
    """Fused attention kernels without per-shape set-up: FlashAttention, memory-efficient, math.

    (cuDNN's attention, which torch may prefer, builds an execution plan for every new sequence
    length, and here the lengths change with the number of prompts of each image.)
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _two_way_transformer(transformer, shared: _SharedImages, tokens: torch.Tensor, segments: list[tuple[int, int, int]],
                         sdpa: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayTransformer.forward`` for prompts of several images: (queries (n, T, C), keys (n, HW, C)).

    The same layers and operations; what differs is where the work is done. In the first layer the
    image keys are still the image's own (the same for all its prompts): the token-to-image attention's
    keys / values and the image-to-token attention's queries are projected once per image
    (:class:`_SharedImages`), and the prompts of an image attend to its keys as one sequence of
    queries (each query row attends to the same keys). From the first layer's image-to-token update on
    the keys are per prompt, and the remaining layers and the final attention run as in segment-anything
    (the positional encoding added to them converted once to their dtype: float32 under autocast).
    """
    with _sdpa_backends() if sdpa else nullcontext():
        return _two_way_transformer_impl(transformer, shared, tokens, segments, sdpa)


def _two_way_transformer_impl(transformer, shared, tokens, segments, sdpa):
    point_embedding = queries = tokens
    layer = transformer.layers[0]
    if layer.skip_first_layer_pe:
        queries = _attention(layer.self_attn, queries, queries, queries, sdpa)
    else:
        q = queries + point_embedding
        queries = queries + _attention(layer.self_attn, q, q, queries, sdpa)
    queries = layer.norm1(queries)
    # token-to-image with the image's keys / values
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    n, T, _ = queries.shape
    qh = t2i._separate_heads(t2i.q_proj(queries + point_embedding), t2i.num_heads)  # (n, h, T, d)
    out = torch.empty_like(qh)
    for g, a, b in segments:
        q_seg = qh[a:b].transpose(0, 1).reshape(1, qh.shape[1], (b - a) * T, qh.shape[3])
        o = _heads_attention(q_seg, shared.k1[g:g + 1], shared.v1[g:g + 1], sdpa)
        out[a:b] = o.reshape(qh.shape[1], b - a, T, qh.shape[3]).transpose(0, 1)
    queries = layer.norm2(queries + t2i.out_proj(t2i._recombine_heads(out)))
    queries = layer.norm3(queries + layer.mlp(queries))
    # image-to-token with the image's queries
    q = queries + point_embedding
    kh = i2t._separate_heads(i2t.k_proj(q), i2t.num_heads)  # (n, h, T, d)
    vh = i2t._separate_heads(i2t.v_proj(queries), i2t.num_heads)
    outs = []
    for g, a, b in segments:
        q_img = shared.q2[g:g + 1].expand(b - a, -1, -1, -1)
        outs.append(_heads_attention(q_img, kh[a:b], vh[a:b], sdpa))
    attn_out = i2t.out_proj(i2t._recombine_heads(torch.cat(outs) if len(outs) > 1 else outs[0]))
    keys = torch.empty_like(attn_out, dtype=torch.promote_types(shared.keys.dtype, attn_out.dtype))
    for g, a, b in segments:
        torch.add(shared.keys[g:g + 1], attn_out[a:b], out=keys[a:b])
    keys = layer.norm4(keys)
    key_pe = shared.pe.to(keys.dtype)  # exact (bf16 -> float32); same-dtype adds are the faster kernels
    for layer in transformer.layers[1:]:
        queries, keys = _block(layer, queries, keys, point_embedding, key_pe, sdpa)
    q = queries + point_embedding
    k = keys + key_pe
    queries = transformer.norm_final_attn(queries + _attention(transformer.final_attn_token_to_image, q, k, keys, sdpa))
    return queries, keys


def _upscaling_is_local(decoder: MaskDecoder) -> bool:
    """Whether each pixel of the decoder's upscaled embedding depends on one embedding pixel only.

    True for segment-anything's ``output_upscaling`` (stride-2 2x2 transposed convolutions, a
    per-pixel LayerNorm2d and pointwise activations): then upscaling only the embedding pixels that
    cover the image gives the same logits there.
    """
    for m in decoder.output_upscaling:
        if isinstance(m, torch.nn.ConvTranspose2d):
            if tuple(m.kernel_size) != (2, 2) or tuple(m.stride) != (2, 2) or tuple(m.padding) != (0, 0) \
                    or tuple(m.output_padding) != (0, 0) or tuple(m.dilation) != (1, 1):
                return False
        elif not isinstance(m, (LayerNorm2d, torch.nn.GELU, torch.nn.ReLU)):
            return False
    return sum(isinstance(m, torch.nn.ConvTranspose2d) for m in decoder.output_upscaling) == 2


def filter_candidates(low: torch.Tensor, iou: torch.Tensor, first_prompt: int, *, multimask: str = "all",
                      pred_iou_thresh: float = 0.7, stability_thresh: float = 0.8, stability_offset: float = 1.0,
                      mask_threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates of one decoder batch that pass the predicted-IoU and stability thresholds.

    low: (p, k, lh, lw) low-resolution logits (padding cropped); iou: (p, k); prompts of the batch are
    ``first_prompt .. first_prompt + p - 1``. ``multimask`` 'best' keeps each prompt's best-IoU mask.
    Returns logits (N, lh, lw) float32, iou (N,), stability (N,), prompt index (N,) int64.
    """
    dev = low.device
    low, iou = low.float(), iou.float()
    if multimask == "best" and low.shape[1] > 1:
        best = iou.argmax(1)
        ar = torch.arange(low.shape[0], device=dev)
        low, iou = low[ar, best][:, None], iou[ar, best][:, None]
    k = low.shape[1]
    prompt_idx = torch.arange(first_prompt, first_prompt + low.shape[0], device=dev).repeat_interleave(k)
    low, iou = low.flatten(0, 1), iou.flatten()
    ok = iou > pred_iou_thresh
    low, iou, prompt_idx = low[ok], iou[ok], prompt_idx[ok]
    stab = calculate_stability_score(low, mask_threshold, stability_offset)
    ok = stab >= stability_thresh
    return low[ok], iou[ok], stab[ok], prompt_idx[ok]


def postprocess_candidates(logits: torch.Tensor, iou: torch.Tensor, stability: torch.Tensor, prompt_idx: torch.Tensor,
                           prompts: Prompts, image_size: tuple[int, int], out_hw: tuple[int, int], *,
                           mask_threshold: float = 0.0, nms_thresh: float = 0.7, max_masks: int = 128,
                           overlap: str = "smaller_on_top", min_mask_area: int = 16) -> ImageMasks:
    """Box NMS, top-k, upsampling and painting of filtered candidates, on their device.

    logits: (N, lh, lw) low-resolution mask logits covering exactly the image (padding cropped);
    iou, stability: (N,); prompt_idx: (N,) int64 prompt of each candidate. Boxes for NMS come from the
    low-resolution masks (IoU is scale-free); kept masks are upsampled (bilinear) to ``out_hw``.
    """
    h_out, w_out = out_hw
    H, W = image_size
    dev = logits.device
    if logits.shape[0] == 0:
        return ImageMasks.empty(h_out, w_out)
    binary = logits > mask_threshold
    nonempty = binary.flatten(1).any(1)
    logits, binary, iou, stability, prompt_idx = (logits[nonempty], binary[nonempty], iou[nonempty],
                                                  stability[nonempty], prompt_idx[nonempty])
    if logits.shape[0] == 0:
        return ImageMasks.empty(h_out, w_out)
    boxes = batched_mask_to_box(binary).float()
    boxes[:, 2:] += 1
    kept = nms(boxes, iou.float(), nms_thresh)[:max_masks]
    logits, iou, stability, prompt_idx = logits[kept], iou[kept], stability[kept], prompt_idx[kept]
    masks = F.interpolate(logits[:, None].float(), (h_out, w_out), mode="bilinear", align_corners=False)[:, 0] > mask_threshold
    src = torch.from_numpy(prompts.source.astype(np.int64)).to(dev)[prompt_idx]
    seg = torch.from_numpy(prompts.segment_id.astype(np.int64)).to(dev)[prompt_idx]
    puv = torch.from_numpy(prompts.uv[:, 0, :]).to(dev)[prompt_idx] * torch.tensor([w_out / W, h_out / H], device=dev)
    return resolve_overlaps(masks, iou, stability, src, seg, puv, rule=overlap, min_area=min_mask_area)


class TopKAutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """``SamAutomaticMaskGenerator`` keeping a fixed number of masks instead of thresholding.

    With random weights (benchmarks) the predicted-IoU and stability thresholds keep all or nothing; to
    keep a realistic ~``max_masks`` masks per image, each batch of ``b`` grid points keeps its
    ``ceil(max_masks * b / points)`` candidates with the highest predicted IoU, before the stability
    score, boxes and RLE encoding that the vanilla generator runs on every kept mask. Everything else
    is segment-anything's own code path.
    """

    def __init__(self, model: Sam, max_masks: int = 128, **kwargs: Any):
        kwargs.setdefault("pred_iou_thresh", 0.0)
        kwargs.setdefault("stability_score_thresh", 0.0)
        super().__init__(model, **kwargs)
        self.max_masks = max_masks

    def _process_batch(self, points, im_size, crop_box, orig_size):  # noqa: ANN001 - segment-anything's signature
        orig_h, orig_w = orig_size
        transformed = self.predictor.transform.apply_coords(points, im_size)
        in_points = torch.as_tensor(transformed, device=self.predictor.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        masks, iou_preds, _ = self.predictor.predict_torch(in_points[:, None, :], in_labels[:, None],
                                                          multimask_output=True, return_logits=True)
        data = MaskData(masks=masks.flatten(0, 1), iou_preds=iou_preds.flatten(0, 1),
                        points=torch.as_tensor(points.repeat(masks.shape[1], axis=0)))
        del masks
        quota = math.ceil(self.max_masks * len(points) / max(1, len(self.point_grids[0])))
        data.filter(torch.topk(data["iou_preds"], min(quota, len(data["iou_preds"]))).indices)
        if self.pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > self.pred_iou_thresh)
        data["stability_score"] = calculate_stability_score(data["masks"], self.predictor.model.mask_threshold,
                                                            self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)
        data["masks"] = data["masks"] > self.predictor.model.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep):
            data.filter(keep)
        data["masks"] = uncrop_masks(data["masks"], crop_box, orig_h, orig_w)
        data["rles"] = mask_to_rle_pytorch(data["masks"])
        del data["masks"]
        return data


class VanillaSamGenerator:
    """The baseline: segment-anything's automatic generator on a ``points_per_side`` grid, per image.

    ``max_masks`` > 0 uses :class:`TopKAutomaticMaskGenerator` (fixed number of masks kept), 0 the
    unmodified ``SamAutomaticMaskGenerator`` with its thresholds. Its masks are resized (nearest) to
    the stored size and painted with the same overlap rule as the prompted generator.
    """

    def __init__(self, model: Sam, *, points_per_side: int = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_thresh: float = 0.95, nms_thresh: float = 0.7,
                 max_masks: int = 0, min_mask_area: int = 16, overlap: str = "smaller_on_top", device: Any = None):
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        model.to(self.device).eval()
        kw = dict(points_per_side=points_per_side, points_per_batch=points_per_batch, pred_iou_thresh=pred_iou_thresh,
                  stability_score_thresh=stability_thresh, box_nms_thresh=nms_thresh, output_mode="binary_mask")
        self.amg = TopKAutomaticMaskGenerator(model, max_masks=max_masks, **kw) if max_masks > 0 else SamAutomaticMaskGenerator(model, **kw)
        self.min_mask_area = min_mask_area
        self.overlap = overlap
        self.timings: dict[str, float] = {"amg_s": 0.0, "images": 0}

    @torch.inference_mode()
    def generate(self, images: list[np.ndarray], prompts: list[Prompts] | None, out_hw: tuple[int, int]) -> list[ImageMasks]:
        out = []
        h_out, w_out = out_hw
        for image in images:
            t0 = time.perf_counter()
            anns = self.amg.generate(image)
            self.timings["amg_s"] += time.perf_counter() - t0
            self.timings["images"] += 1
            if not anns:
                out.append(ImageMasks.empty(h_out, w_out))
                continue
            H, W = image.shape[:2]
            seg = torch.from_numpy(np.stack([a["segmentation"] for a in anns])).to(self.device)
            masks = F.interpolate(seg[:, None].float(), (h_out, w_out), mode="nearest")[:, 0] > 0.5
            n = len(anns)
            score = torch.tensor([a["predicted_iou"] for a in anns], device=self.device)
            stab = torch.tensor([a["stability_score"] for a in anns], device=self.device)
            puv = torch.tensor([a["point_coords"][0] for a in anns], device=self.device, dtype=torch.float32)
            puv = puv * torch.tensor([w_out / W, h_out / H], device=self.device)
            out.append(resolve_overlaps(masks, score, stab, torch.full((n,), SOURCE_GRID, device=self.device),
                                        torch.full((n,), -1, device=self.device), puv, rule=self.overlap,
                                        min_area=self.min_mask_area))
        return out
