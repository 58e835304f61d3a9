"""Physics core of the synthesiser: Beer–Lambert, basis table, rendering, Z_eff calibration."""

from __future__ import annotations

import numpy as np
import pytest
import xraydb

from datasets.synth.materials import MATERIALS
from datasets.synth.physics import (
    basis_coefficients,
    basis_from_log_attenuation,
    build_scanner,
    effective_atomic_number,
    log_attenuation_full,
    lookup_log_attenuation,
    monochromatic_scanner,
    raw_to_log_attenuation,
    render_raw,
    transmission_full,
    zeff_calibration,
)
from vision.colour import DEFAULT_ZEFF_KNOTS, RAW_AIR_LEVEL, RAW_DARK_LEVEL, zeff_from_log_attenuation


def _basis(thickness_cm_by_material: dict[str, np.ndarray]) -> np.ndarray:
    """Sum of basis thicknesses, (..., 2) float32 [pe_cm, al_cm]."""
    shape = np.shape(next(iter(thickness_cm_by_material.values())))
    out = np.zeros((*shape, 2), np.float64)
    for name, t in thickness_cm_by_material.items():
        a, b = basis_coefficients(name)
        out[..., 0] += a * np.asarray(t)
        out[..., 1] += b * np.asarray(t)
    return out.astype(np.float32)


def test_monochromatic_beam_through_water_follows_beer_lambert() -> None:
    mono = monochromatic_scanner(60.0)
    t_low, t_high = transmission_full({"water": np.array([5.0])}, scanner=mono)
    expected = np.exp(-xraydb.material_mu("H2O", 60000.0, density=1.0) * 5.0)
    assert t_low[0] == pytest.approx(expected, rel=0.02)
    assert t_high[0] == pytest.approx(expected, rel=0.02)


def test_polychromatic_beam_hardens() -> None:
    # The effective μ of water falls with thickness, and the high channel sees a harder beam.
    log_att = log_attenuation_full({"water": np.array([1.0, 30.0])})
    mu_eff = log_att / np.array([[1.0], [30.0]])
    assert mu_eff[1, 0] < mu_eff[0, 0] and mu_eff[1, 1] < mu_eff[0, 1]
    assert np.all(log_att[:, 0] > log_att[:, 1])


def test_basis_materials_decompose_onto_themselves() -> None:
    assert basis_coefficients("polyethylene") == pytest.approx((1.0, 0.0), abs=1e-6)
    assert basis_coefficients("aluminium") == pytest.approx((0.0, 1.0), abs=1e-6)
    # Organics are mostly PE, metals have a negative PE part and a large Al part.
    pe, al = basis_coefficients("water")
    assert 0.8 < pe < 1.1 and 0.0 < al < 0.1
    pe, al = basis_coefficients("iron")
    assert pe < -20 and al > 15


def test_every_material_has_a_finite_decomposition() -> None:
    for name in MATERIALS:
        pe, al = basis_coefficients(name)
        assert np.isfinite(pe) and np.isfinite(al), name
        assert al >= -0.01, name  # no physical material is "negative aluminium"


def test_lut_agrees_with_full_integral_on_random_mixtures() -> None:
    rng = np.random.default_rng(7)
    n = 600
    thickness = {
        "water": rng.uniform(0, 30, n) * (rng.random(n) < 0.7),
        "aluminium": rng.uniform(0, 3, n) * (rng.random(n) < 0.5),
        "iron": rng.uniform(0, 1.5, n) * (rng.random(n) < 0.4),
        "cotton": rng.uniform(0, 40, n),
    }
    full = log_attenuation_full(thickness)
    fast = lookup_log_attenuation(_basis(thickness)[None])[0]
    # Past L_high ≈ 8 the pixel is black (T < 3e-4) and the exact value no longer matters.
    visible = full[:, 1] < 8.0
    assert visible.sum() > 400
    err = np.abs(fast[visible] - full[visible])
    assert np.all(err <= 0.01 * full[visible] + 0.003), err.max()


def test_zeff_orders_materials() -> None:
    # Thicknesses giving similar high-energy attenuation (L_high ≈ 1–1.5).
    thickness = {"polyethylene": 8.0, "water": 7.0, "cocaine": 5.0, "aluminium": 2.0, "iron": 0.4}
    zeffs = []
    for name, t_cm in thickness.items():
        log_att = log_attenuation_full({name: np.full((1, 1), t_cm)}).astype(np.float32)
        zeffs.append(float(zeff_from_log_attenuation(log_att, zeff_knots=zeff_calibration())[0, 0]))
    assert zeffs == sorted(zeffs), dict(zip(thickness, zeffs))
    assert zeffs[0] < 6.5 and zeffs[-1] > 22


def test_zeff_is_stable_over_thickness() -> None:
    # The 2-D table removes most beam-hardening drift: iron reads as iron from 1 mm to 1.5 cm.
    log_att = log_attenuation_full({"iron": np.array([[0.1, 0.5, 1.5]])}).astype(np.float32)
    z = zeff_from_log_attenuation(log_att, zeff_knots=zeff_calibration())
    assert np.all(np.abs(z - 26.0) < 1.5), z


def test_default_zeff_knots_match_the_default_scanner() -> None:
    fresh = zeff_calibration()
    assert len(fresh) == len(DEFAULT_ZEFF_KNOTS)
    for (lvl_a, r_a, z_a), (lvl_b, r_b, z_b) in zip(fresh, DEFAULT_ZEFF_KNOTS, strict=True):
        assert lvl_a == lvl_b and z_a == z_b
        assert np.allclose(r_a, r_b, atol=2e-3)
        assert all(isinstance(x, float) for x in r_a)  # plain numbers, storable in JSON/metadata


def test_effective_atomic_number_of_known_compounds() -> None:
    assert effective_atomic_number("H2O") == pytest.approx(7.42, abs=0.05)
    assert effective_atomic_number("C2H4") == pytest.approx(5.44, abs=0.05)
    assert effective_atomic_number("Fe") == pytest.approx(26.0)


def test_render_raw_levels_noise_and_reproducibility() -> None:
    basis = np.zeros((64, 64, 2), np.float32)
    basis[:, 32:] = _basis({"lead": np.full((64, 32), 3.0)})
    raw = render_raw(basis, rng=np.random.default_rng(1), dose=2e4, blur_px=0.0)
    assert raw.dtype == np.uint16 and raw.shape == (64, 64, 2)
    air = raw[:, :32].astype(np.float64)
    assert air.mean() == pytest.approx(RAW_AIR_LEVEL, rel=0.005)
    # Quantum noise: σ = √dose quanta, times the gain to raw units.
    expected_sigma = np.sqrt(2e4) * (RAW_AIR_LEVEL - RAW_DARK_LEVEL) / 2e4
    assert air.std() == pytest.approx(expected_sigma, rel=0.1)
    assert raw[:, 40:].mean() < RAW_DARK_LEVEL + 50  # 3 cm lead: nothing gets through
    again = render_raw(basis, rng=np.random.default_rng(1), dose=2e4, blur_px=0.0)
    assert np.array_equal(raw, again)


def test_raw_to_log_attenuation_inverts_render() -> None:
    thickness = {"water": np.linspace(0, 20, 32)[None, :].repeat(4, 0)}
    basis = _basis(thickness)
    raw = render_raw(basis, rng=np.random.default_rng(2), dose=1e9, blur_px=0.0)
    recovered = raw_to_log_attenuation(raw)
    assert np.allclose(recovered, lookup_log_attenuation(basis), atol=2e-3)


def test_blur_spreads_an_edge() -> None:
    basis = np.zeros((16, 32, 2), np.float32)
    basis[:, 16:] = _basis({"iron": np.full((16, 16), 1.0)})
    sharp = render_raw(basis, rng=np.random.default_rng(3), dose=1e9, blur_px=0.0)
    blurred = render_raw(basis, rng=np.random.default_rng(3), dose=1e9, blur_px=2.0)
    assert sharp[:, 14, 1].mean() == pytest.approx(RAW_AIR_LEVEL, rel=1e-3)
    assert blurred[:, 14, 1].mean() < 0.9 * RAW_AIR_LEVEL


def test_basis_from_log_attenuation_round_trip() -> None:
    thickness = {"water": np.array([[0.0, 5.0, 20.0, 0.0, 10.0]]), "iron": np.array([[0.0, 0.0, 0.0, 0.5, 0.2]])}
    basis = _basis(thickness)
    recovered = basis_from_log_attenuation(lookup_log_attenuation(basis))
    assert np.allclose(recovered, basis, atol=0.1)


def test_build_scanner_is_cached_and_configurable() -> None:
    assert build_scanner() is build_scanner()
    soft = build_scanner(kvp=120.0)
    water = {"water": np.array([10.0])}
    # A softer beam is attenuated more.
    assert np.all(log_attenuation_full(water, scanner=soft) > log_attenuation_full(water))


def test_scanner_cache_on_disk_is_bit_identical_and_survives_corruption(tmp_path, monkeypatch) -> None:
    from datasets.synth import physics
    from datasets.synth.detector import ScannerConfig

    monkeypatch.setenv(physics.CACHE_ENV, str(tmp_path))
    config = ScannerConfig(kvp=140.0)
    build = physics._build_scanner_cached.__wrapped__  # past the in-memory cache
    fresh = build(config)
    files = list(tmp_path.glob("scanner-*.npz"))
    assert len(files) == 1
    loaded = physics._load_cached(files[0], config)
    assert loaded is not None
    for name in physics._CACHED_ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(fresh, name))
    assert loaded.basis_table == fresh.basis_table and set(loaded.basis_table) == set(MATERIALS)
    # Another config is another file; a damaged file is rebuilt, not trusted.
    assert physics._cache_key(ScannerConfig(kvp=150.0)) != physics._cache_key(config)
    files[0].write_bytes(b"not an npz")
    assert physics._load_cached(files[0], config) is None
    again = build(config)
    np.testing.assert_array_equal(again.lut, fresh.lut)
    assert physics._load_cached(files[0], config) is not None
    monkeypatch.setenv(physics.CACHE_ENV, "off")
    assert physics.cache_dir() is None


def test_material_formulas_are_read_as_formulas() -> None:
    # xraydb.material_mu first matches its own material names and formulas case-insensitively;
    # check that every table entry is computed from its own formula (sum over elements of μ/ρ).
    from datasets.synth.detector import linear_mu_per_cm

    energy_kev = np.array([30.0, 60.0, 120.0])
    for m in MATERIALS.values():
        parts = xraydb.chemparse(m.formula)
        mass = {el: n * xraydb.atomic_mass(el) for el, n in parts.items()}
        mu_rho = sum(mass[el] * xraydb.mu_elam(el, energy_kev * 1000.0) for el in parts) / sum(mass.values())
        assert np.allclose(linear_mu_per_cm(m.formula, m.density_g_cm3, energy_kev), m.density_g_cm3 * mu_rho,
                           rtol=1e-9), m.name
