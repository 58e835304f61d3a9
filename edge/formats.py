"""What a station may send, how it is stored, and how it is decoded (JPEG/PNG/TIFF, dual-energy pairs,
DICOS DX).

An `Upload` is the exact bytes the service stores (content-addressed, so the sha256 of these bytes is the
idempotency key of a scan) with their media type:
- an image file (image/png, image/jpeg, image/tiff): stored as sent;
- a DICOS DX file (application/dicom): stored as sent, decoded with pydicos;
- a raw dual-energy pair (two grey images, `low` and `high`): stored in a small container of our own,
  `application/x-xscreen-dual-energy` (magic, then the two files with their lengths), because a record
  holds one image and PNG cannot hold two channels. The container is deterministic: the same pair always
  gives the same bytes, so a re-sent pair is recognised as a duplicate.

DICOS: pydicos (Stratovan's toolkit) reads only from files, so the bytes go through a private temporary
file. Its reader allocates the whole pixel array, so the request body limit is what bounds its memory;
the pixel budget is checked before the pixels are copied out.
"""

from __future__ import annotations

import hashlib
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vision.decode import (
    DecodeError,
    NotAnImageError,
    Scan,
    TooManyPixelsError,
    decode,
    decode_dual_energy,
    sniff_format,
)

DICOM_MEDIA_TYPE = "application/dicom"
DUAL_ENERGY_MEDIA_TYPE = "application/x-xscreen-dual-energy"
#: Raw request bodies the ingest route takes, by Content-Type, and the suffix each is stored under.
RAW_MEDIA_TYPES: dict[str, str] = {"image/png": "png", "image/jpeg": "jpg", "image/tiff": "tiff", DICOM_MEDIA_TYPE: "dcs"}
_FORMAT_MEDIA = {"PNG": ("image/png", "png"), "JPEG": ("image/jpeg", "jpg"), "TIFF": ("image/tiff", "tiff")}
_DE_MAGIC = b"XSCREEN-DE1\n"

# The Stratovan toolkit behind pydicos is not documented as thread-safe; one DICOS call at a time.
_DICOS_LOCK = threading.Lock()


class UnsupportedMediaTypeError(ValueError):
    """The declared or sniffed type is not one the service takes (HTTP 415)."""


class DicosError(DecodeError):
    """A DICOS file pydicos cannot read as a DX image (HTTP 422)."""


@dataclass(frozen=True)
class Upload:
    """Bytes to store for one scan, their media type and file suffix."""

    data: bytes
    media_type: str
    suffix: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def is_dicos(data: bytes) -> bool:
    """DICOS files use the DICOM layout: a 128-byte preamble, then the magic 'DICM'."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def normalise_media_type(content_type: str | None) -> str | None:
    """'image/PNG; charset=x' → 'image/png'; None or empty → None."""
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def upload_from_bytes(data: bytes, content_type: str | None) -> Upload:
    """An `Upload` for one file. content_type: the declared type (None or octet-stream: sniff the bytes).

    A declared type outside `RAW_MEDIA_TYPES` is refused (415); the bytes themselves are checked when
    decoded, so a PNG declared as image/jpeg decodes as the PNG it is (the declaration is only a hint).
    """
    declared = normalise_media_type(content_type)
    if declared not in (None, "application/octet-stream") and declared not in RAW_MEDIA_TYPES:
        raise UnsupportedMediaTypeError(
            f"unsupported content type {declared!r}: send one of {sorted(RAW_MEDIA_TYPES)} "
            "(or multipart/form-data with the file in field 'image', or 'low' and 'high')"
        )
    if declared == DICOM_MEDIA_TYPE or is_dicos(data):
        return Upload(data=data, media_type=DICOM_MEDIA_TYPE, suffix="dcs")
    fmt = sniff_format(data)
    if fmt is not None:
        media_type, suffix = _FORMAT_MEDIA[fmt]
        return Upload(data=data, media_type=media_type, suffix=suffix)
    # Unrecognised bytes: keep the declared type so the decoder's message ("not an image") is the answer.
    media_type = declared if declared in RAW_MEDIA_TYPES else "application/octet-stream"
    return Upload(data=data, media_type=media_type, suffix=RAW_MEDIA_TYPES.get(media_type, "bin"))


def pack_dual_energy(low: bytes, high: bytes) -> bytes:
    """The dual-energy container: magic, then for low and high a big-endian u64 length and the file bytes."""
    return _DE_MAGIC + struct.pack(">Q", len(low)) + low + struct.pack(">Q", len(high)) + high


def unpack_dual_energy(data: bytes) -> tuple[bytes, bytes]:
    """Inverse of `pack_dual_energy`; `NotAnImageError` on a malformed container."""
    if not data.startswith(_DE_MAGIC):
        raise NotAnImageError("not an xscreen dual-energy container")
    pos = len(_DE_MAGIC)
    parts: list[bytes] = []
    for name in ("low", "high"):
        if pos + 8 > len(data):
            raise NotAnImageError(f"dual-energy container truncated before the {name} image")
        (n,) = struct.unpack(">Q", data[pos : pos + 8])
        pos += 8
        if pos + n > len(data):
            raise NotAnImageError(f"dual-energy container truncated inside the {name} image")
        parts.append(data[pos : pos + n])
        pos += n
    if pos != len(data):
        raise NotAnImageError("dual-energy container has trailing bytes")
    return parts[0], parts[1]


def upload_from_pair(low: bytes, high: bytes) -> Upload:
    """An `Upload` for a raw dual-energy pair (both parts must be present)."""
    return Upload(data=pack_dual_energy(low, high), media_type=DUAL_ENERGY_MEDIA_TYPE, suffix="xde")


def read_dicos_dx(data: bytes, *, max_pixels: int) -> Scan:
    """Decode a DICOS DX file into a grey `Scan` (uint16, or uint8 for 8-bit DX data).

    Raises `DicosError` if pydicos cannot read it as DX, `TooManyPixelsError` over the pixel budget.
    """
    if not data:
        raise DicosError("empty DICOS file")
    if not is_dicos(data):
        raise DicosError("not a DICOS file: the 'DICM' marker at byte 128 is missing")
    try:
        from pydicos import DXLoader
    except ImportError as exc:  # pragma: no cover - pydicos is an `edge` dependency
        raise DicosError(f"DICOS input needs pydicos, which is not installed here ({exc})") from exc
    with _DICOS_LOCK, tempfile.TemporaryDirectory(prefix="xscreen-dicos-") as tmp:
        path = Path(tmp) / "scan.dcs"
        path.write_bytes(data)
        dx = DXLoader()
        try:
            dx.read(path)
        except Exception as exc:  # pydicos raises RuntimeError with the toolkit's error log
            raise DicosError(f"not a readable DICOS DX image ({_toolkit_reason(exc)})") from None
        xray = dx.GetXRayData()
        width, height = int(xray.GetWidth()), int(xray.GetHeight())
        if width <= 0 or height <= 0:
            raise DicosError(f"DICOS DX declares an empty image ({width}×{height})")
        if width * height > max_pixels:
            raise TooManyPixelsError(
                f"DICOS DX declares {width}×{height} = {width * height:,} pixels, over the budget of {max_pixels:,}"
            )
        pixels = _dx_pixels(xray)
    if pixels.ndim != 2 or pixels.size == 0:
        raise DicosError(f"DICOS DX pixel data has shape {pixels.shape}; expected one 2-D image")
    depth = 8 if pixels.dtype == np.uint8 else 16
    return Scan(pixels=np.ascontiguousarray(pixels), bit_depth=depth, layout="grey", format="DICOS")


def _toolkit_reason(exc: Exception) -> str:
    """The toolkit's first specific error line, without our temporary file's path."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip().startswith("Error:")]
    reason = lines[-1] if lines else type(exc).__name__
    return reason.removeprefix("Error:").strip()[:200]


def _dx_pixels(xray: object) -> np.ndarray:
    """Copy the DX pixel array out of the toolkit (H×W, as pydicos's DXLoader.get_data lays it out)."""
    from pyDICOS import Volume

    kind = xray.GetImageDataType()  # type: ignore[attr-defined]
    types = Volume.IMAGE_DATA_TYPE
    if kind == types.enumUnsigned16Bit:
        return np.array(xray.GetUnsigned16(), copy=True)  # type: ignore[attr-defined]
    if kind == types.enumUnsigned8Bit:
        return np.array(xray.GetUnsigned8(), copy=True)  # type: ignore[attr-defined]
    raise DicosError(f"DICOS DX pixel type {kind} is not supported (unsigned 8 or 16 bit only)")


def decode_upload(upload: Upload, *, max_pixels: int) -> Scan:
    """Decode stored or received bytes by their media type (see the module docstring)."""
    if upload.media_type == DICOM_MEDIA_TYPE:
        return read_dicos_dx(upload.data, max_pixels=max_pixels)
    if upload.media_type == DUAL_ENERGY_MEDIA_TYPE:
        low, high = unpack_dual_energy(upload.data)
        return decode_dual_energy(low, high, max_pixels=max_pixels)
    return decode(upload.data, max_pixels=max_pixels)


def write_dicos_dx(pixels: np.ndarray, path: Path, *, kvp: float = 140.0, tube_current_ma: float = 1.0) -> None:
    """Write an H×W uint16 grey image as a DICOS DX file (for stations and tests that produce DICOS).

    pydicos's `set_data` copies pixel by pixel in Python: fine for test images, slow for full scans.
    """
    import pyDICOS
    from pydicos import DXLoader

    if pixels.ndim != 2 or pixels.dtype != np.uint16:
        raise ValueError(f"DICOS DX needs an H×W uint16 image, got {pixels.shape} {pixels.dtype}")
    with _DICOS_LOCK:
        dx = DXLoader()
        if not dx.Initialize(pyDICOS.OBJECT_OF_INSPECTION_TYPE.enumTypeBaggage,
                             pyDICOS.DX.PRESENTATION_INTENT_TYPE.enumProcessing):
            raise RuntimeError("pydicos could not initialise a DX object")
        dx.set_data(np.ascontiguousarray(pixels))
        dx.SetKVP(float(kvp))
        dx.SetXRayTubeCurrent(float(tube_current_ma))
        dx.write(Path(path).with_suffix(".dcs"))
