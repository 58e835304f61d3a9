"""The belt's line-scan geometry in synthetic bags: a fan beam across the belt (image y), a parallel
projection along it (image x). Items at other heights than the bag's mid-depth are scaled across the belt
only, and move from the source's row in proportion; a hidden object keeps inside its host."""

from __future__ import annotations

import numpy as np
import pytest
from test_bags import fake_coefficients

from datasets.synth.bags import BagConfig, _place_group, generate_bag
from datasets.synth.geometry import FanBeam, draw_fan_beam, draw_height
from datasets.synth.items import BasisAccumulator, make_item, place
from datasets.synth.layout import Placement, Pose

HW = (240, 320)


def _block(name: str, h: int, w: int, material: str = "polyethylene") -> object:
    return make_item(name, [(material, 0.95, np.full((h, w), 2.0, np.float32))])


def _extent(placed) -> tuple[float, float, float, float]:
    """(width, height, centre x, centre y) of a placed footprint, px on the image."""
    rows, cols = np.nonzero(placed.mask())
    y0, x0 = placed.offset_yx
    return (float(cols.max() - cols.min() + 1), float(rows.max() - rows.min() + 1),
            x0 + float(cols.mean()), y0 + float(rows.mean()))


def test_magnification_is_true_at_the_reference_height_larger_below_smaller_above():
    fan = FanBeam(source_cm=80.0, source_row_px=100.0, reference_cm=10.0)
    assert fan.magnification(10.0) == pytest.approx(1.0)
    assert fan.magnification(0.0) == pytest.approx(90.0 / 80.0)  # nearer the source: wider
    assert fan.magnification(20.0) == pytest.approx(90.0 / 100.0)  # farther: narrower
    assert fan.project_row(100.0, 0.0) == 100.0  # the source's own ray does not move
    assert fan.project_row(160.0, 0.0) == pytest.approx(100.0 + 60.0 * 90.0 / 80.0)
    with pytest.raises(ValueError, match="above the belt"):
        fan.magnification(-1.0)
    with pytest.raises(ValueError):
        FanBeam(source_cm=0.0, source_row_px=0.0, reference_cm=1.0)


def test_draws_stay_in_their_ranges():
    rng = np.random.default_rng(0)
    for _ in range(200):
        fan = draw_fan_beam(rng, 480, 24.0)
        assert 60.0 <= fan.source_cm <= 100.0 and 0.2 * 480 <= fan.source_row_px <= 0.8 * 480
        assert fan.reference_cm == 12.0
        assert 0.0 <= draw_height(rng, 24.0) <= 24.0
        assert 0.0 <= draw_height(rng, 24.0, soft=True) <= 0.4 * 24.0
    assert draw_height(rng, 24.0, concealment="false_bottom") == 0.0


def test_squeeze_scales_across_the_belt_only_about_the_centre():
    acc = BasisAccumulator(HW, fake_coefficients)
    item = _block("block", 40, 60)
    flat = place("block", acc.planes(item), 0.0, (160.0, 120.0), HW)
    wide = place("block", acc.planes(item), 0.0, (160.0, 120.0), HW, squeeze_y=1.25)
    w0, h0, cx0, cy0 = _extent(flat)
    w1, h1, cx1, cy1 = _extent(wide)
    assert w1 == w0 and h1 == pytest.approx(h0 * 1.25, abs=1.5)
    assert (cx1, cy1) == pytest.approx((cx0, cy0), abs=0.6)
    # The thickness along each ray is the same; the footprint, so the attenuation's integral, grows with it.
    assert float(wide.planes[..., 2].max()) == pytest.approx(2.0, abs=1e-3)
    assert float(wide.planes[..., 0].sum()) == pytest.approx(1.25 * float(flat.planes[..., 0].sum()), rel=0.03)


def test_a_group_at_a_height_is_squeezed_and_moved_as_one_with_its_hidden_object_inside():
    acc = BasisAccumulator(HW, fake_coefficients)
    interior = np.ones(HW, np.float32)
    fan = FanBeam(source_cm=60.0, source_row_px=60.0, reference_cm=12.0)
    host = Placement(_block("host", 50, 80, "cotton"), Pose(0.0, (160.0, 150.0)))
    hidden = Placement(_block("hidden", 20, 30, "cocaine"), Pose(0.0, (160.0, 150.0)), "drug_package", "inside_item")
    true_scale = {p.item.name: _extent(q) for p, q in _place_group([hidden, host], fan, 12.0, acc, interior, HW)}
    low = _place_group([hidden, host], fan, 0.0, acc, interior, HW)  # on the belt: magnified 72/60
    m = fan.magnification(0.0)
    for p, placed in low:
        w, h, cx, cy = _extent(placed)
        w0, h0, cx0, cy0 = true_scale[p.item.name]
        assert w == w0 and h == pytest.approx(h0 * m, abs=1.5), p.item.name  # along the belt: true length
        assert cx == pytest.approx(cx0, abs=0.6)
        assert cy == pytest.approx(60.0 + (cy0 - 60.0) * m, abs=0.8)  # away from the source's row
    placed = {p.item.name: q for p, q in low}
    hy0, hx0 = placed["host"].offset_yx
    sy0, sx0 = placed["hidden"].offset_yx
    sh, sw = placed["hidden"].shape_hw
    hh, hw = placed["host"].shape_hw
    assert hy0 <= sy0 and sy0 + sh <= hy0 + hh and hx0 <= sx0 and sx0 + sw <= hx0 + hw


def test_an_item_the_magnification_would_push_out_of_the_bag_is_drawn_at_mid_depth():
    acc = BasisAccumulator(HW, fake_coefficients)
    interior = np.zeros(HW, np.float32)
    interior[40:200, 40:280] = 1.0
    fan = FanBeam(source_cm=60.0, source_row_px=40.0, reference_cm=12.0)
    # Against the bag's far wall from the source's row: at the belt (×1.2) it would stick 16 rows out.
    near_wall = Placement(_block("tin", 40, 40, "steel"), Pose(0.0, (160.0, 178.0)))
    ((_, placed),) = _place_group([near_wall], fan, 0.0, acc, interior, HW)
    w, h, _cx, cy = _extent(placed)
    assert h == pytest.approx(40.0, abs=1.5) and cy == pytest.approx(178.0, abs=0.8)
    # Far from the wall the same item is drawn through the fan.
    middle = Placement(_block("tin", 40, 40, "steel"), Pose(0.0, (160.0, 100.0)))
    ((_, placed),) = _place_group([middle], fan, 0.0, acc, interior, HW)
    assert _extent(placed)[1] == pytest.approx(40.0 * fan.magnification(0.0), abs=1.5)


def test_generated_bags_carry_their_fan_beam_and_stay_deterministic():
    config = BagConfig(size_px=(192, 256), n_contraband=(1, 2), clean_fraction=0.0)
    a = generate_bag(np.random.default_rng(5), config, coefficients=fake_coefficients)
    b = generate_bag(np.random.default_rng(5), config, coefficients=fake_coefficients)
    assert a.fan == b.fan and a.fan is not None and np.array_equal(a.basis_cm, b.basis_cm)
    fans = {generate_bag(np.random.default_rng(s), config, coefficients=fake_coefficients).fan for s in range(6)}
    assert len(fans) == 6


def test_a_bags_metadata_records_its_fan_beam():
    import json

    from datasets.synth.pipeline import SynthConfig, bag_metadata, make_bag

    config = SynthConfig(bags=1, size_px=128, seed=2)
    bag = make_bag(config, 0)
    meta = json.loads(json.dumps(bag_metadata(bag, config)))
    fan = meta["fan_beam"]
    assert fan == bag.scene.fan.to_dict() and 60.0 <= fan["source_cm"] <= 100.0
