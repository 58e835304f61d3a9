"""Tube spectrum and dual-layer detector response of a cabin-baggage line scanner.

The scanner (DESIGN.md §4) is a tungsten tube feeding a fan beam through the tunnel onto an L-shaped
line array of dual-energy "sandwich" detectors: a thin front scintillator (low-energy channel), a copper
filter, then a thick rear scintillator (high-energy channel). Both channels integrate energy, so a photon
of energy E absorbed in a layer contributes in proportion to E.

Numbers chosen (all configurable in `ScannerConfig`):
- 150 kVp: the middle of what cabin scanners run (Smiths HI-SCAN 6040 140 kV, Rapiscan 620 160 kV).
- Anode angle 12°, typical of compact industrial tungsten tubes; spekpy models the heel effect from it.
- Filtration 3 mm Al: ~2 mm Al-equivalent inherent (glass/metal window, cooling oil, monoblock wall) plus
  ~1 mm Al-equivalent for the tunnel curtain and conveyor belt, which every ray (air included) crosses.
  No copper pre-filter: dual-energy material discrimination lives on the 20–60 keV photons that the
  low layer sees, and a Cu pre-filter (used in single-energy and cargo systems) would strip them.
- Low layer 0.4 mm CsI(Tl), interlayer filter 0.5 mm Cu, high layer 3 mm CdWO4: the ranges used in
  commercial sandwich arrays (front 0.2–0.6 mm, filter 0.3–1 mm Cu, rear 2–5 mm). With these the
  detected mean energies are ≈ 61 keV (low) and ≈ 97 keV (high).
- Energy bins of 1 keV from 10 keV to kVp: below 10 keV nothing survives 3 mm Al (T < 1e-10).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layer:
    """A slab in the beam: xraydb formula, density g/cm³, thickness mm."""

    formula: str
    density_g_cm3: float
    thickness_mm: float


@dataclass(frozen=True)
class ScannerConfig:
    """Everything that fixes a scanner's spectral response. Hashable, so builders can cache on it."""

    kvp: float = 150.0
    anode_angle_deg: float = 12.0
    #: Filters between the focal spot and the bag, as (spekpy material name, mm).
    tube_filters_mm: tuple[tuple[str, float], ...] = (("Al", 3.0),)
    low_layer: Layer = Layer("CsI", 4.51, 0.4)
    interlayer_filter: Layer = Layer("Cu", 8.96, 0.5)
    high_layer: Layer = Layer("CdWO4", 7.9, 3.0)
    energy_min_kev: float = 10.0
    energy_step_kev: float = 1.0


def linear_mu_per_cm(formula: str, density_g_cm3: float, energy_kev: np.ndarray) -> np.ndarray:
    """Linear attenuation coefficient μ (1/cm) of a material, shape of `energy_kev`.

    Uses xraydb's `material_mu` (Elam tables, total cross-section incl. coherent scatter: a
    collimated line detector rejects most scatter, so scattered photons count as removed).
    """
    import xraydb  # imported here: it takes a second, and a cached scanner never needs it

    energy_ev = np.asarray(energy_kev, dtype=np.float64) * 1000.0
    return np.asarray(xraydb.material_mu(formula, energy_ev, density=density_g_cm3), dtype=np.float64)


def tube_spectrum(config: ScannerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Filtered tube spectrum. Returns (energy_kev (N,), fluence (N,)) in photons/keV/cm²/mAs at 1 m.

    Bins are `energy_step_kev` wide, centred, from `energy_min_kev` up to kVp.
    """
    import spekpy  # imported here: it takes a second, and a cached scanner never needs it

    spek = spekpy.Spek(kvp=config.kvp, th=config.anode_angle_deg, dk=config.energy_step_kev)
    for material_name, thickness_mm in config.tube_filters_mm:
        if thickness_mm > 0:
            spek.filter(material_name, thickness_mm)
    energy_kev, fluence = spek.get_spectrum()
    keep = energy_kev >= config.energy_min_kev
    return np.asarray(energy_kev[keep], np.float64), np.asarray(fluence[keep], np.float64)


def _absorbed_fraction(layer: Layer, energy_kev: np.ndarray) -> np.ndarray:
    return 1.0 - np.exp(-linear_mu_per_cm(layer.formula, layer.density_g_cm3, energy_kev) * layer.thickness_mm / 10.0)


def _transmitted_fraction(layer: Layer, energy_kev: np.ndarray) -> np.ndarray:
    return np.exp(-linear_mu_per_cm(layer.formula, layer.density_g_cm3, energy_kev) * layer.thickness_mm / 10.0)


def detector_response(config: ScannerConfig, energy_kev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energy response D_k(E) of the two channels (absorbed fraction × E, keV), each shape (N,).

    The high layer sees what crossed the low layer and the copper filter.
    """
    low = _absorbed_fraction(config.low_layer, energy_kev) * energy_kev
    reaching_high = _transmitted_fraction(config.low_layer, energy_kev) * _transmitted_fraction(
        config.interlayer_filter, energy_kev
    )
    high = reaching_high * _absorbed_fraction(config.high_layer, energy_kev) * energy_kev
    return low, high


def channel_weights(config: ScannerConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin weights S(E)·D_k(E) of both channels, each normalised to sum 1.

    Returns (energy_kev (N,), weight_low (N,), weight_high (N,)); a channel's transmission through
    an object with μ(E)·t is then Σ_E w_k(E)·exp(−μ(E)·t).
    """
    energy_kev, fluence = tube_spectrum(config)
    d_low, d_high = detector_response(config, energy_kev)
    w_low = fluence * d_low
    w_high = fluence * d_high
    return energy_kev, w_low / w_low.sum(), w_high / w_high.sum()
