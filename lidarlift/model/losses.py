"""Losses on pseudo-labels: cross-entropy + Lovász-softmax on labelled points, the negative-label loss on
candidate sets, nothing elsewhere.

Per point the E-step gives a ``label`` (class 1..K, 0 = ignore) and a ``candidate_mask`` (uint32, bit
``c - 1`` set when class ``c`` is still possible). A point with a label is supervised by
cross-entropy (and Lovász-softmax); an unlabelled point whose candidate set excludes some classes is
supervised by IUPC's negative loss ``-log(1 - sum of the probabilities of the excluded classes)``;
unlabelled points with an empty or a full candidate set carry no loss.

Every term is computed on all points with masks and normalised by tensor counts, so the loss never
waits for the GPU (no boolean indexing, ``int(tensor)``, ``.item()`` or ``torch.unique``): a training
step queues its loss and backward behind the forward pass without a host round trip.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
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
    Returns (N,) float32 (exactly 0 for a row with every class allowed).
    """
    logits = logits.float()
    masked = logits.masked_fill(~allowed, float("-inf"))
    return torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)


def lovasz_softmax(probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Lovász-softmax (Berman et al. 2018) over the classes present in ``target`` among ``valid`` points.

    probs: (N, K) float class probabilities; target: (N,) int64 class index 0..K-1 (any value where
    ``valid`` is False); valid: (N,) bool or None (all points). With one-hot ``probs`` this equals
    ``1 - mean IoU`` over the present classes. Returns a scalar (0 when no point is valid).

    All K classes are sorted at once in a (K, N) layout, so each class's running sums are scans along
    the contiguous last dimension (a scan along dim 0 of an (N, K) tensor runs one thread per column
    and cost 28 ms per step on an H100, bench/train_gpu.json). Invalid points get error 0 and no
    foreground: they sort behind every point with a positive error and change neither the value nor
    the gradient; absent classes are masked out of the mean by a tensor count (no host sync).
    """
    n, k = probs.shape
    classes = torch.arange(k, device=probs.device).unsqueeze(1)
    fg_mask = target.unsqueeze(0) == classes  # (K, N)
    if valid is not None:
        fg_mask = fg_mask & valid.unsqueeze(0)
    fg = fg_mask.to(probs.dtype)
    errors = (fg - probs.t()).abs()
    if valid is not None:
        errors = torch.where(valid.unsqueeze(0), errors, torch.zeros((), dtype=errors.dtype, device=errors.device))
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
    fg_sorted = torch.gather(fg, 1, perm)
    gts = fg_sorted.sum(1, keepdim=True)
    tp = fg_sorted.cumsum(1)  # true positives among the first i points; false positives are rank - tp
    rank = torch.arange(1, n + 1, device=probs.device, dtype=probs.dtype)
    jaccard = 1.0 - (gts - tp) / (gts + rank - tp)
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], 1)
    per_class = (errors_sorted * grad).sum(1)  # (K,)
    present = (gts.squeeze(1) > 0).to(per_class.dtype)
    return (per_class * present).sum() / present.sum().clamp(min=1.0)


@dataclass
class LossTerms:
    """The batch loss and its parts (0-dim tensors on the loss's device) with the number of points each
    part saw (0-dim int64 tensors: reading them waits for the GPU, so the training step does not)."""

    total: torch.Tensor
    ce: torch.Tensor
    lovasz: torch.Tensor
    negative: torch.Tensor
    n_labelled: torch.Tensor
    n_candidates: torch.Tensor

    @property
    def supervised(self) -> bool:
        return bool(self.n_labelled + self.n_candidates > 0)


class SegmentationLoss(torch.nn.Module):
    """CE (+ Lovász) on labelled points + weighted negative-label loss on candidate sets.

    Build it from the ``train.loss`` config section with :meth:`from_config` (config/schema.yaml holds
    the defaults); the constructor takes every term explicitly. ``class_weights``: (K,) CE weights for
    classes 1..K or None. ``confidence_weighting``: scale each labelled point's CE by its pseudo-label
    confidence.
    """

    @classmethod
    def from_config(cls, num_classes: int, cfg: Mapping[str, Any] | None = None,
                    label_counts: Sequence[int] | np.ndarray | None = None) -> "SegmentationLoss":
        """The loss of the ``train.loss`` section ``cfg`` over the schema's defaults (validated: errors name
        the key, ``config key train.loss.ce_weight: ...``). ``class_weights`` none | inverse_sqrt_frequency
        | inverse_frequency | a list of K numbers; the frequency weights come from ``label_counts``, (K + 1,)
        points per label 0..K (0 = ignore) of the training data (None: every class counts the same, i.e.
        weights 1)."""
        from lidarlift.config import section

        lc = section("train.loss", cfg)
        weights = lc.pop("class_weights")
        if weights == "none":
            w = None
        elif isinstance(weights, str):  # inverse_sqrt_frequency | inverse_frequency (the schema's enum)
            counts = np.asarray(label_counts)[1:] if label_counts is not None else np.ones(num_classes)
            w = inverse_frequency_weights(counts, 0.5 if weights == "inverse_sqrt_frequency" else 1.0)
        else:
            w = list(weights)
        return cls(num_classes, class_weights=w, **lc)

    def __init__(self, num_classes: int, *, ce_weight: float, lovasz_weight: float, negative_weight: float,
                 class_weights: Sequence[float] | torch.Tensor | None, confidence_weighting: bool):
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
        confidence: (N,) float in 0..1 or None. No host synchronisation."""
        logits = logits.float()
        zero = logits.sum() * 0.0  # a term that is switched off still touches every parameter (DDP)
        labelled = label > 0
        lab_w = labelled.to(logits.dtype)
        tgt = (label.long() - 1).clamp(min=0)  # any class for unlabelled points: their weight is 0
        ce = lov = neg = zero
        if self.ce_weight:
            per_point = F.cross_entropy(logits, tgt, weight=self.class_weights, reduction="none")
            point_w = lab_w * confidence.float() if (self.confidence_weighting and confidence is not None) else lab_w
            per_point = torch.where(labelled, per_point * point_w, torch.zeros((), device=logits.device))
            if self.class_weights is not None:  # F.cross_entropy's weighted mean, over labelled points only
                ce = per_point.sum() / (self.class_weights[tgt] * lab_w).sum().clamp(min=1e-12)
            else:
                ce = per_point.sum() / lab_w.sum().clamp(min=1.0)
        if self.lovasz_weight:
            lov = lovasz_softmax(F.softmax(logits, 1), tgt, labelled)
        full = (1 << self.num_classes) - 1
        cand_mask = candidate_mask.long() & full
        has_set = (~labelled) & (cand_mask != 0) & (cand_mask != full)
        if self.negative_weight:
            allowed = candidate_sets(cand_mask, self.num_classes) | ~has_set.unsqueeze(1)  # no set: every class, loss 0
            set_w = has_set.to(logits.dtype)
            neg = (negative_label_loss(logits, allowed) * set_w).sum() / set_w.sum().clamp(min=1.0)
        total = self.ce_weight * ce + self.lovasz_weight * lov + self.negative_weight * neg
        return LossTerms(total=total, ce=ce, lovasz=lov, negative=neg, n_labelled=labelled.sum(), n_candidates=has_set.sum())


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
