"""vision.decode: formats and depths it reads, and every refusal with its typed error."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.damage import EDITS, assert_well_formed, damaged, decoded_truncations
from vision.decode import (
    DecodeError,
    EmptyInputError,
    NotAnImageError,
    TooManyPixelsError,
    TruncatedImageError,
    decode,
    decode_dual_energy,
    encode_jpeg,
    encode_png,
)


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def test_png_8bit_grey_and_colour():
    grey = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    s = decode(_png(grey))
    assert (s.bit_depth, s.layout, s.format, s.width, s.height) == (8, "grey", "PNG", 7, 12)
    assert np.array_equal(s.pixels, grey)
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red channel
    s = decode(encode_png(rgb))
    assert s.layout == "rgb" and s.pixels[0, 0].tolist() == [200, 0, 0]


def test_png_16bit_keeps_values():
    arr = (np.arange(40 * 30, dtype=np.uint32) * 50 % 65536).astype(np.uint16).reshape(40, 30)
    s = decode(_png(arr))
    assert s.bit_depth == 16 and s.pixels.dtype == np.uint16 and np.array_equal(s.pixels, arr)


def test_tiff_16bit():
    arr = np.full((20, 10), 51234, np.uint16)
    ok, buf = cv2.imencode(".tiff", arr)
    s = decode(buf.tobytes())
    assert s.format == "TIFF" and s.bit_depth == 16 and int(s.pixels[3, 3]) == 51234


def test_jpeg():
    arr = np.full((32, 48, 3), 128, np.uint8)
    ok, buf = cv2.imencode(".jpg", arr)
    s = decode(buf.tobytes())
    assert s.format == "JPEG" and s.layout == "rgb" and s.pixels.shape == (32, 48, 3)


def test_encode_jpeg_keeps_colour_order_and_grey():
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[..., 0] = 200  # red, in RGB order
    s = decode(encode_jpeg(rgb, quality=95))
    assert s.format == "JPEG" and s.layout == "rgb" and s.pixels.shape == (32, 48, 3)
    assert np.abs(s.pixels[16, 24].astype(int) - [200, 0, 0]).max() <= 4
    grey = np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (32, 1))
    g = decode(encode_jpeg(grey, quality=95))
    assert g.layout == "grey" and np.abs(g.pixels.astype(int) - grey).mean() < 2
    assert len(encode_jpeg(grey, quality=20)) < len(encode_jpeg(grey, quality=95))
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(grey, quality=0)


def test_dual_energy_pair():
    lo = np.full((8, 9), 1000, np.uint16)
    hi = np.full((8, 9), 2000, np.uint16)
    s = decode_dual_energy(_png(lo), _png(hi))
    assert s.layout == "dual_energy" and s.pixels.shape == (8, 9, 2) and s.pixels[0, 0].tolist() == [1000, 2000]
    with pytest.raises(NotAnImageError, match="differs"):
        decode_dual_energy(_png(lo), _png(hi[:4]))


def test_refusals():
    with pytest.raises(EmptyInputError):
        decode(b"")
    with pytest.raises(NotAnImageError, match="not an image"):
        decode(b"hello world, not an image at all")
    ok, buf = cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))
    with pytest.raises(TruncatedImageError):
        decode(buf.tobytes()[: len(buf) // 2])
    png = _png(np.full((64, 64), 3, np.uint8))
    with pytest.raises(TruncatedImageError):
        decode(png[: len(png) - 20])
    with pytest.raises(TruncatedImageError):
        decode(png[:30])


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width×height (grey 8-bit); the data need not be complete."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding():
    data = _bomb_png(20000, 20000)
    assert len(data) < 10_000
    with pytest.raises(TooManyPixelsError, match="20000×20000"):
        decode(data)
    with pytest.raises(TooManyPixelsError):
        decode(_png(np.zeros((100, 100), np.uint8)), max_pixels=5000)


def test_unsupported_depth_refused():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(buf, format="TIFF")
    from vision.decode import UnsupportedDepthError

    with pytest.raises(UnsupportedDepthError, match="not supported"):
        decode(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.int32), mode="I").save(buf, format="TIFF")
    with pytest.raises(UnsupportedDepthError, match="int32"):
        decode(buf.getvalue())


# -- damaged files: a station's network, disk or encoder can hand the service any bytes -----------------

def _tiff(arr: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="TIFF", **options)
    return buffer.getvalue()


_RNG = np.random.default_rng(7)
_RGB = (_RNG.random((40, 56, 3)) * 255).astype(np.uint8)
_GREY16 = (_RNG.random((40, 56)) * 65535).astype(np.uint16)
#: One small valid file per kind the lane service is sent.
_VALID = {
    "png-rgb": encode_png(_RGB),
    "png-grey": encode_png(_RGB[..., 0]),
    "png-16": _png(_GREY16),
    "jpeg": encode_jpeg(_RGB),
    "tiff-rgb": _tiff(_RGB),
    "tiff-lzw": _tiff(_RGB, compression="tiff_lzw"),
    "tiff-16": cv2.imencode(".tiff", _GREY16)[1].tobytes(),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(_VALID)), edits=EDITS)
def test_damaged_files_decode_or_raise_a_decode_error(kind, edits):
    """Bytes overwritten, inserted or cut anywhere in a valid file: `decode` returns a well-formed scan or
    raises a DecodeError (the service's 4xx), never another exception, never an inconsistent scan."""
    try:
        scan = decode(damaged(_VALID[kind], edits), max_pixels=10_000_000)
    except DecodeError as exc:
        assert str(exc)  # a message for the station
        return
    assert_well_formed(scan, max_pixels=10_000_000)
    assert (scan.layout == "grey") == (scan.pixels.ndim == 2)
    assert scan.bit_depth == (8 if scan.pixels.dtype == np.uint8 else 16)


@pytest.mark.parametrize("kind", sorted(_VALID))
def test_every_truncation_is_refused(kind):
    """A file cut short anywhere (a dropped connection, a full disk) is refused, never decoded with rows
    missing or zero-filled."""
    data = _VALID[kind]
    decoded = decoded_truncations(data, decode)
    assert decoded == [], f"{kind}: decoded although cut to {decoded[:5]} of {len(data)} bytes"


@pytest.mark.parametrize("kind", ["jpeg", "png-rgb", "png-grey", "png-16"])
@pytest.mark.parametrize("trailer", [b"\x00" * 64, b"CAPTURE-TRAILER v2 lane=3\n", b"\xff\xd8\xff\xd9" * 3])
def test_bytes_after_the_end_marker_are_ignored(kind, trailer):
    """Some capture software appends its own trailer after the image: the scan is whole, so it is decoded
    (to the same pixels), not refused as truncated."""
    whole = decode(_VALID[kind])
    with_trailer = decode(_VALID[kind] + trailer)
    np.testing.assert_array_equal(with_trailer.pixels, whole.pixels)


def _with_exif_thumbnail(jpeg: bytes) -> bytes:
    """`jpeg` with an APP1 (Exif) segment after its SOI holding a whole thumbnail JPEG (its own SOI…EOI)."""
    thumbnail = encode_jpeg(_RGB[:8, :8])
    payload = b"Exif\x00\x00" + thumbnail
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_a_jpeg_with_an_exif_thumbnail_decodes_and_is_refused_when_cut():
    data = _with_exif_thumbnail(_VALID["jpeg"])
    np.testing.assert_array_equal(decode(data).pixels, decode(_VALID["jpeg"]).pixels)
    # Cut anywhere after the thumbnail's end marker: that marker must not pass for the image's own.
    decoded = decoded_truncations(data, decode)
    assert decoded == [], f"decoded although cut to {decoded[:5]} of {len(data)} bytes"
