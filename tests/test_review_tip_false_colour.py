"""Review tests of 0ac33bc (TIP into false-colour scans reads the palette's pseudo log-attenuation as basis
thicknesses, `datasets.synth.tip.project_into_false_colour`).

Each test fails on the code as reviewed and names the fault in its docstring. On synthetic bags the
reference is the synthesiser itself: bag and item rendered together, noise-free, in the same palette.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.synth.physics import basis_coefficients, build_scanner, render_raw
from datasets.synth.tip import TipItem, item_log_attenuation, project_into_false_colour
from vision.colour import false_colour_to_pseudo_log_attenuation, project_log_attenuation, render_false_colour

REAL = Path(__file__).resolve().parents[2] / "shared" / "xray-real"


def _noise_free(basis: np.ndarray) -> np.ndarray:
    return render_raw(basis, rng=np.random.default_rng(0), dose=1e12, blur_px=0.0, electronic_noise_counts=0.0)


def _block(h: int, w: int, basis_cm) -> TipItem:
    basis = np.zeros((h, w, 2), np.float32)
    basis[...] = basis_cm
    return TipItem("drug_package", "block", "cocaine", basis, np.ones((h, w), bool))


@pytest.mark.parametrize("palette", ["sixray", "pidray"])
def test_an_item_behind_a_thin_gap_between_unpenetrated_objects_shows(palette: str) -> None:
    """A 3-px strip of thin clothes (2 cm PE) between two unpenetrated (black) steel blocks: an item behind
    it must darken the strip as rendering them together does. Both palettes render black as pseudo
    (L_low, L_high) = (7.11, 8.89), L_low < L_high, which no material gives; the σ 2 px smoothing in
    `added_behind` mixes it into the strip, `basis_from_log_attenuation` runs off to the table's clamp
    (PE 100 cm, Al 0) where L(bag + item) − L(bag) = 0, and `hardening_weight` trusts that reading (its
    ±1 cm probes sit on the same flat clamp, so it sees no spread): the strip gets ~0.1 of the item's
    ΔL (sixray: RGB (211,181,157) → (206,172,145), truth (185,127,83)). The old additive projection was
    exact there."""
    scanner = build_scanner()
    steel = np.asarray(basis_coefficients("steel"), np.float32)
    shape, offset, gap = (80, 100), (20, 20), np.s_[50:53]
    bag = np.zeros((*shape, 2), np.float32)
    bag[5:-5, 5:-5] = (2.0, 0.0)
    bag[5:-5, 30:50] += 4.0 * steel
    bag[5:-5, 53:73] += 4.0 * steel
    item = _block(40, 60, (3.0, 0.0))
    together = bag.copy()
    together[20:60, 20:80] += item.basis_cm
    rgb = render_false_colour(_noise_free(bag), palette=palette)
    truth = render_false_colour(_noise_free(together), palette=palette)
    new = project_into_false_colour(rgb, item, offset, palette=palette, scanner=scanner, blur_px=0.0)
    rows = np.s_[25:55]
    dark_truth = (rgb[rows, gap].astype(int) - truth[rows, gap]).sum(axis=-1)
    dark_new = (rgb[rows, gap].astype(int) - new[rows, gap]).sum(axis=-1)
    assert dark_truth.min() > 100  # the strip is visible and the item shows on it
    ratio = dark_new / dark_truth
    assert ratio.min() > 0.7, (f"{palette}: the item darkens the strip by {ratio.min():.2f}–{ratio.max():.2f} "
                               f"of what rendering them together does; strip RGB {rgb[40, 51].tolist()} → "
                               f"{new[40, 51].tolist()}, truth {truth[40, 51].tolist()}")


@pytest.mark.skipif(not (REAL / "pidray").is_dir(), reason="../shared/xray-real is not on this machine")
def test_an_item_in_a_real_pidray_scan_shows_on_penetrated_pixels_next_to_black_ones() -> None:
    """A real PIDray scan (sharp PNG, black unpenetrated parts with light gaps between them): a 3 cm
    organic block projected over it. On pixels the scan shows penetrated, even white (air-level) ones,
    the item must darken the scan; behind any penetrable material a polychromatic beam hardens it by at
    most ~20 % (3 cm PE behind 2.2 cm steel: 0.80 / 0.92 of its own ΔL). Next to black pixels the
    smoothed pseudo log-attenuation is unphysical (L_low < L_high), read at the basis table's clamp where
    ΔL = 0, and trusted: white pixels there get 7 % of the item's ΔL (RGB 255,255,255 → 253,249,244;
    the old additive projection: 237,197,162)."""
    scanner = build_scanner()
    rgb = cv2.cvtColor(cv2.imread(str(REAL / "pidray" / "images" / "xray_09101.png")), cv2.COLOR_BGR2RGB)
    item, offset = _block(50, 50, (3.0, 0.0)), (316, 278)
    base = false_colour_to_pseudo_log_attenuation(rgb, "pidray")
    new = item_log_attenuation(item, offset, rgb.shape[:2], scanner=scanner, blur_px=0.0, behind=base,
                               behind_dose=None)
    alone = item_log_attenuation(item, offset, rgb.shape[:2], scanner=scanner, blur_px=0.0)
    footprint = np.s_[offset[0]:offset[0] + 50, offset[1]:offset[1] + 50]
    penetrated = base[footprint].mean(axis=-1) < 6.0
    ratio = (new[footprint] / alone[footprint])[penetrated]
    out = project_into_false_colour(rgb, item, offset, palette="pidray", scanner=scanner, blur_px=0.0)
    old = project_log_attenuation(rgb, alone, "pidray")
    y, x = offset[0] + 2, offset[1] + 44  # a white pixel between black ones
    assert ratio.min() > 0.5, (f"ΔL over penetrated pixels down to {ratio.min():.2f} of the item's own "
                               f"({int((ratio < 0.5).sum())} px); RGB {rgb[y, x].tolist()} → {out[y, x].tolist()}, "
                               f"old {old[y, x].tolist()}")
