"""Batch prediction over files: what `xscreen predict` runs (torch-free, like all of `inference`).

    inputs = collect_inputs([Path("scans/")], dual_energy=engine.spec.input_kind == "dual_energy")
    records = predict_inputs(engine, inputs, overlays_dir=Path("overlays/"))

Each input is decoded by its content as the lane service decodes it: a DICOS DX file (DICOM preamble, any
suffix; `.dcs` in a folder) with vision.dicos, any other file with vision.decode (a dual-energy model takes
`<stem>_low.png` + `<stem>_high.png` pairs as one scan), so the answer for a file equals the service's for
the same bytes. Each is run through `Engine.predict` (the lane path) and reported as one JSON-able record:

    {"image": "scans/bag_1.png", "alarm": true, "alarm_classes": ["cash_bundle"],
     "detections": [{"class": "cash_bundle", "score": 0.91, "box_xyxy": [x1, y1, x2, y2]}, ...]}

boxes in the scan's own pixels, highest score first. An input that cannot be decoded or does not fit the
model gets `"error": "..."`, `"alarm": null` and no detections; the others are still predicted.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.engine import Engine, Prediction
from vision.decode import LANE_MAX_PIXELS, DecodeError, decode, decode_dual_energy, encode_png
from vision.dicos import is_dicos, read_dicos_dx
from vision.draw import draw_boxes, to_display_rgb
from vision.preprocess import IncompatibleScanError, to_layout

#: What a folder is listed for; a file named on its own is read whatever its suffix (decoded by content).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcs")
_LOW, _HIGH = "_low", "_high"


@dataclass(frozen=True)
class ScanInput:
    """One scan to predict: `name` is what the record calls it (the file, or `<dir>/<stem>` for a
    dual-energy pair); `paths` is one file or the (low, high) pair; `problem` is set when the input is
    known to be unusable before decoding (e.g. a `_low` file without its `_high`)."""

    name: str
    paths: tuple[Path, ...]
    problem: str | None = None


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _partner(path: Path, name: str) -> Path:
    """The file `name` + an image suffix beside `path`: `path`'s own suffix first, else any image suffix (a
    pair saved as `_low.tif` and `_high.tiff`, or `.png` and `.PNG`, is still one scan)."""
    same = path.with_name(name + path.suffix)
    if same.is_file():
        return same
    others = sorted(p for p in path.parent.glob(glob.escape(name) + ".*") if p.is_file() and _is_image(p))
    return others[0] if others else same


def _pair_for(path: Path) -> ScanInput:
    """The dual-energy scan a `_low` or `_high` file belongs to."""
    stem = path.stem
    base = stem[: -len(_LOW)] if stem.endswith(_LOW) else stem[: -len(_HIGH)]
    low = path if stem.endswith(_LOW) else _partner(path, base + _LOW)
    high = path if stem.endswith(_HIGH) else _partner(path, base + _HIGH)
    name = str(path.with_name(base))
    missing = [p.name for p in (low, high) if not p.is_file()]
    if missing:
        return ScanInput(name, (low, high), f"dual-energy pair incomplete: {', '.join(missing)} missing")
    return ScanInput(name, (low, high))


def collect_inputs(items: Sequence[Path], *, dual_energy: bool) -> list[ScanInput]:
    """Files and folders (their image files, not recursive, sorted) → scans, each listed once, in order.

    dual_energy: group `<stem>_low`/`<stem>_high` files into one scan; any other image is reported as not a
    dual-energy scan. Otherwise every image file is one scan.
    """
    files: list[Path] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.is_file() and _is_image(p))
        else:
            files.append(item)
    out: list[ScanInput] = []
    seen: set[str] = set()
    for path in files:
        if dual_energy and path.stem.endswith((_LOW, _HIGH)) and path.stem not in (_LOW, _HIGH):
            scan = _pair_for(path)
        elif dual_energy:  # `_low.png` alone has no <stem> to name the pair by
            scan = ScanInput(str(path), (path,), "not a dual-energy scan: this model takes <stem>_low/<stem>_high pairs")
        else:
            problem = None if path.is_file() else "no such file"
            scan = ScanInput(str(path), (path,), problem)
        if scan.name not in seen:
            seen.add(scan.name)
            out.append(scan)
    return out


def load_scan(scan: ScanInput, *, max_pixels: int = LANE_MAX_PIXELS) -> np.ndarray:
    """Decoded pixels of a scan; `DecodeError`/`OSError` when it cannot be read.

    One file is dispatched on its content, as the service's `upload_from_bytes` sniffs a scan: the DICOM
    preamble → vision.dicos (DICOS DX), anything else → vision.decode. max_pixels: by default the lane
    service's budget, so a scan the service would refuse is refused here too.
    """
    if len(scan.paths) == 2:
        low, high = scan.paths
        return decode_dual_energy(low.read_bytes(), high.read_bytes(), max_pixels=max_pixels).pixels
    data = scan.paths[0].read_bytes()
    if is_dicos(data):
        return read_dicos_dx(data, max_pixels=max_pixels).pixels
    return decode(data, max_pixels=max_pixels).pixels


def prediction_record(name: str, prediction: Prediction, class_names: Sequence[str]) -> dict[str, Any]:
    """The JSON record of one scan's prediction (see module docstring)."""
    d = prediction.detections
    return {
        "image": name,
        "alarm": bool(prediction.decision.alarm),
        "alarm_classes": list(prediction.decision.alarm_classes),
        "detections": [
            {"class": class_names[int(c)], "score": float(s), "box_xyxy": [float(v) for v in box]}
            for box, s, c in zip(d.boxes_xyxy, d.scores, d.class_ids)
        ],
    }


def _error_record(name: str, message: str) -> dict[str, Any]:
    return {"image": name, "alarm": None, "alarm_classes": [], "detections": [], "error": message}


def check_overlays_dir(overlays_dir: Path, inputs: Sequence[ScanInput]) -> None:
    """ValueError when the overlays would go where scans being predicted lie: they could replace a scan of the
    same name, and the next run over that folder would screen the drawings."""
    folder = overlays_dir.resolve()
    for scan in inputs:
        for path in scan.paths:
            if folder == path.resolve().parent or folder in path.resolve().parents:
                raise ValueError(f"the overlays folder {overlays_dir} holds scans being predicted ({path}); "
                                 "give a folder of its own")


def _overlay_path(folder: Path, scan: ScanInput, used: set[str]) -> Path:
    stem = Path(scan.name).stem if len(scan.paths) == 1 else Path(scan.name).name
    candidate, k = stem, 1
    while candidate in used:  # two inputs of one stem from different folders
        candidate, k = f"{stem}_{k}", k + 1
    used.add(candidate)
    return folder / f"{candidate}.png"


def predict_inputs(
    engine: Engine,
    inputs: Sequence[ScanInput],
    *,
    overlays_dir: Path | None = None,
    overlay_all: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Predict every scan (in chunks of `engine.max_batch`); one record per input, in input order.

    overlays_dir: write `<stem>.png` per scan with its alarm detections (score ≥ class threshold) drawn
    (vision.draw), or every detection with overlay_all.
    on_progress(n): called after each chunk with the number of scans it held (a progress bar's advance).
    """
    records: list[dict[str, Any] | None] = [None] * len(inputs)
    used: set[str] = set()
    if overlays_dir is not None:
        check_overlays_dir(overlays_dir, inputs)
        overlays_dir.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(inputs), engine.max_batch):
        chunk = [(i, inputs[i]) for i in range(start, min(start + engine.max_batch, len(inputs)))]
        ready: list[tuple[int, ScanInput, np.ndarray]] = []
        for i, scan in chunk:
            if scan.problem:
                records[i] = _error_record(scan.name, scan.problem)
                continue
            try:
                pixels = load_scan(scan)
                to_layout(pixels, engine.spec)  # refuse a layout the model cannot take, per scan
            except (OSError, DecodeError, IncompatibleScanError) as exc:
                records[i] = _error_record(scan.name, str(exc))
                continue
            ready.append((i, scan, pixels))
        predictions = engine.predict([p for _, _, p in ready]) if ready else []
        for (i, scan, pixels), pred in zip(ready, predictions):
            records[i] = prediction_record(scan.name, pred, engine.class_names)
            if overlays_dir is not None:
                d = pred.detections if overlay_all else pred.decision.alarm_detections[0]
                labels = [engine.class_names[int(c)] for c in d.class_ids]
                image = draw_boxes(to_display_rgb(pixels), d.boxes_xyxy, labels, d.scores.tolist())
                _overlay_path(overlays_dir, scan, used).write_bytes(encode_png(image))
        if on_progress is not None:
            on_progress(len(chunk))
    return [r for r in records if r is not None]
