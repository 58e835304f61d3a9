"""Threat Image Projection (TIP): contraband projected into existing scans, in the transmission domain.

An item (a contraband object from `datasets.synth.contraband`, as basis thicknesses) multiplies the scan's
transmission, i.e. adds to its log-attenuation (DESIGN.md §4); pixels are never pasted.
- Raw dual-energy scans (synthetic or real 16-bit): raw' = dark + (raw − dark) · exp(−ΔL), per channel, where
  ΔL is what the item adds behind the bag's own material (`added_behind`): the scan's pixels and the item
  read as basis thicknesses, which add exactly, and looked up together. A polychromatic beam hardens in
  the bag, so an item adds less log-attenuation there than alone (10 cm of polyethylene behind 10 cm of
  it: 5 % less in the low channel; 2 cm of ivory behind 1 cm of steel: half); adding the item's own
  log-attenuation (DESIGN §4's composition, exact for one energy) made items behind dense clutter darker,
  easier to see, than a scanner shows them. Where the scan cannot be read as basis thicknesses (air; behind
  thick metal, where its low channel holds a few quanta) the item adds its own log-attenuation.
- False-colour scans (real SIXray/PIDray images): the palette's inverse gives pseudo log-attenuation, what
  the item adds behind it is added (as for raw scans, with the noise measured on the scan), and the same
  palette renders it again (`vision.colour.project_log_attenuation`).
- Grey single-energy scans: the item's high-energy log-attenuation is added to the scan's, read through the
  project's one grey scale (`vision.colour.render_grey`: linear in log-attenuation, black at 8), and the
  sum is rendered on that scale again: an item projected into a synthetic grey bag looks as it would had
  it been rendered there.

Placement: only inside the bag, never in air. The bag region of a scan is where it attenuates (closed and
filled); the item's whole footprint must fall inside it, and at least half of it where the scan is
penetrated (an item over unpenetrated metal would change nothing and label what the scan does not show).
The returned box is the bounding box of the item's footprint (its visible extent) and the mask is that
footprint.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from datasets.synth.contraband import build_contraband
from datasets.synth.items import BasisAccumulator, place
from datasets.synth.look import ScannerLook
from datasets.synth.physics import (
    ScannerModel,
    basis_from_log_attenuation,
    build_scanner,
    lookup_jacobian,
    lookup_log_attenuation,
)
from vision.colour import (
    RAW_AIR_LEVEL,
    RAW_DARK_LEVEL,
    false_colour_to_pseudo_log_attenuation,
    grey_from_log_attenuation,
    grey_to_log_attenuation,
    project_log_attenuation,
    raw_to_log_attenuation,
)

#: A pixel belongs to the bag when its mean log-attenuation exceeds this (air reads ≈ 0 ± noise; the
#: thinnest bag fabric reads about 0.05).
BAG_LOG_ATT_THRESHOLD = 0.04

#: A cabin bag's long side (cm); used to guess a real scan's pixel size from the bag's extent.
TYPICAL_BAG_LENGTH_CM = 55.0

#: Mean log-attenuation beyond which a scan is (nearly) unpenetrated: the palettes' value falls to ~5 % of
#: the background at 7 and to black at 8, and a raw pixel keeps a few tens of quanta. An item projected
#: there changes (almost) nothing, so its label would mark what the scan does not show.
UNPENETRATED_LOG_ATT = 7.0
#: Share of an item's footprint that must lie on penetrated pixels (partial occlusion stays realistic).
MIN_VISIBLE_FRACTION = 0.5

#: Quanta per air pixel of a raw scan TIP projects into, when its air is too small to measure them
#: (`estimate_raw_dose`): the synthesiser's raw dose.
RAW_TIP_DOSE = ScannerLook().raw_dose
#: Detector blur (Gaussian σ, pixels) given to projected items: the synthesiser's own.
TIP_BLUR_PX = ScannerLook().blur_px
#: Air pixels a scan needs for its noise to be measured on them.
MIN_AIR_PIXELS = 400


class PlacementError(RuntimeError):
    """No place inside the bag fits the item (the bag is too small or the scan is empty)."""


@dataclass(frozen=True)
class TipItem:
    """A contraband item ready to project: `basis_cm` h×w×2 (PE cm, Al cm), `mask` h×w bool footprint."""

    class_name: str
    name: str
    material: str
    basis_cm: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class Projection:
    """Where an item went: `box_xyxy` (visible extent, 0-based pixels, x2/y2 exclusive) and the full-size
    `mask` (H×W bool) of its footprint."""

    class_name: str
    box_xyxy: tuple[int, int, int, int]
    mask: np.ndarray
    name: str
    material: str


def make_tip_item(rng: np.random.Generator, class_name: str, pixel_mm: float) -> TipItem:
    """One contraband item of `class_name`, randomly rotated, at `pixel_mm` per pixel."""
    item = build_contraband(rng, class_name, pixel_mm)
    acc = BasisAccumulator((1, 1))
    planes = acc.planes(item)
    h, w = item.shape_hw
    side = int(np.ceil(np.hypot(h, w))) + 4
    placed = place(item.name, planes, float(rng.uniform(0, 360)), (side / 2, side / 2), (side, side), flip=bool(rng.random() < 0.5))
    if placed is None:  # cannot happen: the canvas holds the item at any angle
        raise RuntimeError(f"{class_name}: empty item")
    return TipItem(class_name, item.name, item.main_material, placed.basis_cm, placed.mask())


def bag_region(log_att_mean: np.ndarray) -> np.ndarray:
    """H×W bool: inside the bag. Attenuating pixels, closed across small gaps, holes filled, then eroded so
    an item placed inside keeps off the bag's outline."""
    solid = (log_att_mean > BAG_LOG_ATT_THRESHOLD).astype(np.uint8)
    k = max(3, int(round(min(solid.shape) / 40)) | 1)
    solid = cv2.morphologyEx(solid, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    solid = cv2.morphologyEx(solid, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    # Fill holes: whatever the border's flood fill does not reach is inside.
    flood = np.pad(solid, 1)
    mask = np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8)
    cv2.floodFill(flood, mask, (0, 0), 2)
    filled = (flood[1:-1, 1:-1] != 2).astype(np.uint8)
    filled = cv2.erode(filled, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return filled.astype(bool)


def estimate_pixel_mm(region: np.ndarray) -> float:
    """A real scan's pixel size (mm), guessed from its bag's long side being a typical cabin bag's."""
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return 1.2
    long_px = max(int(xs.max() - xs.min()), int(ys.max() - ys.min()), 1)
    return float(np.clip(TYPICAL_BAG_LENGTH_CM * 10.0 / long_px, 0.6, 4.0))


def choose_offset(rng: np.random.Generator, region: np.ndarray, item_mask: np.ndarray, *, tries: int = 200,
                  visible: np.ndarray | None = None) -> tuple[int, int]:
    """Top-left (y, x) where the item's whole footprint lies inside `region` and, when `visible` (H×W bool,
    penetrated pixels) is given, at least MIN_VISIBLE_FRACTION of it on visible pixels; PlacementError if none."""
    H, W = region.shape
    h, w = item_mask.shape
    if h > H or w > W:
        raise PlacementError(f"item {w}×{h} px is larger than the scan {W}×{H} px")
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        raise PlacementError("the scan has no bag region (it is all air)")
    for _ in range(tries):
        k = int(rng.integers(ys.size))  # centre on a bag pixel, so few tries are wasted in air
        y0 = int(np.clip(ys[k] - h // 2, 0, H - h))
        x0 = int(np.clip(xs[k] - w // 2, 0, W - w))
        if np.any(item_mask & ~region[y0 : y0 + h, x0 : x0 + w]):
            continue
        if visible is not None and np.count_nonzero(item_mask & visible[y0 : y0 + h, x0 : x0 + w]) < (
            MIN_VISIBLE_FRACTION * np.count_nonzero(item_mask)
        ):
            continue  # mostly over unpenetrated metal: the item would not show
        return y0, x0
    raise PlacementError(f"no place inside the bag fits a {w}×{h} px item after {tries} tries")


def _full_mask(item: TipItem, offset_yx: tuple[int, int], shape_hw: tuple[int, int]) -> np.ndarray:
    full = np.zeros(shape_hw, bool)
    y0, x0 = offset_yx
    h, w = item.mask.shape
    full[y0 : y0 + h, x0 : x0 + w] = item.mask
    return full


def item_log_attenuation(item: TipItem, offset_yx: tuple[int, int], shape_hw: tuple[int, int], *,
                         scanner: ScannerModel | None = None, blur_px: float = TIP_BLUR_PX,
                         behind: np.ndarray | None = None,
                         behind_dose: float | tuple[float, float] | None = RAW_TIP_DOSE) -> np.ndarray:
    """H×W×2 float32 log-attenuation (low, high) the item adds, placed at `offset_yx`, as the scanner sees it:
    alone, or with `behind` (the scan's log-attenuation H×W×2, its noise that of `behind_dose` quanta per
    air pixel, or measured on it when None) what it adds behind that scan's own material (`added_behind`); its transmission blurred by the detector (Gaussian σ `blur_px`; 0 = sharp), so its
    edges are as soft as the scan's own instead of a tell-tale sharp outline. The blur reaches ~3σ past the
    footprint; beyond it the log-attenuation is exactly 0 (the scan's pixels stay as they were)."""
    scanner = scanner or build_scanner()
    basis = np.zeros((*shape_hw, 2), np.float32)
    y0, x0 = offset_yx
    h, w = item.mask.shape
    basis[y0 : y0 + h, x0 : x0 + w] = item.basis_cm
    log_att = (lookup_log_attenuation(basis, scanner=scanner) if behind is None
               else added_behind(behind, basis, scanner=scanner, dose=behind_dose))
    if blur_px <= 0:
        return log_att
    transmission = cv2.GaussianBlur(cv2.exp(-log_att), (0, 0), sigmaX=blur_px, sigmaY=blur_px,
                                    borderType=cv2.BORDER_REPLICATE)
    log_att = -np.log(np.clip(transmission, np.float32(1e-30), np.float32(1.0)))
    log_att[log_att < np.float32(1e-6)] = 0.0  # the kernel's float round-off far from the item
    return log_att


#: Gaussian σ (px) of the smoothing of a scan's log-attenuation before it is read as basis thicknesses: the
#: hardening varies slowly with the material in the way, and the inverse table amplifies quantum noise.
HARDENING_SMOOTH_PX = 2.0
#: Over the bag's thinnest parts the beam hardens too little to matter: the correction ramps in from the
#: bag's threshold over this much more mean log-attenuation (and none in air, where noise alone would be read).
HARDENING_AIR_RAMP = 0.1
#: The noise the basis inverse carries into ΔL, as a share of a pixel's own noise in the scan: the
#: correction is whole below the first and none above the second (behind thick metal the inverse is
#: ill-conditioned and the low channel holds few quanta: read there, the scan's noise would come out as
#: blotches on the item, so it adds its own attenuation as it did without the correction).
HARDENING_NOISE_SHARE = (0.1, 0.25)
#: How far (log-attenuation) the table's value at the reading may miss the scan's: the correction is whole
#: below the first, none above the second.
HARDENING_RESIDUAL = (0.05, 0.1)
#: Least distance (cm, in basis thickness) at which `hardening_weight` probes the reading's spread.
HARDENING_PROBE_CM = 1.0


def added_behind(scan_log_att: np.ndarray, item_basis_cm: np.ndarray, *, scanner: ScannerModel,
                 dose: float | tuple[float, float] | None = RAW_TIP_DOSE) -> np.ndarray:
    """The log-attenuation (H×W×2, low, high) an item of basis thicknesses `item_basis_cm` (H×W×2, 0 off
    it) adds to a scan of log-attenuation `scan_log_att` (H×W×2: a raw scan's, or a false-colour scan's
    pseudo log-attenuation) behind the scan's own material. Over the item, the scan (smoothed,
    `HARDENING_SMOOTH_PX`) is read as basis thicknesses (`physics.basis_from_log_attenuation`), the item's
    are added, and the sum looked up: ΔL = L(scan + item) − L(scan), never negative; 0 off the item. Where
    the scan cannot be read so (`hardening_weight`: air and the thinnest bag, where there is nothing to
    harden the beam; behind thick metal, where its noise would be; where the table cannot give the scan
    back, `HARDENING_RESIDUAL`, as beside black pixels) the item adds its own log-attenuation, blended over a
    ramp. dose: the scan's quanta per air pixel (low, high, or one for both): its noise per
    pixel is then exp(L)/dose; None: measured on the scan (`local_noise_variance`), as for a false-colour
    scan, whose noise is the palette's, the display's and the file's, not only quanta."""
    out = np.zeros(item_basis_cm.shape, np.float32)
    footprint = (item_basis_cm != 0).any(axis=2)
    if not footprint.any():
        return out
    rows, cols = np.flatnonzero(footprint.any(axis=1)), np.flatnonzero(footprint.any(axis=0))
    pad = int(np.ceil(3 * HARDENING_SMOOTH_PX))
    y0, y1 = max(0, rows[0] - pad), min(scan_log_att.shape[0], rows[-1] + 1 + pad)
    x0, x1 = max(0, cols[0] - pad), min(scan_log_att.shape[1], cols[-1] + 1 + pad)
    crop = np.ascontiguousarray(scan_log_att[y0:y1, x0:x1], dtype=np.float32)
    scan_l = cv2.GaussianBlur(crop, (0, 0), sigmaX=HARDENING_SMOOTH_PX, sigmaY=HARDENING_SMOOTH_PX,
                              borderType=cv2.BORDER_REPLICATE)
    item = item_basis_cm[y0:y1, x0:x1]
    # The smoothed scan varies slowly: it is read as basis thicknesses, and the reading weighed, on every
    # second pixel (a quarter of the work), then brought back to the crop's grid.
    h, w = crop.shape[:2]
    small = (max(1, (w + 1) // 2), max(1, (h + 1) // 2))
    scan_small = np.ascontiguousarray(scan_l[::2, ::2])
    if dose is None:  # measured on the full grid (the fine detail is the noise), read on the half one
        pixel_var = np.ascontiguousarray(local_noise_variance(crop)[::2, ::2])
    else:
        dose_lh = np.broadcast_to(np.asarray(dose, np.float64), (2,))
        pixel_var = np.exp(np.clip(scan_small.astype(np.float64), 0.0, 30.0)) / dose_lh
    bag_small = basis_from_log_attenuation(np.maximum(scan_small, np.float32(0.0)), scanner=scanner)
    weight_small = hardening_weight(scan_small, bag_small, cv2.resize(item, small, interpolation=cv2.INTER_AREA),
                                    scanner=scanner, pixel_var=pixel_var)
    # A reading the table cannot give back is no reading: black (unpenetrated) pixels read L_low < L_high,
    # which no material gives, and smoothed into their neighbours they send the inverse to the table's flat
    # edge, where nothing more attenuates.
    residual = np.abs(lookup_log_attenuation(bag_small, scanner=scanner) - scan_small).max(axis=2)
    full, none = HARDENING_RESIDUAL
    weight_small *= np.clip((none - residual) / np.float32(none - full), 0.0, 1.0)
    bag = cv2.resize(bag_small, (w, h), interpolation=cv2.INTER_LINEAR)
    weight = cv2.resize(weight_small, (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
    alone = lookup_log_attenuation(item, scanner=scanner)
    hardened = lookup_log_attenuation(bag + item, scanner=scanner) - lookup_log_attenuation(bag, scanner=scanner)
    added = weight * hardened + (np.float32(1.0) - weight) * alone
    out[y0:y1, x0:x1] = np.where(footprint[y0:y1, x0:x1, None], np.maximum(added, np.float32(0.0)), np.float32(0.0))
    return out


#: Least noise variance `local_noise_variance` gives (σ 0.01: about what 8-bit lightness resolves of a
#: pseudo log-attenuation; a flat, noise-free rendering reads 0).
MIN_NOISE_VARIANCE = 1e-4
#: Window (px) over which `local_noise_variance` averages a scan's fine detail.
NOISE_WINDOW_PX = 7


def local_noise_variance(log_att: np.ndarray) -> np.ndarray:
    """Per-pixel noise variance (H×W×2, float64) of a scan's log-attenuation, measured: the mean square of its
    fine detail (the scan minus its σ 1 px blur g) over a `NOISE_WINDOW_PX` window, scaled to a pixel's
    variance: white noise keeps 1 − 2·g(0) + Σg² = 1 − 1/π + 1/(4π) ≈ 0.76 of its power there. Edges count
    as noise too, which only makes the reading more cautious there."""
    detail = log_att - cv2.GaussianBlur(log_att, (0, 0), sigmaX=1.0, sigmaY=1.0, borderType=cv2.BORDER_REPLICATE)
    power = cv2.blur(detail * detail, (NOISE_WINDOW_PX, NOISE_WINDOW_PX), borderType=cv2.BORDER_REPLICATE)
    kept = 1.0 - 1.0 / np.pi + 1.0 / (4.0 * np.pi)  # E[(n − g*n)²]/σ², g the Gaussian of σ 1 px
    return np.maximum(power.astype(np.float64) / kept, MIN_NOISE_VARIANCE)


def hardening_weight(scan_l: np.ndarray, bag_cm: np.ndarray, item_cm: np.ndarray, *, scanner: ScannerModel,
                     pixel_var: np.ndarray) -> np.ndarray:
    """H×W float32 in [0, 1]: how much of `added_behind`'s correction to trust, from the smoothed scan
    `scan_l` (H×W×2) read as basis `bag_cm` with the item `item_cm` on it. 0 in air (ramping in over
    `HARDENING_AIR_RAMP` past the bag's threshold); 0 where the noise the reading carries into ΔL is over
    the second of `HARDENING_NOISE_SHARE` of a pixel's own noise, 1 below the first. That noise: the scan's
    variance per pixel `pixel_var` (H×W×2), reduced by the smoothing (Σw² = 1/(4πσ²)), through the inverse
    Jacobian J(bag)⁻¹ into a covariance of basis thicknesses; ΔL is then evaluated one standard deviation
    either side along its principal axis (not linearised: behind thick metal the deviation runs to tens of
    cm, across the table's clamps; at least `HARDENING_PROBE_CM`, scaled back)."""
    mean_l = (scan_l[..., 0] + scan_l[..., 1]) * np.float32(0.5)
    air = np.clip((mean_l - np.float32(BAG_LOG_ATT_THRESHOLD)) / np.float32(HARDENING_AIR_RAMP), 0.0, 1.0)
    smooth_var = pixel_var / (4.0 * np.pi * HARDENING_SMOOTH_PX**2)
    j = lookup_jacobian(bag_cm, scanner=scanner).astype(np.float64)
    a, b, c, e = j[..., 0], j[..., 1], j[..., 2], j[..., 3]
    det = a * e - b * c
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    # J⁻¹ = [[e, −b], [−c, a]] / det; basis covariance C = J⁻¹ diag(smooth_var) J⁻ᵀ.
    i00, i01, i10, i11 = e / det, -b / det, -c / det, a / det
    c00 = i00**2 * smooth_var[..., 0] + i01**2 * smooth_var[..., 1]
    c11 = i10**2 * smooth_var[..., 0] + i11**2 * smooth_var[..., 1]
    c01 = i00 * i10 * smooth_var[..., 0] + i01 * i11 * smooth_var[..., 1]
    half_gap = 0.5 * (c00 - c11)
    top = 0.5 * (c00 + c11) + np.sqrt(half_gap**2 + c01**2)  # the larger eigenvalue
    axis = np.stack([c01, top - c00], axis=-1)
    flat = np.hypot(axis[..., 0], axis[..., 1]) < 1e-30  # C diagonal: the axis of the larger variance
    axis[flat] = np.where((c00 >= c11)[flat, None], [1.0, 0.0], [0.0, 1.0])
    axis /= np.hypot(axis[..., 0], axis[..., 1])[..., None]
    sd = np.sqrt(np.maximum(top, 0.0))
    # Probed at least HARDENING_PROBE_CM out (the table's lookups move in 1/32 of a cell, finer steps read as
    # jumps or nothing) and scaled back linearly: below that the reading is linear anyway.
    probe = np.maximum(sd, HARDENING_PROBE_CM)
    step = (axis * probe[..., None]).astype(np.float32)
    spread = []
    for sign in (1.0, -1.0):
        bag = bag_cm + np.float32(sign) * step
        spread.append(lookup_log_attenuation(bag + item_cm, scanner=scanner) - lookup_log_attenuation(bag, scanner=scanner))
    noise = 0.5 * np.abs(spread[0] - spread[1]).astype(np.float64) * (sd / probe)[..., None]
    share = np.max(noise / np.sqrt(pixel_var), axis=-1)
    full, none = HARDENING_NOISE_SHARE
    trust = np.clip((none - share) / (none - full), 0.0, 1.0)
    return (air * trust).astype(np.float32)


def project_into_raw(raw: np.ndarray, item: TipItem, offset_yx: tuple[int, int], *, scanner: ScannerModel | None = None,
                     rng: np.random.Generator | None = None, dose: float | tuple[float, float] = RAW_TIP_DOSE,
                     blur_px: float = TIP_BLUR_PX, scan_log_att: np.ndarray | None = None) -> np.ndarray:
    """raw H×W×2 uint16 (low, high) → the same scan with the item's transmission multiplied in.

    rng: when given, the quantum noise the item leaves is added. Scaling noisy counts by T scales their
    variance by T², but the quanta that get through are Poisson with variance ∝ T: the missing part,
    variance gain·signal·(1 − T) in raw counts (binomial thinning of the quanta), is drawn here, with
    gain = (RAW_AIR_LEVEL − RAW_DARK_LEVEL)/dose and `dose` the quanta per air pixel the scan was taken
    at (per channel, or one number for both). Without it a projected object is smoother than its bag.
    blur_px: the detector blur the item's transmission gets (`item_log_attenuation`), of what it adds behind
    the scan's own material (`added_behind`).
    scan_log_att: `raw_to_log_attenuation(raw)`, when the caller has it.
    """
    behind = raw_to_log_attenuation(raw) if scan_log_att is None else scan_log_att
    extra = item_log_attenuation(item, offset_yx, raw.shape[:2], scanner=scanner, blur_px=blur_px,
                                 behind=behind, behind_dose=dose)
    transmission = np.exp(-extra)
    signal = raw.astype(np.float32) - np.float32(RAW_DARK_LEVEL)
    out = signal * transmission
    if rng is not None:
        gain = np.float32(RAW_AIR_LEVEL - RAW_DARK_LEVEL) / np.broadcast_to(np.asarray(dose, np.float32), (2,))
        sigma = np.sqrt(np.maximum(out, 0.0) * gain * (np.float32(1.0) - transmission))
        out += sigma * rng.standard_normal(out.shape, dtype=np.float32)
    out += np.float32(RAW_DARK_LEVEL + 0.5)
    return np.clip(out, 0, 65535).astype(np.uint16)


def project_into_false_colour(rgb: np.ndarray, item: TipItem, offset_yx: tuple[int, int], *, palette: str = "sixray",
                              scanner: ScannerModel | None = None, blur_px: float = TIP_BLUR_PX,
                              scan_log_att: np.ndarray | None = None) -> np.ndarray:
    """A false-colour scan (H×W×3 uint8 RGB in `palette`) with the item projected in: what it adds behind the
    scan's pseudo log-attenuation (`added_behind`, the noise measured on the scan), through the palette
    (`vision.colour.project_log_attenuation`: pixels the item does not reach stay as they were).
    scan_log_att: `false_colour_to_pseudo_log_attenuation(rgb, palette)`, when the caller has it."""
    behind = false_colour_to_pseudo_log_attenuation(rgb, palette) if scan_log_att is None else scan_log_att
    extra = item_log_attenuation(item, offset_yx, rgb.shape[:2], scanner=scanner, blur_px=blur_px, behind=behind,
                                 behind_dose=None)
    return project_log_attenuation(rgb, extra, palette, base=behind)


def project_into_grey(grey: np.ndarray, item: TipItem, offset_yx: tuple[int, int], *, scanner: ScannerModel | None = None,
                      blur_px: float = TIP_BLUR_PX) -> np.ndarray:
    """A grey single-energy scan (H×W uint8/uint16 on `render_grey`'s scale, air white) with the item's
    high-energy log-attenuation added (its transmission multiplied in)."""
    extra = item_log_attenuation(item, offset_yx, grey.shape[:2], scanner=scanner, blur_px=blur_px)[:, :, 1]
    # Only where the item reaches changes: elsewhere the scan keeps its pixels exactly (no re-quantisation).
    changed = extra > 0
    out = grey.copy()
    out[changed] = grey_from_log_attenuation(grey_to_log_attenuation(grey)[changed] + extra[changed], dtype=grey.dtype)
    return out


def estimate_raw_dose(raw: np.ndarray, log_att_mean: np.ndarray | None = None) -> tuple[float, float] | None:
    """Effective quanta per air pixel (low, high) of a raw scan H×W×2 uint16, measured on its air: the counts'
    variance over their level there (photon statistics: variance = gain·signal, dose = span/gain). This is the
    noise a pixel of *this* scan carries, whatever made it: the detector's pitch interpolated up, a scan
    shrunk from a finer grid (both pool or smear quanta), a real scanner's own dose. None when the scan has
    fewer than MIN_AIR_PIXELS of air away from the bag.
    """
    if log_att_mean is None:
        log_att_mean = _scan_log_att_mean(raw, "raw", "sixray")
    air = (log_att_mean < BAG_LOG_ATT_THRESHOLD).astype(np.uint8)
    air = cv2.erode(air, np.ones((7, 7), np.uint8)).astype(bool)  # off the bag's blurred edge
    air &= (raw < 65535).all(axis=2)  # saturated counts carry no noise
    if np.count_nonzero(air) < MIN_AIR_PIXELS:
        return None
    signal = raw[air].astype(np.float64) - RAW_DARK_LEVEL  # N×2
    level = np.median(signal, axis=0)
    sigma = 1.4826 * np.median(np.abs(signal - level), axis=0)  # robust to a stray object in the air
    if np.any(level <= 0) or np.any(sigma <= 0):
        return None
    span = float(RAW_AIR_LEVEL - RAW_DARK_LEVEL)
    low, high = (span * level / sigma**2).tolist()
    return float(low), float(high)


def _scan_log_att(pixels: np.ndarray, kind: str, palette: str) -> np.ndarray | None:
    """A raw or false-colour scan's log-attenuation H×W×2 (pseudo, for false colour); None for grey."""
    if kind == "grey":
        return None
    return raw_to_log_attenuation(pixels) if kind == "raw" else false_colour_to_pseudo_log_attenuation(pixels, palette)


def _scan_log_att_mean(pixels: np.ndarray, kind: str, palette: str, both: np.ndarray | None = None) -> np.ndarray:
    if kind == "grey":
        return grey_to_log_attenuation(pixels)
    both = _scan_log_att(pixels, kind, palette) if both is None else both
    return (both[..., 0] + both[..., 1]) * np.float32(0.5)  # numpy's mean over a last axis of 2 is ~15× slower


def project_random(
    rng: np.random.Generator,
    pixels: np.ndarray,
    *,
    kind: str,
    palette: str = "sixray",
    classes: tuple[str, ...],
    count: int = 1,
    pixel_mm: float | None = None,
    scanner: ScannerModel | None = None,
    raw_dose: float | tuple[float, float] | None = None,
) -> tuple[np.ndarray, list[Projection]]:
    """Project `count` random contraband items of `classes` into a scan, inside its bag.

    pixels: H×W×2 uint16 raw (kind="raw"), H×W×3 uint8 RGB false colour (kind="rgb", with `palette`), or
    H×W grey (kind="grey"). pixel_mm: the scan's pixel size; guessed from the bag's extent when None.
    raw_dose: quanta per air pixel of a raw scan, for the quantum noise a projected item leaves (`project_into_raw`);
    None: measured on the scan's air (`estimate_raw_dose`), RAW_TIP_DOSE when it has too little air.
    Returns the new pixels (same shape and dtype) and one Projection per item placed. An item that does not
    fit is retried smaller-sized with a fresh draw; PlacementError when the scan has no bag at all.
    """
    scanner = scanner or build_scanner()
    scan_l = _scan_log_att(pixels, kind, palette)  # the scan's own: the first item reads it, the next re-read
    log_att_mean = _scan_log_att_mean(pixels, kind, palette, scan_l)
    region = bag_region(log_att_mean)
    # Smoothed, so that noise on a black plate does not make it look penetrated in specks.
    visible = cv2.blur(log_att_mean, (5, 5)) < UNPENETRATED_LOG_ATT
    if not region.any():
        raise PlacementError("the scan has no bag region (it is all air)")
    pmm = pixel_mm or estimate_pixel_mm(region)
    if kind == "raw" and raw_dose is None:
        raw_dose = estimate_raw_dose(pixels, log_att_mean) or RAW_TIP_DOSE
    out = pixels
    done: list[Projection] = []
    for _ in range(count):
        class_name = str(classes[int(rng.integers(len(classes)))])
        for attempt in range(4):
            # A bag too small for this draw: the next attempt makes the item look smaller (coarser pixels).
            item = make_tip_item(rng, class_name, pmm * (1.0 + 0.5 * attempt))
            try:
                offset = choose_offset(rng, region, item.mask, visible=visible)
            except PlacementError:
                continue
            if kind == "raw":
                out = project_into_raw(out, item, offset, scanner=scanner, rng=rng, dose=raw_dose, scan_log_att=scan_l)
            elif kind == "grey":
                out = project_into_grey(out, item, offset, scanner=scanner)
            else:
                out = project_into_false_colour(out, item, offset, palette=palette, scanner=scanner, scan_log_att=scan_l)
            scan_l = None  # `out` has changed
            mask = _full_mask(item, offset, out.shape[:2])
            ys, xs = np.nonzero(mask)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            done.append(Projection(class_name, box, mask, item.name, item.material))
            break
    return out, done
