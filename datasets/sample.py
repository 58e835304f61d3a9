"""One labelled scan (`Sample`), one read dataset (`DatasetRead`), and how readers report trouble.

Every reader in `datasets.readers` turns its native layout into these types, so the trainer, the
converters and `xscreen data inspect` see one shape of data whatever the source.

Coordinates: `boxes_xyxy` are continuous 0-based pixel coordinates, (x1, y1) the top-left corner and
(x2, y2) the bottom-right corner of the box, so a box covering the whole image is (0, 0, width, height)
and its width is x2 - x1. Readers of 1-based formats (VOC, GDXray) convert into this.

Two kinds of trouble, deliberately different:
- `AnnotationError` (raised): the annotation file cannot be parsed (truncated JSON, a line with the wrong
  number of fields, a non-numeric coordinate). Nothing sensible can be returned, so the reader stops and
  names the file and the line or record.
- `Problem` (collected in `DatasetRead.problems`): the file parses but the data is doubtful (missing image,
  box outside the image, zero-area box, unknown class, ...). Real datasets have a few of these, and a
  training run or an inspection should see all of them at once rather than die on the first.
  `DatasetRead.raise_for_problems()` turns them into an error where strictness is wanted.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

#: What can be doubtful about a parsed dataset. Each kind is named in `Problem.kind`.
ProblemKind = Literal[
    "missing_image",  # the annotation names an image file that does not exist
    "unreadable_image",  # the image exists but its header cannot be read
    "size_mismatch",  # the annotation's width/height differ from the image header's
    "box_outside_image",  # a box reaches beyond 0..width or 0..height
    "zero_area_box",  # x2 <= x1 or y2 <= y1 (empty or inverted)
    "unknown_class",  # a class id/name not in the dataset's class list; the box is dropped
    "unknown_image",  # a COCO annotation whose image_id is not among the images; dropped
    "no_annotation",  # an image with no annotation file where the layout requires one; dropped
    "label_mismatch",  # image-level labels disagree with the boxes (SIXray positives without boxes)
    "unsupported_layout",  # a part of the dataset in a variant this reader does not read; skipped
    "duplicate_image",  # one image listed twice (a merged COCO export); read as one scan with all its boxes
]


class AnnotationError(ValueError):
    """An annotation file that cannot be parsed. The message starts with the file and the line
    (`path:12: ...`) or the record (`path [annotations[3]]: ...`) at fault."""

    def __init__(self, path: Path | str, message: str, *, line: int | None = None, record: str | None = None):
        self.path = Path(path)
        self.line = line
        self.record = record
        self.detail = message
        super().__init__(f"{_where(self.path, line, record)}: {message}")


class DatasetLayoutError(ValueError):
    """A folder or file that is not in a layout the readers know (or is ambiguous); the message says
    what was looked for."""


class DatasetProblemsError(AnnotationError):
    """Raised by `DatasetRead.raise_for_problems()`: the first problem, with the count of all of them."""


def _where(path: Path, line: int | None, record: str | None) -> str:
    if line is not None:
        return f"{path}:{line}"
    if record is not None:
        return f"{path} [{record}]"
    return str(path)


@dataclass(frozen=True)
class Problem:
    """A non-fatal issue found while reading. `file` and `line`/`record` say where it is."""

    kind: ProblemKind
    file: Path
    message: str
    line: int | None = None
    record: str | None = None

    @property
    def where(self) -> str:
        return _where(self.file, self.line, self.record)

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "message": self.message}


@dataclass(frozen=True, eq=False)
class Sample:
    """One scan and its boxes.

    Attributes:
        image_path: the image file (it may be missing; see `DatasetRead.problems`).
        width, height: image size in pixels.
        boxes_xyxy: float32 array N×4, continuous 0-based pixel corners (x1, y1, x2, y2). Read-only.
        class_names: N class names, one per box, in the dataset's own taxonomy.
        source: the dataset's name ("sixray", "opixray", "pidray", ... or the format name).
        masks: None, or N raw segmentations as the file gave them (COCO polygon lists or RLE dicts, YOLO-seg
            polygons in pixels as [[x, y, x, y, ...]]), None for a box without one. Never rasterised here.
        image_level_labels: None, or {class name: present} from an image-level label file (SIXray csv).
    """

    image_path: Path
    width: int
    height: int
    boxes_xyxy: np.ndarray
    class_names: tuple[str, ...]
    source: str
    masks: tuple[Any, ...] | None = None
    image_level_labels: Mapping[str, bool] | None = field(default=None)

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes_xyxy, dtype=np.float32).reshape(-1, 4).copy()
        boxes.setflags(write=False)  # frozen means frozen: no one edits a shared sample's boxes in place
        object.__setattr__(self, "boxes_xyxy", boxes)
        object.__setattr__(self, "image_path", Path(self.image_path))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if len(self.class_names) != boxes.shape[0]:
            raise ValueError(f"{self.image_path}: {boxes.shape[0]} boxes but {len(self.class_names)} class names")
        if self.masks is not None:
            object.__setattr__(self, "masks", tuple(self.masks))
            if len(self.masks) != boxes.shape[0]:
                raise ValueError(f"{self.image_path}: {boxes.shape[0]} boxes but {len(self.masks)} masks")
        if self.image_level_labels is not None:
            frozen = types.MappingProxyType({str(k): bool(v) for k, v in self.image_level_labels.items()})
            object.__setattr__(self, "image_level_labels", frozen)
        if int(self.width) < 0 or int(self.height) < 0:
            raise ValueError(f"{self.image_path}: negative image size {self.width}×{self.height}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @property
    def num_boxes(self) -> int:
        return int(self.boxes_xyxy.shape[0])

    @property
    def unboxed_labels(self) -> tuple[str, ...]:
        """Classes the image-level labels say are in the scan but no box marks (some SIXray positives have
        no boxes at all). Such a scan is no detection sample: its unmarked objects would be learned, and
        scored, as background; writers and training leave it out."""
        if not self.image_level_labels:
            return ()
        return tuple(c for c, present in self.image_level_labels.items() if present and c not in self.class_names)


@dataclass(frozen=True)
class DatasetRead:
    """What a reader returns.

    Attributes:
        samples: one `Sample` per image, in a stable order (sorted by image path unless the file orders them).
        classes: the dataset's class list in its canonical order (index = class id for writers).
        problems: non-fatal issues, each naming its file and line or record.
        format: the layout that was read ("coco", "voc", "lines", "yolo", "gdxray").
        source: the dataset's name when recognised ("pidray", "opixray", ...), else the format name.
        path: the file or folder that was read.
    """

    samples: tuple[Sample, ...]
    classes: tuple[str, ...]
    problems: tuple[Problem, ...]
    format: str
    source: str
    path: Path

    def raise_for_problems(self) -> None:
        """Raise `DatasetProblemsError` for the first problem (the message gives the total count)."""
        if not self.problems:
            return
        first = self.problems[0]
        more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
        raise DatasetProblemsError(
            first.file, f"{first.kind}: {first.message}{more}", line=first.line, record=first.record
        )


def read_annotation_text(path: Path) -> str:
    """The text of an annotation file, or `AnnotationError` naming the file and the line of the first byte
    that is not UTF-8. A leading byte-order mark (Windows editors, Excel's "CSV UTF-8") is dropped."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AnnotationError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})", line=line) from None


def parse_number(
    token: str, path: Path, *, line: int | None = None, record: str | None = None, what: str = "value"
) -> float:
    """A finite float from an annotation token, or `AnnotationError` naming the file and line/record.

    Python's float() accepts "nan" and "inf"; a coordinate never legitimately is one, so they are refused.
    """
    try:
        value = float(token)
    except (TypeError, ValueError):
        raise AnnotationError(path, f"{what} {token!r} is not a number", line=line, record=record) from None
    if not np.isfinite(value):
        raise AnnotationError(path, f"{what} {token!r} is not a finite number", line=line, record=record)
    return value


def box_problems(
    boxes_xyxy: np.ndarray,
    width: int,
    height: int,
    file: Path,
    *,
    lines: Sequence[int | None] | None = None,
    records: Sequence[str | None] | None = None,
) -> list[Problem]:
    """Problems of boxes (N×4 xyxy pixels) against an image of `width`×`height`: zero-area or inverted
    boxes, and boxes reaching outside the image. `lines`/`records` (N entries) locate each box."""
    out: list[Problem] = []
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    for i, (x1, y1, x2, y2) in enumerate(b):
        line = lines[i] if lines is not None else None
        record = records[i] if records is not None else None
        if x2 <= x1 or y2 <= y1:
            out.append(
                Problem(
                    "zero_area_box",
                    file,
                    f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has zero or negative area",
                    line=line,
                    record=record,
                )
            )
        # Only checked where the size is known: a sample of a missing image may have width = height = 0.
        if width > 0 and height > 0 and (x1 < 0 or y1 < 0 or x2 > width or y2 > height):
            out.append(
                Problem(
                    "box_outside_image",
                    file,
                    f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) reaches outside the {width}×{height} image",
                    line=line,
                    record=record,
                )
            )
    return out
