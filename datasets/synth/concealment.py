"""How contraband is hidden, as in seizure reports: linings, false bottoms, inside other items, under
dense items, wrapped in aluminium foil or carbon paper, or simply packed among the clutter.

`conceal` returns the placements of one contraband object together with whatever hides it (the host
item, the false-bottom panel, the dense cover, the wrap); those helpers are benign objects of the scene.
"""

from __future__ import annotations

import numpy as np

from datasets.synth import clutter, contraband, electronics, shapes
from datasets.synth.items import Item, Layer, embed, make_item
from datasets.synth.layout import BagFrame, Placement, Pose

CONCEALMENTS: tuple[str, ...] = (
    "none",
    "lining",
    "false_bottom",
    "inside_item",
    "under_dense",
    "foil_wrap",
    "carbon_paper",
)

#: Which concealments make sense for which class (a tusk does not fit a lining; cartons already hold foil).
ALLOWED: dict[str, tuple[str, ...]] = {
    "drug_package": CONCEALMENTS,
    "cannabis": CONCEALMENTS,
    "cash_bundle": CONCEALMENTS,
    "tobacco": ("none", "lining", "false_bottom", "under_dense", "carbon_paper"),
    "medicine_pills": ("none", "lining", "false_bottom", "inside_item", "under_dense", "foil_wrap"),
    "ivory": ("none", "inside_item", "under_dense", "foil_wrap", "carbon_paper"),
    "pangolin_scales": ("none", "lining", "false_bottom", "under_dense", "foil_wrap"),
}

#: A tray is open: nothing can be sewn into it.
NOT_IN_TRAY: tuple[str, ...] = ("lining", "false_bottom")


def concealment_options(class_name: str, allowed: tuple[str, ...], container: str) -> list[str]:
    """The concealments among `allowed` that suit `class_name` in a `container`."""
    return [c for c in ALLOWED[class_name] if c in allowed and not (container == "tray" and c in NOT_IN_TRAY)]


def hideable_classes(classes: tuple[str, ...], allowed: tuple[str, ...], container: str) -> tuple[str, ...]:
    """The classes that some allowed concealment suits; all of `classes` when none is suited (packed openly)."""
    return tuple(c for c in classes if concealment_options(c, allowed, container)) or classes


def choose_concealment(rng: np.random.Generator, class_name: str, allowed: tuple[str, ...], container: str) -> str:
    """A concealment for `class_name` among `allowed`; plain packing ('none') takes a third when allowed.

    With no allowed concealment suited to the class (see `hideable_classes`) it is packed openly.
    """
    options = concealment_options(class_name, allowed, container)
    if not options:
        return "none"
    if "none" in options and rng.random() < 0.33:
        return "none"
    hidden = [c for c in options if c != "none"] or options
    return str(hidden[int(rng.integers(len(hidden)))])


def conceal(rng: np.random.Generator, class_name: str, concealment: str, frame: BagFrame) -> list[Placement]:
    """Placements for one object of `class_name` hidden by `concealment` in the bag `frame`.

    The contraband placement comes first; the others are benign helpers (class None).
    """
    pixel_mm = frame.pixel_mm
    if concealment in ("lining", "false_bottom") and class_name in contraband.FLAT_CLASSES:
        return _flat(rng, class_name, concealment, frame)
    if concealment == "inside_item":
        return _inside_item(rng, class_name, frame)
    item = contraband.build_contraband(
        rng, class_name, pixel_mm, max_size_cm=(frame.interior_cm[0] * 0.9, frame.interior_cm[1] * 0.9)
    )
    pose = frame.random_pose(rng, item, aligned_p=0.5, spill=0.1, must_fit=True)
    assert pose is not None
    placements = [Placement(item, pose, class_name, concealment)]
    if concealment == "under_dense":
        cover = electronics.laptop(rng, pixel_mm) if rng.random() < 0.7 else _thermos(rng, pixel_mm)
        jitter = rng.normal(0.0, 0.1, 2) * np.array(item.shape_hw[::-1]) * (pixel_mm / 10.0)
        # The cover lies on the contraband, turned roughly with it so it hides most of the footprint.
        angle = pose.angle_deg + rng.normal(0.0, 15.0)
        centre = (pose.centre_xy[0] + jitter[0] * 10 / pixel_mm, pose.centre_xy[1] + jitter[1] * 10 / pixel_mm)
        placements.append(Placement(cover, Pose(angle, centre, bool(rng.random() < 0.5))))
    elif concealment in ("foil_wrap", "carbon_paper"):
        placements.append(Placement(contraband.build_wrap(rng, item, concealment, pixel_mm), pose))
    return placements


def _flat(rng: np.random.Generator, class_name: str, concealment: str, frame: BagFrame) -> list[Placement]:
    """A thin wide layer along one wall (lining) or across the whole base under a panel (false bottom)."""
    il, iw = frame.interior_cm
    if concealment == "false_bottom":
        size = (il * rng.uniform(0.85, 0.98), iw * rng.uniform(0.85, 0.98))
        thickness = rng.uniform(0.5, 3.0)
        x = y = 0.0
    elif rng.random() < 0.6:  # along a long wall
        size = (il * rng.uniform(0.5, 0.95), iw * rng.uniform(0.2, 0.45))
        thickness = rng.uniform(0.3, 1.5)
        x = rng.uniform(-1, 1) * (il - size[0]) / 2
        y = float(rng.choice([-1, 1])) * (iw - size[1]) / 2
    else:  # along an end wall
        size = (il * rng.uniform(0.2, 0.4), iw * rng.uniform(0.5, 0.95))
        thickness = rng.uniform(0.3, 1.5)
        x = float(rng.choice([-1, 1])) * (il - size[0]) / 2
        y = rng.uniform(-1, 1) * (iw - size[1]) / 2
    item = contraband.build_flat_layer(rng, class_name, frame.pixel_mm, size, thickness)
    pose = frame.pose_at(x, y, rng.normal(0.0, 1.0))
    placements = [Placement(item, pose, class_name, concealment)]
    if concealment == "false_bottom":
        board = str(rng.choice(["cardboard", "wood", "abs"]))
        panel = shapes.box(il * 0.99, iw * 0.99, rng.uniform(0.3, 0.6), frame.pixel_mm, corner_cm=1.0, edge_cm=0.0)
        density = clutter.vary_density(rng, board) * (3.0 if board == "cardboard" else 1.0)  # pressed board
        placements.append(
            Placement(make_item("false_bottom_panel", [(board, density, panel)]), frame.pose_at(0.0, 0.0, 0.0))
        )
    return placements


def _inside_item(rng: np.random.Generator, class_name: str, frame: BagFrame) -> list[Placement]:
    """Contraband inside a bottle, a shoe, a hollowed book or a laptop case; both share one pose."""
    pixel_mm = frame.pixel_mm
    hosts = {
        "drug_package": ("bottle", "shoes", "book", "laptop"),
        "cannabis": ("shoes", "book"),
        "cash_bundle": ("book", "laptop", "shoes"),
        "medicine_pills": ("shoes", "book"),
        "ivory": ("shoes",),
    }.get(class_name, ("shoes",))
    host_kind = str(hosts[int(rng.integers(len(hosts)))])
    if host_kind == "bottle":
        host, inner = clutter.bottle_shell(rng, pixel_mm)
        drug = str(rng.choice(contraband.DRUGS))
        # Dissolved cocaine in rum or wine: the liquid itself is the contraband, denser than water.
        item = make_item(f"{drug}_liquid", [(drug, rng.uniform(1.0, 1.2), inner)])
    elif host_kind in ("book", "laptop"):
        length, width = (rng.uniform(20, 28), rng.uniform(14, 20)) if host_kind == "book" else (0.0, 0.0)
        host = _hollow_book(rng, pixel_mm, length, width) if host_kind == "book" else electronics.laptop(rng, pixel_mm)
        h, w = host.shape_hw
        step = pixel_mm / 10.0
        size = (w * step * rng.uniform(0.5, 0.7), h * step * rng.uniform(0.45, 0.65))
        flat_class = class_name if class_name in contraband.FLAT_CLASSES else "drug_package"
        depth = rng.uniform(1.5, 3.0) if host_kind == "book" else rng.uniform(0.4, 0.9)
        item = embed(contraband.build_flat_layer(rng, flat_class, pixel_mm, size, depth), host.shape_hw)
        if host_kind == "book":  # the cavity: pages cut away where the package sits
            host = _cut_cavity(host, item, depth)
    else:
        host = clutter.shoes(rng, pixel_mm)
        h, w = host.shape_hw
        step = pixel_mm / 10.0
        # Sized for one shoe of the pair (each about half the canvas high), centred in it; what still reaches
        # past its outline (a stack of notes wider than the shoe) is pressed into it, as stuffed notes or a
        # wrapped package take the shape of the shoe they fill.
        inner = contraband.build_contraband(rng, class_name, pixel_mm, max_size_cm=(w * step * 0.55, h * step * 0.3))
        item = embed(inner, host.shape_hw, (int(rng.choice([-1, 1])) * h // 4, int(rng.integers(-w // 8, w // 8 + 1))))
        item = _within(item, host.total_thickness_cm() > 0.0)
    pose = frame.random_pose(rng, host, aligned_p=0.6, spill=0.1, must_fit=True)
    assert pose is not None
    return [Placement(item, pose, class_name, "inside_item"), Placement(host, pose)]


def _within(item: Item, outline: np.ndarray) -> Item:
    """`item` (on its host's canvas) cut to the host's outline (H×W bool)."""
    keep = outline.astype(np.float32)
    return Item(item.name, tuple(Layer(la.material, la.density_g_cm3, la.thickness_cm * keep) for la in item.layers),
                item.scale)


def _hollow_book(rng: np.random.Generator, pixel_mm: float, length: float, width: float) -> Item:
    """A thick hardback book to be hollowed out."""
    pages = shapes.box(length, width, rng.uniform(4.0, 7.0), pixel_mm, corner_cm=0.1, edge_cm=0.1)
    boards = shapes.box(length + 0.6, width + 0.4, 0.5, pixel_mm, corner_cm=0.2, edge_cm=0.05)
    return make_item("book", [("paper", clutter.vary_density(rng, "paper", 0.15), pages), ("cardboard", 0.6, boards)])


def _cut_cavity(book: Item, filling: Item, depth_cm: float) -> Item:
    """Remove `depth_cm` of paper over the footprint of `filling` (both on the book's canvas)."""
    cavity = (filling.total_thickness_cm() > 0.01).astype(np.float32) * np.float32(depth_cm + 0.2)
    layers = tuple(
        Layer(
            la.material,
            la.density_g_cm3,
            np.maximum(la.thickness_cm - cavity, 0.0) if la.material == "paper" else la.thickness_cm,
        )
        for la in book.layers
    )
    return Item(book.name, layers)


def _thermos(rng: np.random.Generator, pixel_mm: float) -> Item:
    """A steel vacuum flask lying on its side: two thin steel walls, seen as a dense tube."""
    length, d = rng.uniform(22, 34), rng.uniform(6.5, 9.0)
    outer = shapes.cylinder(length, d, pixel_mm, wall_cm=0.06)
    inner = shapes.centre_pad(shapes.cylinder(length - 2.0, d - 1.0, pixel_mm, wall_cm=0.05), outer.shape)
    cap = shapes.centre_pad(
        shapes.cylinder(4.0, d, pixel_mm), outer.shape, (0, outer.shape[1] // 2 - int(20 / pixel_mm))
    )
    return make_item("thermos", [("steel", 7.9, outer + inner), ("abs", 1.05, cap * 0.3)])
