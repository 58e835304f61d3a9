"""Irregular natural shapes: folded cloth, textured plant blocks, curved tusks, heaps of scales.

Same conventions as `shapes`: float32 thickness canvases in cm, object centred, length along x.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from datasets.synth.shapes import box, canvas_px, coords_cm, coverage, fill_polygon, rounded_rect_depth_cm, smooth_noise


def folded_cloth(
    rng: np.random.Generator, length_cm: float, width_cm: float, thickness_cm: float, pixel_mm: float, n_folds: int = 3
) -> np.ndarray:
    """Folded garment: irregular soft outline, smooth-noise thickness, and steps where layers fold over.

    `thickness_cm` is the mean compressed thickness of the stack of fabric layers (material density
    already includes the air between threads).
    """
    full = (canvas_px(width_cm, pixel_mm), canvas_px(length_cm, pixel_mm))
    # Cloth is smooth: build it at up to 3× coarser pixels and upsample, 4–9× fewer operations.
    coarse_mm = pixel_mm * max(1.0, min(3.0, 4.0 / pixel_mm))
    shape = (canvas_px(width_cm, coarse_mm), canvas_px(length_cm, coarse_mm))
    y, x = coords_cm(shape, coarse_mm)
    scale = 10.0 / coarse_mm
    wobble = smooth_noise(rng, shape, 10.0 * scale) * (0.06 * min(length_cm, width_cm))
    depth = rounded_rect_depth_cm(y, x, length_cm * 0.9, width_cm * 0.9, 0.25 * min(length_cm, width_cm)) + wobble
    depth = depth + 0.05 * min(length_cm, width_cm)
    layers = 1.0 + 0.25 * smooth_noise(rng, shape, 6.0 * scale)
    for _ in range(n_folds):
        # A fold line: one side carries an extra layer; a soft ridge marks the bend itself.
        angle = rng.uniform(0, math.pi)
        c = rng.uniform(-0.35, 0.35) * np.array([length_cm, width_cm])
        signed = (x - c[0]) * math.cos(angle) + (y - c[1]) * math.sin(angle)
        layers = layers + rng.uniform(0.2, 0.6) * (1.0 / (1.0 + np.exp(-signed * (10.0 / pixel_mm) / 1.5)))
        layers = layers + rng.uniform(0.1, 0.4) * np.exp(-((signed / rng.uniform(0.4, 1.2)) ** 2))
    edge = np.clip(depth / max(1.5, 0.08 * min(length_cm, width_cm)), 0.0, 1.0)
    out = thickness_cm * np.maximum(layers, 0.2) / float(np.mean(layers)) * np.sqrt(edge)
    out = (out * coverage(depth, coarse_mm)).astype(np.float32)
    return cv2.resize(out, (full[1], full[0]), interpolation=cv2.INTER_LINEAR) if shape != full else out


def textured_block(
    rng: np.random.Generator,
    length_cm: float,
    width_cm: float,
    height_cm: float,
    pixel_mm: float,
    amplitude: float = 0.25,
    grain_cm: float = 1.0,
    edge_cm: float = 1.0,
) -> np.ndarray:
    """Box with rounded edges whose thickness varies by ±`amplitude` (relative) at a `grain_cm` scale."""
    base = box(length_cm, width_cm, height_cm, pixel_mm, corner_cm=edge_cm, edge_cm=edge_cm)
    grain = smooth_noise(rng, base.shape, grain_cm * 10.0 / pixel_mm)
    return (base * np.clip(1.0 + amplitude * grain, 0.2, None)).astype(np.float32)


def tusk(
    length_cm: float,
    base_diameter_cm: float,
    tip_diameter_cm: float,
    bend_cm: float,
    pixel_mm: float,
    cavity_fraction: float = 0.3,
) -> np.ndarray:
    """Curved, tapered tusk section: a solid of revolution along a bent centreline, hollow near its base.

    The centreline is a quadratic Bézier with sagitta `bend_cm`; the radius tapers from the base (x < 0)
    to the tip. The pulp cavity (radius 0.7 × outer at the base, closing to 0) runs along the first
    `cavity_fraction` of the length.
    """
    n_seg = 40
    s = np.linspace(0.0, 1.0, n_seg + 1)
    cx = (s - 0.5) * length_cm
    cy = 4.0 * bend_cm * s * (1.0 - s) - bend_cm * 0.5
    radius = 0.5 * (base_diameter_cm + (tip_diameter_cm - base_diameter_cm) * s**1.3)
    cavity = np.where(s < cavity_fraction, 0.7 * radius * (1.0 - s / max(cavity_fraction, 1e-6)), 0.0)
    half_w = length_cm / 2 + base_diameter_cm
    half_h = abs(bend_cm) + base_diameter_cm
    shape = (canvas_px(2 * half_h, pixel_mm), canvas_px(2 * half_w, pixel_mm))
    outer = np.zeros(shape, np.float32)
    inner = np.zeros(shape, np.float32)
    scale = 10.0 / pixel_mm
    ox, oy = (shape[1] - 1) / 2, (shape[0] - 1) / 2
    for i in range(n_seg):
        # Each segment is a capsule; the maximum chord over overlapping capsules is the tube's chord.
        r = float(max(radius[i], radius[i + 1]))
        x0 = int(max(0, math.floor(min(cx[i], cx[i + 1]) * scale + ox - r * scale - 1)))
        x1 = int(min(shape[1], math.ceil(max(cx[i], cx[i + 1]) * scale + ox + r * scale + 2)))
        y0 = int(max(0, math.floor(min(cy[i], cy[i + 1]) * scale + oy - r * scale - 1)))
        y1 = int(min(shape[0], math.ceil(max(cy[i], cy[i + 1]) * scale + oy + r * scale + 2)))
        yy = ((np.arange(y0, y1, dtype=np.float32) - oy) / scale)[:, None]
        xx = ((np.arange(x0, x1, dtype=np.float32) - ox) / scale)[None, :]
        ax, ay, bx, by = cx[i], cy[i], cx[i + 1], cy[i + 1]
        seg2 = (bx - ax) ** 2 + (by - ay) ** 2
        u = np.clip(((xx - ax) * (bx - ax) + (yy - ay) * (by - ay)) / seg2, 0.0, 1.0)
        d2 = (xx - ax - u * (bx - ax)) ** 2 + (yy - ay - u * (by - ay)) ** 2
        r_here = radius[i] + u * (radius[i + 1] - radius[i])
        np.maximum(outer[y0:y1, x0:x1], 2.0 * np.sqrt(np.maximum(r_here**2 - d2, 0.0)), out=outer[y0:y1, x0:x1])
        if cavity[i] > 0:
            c_here = cavity[i] + u * (cavity[i + 1] - cavity[i])
            np.maximum(inner[y0:y1, x0:x1], 2.0 * np.sqrt(np.maximum(c_here**2 - d2, 0.0)), out=inner[y0:y1, x0:x1])
    return np.maximum(outer - inner, 0.0)


def shield_outline_cm(length_cm: float, width_cm: float, n: int = 14) -> np.ndarray:
    """Outline (N×2, cm, about 0) of a pangolin scale: a rounded fan that narrows to its base."""
    t = np.linspace(0.0, math.pi, n)
    top = np.stack([0.5 * width_cm * np.cos(t), -0.15 * length_cm - 0.35 * length_cm * np.sin(t)], axis=1)
    base = np.array([[-0.18 * width_cm, 0.5 * length_cm], [0.18 * width_cm, 0.5 * length_cm]])
    return np.concatenate([top[::-1] * np.array([-1, 1]), base[::-1]], axis=0)


def plate_heap(
    rng: np.random.Generator,
    n_plates: int,
    plate_cm: tuple[float, float],
    plate_thickness_cm: tuple[float, float],
    heap_length_cm: float,
    heap_width_cm: float,
    pixel_mm: float,
    max_tilt_deg: float = 50.0,
    layer: bool = False,
) -> np.ndarray:
    """Heap of small overlapping plates (pangolin scales) over an elliptical area, densest in its middle;
    with `layer`, spread evenly over the `heap_length_cm` × `heap_width_cm` rectangle instead.

    A plate tilted by θ from the belt shows a footprint shortened by cos θ and a path length t / cos θ.
    Plates are stamped from a bank of at most 24 rasterised shapes (size, tilt, turn), each stamp with its
    own thickness, which keeps a heap of hundreds of scales cheap.
    """
    margin = plate_cm[1] if not layer else 0.0
    shape = (canvas_px(heap_width_cm + margin, pixel_mm), canvas_px(heap_length_cm + margin, pixel_mm))
    out = np.zeros(shape, np.float32)
    scale = 10.0 / pixel_mm
    bank: list[tuple[np.ndarray, float]] = []
    for _ in range(min(n_plates, 24)):
        size = rng.uniform(*plate_cm)
        tilt = math.radians(rng.uniform(0, max_tilt_deg))
        outline = shield_outline_cm(size, size * rng.uniform(0.8, 1.1))
        outline[:, 1] *= math.cos(tilt)
        rot = rng.uniform(0, 2 * math.pi)
        c, s = math.cos(rot), math.sin(rot)
        outline = outline @ np.array([[c, s], [-s, c]])
        patch_n = canvas_px(size, pixel_mm)
        bank.append((fill_polygon(outline, (patch_n, patch_n), pixel_mm), 1.0 / math.cos(tilt)))
    picks = rng.integers(len(bank), size=n_plates)
    thickness = rng.uniform(*plate_thickness_cm, size=n_plates)
    if layer:
        px = rng.uniform(0, shape[1], n_plates)
        py = rng.uniform(0, shape[0], n_plates)
    else:
        rho = np.sqrt(rng.uniform(0, 1, n_plates)) * rng.uniform(0.5, 1.0, n_plates)
        phi = rng.uniform(0, 2 * math.pi, n_plates)
        px = rho * np.cos(phi) * heap_length_cm / 2 * scale + (shape[1] - 1) / 2
        py = rho * np.sin(phi) * heap_width_cm / 2 * scale + (shape[0] - 1) / 2
    for k, t_cm, x, y in zip(picks, thickness, px, py, strict=True):
        patch, stretch = bank[int(k)]
        n = patch.shape[0]
        y0 = int(round(y - n / 2))
        x0 = int(round(x - n / 2))
        # Clip at the canvas edge (a layer is cut to its rectangle; a heap's canvas has room).
        sy0, sx0 = max(0, -y0), max(0, -x0)
        sy1, sx1 = min(n, shape[0] - y0), min(n, shape[1] - x0)
        if sy1 > sy0 and sx1 > sx0:
            out[y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1] += patch[sy0:sy1, sx0:sx1] * np.float32(t_cm * stretch)
    return out
