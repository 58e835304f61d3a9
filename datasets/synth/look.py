"""What a dataset's scanner and its export chain add to a scan beyond the palette: the scanner look.

The palette (vision.colour) maps (attenuation, Z_eff) to colour. Real scans also carry the scanner's
quantum noise (the thin low-energy layer catches fewer quanta than the rear one, so Z_eff is noisy), its
image processing (material classification on a smoothed ratio image, edge enhancement, an air
threshold), how the scans were captured and the dataset's file format (SIXray and OPIXray are JPEGs with
4:2:0 chroma; their quantisation tables read quality 95, 75 for a few). `ScannerLook` holds those few
numbers per palette; `bench/realism.py` measures how close each look brings synthetic scans to the real
ones, and the numbers below were calibrated with it (docs/realism.md).

Two noise levels: the raw counts (what a dual-energy model reads) carry the detector's own quantum noise
at `raw_dose`, a modern scanner's count; the displayed image carries far more — the datasets' images are
grainy and their hue is noisy — so `display` adds noise equivalent to `dose_low` / `dose_high` effective
quanta per detector pixel before colouring. Those two numbers stand for everything between the detector
and the saved image (electronic noise, the display's amplification, capture) and were fitted, not derived.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import cv2
import numpy as np

from vision.colour import (
    DEFAULT_ZEFF_KNOTS,
    PALETTES,
    RAW_AIR_LEVEL,
    RAW_DARK_LEVEL,
    raw_to_log_attenuation,
    render_false_colour_from_log_attenuation,
    render_grey,
    ZeffKnots,
)
from vision.decode import encode_jpeg

if TYPE_CHECKING:  # physics imports xraydb: load it only when a scan is rendered
    from datasets.synth.physics import ScannerModel


@dataclass(frozen=True)
class ScannerLook:
    """One scanner's noise, display processing and file format.

    raw_dose: quanta per air pixel and channel of the raw counts (their quantum noise).
    dose_low / dose_high: effective quanta per air detector pixel in each channel of the displayed image:
        noise is added to the transmission until it matches this dose (0 = none beyond the raw's).
    blur_px: Gaussian σ of focal-spot and scintillator blur, in detector pixels.
    detector_px: display pixels per detector pixel along the belt (image x). Datasets show scans magnified
        from the line array's pitch, so quantum noise comes in blotches of that size, not per display pixel.
    detector_px_y: the same across the belt (image y), where the line array's pitch sets it, while along
        the belt the belt's speed and the line period do: the two differ (0 = detector_px, square). The
        datasets' noise is correlated unequally along their two axes (`bench/realism.py`, noise lag-1).
    zeff_smooth_px: σ of the material-map smoothing before colouring (`vision.colour.smooth_zeff`).
    sharpen_amount / sharpen_sigma_px: unsharp-mask edge enhancement of the display (0 = none).
    jpeg_quality: re-encode as the dataset stores its scans (0 = lossless, as PNG datasets).
    white_background_p: share of scans whose display gain puts air at white instead of the palette's
        background (10 of the 47 SIXray samples are on white).
    air_log_att: the display's air threshold: pixels whose mean log-attenuation is below it show as
        air, ramping back to their value over the next air_log_att (SIXray's backgrounds are clean
        while its bags are noisy; 0 = off, PIDray keeps its speckle).
    capture_noise: σ (8-bit grey levels) of noise added to the displayed image before it is saved: SIXray's
        scans are grabbed from the operator's screen, and their flat background is not flat.
    """

    raw_dose: float = 2e4
    dose_low: float = 0.0
    dose_high: float = 0.0
    blur_px: float = 0.7
    detector_px: float = 1.0
    detector_px_y: float = 0.0
    zeff_smooth_px: float = 0.0
    sharpen_amount: float = 0.0
    sharpen_sigma_px: float = 1.0
    jpeg_quality: int = 0
    white_background_p: float = 0.0
    air_log_att: float = 0.0
    capture_noise: float = 0.0

    def __post_init__(self) -> None:
        if self.raw_dose <= 0 or min(self.dose_low, self.dose_high) < 0:
            raise ValueError("raw_dose must be > 0 and the display doses ≥ 0")
        if self.blur_px < 0 or self.zeff_smooth_px < 0:
            raise ValueError("blur_px and zeff_smooth_px must be ≥ 0")
        if self.detector_px < 1.0 or not (self.detector_px_y == 0.0 or self.detector_px_y >= 1.0):
            raise ValueError(f"detector_px must be ≥ 1 and detector_px_y 0 or ≥ 1, got {self.detector_px}, "
                             f"{self.detector_px_y}")
        if not 0 <= self.jpeg_quality <= 100 or not 0.0 <= self.white_background_p <= 1.0:
            raise ValueError("jpeg_quality must be in 0–100 and white_background_p in [0, 1]")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def detector_grid(self, width: int, height: int, *, least: int = 2) -> tuple[int, int]:
        """(width, height) of the detector grid under a display of width × height pixels (cv2 order)."""
        across = self.detector_px_y or self.detector_px
        return max(least, round(width / self.detector_px)), max(least, round(height / across))


#: The look of each palette's scanner, calibrated with bench/realism.py against ../shared/xray-real.
LOOKS: dict[str, ScannerLook] = {
    # SIXray: clean air, grainy bags with smooth hue, crisp edges; 10 of the 47 samples on white. JPEG
    # quality 90: the files' tables say 95 (75 for 7), but their 8×8 blockiness (1.18) needs 85–90 here.
    # Its grain is coarser along x than along y (lag-1 correlation 0.78 / 0.60, bench/realism.py): detector
    # pitch 1.7 display px along x, 1.25 along y (1.5 square gave 0.64 / 0.69).
    "sixray": ScannerLook(dose_low=400.0, dose_high=1000.0, blur_px=0.5, detector_px=1.7, detector_px_y=1.25,
                          zeff_smooth_px=2.0,
                          sharpen_amount=2.5, sharpen_sigma_px=1.0, jpeg_quality=90, white_background_p=0.2,
                          air_log_att=0.1, capture_noise=1.5),
    # PIDray: PNG; per-pixel noise everywhere, air included (speckled white background), unsmoothed hue.
    "pidray": ScannerLook(dose_low=120.0, dose_high=300.0, blur_px=0.5),
    # Grey (GDXray-like single energy): no real grey scans to calibrate against; the physics defaults.
    "grey": ScannerLook(),
}


def scan(basis_cm: np.ndarray, look: ScannerLook, rng: np.random.Generator, scanner: ScannerModel) -> np.ndarray:
    """Basis thicknesses H×W×2 → raw counts H×W×2 uint16 as the dataset's display grid holds them.

    With detector_px > 1 the detector integrates the scene over its coarser pitch: each detector pixel
    counts the quanta of the rays it collects, i.e. reads the area average of their *transmission* (a 1-px
    wire transmits as much beside its neighbours as alone; averaging thicknesses first, then exp, would
    darken every sub-pixel detail and shift its Z_eff). It adds its noise there, and the display
    interpolates it up. The counts carry quantum noise at `raw_dose`; the display's extra noise is added
    by `display`.
    """
    from datasets.synth.physics import lookup_log_attenuation, render_raw, render_raw_from_transmission

    h, w = basis_cm.shape[:2]
    dose = look.raw_dose
    if look.detector_px <= 1.0 and (look.detector_px_y or 1.0) <= 1.0:
        return render_raw(basis_cm, rng=rng, dose=dose, blur_px=look.blur_px, scanner=scanner)
    small = look.detector_grid(w, h, least=8)
    transmission = cv2.exp(-lookup_log_attenuation(basis_cm, scanner=scanner))
    coarse = cv2.resize(transmission, small, interpolation=cv2.INTER_AREA)
    raw = render_raw_from_transmission(coarse, rng=rng, dose=dose, blur_px=look.blur_px)
    up = cv2.resize(raw.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(up + 0.5, 0, 65535).astype(np.uint16)


#: Long side (px) of the scans the looks were calibrated on (bench/realism.py renders them this long) and
#: the finest grid a scan is rendered on: `render` makes a smaller scan on this grid and shrinks it.
LOOK_REFERENCE_PX = 640


def render(
    basis_cm: np.ndarray, palette: str, look: ScannerLook, rng: np.random.Generator, scanner: ScannerModel
) -> tuple[np.ndarray, np.ndarray]:
    """Basis thicknesses H×W×2 → (raw counts H×W×2 uint16, the displayed scan): `scan`, then `display`.

    A look's noise, blur, sharpening and JPEG blocks are sized in pixels of a scan LOOK_REFERENCE_PX
    long. A smaller scan is that scan shrunk (as the letterbox shrinks a lane's scan: area average), so it
    is rendered on the reference grid (the basis interpolated up) and shrunk: each pixel pools the quanta
    of the reference pixels it covers and the display's grain averages down, instead of every small pixel
    carrying a full-size pixel's noise (twice the real scans' fine detail at 256 px, bench/realism.py).
    """
    h, w = basis_cm.shape[:2]
    up = LOOK_REFERENCE_PX / max(h, w)
    if up > 1:
        basis_cm = cv2.resize(basis_cm, (round(w * up), round(h * up)), interpolation=cv2.INTER_LINEAR)
    from datasets.synth.physics import zeff_calibration

    raw = scan(basis_cm, look, rng, scanner)
    # Coloured by this scanner's own Z_eff calibration (its spectrum's ratios), as a vendor's display is.
    image = display(raw, palette, look, rng, zeff_knots=zeff_calibration(scanner))
    if up > 1:
        raw, image = (cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA) for a in (raw, image))
    return raw, image


def look_for(palette: str) -> ScannerLook:
    """The default look of a palette's scanner."""
    try:
        return LOOKS[palette]
    except KeyError:
        raise KeyError(f"no scanner look for palette {palette!r}; known: {', '.join(LOOKS)}") from None


def sharpen(image: np.ndarray, amount: float, sigma_px: float) -> np.ndarray:
    """Unsharp mask, image + amount·(image − blur(image)), on uint8 grey or RGB."""
    if amount <= 0:
        return image
    img = image.astype(np.float32)
    blurred = cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REPLICATE)
    # (1 + amount)·image − amount·blurred, rounded and saturated to 0–255 in one pass.
    return cv2.addWeighted(img, 1.0 + amount, blurred, -amount, 0.0, dtype=cv2.CV_8U)


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode as baseline JPEG (4:2:0 chroma for colour, as the datasets' files) and decode again."""
    if quality <= 0:
        return image
    buf = np.frombuffer(encode_jpeg(image, quality=quality), np.uint8)
    if image.ndim == 3:
        return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def display_noise(raw: np.ndarray, look: ScannerLook, rng: np.random.Generator) -> np.ndarray:
    """Raw counts with the display's extra noise (H×W×2 uint16 → same): Gaussian noise on each channel's
    transmission T of variance T·(1/dose − 1/raw_dose), i.e. what a detector at `dose_low` / `dose_high`
    quanta would have read, drawn on the detector grid (blotches of detector_px) and interpolated up."""
    if look.dose_low <= 0 and look.dose_high <= 0:
        return raw
    h, w = raw.shape[:2]
    span = RAW_AIR_LEVEL - RAW_DARK_LEVEL
    extra = np.array([max(0.0, 1.0 / d - 1.0 / look.raw_dose) if d > 0 else 0.0
                      for d in (look.dose_low, look.dose_high)], np.float32)
    small = look.detector_grid(w, h)
    noise = rng.standard_normal((small[1], small[0], 2), dtype=np.float32)
    if small != (w, h):
        noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
    # In counts c = span·T above the dark level: σ = span·sqrt(T·extra) = sqrt(c·span·extra).
    counts = np.maximum(raw.astype(np.float32) - np.float32(RAW_DARK_LEVEL), np.float32(0.0))
    sigma = cv2.sqrt(counts * (extra * np.float32(span)))
    noisy = cv2.add(counts, cv2.multiply(sigma, noise))
    noisy += np.float32(RAW_DARK_LEVEL + 0.5)
    return np.clip(noisy, 0, 65535, out=noisy).astype(np.uint16)


def display(raw: np.ndarray, palette: str, look: ScannerLook, rng: np.random.Generator, *,
            zeff_knots: ZeffKnots = DEFAULT_ZEFF_KNOTS) -> np.ndarray:
    """Raw dual-energy counts (H×W×2 uint16) → the scan as the dataset holds it: uint8 RGB, or grey.

    zeff_knots: the scanner's Z_eff calibration (`physics.zeff_calibration`; the default is the 150 kVp one).

    The display's noise, the palette (with the air threshold and material-map smoothing), then edge
    enhancement, capture noise and the file format. `rng` draws the per-scan choices (background, capture noise), so a bag stays a
    pure function of its seed.
    """
    white = rng.random() < look.white_background_p
    raw = display_noise(raw, look, rng)
    if palette == "grey":
        image = render_grey(raw, channel="high")
    else:
        p = PALETTES[palette]
        if white:
            p = replace(p, name=f"{p.name}-white", background_value=1.0)
        log_att = raw_to_log_attenuation(raw)
        if look.air_log_att > 0:
            # Air is found on a smoothed image (a noise spike is not an object), then faded out.
            mean = cv2.GaussianBlur(0.5 * (log_att[..., 0] + log_att[..., 1]), (0, 0), 1.5)
            keep = np.clip((mean - np.float32(look.air_log_att)) / np.float32(look.air_log_att), 0.0, 1.0)
            log_att *= keep[..., None]
        image = render_false_colour_from_log_attenuation(log_att, palette=p, zeff_knots=zeff_knots,
                                                         zeff_smooth_px=look.zeff_smooth_px)
    image = sharpen(image, look.sharpen_amount, look.sharpen_sigma_px)
    if look.capture_noise > 0:
        noise = rng.standard_normal(image.shape[:2], dtype=np.float32)
        noise *= np.float32(look.capture_noise)
        if image.ndim == 3:
            noise = cv2.merge([noise, noise, noise])  # one grey-level draw per pixel, on every channel
        image = cv2.add(image, noise, dtype=cv2.CV_8U)  # rounds and saturates to 0–255
    return jpeg_round_trip(image, look.jpeg_quality)
