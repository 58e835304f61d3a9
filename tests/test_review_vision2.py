"""Second review of the torch-free image core (vision/): each test shows a fault a user would meet and
asserts the behaviour the module documents. Fast and deterministic (no randomness without a seed)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from vision.decode import DecodeError, decode
from vision.draw import draw_boxes, to_display_rgb
from vision.letterbox import LetterboxSpec, letterbox
from vision.postprocess import PostprocessParams, postprocess
from test_vision_geometry import wire_peaks


# -- helpers --------------------------------------------------------------------------------------------

def _tiff(arr: np.ndarray, *, planar: int = 1, photometric: int | None = None, order: str = "<") -> bytes:
    """A baseline uncompressed TIFF of `arr` (H×W or H×W×S, uint8 or uint16), one strip per plane.
    planar 1 = samples interleaved (chunky), 2 = one plane per sample (PlanarConfiguration=Separate)."""
    a = arr[:, :, None] if arr.ndim == 2 else arr
    h, w, s = a.shape
    dt = a.dtype.newbyteorder(order)
    planes = [a.astype(dt).tobytes()] if planar == 1 else [np.ascontiguousarray(a[:, :, i]).astype(dt).tobytes()
                                                           for i in range(s)]
    offsets, pos = [], 8
    for p in planes:
        offsets.append(pos)
        pos += len(p)
    ifd_at = pos
    if photometric is None:
        photometric = 2 if s >= 3 else 1
    n_tags = 9
    extra_at = ifd_at + 2 + 12 * n_tags + 4
    extra = b""

    def entry(tag: int, typ: int, values: list[int]) -> bytes:
        nonlocal extra
        fmt, size = {3: ("H", 2), 4: ("I", 4)}[typ]
        packed = struct.pack(order + fmt * len(values), *values)
        if len(packed) <= 4:
            field = packed.ljust(4, b"\0")
        else:
            field = struct.pack(order + "I", extra_at + len(extra))
            extra += packed
        return struct.pack(order + "HHI", tag, typ, len(values)) + field

    entries = [
        entry(256, 3, [w]), entry(257, 3, [h]), entry(258, 3, [a.dtype.itemsize * 8] * s),
        entry(262, 3, [photometric]), entry(273, 4, offsets), entry(277, 3, [s]), entry(278, 3, [h]),
        entry(279, 4, [len(p) for p in planes]), entry(284, 3, [planar]),
    ]
    head = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "I", ifd_at)
    ifd = struct.pack(order + "H", n_tags) + b"".join(entries) + struct.pack(order + "I", 0)
    return head + b"".join(planes) + ifd + extra


def _content(out: np.ndarray, params) -> np.ndarray:
    return out[params.pad_y : params.pad_y + params.dst_height, params.pad_x : params.pad_x + params.dst_width]


# -- letterbox: the end of a long belt scan ---------------------------------------------------------------

@pytest.mark.parametrize("vertical", [True, False])
def test_letterbox_keeps_an_object_at_the_end_of_a_long_belt_scan(vertical):
    """A 30000-line belt scan (200 px across) shrinks by a whole factor of 58 first; the block means cover
    only the first 517 × 58 = 29986 lines, so the last 14 lines never reach the model: a 10-line object
    at the trailing end of the bag (1.5 cm) is simply not in the input, and the lane cannot alarm on it.
    `resample` promises that every source pixel weighs in."""
    h, w = (30000, 200) if vertical else (200, 30000)
    image = np.zeros((h, w), np.uint8)
    if vertical:
        image[-10:, :] = 255
    else:
        image[:, -10:] = 255
    out, params = letterbox(image, LetterboxSpec(height=512, width=512, pad_value=0))
    content = _content(out, params)
    # Ideal box mean over the last output line: 255 × 10 lines / (1 / scale) ≈ 44; the thin-wire rule of
    # tests/test_vision_geometry.py asks at least 0.35 of it.
    assert int(content.max()) >= 0.35 * 255 * 10 * params.scale, int(content.max())


@pytest.mark.parametrize("hw", [(1000, 1000), (700, 1000), (1023, 1023)])
def test_shrinking_just_over_one_half_never_loses_a_thin_wire(hw):
    """A 1000-px-wide scan into a 512-px input shrinks by 0.512: the whole factor k is 1, so `resample`
    goes straight to bilinear, whose samples are then ~1.95 px apart. A 1-px wire midway between two
    samples gets almost no weight: its peak falls to 10 of 255 (0 for a 1023-px scan) where a box mean
    keeps ~130, so a detonator wire vanishes from the model's input. The docstring's claim that a factor
    over 1/2 lets every source pixel weigh in is false near 1/2. Same criterion as
    tests/test_vision_geometry.py::test_shrinking_never_loses_a_thin_wire."""
    peaks, scale = wire_peaks(hw, range(hw[1] // 2, hw[1] // 2 + 40))
    assert min(peaks) >= 0.35 * 255 * scale, (min(peaks), peaks)


# -- decode: TIFF layouts OpenCV gets wrong silently -------------------------------------------------------

def test_16_bit_planar_rgb_tiff_decodes_to_its_pixels_or_is_refused():
    """A 16-bit RGB TIFF written with PlanarConfiguration=Separate (one plane per channel, as some scanner
    and microscopy software writes) decodes to scrambled pixels (the planes read as if interleaved, the rest
    garbage) and is screened as such; the 8-bit one decodes right. It must decode to its pixels or be
    refused with a DecodeError, never screened as noise."""
    pixels = np.random.default_rng(11).integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    data = _tiff(pixels, planar=2)
    try:
        scan = decode(data)
    except DecodeError:
        return
    np.testing.assert_array_equal(scan.pixels, pixels)


def test_16_bit_min_is_white_tiff_is_inverted_like_the_8_bit_one():
    """TIFF PhotometricInterpretation 0 (WhiteIsZero) says 0 is white. An 8-bit such TIFF is inverted to
    the usual convention (air bright), but a 16-bit one comes out as stored: the scan is a negative (metal
    bright, air black) and the model sees something it was never trained on. (vision.dicos inverts DICOS
    MONOCHROME1 for the same reason.) Inverted, or refused with a DecodeError, is right."""
    stored8 = np.arange(30, dtype=np.uint8).reshape(6, 5) * 8
    assert np.array_equal(decode(_tiff(stored8, photometric=0)).pixels, 255 - stored8)  # 8-bit: inverted
    stored16 = stored8.astype(np.uint16) * 257
    try:
        scan = decode(_tiff(stored16, photometric=0))
    except DecodeError:
        return
    np.testing.assert_array_equal(scan.pixels, 65535 - stored16)


# -- post-processing: class-aware NMS ------------------------------------------------------------------------

def test_class_aware_nms_still_suppresses_duplicates_next_to_a_huge_box():
    """Class-aware NMS offsets each class by (largest |coordinate| + 1) × 2 × class id. One garbage box of
    another class with a coordinate of 1e20 (finite, so it passes the non-finite filter) makes the offset so
    large that the float64 coordinates of class 1 round to a single point: two near-identical class-1 boxes
    (IoU 0.96) then no longer suppress each other and the lane shows the same object twice."""
    boxes = np.array([[0, 0, 1e20, 1e20], [100, 100, 150, 150], [101, 100, 151, 150]], np.float32)
    scores = np.array([[0.9, 0.0], [0.0, 0.8], [0.0, 0.7]], np.float32)
    dets = postprocess(boxes, scores, PostprocessParams(iou_threshold=0.5))
    assert sorted(dets.class_ids.tolist()) == [0, 1], (dets.class_ids, dets.boxes_xyxy)


# -- drawing -------------------------------------------------------------------------------------------

def test_a_box_clipped_at_the_right_and_bottom_edges_is_drawn_on_all_four_sides():
    """Boxes are xyxy with exclusive x2/y2: a detection clipped to the scan ends at x2 = width, y2 = height.
    draw_boxes hands (x2, y2) to cv2.rectangle, which draws inclusive corners, so on a preview under 450 px
    (line thickness 1: a scaled belt scan, a small view) the right and bottom sides fall one pixel outside
    the image and the supervisor sees a box open on two sides."""
    h, w = 200, 300
    out = draw_boxes(np.zeros((h, w, 3), np.uint8), np.array([[100.0, 50.0, w, h]]), ["knife"])
    right_rows = int((out[60:h, w - 1].sum(axis=1) > 0).sum())
    bottom_cols = int((out[h - 1, 110:w].sum(axis=1) > 0).sum())
    assert right_rows >= 0.9 * (h - 60) and bottom_cols >= 0.9 * (w - 110), (right_rows, bottom_cols)


def test_to_display_rgb_turns_an_h_w_1_grey_scan_into_rgb():
    """vision.preprocess takes an H×W×1 array as a grey scan, and to_display_rgb promises RGB for "any scan
    array"; an H×W×1 array comes back H×W×1, so draw_boxes draws in one channel and contact_sheet fails to
    place it."""
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5, 1)
    rgb = to_display_rgb(grey)
    assert rgb.shape == (4, 5, 3)
    np.testing.assert_array_equal(rgb, np.repeat(grey, 3, axis=2))


def test_decoding_in_threads_leaves_pillows_own_pixel_limit_as_it_was():
    """`decode` switches Pillow's process-wide pixel limit off while it reads a header (its own budget
    applies); two threads doing so at once could each restore the other's "off" and leave it off for good."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from vision.decode import encode_png

    before = Image.MAX_IMAGE_PIXELS
    data = encode_png(np.zeros((32, 32, 3), np.uint8))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: decode(data), range(400)))
    assert Image.MAX_IMAGE_PIXELS == before
