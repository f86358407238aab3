"""Losses on pseudo-labels: cross-entropy + Lovász-softmax on labelled points, the negative-label loss on
candidate sets, nothing elsewhere.

Per point the E-step gives a ``label`` (class 1..K, 0 = ignore) and a ``candidate_mask`` (uint32, bit
``c - 1`` set when class ``c`` is still possible). A point with a label is supervised by
cross-entropy (and Lovász-softmax); an unlabelled point whose candidate set excludes some classes is
supervised by IUPC's negative loss ``-log(1 - sum of the probabilities of the excluded classes)``;
unlabelled points with an empty or a full candidate set carry no loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


def candidate_sets(candidate_mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) int64 bitmask (bit c-1 = class c) -> (N, K) bool, column ``c - 1`` True when ``c`` is possible."""
    bits = torch.bitwise_left_shift(torch.ones(num_classes, dtype=torch.int64, device=candidate_mask.device),
                                    torch.arange(num_classes, device=candidate_mask.device))
    return (candidate_mask.long().unsqueeze(1) & bits.unsqueeze(0)) != 0


def negative_label_loss(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Per-point ``-log(1 - sum_{c excluded} p_c)`` = ``-log(sum_{c allowed} p_c)``.

    logits: (N, K) float; allowed: (N, K) bool with at least one True per row. Computed as
    ``logsumexp(all) - logsumexp(allowed)`` so it stays finite when the excluded mass is near 1.
    Returns (N,) float32.
    """
    logits = logits.float()
    masked = logits.masked_fill(~allowed, float("-inf"))
    return torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors (Berman et al. 2018)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if len(gt_sorted) > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax over the classes present in ``target``.

    probs: (N, K) float class probabilities; target: (N,) int64 class index 0..K-1 (no ignore here:
    pass only labelled points). With one-hot ``probs`` this equals ``1 - mean IoU`` over the present
    classes. Returns a scalar (0 for N = 0).
    """
    if target.numel() == 0:
        return probs.sum() * 0.0
    if probs.is_cuda:  # one batched sort instead of a Python loop: fewer kernel launches on GPU
        return _lovasz_softmax_batched(probs, target)
    losses = []
    for c in torch.unique(target).tolist():
        fg = (target == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[perm])))
    return torch.stack(losses).mean()


def _lovasz_softmax_batched(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`lovasz_softmax` with all present classes sorted at once (same value)."""
    present = torch.unique(target)
    fg = (target.unsqueeze(1) == present.unsqueeze(0)).to(probs.dtype)  # (N, C) one column per present class
    errors = (fg - probs[:, present]).abs()
    errors_sorted, perm = torch.sort(errors, 0, descending=True)
    fg_sorted = torch.gather(fg, 0, perm)
    gts = fg_sorted.sum(0, keepdim=True)
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], 0)
    return (errors_sorted * grad).sum(0).mean()


@dataclass
class LossTerms:
    """The batch loss and its parts (scalars) with the number of points each part saw."""

    total: torch.Tensor
    ce: torch.Tensor
    lovasz: torch.Tensor
    negative: torch.Tensor
    n_labelled: int
    n_candidates: int

    @property
    def supervised(self) -> bool:
        return self.n_labelled + self.n_candidates > 0


class SegmentationLoss(torch.nn.Module):
    """CE (+ Lovász) on labelled points + weighted negative-label loss on candidate sets.

    ``class_weights``: (K,) CE weights for classes 1..K or None. ``confidence_weighting``: scale each
    labelled point's CE by its pseudo-label confidence.
    """

    def __init__(self, num_classes: int, ce_weight: float = 1.0, lovasz_weight: float = 1.0,
                 negative_weight: float = 1.0, class_weights: Sequence[float] | torch.Tensor | None = None,
                 confidence_weighting: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.ce_weight, self.lovasz_weight, self.negative_weight = ce_weight, lovasz_weight, negative_weight
        self.confidence_weighting = confidence_weighting
        if class_weights is not None:
            w = torch.as_tensor(class_weights, dtype=torch.float32)
            if w.shape != (num_classes,):
                raise ValueError(f"config key train.loss.class_weights: expected {num_classes} weights, got {tuple(w.shape)}")
            self.register_buffer("class_weights", w)
        else:
            self.class_weights = None

    def forward(self, logits: torch.Tensor, label: torch.Tensor, candidate_mask: torch.Tensor,
                confidence: torch.Tensor | None = None) -> LossTerms:
        """logits: (N, K); label: (N,) int64 0..K (0 ignore); candidate_mask: (N,) int64 bitmask;
        confidence: (N,) float in 0..1 or None."""
        logits = logits.float()
        zero = logits.sum() * 0.0  # keeps the graph (DDP needs every parameter used)
        labelled = label > 0
        n_lab = int(labelled.sum())
        ce = lov = neg = zero
        if n_lab:
            lg, tgt = logits[labelled], label[labelled] - 1
            per_point = F.cross_entropy(lg, tgt, weight=self.class_weights, reduction="none")
            if self.confidence_weighting and confidence is not None:
                per_point = per_point * confidence[labelled].float()
            if self.class_weights is not None:
                ce = per_point.sum() / self.class_weights[tgt].sum().clamp(min=1e-12)
            else:
                ce = per_point.mean()
            if self.lovasz_weight:
                lov = lovasz_softmax(F.softmax(lg, 1), tgt)
        full = (1 << self.num_classes) - 1
        cand_mask = candidate_mask.long() & full
        has_set = (~labelled) & (cand_mask != 0) & (cand_mask != full)
        n_cand = int(has_set.sum())
        if n_cand and self.negative_weight:
            allowed = candidate_sets(cand_mask[has_set], self.num_classes)
            neg = negative_label_loss(logits[has_set], allowed).mean()
        total = self.ce_weight * ce + self.lovasz_weight * lov + self.negative_weight * neg
        return LossTerms(total=total, ce=ce, lovasz=lov, negative=neg, n_labelled=n_lab, n_candidates=n_cand)


def inverse_frequency_weights(counts: Sequence[int] | torch.Tensor, power: float = 0.5) -> torch.Tensor:
    """(K,) weights ``(count / total) ** -power``, normalised to mean 1 over classes with labels;
    classes without labels get weight 1."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    freq = counts / counts.sum().clamp(min=1)
    w = torch.ones_like(freq)
    seen = counts > 0
    w[seen] = freq[seen] ** -power
    w[seen] = w[seen] / w[seen].mean()
    return w.float()
