"""COCO detection JSON (PIDray, CLCXray, and what `datasets.writers.write_coco` writes).

`bbox` is (x, y, w, h) in pixels with (x, y) the top-left corner, which is already our continuous 0-based
convention: x2 = x + w. Segmentations (polygon lists or RLE) are kept raw per box, never rasterised here.
`iscrowd` is not represented: a crowd box is read as an ordinary box (the X-ray datasets use none).

Images are looked up under an image root: the one given, or the first of a few usual places (next to the
JSON, its parent, an `images/` folder, or a folder named after a part of the JSON's name, as PIDray's
`annotations/xray_test_easy.json` ↔ `easy/` and COCO's `instances_train2017.json` ↔ `train2017/`) where
the first images are found; a JSON written by `datasets.writers.write_coco` names its root in
`info.image_root`. An absolute `file_name` is used as it is.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from datasets.readers.catalog import recognise, recognise_any
from datasets.readers.images import header_size
from datasets.sample import AnnotationError, DatasetRead, Problem, Sample, box_problems, parse_number, read_annotation_text

_PROBE_IMAGES = 8  # how many file names are tried per candidate image root


def _load_json(path: Path) -> Any:
    text = read_annotation_text(path)  # (a byte-order mark dropped; a non-UTF-8 byte named by its line)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None


def _list_field(doc: dict[str, Any], key: str, path: Path, *, required: bool = True) -> list[Any]:
    value = doc.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise AnnotationError(path, f"'{key}' must be a list, got {type(value).__name__}", record="top level")
    return value


def _int_field(rec: Any, key: str, path: Path, record: str) -> int:
    if not isinstance(rec, dict):
        raise AnnotationError(path, f"expected an object, got {type(rec).__name__}", record=record)
    value = rec.get(key)
    # bool is an int subclass in Python; an id of `true` is a broken file, not id 1.
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise AnnotationError(path, f"'{key}' must be an integer, got {value!r}", record=record)
    return value


def _categories(doc: dict[str, Any], path: Path) -> dict[int, str]:
    by_id: dict[int, str] = {}
    for i, cat in enumerate(_list_field(doc, "categories", path)):
        record = f"categories[{i}]"
        cat_id = _int_field(cat, "id", path, record)
        name = cat.get("name")
        if not isinstance(name, str) or not name:
            raise AnnotationError(path, f"'name' must be a non-empty string, got {name!r}", record=record)
        if cat_id in by_id:
            raise AnnotationError(path, f"category id {cat_id} appears twice", record=record)
        if name in by_id.values():
            raise AnnotationError(path, f"category name {name!r} appears twice", record=record)
        by_id[cat_id] = name
    return dict(sorted(by_id.items()))


def _candidate_roots(json_path: Path) -> list[Path]:
    base = json_path.parent
    out = [base, base.parent, base / "images", base.parent / "images", base.parent / json_path.stem]
    # xray_test_easy -> easy, test; instances_train2017 -> train2017
    for token in reversed(json_path.stem.split("_")):
        out += [base.parent / token, base / token, base.parent / "images" / token]
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def resolve_image_root(json_path: Path, file_names: list[str]) -> Path:
    """The folder where most of the first few `file_names` exist (ties: the earliest candidate); the
    JSON's own folder when none holds any (every image is then reported missing there)."""
    probes = [f for f in file_names[:_PROBE_IMAGES] if not Path(f).is_absolute()]
    if not probes:
        return json_path.parent
    best, best_hits = json_path.parent, 0
    for root in _candidate_roots(json_path):
        hits = sum((root / f).is_file() for f in probes)
        if hits > best_hits:
            best, best_hits = root, hits
    return best


def _bbox_xyxy(ann: dict[str, Any], path: Path, record: str) -> list[float]:
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise AnnotationError(path, f"'bbox' must be a list of 4 numbers [x, y, w, h], got {bbox!r}", record=record)
    if any(isinstance(v, bool) or not isinstance(v, (int, float, str)) for v in bbox):
        raise AnnotationError(path, f"'bbox' values must be numbers, got {bbox!r}", record=record)
    x, y, w, h = (parse_number(v, path, record=record, what="bbox value") for v in bbox)
    return [x, y, x + w, y + h]


def read_coco(
    json_path: Path,
    *,
    image_root: Path | None = None,
    source: str | None = None,
    classes: tuple[str, ...] | None = None,
) -> DatasetRead:
    """Read a COCO detection JSON into samples (one per entry of `images`, in file order).

    `classes` fixes the class list (the `pidray`/`clcxray` formats pass the published one); a box whose
    category is not in it is dropped as `unknown_class`. Without it the list is a recognised dataset's full
    published list (so a JSON holding a subset of PIDray's categories keeps PIDray's class indices), else
    the JSON's categories in id order.

    Raises `AnnotationError` (file + line, or file + record such as `annotations[3] (id 7)`) for invalid
    JSON or a malformed record. An annotation whose category or image id is unknown is dropped and reported
    as a problem; so are missing images (kept, with the JSON's width/height, when it gives them).
    """
    json_path = Path(json_path)
    doc = _load_json(json_path)
    if not isinstance(doc, dict):
        raise AnnotationError(json_path, f"top level must be an object, got {type(doc).__name__}", record="top level")
    categories = _categories(doc, json_path)
    file_classes = tuple(categories.values())
    info = doc.get("info") if isinstance(doc.get("info"), dict) else {}
    # `write_coco` records the dataset's name: SIXray's classes are all PIDray's too, so its categories (in
    # their order) are its class list, not a guess from the names.
    recorded = info.get("source") if isinstance(info.get("source"), str) and info.get("source") else None
    known = None if recorded else recognise("coco", file_classes)
    # A JSON converted from another layout (xscreen data convert) still names its dataset by its classes.
    name = source or recorded or (known[0] if known else recognise_any(file_classes) or "coco")
    if classes is None:
        classes = known[1] if known else file_classes
    images = _list_field(doc, "images", json_path)
    annotations = _list_field(doc, "annotations", json_path, required=False)
    problems: list[Problem] = []

    image_ids: dict[int, int] = {}  # image id -> index in `images`
    for i, img in enumerate(images):
        record = f"images[{i}]"
        img_id = _int_field(img, "id", json_path, record)
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise AnnotationError(
                json_path, f"'file_name' must be a non-empty string, got {img.get('file_name')!r}", record=record
            )
        if img_id in image_ids:
            raise AnnotationError(json_path, f"image id {img_id} appears twice", record=record)
        image_ids[img_id] = i

    per_image: dict[int, list[tuple[list[float], str, Any, str]]] = defaultdict(list)
    for i, ann in enumerate(annotations):
        record = f"annotations[{i}]" + (f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else "")
        img_id = _int_field(ann, "image_id", json_path, record)
        cat_id = _int_field(ann, "category_id", json_path, record)
        box = _bbox_xyxy(ann, json_path, record)
        if cat_id not in categories:
            problems.append(
                Problem(
                    "unknown_class",
                    json_path,
                    f"category_id {cat_id} is not among the categories {sorted(categories)}; box dropped",
                    record=record,
                )
            )
            continue
        if categories[cat_id] not in classes:
            problems.append(
                Problem(
                    "unknown_class",
                    json_path,
                    f"category {categories[cat_id]!r} (id {cat_id}) is not in {list(classes)}; box dropped",
                    record=record,
                )
            )
            continue
        if img_id not in image_ids:
            problems.append(
                Problem(
                    "unknown_image", json_path, f"image_id {img_id} is not among the images; box dropped", record=record
                )
            )
            continue
        segmentation = ann.get("segmentation") or None  # [] and {} mean "no mask"
        per_image[img_id].append((box, categories[cat_id], segmentation, record))

    if image_root is None:
        # `datasets.writers.write_coco` records the root its file_names are relative to.
        recorded = Path(str(info.get("image_root", ""))) if info.get("image_root") else None
        if recorded is not None and not recorded.is_absolute():
            recorded = json_path.parent / recorded  # a set that records its root relative to itself can move
        if recorded is not None and recorded.is_dir():
            image_root = recorded
    root = (
        Path(image_root)
        if image_root is not None
        else resolve_image_root(json_path, [str(im["file_name"]) for im in images])
    )
    samples: list[Sample] = []
    first_entry: dict[Path, int] = {}  # image → the index in `samples` of its first entry
    for i, img in enumerate(images):
        record = f"images[{i}]"
        image_path = root / img["file_name"]
        if image_path in first_entry:  # listed again (a merged export): one scan, every box of both entries
            k = first_entry[image_path]
            anns = per_image.get(img["id"], [])
            before = samples[k]
            boxes = np.concatenate([before.boxes_xyxy, np.array([a[0] for a in anns], np.float64).reshape(-1, 4)])
            old_masks = before.masks or (None,) * before.num_boxes
            masks = (*old_masks, *(a[2] for a in anns))
            samples[k] = Sample(image_path=image_path, width=before.width, height=before.height, boxes_xyxy=boxes,
                                class_names=(*before.class_names, *(a[1] for a in anns)), source=name,
                                masks=masks if any(m is not None for m in masks) else None)
            problems.append(Problem("duplicate_image", json_path, f"image {image_path} is listed again; its boxes "
                                    "are read with the first entry's", record=record))
            continue
        width, height = img.get("width"), img.get("height")
        if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
            if not image_path.is_file():
                problems.append(
                    Problem("missing_image", json_path, f"image {image_path} does not exist", record=record)
                )
        else:  # COCO requires the size, but some exporters leave it out: read the header instead
            size = header_size(image_path, annotation_file=json_path, record=record)
            if isinstance(size, Problem):
                problems.append(
                    Problem(size.kind, size.file, size.message + "; image skipped (size unknown)", record=record)
                )
                continue
            width, height = size
        anns = per_image.get(img["id"], [])
        boxes = np.array([a[0] for a in anns], dtype=np.float64).reshape(-1, 4)
        problems += box_problems(boxes, width, height, json_path, records=[a[3] for a in anns])
        masks = tuple(a[2] for a in anns) if any(a[2] is not None for a in anns) else None
        samples.append(
            Sample(
                image_path=image_path,
                width=width,
                height=height,
                boxes_xyxy=boxes,
                class_names=tuple(a[1] for a in anns),
                source=name,
                masks=masks,
            )
        )
        first_entry[image_path] = len(samples) - 1
    return DatasetRead(
        samples=tuple(samples),
        classes=tuple(classes),
        problems=tuple(problems),
        format="coco",
        source=name,
        path=json_path,
    )
