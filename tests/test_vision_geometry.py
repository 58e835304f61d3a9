"""Letterbox round trips and NMS against a brute-force reference (property tests)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vision.boxes import (
    batched_nms_xyxy,
    cxcywh_to_xyxy,
    iou_xyxy,
    nms_xyxy,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)
from vision.letterbox import LetterboxSpec, letterbox, letterbox_boxes, unletterbox

SPEC = LetterboxSpec(height=64, width=96, pad_value=114)


@st.composite
def image_and_boxes(draw):
    h, w = draw(
        st.one_of(
            st.tuples(st.integers(1, 400), st.integers(1, 400)),
            st.sampled_from([(1, 20000), (20000, 1), (20000, 30), (30, 20000), (1, 1)]),
        )
    )
    n = draw(st.integers(1, 5))
    boxes = []
    for _ in range(n):
        x1 = draw(st.floats(0, w, allow_nan=False))
        x2 = draw(st.floats(x1, w, allow_nan=False))
        y1 = draw(st.floats(0, h, allow_nan=False))
        y2 = draw(st.floats(y1, h, allow_nan=False))
        boxes.append([x1, y1, x2, y2])
    return h, w, np.array(boxes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_and_boxes(), st.sampled_from([(64, 96), (512, 512), (37, 1)]))
def test_letterbox_then_unletterbox_within_one_pixel(case, size_hw):
    h, w, boxes = case
    spec = LetterboxSpec(height=size_hw[0], width=size_hw[1])
    # A 1-row image is cheap even at 20000 columns; the pixel content does not matter for geometry.
    image = np.zeros((h, w), np.uint8)
    out, params = letterbox(image, spec)
    assert out.shape == (spec.height, spec.width)
    forward = letterbox_boxes(boxes, params)
    back = unletterbox(forward, params)
    # Error budget: float32 storage of coordinates up to 20000 px.
    assert np.abs(back - boxes).max() <= 1.0


def test_letterbox_keeps_content_and_pads():
    image = np.full((100, 200, 3), 7, np.uint8)
    out, params = letterbox(image, SPEC)
    assert out.shape == (64, 96, 3) and out.dtype == np.uint8
    assert params.dst_width == 96 and params.dst_height == 48 and params.pad_y == 8 and params.pad_x == 0
    assert (out[:8] == 114).all() and (out[-8:] == 114).all()
    assert (out[8:56] == 7).all()


def test_letterbox_16bit_and_inverse_uses_given_params():
    image = np.full((50, 50), 40000, np.uint16)
    out, params = letterbox(image, LetterboxSpec(height=100, width=200, pad_value=0))
    assert out.dtype == np.uint16 and out[50, 100] == 40000 and out[50, 10] == 0
    box = np.array([[params.pad_x, params.pad_y, params.pad_x + params.dst_width, params.pad_y + params.dst_height]])
    np.testing.assert_allclose(unletterbox(box, params), [[0, 0, 50, 50]], atol=1e-4)


def test_letterbox_refuses_empty_image():
    import pytest

    with pytest.raises(ValueError, match="non-empty"):
        letterbox(np.zeros((0, 5), np.uint8), SPEC)


def _brute_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(iou_xyxy(boxes[i : i + 1], boxes[j : j + 1])[0, 0] <= thr for j in keep):
            keep.append(i)
    return keep


@st.composite
def random_boxes(draw):
    n = draw(st.integers(0, 25))
    xy = draw(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(0.5, 60), st.floats(0.5, 60)), min_size=n, max_size=n))
    scores = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    classes = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in xy]).reshape(-1, 4)
    return boxes, np.array(scores), np.array(classes, dtype=np.int64)


@settings(max_examples=200, deadline=None)
@given(random_boxes(), st.floats(0.1, 0.9))
def test_nms_matches_brute_force(case, thr):
    boxes, scores, _ = case
    assert nms_xyxy(boxes, scores, thr).tolist() == _brute_nms(boxes, scores, thr)
    assert nms_xyxy(boxes, scores, thr, max_keep=2).tolist() == _brute_nms(boxes, scores, thr)[:2]


@settings(max_examples=150, deadline=None)
@given(random_boxes(), st.floats(0.1, 0.9))
def test_class_aware_nms_matches_per_class_brute_force(case, thr):
    boxes, scores, classes = case
    expected = []
    for c in np.unique(classes):
        idx = np.nonzero(classes == c)[0]
        expected += [int(idx[k]) for k in _brute_nms(boxes[idx], scores[idx], thr)]
    got = batched_nms_xyxy(boxes, scores, classes, thr).tolist()
    assert sorted(got) == sorted(expected)
    # Highest score first.
    assert [scores[i] for i in got] == sorted((scores[i] for i in got), reverse=True)


def test_box_conversions_round_trip():
    rng = np.random.default_rng(0)
    xyxy = np.sort(rng.uniform(0, 500, (20, 4)).reshape(20, 2, 2), axis=1).transpose(0, 2, 1).reshape(20, 4)
    xyxy = xyxy[:, [0, 2, 1, 3]]
    np.testing.assert_allclose(xywh_to_xyxy(xyxy_to_xywh(xyxy)), xyxy, atol=1e-9)
    np.testing.assert_allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy, atol=1e-9)
    assert np.allclose(xyxy_to_xywh([[10, 20, 30, 60]]), [[10, 20, 20, 40]])
