"""The seven contraband classes (DESIGN.md §4) as items with real sizes and per-object densities.

`build_contraband` makes one object in its usual packed form (a taped brick, a carton, a tusk section);
`build_flat_layer` makes the wide thin form used in linings and false bottoms; `build_wrap` makes the
aluminium-foil or carbon-paper wrapping smugglers put round an object to spoil the X-ray reading.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from datasets.synth import organic_shapes, shapes
from datasets.synth.items import Item, make_item
from datasets.synth.materials import CONTRABAND_CLASSES

#: Density ranges (g/cm³) of each class's bulk material, from the design table.
DENSITY_RANGE_G_CM3: dict[str, tuple[float, float]] = {
    "drug_package": (1.0, 1.4),
    "cannabis": (0.3, 0.7),
    "cash_bundle": (0.8, 1.0),
    "tobacco": (0.2, 0.4),
    "medicine_pills": (1.2, 1.4),
    "ivory": (1.7, 1.9),
    "pangolin_scales": (1.2, 1.3),
}

#: Classes that can be spread into a thin wide layer (linings, false bottoms); a tusk cannot.
FLAT_CLASSES: tuple[str, ...] = (
    "drug_package",
    "cannabis",
    "cash_bundle",
    "tobacco",
    "medicine_pills",
    "pangolin_scales",
)

DRUGS: tuple[str, ...] = ("cocaine", "heroin", "methamphetamine")

#: Banknote sizes (cm): USD, EUR 50, EUR 100/200, GBP 20.
NOTE_SIZES_CM: tuple[tuple[float, float], ...] = ((15.6, 6.6), (14.0, 7.7), (14.7, 8.2), (13.9, 7.3))
NOTE_THICKNESS_CM = 0.0108  # 100 notes ≈ 1.08 cm


def _px(cm: float, pixel_mm: float) -> int:
    return int(round(cm * 10.0 / pixel_mm))


def _density(rng: np.random.Generator, class_name: str) -> float:
    return float(rng.uniform(*DENSITY_RANGE_G_CM3[class_name]))


def _fit(length: float, width: float, max_size_cm: tuple[float, float] | None) -> float:
    """Scale factor ≤ 1 that fits a length × width footprint into max_size_cm (either orientation)."""
    if max_size_cm is None:
        return 1.0
    big, small = max(max_size_cm), min(max_size_cm)
    return min(1.0, big / max(length, width), small / min(length, width))


def drug_package(rng: np.random.Generator, pixel_mm: float, max_size_cm: tuple[float, float] | None = None) -> Item:
    """A taped brick of cocaine, heroin or methamphetamine (≈1 kg, 22×15×4 cm), or a cluster of pellets."""
    drug = str(rng.choice(DRUGS))
    density = _density(rng, "drug_package")
    if rng.random() < 0.7:
        length, width = rng.uniform(17, 30), rng.uniform(11, 20)
        k = _fit(length, width, max_size_cm)
        body = shapes.box(
            length * k,
            width * k,
            rng.uniform(2.5, 5.5),
            pixel_mm,
            corner_cm=rng.uniform(0.8, 2.0),
            edge_cm=rng.uniform(0.5, 1.0),
        )
        tape = (body > 0).astype(np.float32) * np.float32(rng.uniform(0.05, 0.25))  # many turns of packing tape
        return make_item(f"{drug}_brick", [(drug, density, body), ("polyethylene", 0.94, tape)])
    # Pellets: latex-wrapped capsules about 3 × 1.3 cm, heaped in a pouch.
    n = int(rng.integers(12, 70))
    spread = np.array([rng.uniform(8, 16), rng.uniform(6, 12)]) * _fit(16, 12, max_size_cm)
    shape = (shapes.canvas_px(spread[1] + 4, pixel_mm), shapes.canvas_px(spread[0] + 4, pixel_mm))
    body = np.zeros(shape, np.float32)
    for _ in range(n):
        length, diameter = rng.uniform(2.0, 4.0), rng.uniform(1.0, 1.6)
        a = rng.uniform(0, math.pi)
        seg = np.array([[-math.cos(a), -math.sin(a)], [math.cos(a), math.sin(a)]]) * (length - diameter) / 2
        capsule = shapes.polyline_tube(seg, diameter, pixel_mm)
        off = (_px(rng.normal(0, spread[1] / 4), pixel_mm), _px(rng.normal(0, spread[0] / 4), pixel_mm))
        shapes.add_at(body, capsule, off)
    latex = (body > 0).astype(np.float32) * np.float32(0.05)
    return make_item(f"{drug}_pellets", [(drug, density, body), ("rubber", 0.95, latex)])


def cannabis(rng: np.random.Generator, pixel_mm: float, max_size_cm: tuple[float, float] | None = None) -> Item:
    """A vacuum-packed block of dried cannabis: light, with a grainy texture, in a sealed plastic bag."""
    length, width = rng.uniform(18, 32), rng.uniform(12, 22)
    k = _fit(length + 4, width, max_size_cm)
    body = organic_shapes.textured_block(
        rng,
        length * k,
        width * k,
        rng.uniform(4, 10),
        pixel_mm,
        amplitude=rng.uniform(0.15, 0.35),
        grain_cm=rng.uniform(0.4, 1.5),
        edge_cm=rng.uniform(1.0, 2.5),
    )
    # The vacuum bag clings to the block (0.03 cm of polyethylene shows nowhere on a scan: seal flaps beyond
    # the block would only make the label box larger than what is seen).
    seal = (body > 0).astype(np.float32) * np.float32(0.03)
    return make_item("cannabis_block", [("cannabis", _density(rng, "cannabis"), body), ("polyethylene", 0.94, seal)])


def _note_bundle(rng: np.random.Generator, note_cm: tuple[float, float], n_notes: int, pixel_mm: float) -> np.ndarray:
    """One strapped bundle of notes, slightly skewed so that stacked bundles show layered edges."""
    bundle = shapes.box(note_cm[0], note_cm[1], n_notes * NOTE_THICKNESS_CM, pixel_mm, corner_cm=0.1, edge_cm=0.05)
    strap = shapes.box(rng.uniform(3, 4), note_cm[1] + 0.1, 0.05, pixel_mm, corner_cm=0.0, edge_cm=0.0)
    shapes.add_at(bundle, strap, (0, _px(rng.uniform(-1, 1), pixel_mm)))
    return shapes.rotated(bundle, rng.uniform(-3, 3))


def cash_bundle(rng: np.random.Generator, pixel_mm: float, max_size_cm: tuple[float, float] | None = None) -> Item:
    """Stacks of strapped 100-note bundles, one to three stacks side by side, edges slightly staggered."""
    note = NOTE_SIZES_CM[int(rng.integers(len(NOTE_SIZES_CM)))]
    n_stacks = int(rng.integers(1, 4))
    if max_size_cm is not None and max(max_size_cm) < n_stacks * note[1] + 1:
        n_stacks = 1
    shape = (shapes.canvas_px(n_stacks * (note[1] + 0.8) + 2, pixel_mm), shapes.canvas_px(note[0] + 2, pixel_mm))
    paper = np.zeros(shape, np.float32)
    for s in range(n_stacks):
        for _ in range(int(rng.integers(1, 9))):
            off = (
                _px((s - (n_stacks - 1) / 2) * (note[1] + 0.4) + rng.normal(0, 0.15), pixel_mm),
                _px(rng.normal(0, 0.2), pixel_mm),
            )
            shapes.add_at(paper, _note_bundle(rng, note, int(rng.integers(50, 101)), pixel_mm), off)
    return make_item("cash_stack", [("banknote", _density(rng, "cash_bundle"), paper)])


def _cigarette_pack(pixel_mm: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One flat-lying pack of 20 (tobacco, filters, foil): cigarettes run along y, three layers 7-6-7."""
    d, length, filt = 0.78, 8.4, 2.1
    tob = np.zeros((shapes.canvas_px(8.8, pixel_mm), shapes.canvas_px(5.6, pixel_mm)), np.float32)
    for n, off in ((7, 0.0), (6, d / 2), (7, 0.0)):
        shapes.add_at(tob, shapes.cylinder_row(n, d, length, pixel_mm, offset_cm=off, width_cm=5.6))
    y, _ = shapes.coords_cm(tob.shape, pixel_mm)
    filter_end = (y > length / 2 - filt).astype(np.float32)
    filters = tob * filter_end  # cellulose acetate filters at one end, lighter than tobacco
    tobacco = tob * (1 - filter_end)
    # The foil liner seen edge-on along the pack's outline: its path length is the pack's depth times the
    # foil's thickness spread over a pixel; the folded ends hold several layers.
    yy, xx = shapes.coords_cm(tob.shape, pixel_mm)
    depth = shapes.rounded_rect_depth_cm(yy, xx, 5.6, 8.6, 0.2)
    step = pixel_mm / 10.0
    rim = np.clip(1.0 - np.abs(depth) / step, 0.0, 1.0)
    foil = rim * np.float32(2.2 * 0.0007 * rng.uniform(2, 5) / step) + (depth > 0) * np.float32(2 * 0.0007)
    return tobacco, filters, foil.astype(np.float32)


def tobacco(rng: np.random.Generator, pixel_mm: float, max_size_cm: tuple[float, float] | None = None) -> Item:
    """Cigarette cartons (10 packs, 27.5 × 8.8 × 4.4 cm): rows of cylinders, filter bands, foil liner lines."""
    tob_pack, filt_pack, foil_pack = _cigarette_pack(pixel_mm, rng)
    n_cartons = int(rng.integers(1, 4))
    n_packs = 5 if max_size_cm is None or max(max_size_cm) > 28 else max(1, int(max(max_size_cm) // 5.6))
    ph, pw = tob_pack.shape
    shape = (
        ph + _px(1.5 * n_cartons, pixel_mm),
        n_packs * (pw - 2 * shapes.MARGIN_PX) + _px(1.5 * n_cartons + 1, pixel_mm),
    )
    layers = [np.zeros(shape, np.float32) for _ in range(4)]
    step_px = pw - 2 * shapes.MARGIN_PX
    carton_len = n_packs * 5.6 + 0.4
    carton_shape = (shapes.canvas_px(9.0, pixel_mm), shapes.canvas_px(carton_len, pixel_mm))
    carton_depth = shapes.rounded_rect_depth_cm(*shapes.coords_cm(carton_shape, pixel_mm), carton_len, 9.0, 0.1)
    walls = shapes.hollow_shell(carton_depth, 4.6, 0.05, 0.05, pixel_mm)  # cardboard carton, edges edge-on
    for _ in range(n_cartons):
        jitter = (_px(rng.normal(0, 0.4), pixel_mm), _px(rng.normal(0, 0.4), pixel_mm))
        for p in range(n_packs):
            for layer_k in range(2):  # two packs deep in a carton
                flip = (p + layer_k) % 2 == 1  # packs lie head to tail
                off = (jitter[0], jitter[1] + int(round((p - (n_packs - 1) / 2) * step_px)))
                for dst, src in zip(layers[:3], (tob_pack, filt_pack, foil_pack), strict=True):
                    shapes.add_at(dst, src[::-1] if flip else src, off)
        shapes.add_at(layers[3], walls, jitter)
    return make_item(
        "cigarette_cartons",
        [
            ("tobacco", _density(rng, "tobacco"), layers[0]),
            ("cardboard", 0.12, layers[1]),
            ("aluminium_foil", 2.7, layers[2]),
            ("cardboard", 0.7, layers[3]),
        ],
    )


def _blister_sheet(
    rng: np.random.Generator, pixel_mm: float, rows: int, cols: int, pill_cm: float, thick_cm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pitch = (pill_cm + rng.uniform(0.3, 0.6), pill_cm + rng.uniform(0.3, 0.6))
    pills = shapes.disc_grid(rows, cols, pitch, pill_cm, thick_cm, pixel_mm)
    sheet = shapes.box(cols * pitch[0] + 0.4, rows * pitch[1] + 0.4, 1.0, pixel_mm, corner_cm=0.3, edge_cm=0.0)
    pills = shapes.centre_pad(pills, sheet.shape)
    return pills, sheet * np.float32(0.03), sheet * np.float32(0.002)  # lactose, PVC film, aluminium lid foil


def medicine_pills(rng: np.random.Generator, pixel_mm: float, max_size_cm: tuple[float, float] | None = None) -> Item:
    """Blister sheets (grids of tablets in PVC with aluminium foil) stacked in boxes, or loose tablets in a bag."""
    density = _density(rng, "medicine_pills")
    pill, thick = rng.uniform(0.7, 1.3), rng.uniform(0.3, 0.6)
    rows, cols = int(rng.integers(2, 4)), int(rng.integers(4, 8))
    n_sheets = int(rng.integers(2, 16))
    n_boxes = int(rng.integers(1, 4))
    pills, pvc, foil = _blister_sheet(rng, pixel_mm, rows, cols, pill, thick)
    if rng.random() < 0.25:  # loose tablets in a plastic bag
        spread = rng.uniform(6, 14)
        shape = (shapes.canvas_px(spread + 2, pixel_mm),) * 2
        loose = np.zeros(shape, np.float32)
        tab = shapes.disc(pill, thick, pixel_mm, edge_cm=thick / 2)
        for _ in range(int(rng.integers(30, 200))):
            shapes.add_at(loose, tab, tuple(_px(v, pixel_mm) for v in rng.normal(0, spread / 5, 2)))
        bag = (loose > 0).astype(np.float32) * np.float32(0.02)
        return make_item("loose_tablets", [("lactose", density, loose), ("polyethylene", 0.94, bag)])
    sh, sw = pvc.shape
    shape = (sh + _px(2, pixel_mm), n_boxes * sw + _px(2, pixel_mm))
    out = [np.zeros(shape, np.float32) for _ in range(4)]
    for b in range(n_boxes):
        base = (0, int(round((b - (n_boxes - 1) / 2) * sw)))
        for _ in range(n_sheets):
            off = (base[0] + _px(rng.normal(0, 0.2), pixel_mm), base[1] + _px(rng.normal(0, 0.2), pixel_mm))
            for dst, src in zip(out[:3], (pills, pvc, foil), strict=True):
                shapes.add_at(dst, src, off)
        carton_d = shapes.rounded_rect_depth_cm(
            *shapes.coords_cm(pvc.shape, pixel_mm), sw * pixel_mm / 10, sh * pixel_mm / 10, 0.1
        )
        shapes.add_at(out[3], shapes.hollow_shell(carton_d, n_sheets * 0.5 + 0.5, 0.04, 0.05, pixel_mm), base)
    return make_item(
        "blister_packs",
        [
            ("lactose", density, out[0]),
            ("pvc", 1.38, out[1]),
            ("aluminium_foil", 2.7, out[2]),
            ("cardboard", 0.7, out[3]),
        ],
    )


def ivory(rng: np.random.Generator, pixel_mm: float, max_size_cm: tuple[float, float] | None = None) -> Item:
    """A curved tapered tusk section (30–80 cm long, 3–10 cm across) or carvings (bangles, figurines, sticks)."""
    density = _density(rng, "ivory")
    limit = math.hypot(*max_size_cm) * 0.9 if max_size_cm is not None else 80.0
    if rng.random() < 0.6:
        length = min(rng.uniform(30, 80), limit)
        base = rng.uniform(3, 10) * min(1.0, length / 40)
        t = organic_shapes.tusk(
            length,
            base,
            base * rng.uniform(0.3, 0.7),
            length * rng.uniform(0.03, 0.15),
            pixel_mm,
            rng.uniform(0.0, 0.4),
        )
        return make_item("tusk", [("hydroxyapatite_collagen", density, t)])
    size = min(rng.uniform(15, 30), limit)
    shape = (shapes.canvas_px(size + 25.0, pixel_mm),) * 2  # room for the longest piece at any angle
    out = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(2, 9))):
        kind = rng.integers(3)
        if kind == 0:  # bangle: a ring of round section
            r = rng.uniform(3, 4)
            piece = shapes.polyline_tube(
                np.array([[r * math.cos(a), r * math.sin(a)] for a in np.linspace(0, 2 * math.pi, 32)]),
                rng.uniform(0.8, 1.6),
                pixel_mm,
                closed=True,
            )
        elif kind == 1:  # figurine
            piece = organic_shapes.textured_block(
                rng, rng.uniform(5, 14), rng.uniform(3, 6), rng.uniform(3, 6), pixel_mm, 0.3, 1.0, edge_cm=1.5
            )
        else:  # chopsticks or a seal
            piece = shapes.cylinder(rng.uniform(6, 24), rng.uniform(0.6, 1.8), pixel_mm, round_ends=True)
        piece = shapes.rotated(piece, rng.uniform(0, 180))
        shapes.add_at(out, piece, tuple(_px(v, pixel_mm) for v in rng.uniform(-size / 4, size / 4, 2)))
    return make_item("ivory_carvings", [("hydroxyapatite_collagen", density, out)])


def pangolin_scales(rng: np.random.Generator, pixel_mm: float, max_size_cm: tuple[float, float] | None = None) -> Item:
    """A heap of keratin scales (3–5 cm plates, 1–3 mm thick) in a plastic sack."""
    length, width = rng.uniform(12, 35), rng.uniform(10, 25)
    k = _fit(length, width, max_size_cm)
    # Several plates deep: 1.5–5 plate areas (≈ 12 cm² each) per unit of heap area.
    n = int(rng.uniform(1.5, 5.0) * length * width * k * k * (math.pi / 4) / 12.0)
    heap = organic_shapes.plate_heap(rng, max(n, 15), (3.0, 5.0), (0.1, 0.3), length * k, width * k, pixel_mm)
    sack = cv2.dilate((heap > 0).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(np.float32) * np.float32(0.02)
    return make_item(
        "pangolin_scales", [("keratin", _density(rng, "pangolin_scales"), heap), ("polyethylene", 0.94, sack)]
    )


BUILDERS = {
    "drug_package": drug_package,
    "cannabis": cannabis,
    "cash_bundle": cash_bundle,
    "tobacco": tobacco,
    "medicine_pills": medicine_pills,
    "ivory": ivory,
    "pangolin_scales": pangolin_scales,
}


def build_contraband(
    rng: np.random.Generator, class_name: str, pixel_mm: float, max_size_cm: tuple[float, float] | None = None
) -> Item:
    """One contraband object of `class_name` in its usual packed form, fitted within `max_size_cm` (length, width)."""
    if class_name not in BUILDERS:
        raise KeyError(f"unknown contraband class {class_name!r}; known: {', '.join(CONTRABAND_CLASSES)}")
    return BUILDERS[class_name](rng, pixel_mm, max_size_cm)


def build_flat_layer(
    rng: np.random.Generator, class_name: str, pixel_mm: float, size_cm: tuple[float, float], thickness_cm: float
) -> Item:
    """A thin wide layer of contraband `size_cm` = (length, width) for a lining or false bottom.

    Powders and plant matter are pressed into sheets; notes, packs, blister sheets and scales are tiled.
    """
    length, width = size_cm
    if class_name == "drug_package":
        drug = str(rng.choice(DRUGS))
        body = organic_shapes.textured_block(
            rng, length, width, thickness_cm, pixel_mm, amplitude=0.05, grain_cm=3.0, edge_cm=0.3
        )
        wrap = (body > 0).astype(np.float32) * np.float32(0.04)
        return make_item(f"{drug}_sheet", [(drug, _density(rng, class_name), body), ("polyethylene", 0.94, wrap)])
    if class_name == "cannabis":
        body = organic_shapes.textured_block(
            rng, length, width, thickness_cm, pixel_mm, amplitude=0.3, grain_cm=1.0, edge_cm=0.5
        )
        return make_item("cannabis_sheet", [("cannabis", _density(rng, class_name), body)])
    if class_name == "pangolin_scales":
        # Plates several deep (each ≈ 0.2 cm thick, ≈ 10 cm² of footprint) up to the requested thickness.
        deep = float(np.clip(thickness_cm / 0.2, 1.5, 8.0))
        n = int(deep * length * width / 10.0)
        heap = organic_shapes.plate_heap(
            rng, n, (3.0, 5.0), (0.1, 0.3), length, width, pixel_mm, max_tilt_deg=20, layer=True
        )
        return make_item("pangolin_scale_layer", [("keratin", _density(rng, class_name), heap)])
    if class_name not in FLAT_CLASSES:
        raise ValueError(f"{class_name} cannot be spread into a flat layer")
    # Tile copies of a small unit (bundle, pack, blister sheet) over the area.
    unit = _flat_unit(rng, class_name, pixel_mm)
    uh, uw = unit.shape_hw
    shape = (shapes.canvas_px(width, pixel_mm), shapes.canvas_px(length, pixel_mm))
    grids = [np.zeros(shape, np.float32) for _ in unit.layers]
    ny, nx = max(1, -(-shape[0] // uh)), max(1, -(-shape[1] // uw))  # ceil: tiles at the edges are cut
    for i in range(ny):
        for j in range(nx):
            off = (
                int((i - (ny - 1) / 2) * uh) + int(rng.integers(-2, 3)),
                int((j - (nx - 1) / 2) * uw) + int(rng.integers(-2, 3)),
            )
            for dst, layer in zip(grids, unit.layers, strict=True):
                shapes.add_at(dst, layer.thickness_cm, off)
    return make_item(
        f"{unit.name}_layer", [(la.material, la.density_g_cm3, g) for la, g in zip(unit.layers, grids, strict=True)]
    )


def _flat_unit(rng: np.random.Generator, class_name: str, pixel_mm: float) -> Item:
    if class_name == "cash_bundle":
        note = NOTE_SIZES_CM[int(rng.integers(len(NOTE_SIZES_CM)))]
        return make_item(
            "cash",
            [("banknote", _density(rng, class_name), _note_bundle(rng, note, int(rng.integers(30, 101)), pixel_mm))],
        )
    if class_name == "tobacco":
        tob, filt, foil = _cigarette_pack(pixel_mm, rng)
        return make_item(
            "cigarette_packs",
            [("tobacco", _density(rng, class_name), tob), ("cardboard", 0.12, filt), ("aluminium_foil", 2.7, foil)],
        )
    pills, pvc, foil = _blister_sheet(
        rng, pixel_mm, int(rng.integers(2, 4)), int(rng.integers(4, 8)), rng.uniform(0.7, 1.3), rng.uniform(0.3, 0.6)
    )
    k = float(rng.integers(1, 6))  # sheets stacked per tile
    return make_item(
        "blister",
        [("lactose", _density(rng, class_name), pills * k), ("pvc", 1.38, pvc * k), ("aluminium_foil", 2.7, foil * k)],
    )


def build_wrap(rng: np.random.Generator, item: Item, kind: str, pixel_mm: float) -> Item:
    """Foil (`kind`='foil_wrap') or carbon paper ('carbon_paper') wrapped several times round `item`.

    Over the footprint the beam crosses the wrap twice per turn; along the outline it runs through the
    wrap edge-on, so the outline carries the object's height times the wrap's thickness per pixel.
    """
    sheet_cm, turns, name = (
        (0.0016, rng.integers(5, 41), "aluminium_foil")
        if kind == "foil_wrap"
        else (0.004, rng.integers(2, 8), "carbon_paper")
    )
    total = item.total_thickness_cm()
    grow = max(1, _px(0.3, pixel_mm))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    footprint = cv2.dilate((total > 0.01).astype(np.uint8), kernel)
    height = cv2.dilate(total, kernel)  # the object's height next to its outline
    rim = cv2.morphologyEx(footprint, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(np.float32) * 0.5
    layer_cm = float(sheet_cm * turns)
    wrap = footprint.astype(np.float32) * np.float32(2 * layer_cm) + rim * height * np.float32(
        layer_cm / (pixel_mm / 10.0)
    )
    return make_item(
        "foil_wrap" if kind == "foil_wrap" else "carbon_paper_wrap",
        [(name, 2.7 if name == "aluminium_foil" else 1.1, cv2.GaussianBlur(wrap, (3, 3), 0))],
    )
