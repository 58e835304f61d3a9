"""DICOS DX (the DICOM-based format of security scanners) into a grey `Scan`, and back for tests and stations.

One reader for everything that decodes scans: the lane service (edge.formats) and `xscreen predict`
(inference.predict) both call `read_dicos_dx`, so the same bytes give the same pixels on both paths. A
file is recognised by its content (`is_dicos`: the DICOM preamble), never by its name.

pydicos (Stratovan's toolkit) is imported only when a DICOS file is read or written: it is an `edge`
dependency, not a dependency of the image core, and `import vision` stays cheap without it. It reads only
from files, so the bytes go through a private temporary file. Its reader allocates the whole pixel array,
so the caller's size limit on the bytes is what bounds its memory; the pixel budget is checked before the
pixels are copied out.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

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
