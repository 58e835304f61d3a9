"""2.5-D shape primitives: thickness maps in cm on small pixel canvases.

An X-ray line scanner sees the path length through each material along every ray, so a solid object is a
2-D map of thickness (cm) over its footprint. Each function here rasterises one solid seen from above on
a float32 canvas of shape (h, w) = (rows, columns), at a pixel size in mm, with the object's centre at the
canvas centre and its length along x (columns). A pixel outside the object holds 0. Callers rotate and
place canvases with `datasets.synth.items.place`.

Thin parts (wires, foil, shell walls narrower than a pixel) keep their cross-section area: a pixel holds
the mean path length over its footprint, which is what the detector integrates (partial-volume effect).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: Empty pixels around every canvas, so that rotation and blur never clip an object's edge.
MARGIN_PX = 2


def canvas_px(extent_cm: float, pixel_mm: float) -> int:
    """Canvas side in pixels that holds `extent_cm` plus the margin on both sides."""
    return int(math.ceil(extent_cm * 10.0 / pixel_mm)) + 2 * MARGIN_PX


def coords_cm(shape_hw: tuple[int, int], pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in cm relative to the canvas centre: y of shape (h, 1), x of shape (1, w)."""
    h, w = shape_hw
    step_cm = pixel_mm / 10.0
    y = (np.arange(h, dtype=np.float32) - (h - 1) / 2.0) * step_cm
    x = (np.arange(w, dtype=np.float32) - (w - 1) / 2.0) * step_cm
    return y[:, None], x[None, :]


def centre_pad(thickness_cm: np.ndarray, shape_hw: tuple[int, int], offset_yx: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Put a (h, w) canvas into a new (H, W) one, centred then shifted by `offset_yx` pixels (clipped)."""
    return add_at(np.zeros(shape_hw, np.float32), thickness_cm, offset_yx)


def add_at(canvas: np.ndarray, patch: np.ndarray, offset_yx: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Add `patch` into `canvas` (both (h, w)) in place, centred then shifted by `offset_yx` px; returns canvas.

    Parts of the patch that fall outside the canvas are dropped.
    """
    h, w = patch.shape
    big_h, big_w = canvas.shape
    y0 = (big_h - h) // 2 + int(offset_yx[0])
    x0 = (big_w - w) // 2 + int(offset_yx[1])
    sy0, sx0 = max(0, -y0), max(0, -x0)
    dy0, dx0 = max(0, y0), max(0, x0)
    hh = min(h - sy0, big_h - dy0)
    ww = min(w - sx0, big_w - dx0)
    if hh > 0 and ww > 0:
        canvas[dy0 : dy0 + hh, dx0 : dx0 + ww] += patch[sy0 : sy0 + hh, sx0 : sx0 + ww]
    return canvas


def rotated(thickness_cm: np.ndarray, angle_deg: float) -> np.ndarray:
    """A canvas rotated counter-clockwise by `angle_deg` about its centre, on a canvas grown to hold it."""
    h, w = thickness_cm.shape
    a = math.radians(angle_deg)
    new_w = int(math.ceil(abs(w * math.cos(a)) + abs(h * math.sin(a)))) + 2
    new_h = int(math.ceil(abs(w * math.sin(a)) + abs(h * math.cos(a)))) + 2
    mat = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle_deg, 1.0)
    mat[0, 2] += (new_w - w) / 2
    mat[1, 2] += (new_h - h) / 2
    return cv2.warpAffine(np.ascontiguousarray(thickness_cm, np.float32), mat, (new_w, new_h), flags=cv2.INTER_LINEAR)


def smooth_noise(rng: np.random.Generator, shape_hw: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean, unit-std random field of shape (h, w) whose features are about `scale_px` wide.

    Drawn at low resolution and upsampled bicubically, which costs O(h·w / scale²) random numbers.
    """
    h, w = shape_hw
    small_h = max(2, int(math.ceil(h / max(scale_px, 1.0))) + 2)
    small_w = max(2, int(math.ceil(w / max(scale_px, 1.0))) + 2)
    small = rng.standard_normal((small_h, small_w)).astype(np.float32)
    field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    std = float(field.std())
    return (field - float(field.mean())) / (std if std > 1e-6 else 1.0)


def coverage(depth_in_cm: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Share of each pixel inside an outline, from the signed inward distance (cm) of the pixel centre."""
    return np.clip(depth_in_cm * (10.0 / pixel_mm) + 0.5, 0.0, 1.0)


def rounded_rect_depth_cm(
    y_cm: np.ndarray, x_cm: np.ndarray, length_cm: float, width_cm: float, corner_cm: float
) -> np.ndarray:
    """Signed inward distance (cm; >0 inside) to a rectangle `length_cm` (x) × `width_cm` (y) with round corners."""
    rc = float(min(corner_cm, length_cm / 2, width_cm / 2))
    qx = np.abs(x_cm) - (length_cm / 2 - rc)
    qy = np.abs(y_cm) - (width_cm / 2 - rc)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    inside = np.minimum(np.maximum(qx, qy), 0)
    return (rc - outside - inside).astype(np.float32)


def ellipse_depth_cm(y_cm: np.ndarray, x_cm: np.ndarray, length_cm: float, width_cm: float) -> np.ndarray:
    """Approximate signed inward distance (cm) to an ellipse with axes `length_cm` (x) and `width_cm` (y).

    First-order estimate f/|∇f|: exact on the outline, good enough within an edge radius of it.
    """
    a, b = length_cm / 2, width_cm / 2
    f = (x_cm / a) ** 2 + (y_cm / b) ** 2 - 1.0
    grad = 2.0 * np.sqrt((x_cm / a**2) ** 2 + (y_cm / b**2) ** 2) + 1e-6
    return (-f / grad).astype(np.float32)


def edge_profile(depth_in_cm: np.ndarray, height_cm: float, edge_cm: float, pixel_mm: float) -> np.ndarray:
    """Thickness (cm) of a slab of height `height_cm` whose vertical edges are rounded with radius `edge_cm`.

    Near the outline the path runs through the rounded edge (two quarter circles, top and bottom).
    """
    r = float(min(edge_cm, height_cm / 2))
    d = np.clip(depth_in_cm, 0.0, r)
    rounded = 2.0 * np.sqrt(np.maximum(r * r - (r - d) ** 2, 0.0))
    return ((height_cm - 2 * r + rounded) * coverage(depth_in_cm, pixel_mm)).astype(np.float32)


def hollow_shell(
    depth_in_cm: np.ndarray, height_cm: float, wall_cm: float, edge_cm: float, pixel_mm: float
) -> np.ndarray:
    """Thickness (cm) of the walls of a closed hollow box (suitcase, bag) seen from above.

    Away from the outline the ray crosses the top and bottom faces (2 × wall). Near it, it crosses the
    rounded edges (annular quarter circles of outer radius `edge_cm`) and, within one wall of the
    outline, the whole straight side wall edge-on: that is the strong outline of every bag in a scan. The
    side-wall term uses the pixel's overlap with the wall band, since walls are thinner than a pixel.
    """
    r = float(max(min(edge_cm, height_cm / 2), wall_cm))
    step_cm = pixel_mm / 10.0
    p = r - np.clip(depth_in_cm, 0.0, r)
    inner = max(r - wall_cm, 0.0)
    arcs = 2.0 * (np.sqrt(np.maximum(r * r - p * p, 0.0)) - np.sqrt(np.maximum(inner * inner - p * p, 0.0)))
    lo = np.maximum(depth_in_cm - step_cm / 2, 0.0)
    hi = np.minimum(depth_in_cm + step_cm / 2, wall_cm)
    side = (height_cm - 2 * r) * np.clip(hi - lo, 0.0, None) / step_cm
    faces = np.where(depth_in_cm >= r, 2.0 * wall_cm, arcs)
    return ((faces + side) * coverage(depth_in_cm, pixel_mm)).astype(np.float32)


def box(
    length_cm: float, width_cm: float, height_cm: float, pixel_mm: float, corner_cm: float = 0.3, edge_cm: float = 0.2
) -> np.ndarray:
    """Solid box `length_cm` × `width_cm` (footprint) × `height_cm` (along the beam), rounded corners and edges."""
    shape = (canvas_px(width_cm, pixel_mm), canvas_px(length_cm, pixel_mm))
    y, x = coords_cm(shape, pixel_mm)
    return edge_profile(rounded_rect_depth_cm(y, x, length_cm, width_cm, corner_cm), height_cm, edge_cm, pixel_mm)


def ellipsoid(length_cm: float, width_cm: float, height_cm: float, pixel_mm: float) -> np.ndarray:
    """Solid ellipsoid with axes `length_cm` (x), `width_cm` (y), `height_cm` (beam): t = h·sqrt(1 − r²)."""
    shape = (canvas_px(width_cm, pixel_mm), canvas_px(length_cm, pixel_mm))
    y, x = coords_cm(shape, pixel_mm)
    r2 = (2 * x / length_cm) ** 2 + (2 * y / width_cm) ** 2
    return (height_cm * np.sqrt(np.maximum(1.0 - r2, 0.0))).astype(np.float32)


def polygon_slab(points_cm: np.ndarray, thickness_cm: float, pixel_mm: float) -> np.ndarray:
    """Flat plate of uniform thickness whose outline is the polygon `points_cm` (N×2, x y, cm, about 0)."""
    pts = np.asarray(points_cm, np.float64)
    half = np.abs(pts).max(axis=0)
    shape = (canvas_px(2 * half[1], pixel_mm), canvas_px(2 * half[0], pixel_mm))
    return fill_polygon(pts, shape, pixel_mm) * np.float32(thickness_cm)


def fill_polygon(points_cm: np.ndarray, shape_hw: tuple[int, int], pixel_mm: float) -> np.ndarray:
    """Anti-aliased coverage (0–1, float32, shape (h, w)) of a polygon given in cm about the canvas centre."""
    h, w = shape_hw
    scale = 10.0 / pixel_mm
    # cv2 takes fixed-point vertices: 4 fractional bits keep sub-pixel outlines.
    px = np.asarray(points_cm, np.float64) * scale + np.array([(w - 1) / 2, (h - 1) / 2])
    pts = np.round(px * 16).astype(np.int32).reshape(-1, 1, 2)
    img = np.zeros((h, w), np.uint8)
    cv2.fillPoly(img, [pts], 255, cv2.LINE_AA, shift=4)
    return img.astype(np.float32) * np.float32(1 / 255)


def revolved(radius_cm: np.ndarray, height_px: int, pixel_mm: float, wall_cm: float | None = None) -> np.ndarray:
    """Solid of revolution seen side-on: axis along x through the canvas centre, radius given per column.

    `radius_cm` has shape (w,); the result has shape (height_px, w) and holds the chord 2·sqrt(r² − y²).
    With `wall_cm` the solid is a shell (bottle, tube) and the inner chord is taken away.
    """
    y, _ = coords_cm((height_px, 1), pixel_mm)
    r = np.asarray(radius_cm, np.float32)[None, :]
    outer = 2.0 * np.sqrt(np.maximum(r * r - y * y, 0.0))
    if wall_cm is not None:
        ri = np.maximum(r - wall_cm, 0.0)
        outer = outer - 2.0 * np.sqrt(np.maximum(ri * ri - y * y, 0.0))
    return outer.astype(np.float32)


def cylinder(
    length_cm: float, diameter_cm: float, pixel_mm: float, wall_cm: float | None = None, round_ends: bool = False
) -> np.ndarray:
    """Cylinder lying on its side (axis along x): thickness is the chord. `round_ends` gives a capsule."""
    w = canvas_px(length_cm, pixel_mm)
    _, x = coords_cm((1, w), pixel_mm)
    x = np.abs(x[0])
    r = diameter_cm / 2
    inside = np.clip((length_cm / 2 - x) * (10.0 / pixel_mm) + 0.5, 0.0, 1.0)
    if round_ends:
        cap = np.sqrt(np.maximum(r * r - np.maximum(x - (length_cm / 2 - r), 0.0) ** 2, 0.0))
        radius = np.minimum(r, cap) * (x <= length_cm / 2)
        return revolved(radius, canvas_px(diameter_cm, pixel_mm), pixel_mm, wall_cm)
    out = revolved(np.full_like(x, r), canvas_px(diameter_cm, pixel_mm), pixel_mm, wall_cm)
    return out * inside[None, :].astype(np.float32)


def disc(
    diameter_cm: float, thickness_cm: float, pixel_mm: float, hole_diameter_cm: float = 0.0, edge_cm: float = 0.0
) -> np.ndarray:
    """Flat disc face-on (coin, washer, tablet); optional central hole and rounded rim of radius `edge_cm`."""
    n = canvas_px(diameter_cm, pixel_mm)
    y, x = coords_cm((n, n), pixel_mm)
    rad = np.sqrt(x * x + y * y)
    out = edge_profile(diameter_cm / 2 - rad, thickness_cm, edge_cm, pixel_mm)
    if hole_diameter_cm > 0:
        out = out * (1.0 - coverage(hole_diameter_cm / 2 - rad, pixel_mm))
    return out.astype(np.float32)


def disc_grid(
    rows: int, cols: int, pitch_cm: tuple[float, float], diameter_cm: float, thickness_cm: float, pixel_mm: float
) -> np.ndarray:
    """`rows` × `cols` tablets (discs with rounded rims) at `pitch_cm` = (x, y) centre spacing: blister pills."""
    pill = disc(diameter_cm, thickness_cm, pixel_mm, edge_cm=thickness_cm / 2)
    ph, pw = pill.shape
    shape = (canvas_px(rows * pitch_cm[1], pixel_mm), canvas_px(cols * pitch_cm[0], pixel_mm))
    out = np.zeros(shape, np.float32)
    scale = 10.0 / pixel_mm
    for i in range(rows):
        for j in range(cols):
            cy = (i + 0.5) * pitch_cm[1] * scale + MARGIN_PX
            cx = (j + 0.5) * pitch_cm[0] * scale + MARGIN_PX
            y0, x0 = int(round(cy - ph / 2)), int(round(cx - pw / 2))
            y0, x0 = min(max(y0, 0), shape[0] - ph), min(max(x0, 0), shape[1] - pw)
            out[y0 : y0 + ph, x0 : x0 + pw] += pill
    return out


def cylinder_row(
    n: int, diameter_cm: float, length_cm: float, pixel_mm: float, offset_cm: float = 0.0, width_cm: float | None = None
) -> np.ndarray:
    """`n` touching cylinders side by side, axes along y (cigarettes in a pack seen from above).

    Canvas: `length_cm` (y) × `width_cm` (x, default n·diameter); the row starts `offset_cm` from the left
    edge, so staggered layers (7-6-7 in a pack) are rows with different offsets added together.
    """
    width = width_cm if width_cm is not None else n * diameter_cm
    shape = (canvas_px(length_cm, pixel_mm), canvas_px(width, pixel_mm))
    y, x = coords_cm(shape, pixel_mm)
    xs = x[0] + width / 2 - offset_cm
    r = diameter_cm / 2
    local = np.mod(xs, diameter_cm) - r
    chord = 2.0 * np.sqrt(np.maximum(r * r - local * local, 0.0))
    chord = chord * ((xs >= 0) & (xs < n * diameter_cm))
    along = coverage(length_cm / 2 - np.abs(y[:, 0]), pixel_mm)
    return (along[:, None] * chord[None, :]).astype(np.float32)


def _tube_profile(dist_cm: np.ndarray, diameter_cm: float, pixel_mm: float, wall_cm: float | None) -> np.ndarray:
    """Chord through a tube at distance `dist_cm` from its axis; sub-pixel tubes keep their section area."""
    step_cm = pixel_mm / 10.0

    def chord(radius: float) -> np.ndarray:
        reff = max(radius, 0.6 * step_cm)
        return 2.0 * np.sqrt(np.maximum(reff * reff - dist_cm * dist_cm, 0.0)) * (radius * radius / (reff * reff))

    out = chord(diameter_cm / 2)
    if wall_cm is not None and wall_cm < diameter_cm / 2:
        out = out - chord(diameter_cm / 2 - wall_cm)
    return np.maximum(out, 0.0).astype(np.float32)


def polyline_distance_cm(
    points_cm: np.ndarray,
    shape_hw: tuple[int, int],
    pixel_mm: float,
    closed: bool = False,
    reach_cm: float | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Distance (cm) to a polyline given in cm about the centre of an (h, w) canvas.

    Only the polyline's bounding box grown by `reach_cm` is computed (the distance transform is the cost);
    returns that window's distances and its top-left (row, column) on the canvas.
    """
    h, w = shape_hw
    scale = 10.0 / pixel_mm
    px = np.asarray(points_cm, np.float64) * scale + np.array([(w - 1) / 2, (h - 1) / 2])
    if reach_cm is None:
        x0, y0, x1, y1 = 0, 0, w, h
    else:
        pad = reach_cm * scale + 2
        x0, y0 = max(0, int(px[:, 0].min() - pad)), max(0, int(px[:, 1].min() - pad))
        x1, y1 = min(w, int(math.ceil(px[:, 0].max() + pad)) + 1), min(h, int(math.ceil(px[:, 1].max() + pad)) + 1)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), np.float32), (0, 0)
    pts = np.round((px - np.array([x0, y0])) * 16).astype(np.int32).reshape(-1, 1, 2)
    img = np.full((y1 - y0, x1 - x0), 255, np.uint8)
    cv2.polylines(img, [pts], closed, 0, 1, cv2.LINE_8, shift=4)
    # The 5×5 chamfer mask (≤ 2 % error) works in fixed point; the "precise" transform's float results
    # vary in the last bit with buffer alignment, which would break byte-identical scenes.
    return cv2.distanceTransform(img, cv2.DIST_L2, cv2.DIST_MASK_5) * np.float32(1 / scale), (y0, x0)


def polyline_canvas(points_cm: np.ndarray, pad_cm: float, pixel_mm: float) -> tuple[int, int]:
    """Canvas (h, w) centred on 0 that holds a polyline plus `pad_cm` around it."""
    half = np.abs(np.asarray(points_cm, np.float64)).max(axis=0) + pad_cm
    return canvas_px(2 * half[1], pixel_mm), canvas_px(2 * half[0], pixel_mm)


def polyline_tube(
    points_cm: np.ndarray,
    diameter_cm: float,
    pixel_mm: float,
    wall_cm: float | None = None,
    closed: bool = False,
    shape_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Round rod, tube or cable of `diameter_cm` along a polyline (N×2 x y, cm about the canvas centre)."""
    shape = shape_hw or polyline_canvas(points_cm, diameter_cm, pixel_mm)
    dist, (y0, x0) = polyline_distance_cm(points_cm, shape, pixel_mm, closed, reach_cm=diameter_cm / 2)
    out = np.zeros(shape, np.float32)
    out[y0 : y0 + dist.shape[0], x0 : x0 + dist.shape[1]] = _tube_profile(dist, diameter_cm, pixel_mm, wall_cm)
    return out


def polyline_band(
    points_cm: np.ndarray,
    width_cm: float,
    thickness_cm: float,
    pixel_mm: float,
    closed: bool = False,
    shape_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Flat strip `width_cm` wide and `thickness_cm` thick along a polyline (zip tape, strap, belt)."""
    shape = shape_hw or polyline_canvas(points_cm, width_cm, pixel_mm)
    dist, (y0, x0) = polyline_distance_cm(points_cm, shape, pixel_mm, closed, reach_cm=width_cm / 2)
    out = np.zeros(shape, np.float32)
    out[y0 : y0 + dist.shape[0], x0 : x0 + dist.shape[1]] = coverage(width_cm / 2 - dist, pixel_mm) * np.float32(
        thickness_cm
    )
    return out
