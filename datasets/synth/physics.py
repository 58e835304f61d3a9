"""Physics core of the dual-energy synthesiser: Beer–Lambert, basis decomposition, fast rendering, Z_eff.

Each channel k ∈ {low, high} of the scanner (see `detector.py` for the spectrum and detector numbers)
measures  T_k = Σ_E w_k(E) · exp(−Σ_m μ_m(E) · t_m),  with w_k = S(E)·D_k(E) normalised over 1 keV bins.

Speed comes from the Alvarez–Macovski basis decomposition (DESIGN.md §4): every material is replaced
once by (a, b) cm of polyethylene and aluminium per cm of material, per-pixel basis thicknesses are
summed, and a 2-D table over (PE cm, Al cm) gives −ln T_low and −ln T_high by bilinear interpolation.

The fit of (a, b): a plain least-squares fit of μ_m(E) ≈ a·μ_PE(E) + b·μ_Al(E) weighted by the incident
spectrum is good for organics but off by 5–20 % for iron and copper, whose photoelectric energy
dependence differs from aluminium's. So the fit is weighted by the *detected* spectrum: for each
channel and for thicknesses of the material giving high-energy log-attenuations 0.2, 0.7, 1.5 and 3,
the spectral average of μ under the spectrum that reaches that channel behind that thickness is
matched (a linear least-squares problem in (a, b), residuals relative). This is the first-order
condition for matching both channels' log-attenuation at those thicknesses; the table then agrees with
the full integral to ≲ 0.5 % for everything up to zinc (Z = 30). Lead and tungsten, whose K-edges (88,
69 keV) sit inside the spectrum, cannot be written on a PE/Al basis (errors 10–50 %); they are opaque
beyond ~1 mm anyway, which is what the table gives them.

Metals get a negative PE coefficient (iron ≈ −60 cm PE + 27 cm Al per cm), so the table spans PE
from −200 cm: any physical sum of materials stays where total μ(E) > 0.

Quantum noise: `dose` is the number of (Swank-corrected, effective) quanta an air pixel collects per
channel; counts N = dose·T get Gaussian noise of variance N (+ a small electronic floor), the standard
approximation of Poisson statistics when N ≳ 20 (below that pixels are black anyway). Blur (focal spot
and scintillator light spread) is applied to the transmission before noise, so noise stays white as in
real line arrays whose pixels are read independently.

Z_eff: R = L_low / L_high rises with atomic number but also falls with thickness (beam hardening), so
the calibration is a 2-D table: for several L_high levels, the ratio R of reference materials (pure
elements and compounds, Z_eff by the Mayneord power law, exponent 2.94) at the thickness giving that
level. It is stored as plain numbers (`ZeffKnots`) so that `vision.colour` can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from datasets.synth.detector import ScannerConfig, channel_weights, linear_mu_per_cm
from datasets.synth.materials import MATERIALS, material
from vision.colour import RAW_AIR_LEVEL, RAW_DARK_LEVEL, ZeffKnots, raw_to_log_attenuation

__all__ = [
    "ScannerModel",
    "basis_coefficients",
    "basis_coefficients_for",
    "basis_from_log_attenuation",
    "build_scanner",
    "effective_atomic_number",
    "log_attenuation_full",
    "lookup_log_attenuation",
    "monochromatic_scanner",
    "raw_to_log_attenuation",
    "render_raw",
    "transmission_full",
    "zeff_calibration",
]

# Basis materials, as in materials.py.
_PE = ("C2H4", 0.94)
_AL = ("Al", 2.70)
# Table grid (cm). PE from −200: 3.3 cm of steel is −200 cm PE + 90 cm Al. 0.5 × 0.1 cm cells keep
# bilinear error and cv2.remap's 1/32-cell position rounding below ~0.002 in log-attenuation, under
# the quantum noise of an air pixel at dose 2e4 (0.007).
_LUT_PE_CM = (-200.0, 100.0, 0.5)
_LUT_AL_CM = (0.0, 100.0, 0.1)
#: Log-attenuation cap: T = e^-25 ≈ 1e-11, far below one photon at any dose the scanner uses.
MAX_LOG_ATTENUATION = 25.0
# High-energy log-attenuations at which basis fits and the Z_eff table are evaluated.
_FIT_LEVELS = (0.2, 0.7, 1.5, 3.0)
_ZEFF_LEVELS = (0.05, 0.15, 0.3, 0.6, 1.0, 1.5, 2.0, 3.0, 4.0, 5.5, 7.0)
# Reference materials for Z_eff calibration: (formula, density g/cm³). Light elements and compounds
# fill the organic range, Mg–Si the "mixed" range, Ca/Ti/Fe/Cu/Zn the metals.
_ZEFF_REFERENCES: tuple[tuple[str, float], ...] = (
    ("C2H4", 0.94),  # polyethylene, 5.44
    ("C", 1.70),  # graphite, 6
    ("C5H8O2", 1.18),  # PMMA, 6.47
    ("H2O", 1.00),  # water, 7.42
    ("C2F4", 2.20),  # teflon, 8.43
    ("NaF", 2.56),  # ≈ 10
    ("Na", 0.97),
    ("SiO2", 2.20),  # glass, ≈ 11.6
    ("Mg", 1.74),
    ("Al", 2.70),
    ("Si", 2.33),
    ("S", 2.07),
    ("Ca", 1.55),
    ("Ti", 4.50),
    ("Fe", 7.87),
    ("Cu", 8.96),
    ("Zn", 7.14),
)


@dataclass(frozen=True, eq=False)
class ScannerModel:
    """A scanner's spectral response and its precomputed basis table. Build with `build_scanner`.

    Attributes: energy_kev, weight_low, weight_high, mu_pe_per_cm, mu_al_per_cm: (N,) float64 over the
    energy bins; lut: (n_pe, n_al, 2) float32 log-attenuation (low, high) on the grid
    pe_cm[i] = lut_pe_start_cm + i·lut_pe_step_cm, al_cm[j] = lut_al_start_cm + j·lut_al_step_cm;
    lut_jacobian: (n_pe, n_al, 4) float32 d(L_low, L_high)/d(pe, al) as (dLl/dpe, dLl/dal, dLh/dpe, dLh/dal).
    """

    config: ScannerConfig | None
    energy_kev: np.ndarray
    weight_low: np.ndarray
    weight_high: np.ndarray
    mu_pe_per_cm: np.ndarray
    mu_al_per_cm: np.ndarray
    lut_pe_start_cm: float
    lut_pe_step_cm: float
    lut_al_start_cm: float
    lut_al_step_cm: float
    lut: np.ndarray
    lut_jacobian: np.ndarray
    _mu_cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    #: Basis coefficients (cm PE, cm Al per cm) of the material table, filled when the model is built
    #: or loaded from the cache (`basis_coefficients`), so workers never need xraydb.
    basis_table: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)

    def mu_per_cm(self, material_name: str) -> np.ndarray:
        """μ (1/cm) of a named material (materials.py, nominal density) on this scanner's bins, (N,)."""
        mu = self._mu_cache.get(material_name)
        if mu is None:
            m = material(material_name)
            mu = linear_mu_per_cm(m.formula, m.density_g_cm3, self.energy_kev)
            self._mu_cache[material_name] = mu
        return mu


def _log_attenuation(weights: np.ndarray, mu_t: np.ndarray) -> np.ndarray:
    """−ln Σ_E w(E) exp(−mu_t[..., E]) without underflow.

    weights (N,) or (N, K) for K channels at once; mu_t (..., N) → (...) or (..., K) float64.
    """
    shift = mu_t.min(axis=-1, keepdims=True)
    total = np.exp(-(mu_t - shift)) @ weights
    return (shift if total.ndim == mu_t.ndim else shift[..., 0]) - np.log(total)


def _build_lut(energy_kev: np.ndarray, w_low: np.ndarray, w_high: np.ndarray, mu_pe: np.ndarray,
               mu_al: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pe_cm = np.arange(_LUT_PE_CM[0], _LUT_PE_CM[1] + 1e-9, _LUT_PE_CM[2])
    al_cm = np.arange(_LUT_AL_CM[0], _LUT_AL_CM[1] + 1e-9, _LUT_AL_CM[2])
    lut = np.empty((pe_cm.size, al_cm.size, 2), np.float64)
    pe_part = pe_cm[:, None] * mu_pe[None, :]  # (n_pe, N)
    weights = np.stack([w_low, w_high], axis=1)  # (N, 2): both channels share the exponentials
    for j, al in enumerate(al_cm):
        lut[:, j, :] = _log_attenuation(weights, pe_part + al * mu_al[None, :])
    # Cells with negative total μ (far-negative PE, little Al) are unreachable by physical objects;
    # clamping them keeps interpolation at the boundary of the physical region sane.
    np.clip(lut, 0.0, MAX_LOG_ATTENUATION, out=lut)
    d_pe = np.gradient(lut, _LUT_PE_CM[2], axis=0)
    d_al = np.gradient(lut, _LUT_AL_CM[2], axis=1)
    jac = np.stack([d_pe[..., 0], d_al[..., 0], d_pe[..., 1], d_al[..., 1]], axis=-1)
    return lut.astype(np.float32), jac.astype(np.float32)


def _model_from_weights(config: ScannerConfig | None, energy_kev: np.ndarray, w_low: np.ndarray,
                        w_high: np.ndarray) -> ScannerModel:
    mu_pe = linear_mu_per_cm(*_PE, energy_kev)
    mu_al = linear_mu_per_cm(*_AL, energy_kev)
    lut, jac = _build_lut(energy_kev, w_low, w_high, mu_pe, mu_al)
    return ScannerModel(config, energy_kev, w_low, w_high, mu_pe, mu_al, _LUT_PE_CM[0], _LUT_PE_CM[2],
                        _LUT_AL_CM[0], _LUT_AL_CM[2], lut, jac)


#: Environment variable naming the folder of the on-disk scanner cache; "off" disables it.
CACHE_ENV = "XSCREEN_CACHE_DIR"


def cache_dir() -> Path | None:
    """The on-disk cache folder: $XSCREEN_CACHE_DIR, else $XDG_CACHE_HOME/xscreen, else ~/.cache/xscreen;
    None when XSCREEN_CACHE_DIR is "off"."""
    value = os.environ.get(CACHE_ENV)
    if value == "off":
        return None
    if value:
        return Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xscreen"


def _cache_key(config: ScannerConfig) -> str:
    """A digest of everything a scanner model is computed from: the config, the physics code and
    material table, and the versions of the libraries that supply spectra and cross-sections."""
    h = hashlib.sha256(repr(config).encode())
    for name in ("detector.py", "physics.py", "materials.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    for package in ("numpy", "xraydb", "spekpy"):
        h.update(importlib.metadata.version(package).encode())
    return h.hexdigest()[:32]


_CACHED_ARRAYS = ("energy_kev", "weight_low", "weight_high", "mu_pe_per_cm", "mu_al_per_cm", "lut", "lut_jacobian")


def _load_cached(path: Path, config: ScannerConfig) -> ScannerModel | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in (*_CACHED_ARRAYS, "basis_names", "basis_coef")}
    except (OSError, KeyError, ValueError, EOFError):  # absent, unreadable or an older layout: rebuild
        return None
    model = ScannerModel(config, arrays["energy_kev"], arrays["weight_low"], arrays["weight_high"],
                         arrays["mu_pe_per_cm"], arrays["mu_al_per_cm"], _LUT_PE_CM[0], _LUT_PE_CM[2],
                         _LUT_AL_CM[0], _LUT_AL_CM[2], arrays["lut"], arrays["lut_jacobian"])
    for name, (pe, al) in zip(arrays["basis_names"].tolist(), arrays["basis_coef"].tolist()):
        model.basis_table[str(name)] = (float(pe), float(al))
    return model


def _fill_basis_table(model: ScannerModel) -> None:
    for name in MATERIALS:
        model.basis_table[name] = basis_coefficients_for(model, model.mu_per_cm(name))


def _save_cached(path: Path, model: ScannerModel) -> None:
    names = list(model.basis_table)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: getattr(model, k) for k in _CACHED_ARRAYS}, basis_names=np.array(names, dtype=str),
                     basis_coef=np.array([model.basis_table[n] for n in names], np.float64).reshape(-1, 2))
        os.replace(tmp, path)  # atomic: concurrent workers never read a half-written file
    except OSError:  # a read-only home is no reason to fail: the model is simply rebuilt next time
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)


@lru_cache(maxsize=8)
def _build_scanner_cached(config: ScannerConfig) -> ScannerModel:
    folder = cache_dir()
    path = folder / f"scanner-{_cache_key(config)}.npz" if folder is not None else None
    if path is not None and (model := _load_cached(path, config)) is not None:
        return model
    energy_kev, w_low, w_high = channel_weights(config)
    model = _model_from_weights(config, energy_kev, w_low, w_high)
    _fill_basis_table(model)
    if path is not None:
        _save_cached(path, model)
    return model


def build_scanner(*, kvp: float = 150.0, tube_filters_mm: tuple[tuple[str, float], ...] = (("Al", 3.0),),
                  config: ScannerConfig | None = None) -> ScannerModel:
    """The scanner model for a tube voltage and filtration (or a full `ScannerConfig`); cached.

    Building takes 2–5 s (spectrum, detector response, the 601×1001 basis table), so the model is kept in
    memory and on disk (`cache_dir()`, keyed by the config, the physics code and the library versions):
    every later process, e.g. each synthesis worker, loads it in milliseconds. The cached arrays are the
    computed ones, bit for bit.
    """
    if config is None:
        config = ScannerConfig(kvp=kvp, tube_filters_mm=tube_filters_mm)
    return _build_scanner_cached(config)


@lru_cache(maxsize=4)
def monochromatic_scanner(energy_kev: float) -> ScannerModel:
    """A (test) scanner whose both channels see a single energy: T = exp(−μ(E)·t) exactly."""
    one = np.ones(1)
    return _model_from_weights(None, np.array([float(energy_kev)]), one, one)


def _default_scanner(scanner: ScannerModel | None) -> ScannerModel:
    return build_scanner() if scanner is None else scanner


def _thickness_for_levels(scanner: ScannerModel, mu: np.ndarray, levels_high: tuple[float, ...]) -> np.ndarray:
    """Thicknesses (cm) of a material of attenuation mu (N,) giving the requested L_high levels."""
    t_cm = np.geomspace(1e-5, 1e4, 2000)
    l_high = _log_attenuation(scanner.weight_high, t_cm[:, None] * mu[None, :])
    return np.interp(np.asarray(levels_high), l_high, t_cm)


def basis_coefficients_for(scanner: ScannerModel, mu_per_cm: np.ndarray) -> tuple[float, float]:
    """(cm PE, cm Al) equivalent to 1 cm of a material with attenuation mu_per_cm (N,) on `scanner`.

    Least squares on μ weighted by the detected spectrum behind the material (module docstring).
    """
    rows, rhs = [], []
    for t_cm in _thickness_for_levels(scanner, mu_per_cm, _FIT_LEVELS):
        behind = np.exp(-(mu_per_cm - mu_per_cm.min()) * t_cm)
        for weight in (scanner.weight_low, scanner.weight_high):
            p = weight * behind
            p = p / p.sum()
            mean_mu = p @ mu_per_cm
            rows.append([p @ scanner.mu_pe_per_cm / mean_mu, p @ scanner.mu_al_per_cm / mean_mu])
            rhs.append(1.0)
    coef, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return float(coef[0]), float(coef[1])


@lru_cache(maxsize=None)
def basis_coefficients(material_name: str) -> tuple[float, float]:
    """cm of polyethylene and cm of aluminium equivalent to 1 cm of a material, on the default scanner.

    The material is looked up in materials.py at its nominal density; for another density ρ scale
    both coefficients by ρ/ρ_nominal (μ is proportional to density). Metals get a negative PE part.
    Computed once per process.
    """
    scanner = build_scanner()
    cached = scanner.basis_table.get(material_name)
    if cached is not None:
        return cached
    return basis_coefficients_for(scanner, scanner.mu_per_cm(material_name))


def log_attenuation_full(thickness_cm_by_material: dict[str, np.ndarray], *,
                         scanner: ScannerModel | None = None, chunk_px: int = 8192) -> np.ndarray:
    """Reference full-spectrum log-attenuation: per-pixel thickness maps (cm, all one shape S) → S×2.

    Sums μ_m(E)·t_m over materials for every energy bin, then integrates each channel (slow: for
    tests and calibration, not for rendering). Output (..., 2) float64, (L_low, L_high) = −ln T.
    """
    scanner = _default_scanner(scanner)
    names = list(thickness_cm_by_material)
    shape = np.shape(thickness_cm_by_material[names[0]]) if names else ()
    thickness = np.stack([np.broadcast_to(np.asarray(thickness_cm_by_material[n], np.float64), shape).ravel()
                          for n in names], axis=-1) if names else np.zeros((1, 0))
    mu = np.stack([scanner.mu_per_cm(n) for n in names], axis=0) if names else np.zeros((0, scanner.energy_kev.size))
    out = np.empty((thickness.shape[0], 2), np.float64)
    weights = np.stack([scanner.weight_low, scanner.weight_high], axis=1)
    for start in range(0, thickness.shape[0], chunk_px):
        mu_t = thickness[start:start + chunk_px] @ mu  # (chunk, N)
        out[start:start + chunk_px] = _log_attenuation(weights, mu_t)
    return out.reshape(*shape, 2)


def transmission_full(thickness_cm_by_material: dict[str, np.ndarray], *,
                      scanner: ScannerModel | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference full-spectrum transmission (T_low, T_high), each of the thickness maps' shape."""
    log_att = log_attenuation_full(thickness_cm_by_material, scanner=scanner)
    return np.exp(-log_att[..., 0]), np.exp(-log_att[..., 1])


def _grid_coordinates(scanner: ScannerModel, basis_cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fractional table indices (column = Al, row = PE) of basis thicknesses H×W×2, as float32 maps."""
    basis = np.asarray(basis_cm, np.float32)
    map_al = (basis[..., 1] - np.float32(scanner.lut_al_start_cm)) * np.float32(1.0 / scanner.lut_al_step_cm)
    map_pe = (basis[..., 0] - np.float32(scanner.lut_pe_start_cm)) * np.float32(1.0 / scanner.lut_pe_step_cm)
    return map_al, map_pe


def _remap(table: np.ndarray, map_al: np.ndarray, map_pe: np.ndarray) -> np.ndarray:
    # cv2.remap: bilinear with 1/32-cell weights, edge cells replicated outside the grid (beyond
    # 100 cm Al everything is black already). It takes at most 4 channels per call.
    return cv2.remap(table, map_al, map_pe, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _onto_table(scanner: ScannerModel, basis_cm: np.ndarray) -> np.ndarray:
    """Basis points beyond the table's aluminium edge, moved back onto it along their own direction.

    Clamping Al alone would keep a metal's ever more negative PE part: past the edge (1.5 cm of lead, 30 cm
    of battery cells) the lookup would then walk to lighter cells, and a thicker object would read as less
    attenuating. Scaling the whole (PE, Al) vector reads the same material, thinner, at the edge: the
    attenuation saturates there instead (such pixels are black at any dose).
    """
    basis = np.asarray(basis_cm, np.float32)
    al_max = np.float32(scanner.lut_al_start_cm + scanner.lut_al_step_cm * (scanner.lut.shape[1] - 1))
    al = basis[..., 1]
    if not al.size or float(al.max()) <= al_max:
        return basis
    scale = al_max / np.maximum(al, al_max)
    return basis * scale[..., None]


def lookup_log_attenuation(basis_cm: np.ndarray, *, scanner: ScannerModel | None = None) -> np.ndarray:
    """Basis thicknesses H×W×2 float32 [pe_cm, al_cm] → log-attenuation H×W×2 float32 (low, high)."""
    scanner = _default_scanner(scanner)
    map_al, map_pe = _grid_coordinates(scanner, _onto_table(scanner, basis_cm))
    return _remap(scanner.lut, map_al, map_pe)


def lookup_jacobian(basis_cm: np.ndarray, *, scanner: ScannerModel | None = None) -> np.ndarray:
    """Basis thicknesses H×W×2 → the table's Jacobian there, H×W×4 float32: (dL_low/dpe, dL_low/dal,
    dL_high/dpe, dL_high/dal) per cm."""
    scanner = _default_scanner(scanner)
    map_al, map_pe = _grid_coordinates(scanner, _onto_table(scanner, basis_cm))
    return _remap(scanner.lut_jacobian, map_al, map_pe)


def render_raw(basis_cm: np.ndarray, *, rng: np.random.Generator, dose: float | tuple[float, float] = 2e4,
               blur_px: float = 0.7, electronic_noise_counts: float = 2.0,
               scanner: ScannerModel | None = None) -> np.ndarray:
    """Render what the scanner reads for per-pixel basis thicknesses.

    basis_cm: H×W×2 float32 [pe_cm, al_cm] (sum over the ray of thickness × basis_coefficients).
    dose: effective quanta per air pixel, one number for both channels or (low, high): the thin front
        layer absorbs fewer quanta than the rear one, so its channel is the noisier (2e4 ≈ a modern
        cabin scanner at belt speed).
    blur_px: Gaussian σ of focal-spot + scintillator blur, pixels (0 = none).
    electronic_noise_counts: readout noise σ in quanta, the floor that makes thick metal noisy-black.
    Returns H×W×2 uint16 (low, high): air ≈ vision.colour.RAW_AIR_LEVEL (60000), no photons ≈
    RAW_DARK_LEVEL (100), clipped to [0, 65535].
    """
    scanner = _default_scanner(scanner)
    transmission = cv2.exp(-lookup_log_attenuation(basis_cm, scanner=scanner))
    return render_raw_from_transmission(transmission, rng=rng, dose=dose, blur_px=blur_px,
                                        electronic_noise_counts=electronic_noise_counts)


def render_raw_from_transmission(transmission: np.ndarray, *, rng: np.random.Generator,
                                 dose: float | tuple[float, float] = 2e4, blur_px: float = 0.7,
                                 electronic_noise_counts: float = 2.0) -> np.ndarray:
    """`render_raw` from per-pixel transmission H×W×2 float32 (low, high; each channel's I/I0): the blur, the
    quantum and readout noise and the counts' scale. A detector pixel coarser than the scene's grid reads the
    mean transmission of the rays it collects (it counts their quanta), so a coarse pitch is rendered by
    area-averaging fine transmission into this, never by averaging thicknesses (`look.scan`)."""
    transmission = np.asarray(transmission, np.float32)
    if blur_px > 0:
        transmission = cv2.GaussianBlur(transmission, (0, 0), sigmaX=blur_px, sigmaY=blur_px,
                                        borderType=cv2.BORDER_REPLICATE)
    dose_lh = np.broadcast_to(np.asarray(dose, np.float32), (2,))
    counts = transmission * dose_lh
    sigma = cv2.sqrt(counts + np.float32(electronic_noise_counts**2))
    # cv2.randn is ~3x faster than numpy's generator at this size (3 vs 11 ms for 768²×2). Its RNG is
    # per-thread global state, so it is reseeded from `rng` here: renders stay reproducible per seed.
    cv2.setRNGSeed(int(rng.integers(0, 2**31 - 1)))
    noise = np.empty(counts.shape, np.float32)
    cv2.randn(noise.reshape(counts.shape[0], -1), 0.0, 1.0)  # one channel: randn's σ is per channel
    gain = np.float32(RAW_AIR_LEVEL - RAW_DARK_LEVEL) / dose_lh
    raw = (counts + sigma * noise) * gain + np.float32(RAW_DARK_LEVEL + 0.5)  # +0.5: round on cast
    np.clip(raw, 0.0, 65535.0, out=raw)
    return raw.astype(np.uint16)


def basis_from_log_attenuation(log_att: np.ndarray, *, scanner: ScannerModel | None = None,
                               iterations: int = 6) -> np.ndarray:
    """Approximate inverse of the table: log-attenuation H×W×2 (low, high) → basis H×W×2 [pe_cm, al_cm].

    Newton's method on the table with its precomputed Jacobian, started from the thin-object
    (linear) solution. Exact to ~1e-3 cm where the table is invertible; unpenetrated or noisy pixels
    outside the physical region come back clamped to the table's range.
    """
    scanner = _default_scanner(scanner)
    target = np.asarray(log_att, np.float32)
    j0 = scanner.lut_jacobian[int(round(-scanner.lut_pe_start_cm / scanner.lut_pe_step_cm)), 0].astype(np.float64)
    inv0 = np.linalg.inv(j0.reshape(2, 2)).astype(np.float32)
    basis = target @ inv0.T
    lo = np.float32([scanner.lut_pe_start_cm, scanner.lut_al_start_cm])
    hi = np.float32([scanner.lut_pe_start_cm + scanner.lut_pe_step_cm * (scanner.lut.shape[0] - 1),
                     scanner.lut_al_start_cm + scanner.lut_al_step_cm * (scanner.lut.shape[1] - 1)])
    for _ in range(iterations):
        map_al, map_pe = _grid_coordinates(scanner, basis)
        residual = _remap(scanner.lut, map_al, map_pe) - target
        jac = _remap(scanner.lut_jacobian, map_al, map_pe)
        a, b, c, d = jac[..., 0], jac[..., 1], jac[..., 2], jac[..., 3]
        det = a * d - b * c
        det = np.where(np.abs(det) < 1e-6, np.float32(1e-6), det)
        step_pe = (d * residual[..., 0] - b * residual[..., 1]) / det
        step_al = (a * residual[..., 1] - c * residual[..., 0]) / det
        basis = np.stack([basis[..., 0] - step_pe, basis[..., 1] - step_al], axis=-1)
        np.clip(basis, lo, hi, out=basis)
    return basis.astype(np.float32)


# --- Z_eff -----------------------------------------------------------------------------------------

#: Mayneord's exponent: Z_eff = (Σ f_i Z_i^2.94)^(1/2.94), f_i the electron fractions.
_MAYNEORD_EXPONENT = 2.94


def effective_atomic_number(formula: str) -> float:
    """Z_eff of a compound (xraydb formula) by the power law used in radiography (exponent 2.94)."""
    import xraydb

    electrons = {el: n * xraydb.atomic_number(el) for el, n in xraydb.chemparse(formula).items()}
    total = sum(electrons.values())
    acc = sum((e / total) * xraydb.atomic_number(el) ** _MAYNEORD_EXPONENT for el, e in electrons.items())
    return float(acc ** (1.0 / _MAYNEORD_EXPONENT))


def zeff_calibration(scanner: ScannerModel | None = None) -> ZeffKnots:
    """Z_eff table of a scanner: rows (L_high level, ratios, zeffs), ratios strictly increasing.

    For each level, each reference material is taken at the thickness giving that L_high, and its
    full-integral ratio R = L_low/L_high is recorded. Z_eff must rise with R in every row; a
    reference that breaks this (beam hardening can swap near neighbours) is dropped from that row.
    Cached per scanner.
    """
    return _zeff_calibration_cached(_default_scanner(scanner))


@lru_cache(maxsize=8)
def _zeff_calibration_cached(scanner: ScannerModel) -> ZeffKnots:
    zeffs = [effective_atomic_number(f) for f, _ in _ZEFF_REFERENCES]
    order = np.argsort(zeffs)
    weights = np.stack([scanner.weight_low, scanner.weight_high], axis=1)
    ratio_by_ref = {}
    for i in order:
        mu = linear_mu_per_cm(*_ZEFF_REFERENCES[i], scanner.energy_kev)
        t_cm = _thickness_for_levels(scanner, mu, _ZEFF_LEVELS)
        log_att = _log_attenuation(weights, t_cm[:, None] * mu[None, :])  # (n_levels, 2)
        ratio_by_ref[i] = log_att[:, 0] / np.asarray(_ZEFF_LEVELS)
    rows = []
    for k, level in enumerate(_ZEFF_LEVELS):
        ratios_z: list[tuple[float, float]] = []
        for i in order:
            ratio = ratio_by_ref[i][k]
            if not ratios_z or ratio > ratios_z[-1][0] + 1e-4:
                ratios_z.append((ratio, zeffs[i]))
        rows.append((float(level), tuple(round(float(r), 4) for r, _ in ratios_z),
                     tuple(round(float(z), 2) for _, z in ratios_z)))
    return tuple(rows)
