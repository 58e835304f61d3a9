"""The fixed image sets of the export gate and INT8 calibration.

- parity images: synthetic bags of a fixed seed, the same for every export of every model, in the model's
  own layout (false colour, grey or the raw dual-energy pair);
- validation set: synthetic bags of other fixed seeds with their boxes, plus the labelled images of the
  calibration folder when it is a dataset the readers recognise, those INT8 was not calibrated on;
- calibration inputs: images of a folder (any images, or a dataset; masks and raw pairs are told apart)
  plus synthetic bags, each through vision.preprocess exactly as the lane prepares scans. The folder's
  scans alternate (in path order) between calibration and validation: ranges fitted to the very images
  they are checked on never clip there, and the check would understate the loss on unseen scans.

Every set is returned as prepared model input (N×C×H×W) with the letterbox parameters of each image, so
detections can be compared in the scans' own pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.metrics import ImageTruth
from vision.decode import DecodeError, decode, decode_dual_energy
from vision.letterbox import LetterboxParams
from vision.preprocess import IncompatibleScanError, PreprocessSpec, prepare

log = logging.getLogger(__name__)

PARITY_SEED = 20_250_101
VAL_SEED = 20_250_202
CALIB_SEED = 20_250_303
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class PreparedSet:
    """Model inputs and what maps results back: inputs N×C×H×W (uint8, or uint16 for 16-bit models),
    letterbox: one LetterboxParams per image, truths: ground truth in scan pixels (None if unlabelled),
    names: where each image came from."""

    inputs: np.ndarray
    letterbox: tuple[LetterboxParams, ...]
    truths: tuple[ImageTruth, ...] | None
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def _bag_size_px(spec: PreprocessSpec) -> int:
    # Bags a little larger than the model input, so the letterbox really resamples (as with real scans),
    # capped so the gate stays fast for large inputs.
    return int(np.clip(round(max(spec.height, spec.width) * 1.25), 128, 1024))


def synthetic_scans(spec: PreprocessSpec, *, seed: int, count: int, classes: tuple[str, ...] | None = None) -> list:
    """`count` synthetic bags (datasets.synth.pipeline.SynthBag) rendered for this model's layout."""
    from datasets.synth.pipeline import SynthConfig, make_bag

    palette = "grey" if spec.input_kind == "grey" else "mixed"
    config = SynthConfig(bags=count, seed=seed, size_px=_bag_size_px(spec), palette=palette)
    return [make_bag(config, i) for i in range(count)]


def bag_pixels(bag, spec: PreprocessSpec) -> np.ndarray:
    """The scan a lane would decode for this bag: the raw pair for dual-energy models, else the rendering."""
    return bag.raw if spec.input_kind == "dual_energy" else bag.image


def _stack(spec: PreprocessSpec, scans: list[np.ndarray]) -> tuple[np.ndarray, tuple[LetterboxParams, ...]]:
    prepared = [prepare(s, spec) for s in scans]
    if not prepared:
        return np.zeros((0, spec.channels, spec.height, spec.width), np.uint16 if spec.input_bits == 16 else np.uint8), ()
    return np.stack([p[0] for p in prepared]), tuple(p[1] for p in prepared)


def _truth(name: str, pixels: np.ndarray, boxes: np.ndarray, names: tuple[str, ...], classes: tuple[str, ...]) -> ImageTruth:
    keep = [i for i, n in enumerate(names) if n in classes]  # classes the model does not know are not truths
    return ImageTruth(
        image_id=name,
        width=int(pixels.shape[1]),
        height=int(pixels.shape[0]),
        boxes_xyxy=np.asarray(boxes, np.float32).reshape(-1, 4)[keep],
        class_ids=np.array([classes.index(names[i]) for i in keep], np.int64),
    )


def parity_set(spec: PreprocessSpec, *, count: int = 8) -> PreparedSet:
    """The fixed images of the PyTorch vs ONNX comparison (unlabelled)."""
    bags = synthetic_scans(spec, seed=PARITY_SEED, count=count)
    inputs, letterbox = _stack(spec, [bag_pixels(b, spec) for b in bags])
    return PreparedSet(inputs, letterbox, None, tuple(b.stem for b in bags))


def validation_set(
    spec: PreprocessSpec, classes: tuple[str, ...], *, count: int = 32, calib_dir: Path | None = None, max_calib: int = 64
) -> PreparedSet:
    """Labelled images of the INT8 check: synthetic bags of VAL_SEED plus the calibration folder's labelled
    images when it is a dataset (boxes of classes the model does not have are dropped)."""
    bags = synthetic_scans(spec, seed=VAL_SEED, count=count)
    scans = [bag_pixels(b, spec) for b in bags]
    truths = [_truth(b.stem, s, b.boxes_xyxy, b.class_names, classes) for b, s in zip(bags, scans)]
    names = [b.stem for b in bags]
    if calib_dir is not None:
        calibrated = {p.resolve() for p in calibration_files(Path(calib_dir), spec)[0]}
        for name, pixels, boxes, box_names in _labelled_scans(Path(calib_dir), spec, max_calib, leave_out=calibrated):
            scans.append(pixels)
            truths.append(_truth(name, pixels, boxes, box_names, classes))
            names.append(name)
    inputs, letterbox = _stack(spec, scans)
    return PreparedSet(inputs, letterbox, tuple(truths), tuple(names))


def _decode_file(path: Path, spec: PreprocessSpec) -> np.ndarray | None:
    """Decoded pixels of a scan file for this model, or None (logged) when it cannot feed it."""
    try:
        if spec.input_kind == "dual_energy":
            pair = _raw_pair_for(path)
            if pair is None:
                return None
            pixels = decode_dual_energy(pair[0].read_bytes(), pair[1].read_bytes()).pixels
        else:
            pixels = decode(path.read_bytes()).pixels
        prepare(pixels, spec)  # raises for a layout the model cannot take
        return pixels
    except (OSError, DecodeError, IncompatibleScanError) as exc:
        log.warning("calibration: skipping %s (%s)", path, exc)
        return None


def _raw_pair_for(path: Path) -> tuple[Path, Path] | None:
    """The `<stem>_low`/`<stem>_high` pair of a scan: the path itself when it is a `_low` file, else the
    pair in a sibling `raw/` folder (the layout `xscreen synth` writes)."""
    stem = path.stem
    if stem.endswith("_low"):
        low = path
    else:
        low = path.parent.parent / "raw" / f"{stem}_low{path.suffix}"
    high = low.with_name(low.stem[: -len("_low")] + "_high" + low.suffix)
    return (low, high) if low.is_file() and high.is_file() else None


def _labelled_scans(folder: Path, spec: PreprocessSpec, limit: int, *, leave_out: set[Path] = frozenset()
                    ) -> list[tuple[str, np.ndarray, np.ndarray, tuple[str, ...]]]:
    """(name, pixels, boxes_xyxy, class names) of a recognised dataset's images, but those in `leave_out`
    (resolved paths); [] for a plain folder."""
    from datasets.readers import read_dataset
    from datasets.sample import AnnotationError, DatasetLayoutError

    try:
        read = read_dataset(folder)
    except (DatasetLayoutError, AnnotationError, OSError) as exc:
        log.info("calibration folder %s is not a labelled dataset (%s): used unlabelled", folder, exc)
        return []
    out = []
    samples = [s for s in read.samples if s.image_path.resolve() not in leave_out]
    for sample in _evenly(samples, limit):
        pixels = _decode_file(sample.image_path, spec)
        if pixels is not None:
            out.append((str(sample.image_path), pixels, np.asarray(sample.boxes_xyxy), tuple(sample.class_names)))
    return out


def _evenly(items: list, limit: int) -> list:
    """At most `limit` items spread evenly over the list (deterministic)."""
    if len(items) <= limit:
        return items
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


def folder_scan_files(folder: Path, spec: PreprocessSpec) -> list[Path]:
    """Scan files under `folder` (recursively, sorted): `_low` files of raw pairs for dual-energy models,
    else images, leaving out masks and raw layers."""
    found = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    # Each scan once: `xscreen synth` writes yolo/images/ as links to images/ (the first path of a file is kept).
    files, seen = [], set()
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            files.append(p)
    if spec.input_kind == "dual_energy":
        return [p for p in files if p.stem.endswith("_low")]
    return [
        p for p in files
        if "masks" not in p.parts[len(Path(folder).parts):] and not p.stem.endswith(("_low", "_high"))
    ]


def calibration_files(folder: Path, spec: PreprocessSpec) -> tuple[list[Path], list[Path]]:
    """The folder's scans split in two, alternating in path order: (those INT8 is calibrated on, those held
    out for its validation). A folder of one scan calibrates on it."""
    files = folder_scan_files(folder, spec)
    return files[0::2], files[1::2]


def calibration_set(spec: PreprocessSpec, calib_dir: Path | None, *, max_images: int = 64, synthetic: int = 32) -> PreparedSet:
    """INT8 calibration inputs: up to `max_images` scans of `calib_dir` plus `synthetic` bags (CALIB_SEED)."""
    scans, names = [], []
    if calib_dir is not None:
        folder = Path(calib_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"calibration folder {folder} does not exist")
        files = calibration_files(folder, spec)[0]
        for path in _evenly(files, max_images):
            pixels = _decode_file(path, spec)
            if pixels is not None:
                scans.append(pixels)
                names.append(str(path))
        if not scans:
            raise ValueError(f"calibration folder {folder} holds no scan this model can take ({spec.input_kind})")
    bags = synthetic_scans(spec, seed=CALIB_SEED, count=synthetic)
    scans += [bag_pixels(b, spec) for b in bags]
    names += [b.stem for b in bags]
    inputs, letterbox = _stack(spec, scans)
    return PreparedSet(inputs, letterbox, None, tuple(names))
