"""Losses on hand-computed cases: the negative-label loss, Lovász-softmax, and which points each part sees."""
import math

import numpy as np
import pytest
import torch

from lidarlift.model.losses import (SegmentationLoss, candidate_sets, inverse_frequency_weights, lovasz_softmax,
                                    negative_label_loss)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread (as training runs on the CPU); 2 cores shared by 2 test workers."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def bits(*classes):
    """Candidate bitmask of 1-based classes."""
    return sum(1 << (c - 1) for c in classes)


def test_negative_loss_uniform_logits_is_log_of_excluded_share():
    """4 classes with equal logits, 2 allowed: -log(1 - 0.5) = log 2."""
    logits = torch.zeros(1, 4)
    allowed = torch.tensor([[True, True, False, False]])
    assert negative_label_loss(logits, allowed).item() == pytest.approx(math.log(2), abs=1e-6)


def test_negative_loss_matches_formula_and_stays_finite():
    """-log(1 - sum p_excluded) by hand; an allowed class with vanishing probability stays finite."""
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    p = torch.softmax(logits, 1)[0]
    allowed = torch.tensor([[False, True, True]])
    want = -math.log(1 - p[0].item())
    assert negative_label_loss(logits, allowed).item() == pytest.approx(want, rel=1e-6)
    extreme = negative_label_loss(torch.tensor([[200.0, -200.0]]), torch.tensor([[False, True]]))
    assert torch.isfinite(extreme).all() and extreme.item() == pytest.approx(400.0, rel=1e-4)


def test_negative_loss_gradient_lowers_excluded_classes():
    logits = torch.zeros(1, 3, requires_grad=True)
    negative_label_loss(logits, torch.tensor([[True, True, False]])).sum().backward()
    assert logits.grad[0, 2] > 0 and logits.grad[0, 0] < 0 and logits.grad[0, 1] < 0


def test_lovasz_of_hard_predictions_is_one_minus_miou():
    """Labels [0, 0, 1, 1], one-hot prediction [0, 1, 1, 1]: IoU 1/2 and 2/3, loss 1 - 7/12."""
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    target = torch.tensor([0, 0, 1, 1])
    assert lovasz_softmax(probs, target).item() == pytest.approx(1 - (1 / 2 + 2 / 3) / 2, abs=1e-6)
    assert lovasz_softmax(torch.eye(2)[target], target).item() == pytest.approx(0.0, abs=1e-7)


def test_lovasz_counts_only_present_classes_and_soft_case():
    """Class 2 absent from the target does not count; a soft binary case computed by hand:
    errors (0.4, 0.1) for class 0 (both fg) sorted give grad (1/2, 1/2) -> 0.25; class 1 has no fg."""
    probs = torch.tensor([[0.6, 0.4, 0.0], [0.9, 0.1, 0.0]])
    target = torch.tensor([0, 0])
    assert lovasz_softmax(probs, target).item() == pytest.approx(0.25, abs=1e-6)


def test_candidate_sets_bits():
    sets = candidate_sets(torch.tensor([bits(1, 3), 0, bits(16)]), 16)
    assert sets[0].nonzero().flatten().tolist() == [0, 2]
    assert not sets[1].any()
    assert sets[2].nonzero().flatten().tolist() == [15]


def test_segmentation_loss_uses_each_point_once():
    """Labelled points -> CE (+ Lovász); unlabelled with a proper candidate set -> negative loss;
    ignore, an empty set and the full set -> nothing."""
    k = 4
    logits = torch.tensor([[3.0, 0.0, 0.0, 0.0],   # label 1
                           [0.0, 0.0, 0.0, 0.0],   # candidates {1, 2}
                           [5.0, -5.0, 1.0, 2.0],  # ignore (no candidate info)
                           [0.0, 9.0, 0.0, 0.0],   # empty set: no loss
                           [9.0, 0.0, 0.0, 0.0]])  # full set: no loss
    label = torch.tensor([1, 0, 0, 0, 0])
    cand = torch.tensor([bits(1), bits(1, 2), (1 << k) - 1, 0, (1 << k) - 1])
    loss = SegmentationLoss(k, lovasz_weight=0.0)
    t = loss(logits, label, cand)
    ce = -torch.log_softmax(logits[0], 0)[0].item()
    assert t.n_labelled == 1 and t.n_candidates == 1
    assert t.ce.item() == pytest.approx(ce, rel=1e-6)
    assert t.negative.item() == pytest.approx(math.log(2), rel=1e-6)
    assert t.total.item() == pytest.approx(ce + math.log(2), rel=1e-6)
    nothing = SegmentationLoss(k)(logits[2:], label[2:], cand[2:])
    assert not nothing.supervised and nothing.total.item() == 0.0


def test_class_weights_and_confidence():
    k = 3
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    label = torch.tensor([1, 2])
    per = torch.nn.functional.cross_entropy(logits, label - 1, reduction="none")
    w = SegmentationLoss(k, lovasz_weight=0, class_weights=[1.0, 3.0, 1.0])(logits, label, torch.zeros(2, dtype=torch.long))
    assert w.ce.item() == pytest.approx(((per[0] + 3 * per[1]) / 4).item(), rel=1e-6)
    c = SegmentationLoss(k, lovasz_weight=0, confidence_weighting=True)(logits, label, torch.zeros(2, dtype=torch.long),
                                                                       torch.tensor([1.0, 0.0]))
    assert c.ce.item() == pytest.approx(per[0].item() / 2, rel=1e-6)
    with pytest.raises(ValueError, match="class_weights"):
        SegmentationLoss(k, class_weights=[1.0, 2.0])


def test_inverse_frequency_weights():
    w = inverse_frequency_weights([100, 25, 0], power=0.5)
    assert w[2] == 1.0
    assert w[1] / w[0] == pytest.approx(2.0)
    assert np.mean(w[:2].numpy()) == pytest.approx(1.0)


def test_batched_lovasz_equals_the_per_class_loop():
    """The GPU path (all classes sorted at once) gives the loop's value and gradient."""
    from lidarlift.model.losses import _lovasz_softmax_batched

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 6, generator=g, requires_grad=True)
    target = torch.randint(0, 5, (500,), generator=g)
    a = lovasz_softmax(torch.softmax(logits, 1), target)
    (ga,) = torch.autograd.grad(a, logits)
    b = _lovasz_softmax_batched(torch.softmax(logits, 1), target)
    (gb,) = torch.autograd.grad(b, logits)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    assert torch.allclose(ga, gb, atol=1e-6)
