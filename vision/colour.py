"""False-colour and grey rendering of dual-energy X-ray scans, and the palette's approximate inverse.

A dual-energy scan is H×W×2 uint16 raw counts (low, high): air ≈ `RAW_AIR_LEVEL`, no photons ≈
`RAW_DARK_LEVEL`. From the log-attenuations L_low, L_high (−ln T) the renderer takes
- Z_eff from the ratio R = L_low/L_high, through a scanner's calibration table (`ZeffKnots`, plain
  numbers produced by `datasets.synth.physics.zeff_calibration`; R also falls with thickness, so the
  table has one R→Z_eff row per L_high level);
- brightness from the mean log-attenuation L_b = (L_low + L_high)/2, as scanners show both layers.
A `Palette` turns (L_b, Z_eff) into HSV: hue from Z_eff (orange organics below ~10, green mixed
~10–18, blue metals), value falling from the background's to 0 (unpenetrated = black) as L_b grows,
saturation rising from 0 (air is unsaturated) along the per-class S-vs-V locus measured on real scans.

Palettes were tuned on ../shared/xray-real (OpenCV HSV statistics of every pixel with S > 50):
- "sixray": tuned on the 37 of 47 SIXray images with a light-grey background (RGB ≈ 224–226; the other
  10 are white and paler); organics hue ≈ 30–44°, S ≈ 0.4 at V/V_bg 0.9 rising to 0.75 at 0.7; mixed
  ≈ 110–150°, S rising evenly with darkness; metals a vivid blue ≈ 190–236° saturated (S > 0.9) at any V.
- "pidray": white background; redder organics (hue ≈ 24–30°), greens ≈ 100–120°, slate-blue metals
  (≈ 220°), saturation rising slowly and evenly with darkness for every class (a paler look).
Hue depends on Z_eff only and HSL lightness falls monotonically with L_b for every Z_eff, so the palette
inverts from hue and lightness:
`false_colour_to_pseudo_log_attenuation` maps any false-colour image (real scans included) back to
(L_low, L_high), so Threat Image Projection can add an object's log-attenuation and re-render.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

#: 16-bit raw level of an unobstructed (air) pixel, after gain correction. Below 65535 to leave
#: headroom for noise and for gain drift over the line array.
RAW_AIR_LEVEL: int = 60000
#: Raw level of a pixel that receives no photons (detector offset), above 0 so that noise on dark
#: pixels is not clipped one-sidedly.
RAW_DARK_LEVEL: int = 100

#: Z_eff calibration as plain numbers: rows of (L_high level, ratios L_low/L_high, Z_eff at those
#: ratios), ratios increasing. Produced by `datasets.synth.physics.zeff_calibration`.
ZeffKnots = tuple[tuple[float, tuple[float, ...], tuple[float, ...]], ...]

_REF_ZEFF = (5.44, 6.0, 6.47, 7.42, 8.43, 10.19, 11.0, 11.56, 12.0, 13.0, 14.0, 16.0, 20.0, 22.0, 26.0, 29.0, 30.0)
#: Calibration of the default synthetic scanner (150 kVp W, 3 mm Al, 0.4 mm CsI / 0.5 mm Cu / 3 mm
#: CdWO4); references PE, graphite, PMMA, water, PTFE, NaF, Na, SiO2, Mg, Al, Si, S, Ca, Ti, Fe, Cu, Zn.
#: tests/test_physics.py checks it against a fresh `zeff_calibration()`.
DEFAULT_ZEFF_KNOTS: ZeffKnots = tuple((level, ratios, _REF_ZEFF) for level, ratios in (
    (0.05, (1.1718, 1.1959, 1.2259, 1.2936, 1.3850, 1.5967, 1.7114, 1.8168, 1.8702, 2.0398, 2.2153, 2.5674,
            3.1828, 3.4202, 3.7576, 3.9126, 3.9513)),
    (0.15, (1.1706, 1.1940, 1.2228, 1.2872, 1.3724, 1.5631, 1.6632, 1.7537, 1.7985, 1.9394, 2.0820, 2.3601,
            2.8292, 3.0071, 3.2610, 3.3807, 3.4115)),
    (0.3, (1.1688, 1.1912, 1.2186, 1.2786, 1.3563, 1.5241, 1.6094, 1.6855, 1.7224, 1.8379, 1.9528, 2.1728,
           2.5370, 2.6746, 2.8727, 2.9683, 2.9935)),
    (0.6, (1.1655, 1.1863, 1.2110, 1.2642, 1.3309, 1.4687, 1.5364, 1.5958, 1.6242, 1.7121, 1.7984, 1.9611,
           2.2276, 2.3287, 2.4759, 2.5485, 2.5681)),
    (1.0, (1.1616, 1.1805, 1.2026, 1.2490, 1.3058, 1.4191, 1.4734, 1.5205, 1.5427, 1.6114, 1.6782, 1.8028,
           2.0049, 2.0808, 2.1905, 2.2444, 2.2589)),
    (1.5, (1.1572, 1.1743, 1.1938, 1.2340, 1.2824, 1.3762, 1.4204, 1.4583, 1.4761, 1.5308, 1.5835, 1.6806,
           1.8328, 1.8879, 1.9648, 2.0017, 2.0116)),
    (2.0, (1.1533, 1.1689, 1.1863, 1.2220, 1.2643, 1.3448, 1.3822, 1.4141, 1.4290, 1.4744, 1.5178, 1.5960,
           1.7128, 1.7532, 1.8081, 1.8343, 1.8413)),
    (3.0, (1.1465, 1.1598, 1.1742, 1.2033, 1.2372, 1.3000, 1.3285, 1.3524, 1.3634, 1.3965, 1.4272, 1.4797,
           1.5515, 1.5752, 1.6076, 1.6234, 1.6277)),
    (4.0, (1.1407, 1.1522, 1.1645, 1.1890, 1.2172, 1.2681, 1.2906, 1.3091, 1.3176, 1.3424, 1.3646, 1.4010,
           1.4490, 1.4650, 1.4874, 1.4986, 1.5016)),
    (5.5, (1.1333, 1.1428, 1.1526, 1.1722, 1.1943, 1.2328, 1.2490, 1.2619, 1.2678, 1.2842, 1.2985, 1.3213,
           1.3518, 1.3623, 1.3772, 1.3847, 1.3867)),
    (7.0, (1.1268, 1.1348, 1.1429, 1.1588, 1.1765, 1.2060, 1.2179, 1.2271, 1.2312, 1.2426, 1.2524, 1.2682,
           1.2899, 1.2975, 1.3083, 1.3137, 1.3152)),
))

Knots = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Palette:
    """A vendor's false-colour look.

    hue_deg_by_zeff: (Z_eff, hue°) knots, both increasing (the inverse reads Z_eff from hue).
    value_by_log_att: (L_b, V/V_background) knots, L_b increasing, V strictly decreasing to 0 (black).
    saturation_by_value: per Z_eff anchor, (V/V_background, S) knots with V increasing; S is linearly
    interpolated between anchors in Z_eff.
    """

    name: str
    background_value: float  # V of air, 0–1 (the background is neutral grey/white)
    hue_deg_by_zeff: Knots
    value_by_log_att: Knots
    saturation_by_value: tuple[tuple[float, Knots], ...]


# Value curve: what fraction of the background's brightness a mean log-attenuation keeps. Set so
# that 10 cm water (L_b ≈ 1.9) is mid-tone, 2 cm steel (L_b ≈ 6) near black, and L_b ≥ 8
# (≈ 3 cm steel, the usual "unpenetrated" threshold) black.
PALETTES: dict[str, Palette] = {
    "sixray": Palette(
        name="sixray",
        background_value=225.0 / 255.0,
        hue_deg_by_zeff=((5.0, 24.0), (6.0, 28.0), (7.0, 35.0), (8.0, 42.0), (9.5, 52.0), (10.5, 80.0), (12.0, 108.0),
                         (15.0, 135.0), (18.0, 165.0), (20.0, 188.0), (23.0, 200.0), (30.0, 218.0)),
        value_by_log_att=((0.0, 1.0), (0.4, 0.93), (1.0, 0.80), (2.0, 0.60), (3.0, 0.44), (4.5, 0.26),
                          (6.0, 0.11), (8.0, 0.0)),
        saturation_by_value=(
            (7.0, ((0.0, 0.95), (0.3, 0.80), (0.6, 0.72), (0.7, 0.75), (0.8, 0.62), (0.91, 0.30), (0.98, 0.18),
                   (1.0, 0.0))),
            (13.0, ((0.0, 0.95), (0.37, 0.82), (0.48, 0.72), (0.59, 0.62), (0.69, 0.50), (0.8, 0.36),
                    (0.91, 0.28), (0.98, 0.20), (1.0, 0.0))),
            (22.0, ((0.0, 0.97), (0.97, 0.90), (1.0, 0.0))),
        ),
    ),
    "pidray": Palette(
        name="pidray",
        background_value=1.0,
        hue_deg_by_zeff=((5.0, 27.0), (8.0, 34.0), (9.5, 40.0), (10.5, 88.0), (12.0, 106.0), (15.0, 116.0),
                         (18.0, 126.0), (20.0, 196.0), (23.0, 218.0), (30.0, 226.0)),
        value_by_log_att=((0.0, 1.0), (0.4, 0.95), (1.0, 0.86), (2.0, 0.70), (3.0, 0.54), (4.5, 0.33),
                          (6.0, 0.13), (8.0, 0.0)),
        saturation_by_value=(
            (7.0, ((0.0, 0.98), (0.44, 0.94), (0.56, 0.88), (0.69, 0.78), (0.82, 0.52), (0.94, 0.30), (1.0, 0.0))),
            (13.0, ((0.0, 0.95), (0.19, 0.89), (0.31, 0.79), (0.44, 0.69), (0.56, 0.58), (0.69, 0.47),
                    (0.82, 0.37), (0.94, 0.25), (1.0, 0.0))),
            (22.0, ((0.0, 0.95), (0.31, 0.93), (0.44, 0.87), (0.56, 0.78), (0.69, 0.66), (0.82, 0.49),
                    (0.94, 0.30), (1.0, 0.0))),
        ),
    ),
}

# Table grids. L from 0 to 12 (the raw floor, ln(59900/0.5) ≈ 11.7), R from 0.8 to 4.4 (thin copper
# reaches 3.9; noise on thin objects spreads R either side, where the colour is near-background).
_L_MAX = 12.0
_L_STEP = 1.0 / 64.0
_R_MIN, _R_MAX, _R_STEP = 0.8, 4.4, 1.0 / 128.0
_Z_MIN, _Z_MAX, _Z_STEP = 4.0, 32.0, 0.05


def raw_to_log_attenuation(raw: np.ndarray) -> np.ndarray:
    """Dual-energy raw counts H×W×2 uint16 (low, high) → log-attenuation −ln T, H×W×2 float32.

    Dark level is subtracted and the signal floored at 0.5 count, so L ≤ ln(59900/0.5) ≈ 11.7.
    Noise above the air level gives slightly negative L, left as is.
    """
    signal = np.maximum(raw.astype(np.float32) - np.float32(RAW_DARK_LEVEL), np.float32(0.5))
    return (np.float32(np.log(RAW_AIR_LEVEL - RAW_DARK_LEVEL)) - np.log(signal)).astype(np.float32)


def _palette(palette: str | Palette) -> Palette:
    if isinstance(palette, Palette):
        return palette
    try:
        return PALETTES[palette]
    except KeyError:
        raise KeyError(f"unknown palette {palette!r}; known: {', '.join(PALETTES)}") from None


@lru_cache(maxsize=8)
def _zeff_table(zeff_knots: ZeffKnots) -> np.ndarray:
    """Z_eff over the (L_high, R) grid, (n_L, n_R) float32: rows of the knots, linear between levels."""
    r_grid = np.arange(_R_MIN, _R_MAX + 1e-9, _R_STEP)
    l_grid = np.arange(0.0, _L_MAX + 1e-9, _L_STEP)
    levels = np.array([row[0] for row in zeff_knots])
    per_level = np.stack([np.interp(r_grid, row[1], row[2]) for row in zeff_knots])  # (n_levels, n_R)
    # Linear interpolation between levels (clamped outside), done for every grid L at once.
    pos = np.interp(l_grid, levels, np.arange(levels.size))
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, levels.size - 1)
    frac = (pos - lo)[:, None]
    return ((1 - frac) * per_level[lo] + frac * per_level[hi]).astype(np.float32)


#: cv2.remap refuses maps with a side of SHRT_MAX (32767) or more; longer scans are looked up in tiles.
_REMAP_TILE = 16384


def _remap(table: np.ndarray, col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """table looked up (bilinear, edges replicated) at (col, row) per pixel: H×W maps → H×W[×C] of table's
    type. Each output pixel depends on its own map entries only, so tiles of a long belt scan give the same
    result as one call."""
    col, row = col.astype(np.float32, copy=False), row.astype(np.float32, copy=False)

    def lookup(c: np.ndarray, r: np.ndarray) -> np.ndarray:
        return cv2.remap(table, c, r, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    h, w = col.shape[:2]
    if h < _REMAP_TILE and w < _REMAP_TILE:
        return lookup(col, row)
    out = np.empty((h, w) + table.shape[2:], table.dtype)
    for y in range(0, h, _REMAP_TILE):
        for x in range(0, w, _REMAP_TILE):
            tile = np.s_[y : y + _REMAP_TILE, x : x + _REMAP_TILE]
            out[tile] = lookup(np.ascontiguousarray(col[tile]), np.ascontiguousarray(row[tile]))
    return out


def zeff_from_log_attenuation(log_att: np.ndarray, *, zeff_knots: ZeffKnots = DEFAULT_ZEFF_KNOTS) -> np.ndarray:
    """Effective atomic number per pixel, H×W×2 float32 (L_low, L_high) → H×W float32.

    Meaningless where L_high is near 0 (air: the ratio is noise) — renderers fade colour out there.
    """
    l_low = np.maximum(log_att[..., 0], 0.0)
    l_high = np.maximum(log_att[..., 1], 0.0)
    ratio = l_low / np.maximum(l_high, np.float32(1e-3))
    col = (ratio - np.float32(_R_MIN)) * np.float32(1.0 / _R_STEP)
    row = l_high * np.float32(1.0 / _L_STEP)
    return _remap(_zeff_table(zeff_knots), col, row)


def _saturation(p: Palette, value_frac: np.ndarray, zeff: np.ndarray) -> np.ndarray:
    anchors = np.array([a for a, _ in p.saturation_by_value])
    curves = np.stack([np.interp(value_frac, [k[0] for k in knots], [k[1] for k in knots])
                       for _, knots in p.saturation_by_value])  # (n_anchors, ...)
    pos = np.interp(zeff, anchors, np.arange(anchors.size))
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, anchors.size - 1)
    frac = pos - lo
    return (1 - frac) * np.take_along_axis(curves, lo[None], 0)[0] + frac * np.take_along_axis(curves, hi[None], 0)[0]


def palette_rgb(log_att_mean: np.ndarray, zeff: np.ndarray, palette: str | Palette = "sixray") -> np.ndarray:
    """The palette's colour for mean log-attenuation L_b and Z_eff (same shape S) → S×3 float32 RGB 0–1."""
    p = _palette(palette)
    l_b = np.asarray(log_att_mean, np.float64)
    z = np.asarray(zeff, np.float64)
    value_frac = np.interp(l_b, [k[0] for k in p.value_by_log_att], [k[1] for k in p.value_by_log_att])
    hue = np.interp(z, [k[0] for k in p.hue_deg_by_zeff], [k[1] for k in p.hue_deg_by_zeff])
    sat = _saturation(p, value_frac, z)
    hsv = np.stack([hue, sat, value_frac * p.background_value], axis=-1).astype(np.float32)
    flat = hsv.reshape(-1, 1, 3)
    return cv2.cvtColor(flat, cv2.COLOR_HSV2RGB).reshape(hsv.shape)


@lru_cache(maxsize=8)
def _colour_table(p: Palette) -> np.ndarray:
    """RGB (uint8) over the (L_b, Z_eff) grid, (n_L, n_Z, 3). Its cells are 1/64 of L_b and 0.05 of Z_eff
    apart, so neighbours differ by a level or two: remapping the uint8 table (fixed-point, rounded) is
    within one level of interpolating floats and rounding, and saves two passes over the image."""
    l_grid = np.arange(0.0, _L_MAX + 1e-9, _L_STEP)
    z_grid = np.arange(_Z_MIN, _Z_MAX + 1e-9, _Z_STEP)
    l2, z2 = np.meshgrid(l_grid, z_grid, indexing="ij")
    return np.clip(palette_rgb(l2, z2, p) * np.float32(255.0) + 0.5, 0, 255).astype(np.uint8)


def smooth_zeff(zeff: np.ndarray, log_att_high: np.ndarray, sigma_px: float) -> np.ndarray:
    """Z_eff low-passed over σ px, each pixel weighted by its attenuation (H×W float32 → H×W float32).

    Scanners classify material on a smoothed ratio image (the per-pixel ratio is too noisy to colour
    by), so hue varies more slowly than brightness and spills across edges in soft blotches. Weights
    min(L_high, 1) keep air and faint pixels, whose ratio is noise, from dragging their neighbours.
    """
    weight = np.clip(log_att_high, 0.02, 1.0).astype(np.float32)
    num = cv2.GaussianBlur(zeff * weight, (0, 0), sigma_px, borderType=cv2.BORDER_REPLICATE)
    den = cv2.GaussianBlur(weight, (0, 0), sigma_px, borderType=cv2.BORDER_REPLICATE)
    return num / den


def render_false_colour_from_log_attenuation(log_att: np.ndarray, *, palette: str | Palette = "sixray",
                                             zeff_knots: ZeffKnots = DEFAULT_ZEFF_KNOTS,
                                             zeff_smooth_px: float = 0.0) -> np.ndarray:
    """Log-attenuation H×W×2 float32 (L_low, L_high) → false-colour H×W×3 uint8 RGB.

    zeff_smooth_px: σ of the scanner's material-map smoothing (`smooth_zeff`); 0 = per-pixel Z_eff.
    """
    p = _palette(palette)
    zeff = zeff_from_log_attenuation(log_att, zeff_knots=zeff_knots)
    if zeff_smooth_px > 0:
        zeff = smooth_zeff(zeff, log_att[..., 1], zeff_smooth_px)
    l_mean = np.maximum(0.5 * (log_att[..., 0] + log_att[..., 1]), 0.0)
    return _remap(_colour_table(p), (zeff - np.float32(_Z_MIN)) * np.float32(1.0 / _Z_STEP),
                  l_mean * np.float32(1.0 / _L_STEP))


def render_false_colour(low_high: np.ndarray, *, palette: str | Palette = "sixray",
                        zeff_knots: ZeffKnots = DEFAULT_ZEFF_KNOTS, zeff_smooth_px: float = 0.0) -> np.ndarray:
    """Dual-energy raw H×W×2 uint16 (low, high) → false-colour H×W×3 uint8 RGB in a vendor's palette."""
    return render_false_colour_from_log_attenuation(raw_to_log_attenuation(low_high), palette=palette,
                                                    zeff_knots=zeff_knots, zeff_smooth_px=zeff_smooth_px)


def render_grey(low_high: np.ndarray, *, channel: str = "high", black_log_att: float = 8.0,
                gamma: float = 1.0) -> np.ndarray:
    """Single-energy grey (GDXray-like): H×W×2 uint16 → H×W uint8, air white, linear in log-attenuation.

    channel: "high", "low" or "mean" (of the two log-attenuations). grey = 255·(1 − L/black_log_att)^gamma,
    so L ≥ black_log_att is black.
    """
    log_att = raw_to_log_attenuation(low_high)
    if channel == "high":
        l_sel = log_att[..., 1]
    elif channel == "low":
        l_sel = log_att[..., 0]
    elif channel == "mean":
        l_sel = 0.5 * (log_att[..., 0] + log_att[..., 1])
    else:
        raise ValueError(f"channel must be 'high', 'low' or 'mean', not {channel!r}")
    return grey_from_log_attenuation(l_sel, black_log_att=black_log_att, gamma=gamma)


def grey_from_log_attenuation(log_att: np.ndarray, *, black_log_att: float = 8.0, gamma: float = 1.0,
                              dtype: type = np.uint8) -> np.ndarray:
    """The grey scale of `render_grey`: H×W log-attenuation → grey = max·(1 − L/black_log_att)^gamma (uint8
    or uint16 `dtype`), air white, L ≥ black_log_att black."""
    level = np.clip(1.0 - np.asarray(log_att, np.float32) / np.float32(black_log_att), 0.0, 1.0) ** np.float32(gamma)
    return (level * float(np.iinfo(dtype).max) + 0.5).astype(dtype)


def grey_to_log_attenuation(grey: np.ndarray, *, black_log_att: float = 8.0, gamma: float = 1.0) -> np.ndarray:
    """Inverse of `grey_from_log_attenuation` for a uint8 or uint16 grey scan: H×W float32 log-attenuation
    (black reads black_log_att, the most the scale holds)."""
    level = grey.astype(np.float32) / np.float32(np.iinfo(grey.dtype).max)
    if gamma != 1.0:
        level = level ** np.float32(1.0 / gamma)
    return (np.float32(1.0) - level) * np.float32(black_log_att)


@lru_cache(maxsize=8)
def _high_from_mean_table(zeff_knots: ZeffKnots) -> np.ndarray:
    """L_high over the (L_b, Z_eff) grid, (n_L, n_Z) float32: inverts L_b = L_high·(1 + R(Z, L_high))/2."""
    z_table = _zeff_table(zeff_knots).astype(np.float64)  # (n_L, n_R), non-decreasing along R
    r_grid = np.arange(_R_MIN, _R_MAX + 1e-9, _R_STEP)
    l_grid = np.arange(0.0, _L_MAX + 1e-9, _L_STEP)
    z_grid = np.arange(_Z_MIN, _Z_MAX + 1e-9, _Z_STEP)
    # R(Z) on every L_high row: invert that row's Z(R).
    ratio = np.stack([np.interp(z_grid, z_row, r_grid) for z_row in z_table])  # (n_L, n_Z)
    l_mean = l_grid[:, None] * (1.0 + ratio) / 2.0  # increasing in L_high for every Z
    out = np.stack([np.interp(l_grid, l_mean[:, j], l_grid) for j in range(z_grid.size)], axis=1)
    return out.astype(np.float32)


@lru_cache(maxsize=8)
def _mean_from_lightness_table(p: Palette) -> np.ndarray:
    """L_b over the (HSL lightness, Z_eff) grid, (n_lightness, n_Z) float32.

    Lightness (max + min channel)/2 = V·(1 − S/2) falls strictly along every palette locus (V falls,
    S rises), so unlike V alone it also ranks real scans whose bright colours are saturated.
    """
    v_knots = p.value_by_log_att
    l_grid = np.arange(0.0, v_knots[-1][0] + 1e-9, _L_STEP)  # up to the first black L_b
    z_grid = np.arange(_Z_MIN, _Z_MAX + 1e-9, _Z_STEP)
    l2, z2 = np.meshgrid(l_grid, z_grid, indexing="ij")
    rgb = palette_rgb(l2, z2, p)
    lightness = 0.5 * (rgb.max(axis=-1) + rgb.min(axis=-1))  # (n_L, n_Z), decreasing along axis 0
    light_grid = np.arange(0.0, 1.0 + 1e-9, 1.0 / 512.0)
    out = np.stack([np.interp(light_grid, lightness[::-1, j], l_grid[::-1]) for j in range(z_grid.size)], axis=1)
    return out.astype(np.float32)


def false_colour_to_pseudo_log_attenuation(rgb: np.ndarray, palette: str | Palette = "sixray", *,
                                           zeff_knots: ZeffKnots = DEFAULT_ZEFF_KNOTS,
                                           match_background: bool = True) -> np.ndarray:
    """Approximate inverse of the palette: H×W×3 uint8 RGB → H×W×2 float32 (L_low, L_high).

    Z_eff from hue (hues outside the palette clamp to its ends; red and magenta count as organic),
    L_b from HSL lightness given Z_eff, then L_high, L_low from the Z_eff table. Exact up to 8-bit
    rounding on images this module rendered. On real scans it gives a pseudo-attenuation whose
    re-rendering resembles the input (see `project_log_attenuation`). match_background: rescale
    lightness so the image's own background (99.5th percentile of its max channel) maps onto the
    palette's, as vendors (and SIXray's two scanner settings) differ in background grey; it is
    applied only when that percentile is within 15 % of the palette's background (air is present).
    """
    p = _palette(palette)
    rgb8 = np.ascontiguousarray(rgb, dtype=np.uint8)
    hue = cv2.cvtColor(rgb8.astype(np.float32) * np.float32(1.0 / 255.0), cv2.COLOR_RGB2HSV)[..., 0]
    hue = np.where(hue > 300.0, hue - 360.0, hue)  # magenta/red wrap onto the organic end
    zeff = np.interp(hue, [k[1] for k in p.hue_deg_by_zeff], [k[0] for k in p.hue_deg_by_zeff])
    # Channel max/min on uint8 planes with cv2: numpy reductions over a last axis of 3 are ~10× slower.
    r, g, b = cv2.split(rgb8)
    max_c, min_c = cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b)
    lightness = (max_c.astype(np.float32) + min_c) * np.float32(0.5 / 255.0)
    if match_background:
        image_bg = float(np.percentile(max_c, 99.5)) / 255.0
        # Only trust it as background when it is near the palette's: a crop with no air in it
        # must not be brightened.
        if image_bg > 0.85 * p.background_value:
            lightness = lightness * np.float32(p.background_value / image_bg)
    z_col = ((zeff - _Z_MIN) / _Z_STEP).astype(np.float32)
    l_mean = _remap(_mean_from_lightness_table(p), z_col, (lightness * 512.0).astype(np.float32))
    l_high = _remap(_high_from_mean_table(zeff_knots), z_col, (l_mean / _L_STEP).astype(np.float32))
    l_low = 2.0 * l_mean - l_high
    return np.stack([l_low, l_high], axis=-1).astype(np.float32)


def project_log_attenuation(rgb: np.ndarray, extra_log_att: np.ndarray, palette: str | Palette = "sixray", *,
                            zeff_knots: ZeffKnots = DEFAULT_ZEFF_KNOTS, base: np.ndarray | None = None) -> np.ndarray:
    """TIP into a false-colour image: add an object's log-attenuation H×W×2 (low, high) to a scan.

    rgb H×W×3 uint8 → H×W×3 uint8. Renders inverse(rgb) with and without the object and adds the
    difference to the input, so pixels the object does not touch stay exactly as they were (the
    real scan's own colours and texture survive the palette's approximation). base: inverse(rgb) when the
    caller has it already (`false_colour_to_pseudo_log_attenuation` with the same palette and knots).
    """
    if base is None:
        base = false_colour_to_pseudo_log_attenuation(rgb, palette, zeff_knots=zeff_knots)
    before = render_false_colour_from_log_attenuation(base, palette=palette, zeff_knots=zeff_knots)
    after = render_false_colour_from_log_attenuation(base + extra_log_att.astype(np.float32), palette=palette,
                                                     zeff_knots=zeff_knots)
    out = rgb.astype(np.int16) + after.astype(np.int16) - before.astype(np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)
