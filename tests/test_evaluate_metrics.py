"""Evaluation metrics on hand-built arrays: known answers, and equality with the devkit's own
metric classes (ConfusionMatrix of LidarSegEval, PanopticEval of NuScenesPanopticEval)."""
from __future__ import annotations

import numpy as np
import pytest

from lidarlift.classes import NUSCENES16, SEMANTICKITTI19
from lidarlift.evaluate.instances import InstanceParams, cluster_instances, compact_instances
from lidarlift.evaluate.metrics import (
    PanopticAccumulator, confusion_matrix, lidarseg_scores, max_abs_diff, panoptic_report, semantic_report,
    semantickitti_scores,
)
from lidarlift.evaluate.truth import segment_key as gt_segment_key

CAR, PED, ROAD, VEG = (NUSCENES16.index(c) for c in ("car", "pedestrian", "driveable_surface", "vegetation"))


def test_confusion_matrix_counts_rows_gt_cols_pred():
    gt = np.array([1, 1, 2, 0, 16])
    pred = np.array([1, 2, 2, 5, 16])
    cm = confusion_matrix(gt, pred, 16)
    assert cm.shape == (17, 17) and cm.sum() == 5
    assert cm[1, 1] == 1 and cm[1, 2] == 1 and cm[2, 2] == 1 and cm[0, 5] == 1 and cm[16, 16] == 1
    with pytest.raises(ValueError, match="0..16"):
        confusion_matrix(gt, np.array([1, 2, 3, 4, 17]), 16)
    with pytest.raises(ValueError, match="5 points but prediction has 4"):
        confusion_matrix(gt, pred[:4], 16)


def test_lidarseg_iou_known_values_ignore_and_absent_classes():
    # car: gt 4 points, 3 predicted car, 1 predicted road; road: 2 gt, both road; one ignore point predicted car
    gt = np.array([CAR] * 4 + [ROAD] * 2 + [0])
    pred = np.array([CAR, CAR, CAR, ROAD, ROAD, ROAD, CAR])
    s = lidarseg_scores(confusion_matrix(gt, pred, 16))
    assert s["iou"][CAR - 1] == pytest.approx(3 / 4)  # ignore-gt point is not a car FP
    assert s["iou"][ROAD - 1] == pytest.approx(2 / 3)
    assert np.isnan(s["iou"][PED - 1])  # absent from gt and prediction: left out of the mean
    assert s["miou"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    k = semantickitti_scores(confusion_matrix(gt, pred, 16))
    assert k["iou"][PED - 1] == 0.0 and k["miou"] == pytest.approx((3 / 4 + 2 / 3) / 16)


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(0)
    gt = rng.integers(1, 17, 1000)
    cm = confusion_matrix(gt, gt, 16)
    assert lidarseg_scores(cm)["miou"] == pytest.approx(1.0)
    rep = semantic_report(cm, NUSCENES16)
    assert rep["accuracy"] == 1.0 and set(rep["iou_per_class"]) == set(NUSCENES16.classes)


def _devkit_cm_scores(gt, pred):
    from nuscenes.eval.lidarseg.utils import ConfusionMatrix

    cm = ConfusionMatrix(17, 0)
    cm.update(gt, pred)
    return np.asarray(cm.get_per_class_iou())[1:], cm.get_mean_iou(), cm.get_freqweighted_iou()


def test_lidarseg_scores_equal_devkit_confusion_matrix_on_random_labels():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 17, 20000)
    gt[gt == 5] = 0  # one class absent from ground truth
    pred = np.where(rng.random(20000) < 0.6, np.maximum(gt, 1), rng.integers(1, 17, 20000))
    pred[pred == 9] = 10  # one class never predicted
    ours = lidarseg_scores(confusion_matrix(gt, pred, 16))
    iou, miou, fw = _devkit_cm_scores(gt, pred)
    np.testing.assert_allclose(ours["iou"], iou, rtol=0, atol=1e-12, equal_nan=True)
    assert ours["miou"] == pytest.approx(miou, abs=1e-12)
    assert ours["freq_weighted_iou"] == pytest.approx(fw, abs=1e-12)


def _random_panoptic_scan(rng, n=4000):
    """gt: nuScenes panoptic values (1000 * fine + id) and a prediction that partly agrees."""
    from lidarlift.classes import FINE_TO_CHALLENGE

    fine = rng.choice([0, 2, 3, 9, 12, 17, 17, 17, 23, 24, 24, 28, 30, 31], n)
    inst = np.where(fine < 24, rng.integers(1, 6, n), 0)
    inst[fine == 0] = 0
    pan_gt = (1000 * fine + inst).astype(np.uint16)
    gt_sem = FINE_TO_CHALLENGE[fine].astype(np.int64)
    # prediction: mostly the right class; instances are gt instances with some merged / split / noise
    pred_sem = np.where(rng.random(n) < 0.85, np.maximum(gt_sem, rng.integers(1, 17, n) * (gt_sem == 0)), rng.integers(1, 17, n))
    pred_sem = np.where(pred_sem == 0, 1, pred_sem)
    pred_inst = np.where(NUSCENES16.thing_mask[pred_sem], np.where(rng.random(n) < 0.9, inst, rng.integers(1, 8, n)), 0)
    pred_inst = np.where(NUSCENES16.thing_mask[pred_sem] & (pred_inst == 0), 7, pred_inst)
    pan_pred = (1000 * pred_sem + pred_inst).astype(np.uint16)
    return pan_gt, fine, gt_sem, pan_pred, pred_sem, pred_inst


@pytest.mark.parametrize("min_points", [1, 15, 60])
def test_panoptic_equals_devkit_panoptic_eval_on_random_scans(min_points):
    from nuscenes.eval.panoptic.panoptic_seg_evaluator import PanopticEval

    rng = np.random.default_rng(min_points)
    theirs = PanopticEval(n_classes=17, ignore=[0], min_points=min_points)
    ours = PanopticAccumulator(NUSCENES16, min_points)
    for _ in range(5):
        pan_gt, fine, gt_sem, pan_pred, pred_sem, pred_inst = _random_panoptic_scan(rng)
        theirs.addBatch(pan_pred // 1000, pan_pred, gt_sem, pan_gt)
        inst_key = np.where(pan_gt % 1000 > 0, pan_gt, 0)
        ours.add(pred_sem, pred_inst, gt_sem, gt_segment_key(fine, inst_key))
    pq, sq, rq, pq_all, sq_all, rq_all = theirs.getPQ()
    miou, _ = theirs.getSemIoU()
    s = ours.scores()
    assert s["pq"] == pytest.approx(pq, abs=1e-12)
    assert s["sq"] == pytest.approx(sq, abs=1e-12)
    assert s["rq"] == pytest.approx(rq, abs=1e-12)
    np.testing.assert_allclose(s["per_class"]["pq"], pq_all[1:], atol=1e-12)
    assert s["panoptic_miou"] == pytest.approx(miou, abs=1e-12)
    assert s["pq"] > 0.05  # the random scans are not degenerate
    np.testing.assert_array_equal(ours.tp, theirs.pan_tp)
    np.testing.assert_array_equal(ours.fp, theirs.pan_fp)
    np.testing.assert_array_equal(ours.fn, theirs.pan_fn)


def test_panoptic_known_answer_two_cars_one_split():
    # gt: car A (20 pts), car B (20 pts), road (40 pts). pred: A exact, B split 12/8, road exact.
    gt_sem = np.array([CAR] * 40 + [ROAD] * 40)
    gt_inst = np.array([1] * 20 + [2] * 20 + [0] * 40)
    pred_sem = gt_sem.copy()
    pred_inst = np.array([1] * 20 + [2] * 12 + [3] * 8 + [0] * 40)
    acc = PanopticAccumulator(NUSCENES16, min_points=5)
    acc.add(pred_sem, pred_inst, gt_sem, gt_inst)
    pc = acc.per_class()
    # car: TP A (IoU 1) and B vs pred 2 (IoU 12/20 = 0.6); pred 3 (8 pts >= 5) is a FP
    assert pc["tp"][CAR - 1] == 2 and pc["fp"][CAR - 1] == 1 and pc["fn"][CAR - 1] == 0
    assert pc["sq"][CAR - 1] == pytest.approx((1 + 0.6) / 2)
    assert pc["rq"][CAR - 1] == pytest.approx(2 / 2.5)
    assert pc["pq"][ROAD - 1] == pytest.approx(1.0)
    rep = panoptic_report(acc)
    assert rep["pq_stuff"] == pytest.approx(1 / 6)  # only road of the six stuff classes occurs
    assert rep["pq_per_class"]["car"]["fp"] == 1


def test_semantickitti_space_uses_kitti_convention():
    gt = np.array([1, 1, 9, 9, 0])
    pred = np.array([1, 9, 9, 9, 1])
    rep = semantic_report(confusion_matrix(gt, pred, 19), SEMANTICKITTI19)
    assert rep["convention"] == "semantic-kitti-api"
    assert rep["iou_per_class"]["car"] == pytest.approx(0.5)
    assert rep["iou_per_class"]["road"] == pytest.approx(2 / 3)
    assert rep["miou"] == pytest.approx((0.5 + 2 / 3) / 19)


def test_max_abs_diff_finds_the_worst_number_and_nan_mismatch():
    a = {"miou": 0.5, "iou_per_class": {"car": 0.4, "bus": None}, "only_ours": 3.0}
    b = {"miou": 0.5 + 1e-9, "iou_per_class": {"car": 0.41, "bus": float("nan")}}
    d, where = max_abs_diff(a, b)
    assert d == pytest.approx(0.01) and where == "iou_per_class.car"
    d, where = max_abs_diff({"x": 0.1}, {"x": None})
    assert d == float("inf") and where == "x"


def test_cluster_instances_splits_separated_objects_and_keeps_stuff_zero():
    rng = np.random.default_rng(0)
    car_a = rng.normal([10, 0, 0], 0.3, (50, 3))
    car_b = rng.normal([10, 6, 0], 0.3, (30, 3))  # 6 m away: another car
    ped = rng.normal([5, -3, 0], 0.1, (20, 3))
    road = rng.uniform(-20, 20, (100, 3))
    xyz = np.vstack([car_a, car_b, ped, road])
    sem = np.array([CAR] * 80 + [PED] * 20 + [ROAD] * 100)
    inst = cluster_instances(xyz, sem, NUSCENES16, InstanceParams.from_config())
    assert set(inst[:50]) == {1} and set(inst[50:80]) == {2}  # numbered by size
    assert set(inst[80:100]) == {1}  # per-class ids
    assert (inst[100:] == 0).all()
    # range-adaptive: at 60 m the radius grows to 2.4 m, so points 2 m apart join
    far = np.array([[60, 0, 0], [60, 2, 0]], float)
    assert len(set(cluster_instances(far, np.array([PED, PED]), NUSCENES16))) == 1
    near = np.array([[5, 0, 0], [5, 2, 0]], float)
    assert len(set(cluster_instances(near, np.array([PED, PED]), NUSCENES16))) == 2
    with pytest.raises(ValueError, match="evaluate.instances.method"):
        InstanceParams.from_config({"method": "dbscan"})


def test_compact_instances_renumbers_per_class_by_size():
    sem = np.array([CAR, CAR, CAR, PED, PED, ROAD])
    inst = np.array([77, 5, 5, 900, 0, 3])
    out = compact_instances(sem, inst, NUSCENES16)
    assert out.tolist() == [2, 1, 1, 1, 0, 0]


def test_radius_components_equal_brute_force():
    """The components of the graph linking each point to those of its k nearest neighbours within
    max(radius_i, radius_j), against a brute-force build of the same graph; with k large enough they
    are the plain radius graph's components."""
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.distance import cdist

    from lidarlift.evaluate.instances import radius_components

    rng = np.random.default_rng(3)
    xyz = np.vstack([rng.normal(c, 0.6, (120, 3)) for c in ([0, 0, 0], [3, 0, 0], [0, 4, 0], [9, 9, 0])])
    radius = rng.uniform(0.2, 0.7, len(xyz))
    d = cdist(xyz, xyz)
    np.fill_diagonal(d, np.inf)
    within = d < np.maximum(radius[:, None], radius[None, :])
    for k in (3, 16, len(xyz)):
        knn = np.zeros_like(within)
        nearest = np.argsort(d, axis=1)[:, :k]
        knn[np.arange(len(xyz))[:, None], nearest] = True
        _, want = connected_components(within & knn, directed=False)
        got = radius_components(xyz, radius, k=k)
        pairs = set(zip(got.tolist(), want.tolist()))  # the same partition (numbered differently)
        assert len(pairs) == len(set(got.tolist())) == len(set(want.tolist())), k
    _, plain = connected_components(within, directed=False)
    assert len(set(radius_components(xyz, radius, k=len(xyz)).tolist())) == len(set(plain.tolist()))
