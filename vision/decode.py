"""Decoding scanner output into a `Scan`: JPEG, PNG (8/16 bit, grey or colour), TIFF (8/16 bit); DICOS DX
files are read by vision.dicos into the same `Scan`.

The header is read first (Pillow reads only the header on `open`), so a decompression bomb is refused
before a single pixel is decoded; the pixels are then decoded by OpenCV, which keeps 16-bit data intact.
"""

from __future__ import annotations

import io
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image

Layout = Literal["grey", "rgb", "dual_energy"]

#: Default budget: 64 megapixels is well above any baggage scanner's view (a 2,000-line belt scan at
#: 1.5 mm/px over 3 m is about 4 MP) and far below what would exhaust a lane box's memory.
DEFAULT_MAX_PIXELS = 64_000_000

#: The lane's budget, for every path that screens a scan: the service (edge.settings) and `xscreen predict`
#: refuse the same files. 32 MP: a high-resolution cabinet scanner gives about 16 MP; decoding a 32 MP scan
#: peaks at 3-6 times its ~100-MB decoded array, which a lane box can afford for one scan per model worker.
LANE_MAX_PIXELS = 32_000_000


class DecodeError(ValueError):
    """Base class of every refusal from `decode`; the message says what is wrong."""


class EmptyInputError(DecodeError):
    pass


class NotAnImageError(DecodeError):
    pass


class TruncatedImageError(DecodeError):
    pass


class UnsupportedDepthError(DecodeError):
    pass


class TooManyPixelsError(DecodeError):
    pass


@dataclass(frozen=True)
class Scan:
    """A decoded scan.

    `pixels` is H×W (grey), H×W×3 (RGB, channel order R, G, B) or H×W×2 (dual-energy: low, high).
    dtype is uint8 for 8-bit data, uint16 for 16-bit data.
    """

    pixels: np.ndarray
    bit_depth: int
    layout: Layout
    format: str

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


#: Pillow modes of 8-bit and 16-bit grey or colour images; 32-bit integer and float modes are refused.
_SUPPORTED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I;16B", "I;16L", "I;16N", "I"})
# "I" is how some Pillow versions open 16-bit grey PNG; a true 32-bit image is refused after decoding by dtype.

_MAGIC = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def sniff_format(data: bytes) -> str | None:
    """Return 'JPEG', 'PNG' or 'TIFF' from the leading bytes, or None."""
    for magic, name in _MAGIC.items():
        if data[: len(magic)] == magic:
            return name
    return None


def _header_size(data: bytes, fmt: str) -> tuple[int, int, str, tuple[int, int | None, int, int]]:
    """Width, height and Pillow mode read from the header only, and for a TIFF its layout (`_tiff_layout`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            layout = _tiff_layout(img.tag_v2) if fmt == "TIFF" else (1, None, 1, 8)
            if fmt == "TIFF":
                _check_tiff_tiles(img.tag_v2, int(img.width), int(img.height))
            return int(img.width), int(img.height), str(img.mode), layout
    except Image.DecompressionBombError as exc:  # Pillow's own guard fires before ours on huge headers
        raise TooManyPixelsError(f"{fmt} header declares too many pixels: {exc}") from exc
    except TooManyPixelsError:
        raise
    except Exception as exc:
        raise TruncatedImageError(f"{fmt} header cannot be read ({exc}); the file is truncated or corrupt") from exc


#: The largest tile a TIFF may declare, in pixels: four times its image, or a megapixel for a small image
#: (tiles are at least 16 × 16 and often 256 × 256 or larger). The decoder allocates a declared tile whole,
#: so a 1-kB file of 16 × 16 pixels declaring one 16000 × 16000 tile cost a gigabyte before it was refused.
def _tile_budget(width: int, height: int) -> int:
    return max(4 * width * height, 1 << 20)


def _check_tiff_tiles(tags: Any, width: int, height: int) -> None:
    """TooManyPixelsError for a TIFF whose declared tile is far larger than its image."""
    if 322 in tags and 323 in tags:
        tile_w, tile_h = int(tags[322]), int(tags[323])
        if tile_w * tile_h > _tile_budget(width, height):
            raise TooManyPixelsError(f"TIFF declares {tile_w}×{tile_h} tiles for a {width}×{height} image: "
                                     "a tile that size is no scan's")


def _tiff_layout(tags: Any) -> tuple[int, int | None, int, int]:
    """(PlanarConfiguration, PhotometricInterpretation, SamplesPerPixel, BitsPerSample) of a TIFF's first
    page, from its header's tags (Pillow's `tag_v2`)."""
    bits = tags.get(258, (1,))
    bits = max(bits) if isinstance(bits, tuple) else int(bits)
    return int(tags.get(284, 1)), (int(tags[262]) if 262 in tags else None), int(tags.get(277, 1)), int(bits)


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Scan:
    """Decode image bytes into a `Scan`.

    Raises a `DecodeError` subclass for empty input, data that is not an image, a truncated file, an
    unsupported bit depth, or a header declaring more than `max_pixels` pixels (checked before decoding).
    """
    if not data:
        raise EmptyInputError("empty input: no bytes were received")
    fmt = sniff_format(data)
    if fmt is None:
        raise NotAnImageError("not an image: expected JPEG, PNG or TIFF (unrecognised leading bytes)")
    # (The chunks walked before Pillow reads the header: it walks each one in Python, and a PNG of
    # hundreds of thousands of empty chunks is refused there, in milliseconds.)
    png_whole = _png_has_end(data) if fmt == "PNG" else True
    with _no_pillow_limit():  # we apply our own budget, with our own message
        width, height, mode, (planar, photometric, samples, bits) = _header_size(data, fmt)
    if width <= 0 or height <= 0:
        raise NotAnImageError(f"{fmt} header declares an empty image ({width}×{height})")
    if width * height > max_pixels:
        raise TooManyPixelsError(
            f"{fmt} declares {width}×{height} = {width * height:,} pixels, over the budget of {max_pixels:,}"
        )
    if mode not in _SUPPORTED_MODES:
        raise UnsupportedDepthError(f"{fmt} pixel mode {mode!r} is not supported (8- or 16-bit grey or colour only)")
    if fmt == "JPEG" and not _jpeg_has_end(data):
        raise TruncatedImageError("JPEG is truncated: the end-of-image marker is missing")
    if not png_whole:
        raise TruncatedImageError("PNG is truncated: the IEND chunk is missing")
    if fmt == "PNG" and _png_pillow_reads(data):
        # 8-bit grey and RGB, 16-bit grey (the scans' own layouts): Pillow, which stops inflating at the last
        # row, where OpenCV's libpng inflates any data past it too (a bomb of a few MB: seconds).
        return _png_with_pillow(data, width, height)
    if fmt == "PNG":
        _check_png_data_size(data)  # OpenCV's path: the data inflated first, up to its declared size only
    if fmt == "JPEG":
        _check_jpeg_scans(data)
    if planar == 2 and samples > 1 and bits > 8:
        # OpenCV reads 16-bit colour stored one plane per channel as if interleaved: scrambled pixels.
        raise UnsupportedDepthError("TIFF with 16-bit colour in separate planes (PlanarConfiguration 2) is not "
                                    "supported; save it with interleaved samples (contiguous)")
    buf = np.frombuffer(data, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise TruncatedImageError(f"{fmt} could not be decoded: the file is truncated or corrupt")
    if pixels.shape[0] != height or pixels.shape[1] != width:
        raise TruncatedImageError(f"{fmt} decoded to {pixels.shape[1]}×{pixels.shape[0]}, header says {width}×{height}")
    if pixels.dtype == np.uint8:
        depth = 8
    elif pixels.dtype == np.uint16:
        depth = 16
    else:
        raise UnsupportedDepthError(f"{fmt} with {pixels.dtype} samples is not supported (8 or 16 bit only)")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2 and depth == 16 and photometric == 0:
        # WhiteIsZero: OpenCV inverts 8-bit files so that white is bright, but hands 16-bit ones back as
        # stored; inverted here alike, or metal would reach the model bright and air black.
        pixels = np.uint16(65535) - pixels
    if pixels.ndim == 2:
        layout: Layout = "grey"
    elif pixels.shape[2] == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
        layout = "rgb"
    elif pixels.shape[2] == 4:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
        layout = "rgb"
    else:
        raise UnsupportedDepthError(f"{fmt} with {pixels.shape[2]} channels is not supported")
    return Scan(pixels=np.ascontiguousarray(pixels), bit_depth=depth, layout=layout, format=fmt)


# Truncation checks. OpenCV's decoders fill missing rows with grey or zeros and report success on many
# truncated files, so a scan cut short in transfer would be screened as a bag with an empty band. A whole
# file has its end marker; bytes after it (some capture software appends its own trailer) are ignored, as
# every decoder ignores them.


def _jpeg_has_end(data: bytes) -> bool:
    """Whether an end-of-image marker follows the start of the frame's scan data. The marker segments
    before the first start-of-scan are walked by their lengths, so an EXIF thumbnail's own end marker
    (inside an APP1 segment) does not count; entropy-coded data cannot hold 0xFF 0xD9 (byte stuffing)."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
        elif marker == 0xDA:
            return data.find(b"\xff\xd9", pos) != -1
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False


#: Colour type → samples per pixel (PNG spec, IHDR).
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: Adam7 passes: (x0, y0, dx, dy).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_raw_size(width: int, height: int, bit_depth: int, colour_type: int, interlaced: bool) -> int:
    """Bytes the image data inflates to: each row's filter byte and its packed samples (per Adam7 pass)."""
    bits = _PNG_SAMPLES.get(colour_type, 4) * bit_depth
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            total += h * (1 + -(-w * bits // 8))
    return total


_PILLOW_LIMIT_LOCK = threading.Lock()


@contextmanager
def _no_pillow_limit() -> Iterator[None]:
    """Pillow's own pixel limit (a process-wide setting) off for the block, which opens a file whose size our
    budget checks. One block at a time: two threads each saving and restoring the setting could leave it off
    for good."""
    with _PILLOW_LIMIT_LOCK:
        prev = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = prev


def _png_pillow_reads(data: bytes) -> bool:
    """Whether the PNG is 8-bit grey or RGB, or 16-bit grey, not interlaced (IHDR): the layouts Pillow gives
    as they are stored (it would reduce 16-bit colour to 8 bits)."""
    bit_depth, colour_type, interlace = data[24], data[25], data[28]
    return interlace == 0 and ((bit_depth == 8 and colour_type in (0, 2)) or (bit_depth == 16 and colour_type == 0))


def _png_with_pillow(data: bytes, width: int, height: int) -> Scan:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _no_pillow_limit():  # (the size is within the caller's budget, checked on the header)
                image = Image.open(io.BytesIO(data))
            image.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises several types for a broken file
        raise TruncatedImageError(f"PNG could not be decoded ({exc}); the file is truncated or corrupt") from None
    pixels = np.asarray(image)
    if pixels.shape[:2] != (height, width):
        raise TruncatedImageError(f"PNG decoded to {pixels.shape[1]}×{pixels.shape[0]}, header says {width}×{height}")
    if pixels.dtype != np.uint8:  # 16-bit grey ("I;16": little-endian uint16, or a wider int from "I")
        pixels = pixels.astype(np.uint16)
    layout: Layout = "grey" if pixels.ndim == 2 else "rgb"
    return Scan(pixels=np.ascontiguousarray(pixels), bit_depth=8 if pixels.dtype == np.uint8 else 16, layout=layout,
                format="PNG")


def _check_png_data_size(data: bytes) -> None:
    """`DecodeError` when the image data inflates past what the header declares. libpng inflates every byte
    of the data, past the last row too, before it gives up on the extra: a 1-MB 64×64 PNG whose data
    inflates to a gigabyte took seconds of a model thread. The data is inflated here only up to one byte
    past the declared size, so a bomb costs what a right-sized image would."""
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    bit_depth, colour_type, interlace = data[24], data[25], data[28]
    expected = _png_raw_size(width, height, bit_depth, colour_type, interlace == 1)
    inflater = zlib.decompressobj()
    produced, pos, n = 0, 8, len(data)
    while pos + 8 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            try:
                produced += len(inflater.decompress(data[pos + 8 : pos + 8 + length], expected + 1 - produced))
            except zlib.error as exc:
                raise TruncatedImageError(f"PNG image data is corrupt ({exc})") from None
            if produced > expected or inflater.unconsumed_tail:
                raise TooManyPixelsError(f"PNG image data inflates past the {expected:,} bytes its "
                                         f"{width}×{height} header declares (a decompression bomb?)")
        pos += 12 + length


#: At most this many scans in a JPEG: each makes the decoder walk every block of the image again; real
#: encoders write about 10 (progressive), and a file of thousands of near-empty ones costs seconds.
MAX_JPEG_SCANS = 100


def _check_jpeg_scans(data: bytes) -> None:
    """`DecodeError` for a JPEG of more than MAX_JPEG_SCANS scans (counted by their start-of-scan markers,
    which entropy-coded data cannot hold: 0xFF is stuffed as 0xFF00 there)."""
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise UnsupportedDepthError(f"JPEG with {scans} scans is not accepted (at most {MAX_JPEG_SCANS}): each "
                                    "scan costs a pass over the whole image")


def _png_has_end(data: bytes) -> bool:
    """Whether the chunks, walked by their lengths from the signature, reach an IEND chunk. A file of more
    chunks than one per 512 bytes (4096 at least) is refused: its decoders walk each chunk in turn (Pillow
    in Python), and 400,000 empty chunks in 4.8 MB took 1.6 s where a real PNG that size takes 15 ms; an
    encoder's data chunks are 8 kB or more."""
    pos, n = 8, len(data)
    most, chunks = max(4096, n // 512), 0
    while pos + 8 <= n:
        if data[pos + 4 : pos + 8] == b"IEND":
            return True
        chunks += 1
        if chunks > most:
            raise NotAnImageError(f"PNG of over {most:,} chunks in {n:,} bytes: no scanner writes that")
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
    return False


def decode_dual_energy(low: bytes, high: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Scan:
    """Decode a raw dual-energy pair (two grey images of one size, usually 16-bit) into one H×W×2 scan."""
    lo = decode(low, max_pixels=max_pixels)
    hi = decode(high, max_pixels=max_pixels)
    for name, s in (("low", lo), ("high", hi)):
        if s.layout != "grey":
            raise NotAnImageError(f"dual-energy {name} image must be single-channel grey, got {s.layout}")
    if lo.pixels.shape != hi.pixels.shape or lo.bit_depth != hi.bit_depth:
        raise NotAnImageError(
            f"dual-energy pair differs: low {lo.width}×{lo.height} {lo.bit_depth}-bit, "
            f"high {hi.width}×{hi.height} {hi.bit_depth}-bit"
        )
    pixels = np.stack([lo.pixels, hi.pixels], axis=-1)
    return Scan(pixels=pixels, bit_depth=lo.bit_depth, layout="dual_energy", format=lo.format)


def encode_jpeg(pixels: np.ndarray, *, quality: int = 95) -> bytes:
    """Encode an H×W (grey) or H×W×3 (RGB) uint8 array as baseline JPEG bytes, colour with 4:2:0 chroma as
    the datasets' JPEG scans (SIXray, OPIXray) are stored."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be 1–100, got {quality}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    arr = pixels
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]
    ok, buf = cv2.imencode(".jpg", arr, params)
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def encode_png(pixels: np.ndarray, *, compression: int = 1) -> bytes:
    """Encode an H×W (grey) or H×W×3 (RGB) uint8/uint16 array as PNG bytes (deterministic).

    compression: zlib level 0–9. Level 0 stores the rows uncompressed, about 9x faster than level 1 on
    noisy 16-bit raw counts (1.1 vs 10 ms for 576×768), whose low bits are noise that compresses by only
    ~20 % anyway; the synthesiser writes raw counts that way.
    """
    if not 0 <= int(compression) <= 9:
        raise ValueError(f"PNG compression must be 0–9, got {compression}")
    arr = pixels
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if compression == 0:  # row filters only help a compressor
        params = [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    else:
        # The RLE strategy and the SUB row filter only. Measured on 576×768 synthetic scans (false colour,
        # grey, 16-bit raw) and masks at level 1: RLE is about 2x faster than the default strategy with
        # files no larger, and SUB alone is another 1.4–1.7x faster than choosing a filter per row, with
        # files 0–15 % larger (noisy PIDray-like colour is no larger than with the adaptive choice).
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(compression), cv2.IMWRITE_PNG_STRATEGY,
                  cv2.IMWRITE_PNG_STRATEGY_RLE, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    ok, buf = cv2.imencode(".png", arr, params)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
