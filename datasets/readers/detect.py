"""Recognising a dataset's native layout from its folder or file (`--format auto`).

Checks, in order (the first that fits wins):
1. a `.json` file → coco; a `.txt` file whose first line is `<image> <Class> x1 y1 x2 y2` → lines;
2. `Annotations/*.xml` → voc (SIXray);
3. `Bxxxx/ground_truth.txt` (or the folder is a series `Bxxxx` with one) → gdxray;
4. `data.yaml`, `classes.txt` or `obj.names`, or a `labels/` folder of `<int> cx cy w h` lines → yolo;
5. an `annotations`/`txt`/`*_annotation` folder of `<image> <Class> x1 y1 x2 y2` lines → lines;
6. exactly one `.json` in the folder or its `annotations/` → coco (several: the caller must pick one).
"""

from __future__ import annotations

import re
from pathlib import Path

from datasets.readers.gdxray import GROUND_TRUTH, series_dirs
from datasets.readers.lines import annotation_dirs
from datasets.sample import DatasetLayoutError

#: The native layouts; `read_dataset` also takes dataset names as aliases (see `datasets.readers.FORMATS`).
LAYOUTS = ("coco", "voc", "lines", "yolo", "gdxray")

# Deliberately loose: the row only has to look like its layout's, so that a malformed row further on is
# reported by the reader with its line rather than as "layout not recognised".
_LINES_ROW = re.compile(r"^\S+\.(?:jpe?g|png|tiff?|bmp)\s+\S+", re.IGNORECASE)
_YOLO_ROW = re.compile(r"^\d+\s+\S+")
_YOLO_CLASS_FILES = ("data.yaml", "dataset.yaml", "classes.txt", "obj.names")


def _first_row(txt: Path) -> str | None:
    try:
        with txt.open(encoding="utf-8-sig", errors="replace") as fh:
            for raw in fh:
                if raw.strip():
                    return raw.strip()
    except OSError:
        return None
    return None


def _first_row_in(files: list[Path], limit: int = 20) -> str | None:
    """The first non-empty line among the first `limit` files (label files of negatives are empty)."""
    for txt in files[:limit]:
        row = _first_row(txt)
        if row is not None:
            return row
    return None


def coco_json_in(folder: Path) -> Path:
    """The one COCO JSON in `folder` or `folder/annotations`; `DatasetLayoutError` for none or several."""
    found = sorted(folder.glob("*.json")) + sorted((folder / "annotations").glob("*.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetLayoutError(f"{folder}: no COCO .json found here or in annotations/")
    # Sets written by `xscreen synth` and `xscreen tip` keep side files (synth_config.json, tip.json) beside
    # their COCO file, which they always name annotations.json.
    named = [p for p in found if p.name == "annotations.json"]
    if len(named) == 1:
        return named[0]
    listed = ", ".join(str(p) for p in found)
    raise DatasetLayoutError(f"{folder}: several .json files ({listed}); give the one to read as PATH")


def detect_format(path: Path) -> tuple[str, Path]:
    """(layout, the file or folder to read) for `path`; `DatasetLayoutError` saying what was looked for
    when nothing fits."""
    path = Path(path)
    if not path.exists():
        raise DatasetLayoutError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "coco", path
        if path.suffix.lower() == ".txt" and _LINES_ROW.match(_first_row(path) or ""):
            return "lines", path
        raise DatasetLayoutError(f"{path}: a file must be a COCO .json or a '<image> <Class> x1 y1 x2 y2' .txt")
    if any((path / "Annotations").glob("*.xml")):
        return "voc", path
    if any((s / GROUND_TRUTH).is_file() for s in series_dirs(path)):
        return "gdxray", path
    if any((path / name).is_file() for name in _YOLO_CLASS_FILES):
        return "yolo", path
    if (path / "labels").is_dir() and _YOLO_ROW.match(_first_row_in(sorted((path / "labels").rglob("*.txt"))) or ""):
        return "yolo", path
    dirs = annotation_dirs(path)
    if dirs:
        row = _first_row_in([t for d in dirs for t in sorted(d.glob("*.txt"))])
        if row is None or _LINES_ROW.match(row):
            return "lines", path
    try:
        return "coco", coco_json_in(path)
    except DatasetLayoutError as exc:
        if "several" in str(exc):
            raise
    raise DatasetLayoutError(
        f"{path}: layout not recognised; looked for Annotations/*.xml (voc), Bxxxx/{GROUND_TRUTH} (gdxray), "
        "data.yaml/classes.txt or labels/ (yolo), annotations|txt|*_annotation folders of "
        "'<image> <Class> x1 y1 x2 y2' lines (lines), a .json here or in annotations/ (coco). "
        f"Give --format one of {', '.join(LAYOUTS)}"
    )
