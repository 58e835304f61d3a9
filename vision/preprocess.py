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
from pydantic import BaseModel, ConfigDict, Field, model_validator

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

    @model_validator(mode="after")
    def _check(self) -> PreprocessSpec:
        # The letterbox border is written into the model's input array: it must fit the input depth.
        if self.pad_value > 2**self.input_bits - 1:
            raise ValueError(f"pad_value {self.pad_value} does not fit {self.input_bits}-bit input")
        return self

    @property
    def channels(self) -> int:
        return {"rgb": 3, "grey": 1, "dual_energy": 2}[self.input_kind]

    @property
    def letterbox_spec(self) -> LetterboxSpec:
        return LetterboxSpec(height=self.height, width=self.width, pad_value=self.pad_value)


class IncompatibleScanError(ValueError):
    """The scan's layout cannot feed this model (e.g. a false-colour image to a dual-energy model)."""


def to_layout(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Convert a scan's pixels (H×W or H×W×1 grey, H×W×3 RGB, H×W×2 dual-energy; uint8 or uint16) to the
    model's channel layout and depth (H×W×C, uint8 or uint16). `IncompatibleScanError` for anything else."""
    arr = pixels
    if arr.dtype.kind != "u" or arr.dtype.itemsize not in (1, 2):
        raise IncompatibleScanError(f"scan pixels must be uint8 or uint16, got {arr.dtype}")
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)  # big-endian 16-bit as native
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (2, 3)):
        what = f"{arr.shape[2]} channels" if arr.ndim == 3 else f"shape {arr.shape}"
        raise IncompatibleScanError(f"a scan is H×W grey, H×W×3 RGB or H×W×2 dual-energy; this one has {what}")
    if spec.input_kind == "dual_energy":
        if arr.ndim != 3 or arr.shape[2] != 2:
            raise IncompatibleScanError(f"this model takes a dual-energy pair (H×W×2); the scan is {arr.shape}")
    elif arr.ndim == 3 and arr.shape[2] == 2:
        raise IncompatibleScanError(
            f"this model takes {spec.input_kind} images; render the dual-energy pair first (vision.colour)"
        )
    # Depth: full scale to full scale (65535 ↔ 255), for dual-energy pairs as for images.
    if spec.input_bits == 8 and arr.dtype != np.uint8:
        arr = (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif spec.input_bits == 16 and arr.dtype != np.uint16:
        arr = arr.astype(np.uint16) * 257
    if spec.input_kind == "dual_energy":
        return arr
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
