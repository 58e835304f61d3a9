"""Bag scenes: a container, 5–30 benign items and 0–3 concealed contraband objects, as basis thicknesses.

`generate_bag(rng, config)` returns a `BagScene` whose `basis_cm` (H×W×2: polyethylene- and
aluminium-equivalent cm summed over every object along each ray) is what the physics renders, with one
`SceneObject` per object: its footprint mask, its box (the mask's bounding box) and, for contraband, its
own basis thickness (for TIP into other scans). Same rng state, same config → byte-identical arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from datasets.synth import clutter, electronics
from datasets.synth.concealment import CONCEALMENTS, choose_concealment, conceal, hideable_classes
from datasets.synth.containers import CONTAINER_KINDS, Container, build_container
from datasets.synth.items import BasisAccumulator, CoefficientFn, Placed, default_coefficients, place, trim
from datasets.synth.geometry import FanBeam, draw_fan_beam, draw_height
from datasets.synth.layout import BagFrame, Placement
from datasets.synth.materials import CONTRABAND_CLASSES


def _pair(value: Any, name: str, kind: type) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    out = tuple(kind(v) for v in value)
    if len(out) != 2 or out[0] > out[1]:
        raise ValueError(f"{name} must be a (low, high) pair with low ≤ high, got {value!r}")
    return out


@dataclass(frozen=True)
class BagConfig:
    """What bags to make. Ranges are inclusive (low, high) pairs.

    size_px: (height, width) of the scene; real scans are landscape, about 4:3.
    pixel_mm: range of pixel size on the belt (mm). Line arrays are ≈ 1.0–1.5 mm; displays zoom in and
        published datasets are often downscaled, hence 0.8 to 2.2. Within the range the scale makes the bag
        fill 80–97 % of the image, as datasets crop scans to the bag; it is raised past the range only if
        the bag would not fit.
    n_clutter: benign items in a bag (a tray holds at most 6).
    contraband_classes / n_contraband / clean_fraction: which classes; how many objects in a bag that has
        any (a low bound of 0 counts as 1 there); the share of bags with none.
    containers / concealments: allowed container kinds and concealment methods.
    """

    size_px: tuple[int, int] = (672, 896)
    pixel_mm: tuple[float, float] = (0.8, 2.2)
    n_clutter: tuple[int, int] = (8, 36)
    contraband_classes: tuple[str, ...] = CONTRABAND_CLASSES
    n_contraband: tuple[int, int] = (0, 3)
    clean_fraction: float = 0.3
    containers: tuple[str, ...] = CONTAINER_KINDS
    concealments: tuple[str, ...] = CONCEALMENTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "size_px", _pair(self.size_px, "size_px", int))
        object.__setattr__(self, "pixel_mm", _pair(self.pixel_mm, "pixel_mm", float))
        object.__setattr__(self, "n_clutter", _pair(self.n_clutter, "n_clutter", int))
        object.__setattr__(self, "n_contraband", _pair(self.n_contraband, "n_contraband", int))
        for name, known in (
            ("contraband_classes", CONTRABAND_CLASSES),
            ("containers", CONTAINER_KINDS),
            ("concealments", CONCEALMENTS),
        ):
            value = getattr(self, name)
            value = (value,) if isinstance(value, str) else tuple(value)
            unknown = [v for v in value if v not in known]
            if unknown:
                raise ValueError(f"{name}: unknown {unknown}; known: {list(known)}")
            object.__setattr__(self, name, value)
        if min(self.size_px) < 32 or self.pixel_mm[0] <= 0 or self.n_clutter[0] < 0 or self.n_contraband[0] < 0:
            raise ValueError("size_px ≥ 32, pixel_mm > 0 and counts ≥ 0 are required")
        if not 0.0 <= self.clean_fraction <= 1.0:
            raise ValueError(f"clean_fraction must be in [0, 1], got {self.clean_fraction}")
        if not self.containers:
            raise ValueError("containers must not be empty")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BagConfig:
        """Build from a plain dict (YAML); an unknown key is an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown BagConfig keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples) to save with a run."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene. Its footprint is stored cropped: `mask_crop` (h, w) bool at `offset_yx`.

    class_name: a contraband class, or None for benign items and the container.
    concealment: for contraband, one of CONCEALMENTS ('none' = packed openly); None for benign items.
    basis_crop_cm: for contraband only, the object's own basis thickness (h, w, 2), same crop as the mask.
    """

    name: str
    class_name: str | None
    material: str
    concealment: str | None
    mask_crop: np.ndarray
    offset_yx: tuple[int, int]
    image_hw: tuple[int, int]
    basis_crop_cm: np.ndarray | None = None

    @property
    def mask(self) -> np.ndarray:
        """Footprint (H, W) bool on the whole image."""
        full = np.zeros(self.image_hw, bool)
        y0, x0 = self.offset_yx
        h, w = self.mask_crop.shape
        full[y0 : y0 + h, x0 : x0 + w] = self.mask_crop
        return full

    @property
    def box_xyxy(self) -> tuple[int, int, int, int]:
        """Visible extent: bounding box of the mask, 0-based pixels, x2 and y2 exclusive."""
        y0, x0 = self.offset_yx
        h, w = self.mask_crop.shape
        return (x0, y0, x0 + w, y0 + h)


@dataclass(frozen=True)
class BagScene:
    """A bag as basis thicknesses.

    basis_cm: (H, W, 2) float32 — cm of polyethylene (0) and aluminium (1) equivalent, summed over all
        objects along each ray (metals may give a negative polyethylene part with the real physics).
    objects: the container first, then every placed item in placing order.
    bag_mask: (H, W) bool, inside the container (where TIP may put an object).
    fan: the scan's fan beam (`datasets.synth.geometry`): items are drawn at their heights through it.
    """

    basis_cm: np.ndarray
    objects: tuple[SceneObject, ...]
    bag_mask: np.ndarray
    container: str
    pixel_mm: float
    rng_state: dict[str, Any]
    fan: FanBeam | None = None

    @property
    def contraband(self) -> tuple[SceneObject, ...]:
        return tuple(o for o in self.objects if o.class_name is not None)

    def contrast(self, obj: SceneObject, *, scanner: Any = None) -> float:
        """How far contraband object `obj` stands out of what lies around and over it (contrast to clutter):
        the mean log-attenuation it adds over its footprint, divided by the spread (robust standard
        deviation) of the log-attenuation of everything else in its box. High-energy channel, noise-free,
        from the basis.

        About 1 or less: the object adds no more than the clutter's own variation (a thin layer in a lining
        under clothes); well above 1: it stands out of its clutter.
        """
        from datasets.synth.physics import lookup_log_attenuation

        if obj.basis_crop_cm is None:
            raise ValueError(f"{obj.name}: no basis kept (only contraband objects keep theirs)")
        y0, x0 = obj.offset_yx
        h, w = obj.mask_crop.shape
        total = self.basis_cm[y0 : y0 + h, x0 : x0 + w]
        without = total - obj.basis_crop_cm
        with_obj = lookup_log_attenuation(np.ascontiguousarray(total), scanner=scanner)[..., 1]
        rest = lookup_log_attenuation(np.ascontiguousarray(without), scanner=scanner)[..., 1]
        added = float((with_obj - rest)[obj.mask_crop].mean()) if obj.mask_crop.any() else 0.0
        # A robust spread (1.4826 × median absolute deviation = σ for Gaussian clutter): thin dense lines
        # such as cables cover few pixels and would otherwise set the scale alone.
        spread = 1.4826 * float(np.median(np.abs(rest - np.median(rest))))
        return added / max(spread, 1e-3)

    def without(self, removed: Sequence[SceneObject]) -> BagScene:
        """This scene with the given contraband objects taken out: their own attenuation subtracted from
        the basis and the objects dropped (a wrap placed round one stays, as an empty wrap would)."""
        gone = {id(o) for o in removed}
        mine = {id(o) for o in self.objects}
        if not gone <= mine:
            raise ValueError("only objects of this scene can be taken out of it")
        basis = self.basis_cm.copy()
        for obj in self.objects:
            if id(obj) not in gone:
                continue
            if obj.basis_crop_cm is None:
                raise ValueError(f"{obj.name}: only contraband objects can be taken out of a scene")
            y0, x0 = obj.offset_yx
            h, w = obj.mask_crop.shape
            basis[y0 : y0 + h, x0 : x0 + w] -= obj.basis_crop_cm
        kept = tuple(o for o in self.objects if id(o) not in gone)
        return replace(self, basis_cm=basis, objects=kept)


# Benign clutter and how common it is, per container. Clothes dominate suitcases and holdalls; chargers,
# cables and small metal (pens, clips, buckles, hangers, cutlery, tins) are in nearly every real bag: in
# the SIXray and PIDray samples electronics and metal fill much of each scan, and cables are the thin
# dark lines that cross most of them.
_CLUTTER: dict[str, clutter.Builder] = {
    "clothes": clutter.clothes, "shoes": clutter.shoes, "book": clutter.book, "food": clutter.food_block,
    "bottle": clutter.bottle, "jar": clutter.standing_container, "toiletries": clutter.toiletries,
    "laptop": electronics.laptop, "phone": electronics.phone, "charger": electronics.charger,
    "cable": electronics.cable, "umbrella": clutter.umbrella, "keys": clutter.keys, "coins": clutter.coins,
    "small_metal": clutter.small_metal,
}  # fmt: skip
# Relative weights, in the order of _CLUTTER.
_WEIGHTS: dict[str, tuple[float, ...]] = {
    #          clothes shoes book food bottle jar toilet laptop phone charger cable umbr keys coins metal
    "suitcase": (8.0, 2.0, 1.0, 1.0, 1.5, 0.7, 2.0, 2.0, 2.0, 3.0, 7.0, 1.0, 1.5, 1.0, 4.0),
    "holdall":  (8.0, 2.0, 0.7, 1.0, 1.5, 0.5, 2.0, 1.5, 2.0, 3.0, 7.0, 1.0, 1.5, 1.0, 4.0),
    "backpack": (3.0, 0.5, 1.5, 1.5, 1.5, 0.5, 1.0, 3.0, 2.0, 3.0, 8.0, 1.0, 2.0, 1.0, 4.0),
    "tray":     (2.0, 1.5, 0.5, 0.0, 1.0, 0.0, 1.0, 2.0, 2.0, 0.5, 0.5, 0.0, 1.5, 1.5, 2.0),
}  # fmt: skip
_TRAY_MAX_ITEMS = 6
_CONTAINER_ODDS = {"suitcase": 0.35, "backpack": 0.25, "holdall": 0.28, "tray": 0.12}
_SOFT = frozenset({"clothes", "cable"})  # these take the shape of the bag: clipped to its interior
#: Finest pitch (mm) at which the bag's shell and clothes are built; finer scenes scale them up in the
#: placing warp (`Item.scale`). Fabric, panels and frame rods vary over centimetres, and the scanner's
#: blur and the datasets' detector pitch (≈ 1.5 display px for SIXray) soften them as much; building them
#: at this pitch instead of ≈ 1 mm takes the scene from ≈ 180 to ≈ 105 ms at 768 px
#: (bench/synth_speed.py). Thin and small things (cables, electronics, metal, contraband) keep full resolution.
COARSE_BUILD_MM = 2.0
_COARSE = frozenset({"clothes"})


def _coarse_mm(pixel_mm: float) -> float:
    return max(pixel_mm, COARSE_BUILD_MM)


def _choose(rng: np.random.Generator, weights: tuple[float, ...]) -> str:
    p = np.array(weights, float)
    return list(_CLUTTER)[int(rng.choice(len(p), p=p / p.sum()))]


def _body_cm(container: Container, pixel_mm: float) -> tuple[float, float]:
    """(length, width) cm of a container's body: its interior's bounding box and the walls round it.

    Loose straps and strap clips are left out: scans are framed on the bag, and those may be cut.
    """
    m = container.interior > 0.5
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    walls_cm = 2 * 4.0
    step_cm = pixel_mm / 10.0
    return ((cols[-1] - cols[0] + 1) * step_cm + walls_cm, (rows[-1] - rows[0] + 1) * step_cm + walls_cm)


def _container_and_frame(rng: np.random.Generator, config: BagConfig) -> tuple[Container, BagFrame]:
    """Pick a container, a bag rotation and a pixel size that makes the bag fill most of the image."""
    img_h, img_w = config.size_px
    # Travellers' bags far outnumber bare trays in the public datasets (SIXray and PIDray show none).
    odds = np.array([_CONTAINER_ODDS[k] for k in config.containers])
    kind = str(config.containers[int(rng.choice(len(odds), p=odds / odds.sum()))])
    # Bags mostly ride along or across the belt, some at any angle. Datasets crop each scan to its
    # bag; on a fixed landscape canvas that framing is matched by laying most bags lengthwise.
    u = rng.random()
    if u < 0.7:
        angle = 180.0 * int(rng.integers(2)) + rng.normal(0.0, 4.0)
    elif u < 0.85:
        angle = 90.0 + 180.0 * int(rng.integers(2)) + rng.normal(0.0, 4.0)
    else:
        angle = rng.uniform(0.0, 360.0)
    seed = int(rng.integers(2**63))
    coarse_mm = 6.0  # a cheap low-resolution build, only to measure the bag
    length, width = _body_cm(build_container(np.random.default_rng(seed), kind, coarse_mm), coarse_mm)
    a = math.radians(angle)
    span_w = abs(length * math.cos(a)) + abs(width * math.sin(a))
    span_h = abs(length * math.sin(a)) + abs(width * math.cos(a))
    fill = rng.uniform(0.8, 0.97)
    pixel_mm = float(np.clip(10.0 * max(span_w / (fill * img_w), span_h / (fill * img_h)), *config.pixel_mm))
    pixel_mm = max(pixel_mm, 10.0 * max(span_w / (0.95 * img_w), span_h / (0.95 * img_h)))
    build_mm = _coarse_mm(pixel_mm)
    container = build_container(np.random.default_rng(seed), kind, build_mm)
    container = replace(container, item=replace(container.item, scale=build_mm / pixel_mm))
    slack_x = max(0.0, img_w - span_w * 10.0 / pixel_mm) / 2
    slack_y = max(0.0, img_h - span_h * 10.0 / pixel_mm) / 2
    centre = (img_w / 2 + rng.uniform(-slack_x, slack_x) * 0.4, img_h / 2 + rng.uniform(-slack_y, slack_y) * 0.4)
    return container, BagFrame(centre, angle, pixel_mm, container.interior_cm)


def _clutter_placements(rng: np.random.Generator, config: BagConfig, kind: str, frame: BagFrame) -> list[Placement]:
    n = int(rng.integers(config.n_clutter[0], config.n_clutter[1] + 1))
    # A bag holds what its floor area allows (about one item per 45 cm²: travellers pack in layers),
    # but never fewer than asked for.
    area_cap = int(frame.interior_cm[0] * frame.interior_cm[1] / 45.0)
    n = min(n, max(config.n_clutter[0], area_cap))
    if kind == "tray":
        n = min(n, _TRAY_MAX_ITEMS)
    names = [_choose(rng, _WEIGHTS[kind]) for _ in range(n)]
    if kind in ("suitcase", "holdall") and n >= 3 and "clothes" not in names:
        names[0] = "clothes"
    names.sort(key=lambda s: s != "clothes")  # clothes first: they are the bottom layer of a packed bag
    out = []
    for name in names:
        if name in _COARSE:
            build_mm = _coarse_mm(frame.pixel_mm)
            item = replace(_CLUTTER[name](rng, build_mm), scale=build_mm / frame.pixel_mm)
        else:
            item = _CLUTTER[name](rng, frame.pixel_mm)
        soft = name in _SOFT
        pose = frame.random_pose(rng, item, aligned_p=0.7 if soft else 0.5, spill=0.6 if soft else 0.1)
        if pose is not None:  # a rigid item too big for this bag stays at home
            out.append(Placement(item, pose, soft=soft))
    return out


def _n_contraband(rng: np.random.Generator, config: BagConfig) -> int:
    lo, hi = config.n_contraband
    if hi == 0 or not config.contraband_classes or rng.random() < config.clean_fraction:
        return 0
    return int(rng.integers(max(1, lo), hi + 1))


def _scene_object(placed: Placed, placement: Placement, image_hw: tuple[int, int], keep_basis: bool) -> SceneObject:
    return SceneObject(
        name=placed.name,
        class_name=placement.class_name,
        material=placement.item.main_material,
        concealment=placement.concealment,
        mask_crop=placed.mask(),
        offset_yx=placed.offset_yx,
        image_hw=image_hw,
        basis_crop_cm=placed.basis_cm if keep_basis else None,
    )


def generate_bag(rng: np.random.Generator, config: BagConfig, coefficients: CoefficientFn | None = None) -> BagScene:
    """One bag scene.

    rng: consumed for every random choice (record its state to reproduce a bag).
    config: what to make. coefficients: material → (cm PE, cm Al) per cm at table density; default
        `datasets.synth.physics.basis_coefficients`.
    Returns a BagScene with basis_cm (H, W, 2) float32 at config.size_px.
    """
    rng_state = rng.bit_generator.state
    image_hw = config.size_px
    acc = BasisAccumulator(image_hw, coefficients or default_coefficients)
    container, frame = _container_and_frame(rng, config)
    bag_pose = frame.pose_at(0.0, 0.0, 0.0)
    # The interior rides along as a fourth plane, so the bag and its inside share one warp.
    planes = acc.planes(container.item, extra=container.interior)
    placed = place(container.item.name, planes, bag_pose.angle_deg, bag_pose.centre_xy, image_hw,
                   scale=container.item.scale)
    if placed is None:
        raise RuntimeError("the container fell outside the image")  # cannot happen: the frame centres it
    interior = np.zeros(image_hw, np.float32)
    y0, x0 = placed.offset_yx
    h, w = placed.shape_hw
    interior[y0 : y0 + h, x0 : x0 + w] = placed.planes[:, :, 3]
    acc.add(placed)
    objects = [_scene_object(placed, Placement(container.item, bag_pose), image_hw, False)]
    # Groups of placements that lie at one height: an item alone, or a contraband object with what hides it.
    groups = [[p] for p in _clutter_placements(rng, config, container.kind, frame)]
    classes = hideable_classes(config.contraband_classes, config.concealments, container.kind)
    for _ in range(_n_contraband(rng, config)):
        class_name = str(classes[int(rng.integers(len(classes)))])
        how = choose_concealment(rng, class_name, config.concealments, container.kind)
        groups.append(conceal(rng, class_name, how, frame))
    # The fan beam and the items' heights are drawn last, so the rest of a bag is what it was without them.
    fan = draw_fan_beam(rng, image_hw[0], container.depth_cm)
    heights = [draw_height(rng, container.depth_cm, soft=g[0].soft, concealment=g[0].concealment) for g in groups]
    for group, height in zip(groups, heights):
        placed_group = _place_group(group, fan, height, acc, interior, image_hw)
        for p, placed in placed_group:
            acc.add(placed)
            objects.append(_scene_object(placed, p, image_hw, p.class_name is not None))
    return BagScene(acc.basis_cm, tuple(objects), interior > 0.5, container.kind, frame.pixel_mm, rng_state, fan)


#: Share of an item's footprint that its height's magnification may push out of the bag's outline beyond
#: what lies out of it at true scale; past it the group is drawn at the bag's mid-depth (true scale).
_OUTSIDE_MARGIN = 0.05


def _place_one(p: Placement, squeeze: float, centre_y: float, acc: BasisAccumulator, interior: np.ndarray,
               image_hw: tuple[int, int]) -> Placed | None:
    placed = place(p.item.name, acc.planes(p.item), p.pose.angle_deg, (p.pose.centre_xy[0], centre_y), image_hw,
                   flip=p.pose.flip, scale=p.item.scale, squeeze_y=squeeze)
    if placed is not None and p.soft:
        y0, x0 = placed.offset_yx
        h, w = placed.shape_hw
        inside = interior[y0 : y0 + h, x0 : x0 + w]
        if bool((inside[placed.mask()] < 1.0).any()):  # reaches the bag's edge: clip it to the interior
            placed = trim(placed.scaled(inside))
    return placed


def _outside_share(placed: Placed | None, interior: np.ndarray) -> float:
    if placed is None:
        return 1.0
    y0, x0 = placed.offset_yx
    h, w = placed.shape_hw
    mask = placed.mask()
    return float((interior[y0 : y0 + h, x0 : x0 + w][mask] < 0.5).mean()) if mask.any() else 1.0


def _place_group(group: list[Placement], fan: FanBeam, height_cm: float, acc: BasisAccumulator,
                 interior: np.ndarray, image_hw: tuple[int, int]) -> list[tuple[Placement, Placed]]:
    """A group's items placed at `height_cm` through the fan beam: squeezed across the belt by its
    magnification, their centres moved from the source's row in proportion (one map for the group, so a
    hidden object stays inside its host). The container's outline is drawn at mid-depth; a group the
    magnification pushes out of it (any rigid member `_OUTSIDE_MARGIN` more outside than at true scale) is
    drawn at mid-depth instead."""
    m = fan.magnification(height_cm)
    placed = [_place_one(p, m, fan.project_row(p.pose.centre_xy[1], height_cm), acc, interior, image_hw) for p in group]
    if m != 1.0 and _pushed_out(group, placed, acc, interior, image_hw):  # drawn at mid-depth instead
        placed = [_place_one(p, 1.0, p.pose.centre_xy[1], acc, interior, image_hw) for p in group]
    return [(p, q) for p, q in zip(group, placed) if q is not None]


def _pushed_out(group: list[Placement], placed: list[Placed | None], acc: BasisAccumulator, interior: np.ndarray,
                image_hw: tuple[int, int]) -> bool:
    """Whether a rigid member of the group lies `_OUTSIDE_MARGIN` more outside the bag's outline as placed
    than at true scale (soft members are clipped to the interior anyway)."""
    for p, q in zip(group, placed):
        if p.soft:
            continue
        outside = _outside_share(q, interior)
        if outside > _OUTSIDE_MARGIN:
            true_scale = _place_one(p, 1.0, p.pose.centre_xy[1], acc, interior, image_hw)
            if outside > _outside_share(true_scale, interior) + _OUTSIDE_MARGIN:
                return True
    return False
