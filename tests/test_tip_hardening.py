"""TIP into raw scans behind the bag's own material: the beam hardens in the bag, so an item adds what the
scanner would show of it there (bag and item rendered together), not its own log-attenuation alone."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.synth.physics import build_scanner, render_raw
from datasets.synth.tip import TipItem, added_behind, project_into_raw
from vision.colour import RAW_DARK_LEVEL, raw_to_log_attenuation


def _noise_free(basis: np.ndarray) -> np.ndarray:
    return render_raw(basis, rng=np.random.default_rng(0), dose=1e12, blur_px=0.0, electronic_noise_counts=0.0)


def _block(h: int, w: int, pe_cm: float, al_cm: float) -> TipItem:
    basis = np.zeros((h, w, 2), np.float32)
    basis[..., 0], basis[..., 1] = pe_cm, al_cm
    return TipItem("drug_package", "block", "cocaine", basis, np.ones((h, w), bool))


@pytest.mark.parametrize(("bag_cm", "item_cm"), [
    ((10.0, 0.0), (10.0, 0.0)),  # 10 cm of plastic onto 10 cm of clothes
    ((2.0, 1.5), (5.0, 0.2)),  # a drug package under a metal plate (1.5 cm aluminium-equivalent)
    ((25.0, 0.5), (3.0, 0.0)),  # a thin packet in a dense, packed bag
    ((-59.24, 27.14), (-2.44, 2.39)),  # 2 cm of ivory under 1 cm of steel: adding log-attenuations gave 2x
])
def test_an_item_projected_behind_the_bag_matches_rendering_them_together(bag_cm, item_cm):
    scanner = build_scanner()
    shape, offset = (80, 90), (20, 25)
    bag = np.zeros((*shape, 2), np.float32)
    bag[5:-5, 5:-5] = bag_cm
    item = _block(40, 40, *item_cm)
    projected = project_into_raw(_noise_free(bag), item, offset, scanner=scanner, blur_px=0.0)
    together = bag.copy()
    together[20:60, 25:65] += item.basis_cm
    rendered = _noise_free(together)
    inner = np.s_[24:56, 29:61]
    signal = [(a[inner].astype(np.float64) - RAW_DARK_LEVEL).mean(axis=(0, 1)) for a in (projected, rendered)]
    np.testing.assert_allclose(signal[0], signal[1], rtol=0.01)
    outside = np.ones(shape, bool)
    outside[20:60, 25:65] = False
    assert np.array_equal(projected[outside], _noise_free(bag)[outside])  # the rest of the scan is untouched


def test_behind_nothing_the_item_adds_its_own_attenuation_and_never_less_than_nothing():
    scanner = build_scanner()
    item = np.zeros((30, 30, 2), np.float32)
    item[10:20, 10:20] = (6.0, 0.4)
    from datasets.synth.physics import lookup_log_attenuation

    alone = lookup_log_attenuation(item, scanner=scanner)
    air = _noise_free(np.zeros((30, 30, 2), np.float32))
    np.testing.assert_allclose(added_behind(raw_to_log_attenuation(air), item, scanner=scanner), alone, atol=2e-3)
    noisy = render_raw(np.full((30, 30, 2), (8.0, 0.3), np.float32), rng=np.random.default_rng(1), dose=2e3)
    added = added_behind(raw_to_log_attenuation(noisy), item, scanner=scanner, dose=2e3)
    assert (added >= 0).all() and (added[item == 0] == 0).all()
    assert (added[10:20, 10:20] < alone[10:20, 10:20]).all()  # behind 8 cm of plastic the beam is harder


def test_into_a_false_colour_scan_the_item_adds_what_rendering_them_together_shows():
    """A real dataset's scans are false colour: the palette's inverse reads their pseudo log-attenuation,
    and the item adds what it adds behind it (here the same bag rendered by the synthesiser, so the truth is
    known), not its own attenuation alone."""
    from datasets.synth.tip import item_log_attenuation, project_into_false_colour
    from vision.colour import false_colour_to_pseudo_log_attenuation, project_log_attenuation, render_false_colour

    scanner = build_scanner()
    shape, offset = (80, 90), (20, 25)
    bag = np.zeros((*shape, 2), np.float32)
    bag[5:-5, 5:-5] = (14.0, 0.3)  # a well-packed bag of clothes
    item = _block(40, 40, 6.0, 0.1)
    together = bag.copy()
    together[20:60, 25:65] += item.basis_cm
    rgb_bag = render_false_colour(_noise_free(bag), palette="sixray")
    truth = false_colour_to_pseudo_log_attenuation(render_false_colour(_noise_free(together), palette="sixray"))
    new = false_colour_to_pseudo_log_attenuation(
        project_into_false_colour(rgb_bag, item, offset, palette="sixray", scanner=scanner, blur_px=0.0))
    alone = item_log_attenuation(item, offset, shape, scanner=scanner, blur_px=0.0)
    old = false_colour_to_pseudo_log_attenuation(project_log_attenuation(rgb_bag, alone, "sixray"))
    inner = np.s_[24:56, 29:61]
    err_new = np.abs(new[inner].mean(axis=(0, 1)) - truth[inner].mean(axis=(0, 1)))
    err_old = np.abs(old[inner].mean(axis=(0, 1)) - truth[inner].mean(axis=(0, 1)))
    assert (err_new < 0.02).all() and (err_old > 2 * err_new).all(), (err_new, err_old)
