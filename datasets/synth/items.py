"""Objects as layers of materials, their placement in a scene, and the basis-thickness accumulator.

An `Item` is one physical object built on its own canvas: one `Layer` (thickness map in cm) per material
it is made of, all of the same shape, centred on the object. `BasisAccumulator.planes` turns an item into
polyethylene- and aluminium-equivalent thickness (the Alvarez–Macovski basis, DESIGN.md §4) plus its
physical thickness; `place` rotates and moves those planes into the image with one affine warp; the
accumulator sums placed items.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np

from datasets.synth.materials import material
from datasets.synth.shapes import centre_pad

#: Coefficient function: cm of polyethylene and cm of aluminium equivalent to 1 cm of a material at its
#: table density (datasets.synth.physics.basis_coefficients has this signature).
CoefficientFn = Callable[[str], tuple[float, float]]

#: A pixel belongs to an object's footprint when the object's summed thickness there exceeds this (cm):
#: it keeps the anti-aliased rim of a solid and drops interpolation dust far below one detector count.
MASK_MIN_CM = 0.005

#: Planes of a placed item and of the accumulator: PE cm, Al cm, physical thickness cm, spare.
N_PLANES = 4


@dataclass(frozen=True)
class Layer:
    """One material of an item: `thickness_cm` (h, w) float32 at `density_g_cm3` (may differ from the table)."""

    material: str
    density_g_cm3: float
    thickness_cm: np.ndarray


@dataclass(frozen=True)
class Item:
    """A physical object on its own canvas. All layers share one (h, w); the object's centre is the canvas centre."""

    name: str
    layers: tuple[Layer, ...]
    #: Scene pixels per canvas pixel. Large smooth objects (a bag's shell, clothes) may be built on a
    #: coarser canvas than the scene's pixel size, which costs a fraction of the time; `place` scales
    #: them up in the same warp that rotates them.
    scale: float = 1.0

    @property
    def shape_hw(self) -> tuple[int, int]:
        return self.layers[0].thickness_cm.shape  # type: ignore[return-value]

    @property
    def main_material(self) -> str:
        """The material holding the most thickness (mass-weighted), used to name the object's material."""
        masses = [float(layer.thickness_cm.sum()) * layer.density_g_cm3 for layer in self.layers]
        return self.layers[int(np.argmax(masses))].material

    def total_thickness_cm(self) -> np.ndarray:
        """Summed thickness of all layers, (h, w) cm."""
        return np.sum([layer.thickness_cm for layer in self.layers], axis=0)


def make_item(name: str, parts: list[tuple[str, float, np.ndarray]]) -> Item:
    """Build an Item from (material, density g/cm³, thickness canvas) parts of possibly different sizes.

    Smaller canvases are centre-padded to the largest one; parts of the same material and density merge.
    """
    h = max(p[2].shape[0] for p in parts)
    w = max(p[2].shape[1] for p in parts)
    merged: dict[tuple[str, float], np.ndarray] = {}
    for name_m, density, thick in parts:
        material(name_m)  # an unknown material is an error here, not at render time
        padded = pad_to(thick, (h, w))
        key = (name_m, float(density))
        merged[key] = merged[key] + padded if key in merged else padded
    return Item(name, tuple(Layer(m, d, t) for (m, d), t in merged.items()))


def pad_to(thickness_cm: np.ndarray, shape_hw: tuple[int, int], offset_yx: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Centre a canvas in a larger (h, w) one, shifted by `offset_yx` px; parts outside are cut."""
    if thickness_cm.shape == tuple(shape_hw) and offset_yx == (0, 0):
        return thickness_cm.astype(np.float32, copy=False)
    return centre_pad(thickness_cm, shape_hw, offset_yx)


def embed(item: Item, shape_hw: tuple[int, int], offset_yx: tuple[int, int] = (0, 0)) -> Item:
    """The same item on a larger canvas, shifted by `offset_yx` px from its centre (to share a host's pose)."""
    layers = tuple(
        Layer(la.material, la.density_g_cm3, pad_to(la.thickness_cm, shape_hw, offset_yx)) for la in item.layers
    )
    return Item(item.name, layers)


@dataclass(frozen=True)
class Placed:
    """A placed item: `planes` (h, w, N_PLANES) float32 = [polyethylene cm, aluminium cm, physical thickness
    cm, spare] in image coordinates, top-left pixel at `offset_yx`."""

    name: str
    planes: np.ndarray
    offset_yx: tuple[int, int]

    @property
    def shape_hw(self) -> tuple[int, int]:
        return self.planes.shape[:2]  # type: ignore[return-value]

    @property
    def basis_cm(self) -> np.ndarray:
        """(h, w, 2) basis thickness of this item alone."""
        return np.ascontiguousarray(self.planes[:, :, :2])

    def mask(self) -> np.ndarray:
        """Footprint (h, w) bool: physical thickness above MASK_MIN_CM (computed once; do not modify)."""
        return self._mask

    @cached_property
    def _mask(self) -> np.ndarray:
        return cv2.extractChannel(self.planes, 2) > MASK_MIN_CM

    def scaled(self, factor: np.ndarray) -> Placed:
        """All planes multiplied by `factor` (h, w), e.g. a soft item clipped to the bag's interior."""
        return Placed(self.name, self.planes * factor[:, :, None], self.offset_yx)


def place(
    name: str,
    planes: np.ndarray,
    angle_deg: float,
    centre_xy: tuple[float, float],
    image_hw: tuple[int, int],
    flip: bool = False,
    scale: float = 1.0,
    squeeze_y: float = 1.0,
) -> Placed | None:
    """Rotate an item's planes (h, w, C ≤ 4, from `BasisAccumulator.planes`) by `angle_deg` (counter-clockwise
    on screen) about the canvas centre, magnify them by `scale` (an item built on a coarser canvas, see
    `Item.scale`), put that centre at `centre_xy` (image px), crop to the image and to the footprint.
    squeeze_y: a further scale across the belt (image y) only, about the centre: the fan beam's
    magnification at the item's height (`datasets.synth.geometry`). Returns None when nothing lands in the
    image.

    Basis thickness is linear in material thickness, so warping the summed planes equals summing warped
    layers, at one warp per item. Linear interpolation conserves the integral to within a few per cent.
    """
    h, w = planes.shape[:2]
    img_h, img_w = image_hw
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    half_w = 0.5 * scale * (abs(w * c) + abs(h * s))
    half_h = 0.5 * scale * (abs(w * s) + abs(h * c)) * squeeze_y
    x0 = max(0, int(math.floor(centre_xy[0] - half_w - 1)))
    y0 = max(0, int(math.floor(centre_xy[1] - half_h - 1)))
    x1 = min(img_w, int(math.ceil(centre_xy[0] + half_w + 2)))
    y1 = min(img_h, int(math.ceil(centre_xy[1] + half_h + 2)))
    if x1 <= x0 or y1 <= y0:
        return None
    src_c = ((w - 1) / 2.0, (h - 1) / 2.0)
    mat = cv2.getRotationMatrix2D(src_c, angle_deg, float(scale))
    if flip:  # mirror x about the canvas centre first: x -> (w - 1) - x, folded into the one warp
        mat[:, 2] += mat[:, 0] * (w - 1)
        mat[:, 0] = -mat[:, 0]
    mat[0, 2] += centre_xy[0] - src_c[0] - x0
    mat[1, 2] += centre_xy[1] - src_c[1] - y0
    if squeeze_y != 1.0:  # y' = cy + squeeze_y·(y − cy) about the centre, cy in the crop's coordinates
        cy = centre_xy[1] - y0
        mat[1, :] *= squeeze_y
        mat[1, 2] += (1.0 - squeeze_y) * cy
    warped = cv2.warpAffine(
        np.ascontiguousarray(planes),
        mat,
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if warped.ndim == 2:
        warped = warped[:, :, None]
    return trim(Placed(name, warped, (y0, x0)))


def trim(placed: Placed) -> Placed | None:
    """Crop a placed item to the bounding box of its footprint; None when the footprint is empty."""
    m = placed.mask()
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if (r0, c0) == (0, 0) and (r1, c1) == m.shape:
        return placed
    out = Placed(placed.name, placed.planes[r0:r1, c0:c1], (placed.offset_yx[0] + r0, placed.offset_yx[1] + c0))
    out.__dict__["_mask"] = m[r0:r1, c0:c1]  # the crop of the mask just computed
    return out


def default_coefficients(material_name: str) -> tuple[float, float]:
    """The physics module's basis coefficients, imported late so scenes can be built and tested without it."""
    from datasets.synth.physics import basis_coefficients

    return basis_coefficients(material_name)


@dataclass
class BasisAccumulator:
    """Sums the basis-material thickness of placed items over an (H, W) scene.

    Planes: 0 polyethylene-equivalent cm, 1 aluminium-equivalent cm, 2 physical thickness cm, 3 spare (a
    container's interior). Attenuation scales with density, so a layer at density ρ contributes
    coefficients(material) · ρ / ρ_table per cm. Four interleaved planes keep each row of an added crop
    contiguous in memory, which makes adding crops several times faster than adding strided views.
    """

    image_hw: tuple[int, int]
    coefficients: CoefficientFn = default_coefficients
    _planes: np.ndarray = field(init=False)
    _cache: dict[str, tuple[float, float]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._planes = np.zeros((*self.image_hw, N_PLANES), np.float32)

    @property
    def basis_cm(self) -> np.ndarray:
        """(H, W, 2) float32 copy: cm of polyethylene and of aluminium equivalent along each ray."""
        out = np.empty((*self.image_hw, 2), np.float32)
        cv2.mixChannels([self._planes], [out], [0, 0, 1, 1])  # 4× faster than copying a strided view
        return out

    @property
    def thickness_cm(self) -> np.ndarray:
        """(H, W) float32 copy: physical thickness of all objects along each ray."""
        return np.ascontiguousarray(self._planes[:, :, 2])

    def per_cm(self, material_name: str, density_g_cm3: float) -> tuple[float, float]:
        """(cm PE, cm Al) per cm of `material_name` at `density_g_cm3`."""
        if material_name not in self._cache:
            pe, al = self.coefficients(material_name)
            rho = material(material_name).density_g_cm3
            self._cache[material_name] = (pe / rho, al / rho)
        pe, al = self._cache[material_name]
        return pe * density_g_cm3, al * density_g_cm3

    def planes(self, item: Item, extra: np.ndarray | None = None) -> np.ndarray:
        """(h, w, 4) float32 on the item's canvas: [PE cm, Al cm, physical thickness cm, `extra` or 0],
        summed over the item's layers. `extra` (h, w) rides along through the warp (a container's interior)."""
        h, w = item.shape_hw
        pe, al = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
        thick = np.zeros((h, w), np.float32)
        for layer in item.layers:
            c_pe, c_al = self.per_cm(layer.material, layer.density_g_cm3)
            t = np.ascontiguousarray(layer.thickness_cm, dtype=np.float32)
            # cv2.scaleAdd is a fused multiply-add on contiguous planes, faster than numpy's two passes.
            pe = cv2.scaleAdd(t, c_pe, pe)
            al = cv2.scaleAdd(t, c_al, al)
            thick += t
        spare = np.zeros((h, w), np.float32) if extra is None else extra.astype(np.float32, copy=False)
        return cv2.merge([pe, al, thick, spare])

    def add(self, placed: Placed) -> None:
        """Add a placed item's planes to the scene (the spare plane sums too, and is never read)."""
        y0, x0 = placed.offset_yx
        h, w = placed.shape_hw
        n = placed.planes.shape[2]
        view = self._planes[y0 : y0 + h, x0 : x0 + w] if n == N_PLANES else self._planes[y0 : y0 + h, x0 : x0 + w, :n]
        view += placed.planes
