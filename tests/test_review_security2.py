"""Security review, API side (second pass): decompression bombs that get past the pixel budget.

The pixel budget is checked on the header, but the pixels are then decoded by libraries that trust other
parts of the file: libpng inflates every IDAT byte whatever the header's size, libjpeg decodes every
progressive scan a file holds, and pydicos's JPEG-lossless reader allocates what the compressed frame
(not the DICOM header) declares. Each test builds such a file by hand, small enough for a station to send.
"""

from __future__ import annotations

import struct
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_support import _chunk
from vision.decode import DecodeError, decode
from vision.dicos import read_dicos_dx, write_dicos_dx

LANE_BUDGET = 32_000_000


def _zeros_zlib(n_segments: int, segment: int = 1 << 24) -> bytes:
    """A zlib stream of n_segments × segment zero bytes, made without compressing them all: each segment
    ends with a full flush (no back-references across it), so every segment compresses to the same bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    seg = c.compress(b"\0" * segment) + c.flush(zlib.Z_FULL_FLUSH)
    total = n_segments * segment
    adler = ((total % 65521) << 16) | 1  # adler32 of `total` zero bytes
    return b"\x78\xda" + seg * n_segments + b"\x03\x00" + struct.pack(">I", adler)


def test_a_png_whose_image_data_inflates_far_past_its_header_is_not_inflated_to_the_end():
    """A station sends a 64×64 grey PNG (1 MB on the wire) whose IDAT inflates to 1 GiB. The header is far
    under the budget, so it is handed to OpenCV, whose libpng inflates every byte ("Too much image data")
    before returning the 64×64 image: seconds of a model worker's CPU per request (a body at the 64 MB limit
    holds ~64 GiB, minutes each). Correct: refused as a decode error, or decoded without inflating the
    excess (well under a second)."""
    w = h = 64
    png = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
           + _chunk(b"IDAT", _zeros_zlib(64)) + _chunk(b"IEND", b""))
    assert len(png) < 2_000_000
    elapsed_s = _decode_seconds(png)
    assert elapsed_s < 1.0, f"a {len(png):,}-byte 64×64 PNG took {elapsed_s:.1f} s to decode (IDAT inflated to the end)"


def _decode_seconds(data: bytes) -> float:
    """Seconds `decode` takes on `data` under the lane's budget, refused (DecodeError) or decoded."""
    started = time.perf_counter()
    try:
        decode(data, max_pixels=LANE_BUDGET)
    except DecodeError:
        pass
    return time.perf_counter() - started


def _bits_to_bytes(bits: str) -> bytes:
    bits += "1" * (-len(bits) % 8)
    out = bytearray()
    for i in range(0, len(bits), 8):
        b = int(bits[i : i + 8], 2)
        out += bytes([b, 0]) if b == 0xFF else bytes([b])  # byte stuffing
    return bytes(out)


def _many_scans_jpeg(side: int, n_scans: int) -> bytes:
    """A progressive grey JPEG of side×side whose encoder's scans are followed by `n_scans` extra AC scans,
    each ~25 bytes (a Huffman table whose one code is a 32767-block end-of-band run), each of which makes
    the decoder walk every block of the image."""
    ok, buf = cv2.imencode(".jpg", np.zeros((side, side), np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    data = buf.tobytes()
    comp_id = data[data.index(b"\xff\xc2") + 10]
    blocks = ((side + 7) // 8) ** 2
    dht = b"\xff\xc4" + (2 + 1 + 16 + 1).to_bytes(2, "big") + b"\x10" + bytes([1] + [0] * 15) + b"\xe0"
    entropy = _bits_to_bytes(("0" + "1" * 14) * -(-blocks // 32767))
    sos = b"\xff\xda\x00\x08\x01" + bytes([comp_id, 0x00, 1, 63, 0x00]) + entropy
    return data[:-2] + dht + sos * n_scans + b"\xff\xd9"


def test_a_progressive_jpeg_with_thousands_of_empty_scans_is_refused_or_decoded_quickly():
    """A station sends a 4000×4000 grey progressive JPEG (16 MP, under the 32 MP budget) of ~110 KB holding
    2,000 near-empty AC scans. libjpeg walks all 250,000 blocks per scan: seconds of CPU for 110 KB (a 64 MB
    body holds millions of scans: hours). Real encoders write about ten scans; libjpeg-turbo's own API has a
    scan limit for this. Correct: refused (DecodeError: too many scans), or no slower than the plain image."""
    plain = _many_scans_jpeg(4000, 0)
    started = time.perf_counter()
    decode(plain, max_pixels=LANE_BUDGET)
    plain_s = time.perf_counter() - started
    bomb = _many_scans_jpeg(4000, 2000)
    assert len(bomb) < 200_000
    elapsed_s = _decode_seconds(bomb)
    assert elapsed_s < max(1.0, 3 * plain_s), (
        f"a {len(bomb):,}-byte JPEG took {elapsed_s:.1f} s to decode (the plain image: {plain_s:.2f} s)")


def test_a_dx_whose_compressed_frame_declares_more_than_its_header_is_refused_before_pydicos_reads_it(monkeypatch):
    """A station sends a 1.6 KB DICOS DX whose DICOM header says 6×8 (under the budget) but whose
    JPEG-lossless frame header (SOF3) says 40000×40000. The budget is checked on Rows/Columns only, so
    pydicos reads it, and its decoder allocates what the frame declares: measured 3.1 GB of memory and 8 s
    before it refuses the file as inconsistent. Correct: the compressed frame's size is checked against the
    header and the budget before pydicos sees the file (a DecodeError, pydicos never called)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.dcs"
        write_dicos_dx(np.arange(48, dtype=np.uint16).reshape(6, 8) * 1300, path)
        bomb = bytearray(path.read_bytes())
    sof = bomb.index(b"\xff\xc3\x00\x0b\x10") + 5  # the JPEG frame header: height, width
    bomb[sof : sof + 4] = struct.pack(">HH", 40000, 40000)
    import pydicos

    handed: list[str] = []

    def spy(self, filename):  # read_dicos_dx turns whatever read raises into a DicosError: record instead
        handed.append(str(filename))
        raise RuntimeError("Error: refused by the test")

    monkeypatch.setattr(pydicos.DXLoader, "read", spy)
    with pytest.raises(DecodeError):
        read_dicos_dx(bytes(bomb), max_pixels=LANE_BUDGET)
    assert not handed, "pydicos was handed a DX whose compressed frame declares 40000×40000 (1.6 GP)"
