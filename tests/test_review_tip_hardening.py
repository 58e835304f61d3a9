"""Review tests of d3f5ef9 (TIP into raw scans with beam hardening, `datasets.synth.tip.added_behind`).

Each test fails on the code as reviewed and names the fault in its docstring. The reference is the
synthesiser itself: the bag's basis and the item's rendered together (`physics.lookup_log_attenuation`).
"""

from __future__ import annotations

import cv2
import numpy as np

from datasets.synth.physics import basis_coefficients, build_scanner, lookup_log_attenuation, render_raw
from datasets.synth.tip import UNPENETRATED_LOG_ATT, TipItem, added_behind, project_into_raw
from vision.colour import RAW_DARK_LEVEL, raw_to_log_attenuation


def _block(h: int, w: int, basis_cm) -> TipItem:
    basis = np.zeros((h, w, 2), np.float32)
    basis[...] = basis_cm
    return TipItem("cash_bundle", "block", "banknote_paper", basis, np.ones((h, w), bool))


def test_an_item_projected_into_noisy_air_keeps_its_own_attenuation() -> None:
    """`added_behind`'s contract (and the commit's "In air unchanged"): in air the item adds its own
    log-attenuation. In a real (noisy) scan's air the smoothed log-attenuation is ±0.001 with random
    low/high ratio; `physics.basis_from_log_attenuation` maps much of it to unphysical basis points
    (PE down to −0.4 cm with Al clamped at 0), where the table is clamped to L = 0. Then
    L(bag + item) − L(bag) = L(item − 0.4 cm PE): a 0.5 cm organic item (a wad of notes, a layer of
    scales) adds as little as a quarter of its attenuation in blotches σ ≈ 2 px over about a quarter of
    its footprint (mean 6 % light). The old additive projection was exact there. The same happens over
    near-air (bag fabric under ~0.05 cm PE) and air holes inside the bag region (`bag_region` fills them)."""
    scanner = build_scanner()
    air = render_raw(np.zeros((100, 100, 2), np.float32), rng=np.random.default_rng(1), scanner=scanner)
    item = _block(80, 80, (0.5, 0.0))
    projected = project_into_raw(air, item, (10, 10), scanner=scanner, blur_px=0.0)
    own = lookup_log_attenuation(item.basis_cm, scanner=scanner)  # what the old code multiplied in
    inner = np.s_[12:88, 12:88]
    signal_before = air[inner].astype(np.float64) - RAW_DARK_LEVEL
    signal_after = projected[inner].astype(np.float64) - RAW_DARK_LEVEL
    added = -np.log(signal_after / signal_before)  # what the projection multiplied in, per pixel
    rel_err = np.abs(added / own[2:78, 2:78] - 1.0)
    assert rel_err.max() < 0.05, (f"added/own per pixel: min {float((added / own[2:78, 2:78]).min()):.2f}, "
                                  f"{float((rel_err > 0.05).mean()):.0%} of the item off by > 5 %")


def test_an_item_behind_a_penetrated_metal_plate_gets_no_blotchy_noise() -> None:
    """Ivory hidden under a dense item (concealment "under_dense"): behind 2.2 cm of steel the scan is
    penetrated (smoothed mean L ≈ 6.7 < `UNPENETRATED_LOG_ATT`, so `project_random` places items there)
    but its low channel keeps ~10 quanta. The basis inverse of the σ = 2 px smoothed scan is ill-conditioned
    there (steel's iso-attenuation direction: the inverted PE spans −200 (the table's clamp) to −60 cm for
    a uniform −130 cm plate), so a *uniform* 2 cm ivory block adds a ΔL_high that varies by sd ≈ 0.18
    (on 0.60) in blotches σ ≈ 2 px: more than the scan's own per-pixel quantum noise (0.11), and far more
    at the blotches' scale, a texture no scanner shows (the item's quantum noise is added separately, by
    binomial thinning). Rendering bag and item together gives a uniform ΔL; the old additive projection
    too (sd 0)."""
    scanner = build_scanner()
    steel = np.asarray(basis_coefficients("steel"), np.float32)
    ivory = np.asarray(basis_coefficients("hydroxyapatite_collagen"), np.float32)
    bag = np.zeros((80, 80, 2), np.float32)
    bag[...] = 2.2 * steel
    raw = render_raw(bag, rng=np.random.default_rng(0), scanner=scanner)
    log_att = raw_to_log_attenuation(raw)
    assert (cv2.blur(log_att.mean(axis=2), (5, 5)) < UNPENETRATED_LOG_ATT).all()  # placeable: "penetrated"
    item = np.zeros_like(bag)
    item[10:70, 10:70] = 2.0 * ivory
    truth = (lookup_log_attenuation(bag + item, scanner=scanner) - lookup_log_attenuation(bag, scanner=scanner))[40, 40]
    added = added_behind(raw_to_log_attenuation(raw), item, scanner=scanner)[12:68, 12:68, 1]
    scan_noise = float(log_att[12:68, 12:68, 1].std())
    assert float(added.std()) <= scan_noise, (
        f"ΔL_high over a uniform item: sd {float(added.std()):.3f} (truth {float(truth[1]):.3f}, uniform), "
        f"range {float(added.min()):.2f}..{float(added.max()):.2f}; the scan's own per-pixel noise {scan_noise:.3f}")
