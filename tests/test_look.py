"""Scanner looks (noise, display processing, file format) and fabric builders of the synthesiser."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from datasets.synth.fabric import crease_lines, garment_pile, panel_seams
from datasets.synth.look import (
    LOOK_REFERENCE_PX,
    LOOKS,
    ScannerLook,
    display,
    display_noise,
    jpeg_round_trip,
    look_for,
    render,
    scan,
    sharpen,
)
from datasets.synth.physics import build_scanner
from vision.colour import RAW_AIR_LEVEL, smooth_zeff


def _air(shape: tuple[int, int] = (64, 96)) -> np.ndarray:
    return np.full((*shape, 2), RAW_AIR_LEVEL, np.uint16)


def test_every_palette_has_a_look_and_bad_looks_are_refused() -> None:
    assert set(LOOKS) == {"sixray", "pidray", "grey"}
    with pytest.raises(KeyError, match="no scanner look"):
        look_for("neon")
    for bad in ({"raw_dose": 0.0}, {"dose_low": -1.0}, {"detector_px": 0.5}, {"jpeg_quality": 101},
                {"white_background_p": 2.0}):
        with pytest.raises(ValueError):
            ScannerLook(**bad)  # type: ignore[arg-type]


def test_jpeg_round_trip_and_sharpen_keep_the_image() -> None:
    rng = np.random.default_rng(0)
    ramp = np.linspace(60, 220, 64, dtype=np.float32)[None, :, None] * np.array([1.0, 0.8, 0.5], np.float32)
    image = np.clip(ramp + rng.normal(0, 3, (48, 64, 3)), 0, 255).astype(np.uint8)
    assert jpeg_round_trip(image, 0) is image and sharpen(image, 0.0, 1.0) is image
    out = jpeg_round_trip(image, 90)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - image).mean() < 4
    grey = jpeg_round_trip(image[..., 0].copy(), 90)
    assert grey.shape == (48, 64)
    flat = np.full((16, 16), 100, np.uint8)
    assert np.array_equal(sharpen(flat, 2.0, 1.0), flat)  # nothing to enhance on a flat image


def test_sixray_air_is_clean_and_pidray_air_is_speckled() -> None:
    scanner = build_scanner()
    grey_bg = ScannerLook(**{**LOOKS["sixray"].to_dict(), "white_background_p": 0.0})
    raw = scan(np.zeros((64, 96, 2), np.float32), grey_bg, np.random.default_rng(1), scanner)
    six = display(raw, "sixray", grey_bg, np.random.default_rng(1))
    assert six.shape == (64, 96, 3) and abs(float(six.mean()) - 225) < 3 and six.std() < 4
    white = ScannerLook(**{**grey_bg.to_dict(), "white_background_p": 1.0})
    assert display(raw, "sixray", white, np.random.default_rng(1)).mean() > 248
    pid_look = LOOKS["pidray"]
    raw = scan(np.zeros((64, 96, 2), np.float32), pid_look, np.random.default_rng(1), scanner)
    pid = display(raw, "pidray", pid_look, np.random.default_rng(1))
    assert pid.mean() > 240 and (pid < 235).any()  # white with scattered noise dots


def test_coarse_detector_keeps_size_and_levels() -> None:
    look = ScannerLook(detector_px=2.0, raw_dose=1e9, blur_px=0.0)
    basis = np.zeros((40, 60, 2), np.float32)
    basis[:, 30:, 0] = 10.0  # 10 cm polyethylene on the right half
    raw = scan(basis, look, np.random.default_rng(0), build_scanner())
    assert raw.shape == (40, 60, 2) and raw.dtype == np.uint16
    assert abs(float(raw[:, :25].mean()) - RAW_AIR_LEVEL) < 0.002 * RAW_AIR_LEVEL
    assert raw[:, 35:].mean() < 0.8 * RAW_AIR_LEVEL


def test_raw_keeps_the_physical_noise_and_the_image_gets_the_datasets() -> None:
    look = LOOKS["pidray"]
    raw = scan(np.zeros((64, 96, 2), np.float32), look, np.random.default_rng(2), build_scanner())
    rel_sd = raw.astype(np.float64).std(axis=(0, 1)) / RAW_AIR_LEVEL
    assert np.allclose(rel_sd, 1 / np.sqrt(look.raw_dose), rtol=0.15)  # quantum noise of a real count
    shown = display_noise(raw, look, np.random.default_rng(2)).astype(np.float64)
    expected = 1 / np.sqrt([look.dose_low, look.dose_high])
    assert np.allclose(shown.std(axis=(0, 1)) / RAW_AIR_LEVEL, expected, rtol=0.15)
    assert display_noise(raw, ScannerLook(), np.random.default_rng(2)) is raw  # no display doses: untouched


def test_smooth_zeff_is_not_dragged_by_air() -> None:
    rng = np.random.default_rng(3)
    zeff = np.where(np.arange(40)[None, :] < 20, rng.uniform(4, 30, (40, 40)), 26.0).astype(np.float32)
    l_high = np.where(np.arange(40)[None, :] < 20, 0.0, 1.0).astype(np.float32) * np.ones((40, 1), np.float32)
    out = smooth_zeff(zeff, l_high, 2.0)
    assert np.allclose(out[:, 24:], 26.0, atol=0.5)
    assert out[:, 20].min() > 20.0  # the object's edge keeps its colour


def test_garment_pile_draws_lines() -> None:
    rng = np.random.default_rng(4)
    pile = garment_pile(rng, 40.0, 30.0, 1.5, n_sheets=5, layer_cm=0.8)
    assert pile.dtype == np.float32 and pile.min() >= 0
    assert pile.shape[0] >= 200 and pile.shape[1] >= 267  # the 40 × 30 cm footprint and a margin
    covered = pile > 0.05
    assert 0.3 < covered.mean() < 0.95
    assert not covered[0].any() and not covered[:, -1].any()  # no panel is cut by the canvas edge
    # Sheet edges, hems and seams are steps: many pixels change by ≥ a layer's half to their neighbour.
    steps = np.abs(np.diff(pile, axis=1)) > 0.4
    assert steps.sum() > 300
    lines = crease_lines(rng, (100, 100), 1.5, 6.0)
    assert 0.0 <= lines.min() and lines.max() <= 1.0 and 0.01 < (lines > 0.5).mean() < 0.4


def test_panel_seams_stay_inside_the_bag() -> None:
    interior = np.zeros((120, 160), np.float32)
    interior[20:100, 30:130] = 1.0
    seams = panel_seams(np.random.default_rng(5), interior, 2.0, 6)
    assert seams.max() > 0.5 and (seams[interior < 0.5] == 0).all()


def _slab_basis(height: int, width: int) -> np.ndarray:
    """Air with a uniform slab (2 cm of the first basis material) over its middle half."""
    basis = np.zeros((height, width, 2), np.float32)
    basis[height // 4: 3 * height // 4, width // 4: 3 * width // 4, 0] = 2.0
    return basis


def _slab_grain(image: np.ndarray) -> float:
    """Standard deviation of the grey level inside the slab (away from its edges): the scan's grain."""
    grey = image.astype(np.float32).mean(axis=-1) if image.ndim == 3 else image.astype(np.float32)
    h, w = grey.shape
    return float(grey[3 * h // 8: 5 * h // 8, 3 * w // 8: 5 * w // 8].std())


@pytest.mark.parametrize("palette", ["sixray", "pidray"])
def test_a_small_scan_is_the_reference_scan_shrunk_not_a_noisier_one(palette: str) -> None:
    scanner = build_scanner()
    look = replace(LOOKS[palette], white_background_p=0.0)
    ref_w = LOOK_REFERENCE_PX
    ref_h = ref_w * 3 // 4
    small = (256, 192)
    shrunk, direct, rendered = [], [], []
    for seed in range(3):
        raw, image = render(_slab_basis(ref_h, ref_w), palette, look, np.random.default_rng(seed), scanner)
        assert image.shape[:2] == (ref_h, ref_w)
        shrunk.append(_slab_grain(cv2.resize(image, small, interpolation=cv2.INTER_AREA)))
        basis = _slab_basis(small[1], small[0])
        rng = np.random.default_rng(seed)
        direct.append(_slab_grain(display(scan(basis, look, rng, scanner), palette, look, rng)))
        raw, image = render(basis, palette, look, np.random.default_rng(seed), scanner)
        assert image.shape[:2] == raw.shape[:2] == (small[1], small[0]) and raw.dtype == np.uint16
        rendered.append(_slab_grain(image))
    # Every small pixel carrying a full-size pixel's noise is far grainier than the shrunk reference…
    assert np.mean(direct) > 1.5 * np.mean(shrunk)
    # …`render` gives the shrunk reference's grain.
    assert np.mean(rendered) == pytest.approx(np.mean(shrunk), rel=0.25)


def test_render_at_or_above_the_reference_size_is_scan_then_display() -> None:
    scanner = build_scanner()
    look = LOOKS["pidray"]
    basis = _slab_basis(LOOK_REFERENCE_PX * 3 // 4, LOOK_REFERENCE_PX)
    raw, image = render(basis, "pidray", look, np.random.default_rng(4), scanner)
    rng = np.random.default_rng(4)
    raw2 = scan(basis, look, rng, scanner)
    assert np.array_equal(raw, raw2) and np.array_equal(image, display(raw2, "pidray", look, rng))


def _lag1(noise: np.ndarray) -> tuple[float, float]:
    """Lag-1 correlation of a zero-mean field along x and along y."""
    n = noise - noise.mean()
    power = float((n * n).mean())
    return float((n[:, :-1] * n[:, 1:]).mean()) / power, float((n[:-1] * n[1:]).mean()) / power


def test_a_detector_pitch_across_the_belt_of_its_own_makes_the_grain_anisotropic() -> None:
    """Along the belt (image x) the line period sets the pitch, across it (y) the detector line: with
    `detector_px_y` the grain is correlated unequally along the two, in both the raw counts and the display's
    noise; 0 keeps it square."""
    scanner = build_scanner()
    air = np.zeros((120, 160, 2), np.float32)
    square = ScannerLook(detector_px=2.0, raw_dose=2e4, blur_px=0.0)
    wide = ScannerLook(detector_px=2.0, detector_px_y=1.0, raw_dose=2e4, blur_px=0.0)
    x, y = _lag1(scan(air, square, np.random.default_rng(0), scanner)[..., 1].astype(np.float64))
    assert abs(x - y) < 0.08 and x > 0.3
    x, y = _lag1(scan(air, wide, np.random.default_rng(0), scanner)[..., 1].astype(np.float64))
    assert x > 0.3 and abs(y) < 0.08  # grain two pixels long along x, one pixel across
    assert wide.detector_grid(160, 120) == (80, 120) and square.detector_grid(160, 120) == (80, 60)
    shown = display_noise(np.full((120, 160, 2), RAW_AIR_LEVEL, np.uint16),
                          ScannerLook(detector_px=1.0, detector_px_y=2.0, dose_low=100.0, dose_high=100.0),
                          np.random.default_rng(1))
    x, y = _lag1(shown[..., 0].astype(np.float64))
    assert y > 0.3 and abs(x) < 0.08
    with pytest.raises(ValueError, match="detector_px_y"):
        ScannerLook(detector_px_y=0.5)
