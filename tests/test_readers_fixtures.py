"""Readers, class maps and writers on small fixtures written to tmp_path: every layout, and the malformed
cases each must refuse (AnnotationError naming file and line/record) or report (Problem with its place)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.classmap import ClassMap, ClassMapError
from datasets.inspect import inspect_dataset
from datasets.readers import detect_format, read_dataset
from datasets.readers.catalog import KNOWN_CLASSES
from datasets.sample import AnnotationError, DatasetLayoutError, DatasetProblemsError, Sample
from datasets.writers import write_coco, write_yolo


def image(path: Path, width: int = 100, height: int = 50) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (200, 180, 120)).save(path)
    return path


def text(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def kinds(read) -> list[str]:
    return [p.kind for p in read.problems]


# --- YOLO -----------------------------------------------------------------------------------------------


def yolo_fixture(root: Path, labels: str = "0 0.5 0.5 0.2 0.4\n1 0.25 0.5 0.1 0.2\n") -> Path:
    image(root / "images" / "a.png", 100, 50)
    image(root / "images" / "b.png", 80, 60)  # no label file: a background image
    text(root / "labels" / "a.txt", labels)
    text(root / "data.yaml", "names: [knife, gun]\n")
    return root


def test_yolo_denormalises_cxcywh_to_pixel_corners(tmp_path):
    read = read_dataset(yolo_fixture(tmp_path))
    assert (read.format, read.classes, read.problems) == ("yolo", ("knife", "gun"), ())
    a, b = read.samples
    assert (a.width, a.height, a.class_names) == (100, 50, ("knife", "gun"))
    np.testing.assert_allclose(a.boxes_xyxy, [[40, 15, 60, 35], [20, 20, 30, 30]], atol=1e-4)
    assert b.num_boxes == 0 and b.image_path.name == "b.png"


def test_yolo_class_list_from_classes_txt_or_index_map(tmp_path):
    root = yolo_fixture(tmp_path / "t")
    (root / "data.yaml").unlink()
    text(root / "classes.txt", "knife\ngun\n")
    assert read_dataset(root).classes == ("knife", "gun")
    root2 = yolo_fixture(tmp_path / "m")
    text(root2 / "data.yaml", "names:\n  0: knife\n  1: gun\n")
    assert read_dataset(root2).classes == ("knife", "gun")


def test_yolo_class_index_beyond_the_list_is_reported_and_dropped(tmp_path):
    root = yolo_fixture(tmp_path, "0 0.5 0.5 0.2 0.4\n5 0.5 0.5 0.1 0.1\n")
    read = read_dataset(root)
    assert kinds(read) == ["unknown_class"]
    problem = read.problems[0]
    assert problem.file == root / "labels" / "a.txt" and problem.line == 2 and "class index 5" in problem.message
    assert read.samples[0].class_names == ("knife",)
    with pytest.raises(DatasetProblemsError, match=r"a\.txt:2: unknown_class"):
        read.raise_for_problems()


def test_yolo_malformed_line_raises_with_file_and_line(tmp_path):
    root = yolo_fixture(tmp_path, "0 0.5 0.5 0.2 0.4\n1 0.5 abc 0.1 0.1\n")
    with pytest.raises(AnnotationError, match=r"a\.txt:2: coordinate 'abc' is not a number") as exc:
        read_dataset(root)
    assert exc.value.line == 2 and exc.value.path == root / "labels" / "a.txt"


def test_yolo_without_class_list_is_a_layout_error(tmp_path):
    root = yolo_fixture(tmp_path)
    (root / "data.yaml").unlink()
    with pytest.raises(DatasetLayoutError, match="class list"):
        read_dataset(root, "yolo")


def test_yolo_polygon_line_gives_extent_box_and_pixel_mask(tmp_path):
    root = yolo_fixture(tmp_path, "1 0.1 0.2 0.5 0.2 0.3 0.8\n")
    sample = read_dataset(root).samples[0]
    np.testing.assert_allclose(sample.boxes_xyxy, [[10, 10, 50, 40]], atol=1e-4)
    np.testing.assert_allclose(sample.masks[0][0], [10, 10, 50, 10, 30, 40], atol=1e-6)


def test_yolo_label_without_image_is_reported(tmp_path):
    root = yolo_fixture(tmp_path)
    text(root / "labels" / "ghost.txt", "0 0.5 0.5 0.1 0.1\n")
    read = read_dataset(root)
    assert kinds(read) == ["missing_image"] and read.problems[0].file.name == "ghost.txt"
    assert len(read.samples) == 2


# --- GDXray ---------------------------------------------------------------------------------------------


def gdxray_fixture(root: Path) -> Path:
    series = root / "B0046"
    image(series / "B0046_0001.png", 100, 60)
    image(series / "B0046_0002.png", 100, 60)
    text(series / "ground_truth.txt", "1 11 30 21 40\n1  51 60  5 10\n")  # i x1 x2 y1 y2, 1-based
    image(root / "B0047" / "B0047_0001.png")  # a series without ground truth
    return root


def test_gdxray_rows_are_x_range_then_y_range_one_based(tmp_path):
    read = read_dataset(gdxray_fixture(tmp_path))
    assert read.format == "gdxray"
    first, second = read.samples
    assert first.image_path.name == "B0046_0001.png" and first.class_names == ("B0046", "B0046")
    np.testing.assert_allclose(first.boxes_xyxy, [[10, 20, 29, 39], [50, 4, 59, 9]])
    assert second.num_boxes == 0
    assert kinds(read) == ["no_annotation"] and read.problems[0].file.name == "B0047"


def test_gdxray_series_classes_name_the_boxes(tmp_path):
    from datasets.readers.gdxray import read_gdxray

    read = read_gdxray(gdxray_fixture(tmp_path), series_classes={"B0046": "handgun"})
    assert read.classes == ("handgun",) and read.samples[0].class_names == ("handgun", "handgun")


def test_gdxray_non_numeric_value_names_file_and_line(tmp_path):
    root = gdxray_fixture(tmp_path)
    text(root / "B0046" / "ground_truth.txt", "1 11 30 21 40\n2 11 x30 21 40\n")
    with pytest.raises(AnnotationError, match=r"ground_truth\.txt:2: x2 'x30' is not a number"):
        read_dataset(root)


def test_gdxray_index_without_image_is_reported(tmp_path):
    root = gdxray_fixture(tmp_path)
    text(root / "B0046" / "ground_truth.txt", "1 11 30 21 40\n9 11 30 21 40\n")
    read = read_dataset(root, "gdxray")
    missing = [p for p in read.problems if p.kind == "missing_image"]
    assert len(missing) == 1 and missing[0].line == 2 and "B0046_0009.png" in missing[0].message


# --- line layout: HiXray, EDS ---------------------------------------------------------------------------


def test_hixray_style_train_annotation_folder(tmp_path):
    image(tmp_path / "train" / "train_image" / "0001.jpg", 120, 90)
    image(tmp_path / "train" / "train_image" / "0002.jpg", 120, 90)
    text(tmp_path / "train" / "train_annotation" / "0001.txt", "0001.jpg Laptop 10 20 60 70\n0001.jpg Water 1 2 3 4\n")
    text(tmp_path / "train" / "train_annotation" / "0002.txt", "")  # an image with no objects
    read = read_dataset(tmp_path)
    assert (read.format, read.source, read.classes) == ("lines", "hixray", KNOWN_CLASSES["lines"]["hixray"])
    first, second = read.samples
    assert first.class_names == ("Laptop", "Water")
    np.testing.assert_array_equal(first.boxes_xyxy, [[10, 20, 60, 70], [1, 2, 3, 4]])
    assert second.num_boxes == 0 and read.problems == ()


def test_eds_domain_layout(tmp_path):
    for domain, names in (("domain1", ["a", "b"]), ("domain2", ["c"])):
        for stem in names:
            image(tmp_path / domain / "image" / f"{stem}.jpg", 64, 48)
            text(
                tmp_path / domain / "txt" / f"{stem}.txt", f"{stem}.jpg knife 1 2 30 40\n{stem}.jpg umbrella 5 5 9 9\n"
            )
    read = read_dataset(tmp_path)
    assert (read.format, read.source) == ("lines", "eds")
    assert [s.image_path.parent.parent.name for s in read.samples] == ["domain1", "domain1", "domain2"]
    assert sum(s.num_boxes for s in read.samples) == 6


def lines_fixture(root: Path, content: str) -> Path:
    image(root / "images" / "x.jpg", 100, 50)
    text(root / "annotations" / "x.txt", content)
    return root


def test_lines_non_numeric_field_names_file_and_line(tmp_path):
    root = lines_fixture(tmp_path, "x.jpg Scissor 1 2 30 40\nx.jpg Scissor 1 two 30 40\n")
    with pytest.raises(AnnotationError, match=r"x\.txt:2: y1 'two' is not a number"):
        read_dataset(root)


@pytest.mark.parametrize("bad", ["x.jpg Scissor 1 2 30\n", "x.jpg Scissor 1 2 30 nan\n"])
def test_lines_wrong_field_count_or_nan_is_refused(tmp_path, bad):
    with pytest.raises(AnnotationError, match=r"x\.txt:1: "):
        read_dataset(lines_fixture(tmp_path, bad))


def test_lines_zero_area_and_outside_boxes_are_reported_with_lines(tmp_path):
    root = lines_fixture(tmp_path, "x.jpg Scissor 10 10 10 30\nx.jpg Scissor 50 10 120 30\n")
    read = read_dataset(root)
    assert [(p.kind, p.line) for p in read.problems] == [("zero_area_box", 1), ("box_outside_image", 2)]
    assert read.samples[0].num_boxes == 2  # reported, kept: the reader does not edit the labels


def test_lines_missing_and_unreadable_images_are_reported(tmp_path):
    root = lines_fixture(tmp_path, "x.jpg Scissor 1 2 30 40\n")
    text(root / "annotations" / "gone.txt", "gone.jpg Scissor 1 2 3 4\n")
    text(root / "images" / "junk.jpg", "not a jpeg")
    text(root / "annotations" / "junk.txt", "junk.jpg Scissor 1 2 3 4\n")
    read = read_dataset(root)
    assert sorted(kinds(read)) == ["missing_image", "unreadable_image"]
    assert [s.image_path.name for s in read.samples] == ["x.jpg"]


def test_lines_unknown_class_with_a_fixed_class_list(tmp_path):
    root = lines_fixture(tmp_path, "x.jpg Scissor 1 2 30 40\nx.jpg Spoon 1 2 30 40\n")
    read = read_dataset(root, "opixray")
    assert [(p.kind, p.line) for p in read.problems] == [("unknown_class", 2)]
    assert read.samples[0].class_names == ("Scissor",)


# --- COCO (CLCXray) -------------------------------------------------------------------------------------


def coco_doc(**overrides) -> dict:
    doc = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 50},
            {"id": 2, "file_name": "b.png", "width": 80, "height": 60},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 5, 20, 10],
                "area": 200,
                "iscrowd": 0,
                "segmentation": [[10, 5, 30, 5, 30, 15]],
            },
            {"id": 2, "image_id": 1, "category_id": 6, "bbox": [0.5, 1.5, 2.25, 3], "area": 6.75, "iscrowd": 0},
        ],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(KNOWN_CLASSES["coco"]["clcxray"])],
    }
    doc.update(overrides)
    return doc


def coco_fixture(root: Path, doc: dict | None = None) -> Path:
    image(root / "images" / "a.png", 100, 50)
    image(root / "images" / "b.png", 80, 60)
    text(root / "annotations" / "train.json", json.dumps(doc or coco_doc(), indent=1))
    return root


def test_clcxray_coco_with_images_folder_and_raw_masks(tmp_path):
    read = read_dataset(coco_fixture(tmp_path))
    assert (read.format, read.source, read.problems) == ("coco", "clcxray", ())
    a, b = read.samples
    assert a.image_path == tmp_path / "images" / "a.png" and a.class_names == ("blade", "Cans")
    np.testing.assert_allclose(a.boxes_xyxy, [[10, 5, 30, 15], [0.5, 1.5, 2.75, 4.5]])
    assert a.masks == ([[10, 5, 30, 5, 30, 15]], None)
    assert b.num_boxes == 0 and b.masks is None


def test_coco_truncated_json_names_file_and_line(tmp_path):
    root = coco_fixture(tmp_path)
    path = root / "annotations" / "train.json"
    path.write_text(path.read_text()[:-40])
    with pytest.raises(AnnotationError, match=r"train\.json:\d+: invalid JSON") as exc:
        read_dataset(path)
    assert exc.value.line is not None and exc.value.path == path


def test_coco_non_numeric_bbox_names_the_record(tmp_path):
    doc = coco_doc()
    doc["annotations"][1]["bbox"] = [1, "x", 2, 3]
    with pytest.raises(AnnotationError, match=r"train\.json \[annotations\[1\] \(id 2\)\]: bbox value 'x'"):
        read_dataset(coco_fixture(tmp_path, doc))


def test_coco_unknown_category_is_reported_and_strict_raises(tmp_path):
    doc = coco_doc()
    doc["annotations"][1]["category_id"] = 99
    read = read_dataset(coco_fixture(tmp_path, doc))
    assert kinds(read) == ["unknown_class"] and read.problems[0].record == "annotations[1] (id 2)"
    assert read.samples[0].class_names == ("blade",)
    with pytest.raises(DatasetProblemsError, match=r"train\.json \[annotations\[1\] \(id 2\)\]: unknown_class"):
        read.raise_for_problems()


def test_coco_box_beyond_the_image_and_missing_image(tmp_path):
    doc = coco_doc()
    doc["annotations"][1]["bbox"] = [90, 40, 20, 20]
    doc["images"].append({"id": 3, "file_name": "gone.png", "width": 10, "height": 10})
    read = read_dataset(coco_fixture(tmp_path, doc))
    assert [(p.kind, p.record) for p in read.problems] == [
        ("box_outside_image", "annotations[1] (id 2)"),
        ("missing_image", "images[2]"),
    ]
    assert len(read.samples) == 3  # the JSON gives the missing image's size, so its sample is kept


def test_coco_multiple_jsons_must_be_chosen(tmp_path):
    root = coco_fixture(tmp_path)
    text(root / "annotations" / "val.json", json.dumps(coco_doc()))
    with pytest.raises(DatasetLayoutError, match=r"several \.json"):
        read_dataset(root)


# --- VOC (SIXray) ---------------------------------------------------------------------------------------


def voc_fixture(root: Path, xml_objects: str, csv_rows: str = "") -> Path:
    image(root / "JPEGImages" / "P1.jpg", 100, 50)
    image(root / "JPEGImages" / "N1.jpg", 90, 40)
    text(
        root / "Annotations" / "P1.xml",
        f"<annotation><filename>P1.jpg</filename><size><width>100</width><height>50</height></size>{xml_objects}</annotation>",
    )
    text(root / "labels.csv", "name,Gun,Knife\n" + (csv_rows or "P1,-1,1\nN1,-1,-1\n"))
    return root


KNIFE = (
    "<object><name>Knife</name><bndbox><xmin>11</xmin><ymin>6</ymin><xmax>31</xmax><ymax>16</ymax></bndbox></object>"
)


def test_voc_shifts_one_based_corners_and_reads_negatives(tmp_path):
    read = read_dataset(voc_fixture(tmp_path, KNIFE))
    assert (read.format, read.source, read.problems) == ("voc", "sixray", ())
    negative, positive = read.samples  # sorted by stem: N1, P1
    np.testing.assert_array_equal(positive.boxes_xyxy, [[10, 5, 30, 15]])
    assert negative.num_boxes == 0 and (negative.width, negative.height) == (90, 40)
    assert dict(negative.image_level_labels) == {"Gun": False, "Knife": False}


def test_voc_positive_label_without_box_is_a_label_mismatch(tmp_path):
    read = read_dataset(voc_fixture(tmp_path, KNIFE, "P1,1,1\nN1,-1,-1\n"))
    assert [(p.kind, p.line) for p in read.problems] == [("label_mismatch", 2)]
    assert "labelled Gun" in read.problems[0].message


def test_voc_bad_xml_and_bad_coordinate_are_errors(tmp_path):
    root = voc_fixture(tmp_path / "a", KNIFE.replace("<xmin>11</xmin>", "<xmin>eleven</xmin>"))
    with pytest.raises(AnnotationError, match=r"P1\.xml \[object\[0\] \(Knife\)\]: xmin 'eleven'"):
        read_dataset(root)
    root = voc_fixture(tmp_path / "b", KNIFE)
    text(root / "Annotations" / "P1.xml", "<annotation>\n<object>\n</annotation>")
    with pytest.raises(AnnotationError, match=r"P1\.xml:3: invalid XML"):
        read_dataset(root)


def test_voc_csv_bad_value_names_line(tmp_path):
    with pytest.raises(AnnotationError, match=r"labels\.csv:3: label for Knife must be 1, 0 or -1"):
        read_dataset(voc_fixture(tmp_path, KNIFE, "P1,-1,1\nN1,-1,yes\n"))


# --- detection ------------------------------------------------------------------------------------------


def test_detect_format_on_each_fixture_layout(tmp_path):
    assert detect_format(yolo_fixture(tmp_path / "y"))[0] == "yolo"
    assert detect_format(gdxray_fixture(tmp_path / "g"))[0] == "gdxray"
    assert detect_format(lines_fixture(tmp_path / "l", "x.jpg Scissor 1 2 3 4\n"))[0] == "lines"
    assert detect_format(coco_fixture(tmp_path / "c")) == ("coco", tmp_path / "c" / "annotations" / "train.json")
    assert detect_format(voc_fixture(tmp_path / "v", KNIFE))[0] == "voc"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="layout not recognised"):
        detect_format(tmp_path / "empty")
    with pytest.raises(DatasetLayoutError, match="unknown format"):
        read_dataset(tmp_path / "y", "labelme")


# --- Sample, ClassMap -----------------------------------------------------------------------------------


def sample(classes=("Straight_Knife", "Scissor", "Folding_Knife"), labels=None) -> Sample:
    boxes = np.arange(len(classes) * 4, dtype=np.float32).reshape(-1, 4)
    boxes[:, 2:] += 10
    return Sample(
        image_path=Path("/data/x.jpg"),
        width=100,
        height=50,
        boxes_xyxy=boxes,
        class_names=classes,
        source="opixray",
        masks=tuple(f"m{i}" for i in range(len(classes))),
        image_level_labels=labels,
    )


def test_sample_is_frozen_and_consistent():
    s = sample()
    assert s.boxes_xyxy.dtype == np.float32 and s.boxes_xyxy.shape == (3, 4)
    with pytest.raises(ValueError):
        s.boxes_xyxy[0, 0] = 5  # read-only array
    with pytest.raises(ValueError, match="2 boxes but 1 class names"):
        Sample(image_path=Path("a.jpg"), width=1, height=1, boxes_xyxy=np.zeros((2, 4)), class_names=("a",), source="t")


def test_classmap_maps_drops_and_keeps_masks_aligned():
    cmap = ClassMap(("knife", "scissors"), {"Straight_Knife": "knife", "Folding_Knife": "knife", "Scissor": None})
    out = cmap.apply(sample())
    assert out.class_names == ("knife", "knife")
    np.testing.assert_array_equal(out.boxes_xyxy, sample().boxes_xyxy[[0, 2]])
    assert out.masks == ("m0", "m2")


def test_classmap_unmapped_class_names_class_and_sample():
    cmap = ClassMap(("knife",), {"Straight_Knife": "knife"})
    with pytest.raises(ClassMapError, match=r"'Scissor' in /data/x\.jpg is not in the class map"):
        cmap.apply(sample())
    lenient = ClassMap(("knife",), {"Straight_Knife": "knife"}, drop_unmapped=True)
    assert lenient.apply(sample()).class_names == ("knife",)


def test_classmap_maps_image_level_labels_with_or():
    cmap = ClassMap(
        ("knife",),
        {
            "Gun": None,
            "Knife": "knife",
            "Straight_Knife": "knife",
            "Scissor": None,
            "Folding_Knife": "knife",
            "Blade": "knife",
        },
    )
    out = cmap.apply(sample(labels={"Gun": True, "Knife": False, "Blade": True}))
    assert dict(out.image_level_labels) == {"knife": True}


def test_classmap_from_yaml_validates(tmp_path):
    good = text(tmp_path / "m.yaml", "target_classes: [knife]\nmapping:\n  Scissor: null\n  Straight_Knife: knife\n")
    cmap = ClassMap.from_yaml(good)
    assert cmap.mapping == {"Scissor": None, "Straight_Knife": "knife"}
    with pytest.raises(ClassMapError, match=r"bad\.yaml: unknown keys \['maping'\]"):
        ClassMap.from_yaml(text(tmp_path / "bad.yaml", "target_classes: [knife]\nmaping: {}\n"))
    with pytest.raises(ClassMapError, match="'gun', which is not in target_classes"):
        ClassMap.from_dict({"target_classes": ["knife"], "mapping": {"Gun": "gun"}})


def test_classmap_apply_dataset_checks_all_classes_first(tmp_path):
    read = read_dataset(lines_fixture(tmp_path, "x.jpg Scissor 1 2 30 40\nx.jpg Straight_Knife 1 2 30 40\n"))
    with pytest.raises(ClassMapError, match=r"\['Straight_Knife', 'Scissor'\] of opixray"):
        ClassMap(("knife",), {}).apply_dataset(read)
    mapped = ClassMap(("knife",), {"Scissor": None, "Straight_Knife": "knife"}).apply_dataset(read)
    assert mapped.classes == ("knife",) and mapped.samples[0].class_names == ("knife",)


# --- writers --------------------------------------------------------------------------------------------


def test_coco_writer_round_trip_and_format(tmp_path):
    read = read_dataset(coco_fixture(tmp_path / "src"))
    summary = write_coco(read.samples, read.classes, tmp_path / "out.json", image_root=tmp_path / "src")
    doc = json.loads((tmp_path / "out.json").read_text())
    assert [c["id"] for c in doc["categories"]] == list(range(1, 13))
    assert doc["images"][0]["file_name"] == "images/a.png"
    ann = doc["annotations"][1]
    assert ann["bbox"] == [0.5, 1.5, 2.25, 3.0] and ann["area"] == 6.75 and ann["iscrowd"] == 0
    assert ann["category_id"] == 6 and "segmentation" in doc["annotations"][0]
    back = read_dataset(tmp_path / "out.json")
    assert back.problems == () and summary.boxes == 2
    for s0, s1 in zip(read.samples, back.samples, strict=True):
        assert s1.image_path == s0.image_path and s1.class_names == s0.class_names and s1.masks == s0.masks
        np.testing.assert_allclose(s1.boxes_xyxy, s0.boxes_xyxy, atol=1e-3)


def test_coco_writer_refuses_image_outside_root_and_unknown_class(tmp_path):
    read = read_dataset(coco_fixture(tmp_path / "src"))
    with pytest.raises(ValueError, match="not under the image root"):
        write_coco(read.samples, read.classes, tmp_path / "o.json", image_root=tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="class 'Cans' is not in the class list"):
        write_coco(read.samples, ("blade",), tmp_path / "o.json")


def test_yolo_writer_round_trip_links_images_and_clips(tmp_path):
    root = lines_fixture(tmp_path / "src", "x.jpg Scissor 10.2 5.7 30.4 40.1\nx.jpg Scissor 90 10 130 30\n")
    read = read_dataset(root)
    summary = write_yolo(read.samples, read.classes, tmp_path / "yolo")
    assert (summary.boxes, summary.clipped_boxes, summary.dropped_boxes) == (2, 1, 0)
    linked = tmp_path / "yolo" / "images" / "x.jpg"
    assert linked.is_symlink() and linked.resolve() == (root / "images" / "x.jpg").resolve()
    assert (tmp_path / "yolo" / "classes.txt").read_text().splitlines() == list(KNOWN_CLASSES["lines"]["opixray"])
    back = read_dataset(tmp_path / "yolo")
    assert back.classes == read.classes and back.problems == ()
    np.testing.assert_allclose(back.samples[0].boxes_xyxy, [[10.2, 5.7, 30.4, 40.1], [90, 10, 100, 30]], atol=0.5)


def test_inspect_reports_counts_and_header_problems(tmp_path):
    doc = coco_doc()
    doc["images"][1]["width"] = 81  # the image is 80 wide
    read = read_dataset(coco_fixture(tmp_path, doc))
    report = inspect_dataset(read)
    assert (report.images, report.images_with_boxes, report.boxes) == (2, 1, 2)
    assert report.boxes_per_class["blade"] == 1 and report.boxes_per_class["Tin"] == 0
    assert report.width_range_px == (81, 100) and report.height_range_px == (50, 60)
    assert [p.kind for p in report.problems] == ["size_mismatch"]
    assert report.to_dict()["problems_per_kind"] == {"size_mismatch": 1}


def test_yolo_split_folders_roboflow_style(tmp_path):
    for split in ("train", "valid"):
        image(tmp_path / split / "images" / f"{split}.jpg", 40, 20)
        text(tmp_path / split / "labels" / f"{split}.txt", "1 0.5 0.5 0.5 0.5\n")
    text(tmp_path / "data.yaml", "names: [knife, gun]\n")
    read = read_dataset(tmp_path)
    assert [s.image_path.name for s in read.samples] == ["train.jpg", "valid.jpg"]
    np.testing.assert_allclose(read.samples[1].boxes_xyxy, [[10, 5, 30, 15]])
    (tmp_path / "empty").mkdir()
    text(tmp_path / "empty" / "classes.txt", "knife\n")
    with pytest.raises(DatasetLayoutError, match="no images found"):
        read_dataset(tmp_path / "empty")
