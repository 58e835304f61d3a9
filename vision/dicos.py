"""DICOS DX (the DICOM-based format of security scanners) into a grey `Scan`, and back for tests and stations.

One reader for everything that decodes scans: the lane service (edge.formats) and `xscreen predict`
(inference.predict) both call `read_dicos_dx`, so the same bytes give the same pixels on both paths. A
file is recognised by its content (`is_dicos`: the DICOM preamble), never by its name.

pydicos (Stratovan's toolkit) is imported only when a DICOS file is read or written: it is an `edge`
dependency, not a dependency of the image core, and `import vision` stays cheap without it. It reads only
from files, so the bytes go through a private temporary file. Its reader allocates (and decompresses) the whole
pixel array the header declares, and a few kilobytes of JPEG-lossless DX can declare gigapixels: the pixel
budget is checked on the header (`dx_header`, read with pydicom, which stops before the pixel data) before
pydicos sees the file.

The toolkit returns the stored values as they are: `read_dicos_dx` applies what the header says about
them so that every DX file gives the pixels an image file of the same scan would, full scale to full scale
(as vision.preprocess maps depths): only the Bits Stored low bits count (the others may hold anything),
they are scaled to the full 8 or 16 bits, and MONOCHROME1 (minimum shown white) is inverted to the
MONOCHROME2 convention of every other input.
"""

from __future__ import annotations

import io
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vision.decode import DecodeError, Scan, TooManyPixelsError

# The Stratovan toolkit behind pydicos is not documented as thread-safe; one DICOS call at a time.
_DICOS_LOCK = threading.Lock()


class DicosError(DecodeError):
    """A DICOS file pydicos cannot read as a DX image (HTTP 422 in the service)."""


def is_dicos(data: bytes) -> bool:
    """DICOS files use the DICOM layout: a 128-byte preamble, then the magic 'DICM'."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_dicos_dx(data: bytes, *, max_pixels: int) -> Scan:
    """Decode a DICOS DX file into a grey `Scan` (uint16, or uint8 for 8-bit DX data).

    Raises `DicosError` if pydicos cannot read it as DX (or is not installed), `TooManyPixelsError` over
    the pixel budget.
    """
    if not data:
        raise DicosError("empty DICOS file")
    if not is_dicos(data):
        raise DicosError("not a DICOS file: the 'DICM' marker at byte 128 is missing")
    ds = _read_dataset(data, pixels=True)  # (read once: the header's checks and the compressed frames')
    header = _header_fields(ds)
    rows, columns, frames = header.get("rows"), header.get("columns"), header.get("frames", 1)
    if not rows or not columns:
        raise DicosError(f"DICOS file declares no image size (Rows {rows}, Columns {columns})")
    if rows * columns * max(1, frames) > max_pixels:
        raise TooManyPixelsError(
            f"DICOS DX declares {columns}×{rows}" + (f"×{frames} frames" if frames > 1 else "")
            + f" = {rows * columns * max(1, frames):,} pixels, over the budget of {max_pixels:,}"
        )
    _check_compressed_frames(ds, rows, columns)
    try:
        from pydicos import DXLoader
    except ImportError as exc:  # pragma: no cover - pydicos comes with the `edge` extra
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
    pixels = _full_scale(pixels, header)
    depth = 8 if pixels.dtype == np.uint8 else 16
    return Scan(pixels=np.ascontiguousarray(pixels), bit_depth=depth, layout="grey", format="DICOS")


def _toolkit_reason(exc: Exception) -> str:
    """The toolkit's first specific error line, without our temporary file's path."""
    # The first line is the cause ("Rescale Slope must be 1"); the later ones are its consequences
    # ("unable to read image origin").
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip().startswith("Error:")]
    reason = lines[0] if lines else type(exc).__name__
    return reason.removeprefix("Error:").strip()[:200]


def _full_scale(pixels: np.ndarray, header: dict) -> np.ndarray:
    """The toolkit's stored values as the pixels of an image file: Bits Stored masked and scaled to the
    dtype's full range, MONOCHROME1 inverted (see the module docstring)."""
    bits = pixels.dtype.itemsize * 8
    stored = header.get("bits_stored") or bits
    stored = stored if 1 <= stored <= bits else bits
    top = (1 << stored) - 1
    out = pixels & pixels.dtype.type(top) if stored < bits else pixels
    if str(header.get("photometric", "")).upper() == "MONOCHROME1":
        out = pixels.dtype.type(top) - out
    if stored < bits:
        full = (1 << bits) - 1
        out = ((out.astype(np.uint32) * full + top // 2) // top).astype(pixels.dtype)
    return out


#: The header attributes `dx_header` returns, by pydicom keyword.
_HEADER_KEYWORDS = {
    "SOPClassUID": "sop_class_uid", "SOPInstanceUID": "sop_instance_uid", "StudyInstanceUID": "scan_instance_uid",
    "FrameOfReferenceUID": "frame_of_reference_uid", "SamplesPerPixel": "samples",
    "PhotometricInterpretation": "photometric", "NumberOfFrames": "frames", "Rows": "rows", "Columns": "columns",
    "BitsAllocated": "bits_allocated", "BitsStored": "bits_stored", "HighBit": "high_bit",
    "PixelRepresentation": "pixel_representation", "StudyDate": "study_date", "StudyTime": "study_time",
}


def load_pydicom():
    """pydicom, set not to validate values as it reads them: a scanner's file (and the toolkit's own UIDs,
    with their leading zeros) would log a warning per scan; what is used is checked here."""
    try:
        import pydicom
        import pydicom.config
    except ImportError as exc:  # pragma: no cover - pydicom comes with the `edge` extra
        raise DicosError(f"DICOS needs pydicom, which is not installed here ({exc})") from exc
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    return pydicom


#: JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic), and JPEG-LS's.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})


def _frame_size(frame: bytes) -> tuple[int, int] | None:
    """(height, width) a compressed frame's own header declares: a JPEG or JPEG-LS start of frame, or a
    JPEG 2000 codestream's SIZ segment; None when it has neither (RLE: its size is the header's)."""
    if frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 16:  # JPEG 2000: SOC, SIZ (Xsiz, Ysiz at 8, 12)
        return int.from_bytes(frame[12:16], "big"), int.from_bytes(frame[8:12], "big")
    pos, n = 2, len(frame)
    while frame[:2] == b"\xff\xd8" and pos + 9 <= n:  # JPEG: walk the marker segments to the frame's
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker in _SOF_MARKERS:
            return int.from_bytes(frame[pos + 5 : pos + 7], "big"), int.from_bytes(frame[pos + 7 : pos + 9], "big")
        if marker == 0xFF:
            pos += 1
            continue
        pos += 2 + int.from_bytes(frame[pos + 2 : pos + 4], "big")
    return None


def _check_compressed_frames(ds: Any, rows: int, columns: int) -> None:
    """`DicosError` when a compressed frame declares another size than the header's Rows × Columns: the
    toolkit's decoder allocates what the frame says (a 1.6-kB file whose 6×8 header hides a 40000×40000
    frame took 3 GB and 8 s), so that is checked on the bytes before the toolkit reads them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            syntax = ds.file_meta.TransferSyntaxUID
            if not syntax.is_compressed or "PixelData" not in ds:
                return
            from pydicom.encaps import generate_frames

            frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    except Exception as exc:  # noqa: BLE001 - pydicom's many kinds, for a damaged file
        raise DicosError(f"DICOS pixel data cannot be read ({type(exc).__name__}: {str(exc)[:160]})") from None
    for k, frame in enumerate(frames):
        size = _frame_size(bytes(frame))
        if size is not None and size != (rows, columns):
            raise DicosError(f"DICOS DX frame {k} is compressed as {size[1]}×{size[0]} pixels, its header says "
                             f"{columns}×{rows}: refused unread")


def dx_header(data: bytes) -> dict:
    """The image attributes of a DICOS file's header (rows, columns, frames, bits_stored, photometric, ...,
    its SOP class and instance UIDs, its scan (study) and frame-of-reference UIDs, its study date and time),
    read with pydicom up to the pixel data, which is never read. Absent attributes are absent from the dict.
    `DicosError` if the header cannot be read."""
    return _header_fields(_read_dataset(data, pixels=False))


def _read_dataset(data: bytes, *, pixels: bool) -> Any:
    """The file as a pydicom dataset; its pixel data (kept as the file's bytes, never decoded) only with
    `pixels`. `DicosError` if it cannot be read."""
    if not is_dicos(data):
        raise DicosError("not a DICOS file: the 'DICM' marker at byte 128 is missing")
    pydicom = load_pydicom()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
    except Exception as exc:  # pydicom raises many kinds on a damaged header (InvalidDicomError, EOFError, ...)
        raise DicosError(f"DICOS header cannot be read ({type(exc).__name__}: {str(exc)[:160]})") from None


def _header_fields(ds: Any) -> dict:
    """`dx_header`'s dict from a read dataset."""
    out: dict = {}
    try:
        for keyword, name in _HEADER_KEYWORDS.items():
            value = ds.get(keyword)
            if value is not None and value != "":
                out[name] = str(value) if isinstance(value, str) else value
    except Exception as exc:  # a value pydicom cannot convert (read lazily, as it is asked for)
        raise DicosError(f"DICOS header cannot be read ({type(exc).__name__}: {str(exc)[:160]})") from None
    for name in ("samples", "rows", "columns", "bits_allocated", "bits_stored", "high_bit", "pixel_representation",
                 "frames"):
        if name in out:
            try:
                out[name] = int(out[name])
            except (TypeError, ValueError):
                raise DicosError(f"DICOS attribute {name} is not a number ({out[name]!r})") from None
    return out


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
