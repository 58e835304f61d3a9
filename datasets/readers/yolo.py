"""YOLO txt labels: one `<class index> cx cy w h` line per box, normalised to the image size (0..1).

Layout: `ROOT/images/**/<name>.<ext>` with `ROOT/labels/**/<name>.txt` mirroring it (ultralytics), the same
per split as `ROOT/<split>/images` + `ROOT/<split>/labels` (Roboflow exports), or images and txt side by
side in ROOT (darknet). Class names come from `ROOT/data.yaml` (`names:` as a list or an
{index: name} map), else `ROOT/classes.txt` or `ROOT/obj.names` (one name a line). An image without a label
file is a background image with no boxes (the YOLO convention). A segmentation line
(`<class> x1 y1 x2 y2 x3 y3 ...`, normalised polygon) gives the polygon's extent as the box and the polygon,
in pixels, as the mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from datasets.readers.catalog import recognise_any
from datasets.readers.images import header_size, is_image_file
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
from vision.boxes import cxcywh_to_xyxy

_CLASS_FILES = ("classes.txt", "obj.names")


def read_class_names(root: Path) -> tuple[tuple[str, ...], Path] | None:
    """(class names by index, the file they came from) from data.yaml / classes.txt / obj.names, or None."""
    for name in ("data.yaml", "dataset.yaml"):
        yaml_path = root / name
        if yaml_path.is_file():
            try:
                doc: Any = yaml.safe_load(read_annotation_text(yaml_path))
            except yaml.YAMLError as exc:
                line = exc.problem_mark.line + 1 if getattr(exc, "problem_mark", None) else None
                raise AnnotationError(yaml_path, f"invalid YAML: {exc}", line=line) from None
            names = doc.get("names") if isinstance(doc, dict) else None
            if isinstance(names, dict):
                if sorted(names) != list(range(len(names))):
                    raise AnnotationError(
                        yaml_path, f"'names' keys must be 0..{len(names) - 1}, got {sorted(names)}", record="names"
                    )
                return tuple(str(names[i]) for i in range(len(names))), yaml_path
            if isinstance(names, list):
                return tuple(str(n) for n in names), yaml_path
            raise AnnotationError(
                yaml_path, f"'names' must be a list or an index->name map, got {names!r}", record="names"
            )
    for name in _CLASS_FILES:
        txt = root / name
        if txt.is_file():
            return tuple(line.strip() for line in read_annotation_text(txt).splitlines() if line.strip()), txt
    return None


def _recorded_source(root: Path) -> str | None:
    """The dataset name `datasets.writers.write_yolo` records in data.yaml (`source:`), if any."""
    path = root / "data.yaml"
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(read_annotation_text(path))
    except yaml.YAMLError:
        return None  # (read_class_names reports it)
    value = doc.get("source") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and value else None


def parse_label_file(path: Path) -> list[tuple[int, list[float], list[float] | None, int]]:
    """Parse one label txt: [(class index, [cx, cy, w, h] normalised, polygon normalised or None, line)].

    Raises `AnnotationError` with the line for a wrong field count, a non-numeric value, a class index
    that is not a non-negative integer, or a byte that is not UTF-8.
    """
    out = []
    for line_no, raw in enumerate(read_annotation_text(path).splitlines(), start=1):
        tokens = raw.split()
        if not tokens:
            continue
        if len(tokens) != 5 and (len(tokens) < 7 or len(tokens) % 2 == 0):
            raise AnnotationError(
                path, f"expected '<class> cx cy w h' (5 fields) or a polygon, got {len(tokens)} fields", line=line_no
            )
        cls = parse_number(tokens[0], path, line=line_no, what="class index")
        if cls < 0 or not cls.is_integer():
            raise AnnotationError(path, f"class index {tokens[0]!r} is not a non-negative integer", line=line_no)
        values = [parse_number(t, path, line=line_no, what="coordinate") for t in tokens[1:]]
        if len(values) == 4:
            out.append((int(cls), values, None, line_no))
        else:
            xs, ys = values[0::2], values[1::2]
            x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
            out.append((int(cls), [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], values, line_no))
    return out


def _image_roots(root: Path) -> list[Path]:
    """`ROOT/images`, else the `ROOT/<split>/images` folders (Roboflow-style exports), else [] (flat)."""
    if (root / "images").is_dir():
        return [root / "images"]
    return sorted(p for p in root.glob("*/images") if p.is_dir())


def _image_label_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, label txt) pairs; the label path may not exist (a background image)."""
    image_roots = _image_roots(root)
    if not image_roots:
        images = sorted(p for p in root.iterdir() if p.is_file() and is_image_file(p))
        return [(img, img.with_suffix(".txt")) for img in images]
    pairs = []
    for images_dir in image_roots:
        labels_dir = images_dir.parent / "labels"
        images = sorted(p for p in images_dir.rglob("*") if p.is_file() and is_image_file(p))
        pairs += [(img, (labels_dir / img.relative_to(images_dir)).with_suffix(".txt")) for img in images]
    return pairs


def _label_files(root: Path) -> list[Path]:
    image_roots = _image_roots(root)
    if not image_roots:
        return sorted(p for p in root.glob("*.txt") if p.name not in _CLASS_FILES)
    return sorted(p for d in image_roots for p in (d.parent / "labels").rglob("*.txt"))


def read_yolo(root: Path, *, source: str | None = None, classes: tuple[str, ...] | None = None) -> DatasetRead:
    """Read a YOLO folder into samples sorted by image path (see the module docstring).

    Raises `DatasetLayoutError` when no class list is found and none is given, `AnnotationError` for a
    malformed label line. A class index beyond the class list is reported (`unknown_class`) and the box
    dropped; a label file whose image is missing is reported and skipped.
    """
    root = Path(root)
    if classes is None:
        found = read_class_names(root)
        if found is None:
            raise DatasetLayoutError(
                f"{root}: YOLO labels need a class list: data.yaml ('names:'), classes.txt or obj.names"
            )
        classes = found[0]
    name = source or _recorded_source(root) or recognise_any(classes) or "yolo"
    pairs = _image_label_pairs(root)
    if not pairs:
        raise DatasetLayoutError(f"{root}: no images found in images/, */images/ or the folder itself")
    problems: list[Problem] = []
    labelled = {label for _, label in pairs}
    for label in _label_files(root):
        if label not in labelled:
            problems.append(Problem("missing_image", label, "label file has no image of the same name; skipped"))

    samples: list[Sample] = []
    for image, label in pairs:
        rows = parse_label_file(label) if label.is_file() else []
        size = header_size(image, annotation_file=label if label.is_file() else image)
        if isinstance(size, Problem):
            problems.append(Problem(size.kind, size.file, size.message + "; image skipped (size unknown)"))
            continue
        width, height = size
        kept = []
        for cls, cxcywh, polygon, line in rows:
            if cls >= len(classes):
                problems.append(
                    Problem(
                        "unknown_class",
                        label,
                        f"class index {cls} is beyond the {len(classes)} classes {list(classes)}; box dropped",
                        line=line,
                    )
                )
                continue
            kept.append((cls, cxcywh, polygon, line))
        scale = np.array([width, height, width, height], dtype=np.float64)
        boxes = cxcywh_to_xyxy(np.array([k[1] for k in kept], dtype=np.float64).reshape(-1, 4)) * scale
        masks = None
        if any(k[2] is not None for k in kept):
            masks = tuple(
                [[v * (width if i % 2 == 0 else height) for i, v in enumerate(k[2])]] if k[2] is not None else None
                for k in kept
            )
        problems += box_problems(boxes, width, height, label, lines=[k[3] for k in kept])
        samples.append(
            Sample(
                image_path=image,
                width=width,
                height=height,
                boxes_xyxy=boxes,
                class_names=tuple(classes[k[0]] for k in kept),
                source=name,
                masks=masks,
            )
        )
    return DatasetRead(
        samples=tuple(samples), classes=tuple(classes), problems=tuple(problems), format="yolo", source=name, path=root
    )
