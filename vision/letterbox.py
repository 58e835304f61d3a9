"""Letterbox: scale an image to fit a fixed input size keeping its aspect ratio, pad the rest.

`letterbox` returns the `LetterboxParams` it used; `unletterbox` maps boxes back with exactly those
parameters and never recomputes the geometry (so the two cannot drift apart).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class LetterboxSpec(BaseModel):
    """Target input geometry of a model: height × width in pixels and the pad value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    pad_value: int = Field(default=114, ge=0, le=65535)
    #: Only shrink (never enlarge small images): off by default, so small scans fill the input.
    scale_down_only: bool = False


@dataclass(frozen=True)
class LetterboxParams:
    """What `letterbox` did: out = in × scale + (pad_x, pad_y), in pixels."""

    scale: float
    pad_x: int
    pad_y: int
    src_width: int
    src_height: int
    dst_width: int
    dst_height: int


def letterbox(image: np.ndarray, spec: LetterboxSpec) -> tuple[np.ndarray, LetterboxParams]:
    """Resize `image` (H×W or H×W×C, any dtype) into spec.height × spec.width, centred, padded.

    The resized content is at least 1 pixel in each direction, so extreme aspect ratios (1×N, 20000×30)
    still map through.
    """
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"letterbox needs a non-empty H×W or H×W×C image, got shape {image.shape}")
    if np.issubdtype(image.dtype, np.integer) and not spec.pad_value <= np.iinfo(image.dtype).max:
        raise ValueError(f"letterbox pad value {spec.pad_value} does not fit the image's {image.dtype} samples")
    src_h, src_w = int(image.shape[0]), int(image.shape[1])
    scale = min(spec.height / src_h, spec.width / src_w)
    if spec.scale_down_only:
        scale = min(scale, 1.0)
    new_w = min(spec.width, max(1, int(round(src_w * scale))))
    new_h = min(spec.height, max(1, int(round(src_h * scale))))
    pad_x = (spec.width - new_w) // 2
    pad_y = (spec.height - new_h) // 2
    if (new_w, new_h) != (src_w, src_h):
        resized = resample(image, new_w, new_h)
    else:
        resized = image
    shape = (spec.height, spec.width) + tuple(image.shape[2:])
    out = np.full(shape, spec.pad_value, dtype=image.dtype)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    # The effective scale differs per axis after rounding; we keep one scale per axis in the inverse by
    # recording the real content size instead of recomputing it.
    params = LetterboxParams(
        scale=scale, pad_x=pad_x, pad_y=pad_y, src_width=src_w, src_height=src_h, dst_width=new_w, dst_height=new_h
    )
    return out, params


#: A bilinear step shrinking by more than this gets the [1 2 1]/4 pre-filter (`resample`): at 1.5 its worst-placed
#: sample still keeps a quarter of a 1-px wire, over a third of what a box mean keeps.
_PREFILTER_FROM = 1.5
_BINOMIAL3 = np.array([0.25, 0.5, 0.25], np.float32)
_IDENTITY1 = np.array([1.0], np.float32)

#: Sample types OpenCV's resize and warpAffine take.
_RESAMPLE_DTYPES = tuple(np.dtype(t) for t in ("uint8", "uint16", "int16", "float32", "float64"))


def resample(image: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """`image` (H×W or H×W×C, any depth) resampled to new_w × new_h, its layout kept. Shrinking: each axis
    first by the largest whole factor k ≤ src/new (the mean of each k × k block, OpenCV's integer INTER_AREA
    path), then bilinear for the rest, whose factor is then under 2, after a [1 2 1]/4 pre-filter where it is
    over 1.5, so every source pixel still weighs in (a 1-px wire keeps at least a quarter of its contrast
    wherever it lies) and nothing aliases as plain bilinear sampling does below 1/2.
    Close to INTER_AREA's box mean (within a grey level on smooth content) at a fraction of its cost: a whole
    `letterbox` of a 768 × 576 RGB scan into 512 px takes 0.24 ms of a core against 1.07 for INTER_AREA's
    resampling alone, 0.41 against 2.94 for a 1224 × 918 scan (`python bench/letterbox_cost.py`). The lane
    service does this for every scan. Enlarging is bilinear.

    Pixel centres map as in `cv2.resize`: x_dst + 0.5 = (x_src + 0.5) · new_w / src_w, which `unletterbox`
    inverts. When a side is not a multiple of its k, its last block is partial (filled out with its edge
    pixels) and the bilinear step maps the full side exactly (an affine warp, edge pixels replicated)."""
    if new_w < 1 or new_h < 1:
        raise ValueError(f"cannot resample to {new_w}×{new_h}: both sides must be at least 1 pixel")
    if image.dtype not in _RESAMPLE_DTYPES:
        supported = ", ".join(map(str, _RESAMPLE_DTYPES))
        raise ValueError(f"cannot resample {image.dtype} pixels (OpenCV resizes {supported})")
    src_h, src_w = image.shape[:2]
    kx, ky = max(1, src_w // new_w), max(1, src_h // new_h)
    reduced = image
    if kx > 1 or ky > 1:
        # Blocks of k × k; a side that is no multiple of its k ends in a partial block, filled out by
        # repeating its edge, so its last lines weigh in too (a belt scan's trailing object stays).
        red_w, red_h = -(-src_w // kx), -(-src_h // ky)
        if red_w * kx != src_w or red_h * ky != src_h:
            reduced = cv2.copyMakeBorder(image, 0, red_h * ky - src_h, 0, red_w * kx - src_w, cv2.BORDER_REPLICATE)
        reduced = cv2.resize(reduced, (red_w, red_h), interpolation=cv2.INTER_AREA)
    # The rest of the shrink, by fx, fy in [1, 2): bilinear samples fx apart, which near 2 can all but miss a
    # 1-px wire between two of them; a [1 2 1]/4 pre-filter along such an axis (centred: no shift) spreads
    # it over 3 px, so that some sample keeps at least a quarter of it, as a box mean over 2 px keeps half.
    fx, fy = src_w / (new_w * kx), src_h / (new_h * ky)
    if fx > _PREFILTER_FROM or fy > _PREFILTER_FROM:
        tap_x = _BINOMIAL3 if fx > _PREFILTER_FROM else _IDENTITY1
        tap_y = _BINOMIAL3 if fy > _PREFILTER_FROM else _IDENTITY1
        reduced = cv2.sepFilter2D(reduced, -1, tap_x, tap_y, borderType=cv2.BORDER_REPLICATE)
    if src_w % kx == 0 and src_h % ky == 0:  # whole blocks: resize's own centre mapping is the one wanted
        out = cv2.resize(reduced, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    else:
        # x_reduced = (x_dst + 0.5) · src_w / (new_w · kx) − 0.5, and likewise for y.
        inverse = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5]])
        out = cv2.warpAffine(reduced, inverse, (new_w, new_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE)
    # OpenCV returns a single channel as H×W.
    return out[:, :, None] if image.ndim == 3 and out.ndim == 2 else out


def unletterbox(boxes_xyxy: np.ndarray, params: LetterboxParams) -> np.ndarray:
    """Map N×4 boxes (x1, y1, x2, y2, pixels in the letterboxed image) back to the source image.

    Uses the per-axis content scale recorded by `letterbox`; results are clipped to the source image.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4).copy()
    sx = params.dst_width / params.src_width
    sy = params.dst_height / params.src_height
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - params.pad_x) / sx
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - params.pad_y) / sy
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, params.src_width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, params.src_height)
    return boxes.astype(np.float32)


def letterbox_boxes(boxes_xyxy: np.ndarray, params: LetterboxParams) -> np.ndarray:
    """Forward map of N×4 source boxes into the letterboxed image (the training side of `unletterbox`)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4).copy()
    sx = params.dst_width / params.src_width
    sy = params.dst_height / params.src_height
    boxes[:, [0, 2]] = boxes[:, [0, 2]] * sx + params.pad_x
    boxes[:, [1, 3]] = boxes[:, [1, 3]] * sy + params.pad_y
    return boxes.astype(np.float32)
