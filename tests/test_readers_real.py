"""Readers against the real scans in ../shared/xray-real: every box must equal manifest.csv (0-based corners).

The files are read where they are (academic-only licences: never copied into the repository); the tests
skip when the folder is absent.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from datasets.readers import detect_format, read_dataset
from datasets.writers import write_coco, write_yolo

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "xray-real"
pytestmark = pytest.mark.skipif(not (REAL / "manifest.csv").is_file(), reason=f"real scans not present at {REAL}")

# PIDray stores floats (x, y, w, h with one decimal); x + w in float32 is within a few 1e-5 of the manifest.
COCO_TOL_PX = 1e-3
# SIXray VOC and OPIXray txt store integers: the manifest's corners are within the 0.5 px of that rounding.
INTEGER_TOL_PX = 0.5 + 1e-4


def manifest(dataset: str) -> dict[str, tuple[int, int, list[str], np.ndarray]]:
    """image file name -> (width, height, classes, boxes N×4 xyxy), in manifest order."""
    rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    with (REAL / "manifest.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["dataset"] == dataset:
                rows[Path(row["image"]).name].append(row)
    out = {}
    for name, rs in rows.items():
        boxes = np.array([[float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for r in rs])
        out[name] = (int(rs[0]["width"]), int(rs[0]["height"]), [r["class"] for r in rs], boxes)
    return out


def assert_matches_manifest(read, dataset: str, tol_px: float) -> None:
    expected = manifest(dataset)
    got = {s.image_path.name: s for s in read.samples if s.num_boxes}
    assert set(got) == set(expected)
    for name, (width, height, classes, boxes) in expected.items():
        sample = got[name]
        assert (sample.width, sample.height) == (width, height), name
        assert list(sample.class_names) == classes, name
        np.testing.assert_allclose(sample.boxes_xyxy, boxes, atol=tol_px, rtol=0, err_msg=name)
        assert sample.image_path.is_file()


def test_pidray_coco_json_matches_manifest():
    read = read_dataset(REAL / "pidray" / "annotations" / "xray_sample.json")
    assert (read.format, read.source) == ("coco", "pidray")
    assert read.classes[:3] == ("Baton", "Pliers", "Hammer") and len(read.classes) == 12
    assert read.problems == ()
    assert len(read.samples) == 12
    assert_matches_manifest(read, "pidray", COCO_TOL_PX)


def test_pidray_folder_finds_its_json_and_images():
    read = read_dataset(REAL / "pidray", "pidray")
    assert read.path.name == "xray_sample.json"
    assert all(s.image_path.parent == REAL / "pidray" / "images" for s in read.samples)
    assert_matches_manifest(read, "pidray", COCO_TOL_PX)


def test_opixray_lines_match_manifest():
    read = read_dataset(REAL / "opixray")
    assert (read.format, read.source) == ("lines", "opixray")
    # The full published class list, though only two classes occur: indices stay stable across subsets.
    assert read.classes == ("Folding_Knife", "Straight_Knife", "Scissor", "Utility_Knife", "Multi-tool_Knife")
    assert read.problems == ()
    assert_matches_manifest(read, "opixray", INTEGER_TOL_PX)


def test_sixray_voc_matches_manifest():
    read = read_dataset(REAL / "sixray")
    assert (read.format, read.source) == ("voc", "sixray")
    assert read.problems == ()
    assert len(read.samples) == 47
    assert_matches_manifest(read, "sixray", INTEGER_TOL_PX)


def test_sixray_image_level_labels_come_from_the_csv():
    read = read_dataset(REAL / "sixray")
    by_name = {s.image_path.stem: s for s in read.samples}
    labels = by_name["P00001"].image_level_labels
    assert dict(labels) == {"Gun": False, "Knife": True, "Wrench": False, "Pliers": False, "Scissors": False}
    # Every positive label has a box of that class in this subset (no label_mismatch problems above).
    for s in read.samples:
        assert {c for c, v in s.image_level_labels.items() if v} == set(s.class_names) & set(s.image_level_labels)


@pytest.mark.parametrize(("folder", "layout"), [("pidray", "coco"), ("opixray", "lines"), ("sixray", "voc")])
def test_detect_format_on_real_layouts(folder, layout):
    assert detect_format(REAL / folder)[0] == layout


def _boxes_by_image(read) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    return {s.image_path.resolve().name: (s.class_names, s.boxes_xyxy) for s in read.samples}


def test_sixray_round_trips_through_coco(tmp_path):
    read = read_dataset(REAL / "sixray")
    write_coco(read.samples, read.classes, tmp_path / "sixray.json", image_root=REAL / "sixray" / "JPEGImages")
    back = read_dataset(tmp_path / "sixray.json")
    assert back.problems == ()
    before, after = _boxes_by_image(read), _boxes_by_image(back)
    assert set(before) == set(after)
    for name, (classes, boxes) in before.items():
        assert after[name][0] == classes
        np.testing.assert_allclose(after[name][1], boxes, atol=1e-3, rtol=0)


def test_opixray_round_trips_through_yolo(tmp_path):
    read = read_dataset(REAL / "opixray")
    summary = write_yolo(read.samples, read.classes, tmp_path / "yolo")
    assert (summary.images, summary.boxes, summary.clipped_boxes) == (8, 8, 0)
    back = read_dataset(tmp_path / "yolo")
    assert (back.format, back.source, back.classes) == ("yolo", "opixray", read.classes)
    before, after = _boxes_by_image(read), _boxes_by_image(back)
    assert set(before) == set(after)
    for name, (classes, boxes) in before.items():
        assert after[name][0] == classes
        np.testing.assert_allclose(after[name][1], boxes, atol=0.5, rtol=0)
