"""Fabric as a scanner sees it: piles of thin sheets whose edges, hems, seams and creases draw lines.

A packed garment is not a smooth block. Along a ray the scanner sums a few layers of fabric, and wherever
the number of layers changes — a sheet's cut edge, a hem folded back on itself, a seam where two panels
overlap and are stitched, a crease where the cloth turns and the ray runs along it — the attenuation
steps. Real scans of clothes are therefore full of thin, low-contrast outlines (see the SIXray and PIDray
samples); these builders produce them. Same conventions as `shapes`: float32 thickness canvases in cm,
object centred, length along x.
"""

from __future__ import annotations

import math

import numpy as np

from datasets.synth.shapes import canvas_px, fill_polygon, polyline_distance_cm, smooth_noise


def sheet_outline_cm(rng: np.random.Generator, length_cm: float, width_cm: float, n_per_side: int = 3) -> np.ndarray:
    """Closed outline (N×2, cm, about 0) of a loosely laid fabric panel: a quadrilateral whose sides sag
    and wander, with the odd notch (a sleeve, a collar, a folded-under corner)."""
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * np.array([length_cm, width_cm]) / 2
    corners += rng.normal(0.0, 0.06, corners.shape) * np.array([length_cm, width_cm])
    pts = []
    for i in range(4):
        a, b = corners[i], corners[(i + 1) % 4]
        normal = np.array([(b - a)[1], -(b - a)[0]]) / (np.linalg.norm(b - a) + 1e-9)
        for t in np.linspace(0.0, 1.0, n_per_side + 1)[:-1]:
            jitter = rng.normal(0.0, 0.035) * min(length_cm, width_cm)
            if t > 0 and rng.random() < 0.12:  # a notch: the outline steps in and out
                jitter -= rng.uniform(0.08, 0.2) * min(length_cm, width_cm)
            pts.append(a + (b - a) * t + normal * jitter)
    return np.array(pts)


def _bands(dist_cm: np.ndarray, width_cm: float, pixel_mm: float) -> np.ndarray:
    """Coverage of a band of `width_cm` about a polyline, from the distance to it (anti-aliased)."""
    return np.clip((width_cm / 2 - dist_cm) * (10.0 / pixel_mm) + 0.5, 0.0, 1.0)


def crease_lines(rng: np.random.Generator, shape_hw: tuple[int, int], pixel_mm: float, spacing_cm: float,
                 width_cm: float = 0.25) -> np.ndarray:
    """Thin meandering lines (0–1) about `spacing_cm` apart: the zero crossings of a smooth random field.

    A zero set of a smooth field is a tangle of closed curves, never crossing — the look of wrinkles.
    """
    field = smooth_noise(rng, shape_hw, spacing_cm * 10.0 / pixel_mm)
    gy, gx = np.gradient(field)
    grad = np.sqrt(gx * gx + gy * gy) + np.float32(1e-4)
    dist_cm = np.abs(field) / grad * np.float32(pixel_mm / 10.0)  # first-order distance to the zero set
    return _bands(dist_cm, width_cm, pixel_mm).astype(np.float32)


def fabric_sheet(
    rng: np.random.Generator,
    shape_hw: tuple[int, int],
    length_cm: float,
    width_cm: float,
    centre_cm: tuple[float, float],
    angle_deg: float,
    pixel_mm: float,
) -> np.ndarray:
    """One fabric panel on an (h, w) canvas, in layers of cloth (float32): 1 inside the outline, about 2
    along its hem, 2–3 along the seams crossing it, and a little more along creases."""
    outline = sheet_outline_cm(rng, length_cm, width_cm)
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    outline = outline @ rot + np.array(centre_cm)
    sheet = fill_polygon(outline, shape_hw, pixel_mm)
    if not sheet.any():
        return sheet
    hem_cm = rng.uniform(0.6, 2.0)
    dist, (y0, x0) = polyline_distance_cm(outline, shape_hw, pixel_mm, closed=True, reach_cm=hem_cm)
    layers = sheet.copy()
    # A hem: the edge folded back once (a band just inside the outline has two layers).
    hem = _bands(dist, 2 * hem_cm, pixel_mm) * sheet[y0 : y0 + dist.shape[0], x0 : x0 + dist.shape[1]]
    layers[y0 : y0 + dist.shape[0], x0 : x0 + dist.shape[1]] += hem * np.float32(rng.uniform(0.7, 1.2))
    for _ in range(int(rng.integers(0, 4))):
        # A seam: two panels overlapped and folded, a narrow band of 2–3 extra layers across the sheet.
        t = rng.uniform(-0.4, 0.4)
        along = rng.random() < 0.5
        p0 = np.array([-length_cm / 2, t * width_cm]) if along else np.array([t * length_cm, -width_cm / 2])
        p1 = -p0 + rng.normal(0.0, 0.1, 2) * np.array([length_cm, width_cm])
        bow = rng.normal(0.0, 0.08) * min(length_cm, width_cm)
        s = np.linspace(0.0, 1.0, 8)[:, None]
        normal = np.array([-(p1 - p0)[1], (p1 - p0)[0]]) / (np.linalg.norm(p1 - p0) + 1e-9)
        line = (p0 + (p1 - p0) * s + normal * bow * 4 * s * (1 - s)) @ rot + np.array(centre_cm)
        sd, (sy, sx) = polyline_distance_cm(line, shape_hw, pixel_mm, reach_cm=0.6)
        seam = _bands(sd, rng.uniform(0.3, 0.9), pixel_mm) * rng.uniform(1.5, 2.5)
        rows, cols = slice(sy, sy + sd.shape[0]), slice(sx, sx + sd.shape[1])
        layers[rows, cols] += seam * sheet[rows, cols]
    return layers


def garment_pile(rng: np.random.Generator, length_cm: float, width_cm: float, pixel_mm: float,
                 n_sheets: int, layer_cm: float) -> np.ndarray:
    """Packed clothes: `n_sheets` fabric panels of `layer_cm` compressed thickness each, piled with
    offsets and turns, creased, within a `length_cm` × `width_cm` footprint. Thickness canvas (cm), with
    an empty margin round the footprint."""
    # A margin round the footprint: jittered corners, hems and notches must not be cut by the canvas.
    margin_cm = 0.15 * min(length_cm, width_cm) + 2.0
    shape = (canvas_px(width_cm + 2 * margin_cm, pixel_mm), canvas_px(length_cm + 2 * margin_cm, pixel_mm))
    layers = np.zeros(shape, np.float32)
    for _ in range(n_sheets):
        scale = rng.uniform(0.45, 0.95)
        sheet_l, sheet_w = length_cm * scale * rng.uniform(0.8, 1.0), width_cm * scale * rng.uniform(0.8, 1.0)
        centre = (rng.uniform(-0.5, 0.5) * (length_cm - sheet_l), rng.uniform(-0.5, 0.5) * (width_cm - sheet_w))
        angle = rng.normal(0.0, 12.0) if rng.random() < 0.7 else rng.uniform(0.0, 180.0)
        # A turned panel must still fit on the canvas: shrink it to its rotated bounding box.
        a = math.radians(angle)
        fit = min(length_cm / (abs(sheet_l * math.cos(a)) + abs(sheet_w * math.sin(a)) + 1e-6),
                  width_cm / (abs(sheet_l * math.sin(a)) + abs(sheet_w * math.cos(a)) + 1e-6), 1.0)
        layers += fabric_sheet(rng, shape, sheet_l * fit, sheet_w * fit, centre, angle, pixel_mm)
    creases = crease_lines(rng, shape, pixel_mm, rng.uniform(4.0, 10.0), rng.uniform(0.15, 0.4))
    # Where the cloth folds the ray runs along it: more fabric on the crease, only where there is cloth.
    layers += creases * np.minimum(layers, 1.0) * np.float32(rng.uniform(0.5, 1.5))
    # Loose cloth varies in how tightly it is pressed: a gentle large-scale swell of the whole pile.
    swell = 1.0 + 0.2 * smooth_noise(rng, shape, 12.0 * 10.0 / pixel_mm)
    return (layers * np.float32(layer_cm) * np.clip(swell, 0.5, None)).astype(np.float32)


def panel_seams(rng: np.random.Generator, interior: np.ndarray, pixel_mm: float, n_lines: int,
                band_cm: float = 0.4) -> np.ndarray:
    """Stitched seams and pocket outlines over a bag's interior (0–1 band coverage, (h, w) float32):
    straight and gently bowed lines across it and smaller rectangles (inner pockets)."""
    h, w = interior.shape
    out = np.zeros((h, w), np.float32)
    ys, xs = np.nonzero(interior > 0.5)
    if ys.size == 0:
        return out
    to_cm = pixel_mm / 10.0
    cy, cx = (h - 1) / 2, (w - 1) / 2
    span = np.array([(xs.max() - xs.min()) * to_cm, (ys.max() - ys.min()) * to_cm])
    mid = np.array([(xs.mean() - cx) * to_cm, (ys.mean() - cy) * to_cm])
    for _ in range(n_lines):
        if rng.random() < 0.4:  # an inner pocket: a rectangle of stitching
            pl, pw = rng.uniform(0.2, 0.5) * span
            c = mid + rng.uniform(-0.3, 0.3, 2) * span
            pts = c + np.array([[-pl, -pw], [pl, -pw], [pl, pw], [-pl, pw], [-pl, -pw]]) / 2
        else:
            axis = int(rng.integers(2))
            p0, p1 = mid.copy(), mid.copy()
            p0[axis] -= span[axis] / 2
            p1[axis] += span[axis] / 2
            off = rng.uniform(-0.45, 0.45) * span[1 - axis]
            p0[1 - axis] += off
            p1[1 - axis] += off + rng.normal(0.0, 0.05) * span[1 - axis]
            pts = np.stack([p0, p1])
        dist, (y0, x0) = polyline_distance_cm(pts, (h, w), pixel_mm, reach_cm=band_cm)
        window = out[y0 : y0 + dist.shape[0], x0 : x0 + dist.shape[1]]
        np.maximum(window, _bands(dist, band_cm, pixel_mm), out=window)
    return out * (interior > 0.5)

