"""TIP over a folder of scans: `xscreen tip --scans DIR --out DIR`.

Each scan gets `per_scan` contraband items projected inside its bag (`datasets.synth.tip`). When the
folder is an annotated dataset (any layout `datasets.readers` recognises), its boxes are kept and the new
ones are added; a plain folder of images is read as scans without boxes. Output: `OUT/images/<stem>.png`
(lossless, so the projection is not blurred by re-encoding; see `output_names` for stems that repeat),
`OUT/annotations.json` (COCO; classes = the scans' own classes, then the contraband classes) and
`OUT/tip.json` (what went where).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.sample import DatasetLayoutError, Sample
from datasets.synth.materials import CONTRABAND_CLASSES
from datasets.synth.pipeline import bag_rng
from datasets.synth.tip import PlacementError, project_random
from vision.decode import decode, encode_png

#: Which palette each public dataset's scanner looks like (see vision.colour.PALETTES).
_SOURCE_PALETTE = {"sixray": "sixray", "opixray": "sixray", "hixray": "sixray", "pidray": "pidray", "clcxray": "pidray"}


@dataclass(frozen=True)
class TipSetSummary:
    scans: int
    projected: int
    skipped: tuple[str, ...]
    annotations: Path


def guess_palette(rgb: np.ndarray) -> str:
    """'pidray' for a white background (PIDray's scanner), else 'sixray' (grey background)."""
    border = np.concatenate([rgb[:4].reshape(-1, 3), rgb[-4:].reshape(-1, 3), rgb[:, :4].reshape(-1, 3), rgb[:, -4:].reshape(-1, 3)])
    return "pidray" if float(np.median(border.mean(axis=1))) > 240 else "sixray"


def _scan_samples(scans: Path) -> tuple[list[Sample], tuple[str, ...], str | None]:
    from datasets.readers import read_dataset
    from datasets.readers.images import header_size, list_images

    try:
        read = read_dataset(scans)
        return list(read.samples), tuple(read.classes), read.source
    except DatasetLayoutError:
        samples = []
        for path in list_images(scans):
            size = header_size(path)
            if isinstance(size, tuple):
                samples.append(Sample(path, size[0], size[1], np.zeros((0, 4), np.float32), (), "images"))
        return samples, (), None


def output_names(samples: list[Sample], scans: Path) -> list[str]:
    """The PNG name each scan is written under: `<stem>.png`, or, for stems that several scans share (EDS
    numbers every domain's images from 1; `a.jpg` beside `a.png`), the scan's path under `scans` joined
    with "__" (`domain1__image__0001.png`), so no scan overwrites another."""
    stems = Counter(s.image_path.stem for s in samples)
    names = []
    for sample in samples:
        path = sample.image_path
        if stems[path.stem] == 1:
            names.append(f"{path.stem}.png")
            continue
        try:
            parts = path.relative_to(scans).parts
        except ValueError:
            parts = path.parts[-3:]
        names.append("__".join((*parts[:-1], path.stem + path.suffix.replace(".", "_"))) + ".png")
    taken = Counter(names)
    # Whatever still collides (it takes contrived names) gets the scan's index.
    return [f"{Path(n).stem}__{i}.png" if taken[n] > 1 else n for i, n in enumerate(names)]


def tip_folder(
    scans: Path,
    out: Path,
    *,
    seed: int,
    classes: tuple[str, ...] = CONTRABAND_CLASSES,
    per_scan: int = 1,
    palette: str = "auto",
) -> TipSetSummary:
    """Project contraband into every scan under `scans`, writing the new set under `out`."""
    from datasets.writers import write_coco

    samples, scan_classes, source = _scan_samples(Path(scans))
    if not samples:
        raise DatasetLayoutError(f"{scans}: no scans found (no images, and no annotated dataset layout)")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    new_samples: list[Sample] = []
    records: list[dict] = []
    skipped: list[str] = []
    projected = 0
    names = output_names(samples, Path(scans))
    for index, (sample, name) in enumerate(zip(samples, names, strict=True)):
        rng = bag_rng(seed, index)
        try:
            scan = decode(sample.image_path.read_bytes())
        except (OSError, ValueError) as exc:
            skipped.append(f"{sample.image_path}: {exc}")
            continue
        if scan.layout == "rgb" and scan.bit_depth == 8:
            kind = "rgb"
            pal = palette if palette != "auto" else _SOURCE_PALETTE.get(source or "", guess_palette(scan.pixels))
        elif scan.layout == "grey":
            kind, pal = "grey", "grey"
        else:
            skipped.append(f"{sample.image_path}: {scan.bit_depth}-bit {scan.layout} scans are not supported by tip")
            continue
        try:
            pixels, placed = project_random(rng, scan.pixels, kind=kind, palette=pal, classes=classes, count=per_scan)
        except PlacementError as exc:
            skipped.append(f"{sample.image_path}: {exc}")
            pixels, placed = scan.pixels, []
        (out / "images" / name).write_bytes(encode_png(pixels))
        projected += len(placed)
        boxes = np.concatenate([sample.boxes_xyxy, np.array([p.box_xyxy for p in placed], np.float32).reshape(-1, 4)])
        new_samples.append(
            Sample(out / "images" / name, sample.width, sample.height, boxes, (*sample.class_names, *(p.class_name for p in placed)), "xscreen-tip")
        )
        records.append(
            {"image": name, "source_image": str(sample.image_path), "palette": pal,
             "items": [{"class": p.class_name, "name": p.name, "material": p.material, "box_xyxy": list(p.box_xyxy)} for p in placed]}
        )
    all_classes = tuple(dict.fromkeys((*scan_classes, *(c for s in new_samples for c in s.class_names), *classes)))
    annotations = out / "annotations.json"
    write_coco(new_samples, all_classes, annotations, image_root=out)
    (out / "tip.json").write_text(json.dumps({"seed": seed, "per_scan": per_scan, "scans": records, "skipped": skipped}, indent=1))
    return TipSetSummary(len(new_samples), projected, tuple(skipped), annotations)
