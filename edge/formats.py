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

DICOS DX is read by vision.dicos (the reader `xscreen predict` uses too, so both give the same answer
for the same bytes); `DicosError`, `is_dicos`, `read_dicos_dx` and `write_dicos_dx` are re-exported here.
pydicos's reader allocates the whole pixel array, so the request body limit is what bounds its memory.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from vision.decode import NotAnImageError, Scan, decode, decode_dual_energy, sniff_format
from vision.dicos import DicosError, is_dicos, read_dicos_dx, write_dicos_dx

__all__ = [
    "DICOM_MEDIA_TYPE", "DUAL_ENERGY_MEDIA_TYPE", "RAW_MEDIA_TYPES", "DicosError", "UnsupportedMediaTypeError",
    "Upload", "decode_upload", "is_dicos", "normalise_media_type", "pack_dual_energy", "read_dicos_dx",
    "unpack_dual_energy", "upload_from_bytes", "upload_from_pair", "write_dicos_dx",
]

DICOM_MEDIA_TYPE = "application/dicom"
DUAL_ENERGY_MEDIA_TYPE = "application/x-xscreen-dual-energy"
#: Raw request bodies the ingest route takes, by Content-Type, and the suffix each is stored under.
RAW_MEDIA_TYPES: dict[str, str] = {"image/png": "png", "image/jpeg": "jpg", "image/tiff": "tiff", DICOM_MEDIA_TYPE: "dcs"}
_FORMAT_MEDIA = {"PNG": ("image/png", "png"), "JPEG": ("image/jpeg", "jpg"), "TIFF": ("image/tiff", "tiff")}
_DE_MAGIC = b"XSCREEN-DE1\n"


class UnsupportedMediaTypeError(ValueError):
    """The declared or sniffed type is not one the service takes (HTTP 415)."""


@dataclass(frozen=True)
class Upload:
    """Bytes to store for one scan, their media type and file suffix."""

    data: bytes
    media_type: str
    suffix: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


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
    # By content first, as `xscreen predict` decodes a file (a PNG saved as scan.dcs is a PNG to both).
    if is_dicos(data):
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


def decode_upload(upload: Upload, *, max_pixels: int) -> Scan:
    """Decode stored or received bytes by their media type (see the module docstring)."""
    if upload.media_type == DICOM_MEDIA_TYPE:
        return read_dicos_dx(upload.data, max_pixels=max_pixels)
    if upload.media_type == DUAL_ENERGY_MEDIA_TYPE:
        low, high = unpack_dual_energy(upload.data)
        return decode_dual_energy(low, high, max_pixels=max_pixels)
    return decode(upload.data, max_pixels=max_pixels)
