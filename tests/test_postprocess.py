"""vision.postprocess on hand-made dense outputs: score floor, suppression, class awareness, caps, order."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from vision.letterbox import LetterboxParams
from vision.postprocess import Detections, PostprocessParams, in_scan_pixels, postprocess, postprocess_batch, postprocess_to_scans

# Four anchor points, two classes. Points 0 and 1 predict almost the same box; point 2 a disjoint one;
# point 3 overlaps point 0 by IoU 0.6 (hand computed: boxes 0..10 and 0..10 shifted by 2.5 in x:
# inter 7.5·10 = 75, union 125 → 0.6).
BOXES = np.array(
    [
        [0.0, 0.0, 10.0, 10.0],
        [0.5, 0.0, 10.5, 10.0],
        [50.0, 50.0, 60.0, 60.0],
        [2.5, 0.0, 12.5, 10.0],
    ],
    dtype=np.float32,
)
SCORES = np.array(
    [
        [0.90, 0.02],
        [0.80, 0.70],
        [0.04, 0.30],
        [0.60, 0.01],
    ],
    dtype=np.float32,
)


def _as_set(det: Detections) -> set[tuple]:
    return {(tuple(np.round(b, 3)), round(float(s), 3), int(c)) for b, s, c in zip(det.boxes_xyxy, det.scores, det.class_ids)}


def test_class_aware_nms_keeps_other_classes_and_disjoint_boxes():
    det = postprocess(BOXES, SCORES, PostprocessParams())
    # class 0: point 0 (0.90) suppresses point 1 (IoU ≈ 0.90) and point 3 (IoU 0.6 > 0.5);
    # class 1: point 1 (0.70) and point 2 (0.30) survive: different class from point 0, disjoint boxes.
    assert det.scores.tolist() == pytest.approx([0.90, 0.70, 0.30])
    assert det.class_ids.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(det.boxes_xyxy, BOXES[[0, 1, 2]])
    assert det.boxes_xyxy.dtype == np.float32 and det.scores.dtype == np.float32 and det.class_ids.dtype == np.int64


def test_iou_threshold_above_overlap_keeps_the_overlapping_box():
    det = postprocess(BOXES, SCORES, PostprocessParams(iou_threshold=0.65))
    assert (0.60, 0) in {(round(float(s), 2), int(c)) for s, c in zip(det.scores, det.class_ids)}
    assert len(det) == 4  # 0.90/c0, 0.70/c1, 0.60/c0, 0.30/c1 (point 1/c0 still suppressed at IoU 0.9)


def test_class_agnostic_suppresses_across_classes():
    det = postprocess(BOXES, SCORES, PostprocessParams(class_agnostic=True))
    assert det.scores.tolist() == pytest.approx([0.90, 0.30])
    assert det.class_ids.tolist() == [0, 1]


def test_score_floor_drops_low_scores_inclusive():
    det = postprocess(BOXES, SCORES, PostprocessParams(score_floor=0.7))
    assert det.scores.tolist() == pytest.approx([0.90, 0.70])  # 0.70 ≥ floor is kept
    assert len(postprocess(BOXES, SCORES, PostprocessParams(score_floor=0.95))) == 0


def test_max_detections_keeps_the_highest():
    det = postprocess(BOXES, SCORES, PostprocessParams(max_detections=2))
    assert det.scores.tolist() == pytest.approx([0.90, 0.70])


def test_pre_nms_top_k_bounds_the_candidates():
    det = postprocess(BOXES, SCORES, PostprocessParams(pre_nms_top_k=1))
    assert det.scores.tolist() == pytest.approx([0.90])


def test_sorted_descending_with_many_random_points():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 500, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (300, 2))], axis=1)
    scores = rng.uniform(0, 1, (300, 5))
    det = postprocess(boxes, scores, PostprocessParams(max_detections=50))
    assert len(det) == 50
    assert (np.diff(det.scores) <= 0).all()
    # Class-aware NMS: no two kept boxes of the same class overlap beyond the threshold.
    from vision.boxes import iou_xyxy

    for c in range(5):
        b = det.boxes_xyxy[det.class_ids == c]
        iou = iou_xyxy(b, b)
        np.fill_diagonal(iou, 0)
        assert (iou <= 0.5 + 1e-6).all()


def test_empty_and_degenerate_inputs():
    det = postprocess(np.zeros((0, 4)), np.zeros((0, 3)), PostprocessParams())
    assert len(det) == 0 and det.boxes_xyxy.shape == (0, 4) and det.class_ids.dtype == np.int64
    nan_scores = SCORES.copy()
    nan_scores[0, 0] = np.nan
    bad_boxes = BOXES.copy()
    bad_boxes[2, 0] = np.inf
    det = postprocess(bad_boxes, nan_scores, PostprocessParams())
    assert np.isfinite(det.boxes_xyxy).all() and np.isfinite(det.scores).all()
    assert det.scores.tolist() == pytest.approx([0.80, 0.70])  # point 0 NaN-score, point 2 infinite box
    with pytest.raises(ValueError):
        postprocess(BOXES, SCORES[:3], PostprocessParams())


def test_batch_matches_single_images():
    params = PostprocessParams()
    boxes = np.stack([BOXES, BOXES + 100])
    scores = np.stack([SCORES, SCORES[:, ::-1]])
    dets = postprocess_batch(boxes, scores, params)
    assert len(dets) == 2
    for det, b, s in zip(dets, boxes, scores):
        assert _as_set(det) == _as_set(postprocess(b, s, params))
    with pytest.raises(ValueError):
        postprocess_batch(BOXES, SCORES, params)


def test_params_are_strict_and_frozen():
    with pytest.raises(ValidationError):
        PostprocessParams(score_threshold=0.3)
    with pytest.raises(ValidationError):
        PostprocessParams(iou_threshold=0.0)
    params = PostprocessParams()
    with pytest.raises(ValidationError):
        params.score_floor = 0.5
    assert PostprocessParams.model_validate(params.model_dump()) == params


# A 640×320 scan letterboxed into 512×512: scale 0.8, content 512×256 at pad_y = 128 (bands above and below).
_WIDE = LetterboxParams(scale=0.8, pad_x=0, pad_y=128, src_width=640, src_height=320, dst_width=512, dst_height=256)


def test_boxes_wholly_in_the_padding_are_dropped_and_the_rest_mapped_back():
    dets = Detections.from_arrays(
        [[10, 10, 100, 120], [10, 120, 100, 200], [50, 390, 90, 500], [0, 0, 512, 512], [200, 384, 300, 384]],
        [0.9, 0.8, 0.7, 0.6, 0.5],
        [0, 1, 2, 3, 4],
    )
    out = in_scan_pixels(dets, _WIDE)
    # Above the scan (y < 128), below it (y > 384) and a zero-height sliver on its bottom edge: dropped.
    np.testing.assert_array_equal(out.class_ids, [1, 3])
    np.testing.assert_allclose(out.scores, [0.8, 0.6])
    np.testing.assert_allclose(out.boxes_xyxy, [[12.5, 0, 125, 90], [0, 0, 640, 320]], atol=1e-4)


def test_postprocess_to_scans_uses_each_inputs_letterbox():
    square = LetterboxParams(scale=1.0, pad_x=0, pad_y=0, src_width=512, src_height=512, dst_width=512, dst_height=512)
    boxes = np.array([[[10, 10, 100, 120]], [[10, 10, 100, 120]]], np.float32)
    scores = np.array([[[0.9]], [[0.9]]], np.float32)
    wide, full = postprocess_to_scans(boxes, scores, PostprocessParams(), [_WIDE, square])
    assert len(wide) == 0 and len(full) == 1
    with pytest.raises(ValueError, match="letterbox"):
        postprocess_to_scans(boxes, scores, PostprocessParams(), [square])
