"""Review tests of the synthesiser and TIP: independent physics checks (photon statistics, Beer–Lambert)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datasets.synth import tip
from datasets.synth.physics import build_scanner, render_raw
from datasets.synth.tip import TipItem, project_into_raw, project_random
from vision.colour import RAW_AIR_LEVEL, RAW_DARK_LEVEL

_DOSE = 2e4  # quanta per air pixel: render_raw's default and the synthesiser's raw dose
_GAIN = (RAW_AIR_LEVEL - RAW_DARK_LEVEL) / _DOSE  # raw counts per quantum


def _uniform_item(h: int, w: int) -> TipItem:
    basis = np.zeros((h, w, 2), np.float32)
    basis[..., 0], basis[..., 1] = 15.0, 0.5  # a thick organic block: T ≈ 0.05–0.1
    return TipItem("drug_package", "block", "cocaine", basis, np.ones((h, w), bool))


def _photon_noise_ratio(raw: np.ndarray) -> np.ndarray:
    """Per channel: variance of the counts over variance that photon statistics give at their mean (≈ 1)."""
    signal = raw.reshape(-1, 2).astype(np.float64) - RAW_DARK_LEVEL
    return signal.var(axis=0) / (_GAIN * signal.mean(axis=0))


def test_tip_into_raw_keeps_photon_statistics() -> None:
    """Multiplying noisy counts by T scales their variance by T², but counts behind the object are
    Poisson with variance ∝ T: the projected object must carry the noise of the quanta that reach it
    (binomial thinning), as the same object rendered into the bag does, or it shows as a smooth patch."""
    scanner = build_scanner()
    shape = (160, 160)
    bag_basis = np.zeros((*shape, 2), np.float32)
    bag_basis[..., 0] = 10.0
    bag = render_raw(bag_basis, rng=np.random.default_rng(0), dose=_DOSE, blur_px=0.0, scanner=scanner)
    assert np.allclose(_photon_noise_ratio(bag), 1.0, atol=0.1)
    item = _uniform_item(*shape)
    out = project_into_raw(bag, item, (0, 0), scanner=scanner, rng=np.random.default_rng(1), dose=_DOSE)
    fresh = render_raw(bag_basis + item.basis_cm, rng=np.random.default_rng(2), dose=_DOSE, blur_px=0.0, scanner=scanner)
    assert np.allclose(_photon_noise_ratio(fresh), 1.0, atol=0.1)
    assert np.allclose(_photon_noise_ratio(out), 1.0, atol=0.1), _photon_noise_ratio(out)


def test_project_random_into_raw_keeps_photon_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    scanner = build_scanner()
    shape = (200, 200)
    bag_basis = np.zeros((*shape, 2), np.float32)
    bag_basis[20:-20, 20:-20, 0] = 10.0
    bag = render_raw(bag_basis, rng=np.random.default_rng(0), dose=_DOSE, blur_px=0.0, scanner=scanner)
    monkeypatch.setattr(tip, "make_tip_item", lambda rng, class_name, pixel_mm: _uniform_item(60, 60))
    out, placed = project_random(np.random.default_rng(3), bag, kind="raw", classes=("drug_package",), pixel_mm=1.2,
                                 scanner=scanner)
    assert len(placed) == 1
    # Away from the item's edge, which the detector blur softens (its pixels are not one signal level).
    core = cv2.erode(placed[0].mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    inside = out[core]
    assert placed[0].mask.sum() == 3600 and inside.shape[0] == 54 * 54
    assert np.allclose(_photon_noise_ratio(inside), 1.0, atol=0.15), _photon_noise_ratio(inside)
    # Same seed, same scan: the same pixels.
    again, _ = project_random(np.random.default_rng(3), bag, kind="raw", classes=("drug_package",), pixel_mm=1.2,
                              scanner=scanner)
    assert np.array_equal(out, again)


def test_tip_item_is_not_hidden_in_unpenetrated_metal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bag region that no photon crosses (raw at the dark level, black on screen) still counts as bag,
    but an item projected there changes nothing: its label would ask a model to find what the scan does
    not show. Most of every placed item's footprint must lie where the scan is penetrated."""
    from datasets.synth.physics import basis_coefficients
    from vision.colour import raw_to_log_attenuation

    scanner = build_scanner()
    shape = (240, 320)
    basis = np.zeros((*shape, 2), np.float32)
    basis[20:-20, 20:-20, 0] = 5.0  # the bag and its contents
    pe, al = basis_coefficients("steel")
    basis[20:-20, 20:220] += np.float32([pe * 5.0, al * 5.0])  # 5 cm of steel over most of it: black
    bag = render_raw(basis, rng=np.random.default_rng(0), dose=_DOSE, blur_px=0.0, scanner=scanner)
    log_att = raw_to_log_attenuation(bag).mean(axis=2)
    assert log_att[30:-30, 30:210].mean() > 9.0 and (log_att[30:-30, 230:-30] < 2.0).all()
    monkeypatch.setattr(tip, "make_tip_item", lambda rng, class_name, pixel_mm: _uniform_item(40, 40))
    for seed in range(6):
        out, placed = project_random(np.random.default_rng(seed), bag, kind="raw", classes=("drug_package",),
                                     pixel_mm=1.2, scanner=scanner)
        assert len(placed) == 1
        mask = placed[0].mask
        assert (log_att[mask] < 8.0).mean() >= 0.5, f"seed {seed}: item placed in unpenetrated metal"
        changed = (out != bag).any(axis=2)
        assert changed[mask].mean() > 0.5


def test_table_follows_an_independent_beer_lambert_integral() -> None:
    """T_k = Σ S·D_k·exp(−μ(E)·t) / Σ S·D_k, with μ straight from xraydb (g/cm³, cm): the table agrees,
    thicker is darker, T stays in (0, 1], and the high channel is always the more transmissive."""
    import xraydb

    from datasets.synth.materials import material
    from datasets.synth.physics import basis_coefficients, lookup_log_attenuation

    scanner = build_scanner()
    energy_ev = scanner.energy_kev * 1000.0
    for name in ("water", "cocaine", "hydroxyapatite_collagen", "aluminium", "steel"):
        m = material(name)
        mu = xraydb.material_mu(m.formula, energy_ev, density=m.density_g_cm3)  # 1/cm
        pe, al = basis_coefficients(name)
        t_cm = np.array([0.1, 0.5, 1.0, 2.0] if name == "steel" else [0.5, 2.0, 5.0, 10.0])
        ref = np.stack([(w[None] * np.exp(-mu[None] * t_cm[:, None])).sum(axis=1)
                        for w in (scanner.weight_low, scanner.weight_high)], axis=-1)  # (n, 2) transmission
        basis = np.stack([pe * t_cm, al * t_cm], axis=-1)[None].astype(np.float32)
        table = np.exp(-lookup_log_attenuation(basis, scanner=scanner)[0].astype(np.float64))
        assert ((table > 0) & (table <= 1)).all()
        assert (table[:, 1] > table[:, 0]).all() and (ref[:, 1] > ref[:, 0]).all()
        assert (np.diff(table, axis=0) < 0).all()
        np.testing.assert_allclose(-np.log(table), -np.log(ref), rtol=0.03, atol=0.005, err_msg=name)
