"""The synthetic set: determinism across worker counts, files per bag, boxes = visible mask extent."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from datasets.readers import read_dataset
from datasets.synth.physics import build_scanner
from datasets.synth.pipeline import SynthConfig, make_bag, synthesise_set
from vision.decode import decode


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name not in ("images.txt", "data.yaml")
    }


@pytest.mark.slow
def test_same_seed_byte_identical_whatever_the_workers(tmp_path):
    config = SynthConfig(bags=6, seed=7, size_px=160, palette="mixed")
    synthesise_set(config, tmp_path / "a", workers=1, progress=False)
    synthesise_set(config, tmp_path / "b", workers=2, progress=False)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b and len(a) > 6 * 4
    other = SynthConfig(bags=6, seed=8, size_px=160, palette="mixed")
    synthesise_set(other, tmp_path / "c", workers=1, progress=False)
    c = _digest(tmp_path / "c")
    assert a["images/bag_000007_000000.png"] != c.get("images/bag_000008_000000.png")


def test_set_layout_and_boxes_match_masks(tmp_path):
    config = SynthConfig(bags=8, seed=3, size_px=192, clean_fraction=0.0)
    coco = synthesise_set(config, tmp_path, workers=1, progress=False)
    read = read_dataset(tmp_path)  # the folder itself is recognised as a COCO set
    assert read.format == "coco" and coco.name == "annotations.json"
    assert len(read.samples) == 8 and not read.problems
    assert set(read.classes) == set(config.classes)
    n_boxes = 0
    for sample in read.samples:
        stem = sample.image_path.stem
        meta = json.loads((tmp_path / "meta" / f"{stem}.json").read_text())
        low = decode((tmp_path / "raw" / f"{stem}_low.png").read_bytes())
        high = decode((tmp_path / "raw" / f"{stem}_high.png").read_bytes())
        assert low.bit_depth == high.bit_depth == 16 and low.pixels.shape == (144, 192)
        image = decode(sample.image_path.read_bytes())
        assert image.layout == "rgb" and image.pixels.shape == (144, 192, 3)
        assert sample.num_boxes >= 1  # clean_fraction 0: every bag carries contraband
        for k, box in enumerate(sample.boxes_xyxy):
            mask = cv2.imread(str(tmp_path / "masks" / f"{stem}_{k:02d}.png"), cv2.IMREAD_UNCHANGED) > 0
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            n_boxes += 1
        contraband = [o for o in meta["objects"] if o["class"]]
        assert [o["class"] for o in contraband] == list(sample.class_names)
        assert all(o["concealment"] for o in contraband)
    assert n_boxes >= 8


def test_grey_palette_and_classes_option():
    config = SynthConfig(bags=1, seed=1, size_px=128, palette="grey", classes=("ivory",), clean_fraction=0.0)
    bag = make_bag(config, 0)
    assert bag.image.ndim == 2 and bag.image.dtype == np.uint8
    assert set(bag.class_names) == {"ivory"}


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown contraband"):
        SynthConfig(classes=("cocaine_brick",))
    with pytest.raises(ValueError, match="palette"):
        SynthConfig(palette="neon")


def test_synth_command(tmp_path):
    from vision.cli import app

    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--bags", "2", "--seed", "1", "--size", "128", "--classes", "cash_bundle,tobacco"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "images").glob("*.png"))) == 2
    bad = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--bags", "1", "--classes", "guns"])
    assert bad.exit_code != 0 and "unknown contraband" in bad.output
    floor = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "floor"), "--bags", "1", "--size", "96", "--min-contrast", "0.5"])
    assert floor.exit_code == 0, floor.output
    assert json.loads((tmp_path / "floor" / "synth_config.json").read_text())["min_contrast"] == 0.5
    negative = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "neg"), "--bags", "1", "--min-contrast", "-1"])
    assert negative.exit_code != 0 and "min-contrast" in negative.output


def test_min_contrast_takes_faint_objects_out_of_the_same_bag():
    """A training set's floor on contrast: the same bag (same seed and index) with the faint contraband
    taken out, the rest unchanged; 0 keeps every object."""
    base = SynthConfig(bags=12, seed=3, palette="sixray", size_px=128, n_contraband=(3, 3), clean_fraction=0.0)
    floor = 0.4
    scanner = build_scanner(kvp=base.kvp)
    dropped = kept = 0
    for i in range(12):
        full = make_bag(base, i)
        thin = make_bag(dataclasses.replace(base, min_contrast=floor), i)
        contrasts = {o.name + str(o.offset_yx): full.scene.contrast(o, scanner=scanner) for o in full.scene.contraband}
        left = {o.name + str(o.offset_yx) for o in thin.scene.contraband}
        assert left <= set(contrasts)
        for key, c in contrasts.items():
            assert (key in left) == (c >= floor), (i, key, c)
        dropped += len(contrasts) - len(left)
        kept += len(left)
        assert len(thin.boxes_xyxy) == len(left) and len(thin.class_names) == len(left)
        if len(left) < len(contrasts):
            assert not np.array_equal(thin.raw, full.raw)
    assert dropped > 0 and kept > 0  # the floor bites on some objects and spares others
    with pytest.raises(ValueError, match="min_contrast"):
        SynthConfig(min_contrast=-0.1)
