"""Review tests (second pass) of the synthesiser and TIP against DESIGN.md §4 and X-ray physics.

Each test asserts what a real dual-energy scanner (or the synthesiser's own rendering of the same scene)
would show; each fails on the code as reviewed and names the fault in its docstring.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datasets.synth import tip
from datasets.synth.look import ScannerLook, look_for, render, scan
from datasets.synth.physics import (
    basis_coefficients,
    build_scanner,
    lookup_log_attenuation,
    render_raw,
)
from datasets.synth.tip import TipItem, project_into_grey, project_random
from vision.colour import RAW_AIR_LEVEL, RAW_DARK_LEVEL, render_grey

# Hue range (degrees) of metals, as in tests/test_colour.py.
BLUE = (185.0, 250.0)


def _median_hue(rgb: np.ndarray) -> float:
    hsv = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
    return float(np.median(hsv[..., 0]))


def _raw_from_log_attenuation(log_att: np.ndarray) -> np.ndarray:
    raw = RAW_DARK_LEVEL + (RAW_AIR_LEVEL - RAW_DARK_LEVEL) * np.exp(-log_att.astype(np.float64))
    return np.round(raw).astype(np.uint16)


def _uniform_item(h: int, w: int, pe_cm: float, al_cm: float) -> TipItem:
    basis = np.zeros((h, w, 2), np.float32)
    basis[..., 0], basis[..., 1] = pe_cm, al_cm
    return TipItem("drug_package", "block", "cocaine", basis, np.ones((h, w), bool))


def test_tip_into_a_synthetic_grey_scan_matches_rendering_the_item_in_it() -> None:
    """The synthesiser's grey scans (palette "grey", `vision.colour.render_grey`) are linear in
    log-attenuation: grey = 255·(1 − L_high/8). `tip.project_into_grey` instead treats grey as
    proportional to transmission (multiplies it by exp(−L_item)), and `_scan_log_att_mean` reads
    L = −ln(grey/255). A user who runs `xscreen tip` on a synthetic grey set sees projected items
    far darker than the same item rendered into the bag (grey 38 instead of ≈172 for 10 cm of
    organics), i.e. the TIP item is a near-black blob the model learns to spot by its wrong contrast."""
    scanner = build_scanner()
    shape = (64, 64)
    bag_basis = np.zeros((*shape, 2), np.float32)
    bag_basis[8:-8, 8:-8, 0] = 5.0  # 5 cm of polyethylene-equivalent clutter

    def noise_free(basis: np.ndarray) -> np.ndarray:
        return render_raw(basis, rng=np.random.default_rng(0), dose=1e12, blur_px=0.0, electronic_noise_counts=0.0,
                          scanner=scanner)

    grey = render_grey(noise_free(bag_basis), channel="high")  # what pipeline.render_image writes for "grey"
    item = _uniform_item(20, 20, 10.0, 0.3)
    projected = project_into_grey(grey, item, (22, 22), scanner=scanner, blur_px=0.0)  # rendered sharp too
    with_item = bag_basis.copy()
    with_item[22:42, 22:42] += item.basis_cm
    expected = render_grey(noise_free(with_item), channel="high")
    diff = np.abs(projected.astype(int) - expected.astype(int))
    assert diff.max() <= 3, (int(projected[30, 30]), int(expected[30, 30]))


def test_tip_noise_matches_the_synthetic_raw_scan_it_is_projected_into(monkeypatch: pytest.MonkeyPatch) -> None:
    """TIP into raw adds the quantum noise of binomial thinning at `RAW_TIP_DOSE` = 2e4 quanta per
    *display* pixel. The raw counts the synthesiser writes (look.render → look.scan) do not carry
    that: the default SIXray look draws noise on a 1.5 px detector grid and interpolates it up
    (per-pixel variance ≈ 0.42 of 2e4-quanta statistics), and scans shorter than 640 px are rendered
    larger and shrunk (0.13 at 256 px). A projected item is therefore ≈ 2× (up to 7×) grainier than
    the same object rendered by the synthesiser: a tell-tale texture a detector can learn instead of
    the contraband. The projected item's noise must match the scan's."""
    scanner = build_scanner()
    look = look_for("sixray")  # the default palette of SynthConfig, at its default size 768 px
    shape = (576, 768)
    bag_basis = np.zeros((*shape, 2), np.float32)
    bag_basis[40:-40, 40:-40, 0] = 10.0
    raw, _ = render(bag_basis, "sixray", look, np.random.default_rng(0), scanner)
    item = _uniform_item(200, 200, 10.0, 0.0)
    monkeypatch.setattr(tip, "make_tip_item", lambda rng, class_name, pixel_mm: item)
    out, placed = project_random(np.random.default_rng(1), raw, kind="raw", classes=("drug_package",), pixel_mm=1.2,
                                 scanner=scanner)
    assert len(placed) == 1
    x0, y0, x1, y1 = placed[0].box_xyxy
    fresh_basis = bag_basis.copy()
    fresh_basis[y0:y1, x0:x1] += item.basis_cm
    fresh, _ = render(fresh_basis, "sixray", look, np.random.default_rng(2), scanner)
    inner = np.s_[y0 + 8 : y1 - 8, x0 + 8 : x1 - 8]  # away from the blurred edge

    def fano(raw_counts: np.ndarray) -> np.ndarray:
        # Variance over mean of the dark-subtracted counts: photon statistics make it independent of the
        # signal level.
        signal = raw_counts[inner].reshape(-1, 2).astype(np.float64) - RAW_DARK_LEVEL
        return signal.var(axis=0) / signal.mean(axis=0)

    ratio = fano(out) / fano(fresh)
    assert ((ratio > 0.75) & (ratio < 1.33)).all(), f"TIP / rendered noise (variance/mean) per channel: {ratio}"


def test_detector_pitch_conserves_photons_over_fine_metal() -> None:
    """With `detector_px` > 1 (the SIXray look: 1.5) `look.scan` area-averages the *basis thicknesses*
    onto the detector grid and then takes exp(−L). A detector pixel integrates photons, i.e. it
    averages *transmission*; averaging log-attenuation first makes every sub-pixel dense detail (wires,
    zips, foil lines, blister foil) darker and more metallic than it is: over a field of 1 px steel
    wires the low channel transmits 0.64 instead of 0.78, and L_low/L_high (Z_eff) shifts from 1.45 to
    1.97. The mean transmission over a region must not depend on the detector pitch."""
    scanner = build_scanner()
    pe, al = basis_coefficients("steel")
    basis = np.zeros((240, 240, 2), np.float32)
    basis[:, ::4] = np.float32([pe * 0.3, al * 0.3])  # 3 mm steel wires, one pixel wide, every 4 px
    true_t = np.exp(-lookup_log_attenuation(basis, scanner=scanner).astype(np.float64))[8:-8, 8:-8].mean(axis=(0, 1))
    look = ScannerLook(raw_dose=1e9, blur_px=0.0, detector_px=1.5)  # noise-free, no blur: only the pitch
    raw = scan(basis, look, np.random.default_rng(0), scanner)
    t = (raw.astype(np.float64) - RAW_DARK_LEVEL) / (RAW_AIR_LEVEL - RAW_DARK_LEVEL)
    np.testing.assert_allclose(t[8:-8, 8:-8].mean(axis=(0, 1)), true_t, rtol=0.02)


def test_false_colour_uses_the_rendering_scanners_zeff_calibration() -> None:
    """`SynthConfig.kvp` changes the spectrum, but `look.display` colours every scan with
    `vision.colour.DEFAULT_ZEFF_KNOTS`, the 150 kVp calibration, never `physics.zeff_calibration(scanner)`.
    At 100 kVp the L_low/L_high ratios are different and 3 mm of steel reads Z_eff ≈ 19 instead of ≈ 25:
    a user who synthesises a 100 kVp set sees steel in cyan (hue ≈ 178°) instead of the metals' blue, so
    the material colours of the set do not follow the physics they were rendered with."""
    scanner = build_scanner(kvp=100.0)
    pe, al = basis_coefficients("steel")
    basis = np.zeros((48, 640, 2), np.float32)
    basis[...] = (pe * 0.3, al * 0.3)
    _, image = render(basis, "sixray", ScannerLook(raw_dose=1e9, blur_px=0.0), np.random.default_rng(0), scanner)
    hue = _median_hue(image)
    assert BLUE[0] <= hue <= BLUE[1], hue
