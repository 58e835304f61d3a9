"""The detector's training and validation data: one `DetectionDataset` per source, mixed by weight.

Every item takes the lane's path: decoded scan → (train only) `training.augment.augment_scan` →
`vision.preprocess.prepare` (THE preprocessing path: layout, depth, letterbox) → boxes mapped with
`vision.letterbox.letterbox_boxes`. So a model sees in training exactly what a lane will feed it.

Sources (`training.config.SourceConfig.kind`):
- `dataset`: a public dataset in its native layout (`datasets.readers.read_dataset`), its classes mapped
  into the training classes by an explicit `class_map` (`datasets.classmap.ClassMap`).
- `synth`: bags made on the fly by the physics synthesiser (`datasets.synth.pipeline.make_bag`).
- `tip`: contraband projected on the fly into the scans of a folder (`datasets.synth.tip.project_random`).

Train items are addressed as `epoch × len(dataset) + i` (see `training.sampler`): on-the-fly sources make
new bags every epoch, and augmentation is deterministic per (seed, source, epoch, item).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from datasets.classmap import ClassMap, ClassMapError
from datasets.readers import read_dataset
from datasets.sample import DatasetLayoutError, DatasetRead, Sample
from datasets.synth.materials import CONTRABAND_CLASSES
from datasets.synth.pipeline import SynthConfig, make_bag
from training.augment import AugmentConfig, augment_scan
from training.config import ModelConfig, SourceConfig
from training.sampler import WeightedSourceSampler, source_shares
from vision.colour import RAW_AIR_LEVEL
from vision.decode import decode, decode_dual_energy
from vision.letterbox import letterbox_boxes, resample
from vision.preprocess import PreprocessSpec, prepare

#: Boxes narrower or shorter than this in model-input pixels are dropped: below the detector's finest
#: stride they cannot be assigned a location, and they are usually crop slivers.
MIN_BOX_PX = 2.0

#: TIP works on the scan at most this many times the model's input side: the letterbox shrinks it anyway,
#: and bag-region finding and projection cost grows with the pixel count.
TIP_WORK_SCALE = 1.25

#: Mean contraband items in a non-clean synthetic bag (`SynthConfig.n_contraband` = (1, 3), uniform).
_SYNTH_ITEMS_PER_BAG = 2.0
#: Mean items TIP projects into a non-clean scan (1 or 2, equally likely).
_TIP_ITEMS_PER_SCAN = 1.5


def preprocess_spec_for(model_config: ModelConfig) -> PreprocessSpec:
    """The model's input spec: square `input_size`, 16-bit for dual-energy (padded with air, ~60000 counts,
    so the letterbox border looks like an empty belt), else 8-bit padded with 114."""
    dual = model_config.input_kind == "dual_energy"
    return PreprocessSpec(
        input_kind=model_config.input_kind,
        input_bits=16 if dual else 8,
        height=model_config.input_size,
        width=model_config.input_size,
        pad_value=RAW_AIR_LEVEL if dual else 114,
    )


@dataclass(frozen=True)
class ScanItem:
    """One scan before preprocessing: pixels H×W[×C] uint8/uint16, boxes_xyxy N×4 float32 scan pixels,
    class_ids N int64 (indices into the training classes), image_id a stable name."""

    pixels: np.ndarray
    boxes_xyxy: np.ndarray
    class_ids: np.ndarray
    image_id: str


@dataclass(frozen=True)
class _Entry:
    """What a source keeps of one annotated scan: plain, picklable data (a `Sample`'s read-only mappings
    cannot cross into spawned DataLoader workers). boxes_xyxy N×4 float32 scan pixels, class_ids N int64."""

    image_path: Path
    boxes_xyxy: np.ndarray
    class_ids: np.ndarray


def _entries(samples: Sequence[Sample], classes: tuple[str, ...]) -> tuple[_Entry, ...]:
    return tuple(_Entry(s.image_path, np.array(s.boxes_xyxy, np.float32), _class_ids(s.class_names, classes)) for s in samples)


def raw_pair_paths(image_path: Path) -> tuple[Path, Path] | None:
    """The dual-energy pair of an image, as the synthesiser writes it: `<set>/raw/<stem>_low.png` and
    `_high.png` (or the same names next to the image); None when there is none."""
    stem = image_path.stem
    for folder in (image_path.parent.parent / "raw", image_path.parent):
        low, high = folder / f"{stem}_low.png", folder / f"{stem}_high.png"
        if low.is_file() and high.is_file():
            return low, high
    return None


def load_scan(image_path: Path, input_kind: str) -> np.ndarray:
    """Decode a scan for a model of `input_kind`: the raw pair (H×W×2) for dual-energy, else the image."""
    if input_kind == "dual_energy":
        pair = raw_pair_paths(image_path)
        if pair is None:
            raise FileNotFoundError(f"{image_path}: a dual-energy model needs raw/{image_path.stem}_low.png and _high.png")
        return decode_dual_energy(pair[0].read_bytes(), pair[1].read_bytes()).pixels
    return decode(image_path.read_bytes()).pixels


def _class_ids(names: Sequence[str], classes: tuple[str, ...]) -> np.ndarray:
    index = {c: k for k, c in enumerate(classes)}
    return np.array([index[n] for n in names], np.int64)


class DetectionDataset(Dataset):
    """One source of detection samples. Subclasses implement `__len__`, `load` and `box_counts`.

    `dataset[i]` → (image, target):
      image: C×H×W tensor, torch.uint8 for 8-bit specs, torch.int32 holding 0..65535 for 16-bit ones.
      target: boxes_xyxy float32 N×4 (model-input pixels, after letterbox), class_ids int64 N (indices into
        `classes`), image_id str, has_threat bool (any box in the scan, however small), orig_hw (h, w) of the scan given to `prepare`
        (after augmentation), letterbox `LetterboxParams`.
    For train datasets an index ≥ len is epoch-tagged: index = epoch × len + i.
    """

    def __init__(
        self, *, classes: tuple[str, ...], spec: PreprocessSpec, train: bool, augment: bool, seed: int, source_index: int = 0
    ) -> None:
        self.classes = tuple(classes)
        self.spec = spec
        self.train = bool(train)
        self.augment = bool(augment) and self.train  # never augment validation data
        self.seed = int(seed)
        self.source_index = int(source_index)
        self.augment_config = AugmentConfig()

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, i: int, epoch: int) -> ScanItem:
        """Item i of `epoch` before augmentation and preprocessing."""
        raise NotImplementedError

    def box_counts(self) -> np.ndarray:
        """K box counts (expected, for on-the-fly sources) over one pass of `len(self)` items."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        n = len(self)
        if index < 0 or n == 0:
            raise IndexError(f"index {index} out of range for a source of {n} items")
        epoch, i = divmod(int(index), n)
        return self.get(i, epoch if self.train else 0)

    def get(self, i: int, epoch: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
        """Item i of `epoch` as (C×H×W tensor, target); see the class docstring."""
        item = self.load(i, epoch)
        pixels, boxes, ids = item.pixels, item.boxes_xyxy, item.class_ids
        if self.augment:
            aug_seed = int(np.random.SeedSequence([self.seed, self.source_index, epoch, i]).generate_state(1)[0])
            pixels, boxes, ids = augment_scan(pixels, boxes, ids, seed=aug_seed, config=self.augment_config)
        # Whether the bag holds contraband is decided on the scan, before boxes too small to learn from in the
        # model's input are dropped below: a bag whose only threat is small is no clean bag (evaluation's
        # false alarms and calibration's thresholds are counted on the clean ones).
        has_threat = bool(np.asarray(ids).size > 0)
        # Evaluation scores against every annotated object, in the scan's own pixels (clipped to it), however
        # small it comes out in the model's input: a missed tiny object is a miss, not left out.
        h, w = pixels.shape[:2]
        scan_boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
        scan_boxes[:, [0, 2]] = scan_boxes[:, [0, 2]].clip(0, w)
        scan_boxes[:, [1, 3]] = scan_boxes[:, [1, 3]].clip(0, h)
        real = (scan_boxes[:, 2] > scan_boxes[:, 0]) & (scan_boxes[:, 3] > scan_boxes[:, 1])
        scan_ids = np.asarray(ids, np.int64).reshape(-1)[real]
        scan_boxes = scan_boxes[real]
        arr, params = prepare(pixels, self.spec)
        # Training targets come from the boxes clipped to the scan: a box reaching past its edge must not
        # reach into the letterbox's padding (nothing is scanned there).
        boxes = letterbox_boxes(scan_boxes, params).reshape(-1, 4)
        keep = (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_PX) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_PX)
        boxes, ids = boxes[keep], scan_ids[keep]
        # torch's uint16 support is thin (no arithmetic on CPU in older builds): carry 16-bit data as int32.
        image = torch.from_numpy(arr) if arr.dtype == np.uint8 else torch.from_numpy(arr.astype(np.int32))
        target = {
            "boxes_xyxy": torch.from_numpy(np.ascontiguousarray(boxes, np.float32)),
            "class_ids": torch.from_numpy(np.ascontiguousarray(ids, np.int64)),
            "image_id": item.image_id,
            "has_threat": has_threat,
            "scan_boxes_xyxy": scan_boxes,
            "scan_class_ids": scan_ids,
            "orig_hw": (int(pixels.shape[0]), int(pixels.shape[1])),
            "letterbox": params,
        }
        return image, target


def remap_read(read: DatasetRead, classes: tuple[str, ...], class_map: dict[str, str | None] | None) -> DatasetRead:
    """A read whose box classes are all in `classes`: through `class_map` (ClassMap rules: an unmapped class
    is an error naming it), or, without a map, unchanged after checking every class its boxes use is one of
    `classes` (else `ClassMapError` naming the classes that are not)."""
    if class_map is None:
        used = dict.fromkeys(c for s in read.samples for c in s.class_names)
        outside = [c for c in used if c not in classes]
        if outside:
            raise ClassMapError(
                f"{read.path}: classes {outside} of {read.source} are not among the training classes {list(classes)}; "
                "give this source a class_map (source class → training class, or null to drop it)"
            )
        return read
    try:
        return ClassMap(tuple(classes), class_map).apply_dataset(read)
    except ClassMapError as exc:
        raise ClassMapError(f"source {read.path}: {exc}") from None


class DatasetSource(DetectionDataset):
    """A public dataset read with `read_dataset(path, format)`; images decoded at `__getitem__`."""

    def __init__(self, source: SourceConfig, **kw: Any) -> None:
        super().__init__(**kw)
        if not source.path:
            raise ValueError("a dataset source needs a path")
        read = remap_read(read_source(Path(source.path), source.format), self.classes, source.class_map)
        # Missing images are already listed in read.problems; training skips them rather than dying mid-epoch.
        # So are scans whose image-level labels name a class no box marks (SIXray positives without boxes):
        # their unmarked objects would be learned, and scored, as background.
        self.entries = _entries([s for s in read.samples if s.image_path.is_file() and not s.unboxed_labels],
                                self.classes)
        if not self.entries:
            raise DatasetLayoutError(f"{source.path}: no readable images")
        if self.spec.input_kind == "dual_energy" and raw_pair_paths(self.entries[0].image_path) is None:
            raise DatasetLayoutError(f"{source.path}: a dual-energy model needs raw/<stem>_low.png and _high.png pairs")

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, i: int, epoch: int) -> ScanItem:
        e = self.entries[i]
        return ScanItem(load_scan(e.image_path, self.spec.input_kind), e.boxes_xyxy.copy(), e.class_ids.copy(), str(e.image_path))

    def box_counts(self) -> np.ndarray:
        counts = np.zeros(len(self.classes), np.float64)
        for e in self.entries:
            np.add.at(counts, e.class_ids, 1.0)
        return counts


def _contraband(classes: tuple[str, ...], kind: str) -> tuple[str, ...]:
    out = tuple(c for c in classes if c in CONTRABAND_CLASSES)
    if not out:
        raise ValueError(f"a {kind} source makes contraband of {list(CONTRABAND_CLASSES)}; none is among the classes {list(classes)}")
    return out


def _expected(classes: tuple[str, ...], among: tuple[str, ...], per_item: float) -> np.ndarray:
    counts = np.zeros(len(classes), np.float64)
    counts[_class_ids(among, classes)] = per_item / len(among)
    return counts


class SynthSource(DetectionDataset):
    """Synthetic bags made on the fly. Train: bag index = epoch × length + i (new bags every epoch);
    eval: bag index = i (fixed; give validation its own `seed`). Dual-energy models get the raw pair,
    grey models the grey rendering, RGB models the source's palette."""

    def __init__(self, source: SourceConfig, **kw: Any) -> None:
        super().__init__(**kw)
        self.length = int(source.length)
        self.clean_fraction = float(source.clean_fraction)
        self.synth_classes = _contraband(self.classes, "synth")
        palette = "grey" if self.spec.input_kind == "grey" else source.palette
        # Bags at about the model's size: the scene's cost grows with pixels and the letterbox would shrink them
        # (below 640 px the scanner look is rendered at 640 px and shrunk: datasets.synth.look.render).
        self.config = SynthConfig(
            bags=max(1, self.length), seed=source.seed, palette=palette, size_px=max(64, self.spec.width, self.spec.height),
            classes=self.synth_classes, clean_fraction=self.clean_fraction, min_contrast=source.min_contrast,
        )

    def __len__(self) -> int:
        return self.length

    def bag_index(self, i: int, epoch: int) -> int:
        return epoch * self.length + i if self.train else i

    def load(self, i: int, epoch: int) -> ScanItem:
        index = self.bag_index(i, epoch)
        bag = make_bag(self.config, index)
        pixels = bag.raw if self.spec.input_kind == "dual_energy" else bag.image
        return ScanItem(pixels, bag.boxes_xyxy.copy(), _class_ids(bag.class_names, self.classes), f"synth:{self.config.seed}:{index}")

    def box_counts(self) -> np.ndarray:
        # Expected, not counted: counting would mean making the bags. Classes are drawn about uniformly.
        per_bag = (1.0 - self.clean_fraction) * _SYNTH_ITEMS_PER_BAG
        return self.length * _expected(self.classes, self.synth_classes, per_bag)


def read_source(path: Path, format: str = "auto") -> DatasetRead:
    """`read_dataset(path, format)`, except that a folder whose auto-detection is ambiguous but which holds
    an `annotations.json` (a set written by `xscreen synth` or `xscreen tip`, where `synth_config.json` or
    `tip.json` sits next to it) is read from that file."""
    try:
        return read_dataset(path, format)
    except DatasetLayoutError:
        if format != "auto" or not (path / "annotations.json").is_file():
            raise
        return read_dataset(path / "annotations.json", "coco")


def scan_samples(path: Path, format: str = "auto") -> list[Sample]:
    """The scans of a folder: an annotated dataset in any layout `read_source` knows, else the plain images
    in it or in its `images/` (no boxes). Samples whose image is missing, or whose image-level labels name a
    class no box marks, are left out."""
    from datasets.readers.images import header_size, list_images

    try:
        samples = list(read_source(path, format).samples)
    except DatasetLayoutError:
        if format != "auto":
            raise
        samples = []
        for p in list_images(path) or list_images(path / "images"):
            size = header_size(p)
            if isinstance(size, tuple):
                samples.append(Sample(p, size[0], size[1], np.zeros((0, 4), np.float32), (), "images"))
    return [s for s in samples if s.image_path.is_file() and not s.unboxed_labels]


def _shrink(pixels: np.ndarray, boxes_xyxy: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = pixels.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return pixels, boxes_xyxy
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = resample(pixels, *size)  # as the letterbox shrinks, at its cost
    sx, sy = size[0] / w, size[1] / h
    return out, (boxes_xyxy * np.array([sx, sy, sx, sy], np.float32)).astype(np.float32)


class TipSource(DetectionDataset):
    """Contraband projected on the fly into the scans of `path` (TIP, transmission domain).

    Item i of epoch e: scan (e × length + i) mod #scans (eval: e = 0); with probability `clean_fraction`
    nothing is projected (a bag without contraband), else 1–2 items of the contraband classes among
    `classes`. The scan's own boxes are kept only where their class is a training class (through
    `class_map` when given; other classes are dropped). Deterministic per (source seed, epoch, i).
    """

    def __init__(self, source: SourceConfig, **kw: Any) -> None:
        super().__init__(**kw)
        if not source.path:
            raise ValueError("a tip source needs a path (a folder of scans)")
        self.length = int(source.length)
        self.source_seed = int(source.seed)
        self.clean_fraction = float(source.clean_fraction)
        self.palette = source.palette
        self.tip_classes = _contraband(self.classes, "tip")
        mapping = source.class_map if source.class_map is not None else {c: c for c in self.classes}
        cmap = ClassMap(self.classes, mapping, drop_unmapped=True)
        self.scans = _entries([cmap.apply(s) for s in scan_samples(Path(source.path), source.format)], self.classes)
        if not self.scans:
            raise DatasetLayoutError(f"{source.path}: no scans found")
        if self.spec.input_kind == "dual_energy" and raw_pair_paths(self.scans[0].image_path) is None:
            raise DatasetLayoutError(f"{source.path}: a dual-energy model needs raw/<stem>_low.png and _high.png pairs")
        self.max_side = round(TIP_WORK_SCALE * max(self.spec.width, self.spec.height))

    def __len__(self) -> int:
        return self.length

    def load(self, i: int, epoch: int) -> ScanItem:
        from datasets.synth.tip import PlacementError, project_random
        from datasets.synth.tip_set import guess_palette

        epoch = epoch if self.train else 0
        scan = self.scans[(epoch * self.length + i) % len(self.scans)]
        rng = np.random.default_rng(np.random.SeedSequence([self.source_seed, epoch, i, 0x544950]))
        pixels, boxes = _shrink(load_scan(scan.image_path, self.spec.input_kind), scan.boxes_xyxy.copy(), self.max_side)
        ids = scan.class_ids
        if pixels.ndim == 3 and pixels.shape[2] == 2:
            kind, palette = "raw", "sixray"
        elif pixels.ndim == 3 and pixels.shape[2] == 3:
            if pixels.dtype != np.uint8:  # the false-colour inverse is defined on 8-bit palettes
                pixels = (pixels.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
            kind = "rgb"
            palette = self.palette if self.palette in ("sixray", "pidray") else guess_palette(pixels)
        else:
            kind, palette = "grey", "grey"
            pixels = pixels[:, :, 0] if pixels.ndim == 3 else pixels
        if rng.random() >= self.clean_fraction:
            try:
                pixels, placed = project_random(
                    rng, pixels, kind=kind, palette=palette, classes=self.tip_classes, count=1 + int(rng.integers(2))
                )
            except PlacementError:  # a scan without a bag region: it stays a clean sample
                placed = []
            if placed:
                boxes = np.concatenate([boxes, np.array([p.box_xyxy for p in placed], np.float32)])
                ids = np.concatenate([ids, _class_ids([p.class_name for p in placed], self.classes)])
        image_id = f"tip:{self.source_seed}:{epoch}:{i}:{scan.image_path.name}"
        return ScanItem(pixels, boxes.reshape(-1, 4), ids.copy(), image_id)

    def box_counts(self) -> np.ndarray:
        own = np.zeros(len(self.classes), np.float64)
        for s in self.scans:
            np.add.at(own, s.class_ids, 1.0)
        per_scan = (1.0 - self.clean_fraction) * _TIP_ITEMS_PER_SCAN
        return self.length * (own / len(self.scans) + _expected(self.classes, self.tip_classes, per_scan))


_SOURCES = {"dataset": DatasetSource, "synth": SynthSource, "tip": TipSource}


class MixedDataset(ConcatDataset):
    """The sources of one split, concatenated; `weights` are the sources' shares of a train epoch (used by
    `build_sampler` and `class_frequencies`). Index i < len is item i (epoch 0); for train, index
    epoch × len + i is item i of that epoch."""

    def __init__(self, datasets: Sequence[DetectionDataset], weights: Sequence[float], *, train: bool) -> None:
        super().__init__(list(datasets))
        self.weights = tuple(float(w) for w in weights)
        self.train = bool(train)

    def locate(self, index: int) -> tuple[int, int, int]:
        """(source index, item index within that source, epoch) of a (possibly epoch-tagged) index."""
        n = len(self)
        if index < 0 or n == 0:
            raise IndexError(f"index {index} out of range for {n} items")
        epoch, i = divmod(int(index), n)
        s = bisect.bisect_right(self.cumulative_sizes, i)
        start = self.cumulative_sizes[s - 1] if s > 0 else 0
        return s, i - start, (epoch if self.train else 0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        s, i, epoch = self.locate(index)
        return self.datasets[s].get(i, epoch)


def build_dataset(
    sources: Sequence[SourceConfig], *, classes: tuple[str, ...], spec: PreprocessSpec, train: bool, augment: bool, seed: int
) -> MixedDataset:
    """One dataset over `sources` (in order). Train mixes them by `weight` through `build_sampler`;
    `augment` applies to train only. `seed` drives augmentation; bags and projections follow each source's
    own `seed`, so a validation set is the same whatever the run's seed."""
    if not sources:
        raise ValueError("no data sources")
    parts = []
    for k, src in enumerate(sources):
        if src.kind not in _SOURCES:
            raise ValueError(f"unknown source kind {src.kind!r}; known: {sorted(_SOURCES)}")
        if src.min_contrast and src.kind != "synth":
            raise ValueError(f"source {k} ({src.kind}): min_contrast applies to synth sources only")
        parts.append(_SOURCES[src.kind](src, classes=tuple(classes), spec=spec, train=train, augment=augment, seed=seed, source_index=k))
    return MixedDataset(parts, [s.weight for s in sources], train=train)


def build_sampler(
    dataset: Dataset, sources: Sequence[SourceConfig], *, epoch_len: int | None, seed: int, rank: int = 0, world_size: int = 1
) -> WeightedSourceSampler:
    """The sampler of `dataset` (from `build_dataset` with the same `sources`): for train, sources mixed by
    weight, `epoch_len` draws per epoch (default len(dataset)), deterministic per (seed, epoch —
    `set_epoch`), rank r of `world_size` taking a disjoint shard; for eval, every item once, sharded."""
    parts = list(dataset.datasets) if isinstance(dataset, ConcatDataset) else [dataset]
    if len(parts) != len(sources):
        raise ValueError(f"the dataset has {len(parts)} sources but {len(sources)} source configs were given")
    return WeightedSourceSampler(
        [len(p) for p in parts], [s.weight for s in sources], epoch_len=epoch_len, seed=seed, rank=rank,
        world_size=world_size, train=bool(getattr(dataset, "train", True)),
    )


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """[(C×H×W, target), …] → (B×C×H×W images, [target, …]); all images share the spec's size."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(list(images)), list(targets)


def class_frequencies(dataset: Dataset) -> np.ndarray:
    """K box counts per class (float64), from annotations or expectations — no image is decoded.

    A train `MixedDataset` counts what an epoch of len(dataset) draws holds under the sources' weights
    (each source's per-item rate × its share); otherwise the sources' counts are summed.
    """
    parts = list(dataset.datasets) if isinstance(dataset, ConcatDataset) else [dataset]
    counts = [np.asarray(p.box_counts(), np.float64) for p in parts]
    weights = getattr(dataset, "weights", None)
    if not getattr(dataset, "train", False) or weights is None:
        return np.sum(counts, axis=0)
    nonempty = [w if len(p) else 0.0 for p, w in zip(parts, weights, strict=True)]
    shares = source_shares(nonempty, len(dataset))
    return np.sum([c / max(1, len(p)) * n for c, p, n in zip(counts, parts, shares, strict=True)], axis=0)
