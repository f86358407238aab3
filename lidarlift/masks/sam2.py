"""SAM 2 backend (optional extra ``pip install 'lidarlift[sam2]'``): the ``sam2`` package's image predictor.

Same contract as :mod:`lidarlift.masks.sam`: the checkpoint is checked before use (weights-only load,
strict fit to the architecture of the named config, sha256 when given), images are embedded in
batches (``SAM2ImagePredictor.set_image_batch``), LiDAR prompts are decoded in batches, and
filtering, NMS, top-k and painting run on the device through the same functions as the SAM backend.
Importing this module never fails; :func:`require_sam2` raises a clear error when ``sam2`` is missing.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lidarlift.masks.core import ImageMasks, MaskBackendError
from lidarlift.masks.prompts import Prompts

SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
#: official SAM 2.1 checkpoints -> the package's config of the same architecture
SAM2_OFFICIAL: dict[str, str] = {
    "sam2.1_hiera_tiny.pt": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small.pt": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus.pt": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large.pt": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def sam2_help(config: str) -> str:
    names = ", ".join(f"{n} ({c})" for n, c in SAM2_OFFICIAL.items())
    return (f"The official SAM 2.1 checkpoints are {names}, from {SAM2_URL}<name> "
            f"(https://github.com/facebookresearch/sam2#model-description); put the one matching {config} in "
            f"resources/ (see resources/README.md), or set masks.backend: weightfree.")


def require_sam2() -> Any:
    """Import and return the ``sam2`` package, or raise MaskBackendError saying how to install it."""
    try:
        import sam2  # noqa: F401
        from sam2.build_sam import build_sam2  # noqa: F401
        from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: F401
    except ImportError as e:
        raise MaskBackendError(
            f"masks.backend: sam2 needs the optional package 'sam2' ({e}); install it with "
            f"pip install 'lidarlift[sam2]' (pin its version in constraints.txt), or choose masks.backend: sam or weightfree") from None
    return sam2


def check_sam2_checkpoint(path: str | os.PathLike, config: str, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Check a SAM 2 checkpoint (weights-only load, strict key/shape fit to ``config``, sha256); return its state dict."""
    from lidarlift.masks.sam import CheckpointError, sha256_of

    require_sam2()
    from sam2.build_sam import build_sam2

    path = Path(path)
    what = f"SAM 2 checkpoint {path} (expected the architecture of {config})"
    if not path.is_file():
        raise CheckpointError(f"{what} does not exist. {sam2_help(config)}")
    if sha256 and sha256 != "official":
        got = sha256_of(path)
        if got.lower() != sha256.lower():
            raise CheckpointError(f"{what} has sha256 {got}, expected {sha256} (config key masks.sam2.sha256). {sam2_help(config)}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{what} cannot be read with torch.load(weights_only=True): truncated or not a "
                              f"PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:300]}). {sam2_help(config)}") from None
    sd = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{what} is not a state dict of tensors. {sam2_help(config)}")
    model = build_sam2(config, ckpt_path=None, device="cpu", mode="eval")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or unexpected or wrong:
        raise CheckpointError(f"{what} does not fit {config}: {len(missing)} keys missing, {len(unexpected)} unexpected, "
                              f"{len(wrong)} of another shape (e.g. {(wrong or missing or unexpected)[0]}). {sam2_help(config)}")
    return sd


class Sam2PromptedGenerator:
    """LiDAR-prompted SAM 2 through ``SAM2ImagePredictor`` (batched images, batched prompts, device-side filtering)."""

    def __init__(self, config: str, checkpoint: str | os.PathLike, *, sha256: str | None = None,
                 device: str | torch.device = "cuda", encoder_batch: int = 6, points_per_batch: int = 256,
                 multimask: str = "all", pred_iou_thresh: float = 0.7, stability_thresh: float = 0.8,
                 stability_offset: float = 1.0, nms_thresh: float = 0.7, max_masks: int = 128,
                 min_mask_area: int = 16, overlap: str = "smaller_on_top", bf16: bool = True):
        require_sam2()
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        sd = check_sam2_checkpoint(checkpoint, config, sha256)
        self.device = torch.device(device)
        model = build_sam2(config, ckpt_path=None, device="cpu", mode="eval")
        model.load_state_dict(sd, strict=True)
        self.predictor = SAM2ImagePredictor(model.to(self.device).eval())
        self.encoder_batch, self.points_per_batch = max(1, encoder_batch), max(1, points_per_batch)
        self.kw = dict(multimask=multimask, pred_iou_thresh=pred_iou_thresh, stability_thresh=stability_thresh,
                       stability_offset=stability_offset)
        self.post = dict(nms_thresh=nms_thresh, max_masks=max_masks, overlap=overlap, min_mask_area=min_mask_area)
        self.multimask = multimask
        self.bf16 = bf16
        self.timings: dict[str, float] = {"encoder_s": 0.0, "decoder_s": 0.0, "images": 0}

    @torch.inference_mode()
    def generate(self, images: list[np.ndarray], prompts: list[Prompts], out_hw: tuple[int, int]) -> list[ImageMasks]:
        from lidarlift.masks.sam import _autocast, filter_candidates, postprocess_candidates

        p = self.predictor
        out: list[ImageMasks] = []
        for a in range(0, len(images), self.encoder_batch):
            t0 = time.perf_counter()
            batch = images[a:a + self.encoder_batch]
            with _autocast(self.device, self.bf16):
                p.set_image_batch(list(batch))
            t1 = time.perf_counter()
            for j, image in enumerate(batch):
                pr = prompts[a + j]
                if len(pr) == 0:
                    out.append(ImageMasks.empty(*out_hw))
                    continue
                kept = []
                for s in range(0, len(pr), self.points_per_batch):
                    e = min(len(pr), s + self.points_per_batch)
                    coords = torch.as_tensor(pr.uv[s:e], dtype=torch.float32, device=self.device)
                    labels = torch.where(torch.as_tensor(pr.valid[s:e], device=self.device), 1, -1).int()
                    coords = p._transforms.transform_coords(coords, normalize=True, orig_hw=p._orig_hw[j])
                    with _autocast(self.device, self.bf16):
                        _, iou, low = p._predict(coords, labels, multimask_output=self.multimask != "single",
                                                 return_logits=True, img_idx=j)
                    kept.append(filter_candidates(low, iou, s, mask_threshold=p.mask_threshold, **self.kw))
                logits, iou, stab, idx = (torch.cat([k[i] for k in kept]) for i in range(4))
                out.append(postprocess_candidates(logits, iou, stab, idx, pr, image.shape[:2], out_hw,
                                                  mask_threshold=p.mask_threshold, **self.post))
            self.timings["encoder_s"] += t1 - t0
            self.timings["decoder_s"] += time.perf_counter() - t1
            self.timings["images"] += len(batch)
        return out
