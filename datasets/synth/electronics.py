"""Electronic clutter: laptops, tablets, phones, power banks, wall chargers and cables.

These are the mixed-material objects of a scan (green–blue in false colour): circuit boards, lithium
cells, copper and steel fittings. Laptops also serve as the dense cover of the "under_dense" concealment.
Every builder takes (rng, pixel_mm) and returns an `Item` in real sizes.
"""

from __future__ import annotations

import math

import numpy as np

from datasets.synth import shapes
from datasets.synth.clutter import vary_density
from datasets.synth.items import Item, make_item, pad_to


def _px(cm: float, pixel_mm: float) -> int:
    return int(round(cm * 10.0 / pixel_mm))


def _scatter_boxes(
    rng: np.random.Generator,
    shape: tuple[int, int],
    pixel_mm: float,
    n: int,
    size_cm: tuple[float, float],
    height_cm: float,
    area_cm: tuple[float, float, float, float],
) -> np.ndarray:
    """`n` small boxes (chips, connectors) scattered over the rectangle area_cm = (x0, y0, x1, y1) about the centre."""
    out = np.zeros(shape, np.float32)
    for _ in range(n):
        chip = shapes.box(
            rng.uniform(*size_cm), rng.uniform(*size_cm), height_cm, pixel_mm, corner_cm=0.05, edge_cm=0.0
        )
        off = (_px(rng.uniform(area_cm[1], area_cm[3]), pixel_mm), _px(rng.uniform(area_cm[0], area_cm[2]), pixel_mm))
        out += pad_to(chip, shape, off)
    return out


def laptop(rng: np.random.Generator, pixel_mm: float) -> Item:
    """Closed laptop: plastic or aluminium shell, screen glass, circuit board with chips and heat pipe,
    battery block, keyboard plate, steel hinges and screws."""
    length, width, height = rng.uniform(29, 38), rng.uniform(20, 26), rng.uniform(1.5, 2.6)
    shape = (shapes.canvas_px(width, pixel_mm), shapes.canvas_px(length, pixel_mm))
    y, x = shapes.coords_cm(shape, pixel_mm)
    depth = shapes.rounded_rect_depth_cm(y, x, length, width, rng.uniform(0.5, 1.5))
    metal_shell = rng.random() < 0.4
    shell = shapes.hollow_shell(depth, height, 0.1 if metal_shell else 0.18, 0.4, pixel_mm)
    parts = [("aluminium" if metal_shell else "abs", 2.7 if metal_shell else 1.05, shell)]
    inner = shapes.coverage(depth - 0.8, pixel_mm)
    parts.append(("glass", 2.4, inner * np.float32(0.08)))  # display glass
    parts.append(("pmma", 1.18, inner * np.float32(0.15)))  # light guide and films
    # Board in the hinge-side half, battery along the front edge (y > 0 is the front here).
    board_box = shapes.box(
        length * rng.uniform(0.55, 0.8), width * rng.uniform(0.35, 0.5), 0.16, pixel_mm, corner_cm=0.3, edge_cm=0.0
    )
    board_off = (-_px(width * 0.2, pixel_mm), _px(rng.uniform(-0.1, 0.1) * length, pixel_mm))
    parts.append(("fr4", 1.85, pad_to(board_box, shape, board_off)))
    chips = _scatter_boxes(
        rng,
        shape,
        pixel_mm,
        int(rng.integers(6, 14)),
        (0.5, 2.5),
        0.12,
        (-length * 0.3, -width * 0.4, length * 0.3, -width * 0.05),
    )
    parts.append(("silicon", 2.33, chips))
    battery = shapes.box(
        length * rng.uniform(0.5, 0.75), rng.uniform(5, 8), rng.uniform(0.5, 0.8), pixel_mm, corner_cm=0.3, edge_cm=0.1
    )
    parts.append(
        ("li_battery", vary_density(rng, "li_battery"), pad_to(battery, shape, (_px(width * 0.25, pixel_mm), 0)))
    )
    keyboard = shapes.box(length * 0.8, width * 0.4, rng.uniform(0.02, 0.05), pixel_mm, corner_cm=0.2, edge_cm=0.0)
    steel = pad_to(keyboard, shape, (_px(width * 0.1, pixel_mm), 0))
    pipe_y = -width * rng.uniform(0.15, 0.3)
    pipe = np.array(
        [[-length * 0.3, pipe_y], [length * 0.05, pipe_y + rng.uniform(-2, 2)], [length * 0.3, -width * 0.4]]
    )
    copper = shapes.polyline_tube(pipe, rng.uniform(0.5, 0.8), pixel_mm, wall_cm=0.05, shape_hw=shape)
    copper += pad_to(
        shapes.disc(rng.uniform(1.5, 2.5), 0.05, pixel_mm),
        shape,
        (_px(-width * 0.2, pixel_mm), _px(length * 0.15, pixel_mm)),
    )
    for sx in (-1, 1):  # hinges at the back corners
        hinge = shapes.box(rng.uniform(2.5, 4), 1.2, 0.6, pixel_mm, corner_cm=0.2, edge_cm=0.1)
        steel += pad_to(hinge, shape, (-_px(width / 2 - 1.2, pixel_mm), sx * _px(length * 0.35, pixel_mm)))
    screw = shapes.disc(0.5, 0.35, pixel_mm)
    for k in range(int(rng.integers(6, 14))):
        u = rng.uniform(-0.46, 0.46)
        edge = k % 4
        off = (
            _px((0.46 if edge == 0 else -0.46) * width if edge < 2 else u * width, pixel_mm),
            _px(u * length if edge < 2 else (0.47 if edge == 2 else -0.47) * length, pixel_mm),
        )
        steel += pad_to(screw, shape, off)
    parts += [("steel", 7.9, steel), ("copper", 8.96, copper)]
    return make_item("laptop", parts)


def phone(rng: np.random.Generator, pixel_mm: float) -> Item:
    """Phone or tablet: glass front and back, aluminium frame, battery, small board and camera."""
    tablet = rng.random() < 0.25
    length, width = (rng.uniform(20, 28), rng.uniform(14, 19)) if tablet else (rng.uniform(13, 17), rng.uniform(6.5, 8))
    height = rng.uniform(0.6, 0.9)
    shape = (shapes.canvas_px(width, pixel_mm), shapes.canvas_px(length, pixel_mm))
    y, x = shapes.coords_cm(shape, pixel_mm)
    depth = shapes.rounded_rect_depth_cm(y, x, length, width, rng.uniform(0.6, 1.2))
    frame = shapes.hollow_shell(depth, height, 0.08, 0.2, pixel_mm) * (depth < 0.4)
    glass = shapes.coverage(depth, pixel_mm) * np.float32(0.12)
    battery = pad_to(
        shapes.box(length * 0.55, width * 0.8, 0.45, pixel_mm, corner_cm=0.3, edge_cm=0.05),
        shape,
        (0, -_px(length * 0.1, pixel_mm)),
    )
    board = pad_to(
        shapes.box(length * 0.25, width * 0.8, 0.1, pixel_mm, corner_cm=0.2, edge_cm=0.0),
        shape,
        (0, _px(length * 0.33, pixel_mm)),
    )
    camera = pad_to(
        shapes.disc(rng.uniform(0.8, 1.5), 0.3, pixel_mm),
        shape,
        (-_px(width * 0.25, pixel_mm), _px(length * 0.38, pixel_mm)),
    )
    return make_item(
        "tablet" if tablet else "phone",
        [
            ("aluminium", 2.7, frame),
            ("glass", 2.4, glass),
            ("li_battery", 2.5, battery),
            ("fr4", 1.85, board),
            ("steel", 7.9, camera),
        ],
    )


def charger(rng: np.random.Generator, pixel_mm: float) -> Item:
    """Power bank (lithium cells in a plastic shell) or wall plug (transformer, copper, steel pins), with a cable."""
    if rng.random() < 0.5:
        length, width, height = rng.uniform(9, 15), rng.uniform(6, 8), rng.uniform(1.4, 2.4)
        shell = shapes.box(length, width, height, pixel_mm, corner_cm=0.8, edge_cm=0.5)
        shape = shell.shape
        cells = np.zeros(shape, np.float32)
        n_cells = int(rng.integers(2, 4))
        for k in range(n_cells):  # 18650 cells lying side by side: steel cans, side-on cylinders
            cyl = shapes.cylinder(length * 0.85, 1.8, pixel_mm, wall_cm=0.03)
            cells += pad_to(cyl, shape, (_px((k - (n_cells - 1) / 2) * 1.9, pixel_mm), 0))
        fill = (cells > 0).astype(np.float32) * pad_to(shapes.cylinder(length * 0.85, 1.74, pixel_mm), shape)
        board = pad_to(
            shapes.box(2.0, width * 0.8, 0.16, pixel_mm, corner_cm=0.1, edge_cm=0.0),
            shape,
            (0, _px(length * 0.42, pixel_mm)),
        )
        return make_item(
            "power_bank",
            [("abs", 1.05, shell * 0.15), ("steel", 7.9, cells), ("li_battery", 2.5, fill), ("fr4", 1.85, board)],
        )
    size = rng.uniform(4, 7)
    shell = shapes.box(size, size, rng.uniform(2.5, 4), pixel_mm, corner_cm=0.6, edge_cm=0.4)
    shape = (shell.shape[0], shell.shape[1] + _px(2.0, pixel_mm))
    coil = pad_to(shapes.disc(size * 0.5, 1.5, pixel_mm, hole_diameter_cm=size * 0.2), shape)
    core = pad_to(shapes.box(size * 0.4, size * 0.4, 1.2, pixel_mm, corner_cm=0.1, edge_cm=0.0), shape)
    pins = np.zeros(shape, np.float32)
    for sy in (-1, 1):
        pins += pad_to(
            shapes.cylinder(2.0, 0.45, pixel_mm), shape, (sy * _px(0.95, pixel_mm), _px(size / 2 + 0.8, pixel_mm))
        )
    return make_item(
        "wall_charger",
        [
            ("abs", 1.05, pad_to(shell, shape) * 0.25),
            ("copper", 8.96, coil * 0.3),
            ("iron", 7.87, core * 0.5),
            ("brass", 8.5, pins),
        ],
    )


def random_curve_cm(rng: np.random.Generator, length_cm: float, coiled: bool, step_cm: float = 0.8) -> np.ndarray:
    """Points (N×2 cm, centred on their bounding box) of a flexible cable: a loose meander or a coil."""
    n = max(4, int(length_cm / step_cm))
    if coiled:
        radius = rng.uniform(4, 9)
        turns = length_cm / (2 * math.pi * radius)
        t = np.linspace(0, turns * 2 * math.pi, n)
        wobble = 1.0 + 0.15 * np.sin(t * rng.uniform(0.2, 0.6) + rng.uniform(0, 6))
        drift = np.stack([np.linspace(0, rng.uniform(-4, 4), n), np.linspace(0, rng.uniform(-4, 4), n)], 1)
        pts = np.stack([radius * wobble * np.cos(t) * rng.uniform(0.7, 1.0), radius * wobble * np.sin(t)], 1) + drift
    else:
        # A meander that turns back when it leaves a box of about 25 cm, as a cable stuffed into a bag.
        half = rng.uniform(8, 15)
        heading = rng.uniform(0, 2 * math.pi)
        pos = np.zeros(2)
        pts = np.empty((n, 2))
        for i in range(n):
            heading += rng.normal(0, 0.35)
            step = np.array([math.cos(heading), math.sin(heading)]) * step_cm
            if np.any(np.abs(pos + step) > half):
                heading += math.pi * rng.uniform(0.6, 1.0)
                step = np.array([math.cos(heading), math.sin(heading)]) * step_cm
            pos = pos + step
            pts[i] = pos
    return pts - (pts.max(axis=0) + pts.min(axis=0)) / 2


def cable(rng: np.random.Generator, pixel_mm: float) -> Item:
    """A cable (copper conductors in a rubber or PVC sheath) with a plug: loose meander or coiled."""
    pts = random_curve_cm(rng, rng.uniform(40, 200), coiled=rng.random() < 0.5)
    diameter = rng.uniform(0.3, 0.8)
    shape = shapes.polyline_canvas(pts, 2.5, pixel_mm)
    sheath = shapes.polyline_tube(pts, diameter, pixel_mm, shape_hw=shape)
    # Two or three copper strands, drawn as one conductor of the same cross-section.
    copper_d = math.sqrt(int(rng.integers(2, 4))) * rng.uniform(0.08, 0.2)
    copper = shapes.polyline_tube(pts, copper_d, pixel_mm, shape_hw=shape)
    plug = shapes.box(
        rng.uniform(1.5, 3.5), rng.uniform(1.0, 2.0), rng.uniform(0.8, 1.5), pixel_mm, corner_cm=0.3, edge_cm=0.2
    )
    end = pts[-1] * 10.0 / pixel_mm
    plug_c = pad_to(plug, shape, (int(round(end[1])), int(round(end[0]))))
    pin = pad_to(
        shapes.box(1.2, 0.6, 0.45, pixel_mm, corner_cm=0.05, edge_cm=0.0),
        shape,
        (int(round(end[1])), int(round(end[0]))),
    )
    return make_item(
        "cable",
        [
            ("rubber" if rng.random() < 0.5 else "pvc", 1.2, sheath - copper * 0.9 + plug_c * 0.7),
            ("copper", 8.96, copper),
            ("steel", 7.9, pin * 0.3),
        ],
    )
