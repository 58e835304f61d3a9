"""Detection, screening and calibration metrics on hand-made cases whose answers are known exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from training.metrics import (
    EvaluationReport,
    ImagePredictions,
    ImageTruth,
    calibrate_thresholds,
    confusion_matrix,
    detection_metrics,
    evaluation_json,
    image_has_threat,
    map_at_ious,
    per_image_class_max_scores,
    roc_curve,
    screening_metrics,
)
from training.plots import write_plots

NAMES = ["drug_package", "cash_bundle"]


def truth(boxes, classes, image_id="img", size=(640, 480)) -> ImageTruth:
    return ImageTruth(
        image_id=image_id,
        width=size[0],
        height=size[1],
        boxes_xyxy=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        class_ids=np.asarray(classes, dtype=np.int64).reshape(-1),
    )


def pred(boxes, scores, classes) -> ImagePredictions:
    return ImagePredictions(
        boxes_xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        scores=np.asarray(scores, dtype=np.float32).reshape(-1),
        class_ids=np.asarray(classes, dtype=np.int64).reshape(-1),
    )


BOX_A = [10, 10, 110, 110]
BOX_B = [200, 50, 300, 200]
FAR = [400, 300, 500, 400]


# --- detection: COCO AP ---------------------------------------------------------------------------------


def test_perfect_predictions_give_map_one():
    gts = [truth([BOX_A, BOX_B], [0, 1]), truth([BOX_B], [0]), truth([], [])]
    preds = [pred(g.boxes_xyxy, np.full(len(g.class_ids), 0.9), g.class_ids) for g in gts]
    rep = detection_metrics(gts, preds, NAMES)
    assert rep.map50 == pytest.approx(1.0)
    assert rep.map50_95 == pytest.approx(1.0)
    assert rep.ap50_per_class == {"drug_package": pytest.approx(1.0), "cash_bundle": pytest.approx(1.0)}
    assert rep.n_images == 3 and rep.n_gt_boxes == 3 and rep.gt_boxes_per_class == {"drug_package": 2, "cash_bundle": 1}


def test_all_wrong_class_gives_zero_and_class_without_truth_is_null():
    gts = [truth([BOX_A], [0]), truth([BOX_B], [0])]
    preds = [pred(g.boxes_xyxy, [0.9], [1]) for g in gts]
    rep = detection_metrics(gts, preds, NAMES)
    assert rep.map50 == 0.0 and rep.map50_95 == 0.0
    assert rep.ap50_per_class["drug_package"] == 0.0
    assert rep.ap50_per_class["cash_bundle"] is None
    assert np.all(np.isnan(rep.pr_precision[1]))


def test_half_the_truths_found_gives_coco_interpolated_value():
    # 2 truths, 1 perfect detection: precision 1 up to recall 0.5, then 0. COCO samples 101 recall points
    # 0, 0.01, …, 1; points 0..0.50 (51 of them) have precision 1.
    gts = [truth([BOX_A], [0]), truth([BOX_B], [0])]
    preds = [pred([BOX_A], [0.9], [0]), pred([], [], [])]
    rep = detection_metrics(gts, preds, NAMES)
    assert rep.ap50_per_class["drug_package"] == pytest.approx(51 / 101)
    assert rep.map50 == pytest.approx(51 / 101)  # cash_bundle has no truth: left out of the mean
    assert rep.pr_precision[0, 50] == 1.0 and rep.pr_precision[0, 51] == 0.0


def test_false_positive_ranked_above_true_positive():
    # 1 truth; a false positive (0.9) ranks above the true positive (0.8): precision 0.5 at recall 1, and
    # COCO's interpolation (max precision at recall ≥ r) gives 0.5 at every recall point.
    gts = [truth([BOX_A], [0])]
    preds = [pred([FAR, BOX_A], [0.9, 0.8], [0, 0])]
    assert detection_metrics(gts, preds, NAMES).ap50_per_class["drug_package"] == pytest.approx(0.5)


def test_false_positive_between_two_true_positives():
    # 2 truths; ranks TP (0.9), FP (0.8), TP (0.7): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # Interpolated: 1 for r ≤ 0.5 (51 points), 2/3 for r in 0.51..1 (50 points).
    gts = [truth([BOX_A, BOX_B], [0, 0])]
    preds = [pred([BOX_A, FAR, BOX_B], [0.9, 0.8, 0.7], [0, 0, 0])]
    ap = detection_metrics(gts, preds, NAMES).ap50_per_class["drug_package"]
    assert ap == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_map50_95_counts_the_iou_thresholds_a_box_passes():
    # IoU 0.78 passes 0.50, 0.55, …, 0.75 (6 of the 10 thresholds) and fails 0.80…0.95.
    gts = [truth([[0, 0, 100, 100]], [0])]
    preds = [pred([[0, 0, 100, 78]], [0.9], [0])]
    rep = detection_metrics(gts, preds, NAMES)
    assert rep.map50 == pytest.approx(1.0)
    assert rep.map50_95 == pytest.approx(0.6)
    assert rep.ap50_95_per_class["drug_package"] == pytest.approx(0.6)


def test_map_at_ious_tells_loose_boxes_and_wrong_classes_apart():
    # Truth A (drug_package) boxed loosely (IoU 0.4) with the right class; truth B boxed tightly, wrong class.
    gts = [truth([[0, 0, 100, 100], BOX_B], [0, 1])]
    preds = [pred([[0, 0, 100, 40], BOX_B], [0.9, 0.8], [0, 0])]
    by_iou = map_at_ious(gts, preds, NAMES, [0.3, 0.5])
    # drug_package: A found at IoU 0.3 (B, ranked lower, is a false positive): AP 1; not at 0.5: 0.
    # cash_bundle: never detected: 0. Mean over the two classes:
    assert by_iou == {"0.3": pytest.approx(0.5), "0.5": pytest.approx(0.0)}
    agnostic = map_at_ious(gts, preds, NAMES, [0.3, 0.5], class_agnostic=True)
    # One class: both truths found at 0.3; at 0.5 only B (ranked second): precision 1/2 from recall 0.5.
    assert agnostic["0.3"] == pytest.approx(1.0)
    assert agnostic["0.5"] == pytest.approx(51 / 101 * 0.5)
    assert map_at_ious([truth([], [])], [pred([], [], [])], NAMES, [0.5]) == {"0.5": None}


def test_class_without_truth_is_null_and_excluded_from_mean():
    gts = [truth([BOX_A], [0]), truth([], [])]
    preds = [pred([BOX_A, FAR], [0.9, 0.95], [0, 1]), pred([BOX_B], [0.99], [1])]
    rep = detection_metrics(gts, preds, NAMES)
    assert rep.ap50_per_class == {"drug_package": pytest.approx(1.0), "cash_bundle": None}
    assert rep.map50 == pytest.approx(1.0)


def test_detections_on_clean_images_are_false_positives():
    # A clean image's detection outranks the true positive: AP drops from 1 to 0.5 as in the FP case.
    gts = [truth([BOX_A], [0]), truth([], [])]
    preds = [pred([BOX_A], [0.8], [0]), pred([BOX_A], [0.9], [0])]
    assert detection_metrics(gts, preds, NAMES).ap50_per_class["drug_package"] == pytest.approx(0.5)


def test_no_predictions_and_no_truths():
    gts = [truth([BOX_A], [0])]
    rep = detection_metrics(gts, [pred([], [], [])], NAMES)
    assert rep.map50 == 0.0 and rep.n_pred_boxes == 0
    empty = detection_metrics([truth([], [])], [pred([], [], [])], NAMES)
    assert empty.map50 is None and empty.map50_95 is None


def test_accepts_postprocess_detections():
    from vision.postprocess import Detections

    gts = [truth([BOX_A], [0])]
    dets = [Detections.from_arrays(np.array([BOX_A]), np.array([0.9]), np.array([0]))]
    assert detection_metrics(gts, dets, NAMES).map50 == pytest.approx(1.0)


def test_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        detection_metrics([truth([BOX_A], [0])], [], NAMES)
    with pytest.raises(ValueError):
        detection_metrics([truth([BOX_A], [2])], [pred([], [], [])], NAMES)
    with pytest.raises(ValueError):
        detection_metrics([truth([BOX_A], [0])], [pred([BOX_A], [np.nan], [0])], NAMES)


# --- detection: confusion matrix ------------------------------------------------------------------------


def test_confusion_matrix_counts_matches_confusions_misses_and_false_alarms():
    box_c = [10, 300, 90, 380]
    gts = [truth([BOX_A, BOX_B, box_c], [0, 1, 0])]
    preds = [
        pred(
            [BOX_A, BOX_B, FAR, BOX_A, box_c],
            [0.9, 0.8, 0.7, 0.6, 0.1],  # the last one is below the score threshold: ignored
            [0, 0, 1, 1, 0],
        )
    ]
    cm = confusion_matrix(gts, preds, 2, iou_threshold=0.5, score_threshold=0.25)
    expected = np.array(
        [
            [1, 0, 1],  # drug: BOX_A found; box_c missed
            [1, 0, 0],  # cash at BOX_B predicted as drug
            [0, 2, 0],  # background: FAR and the duplicate at BOX_A, both predicted cash
        ]
    )
    np.testing.assert_array_equal(cm, expected)


def test_confusion_prefers_same_class_match_over_higher_scoring_wrong_class():
    # Multi-label post-processing can put a wrong class (0.9) and the right class (0.6) on one object: the
    # right one is the match; the wrong one is a false alarm, not a confusion.
    gts = [truth([BOX_A], [0])]
    preds = [pred([BOX_A, BOX_A], [0.9, 0.6], [1, 0])]
    cm = confusion_matrix(gts, preds, 2, score_threshold=0.25)
    assert cm[0, 0] == 1 and cm[2, 1] == 1 and cm[0, 1] == 0 and cm.sum() == 2


def test_confusion_rows_and_columns_sum_to_truths_and_kept_predictions():
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for i in range(20):
        n, m = rng.integers(0, 4), rng.integers(0, 6)
        xy = rng.uniform(0, 200, (n, 2))
        gts.append(truth(np.c_[xy, xy + rng.uniform(20, 80, (n, 2))], rng.integers(0, 2, n), image_id=i))
        jitter = rng.uniform(0, 200, (m, 2))
        preds.append(pred(np.c_[jitter, jitter + 60], rng.uniform(0, 1, m), rng.integers(0, 2, m)))
    thr = np.array([0.3, 0.5])
    rep = detection_metrics(gts, preds, NAMES, confusion_score_threshold=thr)
    cm = rep.confusion
    kept = sum(np.bincount(p.class_ids[p.scores >= thr[p.class_ids]], minlength=2) for p in preds)
    np.testing.assert_array_equal(cm[:2].sum(axis=1), [rep.gt_boxes_per_class[n] for n in NAMES])
    np.testing.assert_array_equal(cm[:, :2].sum(axis=0), kept)
    assert cm[2, 2] == 0


def test_per_image_class_max_scores_and_threat_flags():
    preds = [pred([BOX_A, BOX_B, FAR], [0.3, 0.7, 0.5], [1, 1, 0]), pred([], [], [])]
    np.testing.assert_allclose(per_image_class_max_scores(preds, 2), [[0.5, 0.7], [0.0, 0.0]], rtol=1e-6)
    assert image_has_threat([truth([BOX_A], [0]), truth([], [])]).tolist() == [True, False]


# --- screening ------------------------------------------------------------------------------------------


def test_perfectly_separated_bags():
    clean, threat = np.linspace(0, 0.49, 100), np.linspace(0.5, 0.99, 50)
    rep = screening_metrics(np.r_[clean, threat], np.r_[np.zeros(100, bool), np.ones(50, bool)])
    assert rep.auroc == pytest.approx(1.0)
    assert rep.pd_at(0.01) == 1.0 and rep.pd_at(0.05) == 1.0
    # The threshold is set on the clean bags: as low as the false-alarm budget allows (1 and 5 of 100).
    p1, p5 = rep.operating_points
    assert (p1.pfa, p1.threshold) == (0.01, clean[-1])
    assert (p5.pfa, p5.threshold) == (0.05, clean[-5])


def test_reversed_bags():
    clean, threat = np.linspace(0.5, 0.99, 100), np.linspace(0, 0.49, 50)
    rep = screening_metrics(np.r_[clean, threat], np.r_[np.zeros(100, bool), np.ones(50, bool)])
    assert rep.auroc == pytest.approx(0.0)
    assert rep.pd_at(0.01) == 0.0 and rep.pd_at(0.05) == 0.0


def test_known_pd_at_pfa():
    # 100 clean bags score 0.00 … 0.99. At Pfa 0.05 at most 5 may alarm (0.95 … 0.99): the lowest such
    # threshold among the observed scores is the threat score 0.945, and 4 of 10 threats reach it. At
    # Pfa 0.01 only 0.99 may alarm: threshold 0.985, 2 threats.
    clean = np.arange(100) / 100
    threat = np.array([0.999, 0.985, 0.955, 0.945, 0.5, 0.3, 0.2, 0.1, 0.05, 0.0])
    rep = screening_metrics(np.r_[clean, threat], np.r_[np.zeros(100, bool), np.ones(10, bool)])
    p1, p5 = rep.operating_points
    assert (p1.target_pfa, p1.pd, p1.pfa, p1.threshold) == (0.01, pytest.approx(0.2), 0.01, 0.985)
    assert (p5.target_pfa, p5.pd, p5.pfa, p5.threshold) == (0.05, pytest.approx(0.4), 0.05, 0.945)
    assert rep.notes == ()


def test_auroc_equals_mann_whitney_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 8, 300).astype(float)  # many ties
    labels = rng.uniform(size=300) < scores / 10
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert screening_metrics(scores, labels).auroc == pytest.approx(expected)


def test_roc_curve_shape_and_ends():
    fpr, tpr, thr = roc_curve(np.array([0.1, 0.4, 0.4, 0.8]), np.array([False, True, False, True]))
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    assert thr[0] == np.inf and thr.tolist()[1:] == [0.8, 0.4, 0.1]


def test_one_class_input_is_undefined_with_note():
    rep = screening_metrics(np.array([0.1, 0.5, 0.9]), np.ones(3, bool))
    assert rep.auroc is None and rep.pd_at(0.05) is None and rep.n_clean == 0
    assert any("no clean bags" in n for n in rep.notes)
    rep = screening_metrics(np.array([0.1, 0.5]), np.zeros(2, bool))
    assert rep.auroc is None and any("no threat bags" in n for n in rep.notes)


def test_too_few_clean_bags_note():
    rep = screening_metrics(np.r_[np.arange(20) / 20, 0.99], np.r_[np.zeros(20, bool), True])
    assert rep.operating_points[0].pfa == 0.0  # 20 clean bags: Pfa 0.01 means no false alarm at all
    assert any("only 20 clean bags" in n for n in rep.notes)


# --- threshold calibration ------------------------------------------------------------------------------


def _union_pfa(scores: np.ndarray, thresholds: dict[str, float], names) -> float:
    thr = np.array([thresholds[n] for n in names], dtype=np.float64)
    # Score as the lane sees it: float32 cast to float64, compared with >= (vision.decide).
    return float(np.any(scores.astype(np.float32).astype(np.float64) >= thr, axis=1).mean())


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_calibration_meets_target_on_random_bags(target):
    rng = np.random.default_rng(2)
    names = ["a", "b", "c", "d"]
    clean = rng.beta(1, 6, (500, 4)).astype(np.float32)
    threat = np.clip(clean[:100] + rng.uniform(0.2, 0.6, (100, 4)), 0, 1).astype(np.float32)
    scores = np.r_[clean, threat]
    is_clean = np.r_[np.ones(500, bool), np.zeros(100, bool)]
    cal = calibrate_thresholds(scores, is_clean, target, names)
    assert cal.achieved_pfa <= target
    assert _union_pfa(clean, cal.thresholds, names) == pytest.approx(cal.achieved_pfa)
    assert all(0.0 < t <= 1.0 for t in cal.thresholds.values())
    assert cal.pd == pytest.approx(_union_pfa(threat, cal.thresholds, names))
    # The budget is maximal: one more false alarm per class would break the target.
    m = cal.per_class_false_alarms
    looser = {n: float(np.nextafter(np.sort(clean[:, k])[::-1][m + 1], np.float32(1))) for k, n in enumerate(names)}
    assert _union_pfa(clean, looser, names) > target


def test_calibration_union_rule_disjoint_vs_shared_false_alarms():
    # 100 clean bags; bag i fires only class i % 2 with score i/100. Target 0.1 allows 10 alarming bags.
    # Disjoint alarms: the union counts both classes, so each class gets 5. Identical columns: each
    # alarming bag fires both classes at once and counts once, so each class gets the full 10.
    i = np.arange(100)
    disjoint = np.zeros((100, 2))
    disjoint[i, i % 2] = i / 100
    cal = calibrate_thresholds(disjoint, np.ones(100, bool), 0.1, ["x", "y"])
    assert cal.per_class_false_alarms == 5 and cal.achieved_pfa == pytest.approx(0.1)
    assert cal.pd is None
    shared = np.c_[i / 100, i / 100]
    cal = calibrate_thresholds(shared, np.ones(100, bool), 0.1, ["x", "y"])
    assert cal.per_class_false_alarms == 10 and cal.achieved_pfa == pytest.approx(0.1)
    # The 11th highest clean score (0.89) sits just below its threshold and does not alarm.
    assert 0.89 < cal.thresholds["x"] < 0.90


def test_calibration_reports_unreachable_target_when_clean_bags_score_one():
    scores = np.r_[np.ones(5), np.linspace(0, 0.5, 95)][:, None]
    cal = calibrate_thresholds(scores, np.ones(100, bool), 0.01, ["x"])
    assert cal.thresholds["x"] == 1.0 and cal.achieved_pfa == pytest.approx(0.05)
    assert any("capped at 1.0" in n for n in cal.notes)


def test_calibration_rejects_bad_input():
    with pytest.raises(ValueError):
        calibrate_thresholds(np.zeros((3, 2)), np.zeros(3, bool), 0.05, ["x", "y"])  # no clean bags
    with pytest.raises(ValueError):
        calibrate_thresholds(np.zeros((3, 2)), np.ones(3, bool), 0.05, ["x"])  # shape mismatch


# --- report: JSON and plots -----------------------------------------------------------------------------


def _report(with_screening: bool = True) -> EvaluationReport:
    gts = [truth([BOX_A], [0], image_id="t1"), truth([BOX_B], [0], image_id="t2"), truth([], [], image_id="c1")]
    preds = [pred([BOX_A], [0.9], [0]), pred([], [], []), pred([FAR], [0.4], [0])]
    det = detection_metrics(gts, preds, NAMES)
    bag_scores = per_image_class_max_scores(preds, 2).max(axis=1)
    scr = screening_metrics(bag_scores, image_has_threat(gts)) if with_screening else None
    return EvaluationReport(detection=det, screening=scr)


def test_evaluation_json_is_strict_json_with_required_keys():
    out = evaluation_json(_report())
    text = json.dumps(out, allow_nan=False)  # raises on NaN/inf
    back = json.loads(text)
    # drug: 1 of 2 truths found and the clean image's FP ranks below it → 51/101; cash has no truth.
    assert back["map50"] == pytest.approx(51 / 101)
    assert back["per_class"] == {"drug_package": pytest.approx(51 / 101), "cash_bundle": None}
    assert set(back["pd_at_pfa"]) == {"0.01", "0.05"}
    assert back["bag_auroc"] == pytest.approx(0.5)  # threats 0.9 and 0.0 (missed) vs the clean bag's 0.4
    assert back["counts"]["images"] == 3 and back["counts"]["boxes"] == 2
    assert back["counts"]["bags_with_threats"] == 2 and back["counts"]["clean_bags"] == 1
    assert back["threshold_at_pfa"]["0.01"] == pytest.approx(0.9)


def test_evaluation_json_without_screening_has_null_figures():
    out = evaluation_json(_report(with_screening=False))
    json.dumps(out, allow_nan=False)
    assert out["bag_auroc"] is None and out["pd_at_pfa"] == {"0.01": None, "0.05": None}


def test_write_plots_produces_valid_pngs(tmp_path):
    paths = write_plots(_report(), tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["bag_roc.png", "confusion_matrix.png", "pr_curves.png"]
    for p in paths:
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0  # something was drawn


def test_roc_plot_of_one_class_bags_still_writes(tmp_path):
    from training.plots import plot_roc

    p = plot_roc(screening_metrics(np.array([0.2, 0.3]), np.zeros(2, bool)), tmp_path / "roc.png")
    assert cv2.imread(str(p)) is not None


def test_metrics_modules_do_not_import_torch():
    code = "import sys, training.metrics, training.plots; sys.exit(1 if 'torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_inverted_or_non_finite_boxes_are_refused():
    """An x2 < x1 box (a y,x swap, a reader's bug) would reach COCO as a negative width and be scored
    silently: it is refused, naming the box."""
    ok = np.array([[1.0, 2.0, 5.0, 6.0]])
    ImageTruth("a", 10, 10, ok, np.array([0]))
    ImagePredictions(ok, np.array([0.9]), np.array([0]))
    with pytest.raises(ValueError, match=r"truth box 0 is not x1 ≤ x2"):
        ImageTruth("a", 10, 10, np.array([[5.0, 2.0, 1.0, 6.0]]), np.array([0]))
    with pytest.raises(ValueError, match=r"prediction box 1 is not x1 ≤ x2"):
        ImagePredictions(np.array([[1.0, 2.0, 5.0, 6.0], [1.0, 6.0, 5.0, 2.0]]), np.array([0.9, 0.8]), np.array([0, 0]))
    with pytest.raises(ValueError, match="finite"):
        ImagePredictions(np.array([[1.0, 2.0, np.nan, 6.0]]), np.array([0.9]), np.array([0]))
