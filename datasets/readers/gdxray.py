"""GDXray Baggages: per series folder `Bxxxx/`, images `Bxxxx_yyyy.png` (yyyy: the 4-digit image index)
and `Bxxxx/ground_truth.txt` with whitespace-separated rows `i x1 x2 y1 y2` (image index, x range, y range;
1-based pixels).

Corners: shifted by -1 on all four to 0-based, the same reading the SIXray VOC files are checked to need
against ../shared/xray-real/manifest.csv (no GDXray image with independent box truth is at hand to check
this one; the difference from an inclusive x2/y2 reading is one pixel of width).

Classes: the file holds none; the class of a box is its series' class, from `series_classes`
({"B0046": "handgun", ...}), else the series name itself, so that a `ClassMap` can map series to classes.
Series without a ground_truth.txt, and series whose rows are not 5 columns (some use quadrilaterals), are
reported and skipped: an unlabelled series says nothing about what its images hold.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from datasets.readers.images import header_size
from datasets.sample import (
    AnnotationError,
    DatasetLayoutError,
    DatasetRead,
    Problem,
    Sample,
    box_problems,
    parse_number,
    read_annotation_text,
)

GDXRAY_CORNER_SHIFT_PX = 1.0
SERIES_NAME = re.compile(r"^B\d{4}$")
GROUND_TRUTH = "ground_truth.txt"


def series_dirs(root: Path) -> list[Path]:
    """The series folders: `root` itself when it is one, else its `Bxxxx` subfolders, sorted."""
    if SERIES_NAME.match(root.name) and root.is_dir():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and SERIES_NAME.match(p.name)) if root.is_dir() else []


def parse_ground_truth(path: Path) -> tuple[list[tuple[int, list[float], int]], int]:
    """Parse a ground_truth.txt: ([(image index, [x1, y1, x2, y2] 0-based px, line)], column count).

    A file whose first row is not 5 columns returns ([], that count) for the caller to skip. Raises
    `AnnotationError` with the line for a row of another width than the first, a non-numeric value or a
    byte that is not UTF-8.
    """
    rows: list[tuple[int, list[float], int]] = []
    width = 0
    for line_no, raw in enumerate(read_annotation_text(path).splitlines(), start=1):
        tokens = raw.split()
        if not tokens:
            continue
        if width == 0:
            width = len(tokens)
            if width != 5:
                return [], width
        if len(tokens) != width:
            raise AnnotationError(path, f"expected 5 columns 'i x1 x2 y1 y2', got {len(tokens)}", line=line_no)
        index = parse_number(tokens[0], path, line=line_no, what="image index")
        if index < 1 or not index.is_integer():
            raise AnnotationError(path, f"image index {tokens[0]!r} is not a positive integer", line=line_no)
        x1, x2, y1, y2 = (
            parse_number(t, path, line=line_no, what=w) - GDXRAY_CORNER_SHIFT_PX
            for t, w in zip(tokens[1:], ("x1", "x2", "y1", "y2"), strict=True)
        )
        rows.append((int(index), [x1, y1, x2, y2], line_no))
    return rows, width


def read_gdxray(
    root: Path, *, source: str | None = None, series_classes: Mapping[str, str] | None = None
) -> DatasetRead:
    """Read GDXray Baggages series (see the module docstring) into samples sorted by image path.

    Every image of an annotated series is a sample (those without rows have no boxes). An index whose image
    file is missing is reported and skipped.
    """
    root = Path(root)
    series = series_dirs(root)
    if not series:
        raise DatasetLayoutError(f"{root}: no GDXray series folders (Bxxxx/ with {GROUND_TRUTH}) found")
    problems: list[Problem] = []
    samples: list[Sample] = []
    classes: list[str] = []
    name = source or "gdxray"
    for folder in series:
        gt = folder / GROUND_TRUTH
        if not gt.is_file():
            problems.append(Problem("no_annotation", folder, f"series has no {GROUND_TRUTH}; skipped"))
            continue
        rows, columns = parse_ground_truth(gt)
        if columns not in (0, 5):
            problems.append(
                Problem(
                    "unsupported_layout",
                    gt,
                    f"rows have {columns} columns, not 'i x1 x2 y1 y2'; series skipped",
                    line=1,
                )
            )
            continue
        cls = (series_classes or {}).get(folder.name, folder.name)
        by_index: dict[int, list[tuple[list[float], int]]] = defaultdict(list)
        for index, box, line in rows:
            by_index[index].append((box, line))
        images = {
            int(m.group(1)): p
            for p in folder.glob(f"{folder.name}_*.png")
            if (m := re.fullmatch(rf"{folder.name}_(\d{{4}})\.png", p.name))
        }
        for index in sorted(set(images) | set(by_index)):
            image = images.get(index, folder / f"{folder.name}_{index:04d}.png")
            entries = by_index.get(index, [])
            first_line = entries[0][1] if entries else None
            size = header_size(image, annotation_file=gt)
            if isinstance(size, Problem):
                problems.append(
                    Problem(size.kind, size.file, size.message + "; image skipped (size unknown)", line=first_line)
                )
                continue
            width, height = size
            boxes = np.array([e[0] for e in entries], dtype=np.float64).reshape(-1, 4)
            problems += box_problems(boxes, width, height, gt, lines=[e[1] for e in entries])
            if entries and cls not in classes:
                classes.append(cls)
            samples.append(
                Sample(
                    image_path=image,
                    width=width,
                    height=height,
                    boxes_xyxy=boxes,
                    class_names=(cls,) * len(entries),
                    source=name,
                )
            )
    return DatasetRead(
        samples=tuple(samples),
        classes=tuple(classes),
        problems=tuple(problems),
        format="gdxray",
        source=name,
        path=root,
    )
