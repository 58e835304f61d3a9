"""Letterbox round trips and NMS against a brute-force reference (property tests)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
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
from vision.letterbox import LetterboxSpec, letterbox, letterbox_boxes, resample, unletterbox

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


# -- the letterbox's resampling: INTER_AREA's box mean at a fraction of its cost ----------------------------

# Scan sizes as the public datasets ship them (PIDray 640 × 480, the bench's 768 × 576, OPIXray 1224 × 918)
# and sides that are no multiple of their shrink factor (the affine path), into a 512-px input.
SHRINK_SIZES = [(480, 640), (576, 768), (918, 1224), (1001, 1999), (767, 1535), (1836, 2448)]


def _content(out, params):
    return out[params.pad_y : params.pad_y + params.dst_height, params.pad_x : params.pad_x + params.dst_width]


def wire_peaks(hw: tuple[int, int], columns: range) -> tuple[list[int], float]:
    """The peak a 1-px vertical wire at each of `columns` keeps in an h×w scan letterboxed into 512 px, and
    the letterbox's scale."""
    h, w = hw
    spec = LetterboxSpec(height=512, width=512, pad_value=0)
    peaks = []
    for x0 in columns:
        image = np.zeros((h, w), np.uint8)
        image[:, x0] = 255
        out, params = letterbox(image, spec)
        peaks.append(int(_content(out, params)[params.dst_height // 2].max()))
    return peaks, params.scale


@pytest.mark.parametrize("hw", SHRINK_SIZES)
def test_shrinking_never_loses_a_thin_wire(hw):
    # A 1-px wire at any column must still show: plain bilinear sampling under a factor of 1/2 steps over
    # whole columns (the wire's peak drops to 0 at some offsets); a box mean keeps about scale × 255.
    peaks, scale = wire_peaks(hw, range(hw[1] // 2, hw[1] // 2 + 12))
    assert min(peaks) >= 0.35 * 255 * scale, peaks


@pytest.mark.parametrize("hw", SHRINK_SIZES)
def test_shrinking_agrees_with_inter_area(hw):
    # Smooth content (X-ray scans are mostly low-frequency) within a grey level of OpenCV's INTER_AREA.
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([127 + 120 * np.sin(xx / 37.0 + c) * np.cos(yy / 23.0 - c) for c in (0.0, 1.0, 2.0)], -1)
    image = image.round().astype(np.uint8)
    out, params = letterbox(image, LetterboxSpec(height=512, width=512))
    area = cv2.resize(image, (params.dst_width, params.dst_height), interpolation=cv2.INTER_AREA)
    diff = np.abs(_content(out, params).astype(np.int16) - area.astype(np.int16))
    # The last row and column may differ more where a side is no multiple of its shrink factor: the block
    # means leave its last pixels out, and the edge is replicated in their place.
    assert diff.mean() < 1.0 and diff[:-1, :-1].max() <= 4, (diff.mean(), diff[:-1, :-1].max())


def test_shrinking_by_a_whole_factor_is_inter_area():
    image = np.random.default_rng(3).integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
    out, params = letterbox(image, LetterboxSpec(height=512, width=512))
    assert (params.dst_width, params.dst_height) == (512, 256)
    np.testing.assert_array_equal(_content(out, params),
                                  cv2.resize(image, (512, 256), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("hw", SHRINK_SIZES)
def test_shrunk_content_lands_where_unletterbox_maps_it(hw):
    # A bright square's centroid in the model's input, mapped back by `unletterbox`, is where the square is
    # in the scan: within 0.1 of a model pixel (the resampling's own jitter) inside the scan, 0.25 by the
    # right and bottom edges, whose last pixels a whole-factor block mean may leave out (edge replicated).
    h, w = hw
    spec = LetterboxSpec(height=512, width=512, pad_value=0)
    for x0, y0, tolerance in [(5, 7, 0.1), (w // 2 + 1, h // 3, 0.1), (w - 9, h - 9, 0.25)]:
        image = np.zeros((h, w), np.uint16)
        image[y0 : y0 + 8, x0 : x0 + 8] = 60000
        out, params = letterbox(image, spec)
        weights = out.astype(np.float64)
        ys, xs = np.mgrid[0 : out.shape[0], 0 : out.shape[1]]
        cx, cy = (weights * xs).sum() / weights.sum(), (weights * ys).sum() / weights.sum()
        # pixel centres are at +0.5 in the edge coordinates boxes use
        back = unletterbox(np.array([[cx + 0.5, cy + 0.5, cx + 0.5, cy + 0.5]]), params)[0]
        error = np.abs(back[:2] - (x0 + 4, y0 + 4)) * params.scale
        assert error.max() <= tolerance, (x0, y0, error)


@pytest.mark.parametrize("shape,dtype", [((901, 1203, 2), np.uint16), ((901, 1203, 1), np.uint8), ((901, 1203), np.uint16)])
def test_shrinking_keeps_channels_and_depth(shape, dtype):
    image = np.full(shape, 200, dtype)
    out, params = letterbox(image, LetterboxSpec(height=256, width=256, pad_value=0))
    assert out.dtype == dtype and out.shape == (256, 256) + shape[2:]
    assert (_content(out, params) == 200).all()


def test_resample_keeps_the_layout_enlarges_bilinearly_and_refuses_empty_sizes():
    single = np.full((90, 70, 1), 9, np.uint8)
    assert resample(single, 20, 30).shape == (30, 20, 1) and resample(single, 200, 300).shape == (300, 200, 1)
    assert resample(single[:, :, 0], 23, 31).shape == (31, 23)
    small = np.random.default_rng(5).integers(0, 65535, (13, 17, 2), dtype=np.uint16)
    np.testing.assert_array_equal(resample(small, 40, 30), cv2.resize(small, (40, 30), interpolation=cv2.INTER_LINEAR))
    with pytest.raises(ValueError, match="at least 1 pixel"):
        resample(single, 0, 5)
