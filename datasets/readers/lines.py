"""The line layout of OPIXray, HiXray and EDS: one txt per image, one line per object,
`<image file> <Class> x1 y1 x2 y2` (pixels, whitespace-separated).

The corners are used as they are: the OPIXray files give exactly the 0-based corners of
../shared/xray-real/manifest.csv.

Folders: annotation txt files live in a folder named `annotations`, `annotation`, `txt` or `*_annotation(s)`
(OPIXray's `train/train_annotation`, EDS's `domain1/txt`), anywhere under the given root; their images in a
sibling `images`, `image`, `JPEGImages` or `*_image(s)` folder. An empty txt is an image with no objects.
An image with no txt is reported (`no_annotation`) and skipped: in this layout a missing file is a gap in the
labels, not evidence that the bag is clear.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from datasets.readers.catalog import recognise
from datasets.readers.images import find_by_stem, header_size, list_images
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

_ANNOTATION_DIR = re.compile(r"^(annotations?|txt|.*_annotations?)$", re.IGNORECASE)
_IMAGE_DIR_NAMES = ("images", "image", "JPEGImages")
_FIELDS = 6  # image, class, x1, y1, x2, y2


def is_annotation_dir_name(name: str) -> bool:
    return bool(_ANNOTATION_DIR.match(name))


def annotation_dirs(root: Path) -> list[Path]:
    """Folders under `root` (itself included) that hold line-annotation txt files, sorted."""
    found = [root] if is_annotation_dir_name(root.name) else []
    found += sorted(p for p in root.rglob("*") if p.is_dir() and is_annotation_dir_name(p.name))
    return [d for d in found if any(d.glob("*.txt"))]


def image_dir_for(ann_dir: Path) -> Path:
    """The image folder that goes with an annotation folder (the annotation folder itself if none)."""
    parent = ann_dir.parent
    names = list(_IMAGE_DIR_NAMES)
    prefix = re.sub(r"_annotations?$", "", ann_dir.name, flags=re.IGNORECASE)
    if prefix != ann_dir.name:
        names = [f"{prefix}_image", f"{prefix}_images", *names]
    for name in names:
        if (parent / name).is_dir():
            return parent / name
    return ann_dir


def parse_lines_file(path: Path) -> list[tuple[str, str, list[float], int]]:
    """Parse one txt: [(image file name, class, [x1, y1, x2, y2], line number)].

    Raises `AnnotationError` with the line number for a line without 6 fields or a non-numeric corner.
    """
    text = read_annotation_text(path)  # (a few files carry a byte-order mark)
    out = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split()
        if not tokens:
            continue
        if len(tokens) != _FIELDS:
            raise AnnotationError(
                path,
                f"expected '<image> <Class> x1 y1 x2 y2' (6 fields), got {len(tokens)}: {raw.strip()!r}",
                line=line_no,
            )
        corners = [
            parse_number(t, path, line=line_no, what=w)
            for t, w in zip(tokens[2:], ("x1", "y1", "x2", "y2"), strict=True)
        ]
        out.append((tokens[0], tokens[1], corners, line_no))
    return out


def read_lines(path: Path, *, source: str | None = None, classes: tuple[str, ...] | None = None) -> DatasetRead:
    """Read an OPIXray/HiXray/EDS-style folder (or one txt file) into samples sorted by image path.

    `classes` fixes the class list (the `opixray`/`hixray`/`eds` formats pass the published one); a box of
    another class is then dropped as `unknown_class`. Without it the list is a recognised dataset's full
    list when every class seen belongs to one, else the sorted classes seen.
    """
    path = Path(path)
    if path.is_file():
        pairs = [(path.parent, image_dir_for(path.parent), [path])]
    else:
        dirs = annotation_dirs(path)
        if not dirs:
            raise DatasetLayoutError(
                f"{path}: no line-annotation folder found (looked for 'annotations', 'annotation', 'txt' or "
                "'*_annotation' folders holding .txt files)"
            )
        pairs = [(d, image_dir_for(d), sorted(d.glob("*.txt"))) for d in dirs]

    problems: list[Problem] = []
    # image path -> [(class, box, txt, line)]; an image named in two files gets the boxes of both
    objects: dict[Path, list[tuple[str, list[float], Path, int]]] = defaultdict(list)
    annotated: dict[Path, Path] = {}  # image -> the txt that first named it (where its problems point)
    for _ann_dir, img_dir, txts in pairs:
        for txt in txts:
            rows = parse_lines_file(txt)
            if not rows:  # an empty file: the image named like the txt, with no objects
                image = find_by_stem(img_dir, txt.stem) or img_dir / f"{txt.stem}.jpg"
                annotated.setdefault(image, txt)
                continue
            for image_name, cls, box, line in rows:
                image = img_dir / image_name
                if not image.is_file():
                    image = find_by_stem(img_dir, Path(image_name).stem) or image
                annotated.setdefault(image, txt)
                objects[image].append((cls, box, txt, line))
    if not path.is_file():
        # Once every folder is read: annotation folders may share an image folder (annotations/ and txt/).
        for img_dir in dict.fromkeys(img_dir for _ann_dir, img_dir, _txts in pairs):
            for image in list_images(img_dir):
                if image not in annotated:
                    problems.append(Problem("no_annotation", image, "image has no annotation txt; skipped"))

    seen = {o[0] for objs in objects.values() for o in objs}
    known = recognise("lines", seen)
    class_list = classes if classes is not None else (known[1] if known else tuple(sorted(seen)))
    name = source or (known[0] if known else "lines")

    samples: list[Sample] = []
    for image in sorted(annotated):
        txt = annotated[image]
        kept = []
        for cls, box, where, line in objects.get(image, []):
            if cls not in class_list:
                problems.append(
                    Problem(
                        "unknown_class", where, f"class {cls!r} is not in {list(class_list)}; box dropped", line=line
                    )
                )
            else:
                kept.append((cls, box, where, line))
        size = header_size(image, annotation_file=txt)
        if isinstance(size, Problem):
            problems.append(
                Problem(
                    size.kind,
                    size.file,
                    size.message + "; image skipped (size unknown)",
                    line=kept[0][3] if kept else None,
                )
            )
            continue
        width, height = size
        boxes = np.array([k[1] for k in kept], dtype=np.float64).reshape(-1, 4)
        for k, obj in enumerate(kept):
            problems += box_problems(boxes[k : k + 1], width, height, obj[2], lines=[obj[3]])
        samples.append(
            Sample(
                image_path=image,
                width=width,
                height=height,
                boxes_xyxy=boxes,
                class_names=tuple(k[0] for k in kept),
                source=name,
            )
        )
    return DatasetRead(
        samples=tuple(samples),
        classes=tuple(class_list),
        problems=tuple(problems),
        format="lines",
        source=name,
        path=path,
    )
