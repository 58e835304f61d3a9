"""Review of the evaluation and calibration figures against independent references: COCO AP against a
from-scratch pycocotools-style computation, Pd at Pfa and the calibrated thresholds against brute force
over every possible threshold, and the bag labels the data pipeline hands to evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import DetectionDataset, ScanItem
from training.metrics import ImagePredictions, ImageTruth, detection_metrics
from training.screening import calibrate_thresholds, screening_metrics
from vision.boxes import iou_xyxy
from vision.preprocess import PreprocessSpec

RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _reference_ap(gts, preds, k: int, iou_thr: float) -> float | None:
    """COCO AP of class k at one IoU threshold, as pycocotools computes it (area 'all', maxDets 100):
    per image, detections by descending score each take the free truth of highest IoU ≥ thr; over images,
    precision made monotone from the right and read at 101 recall points (0 beyond the last recall)."""
    scores, hits, n_truths = [], [], 0
    for g, p in zip(gts, preds):
        g_boxes = np.asarray(g.boxes_xyxy, np.float64).reshape(-1, 4)[np.asarray(g.class_ids) == k]
        mine = np.asarray(p.class_ids) == k
        p_boxes = np.asarray(p.boxes_xyxy, np.float64).reshape(-1, 4)[mine]
        p_scores = np.asarray(p.scores, np.float64)[mine]
        order = np.argsort(-p_scores, kind="mergesort")[:100]
        p_boxes, p_scores = p_boxes[order], p_scores[order]
        n_truths += len(g_boxes)
        taken = np.zeros(len(g_boxes), bool)
        iou = iou_xyxy(p_boxes, g_boxes) if len(g_boxes) and len(p_boxes) else np.zeros((len(p_boxes), len(g_boxes)))
        for d in range(len(p_boxes)):
            best, best_iou = -1, min(iou_thr, 1 - 1e-10)
            for j in range(len(g_boxes)):
                if taken[j] or iou[d, j] < best_iou:
                    continue
                best, best_iou = j, iou[d, j]
            if best >= 0:
                taken[best] = True
            scores.append(p_scores[d])
            hits.append(best >= 0)
    if n_truths == 0:
        return None
    if not scores:
        return 0.0
    tp = np.asarray(hits)[np.argsort(-np.asarray(scores), kind="mergesort")]
    ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
    recall, precision = ctp / n_truths, ctp / (ctp + cfp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in idx]))


def _random_scene(rng: np.random.Generator, num_classes: int):
    gts, preds = [], []
    for i in range(int(rng.integers(1, 6))):
        n = int(rng.integers(0, 4))
        xy = rng.random((n, 2)) * 80
        g_boxes = np.c_[xy, xy + rng.random((n, 2)) * 30 + 2]
        g_ids = rng.integers(0, num_classes, n)
        gts.append(ImageTruth(image_id=i, width=120, height=120, boxes_xyxy=g_boxes, class_ids=g_ids))
        m = int(rng.integers(0, 6))
        xy = rng.random((m, 2)) * 80
        p_boxes = np.c_[xy, xy + rng.random((m, 2)) * 30 + 2]
        p_ids = rng.integers(0, num_classes, m)
        if n:  # most detections near a truth, most of those of its class
            j = rng.integers(0, n, m)
            near = rng.random(m) < 0.7
            p_boxes[near] = g_boxes[j[near]] + rng.normal(0, 3, (int(near.sum()), 4))
            p_ids = np.where(near & (rng.random(m) < 0.8), g_ids[j], p_ids)
        p_boxes[:, 2:] = np.maximum(p_boxes[:, 2:], p_boxes[:, :2] + 0.5)
        # Scores on a coarse grid, so ties across images and classes are common (as saturated sigmoids are).
        preds.append(ImagePredictions(boxes_xyxy=p_boxes, scores=np.round(rng.random(m), 1), class_ids=p_ids))
    return gts, preds


def test_coco_ap_matches_an_independent_reference_on_random_scenes():
    rng = np.random.default_rng(7)
    names = ("a", "b", "c")
    for _ in range(25):
        gts, preds = _random_scene(rng, len(names))
        report = detection_metrics(gts, preds, names)
        per_class_50_95 = []
        for k, name in enumerate(names):
            ref50 = _reference_ap(gts, preds, k, 0.5)
            ref = [_reference_ap(gts, preds, k, t) for t in np.linspace(0.5, 0.95, 10)]
            ref50_95 = None if ref50 is None else float(np.mean(ref))
            assert report.ap50_per_class[name] == (pytest.approx(ref50, abs=1e-9) if ref50 is not None else None)
            assert report.ap50_95_per_class[name] == (
                pytest.approx(ref50_95, abs=1e-9) if ref50_95 is not None else None
            )
            per_class_50_95.append(ref50_95)
        valid = [v for v in per_class_50_95 if v is not None]
        assert report.map50_95 == (pytest.approx(np.mean(valid), abs=1e-9) if valid else None)


def test_pd_at_pfa_is_the_best_point_whose_false_alarms_stay_within_the_target():
    rng = np.random.default_rng(3)
    for _ in range(400):
        n = int(rng.integers(2, 40))
        scores = rng.integers(0, 6, n) / 5.0  # many ties between clean and threat bags
        threat = rng.random(n) < 0.5
        if threat.all() or not threat.any():
            continue
        pos, neg = scores[threat], scores[~threat]
        mann_whitney = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
        report = screening_metrics(scores, threat, target_pfas=(0.0, 0.05, 0.2, 0.5))
        assert report.auroc == pytest.approx(mann_whitney, abs=1e-12)
        for op in report.operating_points:
            best = max((pos >= t).mean() for t in np.r_[np.inf, np.unique(scores)] if (neg >= t).mean() <= op.target_pfa)
            assert op.pd == pytest.approx(best, abs=1e-12)
            # The reported threshold, applied with the alarm rule (≥), gives exactly the reported figures.
            assert (neg >= op.threshold).mean() == pytest.approx(op.pfa, abs=1e-12) and op.pfa <= op.target_pfa
            assert (pos >= op.threshold).mean() == pytest.approx(op.pd, abs=1e-12)


def test_calibrated_thresholds_meet_the_target_on_the_calibration_bags_and_fall_as_it_rises():
    rng = np.random.default_rng(5)
    for _ in range(300):
        n, k = int(rng.integers(1, 30)), int(rng.integers(1, 4))
        # float32 scores on a grid (ties, and 0 = no detection of that class), as the lane produces them.
        scores = (np.round(rng.random((n, k)) * rng.integers(0, 2, (n, k)), 1)).astype(np.float32).astype(np.float64)
        clean = rng.random(n) < 0.7
        if not clean.any():
            continue
        names = [f"c{i}" for i in range(k)]
        previous = None
        for target in (0.0, 0.05, 0.1, 0.3, 0.6, 0.9):
            cal = calibrate_thresholds(scores, clean, target, names)
            thr = np.array([cal.thresholds[x] for x in names])
            clean_alarms = np.any(scores[clean] >= thr, axis=1).mean()
            assert clean_alarms == pytest.approx(cal.achieved_pfa, abs=1e-12)
            # Thresholds lie in (0, 1]: a clean bag scoring exactly 1.0 alarms whatever (and a note says so).
            unavoidable = np.any(scores[clean] >= 1.0, axis=1).mean()
            assert clean_alarms <= max(target, unavoidable) + 1e-12
            if (~clean).any():
                assert np.any(scores[~clean] >= thr, axis=1).mean() == pytest.approx(cal.pd, abs=1e-12)
            if previous is not None:
                assert np.all(thr <= previous)  # a looser target never raises a threshold
            previous = thr


class _OneScan(DetectionDataset):
    """A 640×640 scan holding one 6×6 px contraband object: 0.6 px once letterboxed to a 64 px input."""

    def __len__(self) -> int:
        return 1

    def load(self, i: int, epoch: int) -> ScanItem:
        return ScanItem(np.zeros((640, 640, 3), np.uint8), np.array([[100, 100, 106, 106]], np.float32),
                        np.array([0], np.int64), "tiny")

    def box_counts(self) -> np.ndarray:
        return np.array([1])


def test_a_bag_whose_only_threat_is_small_in_the_model_input_is_not_a_clean_bag():
    spec = PreprocessSpec(height=64, width=64)
    target = _OneScan(classes=("drug_package",), spec=spec, train=False, augment=False, seed=0)[0][1]
    # Evaluation and calibration take the bag labels from here: a clean bag sets the false-alarm budget.
    assert target["has_threat"] is True


def test_evaluation_counts_an_object_too_small_to_train_on_as_a_truth():
    """Training leaves out boxes under MIN_BOX_PX in the model input (nothing to learn from); evaluation must
    not: a missed tiny object is a miss. The truths come in the scan's own pixels, clipped to it."""
    spec = PreprocessSpec(height=64, width=64)
    target = _OneScan(classes=("drug_package",), spec=spec, train=False, augment=False, seed=0)[0][1]
    assert target["boxes_xyxy"].shape[0] == 0  # (training's view)
    assert target["scan_boxes_xyxy"].tolist() == [[100.0, 100.0, 106.0, 106.0]]
    assert target["scan_class_ids"].tolist() == [0]
