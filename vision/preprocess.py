"""The one preprocessing path, shared by training, evaluation, export checks and the lane service.

A decoded scan (H×W grey, H×W×3 RGB or H×W×2 dual-energy; uint8 or uint16) becomes the model's input:
C×H'×W' in the model's channel layout and bit depth, letterboxed to the model's size. Scaling and
mean/std normalisation are NOT done here: they live inside the model graph (DESIGN.md §3), so they cannot
be done twice or differently.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from vision.letterbox import LetterboxParams, LetterboxSpec, letterbox

InputKind = Literal["rgb", "grey", "dual_energy"]


class PreprocessSpec(BaseModel):
    """What a model takes: channel layout, bit depth and input size (part of the model package)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_kind: InputKind = "rgb"
    input_bits: Literal[8, 16] = 8
    height: int = Field(default=512, gt=0)
    width: int = Field(default=512, gt=0)
    pad_value: int = Field(default=114, ge=0, le=65535)

    @property
    def channels(self) -> int:
        return {"rgb": 3, "grey": 1, "dual_energy": 2}[self.input_kind]

    @property
    def letterbox_spec(self) -> LetterboxSpec:
        return LetterboxSpec(height=self.height, width=self.width, pad_value=self.pad_value)


class IncompatibleScanError(ValueError):
    """The scan's layout cannot feed this model (e.g. a false-colour image to a dual-energy model)."""


def to_layout(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Convert a scan's pixels to the model's channel layout and depth (H×W×C, uint8 or uint16)."""
    arr = pixels
    if spec.input_kind == "dual_energy":
        if arr.ndim != 3 or arr.shape[2] != 2:
            raise IncompatibleScanError(f"this model takes a dual-energy pair (H×W×2); the scan is {arr.shape}")
        if arr.dtype != np.uint16:
            arr = arr.astype(np.uint16) * 257  # 8-bit pairs: full-scale to full-scale
        return arr
    if arr.ndim == 3 and arr.shape[2] == 2:
        raise IncompatibleScanError(
            f"this model takes {spec.input_kind} images; render the dual-energy pair first (vision.colour)"
        )
    if spec.input_bits == 8 and arr.dtype != np.uint8:
        arr = (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif spec.input_bits == 16 and arr.dtype != np.uint16:
        arr = arr.astype(np.uint16) * 257
    if spec.input_kind == "rgb" and arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif spec.input_kind == "grey" and arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def prepare(pixels: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, LetterboxParams]:
    """Scan pixels → model input C×H×W (uint8 or uint16, contiguous) and the letterbox parameters that
    `vision.letterbox.unletterbox` needs to map detections back to the scan."""
    arr = to_layout(pixels, spec)
    boxed, params = letterbox(arr, spec.letterbox_spec)
    if boxed.ndim == 2:
        boxed = boxed[:, :, None]
    return np.ascontiguousarray(boxed.transpose(2, 0, 1)), params


def prepare_batch(images: list[np.ndarray], spec: PreprocessSpec) -> tuple[np.ndarray, list[LetterboxParams]]:
    """A list of scans → B×C×H×W and one LetterboxParams per scan."""
    prepared = [prepare(im, spec) for im in images]
    return np.stack([p[0] for p in prepared]), [p[1] for p in prepared]
