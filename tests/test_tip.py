"""Threat Image Projection: physics identity in air, placement inside the bag, folder TIP keeps boxes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.synth.physics import build_scanner, render_raw
from datasets.synth.pipeline import SynthConfig, make_bag
from datasets.synth.tip import (
    TIP_BLUR_PX,
    PlacementError,
    bag_region,
    make_tip_item,
    project_into_raw,
    project_random,
)
from vision.colour import RAW_AIR_LEVEL, RAW_DARK_LEVEL, raw_to_log_attenuation

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "xray-real"


def _noise_free(basis: np.ndarray, blur_px: float = 0.0) -> np.ndarray:
    # A dose this high makes quantum noise vanish below one count; no readout noise.
    return render_raw(basis, rng=np.random.default_rng(0), dose=1e12, blur_px=blur_px, electronic_noise_counts=0.0)


def _near(mask: np.ndarray, px: int) -> np.ndarray:
    """The mask grown by px pixels: as far as a projected item's detector blur reaches (3σ)."""
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)


@pytest.mark.parametrize("class_name", ["drug_package", "ivory", "tobacco"])
@pytest.mark.parametrize("blur_px", [0.0, TIP_BLUR_PX])
def test_projection_into_air_equals_rendering_the_item_alone(class_name, blur_px):
    """In air, a projected item is exactly the item rendered alone by the scanner, detector blur included
    (its edges as soft as the synthesiser's)."""
    scanner = build_scanner()
    item = make_tip_item(np.random.default_rng(1), class_name, 1.2)
    shape = (item.mask.shape[0] + 20, item.mask.shape[1] + 30)
    offset = (7, 11)
    air = _noise_free(np.zeros((*shape, 2), np.float32))
    assert abs(int(air[0, 0, 0]) - RAW_AIR_LEVEL) <= 1
    projected = project_into_raw(air, item, offset, scanner=scanner, blur_px=blur_px)
    basis = np.zeros((*shape, 2), np.float32)
    basis[offset[0] : offset[0] + item.mask.shape[0], offset[1] : offset[1] + item.mask.shape[1]] = item.basis_cm
    alone = _noise_free(basis, blur_px)
    assert np.abs(projected.astype(int) - alone.astype(int)).max() <= 2
    assert (projected[item.mask.shape[0] + 10 :] == air[item.mask.shape[0] + 10 :]).all()  # air stays air
    if blur_px > 0:  # a soft edge: the row just outside the item's footprint is darkened, as rendered alone
        sharp = project_into_raw(air, item, offset, scanner=scanner, blur_px=0.0)
        assert (projected != sharp).sum() > item.mask.sum() // 20


def test_projection_multiplies_transmission():
    rng = np.random.default_rng(2)
    bag = make_bag(SynthConfig(bags=1, seed=5, size_px=256, clean_fraction=1.0), 0)
    out, placed = project_random(rng, bag.raw, kind="raw", classes=("drug_package",), count=1, pixel_mm=1.2)
    assert len(placed) == 1
    before = raw_to_log_attenuation(bag.raw)
    after = raw_to_log_attenuation(out)
    inside = placed[0].mask
    assert (after[inside] >= before[inside] - 1e-3).all() and (after[inside] - before[inside]).mean() > 0.05
    reach = _near(inside, 3)
    assert np.array_equal(out[~reach], bag.raw[~reach])


def test_placement_only_inside_the_bag_never_in_air():
    bag = make_bag(SynthConfig(bags=1, seed=9, size_px=320, clean_fraction=1.0), 0)
    region = bag_region(raw_to_log_attenuation(bag.raw).mean(axis=2))
    for seed in range(5):
        _, placed = project_random(np.random.default_rng(seed), bag.raw, kind="raw", classes=("cash_bundle", "medicine_pills"), count=2, pixel_mm=1.4)
        for p in placed:
            assert not (p.mask & ~region).any()
            ys, xs = np.nonzero(p.mask)
            assert p.box_xyxy == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_all_air_scan_is_refused():
    air = np.full((100, 120, 2), RAW_AIR_LEVEL, np.uint16)
    with pytest.raises(PlacementError, match="all air"):
        project_random(np.random.default_rng(0), air, kind="raw", classes=("ivory",))


def test_false_colour_projection_changes_only_the_item():
    rng = np.random.default_rng(4)
    bag = make_bag(SynthConfig(bags=1, seed=2, size_px=256, clean_fraction=1.0, palette="pidray"), 0)
    out, placed = project_random(rng, bag.image, kind="rgb", palette="pidray", classes=("drug_package",), pixel_mm=1.2)
    assert out.shape == bag.image.shape and out.dtype == np.uint8 and len(placed) == 1
    changed = (out != bag.image).any(axis=2)
    assert changed.any() and not (changed & ~_near(placed[0].mask, 3)).any()
    # Organic contraband darkens the scan where it lies.
    assert out[placed[0].mask].astype(int).sum() < bag.image[placed[0].mask].astype(int).sum()
    assert RAW_DARK_LEVEL < RAW_AIR_LEVEL


@pytest.mark.skipif(not (REAL / "sixray").is_dir(), reason="../shared/xray-real is not on this machine")
def test_tip_folder_keeps_original_boxes_and_adds_new(tmp_path):
    from datasets.readers import read_dataset
    from datasets.synth.tip_set import tip_folder

    original = read_dataset(REAL / "pidray")
    summary = tip_folder(REAL / "pidray", tmp_path, seed=3, per_scan=2)
    assert summary.scans == len(original.samples) and summary.projected >= len(original.samples)
    out = read_dataset(summary.annotations)
    by_stem = {s.image_path.stem: s for s in out.samples}
    for s in original.samples:
        new = by_stem[s.image_path.stem]
        n = s.num_boxes
        np.testing.assert_allclose(new.boxes_xyxy[:n], s.boxes_xyxy, atol=1e-3)
        assert new.class_names[:n] == s.class_names
        assert all(c in ("drug_package", "cannabis", "cash_bundle", "tobacco", "medicine_pills", "ivory", "pangolin_scales") for c in new.class_names[n:])
    again = tip_folder(REAL / "pidray", tmp_path / "again", seed=3, per_scan=2)
    first = sorted((tmp_path / "images").glob("*.png"))
    assert [p.read_bytes() for p in first] == [(tmp_path / "again" / "images" / p.name).read_bytes() for p in first]
    assert again.projected == summary.projected
