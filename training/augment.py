"""Training-time augmentation of X-ray scans that keeps what the pixels mean.

Applied to the decoded scan BEFORE `vision.preprocess.prepare`, so the letterbox stays the one shared path
(DESIGN.md §1) and boxes are mapped into the model input with `letterbox_boxes` afterwards.

What is allowed and why:
- Geometry (albumentations): flips, 90° turns, a small scale/translate, a crop that keeps the boxes. A bag
  lies on the belt in any orientation, so these make scans that a scanner could have produced. Borders
  opened by the affine step are filled with air (the median of the scan's border), never black: black
  means "unpenetrated" to a screener and to the model.
- Photometric, in the transmission domain only:
  * dual-energy raw and grey: log-attenuation scaled by one factor k (T' = T^k, as if every object were
    k times as thick). Both energies are scaled alike, so the low/high ratio — the Z_eff estimate, i.e.
    the material — is unchanged, and air (T = 1) stays air. Then Gaussian noise with σ ∝ √signal, the
    shape of quantum noise.
  * false-colour RGB: the darkness d = max − x is scaled by one positive factor per image and per pixel
    (the per-pixel factor is the noise), the same for all three channels. Channel differences then scale
    alike, so HSV hue — which encodes material in a false-colour palette — is unchanged.
- Never: hue/saturation/colour jitter, channel shuffle, grey-world or any per-channel change. In X-ray
  colour is material; changing it teaches the model that organic and metal look alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import albumentations as A
import cv2
import numpy as np

from vision.colour import RAW_AIR_LEVEL, RAW_DARK_LEVEL

ScanKind = Literal["rgb", "grey", "raw"]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the training augmentation (defaults are deliberately mild)."""

    p_hflip: float = 0.5
    p_vflip: float = 0.5
    p_rot90: float = 0.5
    p_affine: float = 0.5
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05  # fraction of the side
    p_crop: float = 0.3
    crop_erosion: float = 0.2  # the crop may cut up to this much into the union of the boxes
    min_visibility: float = 0.4  # a box keeping less than this share of its area is dropped
    p_gain: float = 0.5
    log_att_gain: tuple[float, float] = (0.8, 1.2)  # raw and grey: L' = k·L
    darkness_gain: tuple[float, float] = (0.85, 1.15)  # false colour: d' = k·d
    p_noise: float = 0.5
    noise_at_air: tuple[float, float] = (0.0, 0.02)  # σ relative to the air signal (raw, grey)
    noise_darkness: tuple[float, float] = (0.0, 0.05)  # σ of the per-pixel darkness factor (rgb)


def scan_kind(pixels: np.ndarray) -> ScanKind:
    """What a scan's array holds: H×W×2 → "raw" (dual-energy counts), H×W×3 → "rgb", else "grey"."""
    if pixels.ndim == 3 and pixels.shape[2] == 2:
        return "raw"
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return "rgb"
    return "grey"


def air_fill(pixels: np.ndarray) -> tuple[float, ...]:
    """Per-channel median of the scan's outer 2-pixel frame: what air looks like in this scan."""
    arr = pixels if pixels.ndim == 3 else pixels[:, :, None]
    frame = np.concatenate(
        [arr[:2].reshape(-1, arr.shape[2]), arr[-2:].reshape(-1, arr.shape[2]),
         arr[:, :2].reshape(-1, arr.shape[2]), arr[:, -2:].reshape(-1, arr.shape[2])]
    )
    return tuple(float(v) for v in np.median(frame, axis=0))


def _geometric(config: AugmentConfig, fill: tuple[float, ...]) -> A.Compose:
    # Built per call: the fill (air) differs per scan, and building costs about a millisecond.
    return A.Compose(
        [
            A.HorizontalFlip(p=config.p_hflip),
            A.VerticalFlip(p=config.p_vflip),
            A.RandomRotate90(p=config.p_rot90),
            A.Affine(
                scale=config.scale,
                translate_percent=(-config.translate, config.translate),
                rotate=0.0,  # a rotated box is looser than the object: keep boxes tight
                border_mode=cv2.BORDER_CONSTANT,
                fill=fill if len(fill) > 1 else fill[0],
                p=config.p_affine,
            ),
            A.BBoxSafeRandomCrop(erosion_rate=config.crop_erosion, p=config.p_crop),
        ],
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["class_ids"],
            min_visibility=config.min_visibility,
            clip=True,
            filter_invalid_bboxes=True,
        ),
        strict=True,
    )


def transmission_gain_noise(
    pixels: np.ndarray, rng: np.random.Generator, *, gain: float, noise: float, kind: ScanKind | None = None
) -> np.ndarray:
    """Photometric change in the transmission domain; same shape and dtype out.

    pixels: H×W×2 uint16 raw counts (low, high; air ≈ RAW_AIR_LEVEL), H×W[×1] grey (bright = air) or H×W×3
    false-colour RGB. gain: raw/grey — log-attenuation factor k; rgb — darkness factor. noise: raw/grey — σ
    as a fraction of the air signal (scaled by √(signal/air)); rgb — σ of the per-pixel darkness factor.
    """
    kind = kind or scan_kind(pixels)
    top = float(np.iinfo(pixels.dtype).max)
    x = pixels.astype(np.float32)
    if kind == "rgb":
        darkness = top - x
        factor = np.float32(gain) * (1.0 + np.float32(noise) * rng.standard_normal(x.shape[:2], dtype=np.float32))
        # Cap the factor where the darkest channel would pass black: clipping one channel alone shifts hue.
        # (The channel max by hand: numpy reduces a last axis of 3 about 30× slower.)
        darkest = np.maximum(np.maximum(darkness[..., 0], darkness[..., 1]), darkness[..., 2])
        ceiling = top / np.maximum(darkest, 1.0)
        factor = np.clip(factor, 0.0, ceiling)
        out = top - darkness * factor[:, :, None]  # one factor for all channels: hue kept
    else:
        if kind == "raw":
            dark, air = float(RAW_DARK_LEVEL), float(RAW_AIR_LEVEL)
        else:
            dark, air = 0.0, top
        span = air - dark
        signal = np.maximum(x - dark, 1.0)
        # T' = T^k; T > 1 (air with noise) stays near 1, unpenetrated (signal ~ 0) stays dark.
        signal = span * np.power(signal / span, np.float32(gain))
        if noise > 0:
            sigma = np.float32(noise * span) * np.sqrt(signal / np.float32(span))
            signal = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        out = signal + dark
    return np.clip(np.rint(out), 0, top).astype(pixels.dtype)


def augment_scan(
    pixels: np.ndarray,
    boxes_xyxy: np.ndarray,
    class_ids: np.ndarray,
    *,
    seed: int,
    config: AugmentConfig = AugmentConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment one scan and its boxes, deterministically for `seed`.

    pixels: H×W, H×W×1, H×W×3 (RGB) or H×W×2 (raw), uint8 or uint16. boxes_xyxy: N×4 float pixels of the
    scan (clipped to it here). class_ids: N int64. Returns (pixels H'×W'[×C] same dtype and channels,
    boxes_xyxy M×4 float32 in the new scan's pixels, class_ids M int64); boxes that leave the scan or keep
    less than `min_visibility` of their area are dropped.
    """
    kind = scan_kind(pixels)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6175]))
    h, w = pixels.shape[:2]
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    ids = np.asarray(class_ids, np.int64).reshape(-1)
    keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    boxes, ids = boxes[keep], ids[keep]

    squeeze = pixels.ndim == 2
    image = pixels[:, :, None] if squeeze else pixels
    geo = _geometric(config, air_fill(image))
    geo.set_random_seed(int(rng.integers(2**31)))
    out = geo(image=image, bboxes=boxes, class_ids=ids)
    image = np.ascontiguousarray(out["image"])
    if image.ndim == 2:  # some OpenCV paths drop a single channel
        image = image[:, :, None]
    new_boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
    new_ids = np.asarray(out["class_ids"], np.int64).reshape(-1)

    gain = 1.0
    if rng.random() < config.p_gain:
        lo, hi = config.darkness_gain if kind == "rgb" else config.log_att_gain
        gain = float(rng.uniform(lo, hi))
    noise = 0.0
    if rng.random() < config.p_noise:
        lo, hi = config.noise_darkness if kind == "rgb" else config.noise_at_air
        noise = float(rng.uniform(lo, hi))
    if gain != 1.0 or noise > 0.0:
        image = transmission_gain_noise(image, rng, gain=gain, noise=noise, kind=kind)
    if squeeze:
        image = image[:, :, 0]
    return image, new_boxes, new_ids
