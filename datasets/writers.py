"""Writing samples as COCO JSON or as a YOLO folder. Images are referenced, never copied.

COCO: `file_name` is relative to `image_root` when one is given (every image must lie under it), else the
absolute path of the image; `info.image_root` records which, so a reader knows where to look. Categories
get ids 1..K in the order of `classes`; `bbox` is (x, y, w, h) pixels with 4 decimals (0.0001 px, well under
what any reader or metric resolves), `area` the box's area, `iscrowd` 0; a raw segmentation kept by the
reader is written through.

YOLO (ultralytics layout): `OUT/images/<name>` are symbolic links to the original images, `OUT/labels/<stem>.txt`
hold `<class index> cx cy w h` normalised with 6 decimals, plus `OUT/classes.txt`, `OUT/data.yaml` (names, and
train/val both pointing at images/, to be split by the trainer) and `OUT/images.txt` (the linked paths).
YOLO cannot hold a box outside the image: such boxes are clipped to it, and dropped when nothing is left;
the summary counts both. Both writers record the dataset's name (`info.source`, data.yaml `source`) and leave
out a scan whose image-level labels name a class no box marks (`Sample.unboxed_labels`: it would be a clean
bag holding a gun), counting it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from datasets.sample import Sample
from vision.boxes import clip_xyxy, xyxy_to_cxcywh, xyxy_to_xywh
from vision.files import write_text_atomic

_COCO_DECIMALS = 4
_YOLO_DECIMALS = 6


@dataclass(frozen=True)
class WriteSummary:
    """What a writer wrote: the output path, image and box counts, and boxes it had to change."""

    path: Path
    images: int
    boxes: int
    clipped_boxes: int = 0
    dropped_boxes: int = 0
    missing_images: int = 0
    #: scans left out because their image-level labels name a class no box marks (`Sample.unboxed_labels`)
    incomplete_images: int = 0


def _class_index(classes: Sequence[str]) -> dict[str, int]:
    if len(set(classes)) != len(classes):
        raise ValueError(f"class list has duplicates: {list(classes)}")
    return {name: i for i, name in enumerate(classes)}


def _index_of(index: dict[str, int], name: str, sample: Sample) -> int:
    if name not in index:
        raise ValueError(f"{sample.image_path}: class {name!r} is not in the class list {list(index)}")
    return index[name]


def _complete(samples: Sequence[Sample]) -> tuple[list[Sample], int]:
    """The samples whose boxes mark every class their image-level labels name, and how many others there were."""
    kept = [s for s in samples if not s.unboxed_labels]
    return kept, len(samples) - len(kept)


def _common_source(samples: Sequence[Sample], source: str | None) -> str | None:
    """The dataset the samples come from: `source`, else the one name they all carry."""
    names = {s.source for s in samples}
    return source or (names.pop() if len(names) == 1 else None)


def write_coco(
    samples: Sequence[Sample], classes: Sequence[str], out_json: Path | str, *, image_root: Path | str | None = None,
    source: str | None = None,
) -> WriteSummary:
    """Write `samples` as one COCO detection JSON at `out_json` (see the module docstring).

    source: the dataset's name, recorded in `info.source` (default: the one all samples carry) so that a
    reader names the set as before and keeps its class list (SIXray's names are all PIDray's too).
    Raises ValueError for a box whose class is not in `classes`, or an image outside `image_root`.
    """
    out_json = Path(out_json)
    index = _class_index(classes)
    root = Path(image_root).absolute() if image_root is not None else None
    source = _common_source(samples, source)
    samples, incomplete = _complete(samples)
    images, annotations = [], []
    for image_id, sample in enumerate(samples, start=1):
        path = sample.image_path.absolute()
        if root is not None:
            try:
                file_name = path.relative_to(root).as_posix()
            except ValueError:
                raise ValueError(f"image {path} is not under the image root {root}") from None
        else:
            file_name = str(path)
        images.append({"id": image_id, "file_name": file_name, "width": sample.width, "height": sample.height})
        boxes_xywh = xyxy_to_xywh(sample.boxes_xyxy)
        for k, (name, box) in enumerate(zip(sample.class_names, boxes_xywh, strict=True)):
            x, y, w, h = (round(float(v), _COCO_DECIMALS) for v in box)
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": _index_of(index, name, sample) + 1,
                "bbox": [x, y, w, h],
                "area": round(max(w, 0.0) * max(h, 0.0), _COCO_DECIMALS),
                "iscrowd": 0,
            }
            if sample.masks is not None and sample.masks[k] is not None:
                ann["segmentation"] = sample.masks[k]
            annotations.append(ann)
    recorded_root = "absolute file_name"
    if root is not None:
        try:  # relative to the JSON's folder where possible, so the set can be moved or copied whole
            recorded_root = os.path.relpath(root, out_json.parent.absolute())
        except ValueError:
            recorded_root = str(root)
    doc = {
        "info": {
            "description": "written by xscreen",
            "image_root": recorded_root,
            **({"source": source} if source else {}),
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(classes)],
    }
    write_text_atomic(out_json, json.dumps(doc))  # never a half-written JSON a reader would take for complete
    return WriteSummary(path=out_json, images=len(images), boxes=len(annotations), incomplete_images=incomplete)


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        os.symlink(target, link)
    except OSError as exc:
        raise OSError(
            f"cannot link {link} -> {target} ({exc}); the YOLO writer references images, it does not copy"
        ) from exc


def _clear_yolo_folder(out_dir: Path) -> None:
    """Empty what an earlier write left in `out_dir` (links in images/, .txt in labels/), so the folder holds
    this write only; refuse (ValueError) a folder holding anything else there: it is not one of ours."""
    foreign = [p for p in (out_dir / "images").glob("*") if not p.is_symlink()]
    foreign += [p for p in (out_dir / "labels").glob("*") if p.suffix != ".txt" or not p.is_file()]
    if foreign:
        raise ValueError(f"{out_dir}: holds {foreign[0]}, not written by the YOLO writer; give an empty or new folder")
    for path in (*(out_dir / "images").glob("*"), *(out_dir / "labels").glob("*.txt")):
        path.unlink()


def write_yolo(samples: Sequence[Sample], classes: Sequence[str], out_dir: Path | str, *,
               source: str | None = None) -> WriteSummary:
    """Write `samples` as a YOLO folder at `out_dir` (see the module docstring). What an earlier write left
    there is replaced.

    source: the dataset's name, recorded in data.yaml (default: the one all samples carry).
    Raises ValueError for a class not in `classes`, two images with one file stem (their labels would
    collide in labels/), or a folder holding files this writer did not write.
    """
    out_dir = Path(out_dir)
    index = _class_index(classes)
    source = _common_source(samples, source)
    samples, incomplete = _complete(samples)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    _clear_yolo_folder(out_dir)
    by_name: dict[str, Path] = {}
    linked: list[str] = []
    boxes_written = clipped = dropped = missing = 0
    for sample in samples:
        name, stem = sample.image_path.name, sample.image_path.stem
        if stem in by_name:
            raise ValueError(
                f"two images named {stem}.*: {by_name[stem]} and {sample.image_path}; YOLO labels would collide"
            )
        by_name[stem] = sample.image_path
        lines = []
        if sample.num_boxes:
            raw = sample.boxes_xyxy.astype(np.float64)
            box = clip_xyxy(raw, sample.width, sample.height)
            changed = np.any(np.abs(box - raw) > 1e-6, axis=1)
            empty = (box[:, 2] <= box[:, 0]) | (box[:, 3] <= box[:, 1])
            clipped += int(np.sum(changed & ~empty))
            dropped += int(np.sum(empty))
            scale = np.array([sample.width, sample.height, sample.width, sample.height], dtype=np.float64)
            for cls, cxcywh, is_empty in zip(sample.class_names, xyxy_to_cxcywh(box) / scale, empty, strict=True):
                if is_empty:
                    continue
                values = " ".join(f"{v:.{_YOLO_DECIMALS}f}" for v in cxcywh)
                lines.append(f"{_index_of(index, cls, sample)} {values}")
        # An empty label file marks a background image explicitly (YOLO reads no file the same way).
        (out_dir / "labels" / f"{sample.image_path.stem}.txt").write_text(
            "".join(f"{ln}\n" for ln in lines), encoding="utf-8"
        )
        boxes_written += len(lines)
        if sample.image_path.is_file():
            _link(out_dir / "images" / name, sample.image_path.resolve())
            linked.append(str(out_dir.resolve() / "images" / name))  # the link, not its target
        else:
            missing += 1
    (out_dir / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    (out_dir / "images.txt").write_text("".join(f"{p}\n" for p in linked), encoding="utf-8")
    data = {
        "path": str(out_dir.resolve()),
        "train": "images",
        "val": "images",
        "nc": len(classes),
        "names": {i: c for i, c in enumerate(classes)},
        **({"source": source} if source else {}),
    }
    (out_dir / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return WriteSummary(
        path=out_dir,
        images=len(by_name),
        boxes=boxes_written,
        clipped_boxes=clipped,
        dropped_boxes=dropped,
        missing_images=missing,
        incomplete_images=incomplete,
    )
