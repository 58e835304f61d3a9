"""`xscreen data inspect`: what a dataset holds and what is wrong with it, plus a contact sheet.

The report counts images, boxes per class and image sizes, and lists every problem: those the reader
found (missing image, box outside the image, zero-area box, unknown class, ...) and those found here by
reading each image's header (unreadable image, annotation size that disagrees with the image). The contact
sheet decodes a few images in full and draws their boxes, which is where a wrong coordinate convention
shows at a glance.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets.readers.images import header_size
from datasets.sample import DatasetRead, Problem, Sample
from vision.decode import DecodeError, decode, encode_png
from vision.draw import contact_sheet, draw_boxes


@dataclass(frozen=True)
class InspectReport:
    """Counts and problems of one read dataset. Ranges are (min, max) in pixels, None without images."""

    path: Path
    format: str
    source: str
    classes: tuple[str, ...]
    images: int
    images_with_boxes: int
    boxes: int
    boxes_per_class: dict[str, int]
    width_range_px: tuple[int, int] | None
    height_range_px: tuple[int, int] | None
    problems: tuple[Problem, ...]

    @property
    def problems_per_kind(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "source": self.source,
            "classes": list(self.classes),
            "images": self.images,
            "images_with_boxes": self.images_with_boxes,
            "boxes": self.boxes,
            "boxes_per_class": self.boxes_per_class,
            "width_range_px": list(self.width_range_px) if self.width_range_px else None,
            "height_range_px": list(self.height_range_px) if self.height_range_px else None,
            "problems_per_kind": self.problems_per_kind,
            "problems": [p.to_dict() for p in self.problems],
        }


def image_problems(samples: tuple[Sample, ...] | list[Sample]) -> list[Problem]:
    """Header checks of existing images: unreadable headers, and sizes that differ from the sample's
    (which came from the annotation for COCO and VOC). Missing images are the readers' to report."""
    out: list[Problem] = []
    for sample in samples:
        if not sample.image_path.is_file():
            continue
        size = header_size(sample.image_path)
        if isinstance(size, Problem):
            out.append(size)
        elif size != (sample.width, sample.height):
            out.append(
                Problem(
                    "size_mismatch",
                    sample.image_path,
                    f"annotation says {sample.width}×{sample.height}, image is {size[0]}×{size[1]}",
                )
            )
    return out


def inspect_dataset(read: DatasetRead, *, check_images: bool = True) -> InspectReport:
    """Summarise `read`; with `check_images`, also read every image header (one small read per image)."""
    samples = read.samples
    per_class = Counter(c for s in samples for c in s.class_names)
    boxes_per_class = {c: per_class.get(c, 0) for c in read.classes}
    boxes_per_class.update({c: n for c, n in sorted(per_class.items()) if c not in boxes_per_class})
    widths = [s.width for s in samples]
    heights = [s.height for s in samples]
    problems = list(read.problems) + (image_problems(samples) if check_images else [])
    return InspectReport(
        path=read.path,
        format=read.format,
        source=read.source,
        classes=read.classes,
        images=len(samples),
        images_with_boxes=sum(s.num_boxes > 0 for s in samples),
        boxes=sum(s.num_boxes for s in samples),
        boxes_per_class=boxes_per_class,
        width_range_px=(min(widths), max(widths)) if widths else None,
        height_range_px=(min(heights), max(heights)) if heights else None,
        problems=tuple(problems),
    )


def pick_for_sheet(samples: tuple[Sample, ...] | list[Sample], count: int) -> list[Sample]:
    """Up to `count` samples spread evenly over the dataset, images with boxes first (they show whether the
    boxes sit on the objects), then background images to fill."""
    with_boxes = [s for s in samples if s.num_boxes and s.image_path.is_file()]
    without = [s for s in samples if not s.num_boxes and s.image_path.is_file()]

    def spread(items: list[Sample], k: int) -> list[Sample]:
        if k <= 0 or not items:
            return []
        if len(items) <= k:
            return list(items)
        return [items[round(i * (len(items) - 1) / (k - 1))] if k > 1 else items[0] for i in range(k)]

    chosen = spread(with_boxes, count)
    return chosen + spread(without, count - len(chosen))


def write_contact_sheet(
    samples: tuple[Sample, ...] | list[Sample],
    out_png: Path | str,
    *,
    max_images: int = 16,
    columns: int = 4,
    tile_px: int = 320,
) -> tuple[Path, list[Problem]]:
    """Draw up to `max_images` samples with their boxes into one PNG at `out_png`.

    Returns the path and the problems met decoding images (a truncated body that the header check cannot
    see); such images are left out of the sheet.
    """
    out_png = Path(out_png)
    tiles, problems = [], []
    for sample in pick_for_sheet(samples, max_images):
        try:
            scan = decode(sample.image_path.read_bytes())
        except (DecodeError, OSError) as exc:
            problems.append(Problem("unreadable_image", sample.image_path, f"image cannot be decoded: {exc}"))
            continue
        tiles.append(draw_boxes(scan.pixels, sample.boxes_xyxy, sample.class_names))
    sheet = contact_sheet(tiles, columns=columns, tile=tile_px)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    out_png.write_bytes(encode_png(sheet))
    return out_png, problems
