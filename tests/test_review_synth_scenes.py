"""Review tests of the synthetic bag scenes, as a trainer sees them: what each label box holds and what the
scan draws there (datasets.synth: bags, concealment, contraband, clutter)."""

from __future__ import annotations

import numpy as np

from datasets.synth import concealment
from datasets.synth.bags import BagConfig, generate_bag
from datasets.synth.layout import BagFrame
from datasets.synth.physics import build_scanner, lookup_log_attenuation
from datasets.synth.pipeline import bag_rng


def test_liquid_drug_stays_inside_its_bottle() -> None:
    """Concealment 'inside_item' with a bottle host: the dissolved drug (the labelled drug_package) is the
    liquid inside the glass. A user sees, in many such bags, the orange liquid and its box bulging out
    through the side of the bottle near the shoulder: the liquid's radius profile is drawn with fixed
    neck/shoulder sizes instead of the bottle's own."""
    frame = BagFrame((300.0, 200.0), 0.0, 1.0, (60.0, 40.0))
    bottles = outside = 0
    for seed in range(400):
        placements = concealment.conceal(np.random.default_rng(seed), "drug_package", "inside_item", frame)
        drug, host = placements[0].item, placements[1].item
        if not drug.name.endswith("_liquid"):
            continue
        bottles += 1
        liquid = drug.total_thickness_cm() > 0.05
        glass = host.total_thickness_cm() > 0.0
        if (liquid & ~glass).any():
            outside += 1
        if bottles >= 25:
            break
    assert bottles >= 10
    assert outside == 0, f"{outside} of {bottles} bottles hold liquid outside the glass"


def test_cannabis_box_is_the_visible_block_not_its_invisible_seal() -> None:
    """Label boxes are documented as the visible extent of each object. A vacuum-packed cannabis block's
    seal is 0.03 cm of polyethylene reaching 1-2 cm beyond the block: it attenuates ~0.5 % (far under the
    scan's noise), yet MASK_MIN_CM counts it, so every cannabis box is ~20 % larger in area than the block
    the scan shows; a detector trained on it learns loose boxes for the class."""
    scanner = build_scanner()
    config = BagConfig(size_px=(288, 384), n_clutter=(0, 0), contraband_classes=("cannabis",),
                       concealments=("none",), n_contraband=(2, 2), clean_fraction=0.0)
    checked = 0
    for index in range(6):
        scene = generate_bag(bag_rng(4, index), config)
        for obj in scene.contraband:
            if obj.name != "cannabis_block":
                continue
            own = lookup_log_attenuation(np.ascontiguousarray(obj.basis_crop_cm), scanner=scanner)[..., 1]
            ys, xs = np.nonzero(own > 0.01)  # where the object alone attenuates ≥ 1 % (scan noise σ ≈ 3 %)
            y0, x0 = obj.offset_yx
            visible = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
            bx0, by0, bx1, by1 = obj.box_xyxy
            ratio = (visible[2] - visible[0]) * (visible[3] - visible[1]) / ((bx1 - bx0) * (by1 - by0))
            assert ratio >= 0.93, (index, obj.box_xyxy, visible, round(ratio, 3))
            checked += 1
    assert checked >= 3


def test_contraband_hidden_in_a_shoe_lies_inside_the_shoe() -> None:
    """Concealment 'inside_item' with a shoe host: the object is meant to be hidden inside the shoe. A user
    sees instead banknote stacks (and tusk pieces) of which a fifth to almost half lies outside the shoe's
    outline, in open bag space: the object is sized from the whole pair's canvas, not one shoe, and
    cash_bundle ignores its size limit (notes are never shrunk)."""
    frame = BagFrame((300.0, 200.0), 0.0, 1.0, (60.0, 40.0))
    shares = []
    for seed in range(60):
        placements = concealment.conceal(np.random.default_rng(seed), "cash_bundle", "inside_item", frame)
        cash, host = placements[0].item, placements[1].item
        if host.name != "shoes":
            continue
        inside_cash = cash.total_thickness_cm() > 0.05
        shoe = host.total_thickness_cm() > 0.0  # the shoe's whole outline (sole and upper)
        shares.append(float((inside_cash & ~shoe).sum()) / float(inside_cash.sum()))
        if len(shares) >= 12:
            break
    assert len(shares) >= 6
    assert max(shares) <= 0.05, f"share of the cash outside its shoe, per bag: {[round(s, 2) for s in shares]}"
