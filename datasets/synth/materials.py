"""Materials the synthesiser knows: chemical formula (xraydb syntax) and density in g/cm³.

Contraband figures follow ../shared/DESIGN.md §4; benign clutter covers what bags really hold. A
mixture is given as one formula whose stoichiometry approximates the mass fractions (xraydb's
`material_mu` takes a formula string and a density). Where a density is a range in the design table,
the value here is its middle; scenes vary it per object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["organic", "mixed", "metal", "contraband", "container", "air"]


@dataclass(frozen=True)
class Material:
    name: str
    formula: str
    density_g_cm3: float
    kind: Kind


_TABLE: tuple[Material, ...] = (
    # Basis materials of the Alvarez–Macovski decomposition.
    Material("polyethylene", "C2H4", 0.94, "organic"),
    Material("aluminium", "Al", 2.70, "metal"),
    # Reference materials (Z_eff calibration and tests).
    Material("water", "H2O", 1.00, "organic"),
    Material("graphite", "C", 1.70, "organic"),
    Material("pmma", "C5H8O2", 1.18, "organic"),
    Material("pvc", "C2H3Cl", 1.38, "mixed"),
    Material("teflon", "C2F4", 2.20, "mixed"),
    Material("silicon", "Si", 2.33, "mixed"),
    Material("glass", "SiO2", 2.40, "mixed"),
    Material("iron", "Fe", 7.87, "metal"),
    Material("steel", "Fe0.7Cr0.18Ni0.1Mn0.02", 7.90, "metal"),
    Material("copper", "Cu", 8.96, "metal"),
    Material("brass", "Cu0.65Zn0.35", 8.50, "metal"),
    Material("zinc", "Zn", 7.14, "metal"),
    Material("nickel", "Ni", 8.90, "metal"),
    Material("lead", "Pb", 11.34, "metal"),
    Material("tungsten", "W", 19.30, "metal"),
    # Benign clutter.
    Material("cotton", "C6H10O5", 0.45, "organic"),  # folded clothes: cellulose with air
    Material("wool", "C5H9NO2S0.05", 0.35, "organic"),
    Material("polyester", "C10H8O4", 0.50, "organic"),  # clothing fabric, packed
    Material("leather", "C5H9NO2", 0.90, "organic"),
    Material("rubber", "C5H8", 0.95, "organic"),  # shoe soles
    Material("paper", "C6H10O5", 0.80, "organic"),  # books
    Material("cardboard", "C6H10O5", 0.25, "organic"),
    Material("wood", "C6H10O5", 0.60, "organic"),
    Material("sugar", "C12H22O11", 0.85, "organic"),  # food
    Material("chocolate", "C18H32O16", 1.20, "organic"),
    Material("cheese", "C20H36O10N2", 1.10, "organic"),
    Material("soap", "C18H35NaO2", 1.05, "organic"),
    Material("shampoo", "H2OC0.05", 1.02, "organic"),
    Material("alcohol", "C2H6O", 0.79, "organic"),
    Material("oil", "C18H34O2", 0.92, "organic"),
    Material("pet", "C10H8O4", 1.38, "organic"),  # plastic bottles
    Material("abs", "C15H17N", 1.05, "organic"),  # cases, laptop shells
    Material("nylon", "C12H22N2O2", 1.14, "organic"),  # bag fabric, straps
    Material("fr4", "SiO2C3H4O", 1.85, "mixed"),  # circuit boards
    Material("li_battery", "LiCoO2C6", 2.50, "mixed"),  # cell stack, averaged
    Material("ceramic", "Al2O3", 3.50, "mixed"),
    Material("salt", "NaCl", 1.20, "mixed"),  # packed table salt
    Material("toothpaste", "CaCO3H2O3", 1.40, "mixed"),
    Material("coins", "Cu0.75Ni0.25", 8.90, "metal"),
    # Contraband (DESIGN.md §4).
    Material("cocaine", "C17H22ClNO4", 1.20, "contraband"),  # hydrochloride, pressed brick
    Material("heroin", "C21H23NO5", 1.20, "contraband"),
    Material("methamphetamine", "C10H16ClN", 1.10, "contraband"),
    Material("cannabis", "C6H10O5", 0.50, "contraband"),  # dried plant: cellulose, vacuum-packed
    Material("banknote", "C6H10O5", 0.90, "contraband"),  # cotton-rag / cellulose paper stacks
    Material("tobacco", "C6H10O5N0.05", 0.30, "contraband"),
    Material("aluminium_foil", "Al", 2.70, "contraband"),  # cigarette carton liners, blisters
    Material("lactose", "C12H22O11", 1.30, "contraband"),  # pill cores
    Material("hydroxyapatite_collagen", "Ca10P6O26H2C8H12N2O3", 1.80, "contraband"),  # ivory dentine
    Material("keratin", "C4H8N1O2S0.1", 1.25, "contraband"),  # pangolin scales
    Material("carbon_paper", "C6H10O5C2", 1.10, "contraband"),  # wrap used against X-ray reading
)

MATERIALS: dict[str, Material] = {m.name: m for m in _TABLE}


def material(name: str) -> Material:
    """Look a material up by name; an unknown name is an error that lists the known ones."""
    try:
        return MATERIALS[name]
    except KeyError:
        raise KeyError(f"unknown material {name!r}; known: {', '.join(sorted(MATERIALS))}") from None


#: The seven contraband classes, in the detector's class order.
CONTRABAND_CLASSES: tuple[str, ...] = (
    "drug_package",
    "cannabis",
    "cash_bundle",
    "tobacco",
    "medicine_pills",
    "ivory",
    "pangolin_scales",
)
