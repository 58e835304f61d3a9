"""Second review of the dataset readers and writers (datasets/readers, datasets/writers.py): each test pins a
fault found against ../shared/DATASETS.md and the modules' own docstrings. Fixtures are written to
tmp_path; nothing here reads the real scans."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import numpy as np
import pytest

from datasets.readers import read_dataset
from datasets.readers.catalog import KNOWN_CLASSES
from datasets.sample import AnnotationError, Sample
from datasets.writers import write_coco, write_yolo
from test_review_datasets import _voc_object, image, write

SIXRAY = KNOWN_CLASSES["voc"]["sixray"]




def sixray_fixture(root: Path) -> Path:
    """A SIXray-style folder: P1 (a Knife box), P2 (labelled Gun, no XML: a positive without boxes, as
    DATASETS.md warns), N1 (a negative)."""
    image(root / "JPEGImages" / "P1.jpg")
    image(root / "JPEGImages" / "P2.jpg")
    image(root / "JPEGImages" / "N1.jpg")
    write(
        root / "Annotations" / "P1.xml",
        "<annotation><filename>P1.jpg</filename><size><width>100</width><height>50</height></size>"
        + _voc_object("Knife", 11, 6, 31, 16)
        + "</annotation>",
    )
    write(
        root / "labels.csv",
        "name,Gun,Knife,Wrench,Pliers,Scissors\nP1,-1,1,-1,-1,-1\nP2,1,-1,-1,-1,-1\nN1,-1,-1,-1,-1,-1\n",
    )
    return root


def coco_doc(images: list[dict], annotations: list[dict]) -> dict:
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "Knife"}]}


# --- COCO: byte-order mark, non-UTF-8, duplicate image entries --------------------------------------------


def test_coco_json_with_a_byte_order_mark_is_read(tmp_path):
    """A COCO JSON saved by a Windows editor (UTF-8 with BOM) is refused: the user sees
    'invalid JSON: Unexpected UTF-8 BOM', while every other reader drops the BOM (sample.read_annotation_text)."""
    image(tmp_path / "images" / "a.png")
    doc = coco_doc(
        [{"id": 1, "file_name": "a.png", "width": 100, "height": 50}],
        [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}],
    )
    write(tmp_path / "annotations" / "train.json", codecs.BOM_UTF8 + json.dumps(doc).encode("utf-8"))
    read = read_dataset(tmp_path)
    assert read.problems == ()
    (sample,) = read.samples
    np.testing.assert_allclose(sample.boxes_xyxy, [[1, 2, 4, 6]])


@pytest.mark.parametrize("layout", ["lines", "coco"])
def test_non_utf8_lines_txt_and_coco_json_name_the_line(tmp_path, layout):
    """A byte that is not UTF-8 in an OPIXray txt or a COCO JSON gives an error with no line number
    (`a.txt: not UTF-8 text (...)`), unlike the CSV, YOLO and GDXray readers, which name the line."""
    image(tmp_path / "images" / "a.jpg")
    if layout == "lines":
        path = write(tmp_path / "annotations" / "a.txt", b"a.jpg Scissor 1 2 3 4\na.jpg Sc\xffissor 1 2 3 4\n")
    else:
        body = b'{"images": [],\n"categories": [{"id": 1, "name": "K\xff"}]}'
        path = write(tmp_path / "annotations" / "train.json", body)
    with pytest.raises(AnnotationError) as info:
        read_dataset(path.parent if layout == "lines" else path, layout)
    assert info.value.line == 2
    assert str(info.value).startswith(f"{path}:2:")


def test_coco_duplicate_image_entries_are_one_sample_with_all_boxes(tmp_path):
    """Two `images` entries naming one file (a merged export) give two samples of the same scan, each with
    half the boxes, and no problem: the trainer sees each object as background on the other copy, and the
    YOLO writer then fails with 'two images named a.*'. Like the lines reader, the boxes should be merged."""
    image(tmp_path / "images" / "a.png")
    doc = coco_doc(
        [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 50},
            {"id": 2, "file_name": "a.png", "width": 100, "height": 50},
        ],
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [10, 20, 3, 4]},
        ],
    )
    write(tmp_path / "annotations" / "train.json", json.dumps(doc))
    read = read_dataset(tmp_path)
    assert [s.image_path.name for s in read.samples] == ["a.png"]
    np.testing.assert_allclose(sorted(read.samples[0].boxes_xyxy.tolist()), [[1, 2, 4, 6], [10, 20, 13, 24]])


# --- round trips: the dataset's name and class list survive conversion -----------------------------------


def test_sixray_through_coco_is_still_sixray(tmp_path):
    """SIXray converted to COCO and read back says source 'pidray' with PIDray's 12 classes: SIXray's six
    class names are all PIDray names, so the COCO reader takes the file for PIDray. Class indices change
    (Gun 0 -> 6) and a model trained on it records the wrong dataset for its academic-only licence."""
    read = read_dataset(sixray_fixture(tmp_path / "sixray"))
    assert (read.source, read.classes) == ("sixray", SIXRAY)
    write_coco(read.samples, read.classes, tmp_path / "out.json")
    back = read_dataset(tmp_path / "out.json")
    assert back.classes == SIXRAY
    assert back.source == "sixray"
    assert {s.source for s in back.samples} == {"sixray"}


def test_sixray_through_yolo_keeps_its_source(tmp_path):
    """SIXray converted to YOLO and read back says source 'yolo' (its class list fits SIXray and PIDray, so
    the name is not guessed, and the writer records none): a model trained on the conversion no longer
    records that it was trained on SIXray (OPIXray, whose names are unique, keeps its name)."""
    read = read_dataset(sixray_fixture(tmp_path / "sixray"))
    write_yolo(read.samples, read.classes, tmp_path / "yolo")
    back = read_dataset(tmp_path / "yolo")
    assert back.classes == SIXRAY
    assert back.source == "sixray"


# --- YOLO writer ---------------------------------------------------------------------------------------


def test_yolo_images_txt_lists_the_linked_paths(tmp_path):
    """images.txt is documented as 'the linked paths' (OUT/images/<name>) but lists the original images:
    a trainer fed images.txt looks for labels beside the originals (ultralytics swaps /images/ for
    /labels/ in the path) and finds none, so every scan trains as a clean bag."""
    src = image(tmp_path / "src" / "JPEGImages" / "P1.jpg")
    sample = Sample(src, 100, 50, np.array([[10, 10, 20, 20]]), ("Knife",), "sixray")
    out = tmp_path / "yolo"
    write_yolo([sample], ["Knife"], out)
    listed = [Path(p) for p in (out / "images.txt").read_text(encoding="utf-8").splitlines()]
    assert listed == [(out / "images").resolve() / "P1.jpg"]
    assert listed[0].is_symlink()


def test_yolo_writer_into_a_used_folder_reads_back_only_what_it_wrote(tmp_path):
    """Converting again into the same --out folder leaves the previous run's links and label files: the
    folder then reads back with scans the second conversion never wrote (with labels in the first run's
    class indices)."""
    a = Sample(image(tmp_path / "src" / "a.png"), 100, 50, np.array([[10, 10, 20, 20]]), ("Knife",), "x")
    b = Sample(image(tmp_path / "src" / "b.png"), 100, 50, np.array([[1, 1, 5, 5]]), ("Gun",), "x")
    out = tmp_path / "yolo"
    write_yolo([a, b], ["Gun", "Knife"], out)
    write_yolo([a], ["Knife"], out)
    back = read_dataset(out)
    assert [s.image_path.name for s in back.samples] == ["a.png"]
    assert back.samples[0].class_names == ("Knife",)


def test_sixray_positive_without_boxes_is_not_written_as_a_clean_bag(tmp_path):
    """DATASETS.md: 'some SIXray positives lack boxes'. The reader flags P2 (labelled Gun, no XML) as a
    label_mismatch but both writers then emit it as a background image (an empty YOLO label file, a COCO
    image with no annotations): a scan with a gun becomes a clean-bag training example."""
    read = read_dataset(sixray_fixture(tmp_path / "sixray"))
    assert "label_mismatch" in [p.kind for p in read.problems]
    write_yolo(read.samples, read.classes, tmp_path / "yolo")
    back = read_dataset(tmp_path / "yolo")
    assert "P2.jpg" not in [s.image_path.name for s in back.samples if s.num_boxes == 0]
    write_coco(read.samples, read.classes, tmp_path / "out.json")
    back = read_dataset(tmp_path / "out.json")
    assert "P2.jpg" not in [s.image_path.name for s in back.samples if s.num_boxes == 0]
    assert "N1.jpg" in [s.image_path.name for s in back.samples if s.num_boxes == 0]  # true negatives stay


# --- VOC (SIXray) label CSV -----------------------------------------------------------------------------


def test_voc_csv_row_repeated_with_other_labels_in_one_file_is_an_error(tmp_path):
    """One CSV listing P1 twice, first with Gun and then without, is read silently with the last row (P1
    loses its Gun label); the same conflict across two CSV files is an AnnotationError naming the line."""
    image(tmp_path / "JPEGImages" / "P1.jpg")
    image(tmp_path / "JPEGImages" / "N1.jpg")
    write(tmp_path / "labels.csv", "name,Gun,Knife\nP1,1,-1\nN1,-1,-1\nP1,-1,-1\n")
    with pytest.raises(AnnotationError, match=r"labels\.csv:4: .*P1"):
        read_dataset(tmp_path, "voc")


# --- lines layout (OPIXray, HiXray, EDS) -------------------------------------------------------------------


def test_lines_two_annotation_folders_sharing_an_image_folder_report_no_false_gap(tmp_path):
    """With `annotations/` and `txt/` both beside one `images/` folder, an image annotated in the second
    folder is reported 'no_annotation: image has no annotation txt; skipped' although it is read and kept:
    the check runs after each folder instead of after all, so --strict refuses a complete dataset."""
    image(tmp_path / "images" / "a.jpg")
    image(tmp_path / "images" / "b.jpg")
    write(tmp_path / "annotations" / "a.txt", "a.jpg Scissor 1 2 3 4\n")
    write(tmp_path / "txt" / "b.txt", "b.jpg Scissor 5 6 7 8\n")
    read = read_dataset(tmp_path, "lines")
    assert [s.image_path.name for s in read.samples] == ["a.jpg", "b.jpg"]
    assert read.problems == ()
