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
    loss = SegmentationLoss.from_config(k, {"lovasz_weight": 0.0, "class_weights": "none"})
    t = loss(logits, label, cand)
    ce = -torch.log_softmax(logits[0], 0)[0].item()
    assert t.n_labelled == 1 and t.n_candidates == 1
    assert t.ce.item() == pytest.approx(ce, rel=1e-6)
    assert t.negative.item() == pytest.approx(math.log(2), rel=1e-6)
    assert t.total.item() == pytest.approx(ce + math.log(2), rel=1e-6)
    nothing = SegmentationLoss.from_config(k, {"class_weights": "none"})(logits[2:], label[2:], cand[2:])
    assert not nothing.supervised and nothing.total.item() == 0.0


def test_class_weights_and_confidence():
    k = 3
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    label = torch.tensor([1, 2])
    per = torch.nn.functional.cross_entropy(logits, label - 1, reduction="none")
    w = SegmentationLoss.from_config(k, {"lovasz_weight": 0, "class_weights": [1.0, 3.0, 1.0]})(
        logits, label, torch.zeros(2, dtype=torch.long))
    assert w.ce.item() == pytest.approx(((per[0] + 3 * per[1]) / 4).item(), rel=1e-6)
    c = SegmentationLoss.from_config(k, {"lovasz_weight": 0, "confidence_weighting": True, "class_weights": "none"})(
        logits, label, torch.zeros(2, dtype=torch.long), torch.tensor([1.0, 0.0]))
    assert c.ce.item() == pytest.approx(per[0].item() / 2, rel=1e-6)
    with pytest.raises(ValueError, match="class_weights"):
        SegmentationLoss.from_config(k, {"class_weights": [1.0, 2.0]})


def test_loss_from_config_takes_the_schema_defaults_and_names_bad_keys():
    """``SegmentationLoss.from_config`` fills ``train.loss`` from config/schema.yaml; the frequency class
    weights come from the label counts (label 0 = ignore is not a class); a bad value names its key."""
    from lidarlift.config import section

    d = section("train.loss")
    loss = SegmentationLoss.from_config(3)
    assert (loss.ce_weight, loss.lovasz_weight, loss.negative_weight, loss.confidence_weighting) == (
        d["ce_weight"], d["lovasz_weight"], d["negative_weight"], d["confidence_weighting"])
    assert d["class_weights"] == "inverse_sqrt_frequency" and torch.equal(loss.class_weights, torch.ones(3))
    counted = SegmentationLoss.from_config(3, {"class_weights": "inverse_frequency"}, label_counts=[500, 100, 25, 0])
    assert torch.allclose(counted.class_weights, inverse_frequency_weights([100, 25, 0], power=1.0))
    assert SegmentationLoss.from_config(3, {"class_weights": "none"}).class_weights is None
    with pytest.raises(ValueError, match=r"config key train\.loss\.ce_weight\b"):
        SegmentationLoss.from_config(3, {"ce_weight": -1})
    with pytest.raises(TypeError):  # the constructor carries no defaults of its own
        SegmentationLoss(3)


def test_inverse_frequency_weights():
    w = inverse_frequency_weights([100, 25, 0], power=0.5)
    assert w[2] == 1.0
    assert w[1] / w[0] == pytest.approx(2.0)
    assert np.mean(w[:2].numpy()) == pytest.approx(1.0)


def _lovasz_reference(probs, target):
    """Berman et al.'s Lovász-softmax as published: one class at a time, over the present classes,
    on the labelled points only (an (N,) sort and cumsum per class)."""
    losses = []
    for c in torch.unique(target).tolist():
        fg = (target == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        gt_sorted = fg[perm]
        gts = gt_sorted.sum()
        jaccard = 1.0 - (gts - gt_sorted.cumsum(0)) / (gts + (1.0 - gt_sorted).cumsum(0))
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
        losses.append(torch.dot(errors_sorted, jaccard))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_lovasz_equals_the_per_class_reference_value_and_gradient(device):
    """The (K, N) sort-once formulation over all points with a validity mask gives the published per-class
    loop's value and gradient on the labelled points (random logits, 2 absent classes, 40% unlabelled)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 8, generator=g).to(device).requires_grad_(True)
    target = torch.randint(0, 6, (2000,), generator=g).to(device)  # classes 6 and 7 absent
    valid = (torch.rand(2000, generator=g) < 0.6).to(device)
    target_all = torch.where(valid, target, torch.full_like(target, 7))  # unlabelled rows hold an absent class
    a = _lovasz_reference(torch.softmax(logits[valid], 1), target[valid])
    (ga,) = torch.autograd.grad(a, logits)
    b = lovasz_softmax(torch.softmax(logits, 1), target_all, valid)
    (gb,) = torch.autograd.grad(b, logits)
    assert b.item() == pytest.approx(a.item(), abs=1e-6)
    assert torch.allclose(ga, gb, atol=1e-7), (ga - gb).abs().max()
    assert gb[~valid].abs().max() == 0, "unlabelled points get no Lovász gradient"
    c = lovasz_softmax(torch.softmax(logits[valid], 1), target[valid])  # no mask: the same again
    assert c.item() == pytest.approx(a.item(), abs=1e-6)


def test_loss_of_masked_points_equals_the_loss_of_the_labelled_subset():
    """SegmentationLoss on all points (masks, tensor counts) equals CE / Lovász on the labelled rows and
    the negative loss on the candidate rows computed separately, with class weights and confidence."""
    k = 5
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, k, generator=g, requires_grad=True)
    label = torch.randint(0, k + 1, (300,), generator=g)
    cand = torch.randint(0, 1 << k, (300,), generator=g)
    conf = torch.rand(300, generator=g)
    w = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0])
    t = SegmentationLoss.from_config(k, {"class_weights": w.tolist(), "confidence_weighting": True})(logits, label, cand, conf)
    lab = label > 0
    per = torch.nn.functional.cross_entropy(logits[lab], label[lab] - 1, weight=w, reduction="none") * conf[lab]
    ce = per.sum() / w[label[lab] - 1].sum()
    lov = _lovasz_reference(torch.softmax(logits[lab], 1), label[lab] - 1)
    has_set = ~lab & (cand != 0) & (cand != (1 << k) - 1)
    neg = negative_label_loss(logits[has_set], candidate_sets(cand[has_set], k)).mean()
    assert t.ce.item() == pytest.approx(ce.item(), rel=1e-6)
    assert t.lovasz.item() == pytest.approx(lov.item(), rel=1e-6)
    assert t.negative.item() == pytest.approx(neg.item(), rel=1e-6)
    assert int(t.n_labelled) == int(lab.sum()) and int(t.n_candidates) == int(has_set.sum())
    (g1,) = torch.autograd.grad(t.total, logits)
    (g2,) = torch.autograd.grad(ce + lov + neg, logits)
    assert torch.allclose(g1, g2, atol=1e-7)
