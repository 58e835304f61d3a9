"""Review of datasets/: each test pins a bug that was found and fixed (readers against DATASETS.md, TIP, the
synthesiser's config). Fixtures are written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from datasets.readers import read_dataset
from datasets.readers.catalog import KNOWN_CLASSES
from datasets.sample import AnnotationError


def image(path: Path, width: int = 100, height: int = 50) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (200, 180, 120)).save(path)
    return path


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _voc_object(name: str, xmin: int, ymin: int, xmax: int, ymax: int) -> str:
    return (
        f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


# --- a dataset name as format fixes the published class list (readers/__init__.py docstring) -------------


def test_sixray_format_fixes_the_class_list_and_reports_other_classes(tmp_path):
    image(tmp_path / "JPEGImages" / "P1.jpg")
    xml = write(
        tmp_path / "Annotations" / "P1.xml",
        "<annotation><size><width>100</width><height>50</height></size>"
        + _voc_object("Knife", 2, 3, 20, 30)
        + _voc_object("Bat", 5, 5, 40, 40)
        + "</annotation>",
    )
    read = read_dataset(tmp_path, "sixray")
    assert read.classes == KNOWN_CLASSES["voc"]["sixray"]
    assert [p.kind for p in read.problems] == ["unknown_class"]
    assert read.problems[0].file == xml and "Bat" in read.problems[0].message
    (sample,) = read.samples
    assert sample.class_names == ("Knife",)
    np.testing.assert_allclose(sample.boxes_xyxy, [[1, 2, 19, 29]])
    # Auto-detected, the same folder is not SIXray (a class outside its list): every class is kept.
    auto = read_dataset(tmp_path)
    assert set(auto.classes) == {"Knife", "Bat"} and not auto.problems


def test_sixray_format_reports_a_csv_column_outside_the_class_list(tmp_path):
    image(tmp_path / "JPEGImages" / "N1.jpg")
    (tmp_path / "Annotations").mkdir()
    csv_path = write(tmp_path / "labels.csv", "name,Gun,Bat\nN1,-1,-1\n")
    read = read_dataset(tmp_path, "sixray")
    assert read.classes == KNOWN_CLASSES["voc"]["sixray"]
    assert [(p.kind, p.file, p.line) for p in read.problems] == [("unknown_class", csv_path, 1)]
    assert dict(read.samples[0].image_level_labels) == {"Gun": False}


def _coco(path: Path, categories: list[dict], annotations: list[dict]) -> Path:
    image(path.parent / "a.png", 100, 50)
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 50}],
        "annotations": annotations,
        "categories": categories,
    }
    return write(path, json.dumps(doc))


def test_pidray_format_fixes_the_class_list_and_reports_other_categories(tmp_path):
    json_path = _coco(
        tmp_path / "x.json",
        [{"id": 1, "name": "Gun"}, {"id": 2, "name": "Bat"}],
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [3, 4, 10, 20]},
        ],
    )
    read = read_dataset(json_path, "pidray")
    assert read.classes == KNOWN_CLASSES["coco"]["pidray"]
    assert [p.kind for p in read.problems] == ["unknown_class"]
    assert read.problems[0].record == "annotations[1] (id 2)" and "Bat" in read.problems[0].message
    (sample,) = read.samples
    assert sample.class_names == ("Gun",)
    np.testing.assert_allclose(sample.boxes_xyxy, [[1, 2, 11, 22]])


def test_recognised_coco_subset_gets_the_full_published_class_list(tmp_path):
    # A PIDray JSON that lists only two of its categories: class indices must still be PIDray's.
    json_path = _coco(
        tmp_path / "x.json",
        [{"id": 7, "name": "Gun"}, {"id": 11, "name": "Knife"}],
        [{"id": 1, "image_id": 1, "category_id": 11, "bbox": [1, 2, 10, 20]}],
    )
    read = read_dataset(json_path)
    assert read.source == "pidray" and not read.problems
    assert read.classes == KNOWN_CLASSES["coco"]["pidray"]
    assert read.samples[0].class_names == ("Knife",)


# --- annotation files that are not UTF-8, or carry a byte-order mark -----------------------------------


def test_non_utf8_gdxray_ground_truth_names_file_and_line(tmp_path):
    image(tmp_path / "B0001" / "B0001_0001.png")
    gt = write(tmp_path / "B0001" / "ground_truth.txt", b"1 10 20 5 15\n1 \xff\xfe 20 5 15\n")
    with pytest.raises(AnnotationError, match=r"ground_truth\.txt:2: not UTF-8") as exc:
        read_dataset(tmp_path)
    assert exc.value.path == gt and exc.value.line == 2


def test_non_utf8_yolo_label_and_class_file_name_file_and_line(tmp_path):
    image(tmp_path / "images" / "a.png")
    write(tmp_path / "classes.txt", "knife\n")
    label = write(tmp_path / "labels" / "a.txt", b"0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1 0.1 \xe9\n")
    with pytest.raises(AnnotationError, match=r"a\.txt:2: not UTF-8") as exc:
        read_dataset(tmp_path)
    assert exc.value.path == label
    write(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.1 0.1\n")
    write(tmp_path / "classes.txt", b"knife\ngun\xe9\n")
    with pytest.raises(AnnotationError, match=r"classes\.txt:2: not UTF-8"):
        read_dataset(tmp_path)


def test_non_utf8_label_csv_names_file_and_line(tmp_path):
    image(tmp_path / "JPEGImages" / "P1.jpg")
    write(tmp_path / "Annotations" / "P1.xml", "<annotation>" + _voc_object("Gun", 2, 2, 9, 9) + "</annotation>")
    write(tmp_path / "labels.csv", b"name,Gun\nP1,1\nP2,\xe9\n")
    with pytest.raises(AnnotationError, match=r"labels\.csv:3: not UTF-8"):
        read_dataset(tmp_path)


def test_byte_order_mark_is_read_as_nothing_in_csv_and_yolo_labels(tmp_path):
    voc = tmp_path / "voc"
    image(voc / "JPEGImages" / "N1.jpg")
    (voc / "Annotations").mkdir()
    # Excel's "CSV UTF-8" starts the file with a byte-order mark and ends lines with CRLF.
    (voc / "labels.csv").write_text("name,Gun,Knife\r\nN1,-1,1\r\n", encoding="utf-8-sig")
    read = read_dataset(voc, "voc")
    assert dict(read.samples[0].image_level_labels) == {"Gun": False, "Knife": True}

    yolo = tmp_path / "yolo"
    image(yolo / "images" / "a.png", 100, 50)
    write(yolo / "classes.txt", "knife\n")
    (yolo / "labels").mkdir()
    (yolo / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n", encoding="utf-8-sig")
    read = read_dataset(yolo)
    np.testing.assert_allclose(read.samples[0].boxes_xyxy, [[40, 15, 60, 35]], atol=1e-4)


# --- TIP over a folder: scans that share a file stem ----------------------------------------------------


def test_tip_folder_keeps_scans_with_the_same_stem_apart(tmp_path):
    from datasets.synth.tip_set import tip_folder

    # EDS-style: every domain numbers its images from 0001, so stems repeat across domains.
    scans = tmp_path / "eds"
    levels = {"domain1": 150, "domain2": 90}
    for domain, level in levels.items():
        grey = np.full((240, 320), 255, np.uint8)
        grey[30:210, 30:290] = level  # a bag: attenuating, surrounded by air
        (scans / domain / "image").mkdir(parents=True)
        cv2.imwrite(str(scans / domain / "image" / "0001.png"), grey)
        write(scans / domain / "txt" / "0001.txt", f"0001.png knife 40 40 {50 + level // 10} 60\n")
    summary = tip_folder(scans, tmp_path / "out", seed=1)
    assert summary.scans == 2 and not summary.skipped
    out = read_dataset(summary.annotations)
    paths = [s.image_path for s in out.samples]
    assert len(set(paths)) == 2 and all(p.is_file() for p in paths)
    records = json.loads((tmp_path / "out" / "tip.json").read_text())["scans"]
    for sample, record in zip(out.samples, records, strict=True):
        source = Path(record["source_image"])
        level = levels[source.parent.parent.name]
        # Each written image is its own scan (its bag's grey level far from the item), with its own boxes.
        pixels = cv2.imread(str(sample.image_path), cv2.IMREAD_UNCHANGED)
        assert pixels[31, 31] == level
        assert sample.class_names[0] == "knife" and sample.boxes_xyxy[0, 2] == 50 + level // 10


# --- the synthesiser's config is checked when it is made, not in a worker half-way through a set ---------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clean_fraction": 1.5}, "clean_fraction"),
        ({"n_contraband": (3, 1)}, "n_contraband"),
        ({"n_clutter": (-1, 4)}, "counts"),
        ({"seed": -1}, "seed"),
        ({"kvp": 0.0}, "kvp"),
        ({"kvp": 1000.0}, "kvp"),
    ],
)
def test_synth_config_refuses_bad_values_when_made(kwargs, match):
    from datasets.synth.pipeline import SynthConfig

    with pytest.raises(ValueError, match=match):
        SynthConfig(**kwargs)


def test_synth_config_takes_one_bare_class_name():
    from datasets.synth.pipeline import SynthConfig

    assert SynthConfig(classes="cannabis").classes == ("cannabis",)


def test_tip_command_refuses_a_negative_seed(tmp_path):
    from typer.testing import CliRunner

    from vision.cli import app

    result = CliRunner().invoke(app, ["tip", "--scans", str(tmp_path), "--out", str(tmp_path / "o"), "--seed", "-1"])
    assert result.exit_code == 2 and "--seed" in result.output


# --- physics: attenuation never falls as an object gets thicker ----------------------------------------


def test_log_attenuation_never_falls_with_thickness_for_any_material():
    from datasets.synth.materials import MATERIALS
    from datasets.synth.physics import basis_coefficients, build_scanner, lookup_log_attenuation

    scanner = build_scanner()
    t_cm = np.concatenate([np.linspace(0.0, 2.0, 201), np.linspace(2.0, 60.0, 291)[1:]]).astype(np.float32)
    for name in MATERIALS:
        pe, al = basis_coefficients(name)
        basis = np.stack([t_cm * np.float32(pe), t_cm * np.float32(al)], axis=-1)[None]
        log_att = lookup_log_attenuation(np.ascontiguousarray(basis, np.float32), scanner=scanner)[0]
        # Thick lead reaches the table's aluminium edge at 1.5 cm, a 30 cm battery stack too: beyond it
        # the lookup must saturate, not read a lighter point of the table.
        assert (np.diff(log_att, axis=0) >= -1e-3).all(), name
