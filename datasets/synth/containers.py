"""Containers: suitcase, backpack, holdall and screening tray, seen from above as they lie on the belt.

A container is a hollow shell (its side walls edge-on make the bright outline of every real scan) plus
its hardware: aluminium trolley tubes, wheels, zips with metal pulls, handles, straps and buckles. The
packable interior is returned separately; the scene places clutter and contraband inside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from datasets.synth import shapes
from datasets.synth.clutter import vary_density
from datasets.synth.fabric import panel_seams
from datasets.synth.items import Item, Layer, make_item

CONTAINER_KINDS: tuple[str, ...] = ("suitcase", "backpack", "holdall", "tray")


@dataclass(frozen=True)
class Container:
    """A container on a canvas centred on the bag, its length along x.

    `interior` (h, w) is the packable area's coverage (0–1) on the same canvas; `interior_cm` = (length,
    width) of the largest rectangle inside it, centred; `depth_cm` the inside height.
    """

    kind: str
    item: Item
    interior: np.ndarray
    interior_cm: tuple[float, float]
    depth_cm: float


def _px(cm: float, pixel_mm: float) -> int:
    return int(round(cm * 10.0 / pixel_mm))


def rounded_rect_points_cm(length_cm: float, width_cm: float, corner_cm: float, n_per_corner: int = 6) -> np.ndarray:
    """Closed outline (N×2 cm, about 0) of a rounded rectangle, counter-clockwise from the +x side."""
    rc = min(corner_cm, length_cm / 2, width_cm / 2)
    pts = []
    for cx, cy, a0 in ((1, 1, 0.0), (-1, 1, 90.0), (-1, -1, 180.0), (1, -1, 270.0)):
        for a in np.linspace(math.radians(a0), math.radians(a0 + 90), n_per_corner):
            pts.append((cx * (length_cm / 2 - rc) + rc * math.cos(a), cy * (width_cm / 2 - rc) + rc * math.sin(a)))
    return np.array(pts)


def _zip_pull(pixel_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A zinc-alloy zip puller: a small tab about 2.5 × 1 × 0.3 cm."""
    return shapes.box(
        rng.uniform(1.8, 3.2), rng.uniform(0.8, 1.2), rng.uniform(0.2, 0.35), pixel_mm, corner_cm=0.3, edge_cm=0.1
    )


def _pulls(
    rng: np.random.Generator, points_cm: np.ndarray, shape: tuple[int, int], pixel_mm: float, n_pulls: int
) -> np.ndarray:
    """`n_pulls` zip pullers at random points of a zip's polyline."""
    pulls = np.zeros(shape, np.float32)
    for _ in range(n_pulls):
        p = points_cm[int(rng.integers(len(points_cm)))]
        pull = shapes.rotated(_zip_pull(pixel_mm, rng), rng.uniform(0, 180))
        shapes.add_at(pulls, pull, (_px(p[1], pixel_mm), _px(p[0], pixel_mm)))
    return pulls


def _zip(
    rng: np.random.Generator,
    points_cm: np.ndarray,
    shape: tuple[int, int],
    pixel_mm: float,
    closed: bool,
    n_pulls: int,
    metal: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Zip tape along a polyline and its pullers: (teeth thickness, puller thickness) canvases."""
    teeth = shapes.polyline_band(points_cm, 0.6, 0.05 if metal else 0.15, pixel_mm, closed=closed, shape_hw=shape)
    return teeth, _pulls(rng, points_cm, shape, pixel_mm, n_pulls)


def _wheel(rng: np.random.Generator, pixel_mm: float, face_on: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rubber tyre, plastic hub and housing, steel axle) of one castor wheel."""
    d, width = rng.uniform(4.5, 7.0), rng.uniform(1.8, 3.0)
    if face_on:
        tyre = shapes.disc(d, width, pixel_mm, hole_diameter_cm=d * 0.6)
        hub = shapes.disc(d * 0.65, width * 0.8, pixel_mm)
        axle = shapes.disc(0.8, width + 1.0, pixel_mm)
    else:
        tyre = shapes.rotated(shapes.cylinder(width, d, pixel_mm), 90) * 1.0
        hub = shapes.rotated(shapes.cylinder(width * 0.8, d * 0.6, pixel_mm), 90)
        axle = shapes.cylinder(width + 1.0, 0.8, pixel_mm)
    return tyre, hub, axle


def suitcase(rng: np.random.Generator, pixel_mm: float) -> Container:
    """Hard- or soft-shell trolley suitcase: shell, trolley tubes along its back, wheels, zips, handles."""
    hard = rng.random() < 0.5
    length, width, depth = rng.uniform(50, 78), rng.uniform(35, 52), rng.uniform(20, 32)
    corner = rng.uniform(4, 8) if hard else rng.uniform(4, 10)
    wall = rng.uniform(0.25, 0.4) if hard else rng.uniform(0.12, 0.25)
    edge = rng.uniform(2, 5) if hard else rng.uniform(depth / 4, depth / 2)
    margin = 10.0
    shape = (shapes.canvas_px(width + 2 * margin, pixel_mm), shapes.canvas_px(length + 2 * margin, pixel_mm))
    y, x = shapes.coords_cm(shape, pixel_mm)
    depth_in = shapes.rounded_rect_depth_cm(y, x, length, width, corner)
    shell_mat = "abs" if hard else str(rng.choice(["nylon", "polyester"]))
    shell = shapes.hollow_shell(depth_in, depth, wall, edge, pixel_mm)
    lining = shapes.coverage(depth_in - 1.0, pixel_mm) * np.float32(0.06)
    parts = [(shell_mat, vary_density(rng, shell_mat, 0.1), shell), ("polyester", 0.5, lining)]
    # Trolley: two aluminium tubes inside the back panel, from the handle end most of the way down.
    aluminium = np.zeros(shape, np.float32)
    tube_len = length * rng.uniform(0.7, 0.92)
    spacing = rng.uniform(0.35, 0.6) * width
    tube_d = rng.uniform(1.8, 3.2)
    shift_x = _px((length - tube_len) / 2 - 1.5, pixel_mm)
    for sy in (-1, 1):
        # Telescopic: an inner tube runs inside the outer one over most of its length.
        tube = shapes.cylinder(tube_len, tube_d, pixel_mm, wall_cm=rng.uniform(0.1, 0.2))
        inner = shapes.cylinder(tube_len * 0.9, tube_d - 0.4, pixel_mm, wall_cm=0.1)
        shapes.add_at(aluminium, tube, (_px(sy * spacing / 2, pixel_mm), shift_x))
        shapes.add_at(aluminium, inner, (_px(sy * spacing / 2, pixel_mm), shift_x - _px(tube_len * 0.04, pixel_mm)))
    plastic = np.zeros(shape, np.float32)
    housing = shapes.box(
        rng.uniform(4, 7), spacing + tube_d + 3, rng.uniform(2, 4), pixel_mm, corner_cm=1.0, edge_cm=0.5
    )
    shapes.add_at(plastic, housing, (0, _px(length / 2 - 3.5, pixel_mm)))
    # Carry handles: on the top long side and on the handle end.
    for off, rot in (((_px(width / 2 + 0.5, pixel_mm), 0), 0.0), ((0, _px(length / 2 + 0.5, pixel_mm)), 90.0)):
        grip = shapes.rotated(shapes.box(rng.uniform(12, 18), 2.5, 2.0, pixel_mm, corner_cm=1.0, edge_cm=0.8), rot)
        shapes.add_at(plastic, grip, off)
    steel = np.zeros(shape, np.float32)
    rubber = np.zeros(shape, np.float32)
    spinner = hard or rng.random() < 0.3
    corners = [(-1, -1), (-1, 1), (1, -1), (1, 1)] if spinner else [(-1, -1), (-1, 1)]
    face_on = rng.random() < 0.5
    for sx, sy in corners:
        tyre, hub, axle = _wheel(rng, pixel_mm, face_on)
        # Wheels sit in moulded housings on the corners, half over the shell.
        off = (_px(sy * (width / 2 - 3.0), pixel_mm), _px(sx * (length / 2 - 1.0), pixel_mm))
        housing = shapes.box(
            rng.uniform(6, 8), rng.uniform(5, 7), rng.uniform(2, 4), pixel_mm, corner_cm=1.5, edge_cm=0.8
        )
        for dst, src in ((rubber, tyre), (plastic, hub), (steel, axle), (plastic, housing)):
            shapes.add_at(dst, src, off)
    inset = rng.uniform(0.5, 2.0) if hard else rng.uniform(1.0, 4.0)
    zip_pts = rounded_rect_points_cm(length - 2 * inset, width - 2 * inset, max(corner - inset, 1.0))
    # The main zip follows the outline, so its band comes from the outline's distance field (cheap).
    metal_zip = rng.random() < 0.5
    teeth = shapes.coverage(0.3 - np.abs(depth_in - inset), pixel_mm) * np.float32(0.05 if metal_zip else 0.15)
    coil = np.zeros(shape, np.float32)
    if not metal_zip:
        teeth, coil = coil, teeth
    pulls = _pulls(rng, zip_pts, shape, pixel_mm, int(rng.integers(1, 3)))
    zinc = pulls
    for _ in range(0 if hard else int(rng.integers(1, 3))):  # front pocket zips
        yline = rng.uniform(-0.35, 0.35) * width
        pts = np.array([[-length * 0.35, yline], [length * 0.35, yline]])
        t2, p2 = _zip(rng, pts, shape, pixel_mm, False, 1, metal=False)
        coil, zinc = coil + t2, zinc + p2
    parts += [
        ("aluminium", 2.7, aluminium),
        ("abs", 1.05, plastic),
        ("rubber", 0.95, rubber),
        ("steel", 7.9, steel + teeth),
        ("nylon", 1.14, coil),
        ("zinc", 7.1, zinc),
    ]
    interior = shapes.coverage(depth_in - max(wall, 0.5), pixel_mm)
    return Container("suitcase", make_item("suitcase", parts), interior, (length - 3.0, width - 3.0), depth - 2 * wall)


def _soft_outline_depth(
    rng: np.random.Generator, shape: tuple[int, int], pixel_mm: float, length: float, width: float, corner: float
) -> np.ndarray:
    """Inward distance (cm) to a soft bag's outline: a rounded rectangle with a gentle wobble."""
    y, x = shapes.coords_cm(shape, pixel_mm)
    wobble = shapes.smooth_noise(rng, shape, 20.0 * 10.0 / pixel_mm) * np.float32(0.006 * min(length, width))
    return shapes.rounded_rect_depth_cm(y, x, length, width, corner) + wobble


def _strap_points(
    rng: np.random.Generator, start: tuple[float, float], end: tuple[float, float], sag_cm: float
) -> np.ndarray:
    """A strap or handle as a gently curved polyline from `start` to `end` (cm), bowed sideways by `sag_cm`."""
    t = np.linspace(0, 1, 12)[:, None]
    a, b = np.array(start), np.array(end)
    normal = np.array([-(b - a)[1], (b - a)[0]]) / (np.linalg.norm(b - a) + 1e-6)
    return a + (b - a) * t + normal * sag_cm * 4 * t * (1 - t) + rng.normal(0, 0.2, (12, 2))


def backpack(rng: np.random.Generator, pixel_mm: float) -> Container:
    """Backpack lying on its front: fabric shell, padded back, shoulder straps with buckles, curved zips."""
    length, width, depth = rng.uniform(38, 52), rng.uniform(27, 36), rng.uniform(12, 25)
    margin = 14.0
    shape = (shapes.canvas_px(width + 2 * margin, pixel_mm), shapes.canvas_px(length + 2 * margin, pixel_mm))
    depth_in = _soft_outline_depth(rng, shape, pixel_mm, length, width, rng.uniform(0.25, 0.45) * width)
    fabric = str(rng.choice(["nylon", "polyester"]))
    shell = shapes.hollow_shell(depth_in, depth, rng.uniform(0.1, 0.25), depth / 2, pixel_mm)
    foam = shapes.coverage(depth_in - 3.0, pixel_mm) * np.float32(rng.uniform(1.0, 2.5))
    straps = np.zeros(shape, np.float32)
    plastic = np.zeros(shape, np.float32)
    for sy in (-1, 1):  # shoulder straps from the top (+x) down to the bottom corners and beyond
        pts = _strap_points(
            rng,
            (length * 0.4, sy * width * 0.15),
            (-length * 0.35, sy * width * rng.uniform(0.35, 0.6)),
            sy * rng.uniform(2, 6),
        )
        straps += shapes.polyline_band(pts, rng.uniform(5, 8), 0.5, pixel_mm, shape_hw=shape)
        tail = np.array([pts[-1], pts[-1] + np.array([-rng.uniform(3, 10), sy * rng.uniform(0, 8)])])
        straps += shapes.polyline_band(tail, 2.5, 0.3, pixel_mm, shape_hw=shape)
        shapes.add_at(
            plastic,
            shapes.rotated(shapes.box(4.0, 3.0, 0.6, pixel_mm, 0.3, 0.1), rng.uniform(0, 180)),
            (_px(pts[-1][1], pixel_mm), _px(pts[-1][0], pixel_mm)),
        )
    handle = _strap_points(rng, (length / 2 - 1, -4.0), (length / 2 - 1, 4.0), rng.uniform(3, 6))
    straps += shapes.polyline_band(handle, 2.5, 0.5, pixel_mm, shape_hw=shape)
    # Main zip round the top, pocket zip across the front; coil zips are plastic, pullers metal.
    a = np.linspace(-0.6 * math.pi, 0.6 * math.pi, 24)
    inset = rng.uniform(2, 5)
    main = np.stack([(length / 2 - inset) * np.cos(a) * 0.95, (width / 2 - inset) * np.sin(a)], 1)
    teeth, pulls = _zip(rng, main, shape, pixel_mm, False, int(rng.integers(1, 3)), metal=False)
    xp = rng.uniform(-0.2, 0.1) * length
    pocket = _strap_points(rng, (xp, -width * 0.35), (xp, width * 0.35), rng.uniform(-3, 3))
    t2, p2 = _zip(rng, pocket, shape, pixel_mm, False, int(rng.integers(1, 3)), metal=False)
    parts = [
        (fabric, vary_density(rng, fabric, 0.2), shell),
        ("polyethylene", 0.05, foam),
        ("nylon", 0.4, straps),
        ("abs", 1.05, plastic),
        ("nylon", 1.14, teeth + t2),
        ("zinc", 7.1, pulls + p2),
    ]
    interior = shapes.coverage(depth_in - 1.0, pixel_mm)
    return Container("backpack", make_item("backpack", parts), interior, (length * 0.8, width * 0.8), depth)


def holdall(rng: np.random.Generator, pixel_mm: float) -> Container:
    """Holdall / duffel bag: long soft body, zip along its length, carry handles, D-rings and a shoulder strap."""
    length, width, depth = rng.uniform(48, 72), rng.uniform(26, 36), rng.uniform(22, 34)
    margin = 14.0
    shape = (shapes.canvas_px(width + 2 * margin, pixel_mm), shapes.canvas_px(length + 2 * margin, pixel_mm))
    depth_in = _soft_outline_depth(rng, shape, pixel_mm, length, width, rng.uniform(0.3, 0.5) * width)
    fabric = str(rng.choice(["nylon", "polyester", "leather"]))
    shell = shapes.hollow_shell(depth_in, depth, rng.uniform(0.12, 0.3), depth / 2, pixel_mm)
    straps = np.zeros(shape, np.float32)
    for sy in (-1, 1):  # two carry handles: loops stitched at ±length/5, lying across the body
        loop = _strap_points(
            rng, (-length / 5, sy * width * 0.25), (length / 5, sy * width * 0.25), sy * rng.uniform(4, 10)
        )
        straps += shapes.polyline_band(loop, 3.0, 0.4, pixel_mm, shape_hw=shape)
    steel = np.zeros(shape, np.float32)
    ring = np.array([[1.8 * math.cos(t), 1.5 * math.sin(t)] for t in np.linspace(0, 2 * math.pi, 20)])
    for sx in (-1, 1):  # D-rings on the ends and swivel clips of the shoulder strap
        shapes.add_at(
            steel, shapes.polyline_tube(ring, 0.5, pixel_mm, closed=True), (0, _px(sx * (length / 2 + 0.5), pixel_mm))
        )
    if rng.random() < 0.7:
        strap = _strap_points(rng, (-length / 2 - 1, 0.0), (length / 2 + 1, 0.0), rng.uniform(-25, 25))
        straps += shapes.polyline_band(strap, 3.8, 0.25, pixel_mm, shape_hw=shape)
        for end in (strap[0], strap[-1]):
            clip = shapes.rotated(shapes.box(5.0, 2.2, 0.5, pixel_mm, 0.5, 0.1), rng.uniform(0, 180))
            shapes.add_at(steel, clip, (_px(end[1], pixel_mm), _px(end[0], pixel_mm)))
    zip_line = _strap_points(rng, (-length * 0.42, 0.0), (length * 0.42, 0.0), rng.uniform(-2, 2))
    metal_zip = rng.random() < 0.6
    teeth, pulls = _zip(rng, zip_line, shape, pixel_mm, False, 2, metal=metal_zip)
    parts = [
        (fabric, vary_density(rng, fabric, 0.2), shell),
        ("nylon", 0.7, straps),
        ("steel", 7.9, steel + (teeth if metal_zip else 0.0)),
        ("nylon", 1.14, teeth * (0.0 if metal_zip else 1.0)),
        ("zinc", 7.1, pulls),
    ]
    interior = shapes.coverage(depth_in - 1.0, pixel_mm)
    return Container("holdall", make_item("holdall", parts), interior, (length * 0.8, width * 0.75), depth)


def tray(rng: np.random.Generator, pixel_mm: float) -> Container:
    """Screening tray: moulded plastic floor, sloped walls (wide grey band) and a rolled rim."""
    length, width, height = rng.uniform(55, 72), rng.uniform(38, 50), rng.uniform(9, 15)
    wall, slope = rng.uniform(0.25, 0.4), math.radians(rng.uniform(60, 75))
    band = height / math.tan(slope)  # horizontal run of a sloped wall
    shape = (shapes.canvas_px(width + 2, pixel_mm), shapes.canvas_px(length + 2, pixel_mm))
    y, x = shapes.coords_cm(shape, pixel_mm)
    corner = rng.uniform(3, 6)
    depth_in = shapes.rounded_rect_depth_cm(y, x, length, width, corner)
    outer = shapes.coverage(depth_in, pixel_mm)
    floor = shapes.coverage(depth_in - band, pixel_mm)
    rim = shapes.coverage(depth_in, pixel_mm) - shapes.coverage(depth_in - 1.0, pixel_mm)
    thick = floor * wall + (outer - floor) * wall / math.cos(slope) + rim * rng.uniform(0.6, 1.2)
    item = make_item("tray", [("polyethylene", rng.uniform(0.9, 0.95), thick.astype(np.float32))])
    return Container("tray", item, floor, (length - 2 * band - 2, width - 2 * band - 2), height)


BUILDERS = {"suitcase": suitcase, "backpack": backpack, "holdall": holdall, "tray": tray}


def build_container(rng: np.random.Generator, kind: str, pixel_mm: float) -> Container:
    """One container of `kind` (one of CONTAINER_KINDS) at `pixel_mm`."""
    if kind not in BUILDERS:
        raise KeyError(f"unknown container {kind!r}; known: {', '.join(CONTAINER_KINDS)}")
    container = BUILDERS[kind](rng, pixel_mm)
    if kind == "tray":
        return container
    # Linings are sewn: seams, piping and inner pockets draw thin fabric lines across the whole bag.
    seams = panel_seams(rng, container.interior, pixel_mm, int(rng.integers(2, 8)), band_cm=rng.uniform(0.3, 0.8))
    layer = Layer("polyester", 0.6, seams * np.float32(rng.uniform(0.2, 0.5)))
    hardware = _hardware(rng, container.interior, pixel_mm, int(rng.integers(3, 14)))
    item = Item(container.item.name, (*container.item.layers, layer, Layer("zinc", 7.1, hardware)))
    return replace(container, item=item)


def _hardware(rng: np.random.Generator, interior: np.ndarray, pixel_mm: float, n: int) -> np.ndarray:
    """Small metal fittings along the inside of a bag's rim — D-rings, strap adjusters, zip sliders,
    rivets, feet — as one zinc-alloy thickness canvas. Real scans show a scatter of them round every bag."""
    out = np.zeros(interior.shape, np.float32)
    inside = (interior > 0.5).astype(np.uint8)
    if not inside.any():
        return out
    ring_px = max(2, _px(4.0, pixel_mm))
    kernel = np.ones((3, 3), np.uint8)
    shrunk = cv2.erode(inside, kernel, iterations=ring_px)
    ys, xs = np.nonzero(inside & (1 - shrunk))
    if ys.size == 0:
        return out
    h, w = interior.shape
    for k in rng.integers(ys.size, size=n):
        kind = int(rng.integers(4))
        if kind == 0:  # a D-ring or split ring
            a, b = rng.uniform(0.8, 2.0), rng.uniform(0.6, 1.6)
            ring = np.array([[a * math.cos(t), b * math.sin(t)] for t in np.linspace(0, 2 * math.pi, 16)])
            part = shapes.polyline_tube(ring, rng.uniform(0.2, 0.4), pixel_mm, closed=True)
        elif kind == 1:  # a strap adjuster or buckle frame
            bw, bh = rng.uniform(2.5, 5.0), rng.uniform(1.5, 3.0)
            frame = np.array([[-bw / 2, -bh / 2], [bw / 2, -bh / 2], [bw / 2, bh / 2], [-bw / 2, bh / 2]])
            part = shapes.polyline_tube(frame, rng.uniform(0.25, 0.45), pixel_mm, closed=True)
        elif kind == 2:  # a zip slider
            part = _zip_pull(pixel_mm, rng)
        else:  # rivets or a bag foot
            part = shapes.disc(rng.uniform(0.8, 2.0), rng.uniform(0.1, 0.4), pixel_mm)
        part = shapes.rotated(part, rng.uniform(0.0, 180.0))
        shapes.add_at(out, part, (int(ys[k]) - h // 2, int(xs[k]) - w // 2))
    return out
