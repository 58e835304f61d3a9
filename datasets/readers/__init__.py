"""Readers of the public X-ray datasets' native layouts into `datasets.sample.Sample`.

    read = read_dataset(Path("../shared/xray-real/sixray"))          # format="auto"
    read.samples, read.classes, read.problems, read.format, read.source

`format` is a layout (coco, voc, lines, yolo, gdxray), `auto`, or a dataset name that fixes the layout and
the published class list (so classes outside it are reported): sixray, opixray, hixray, eds, pidray,
clcxray.
"""

from __future__ import annotations

from pathlib import Path

from datasets.readers.catalog import KNOWN_CLASSES
from datasets.readers.coco import read_coco
from datasets.readers.detect import LAYOUTS, coco_json_in, detect_format
from datasets.readers.gdxray import read_gdxray
from datasets.readers.lines import read_lines
from datasets.readers.voc import read_voc
from datasets.readers.yolo import read_yolo
from datasets.sample import DatasetLayoutError, DatasetRead

#: Dataset names accepted as `format`, with their layout.
DATASET_FORMATS = {name: layout for layout, known in KNOWN_CLASSES.items() for name in known}
FORMATS = ("auto", *LAYOUTS, *DATASET_FORMATS)


def read_dataset(path: Path | str, format: str = "auto", *, image_root: Path | None = None) -> DatasetRead:
    """Read the dataset at `path` (a folder, or a COCO .json / line .txt file).

    `image_root` is used by the coco layout only (where `file_name`s are relative to); by default it is
    found next to the JSON. Raises `DatasetLayoutError` for an unknown format or an unrecognised layout,
    `AnnotationError` for a malformed annotation file. Non-fatal issues are in the result's `problems`.
    """
    path = Path(path)
    if format not in FORMATS:
        raise DatasetLayoutError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if not path.exists():
        raise DatasetLayoutError(f"{path}: no such file or folder")
    source = format if format in DATASET_FORMATS else None
    layout = DATASET_FORMATS.get(format, format)
    if layout == "auto":
        layout, path = detect_format(path)
    # A dataset name fixes the published class list: boxes of other classes are reported and dropped.
    classes = KNOWN_CLASSES[layout][source] if source else None
    if layout == "coco":
        json_path = path if path.is_file() else coco_json_in(path)
        return read_coco(json_path, image_root=image_root, source=source, classes=classes)
    if layout == "voc":
        return read_voc(path, source=source, classes=classes)
    if layout == "lines":
        return read_lines(path, source=source, classes=classes)
    if layout == "yolo":
        return read_yolo(path, source=source)
    return read_gdxray(path, source=source)


__all__ = [
    "FORMATS",
    "detect_format",
    "read_coco",
    "read_dataset",
    "read_gdxray",
    "read_lines",
    "read_voc",
    "read_yolo",
]
