"""Server-rendered previews for the review UI: the stored scan as an 8-bit RGB PNG, boxes drawn on it.

Browsers show neither DICOS, 16-bit TIFF nor a dual-energy pair, so the UI never gets the stored file
itself: it gets this rendering (vision.draw), scaled so its longest side is at most `max_side` pixels.
Dual-energy scans are shown in false colour (vision.colour), as a scanner would.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.formats import Upload, decode_upload
from edge.store import ScanRecord
from vision.decode import encode_png
from vision.draw import draw_boxes, to_display_rgb


def render_preview(data: bytes, record: ScanRecord, *, boxes: bool, max_side: int, max_pixels: int) -> bytes:
    """PNG bytes of the scan `record` (stored bytes `data`), with its alarmed detections if `boxes`."""
    scan = decode_upload(Upload(data=data, media_type=record.media_type, suffix=""), max_pixels=max_pixels)
    if scan.layout == "dual_energy":
        from vision.colour import render_false_colour

        raw = scan.pixels if scan.pixels.dtype == np.uint16 else scan.pixels.astype(np.uint16) * 257
        rgb = render_false_colour(raw)
    else:
        rgb = to_display_rgb(scan.pixels)
    scale = min(1.0, max_side / max(rgb.shape[0], rgb.shape[1]))
    if scale < 1.0:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    if boxes:
        alarmed = [d for d in record.result.get("detections", []) if d.get("alarm")]
        if alarmed:
            xyxy = np.array([d["box_xyxy"] for d in alarmed], np.float64) * scale
            rgb = draw_boxes(rgb, xyxy, [d["class"] for d in alarmed], [d["score"] for d in alarmed])
    return encode_png(np.ascontiguousarray(rgb))
