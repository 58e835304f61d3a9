"""Pascal VOC XML with optional image-level CSV labels (SIXray).

Layout: `ROOT/Annotations/<stem>.xml` (one per annotated image), `ROOT/JPEGImages/<stem>.jpg`, and
optionally one or more `ROOT/*.csv` with a header `name,<Class>,<Class>,...` and one row per image of
1 (present) / -1 (absent) (0 is read as absent). SIXray's negatives have no XML: every image in
`JPEGImages` or in a CSV is a sample, with no boxes when it has no XML.

Coordinates: SIXray's `xmin..ymax` are the box corners in 1-based pixel coordinates, rounded. Subtracting 1
from all four corners reproduces the 0-based corners of ../shared/xray-real/manifest.csv within the 0.5 px
of that rounding (checked on all 76 boxes); subtracting 1 from xmin/ymin only, the other common reading
of VOC, is off by up to 1.5 px there. So all four corners are shifted by -1.
"""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from datasets.readers.catalog import recognise
from datasets.readers.images import find_by_stem, header_size, list_images
from datasets.sample import (
    AnnotationError,
    DatasetRead,
    Problem,
    Sample,
    box_problems,
    parse_number,
    read_annotation_text,
)

#: The one-based to zero-based shift applied to every corner (see the module docstring).
VOC_CORNER_SHIFT_PX = 1.0

_IMAGE_DIRS = ("JPEGImages", "images", "Images")


def _image_dir(root: Path) -> Path:
    for name in _IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    return root / "JPEGImages"


def read_labels_csv(path: Path) -> tuple[tuple[str, ...], dict[str, tuple[dict[str, bool], int]]]:
    """Parse an image-level label CSV: (class names from the header, {image stem: ({class: present}, line)}).

    Raises `AnnotationError` with the line for a bad header, a short row, a value other than 1 / 0 / -1 or a
    byte that is not UTF-8.
    """
    rows: dict[str, tuple[dict[str, bool], int]] = {}
    # Read whole (a byte-order mark, as Excel's "CSV UTF-8" writes, is dropped; a non-UTF-8 byte is an
    # AnnotationError with its line), then parsed with newline="" semantics as the csv module wants.
    reader = csv.reader(io.StringIO(read_annotation_text(path), newline=""))
    header = next(reader, None)
    if not header or header[0].strip().lower() != "name" or len(header) < 2:
        raise AnnotationError(path, f"header must be 'name,<Class>,...', got {header!r}", line=1)
    classes = tuple(h.strip() for h in header[1:])
    for row in reader:
        line = reader.line_num
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise AnnotationError(path, f"expected {len(header)} fields, got {len(row)}", line=line)
        labels: dict[str, bool] = {}
        for cls, cell in zip(classes, row[1:], strict=True):
            value = cell.strip()
            if value not in ("1", "-1", "0"):
                raise AnnotationError(path, f"label for {cls} must be 1, 0 or -1, got {value!r}", line=line)
            labels[cls] = value == "1"
        stem = Path(row[0].strip()).stem  # rows name images with or without the extension
        if stem in rows and rows[stem][0] != labels:
            raise AnnotationError(path, f"image {stem} is listed again with other labels (first on line "
                                        f"{rows[stem][1]})", line=line)
        rows.setdefault(stem, (labels, line))
    return classes, rows


def _text(parent: ET.Element, tag: str) -> str | None:
    node = parent.find(tag)
    return None if node is None or node.text is None else node.text.strip()


def read_voc_xml(path: Path) -> tuple[int, int, str | None, list[str], np.ndarray, list[str]]:
    """Parse one VOC XML: (width, height, filename, class names, boxes N×4 xyxy 0-based px, records).

    Width/height are 0 when the file does not give them. Raises `AnnotationError` naming the file and the
    line (XML syntax) or the object (missing or non-numeric coordinate).
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(path, f"invalid XML: {exc}", line=exc.position[0]) from None
    if root.tag != "annotation":
        raise AnnotationError(path, f"root element must be <annotation>, got <{root.tag}>", line=1)
    width = height = 0
    size = root.find("size")
    if size is not None:
        w, h = _text(size, "width"), _text(size, "height")
        if w is not None and h is not None:
            width = int(parse_number(w, path, record="size", what="width"))
            height = int(parse_number(h, path, record="size", what="height"))
    names: list[str] = []
    boxes: list[list[float]] = []
    records: list[str] = []
    for k, obj in enumerate(root.iter("object")):
        name = _text(obj, "name")
        record = f"object[{k}]" + (f" ({name})" if name else "")
        if not name:
            raise AnnotationError(path, "object has no <name>", record=record)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise AnnotationError(path, "object has no <bndbox>", record=record)
        corners = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            value = _text(bndbox, tag)
            if value is None:
                raise AnnotationError(path, f"<bndbox> has no <{tag}>", record=record)
            corners.append(parse_number(value, path, record=record, what=tag) - VOC_CORNER_SHIFT_PX)
        names.append(name)
        boxes.append(corners)
        records.append(record)
    return width, height, _text(root, "filename"), names, np.array(boxes, dtype=np.float64).reshape(-1, 4), records


def read_voc(
    root: Path,
    *,
    source: str | None = None,
    labels_csv: list[Path] | None = None,
    classes: tuple[str, ...] | None = None,
) -> DatasetRead:
    """Read a VOC folder (see the module docstring) into samples sorted by image stem.

    `labels_csv` defaults to every `ROOT/*.csv`. Image-level labels go to `Sample.image_level_labels`; a
    positive label without a box of that class, or a box whose class is labelled absent, is reported as a
    `label_mismatch` problem (SIXray has positives without boxes). `classes` fixes the class list (the
    `sixray` format passes the published one): a box of another class is dropped as `unknown_class`, and so
    is a CSV column of another class (reported once, at the CSV's header).
    """
    root = Path(root)
    ann_dir, img_dir = root / "Annotations", _image_dir(root)
    xmls = {p.stem: p for p in sorted(ann_dir.glob("*.xml"))} if ann_dir.is_dir() else {}
    images = {p.stem: p for p in list_images(img_dir)}
    problems: list[Problem] = []
    csv_classes: list[str] = []
    labels: dict[str, tuple[dict[str, bool], Path, int]] = {}
    for csv_path in labels_csv if labels_csv is not None else sorted(root.glob("*.csv")):
        header, rows = read_labels_csv(csv_path)
        outside = [c for c in header if classes is not None and c not in classes]
        if outside:
            problems.append(
                Problem(
                    "unknown_class",
                    csv_path,
                    f"columns {outside} are not in {list(classes or ())}; their labels dropped",
                    line=1,
                )
            )
            rows = {s: ({c: v for c, v in row.items() if c not in outside}, ln) for s, (row, ln) in rows.items()}
        csv_classes += [c for c in header if c not in csv_classes and c not in outside]
        for stem, (row, line) in rows.items():
            if stem in labels and labels[stem][0] != row:
                raise AnnotationError(csv_path, f"{stem} is labelled differently in {labels[stem][1]}", line=line)
            labels[stem] = (row, csv_path, line)

    parsed: dict[str, tuple[int, int, str | None, list[str], np.ndarray, list[str]]] = {
        s: read_voc_xml(p) for s, p in xmls.items()
    }
    seen = set(csv_classes) | {n for v in parsed.values() for n in v[3]}
    known = recognise("voc", seen)
    name = source or (known[0] if known else "voc")
    # A recognised dataset gives its full published list (stable indices); otherwise the CSV's order, then the rest.
    if classes is not None:
        classes_out = tuple(classes)
    else:
        classes_out = known[1] if known else tuple(csv_classes) + tuple(sorted(seen - set(csv_classes)))

    samples: list[Sample] = []
    for stem in sorted(set(xmls) | set(images) | set(labels)):
        image_path = images.get(stem) or find_by_stem(img_dir, stem)
        row = labels.get(stem)
        if stem in parsed:
            width, height, filename, names, boxes, records = parsed[stem]
            where: Path = xmls[stem]
            if classes is not None and any(n not in classes for n in names):
                keep = [n in classes for n in names]
                problems += [
                    Problem("unknown_class", where, f"class {n!r} is not in {list(classes)}; box dropped", record=r)
                    for n, r, k in zip(names, records, keep, strict=True)
                    if not k
                ]
                names = [n for n, k in zip(names, keep, strict=True) if k]
                records = [r for r, k in zip(records, keep, strict=True) if k]
                boxes = boxes[np.array(keep, dtype=bool)]
            if image_path is None:
                image_path = img_dir / (filename or f"{stem}.jpg")
        else:
            names, boxes, records = [], np.zeros((0, 4)), []
            width = height = 0
            where = row[1] if row else img_dir
            if image_path is None:  # listed in a CSV only
                problems.append(
                    Problem(
                        "missing_image",
                        where,
                        f"image {stem} is labelled but not in {img_dir}; skipped",
                        line=row[2] if row else None,
                    )
                )
                continue
        if width <= 0 or height <= 0:
            size = header_size(image_path, annotation_file=where)
            if isinstance(size, Problem):
                problems.append(
                    Problem(
                        size.kind,
                        size.file,
                        size.message + "; image skipped (size unknown)",
                        line=row[2] if row and stem not in parsed else None,
                    )
                )
                continue
            width, height = size
        elif not image_path.is_file():
            problems.append(Problem("missing_image", where, f"image {image_path} does not exist"))
        problems += box_problems(boxes, width, height, where, records=records)
        if row is not None:
            problems += _label_mismatches(row[0], names, stem, row[1], row[2])
        samples.append(
            Sample(
                image_path=image_path,
                width=width,
                height=height,
                boxes_xyxy=boxes,
                class_names=tuple(names),
                source=name,
                image_level_labels=row[0] if row else None,
            )
        )
    return DatasetRead(
        samples=tuple(samples), classes=classes_out, problems=tuple(problems), format="voc", source=name, path=root
    )


def _label_mismatches(
    labels: dict[str, bool], box_classes: list[str], stem: str, csv_path: Path, line: int
) -> list[Problem]:
    out = []
    present = set(box_classes)
    for cls, positive in labels.items():
        if positive and cls not in present:
            out.append(Problem("label_mismatch", csv_path, f"{stem} is labelled {cls} but has no {cls} box", line=line))
        if not positive and cls in present:
            out.append(
                Problem("label_mismatch", csv_path, f"{stem} has a {cls} box but is labelled without {cls}", line=line)
            )
    return out
