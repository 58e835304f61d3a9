"""Overlay drawing: boxes with class labels (and scores) on an RGB image, and contact sheets."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def _colour_for(name: str) -> tuple[int, int, int]:
    # A fixed colour per class name (stable across runs and processes: no Python hash randomisation).
    h = sum((i + 1) * ord(c) for i, c in enumerate(name)) % 180
    hsv = np.uint8([[[h, 230, 255]]])
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def to_display_rgb(pixels: np.ndarray) -> np.ndarray:
    """Any scan array (grey, RGB, dual-energy; 8 or 16 bit) as uint8 RGB for display."""
    arr = pixels
    if arr.dtype != np.uint8:
        arr = (arr.astype(np.float32) / 257.0).clip(0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:  # H×W×1 grey, as vision.preprocess takes it
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    if arr.shape[2] == 2:  # dual-energy: show the high-energy layer
        return cv2.cvtColor(np.ascontiguousarray(arr[:, :, 1]), cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(arr[:, :, :3])


def draw_boxes(
    image_rgb: np.ndarray,
    boxes_xyxy: np.ndarray,
    labels: Sequence[str],
    scores: Sequence[float] | None = None,
    *,
    thickness: int | None = None,
) -> np.ndarray:
    """Return a copy of `image_rgb` (H×W×3 uint8) with each box and its label drawn."""
    out = to_display_rgb(image_rgb).copy()
    h, w = out.shape[:2]
    t = thickness or max(1, round(min(h, w) / 300))
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    for i, (box, label) in enumerate(zip(boxes, labels)):
        # Boxes end exclusive (x2, y2); OpenCV draws inclusive corners: the last pixel inside is x2 − 1, so a
        # box clipped to the scan keeps its right and bottom sides on the image.
        x1, y1 = (int(round(v)) for v in box[:2])
        x2, y2 = min(int(np.ceil(box[2])) - 1, w - 1), min(int(np.ceil(box[3])) - 1, h - 1)
        colour = _colour_for(label)
        cv2.rectangle(out, (x1, y1), (max(x1, x2), max(y1, y2)), colour, t)
        text = label if scores is None else f"{label} {scores[i]:.2f}"
        scale = max(0.35, t * 0.4)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = max(th + base, y1)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), colour, -1)
        cv2.putText(out, text, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def contact_sheet(images_rgb: Sequence[np.ndarray], *, columns: int = 4, tile: int = 256) -> np.ndarray:
    """Tile images (each letterboxed into tile×tile, white background) into one uint8 RGB sheet."""
    if not images_rgb:
        return np.full((tile, tile, 3), 255, np.uint8)
    columns = max(1, min(columns, len(images_rgb)))
    rows = (len(images_rgb) + columns - 1) // columns
    sheet = np.full((rows * tile, columns * tile, 3), 255, np.uint8)
    for k, img in enumerate(images_rgb):
        img = to_display_rgb(img)
        h, w = img.shape[:2]
        s = min((tile - 4) / h, (tile - 4) / w)
        nh, nw = max(1, int(h * s)), max(1, int(w * s))
        small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        r, c = divmod(k, columns)
        y0 = r * tile + (tile - nh) // 2
        x0 = c * tile + (tile - nw) // 2
        sheet[y0 : y0 + nh, x0 : x0 + nw] = small
    return sheet
