"""Benign bag contents: clothes, shoes, books, food, toiletries, bottles, umbrellas, keys, coins, small metal.

Every builder takes (rng, pixel_mm) and returns an `Item` with real sizes (cm) and densities varied
around the material table. Electronics (laptops, phones, chargers, cables) are in `electronics.py`.
Organic clutter that looks like drugs in a scan (books, food blocks, bottles of liquid, soap) is here on
purpose: it is what makes the detector's job hard (DESIGN.md §4).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from datasets.synth import organic_shapes, shapes
from datasets.synth.fabric import garment_pile
from datasets.synth.items import Item, make_item, pad_to
from datasets.synth.materials import material

Builder = Callable[[np.random.Generator, float], Item]


def _px(cm: float, pixel_mm: float) -> int:
    return int(round(cm * 10.0 / pixel_mm))


def vary_density(rng: np.random.Generator, name: str, spread: float = 0.1) -> float:
    """Table density of `name` (g/cm³) times a uniform factor in [1 − spread, 1 + spread]."""
    return material(name).density_g_cm3 * float(rng.uniform(1 - spread, 1 + spread))


def clothes(rng: np.random.Generator, pixel_mm: float) -> Item:
    """A folded garment or a stack of them: big soft thickness field with fold steps, maybe buttons or a zip."""
    fabric = str(rng.choice(["cotton", "polyester", "wool", "cotton"]))
    length, width = rng.uniform(22, 48), rng.uniform(16, 36)
    if rng.random() < 0.75:
        # Loosely packed garments: a pile of panels whose edges, hems, seams and creases draw lines.
        n_sheets = int(rng.integers(2, 9))
        thick = garment_pile(rng, length, width, pixel_mm, n_sheets, rng.uniform(0.4, 1.6))
    else:  # a tightly folded stack: smooth, with soft fold steps
        thick = organic_shapes.folded_cloth(
            rng, length, width, rng.uniform(1.0, 5.0), pixel_mm, n_folds=int(rng.integers(1, 5))
        )
    # Table densities are for compact fabric; a folded garment holds much air (≈ 0.15–0.35 g/cm³).
    parts = [(fabric, vary_density(rng, fabric, 0.25) * 0.6, thick)]
    h, w = thick.shape
    if rng.random() < 0.35:  # jeans: rivets and a button, a short zip
        metal = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(2, 7))):
            stud = shapes.disc(rng.uniform(0.8, 1.7), rng.uniform(0.1, 0.25), pixel_mm)
            off = (int(rng.uniform(-0.35, 0.35) * h), int(rng.uniform(-0.35, 0.35) * w))
            metal += pad_to(stud, (h, w), off)
        zip_len = rng.uniform(8, 18)
        pts = np.array([[0.0, -zip_len / 2], [0.0, zip_len / 2]]) + rng.uniform(-0.2, 0.2, 2) * np.array(
            [length, width]
        )
        metal += shapes.polyline_band(pts, 0.5, 0.05, pixel_mm, shape_hw=(h, w))
        parts.append(("brass" if rng.random() < 0.5 else "steel", vary_density(rng, "brass"), metal))
    return make_item("clothes", parts)


def _sole_outline_cm(length_cm: float, width_cm: float) -> np.ndarray:
    """Outline (N×2 cm) of a shoe sole: rounded heel at −x, narrow waist, wide ball, rounded toe at +x."""
    # Half-width (share of the sole's width) along the sole, from heel (0) to toe (1).
    knots_t = np.array([0.0, 0.02, 0.08, 0.2, 0.32, 0.45, 0.62, 0.75, 0.86, 0.94, 0.985, 1.0])
    knots_w = np.array([0.0, 0.22, 0.33, 0.36, 0.33, 0.31, 0.44, 0.5, 0.47, 0.36, 0.2, 0.0])
    t = np.linspace(0.0, 1.0, 40)
    half = np.interp(t, knots_t, knots_w) * width_cm
    x = (t - 0.5) * length_cm
    return np.concatenate([np.stack([x, half], 1), np.stack([x[::-1], -half[::-1]], 1)])


def _one_shoe(
    rng: np.random.Generator, pixel_mm: float, length: float, width: float, height: float
) -> list[tuple[str, float, np.ndarray]]:
    outline = _sole_outline_cm(length, width)
    shape = (shapes.canvas_px(width + 1, pixel_mm), shapes.canvas_px(length + 1, pixel_mm))
    cover = shapes.fill_polygon(outline, shape, pixel_mm)
    _, x = shapes.coords_cm(shape, pixel_mm)
    heel = np.clip(-x / (length / 2), 0.0, 1.0)  # 0 at the middle, 1 at the heel end
    sole_cm = rng.uniform(1.0, 2.2) + rng.uniform(0.5, 2.5) * heel
    # The upper is a closed leather shell over the sole outline; its inward depth is a distance transform.
    inside = (cover > 0.5).astype(np.uint8)
    depth = (cv2.distanceTransform(inside, cv2.DIST_L2, 3) - 0.5) * np.float32(pixel_mm / 10.0)
    upper = shapes.hollow_shell(depth, height, rng.uniform(0.15, 0.35), height / 2, pixel_mm)
    parts = [("rubber", vary_density(rng, "rubber"), cover * sole_cm), ("leather", vary_density(rng, "leather"), upper)]
    if rng.random() < 0.4:  # a steel shank under the arch
        shank = shapes.box(rng.uniform(7, 10), rng.uniform(1.0, 1.5), 0.15, pixel_mm, corner_cm=0.3, edge_cm=0.05)
        parts.append(("steel", 7.9, pad_to(shank, shape, (0, int(-0.08 * length * 10 / pixel_mm)))))
    return parts


def shoes(rng: np.random.Generator, pixel_mm: float) -> Item:
    """A pair of shoes side by side, heel to toe: rubber soles, leather uppers, sometimes steel shanks."""
    length, width, height = rng.uniform(23, 31), rng.uniform(8, 11), rng.uniform(7, 13)
    a = _one_shoe(rng, pixel_mm, length, width, height)
    b = _one_shoe(rng, pixel_mm, length, width, height)
    h, w = a[0][2].shape
    gap_px = int(rng.uniform(0.0, 3.0) * 10 / pixel_mm)
    shape = (2 * h + gap_px, w + int(rng.uniform(0, 6) * 10 / pixel_mm))
    parts = [(m, d, pad_to(t, shape, (-(h + gap_px) // 2, 0))) for m, d, t in a]
    parts += [(m, d, pad_to(t[::-1, ::-1], shape, ((h + gap_px) // 2, 0))) for m, d, t in b]
    return make_item("shoes", parts)


def book(rng: np.random.Generator, pixel_mm: float) -> Item:
    """A book: a paper block with a rounded spine, hardback boards half the time."""
    length, width, height = rng.uniform(15, 26), rng.uniform(11, 19), rng.uniform(1.0, 5.0)
    pages = shapes.box(length, width, height, pixel_mm, corner_cm=0.1, edge_cm=0.1)
    parts = [("paper", vary_density(rng, "paper", 0.15), pages)]
    if rng.random() < 0.5:
        boards = shapes.box(length + 0.6, width + 0.4, 0.5, pixel_mm, corner_cm=0.2, edge_cm=0.05)
        parts.append(("cardboard", vary_density(rng, "cardboard") * 2.5, boards))  # pressed board, denser
    return make_item("book", parts)


def food_block(rng: np.random.Generator, pixel_mm: float) -> Item:
    """Chocolate bars, cheese, a bag of sugar or salt: compact uniform organic blocks (drug look-alikes)."""
    kind = str(rng.choice(["chocolate", "cheese", "sugar", "salt", "soap"]))
    if kind in ("sugar", "salt"):
        thick = shapes.box(
            rng.uniform(12, 20), rng.uniform(8, 12), rng.uniform(4, 8), pixel_mm, corner_cm=2.0, edge_cm=2.0
        )
        wrap = ("polyethylene", 0.94, (thick > 0).astype(np.float32) * 0.01)
        return make_item(f"{kind}_bag", [(kind, vary_density(rng, kind, 0.15), thick), wrap])
    sizes = {"chocolate": (15, 8, 1.2), "cheese": (12, 8, 5), "soap": (9, 6, 3)}[kind]
    scale = rng.uniform(0.8, 1.4)
    thick = shapes.box(
        sizes[0] * scale, sizes[1] * scale, sizes[2] * rng.uniform(0.8, 1.5), pixel_mm, corner_cm=0.5, edge_cm=0.4
    )
    return make_item(kind, [(kind, vary_density(rng, kind), thick)])


def _bottle_radius_cm(
    x_cm: np.ndarray, length: float, r_body: float, r_neck: float, shoulder: float, neck: float
) -> np.ndarray:
    """Radius along a bottle lying on its side (base at −x): body, cosine shoulder, neck."""
    u = x_cm + length / 2
    start = length - neck - shoulder
    s = np.clip((u - start) / max(shoulder, 1e-3), 0.0, 1.0)
    r = r_body + (r_neck - r_body) * (0.5 - 0.5 * np.cos(math.pi * s))
    base = np.clip(u / 0.6, 0.0, 1.0) ** 0.3  # rounded heel of the bottle
    return (r * base * ((u >= 0) & (u <= length))).astype(np.float32)


def bottle(rng: np.random.Generator, pixel_mm: float) -> Item:
    """A bottle of liquid lying on its side: glass wine/spirits, PET water, PE shampoo; liquid up to a fill level."""
    kind = str(rng.choice(["glass", "pet", "shampoo", "glass"]))
    if kind == "glass":
        length, r_body, wall = rng.uniform(22, 32), rng.uniform(3.2, 4.2), rng.uniform(0.3, 0.6)
        shell, liquid = "glass", str(rng.choice(["alcohol", "water", "oil"]))
        r_neck, neck, shoulder = rng.uniform(1.2, 1.6), rng.uniform(6, 10), rng.uniform(3, 7)
    elif kind == "pet":
        length, r_body, wall = rng.uniform(18, 32), rng.uniform(3.0, 4.5), rng.uniform(0.02, 0.05)
        shell, liquid = "pet", "water"
        r_neck, neck, shoulder = rng.uniform(1.2, 1.5), rng.uniform(2, 3), rng.uniform(4, 8)
    else:
        length, r_body, wall = rng.uniform(12, 22), rng.uniform(2.2, 3.5), rng.uniform(0.06, 0.12)
        shell, liquid = "polyethylene", str(rng.choice(["shampoo", "alcohol", "water"]))
        r_neck, neck, shoulder = rng.uniform(1.0, 1.4), rng.uniform(1.5, 3), rng.uniform(1, 3)
    return _bottle_item(rng, pixel_mm, f"bottle_{kind}", length, r_body, r_neck, shoulder, neck, wall, shell, liquid)


def _bottle_item(
    rng: np.random.Generator,
    pixel_mm: float,
    name: str,
    length: float,
    r_body: float,
    r_neck: float,
    shoulder: float,
    neck: float,
    wall: float,
    shell: str,
    liquid: str | None,
    fill: float | None = None,
) -> Item:
    w = shapes.canvas_px(length, pixel_mm)
    h = shapes.canvas_px(2 * r_body, pixel_mm)
    _, x = shapes.coords_cm((1, w), pixel_mm)
    radius = _bottle_radius_cm(x[0], length, r_body, r_neck, shoulder, neck)
    parts = [(shell, vary_density(rng, shell, 0.05), shapes.revolved(radius, h, pixel_mm, wall_cm=wall))]
    fill_frac = rng.uniform(0.5, 0.98) if fill is None else fill
    inner = np.maximum(radius - wall, 0.0) * (x[0] + length / 2 < fill_frac * length)
    if liquid is not None:
        parts.append((liquid, vary_density(rng, liquid, 0.05), shapes.revolved(inner, h, pixel_mm)))
    cap = np.where(x[0] + length / 2 > length - 2.0, radius + 0.15, 0.0) * (x[0] <= length / 2)
    parts.append(
        (
            "abs" if rng.random() < 0.7 else "aluminium",
            1.0,
            shapes.revolved(cap.astype(np.float32), h, pixel_mm, wall_cm=0.15),
        )
    )
    return make_item(name, parts)


def bottle_shell(rng: np.random.Generator, pixel_mm: float) -> tuple[Item, np.ndarray]:
    """An empty glass or PET bottle and its inner chord (h, w cm) — the volume a liquid (or liquid drug) fills."""
    length, r_body, wall = rng.uniform(22, 30), rng.uniform(3.2, 4.2), rng.uniform(0.3, 0.5)
    r_neck, shoulder, neck = rng.uniform(1.2, 1.6), rng.uniform(3, 6), rng.uniform(6, 9)
    item = _bottle_item(rng, pixel_mm, "bottle_glass", length, r_body, r_neck, shoulder, neck, wall, "glass", None)
    w = shapes.canvas_px(length, pixel_mm)
    _, x = shapes.coords_cm((1, w), pixel_mm)
    # The liquid fills this very bottle: its own neck and shoulder, inside its wall.
    radius = _bottle_radius_cm(x[0], length, r_body, r_neck, shoulder, neck)
    inner = np.maximum(radius - wall, 0.0) * (x[0] + length / 2 < rng.uniform(0.6, 0.95) * length)
    return item, pad_to(shapes.revolved(inner, shapes.canvas_px(2 * r_body, pixel_mm), pixel_mm), item.shape_hw)


def standing_container(rng: np.random.Generator, pixel_mm: float) -> Item:
    """A jar, tin or cup seen from above: its wall edge-on makes a ring as thick as the container is tall."""
    kind = str(rng.choice(["jar", "tin", "mug"]))
    diameter, height = rng.uniform(6, 10), rng.uniform(6, 14)
    shell, wall = {"jar": ("glass", 0.35), "tin": ("steel", 0.02), "mug": ("ceramic", 0.4)}[kind]
    outer = shapes.disc(diameter, height, pixel_mm)
    ring = np.maximum(outer - pad_to(shapes.disc(diameter - 2 * wall, height, pixel_mm), outer.shape), 0.0)
    base = pad_to(shapes.disc(diameter - 2 * wall, wall * 2, pixel_mm), outer.shape)
    parts = [(shell, vary_density(rng, shell, 0.05), ring + base)]
    if kind != "mug":
        contents = str(rng.choice(["sugar", "water", "oil", "cheese"]))
        fill = shapes.disc(diameter - 2 * wall, height * rng.uniform(0.5, 0.95), pixel_mm)
        parts.append((contents, vary_density(rng, contents), fill))
        parts.append(("steel", 7.9, shapes.disc(diameter, 0.03, pixel_mm)))
    return make_item(kind, parts)


def toiletries(rng: np.random.Generator, pixel_mm: float) -> Item:
    """Aerosol can, toothpaste tube, razor or small bottle (shampoo bottles come from `bottle`)."""
    kind = str(rng.choice(["aerosol", "toothpaste", "razor", "lotion"]))
    if kind == "aerosol":
        length, d = rng.uniform(12, 20), rng.uniform(4, 6)
        can = shapes.cylinder(length, d, pixel_mm, wall_cm=0.04)
        contents = shapes.cylinder(length * 0.95, d - 0.1, pixel_mm) * rng.uniform(0.3, 0.8)
        return make_item("aerosol", [("aluminium", 2.7, can), ("alcohol", 0.79, contents)])
    if kind == "toothpaste":
        paste = shapes.ellipsoid(rng.uniform(14, 20), rng.uniform(3.5, 5), rng.uniform(2, 3), pixel_mm)
        return make_item(
            "toothpaste",
            [
                ("toothpaste", vary_density(rng, "toothpaste"), paste),
                ("aluminium", 2.7, (paste > 0) * np.float32(0.005)),
            ],
        )
    if kind == "razor":
        length = rng.uniform(10, 14)
        shape = (shapes.canvas_px(4.2, pixel_mm), shapes.canvas_px(length + 1.5, pixel_mm))
        shift = (0, int((length / 2) * 10 / pixel_mm))
        handle = pad_to(
            shapes.box(length, 1.2, 1.0, pixel_mm, corner_cm=0.5, edge_cm=0.4), shape, (0, -int(7 / pixel_mm))
        )
        head = pad_to(shapes.box(1.2, 4.0, 0.3, pixel_mm, corner_cm=0.2, edge_cm=0.1), shape, shift)
        blades = pad_to(shapes.box(0.8, 3.8, 0.03, pixel_mm, corner_cm=0.05, edge_cm=0.0), shape, shift)
        return make_item("razor", [("abs", 1.05, handle + head), ("steel", 7.9, blades)])
    return _bottle_item(
        rng, pixel_mm, "lotion", rng.uniform(8, 15), rng.uniform(1.5, 2.5), 1.0, 1.0, 1.5, 0.08, "polyethylene", "soap"
    )


def umbrella(rng: np.random.Generator, pixel_mm: float) -> Item:
    """A folded umbrella: steel shaft tube, a bundle of thin steel ribs, wrapped fabric and a plastic handle."""
    length = rng.uniform(24, 60)
    shaft = shapes.cylinder(length, rng.uniform(0.8, 1.3), pixel_mm, wall_cm=0.08)
    h = shapes.canvas_px(5.0, pixel_mm)
    shape = (h, shaft.shape[1])
    ribs = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(6, 9))):
        y = rng.uniform(-1.2, 1.2)
        pts = np.array([[-length / 2 + 3, y * 0.4], [length / 2 - 2, y]])
        ribs += shapes.polyline_tube(pts, rng.uniform(0.15, 0.25), pixel_mm, shape_hw=shape)
    fabric = pad_to(
        shapes.cylinder(length * 0.85, rng.uniform(3.0, 4.5), pixel_mm), shape, (0, int(length * 0.05 * 10 / pixel_mm))
    )
    handle = pad_to(
        shapes.ellipsoid(rng.uniform(6, 10), 3.0, 3.0, pixel_mm), shape, (0, -int((length / 2 - 3) * 10 / pixel_mm))
    )
    return make_item(
        "umbrella", [("steel", 7.9, pad_to(shaft, shape) + ribs), ("polyester", 0.3, fabric), ("abs", 1.05, handle)]
    )


def _key_outline_cm(length_cm: float, rng: np.random.Generator) -> np.ndarray:
    """A key along +x: round bow at −x, blade with a few cuts."""
    bow = [
        (-length_cm / 2 + 1.2 + 1.2 * math.cos(a), 1.2 * math.sin(a)) for a in np.linspace(0.6, 2 * math.pi - 0.6, 10)
    ]
    blade = [(-length_cm / 2 + 2.2, -0.35), (length_cm / 2, -0.35), (length_cm / 2, 0.1)]
    for x in np.linspace(length_cm / 2 - 0.4, -length_cm / 2 + 2.6, 5):
        blade.append((float(x), 0.35 + 0.25 * float(rng.random())))
    blade.append((-length_cm / 2 + 2.2, 0.4))
    return np.array(bow[::-1] + blade[::-1])


def keys(rng: np.random.Generator, pixel_mm: float) -> Item:
    """A bunch of 1–6 brass or steel keys on a steel split ring."""
    n = int(rng.integers(1, 7))
    shape = (shapes.canvas_px(16, pixel_mm), shapes.canvas_px(16, pixel_mm))
    ring = shapes.polyline_tube(
        np.array([[1.3 * math.cos(a), 1.3 * math.sin(a)] for a in np.linspace(0, 2 * math.pi, 24)]),
        0.15,
        pixel_mm,
        closed=True,
        shape_hw=shape,
    )
    brass = np.zeros(shape, np.float32)
    steel = ring.copy()
    for _ in range(n):
        length = rng.uniform(4.5, 7)
        a = rng.uniform(0, 2 * math.pi)
        outline = _key_outline_cm(length, rng) + np.array([length / 2 + 0.3, 0.0])
        c, s = math.cos(a), math.sin(a)
        outline = outline @ np.array([[c, s], [-s, c]])
        key = shapes.fill_polygon(outline, shape, pixel_mm) * np.float32(rng.uniform(0.18, 0.25))
        if rng.random() < 0.6:
            brass += key
        else:
            steel += key
    return make_item("keys", [("brass", 8.5, brass), ("steel", 7.9, steel)])


def coins(rng: np.random.Generator, pixel_mm: float) -> Item:
    """A handful of coins (1–15) spread over a few cm, some overlapping."""
    n = int(rng.integers(1, 16))
    spread = rng.uniform(2, 8)
    size = spread + 3.0
    shape = (shapes.canvas_px(size, pixel_mm), shapes.canvas_px(size, pixel_mm))
    out = np.zeros(shape, np.float32)
    for _ in range(n):
        coin = shapes.disc(rng.uniform(1.6, 2.8), rng.uniform(0.15, 0.25), pixel_mm)
        off = (
            int(rng.uniform(-spread / 2, spread / 2) * 10 / pixel_mm),
            int(rng.uniform(-spread / 2, spread / 2) * 10 / pixel_mm),
        )
        out += pad_to(coin, shape, off)
    return make_item("coins", [("coins", 8.9, out)])


def small_metal(rng: np.random.Generator, pixel_mm: float) -> Item:
    """Small metal bits that litter real scans: belt buckle, paper or hair clips, a pen, glasses, a wire
    hanger, cutlery, a food tin."""
    kind = str(rng.choice(["buckle", "clip", "pen", "glasses", "hanger", "cutlery", "tin"]))
    if kind in ("hanger", "cutlery", "tin"):
        return _household_metal(rng, pixel_mm, kind)
    if kind == "buckle":
        w, h = rng.uniform(3.5, 6), rng.uniform(3, 4.5)
        strap_len = rng.uniform(15, 40)
        strap = shapes.box(strap_len, h - 0.6, 0.4, pixel_mm, corner_cm=0.2, edge_cm=0.1)
        frame = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]]) + np.array(
            [strap_len / 2, 0.0]
        )
        metal = shapes.polyline_tube(
            frame,
            rng.uniform(0.3, 0.5),
            pixel_mm,
            closed=True,
            shape_hw=(strap.shape[0] + _px(1.5, pixel_mm), strap.shape[1] + _px(w, pixel_mm) * 2),
        )
        return make_item("belt", [("steel", 7.9, metal), ("leather", vary_density(rng, "leather"), strap)])
    if kind == "clip":
        t = np.linspace(0, 1, 30)
        pts = np.stack(
            [3 * np.cos(2 * math.pi * 1.5 * t) * (1 - 0.3 * t), 0.6 * np.sin(2 * math.pi * 1.5 * t) + (t - 0.5)], 1
        )
        return make_item("clip", [("steel", 7.9, shapes.polyline_tube(pts, 0.1, pixel_mm))])
    if kind == "pen":
        body = shapes.cylinder(rng.uniform(12, 15), 1.0, pixel_mm, wall_cm=0.1, round_ends=True)
        spring = pad_to(shapes.cylinder(1.5, 0.3, pixel_mm, wall_cm=0.05), body.shape, (0, body.shape[1] // 4))
        return make_item("pen", [("abs", 1.05, body), ("steel", 7.9, spring)])
    shape = (shapes.canvas_px(5.0, pixel_mm), shapes.canvas_px(14.0, pixel_mm))
    circle = np.array([[2.3 * math.cos(a), 2.0 * math.sin(a)] for a in np.linspace(0, 2 * math.pi, 24)])
    lenses = np.zeros(shape, np.float32)
    frame = np.zeros(shape, np.float32)
    for side in (-1, 1):
        lenses += pad_to(shapes.ellipsoid(4.4, 3.8, 0.4, pixel_mm), shape, (0, side * int(30 / pixel_mm)))
        frame += shapes.polyline_tube(circle + np.array([3.0 * side, 0.0]), 0.2, pixel_mm, closed=True, shape_hw=shape)
        # Folded temples run back across the lenses.
        frame += shapes.polyline_tube(
            np.array([[5.3 * side, -0.5], [-1.0 * side, 1.4]]), 0.15, pixel_mm, shape_hw=shape
        )
    return make_item("glasses", [("pmma", 1.18, lenses), ("steel", 7.9, frame)])


def _household_metal(rng: np.random.Generator, pixel_mm: float, kind: str) -> Item:
    """A wire coat hanger, a spoon or fork, or a food tin (a steel can seen side-on, holding food)."""
    if kind == "hanger":
        w, h = rng.uniform(36, 44), rng.uniform(14, 20)
        pts = np.array([[-w / 2, h / 2], [0.0, -h / 2 + 3], [0.0, -h / 2], [1.5, -h / 2 - 2.5], [3.0, -h / 2]])
        frame = np.array([[-w / 2, h / 2], [w / 2, h / 2], [0.0, -h / 2 + 3]])
        shape = shapes.polyline_canvas(np.concatenate([pts, frame]), 1.0, pixel_mm)
        wire = shapes.polyline_tube(pts, 0.25, pixel_mm, shape_hw=shape)
        wire += shapes.polyline_tube(frame, 0.25, pixel_mm, closed=True, shape_hw=shape)
        return make_item("hanger", [("steel", 7.9, np.minimum(wire, 0.3))])
    if kind == "cutlery":
        length = rng.uniform(15, 21)
        handle = shapes.box(length * 0.65, rng.uniform(0.8, 1.4), 0.2, pixel_mm, corner_cm=0.3, edge_cm=0.05)
        shape = (shapes.canvas_px(4.5, pixel_mm), shapes.canvas_px(length, pixel_mm))
        head = shapes.ellipsoid(length * 0.3, rng.uniform(3.0, 4.2), 0.5, pixel_mm)
        steel = pad_to(handle, shape, (0, -_px(length * 0.17, pixel_mm)))
        steel += pad_to(np.minimum(head, 0.2), shape, (0, _px(length * 0.33, pixel_mm)))
        return make_item("cutlery", [("steel", 7.9, steel)])
    length, diameter = rng.uniform(7, 12), rng.uniform(6.5, 10)
    wall = rng.uniform(0.015, 0.025)
    can = shapes.cylinder(length, diameter, pixel_mm, wall_cm=wall)
    # The two lids: seen side-on, each is a steel disc edge-on, a strong thin line.
    lids = np.zeros_like(can)
    for side in (-1, 1):
        x = lids.shape[1] // 2 + side * (_px(length / 2, pixel_mm) - 1)
        lids[:, max(0, x - 1) : x + 1] = np.where(can[:, max(0, x - 1) : x + 1] > 0, diameter * 0.9, 0.0)
    food = shapes.cylinder(length - 0.4, diameter - 0.2, pixel_mm)
    food_mat = str(rng.choice(["water", "oil", "cheese"]))
    return make_item("tin", [("steel", 7.9, can + lids * 0.1), (food_mat, vary_density(rng, food_mat), food)])
