"""From a seed to finished synthetic bags: scene → dual-energy render → false colour → files.

One bag is a pure function of (set seed, bag index): its generator is seeded with
`SeedSequence([seed, index])`, so a set is byte-identical whatever the number of worker processes, and the
trainer can make bag `i` on the fly without making bags 0…i−1.

Per bag the set holds `images/<stem>.png` (false colour, or grey), `raw/<stem>_low.png` and
`raw/<stem>_high.png` (16-bit detector counts, air ≈ 60000), `masks/<stem>_<k>.png` (one per contraband
object, 0/255), `meta/<stem>.json` (materials, concealments, boxes, seed); per set `annotations.json`
(COCO, boxes = visible extent of each object) and `yolo/` (labels, classes.txt, data.yaml).
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from datasets.synth.bags import BagConfig, BagScene, generate_bag
from datasets.synth.look import ScannerLook, look_for, render
from datasets.synth.materials import CONTRABAND_CLASSES
from vision.colour import render_false_colour, render_grey
from vision.decode import encode_png

Palette = Literal["sixray", "pidray", "grey"]
#: Tube voltages the spectrum model takes (spekpy: 10–500 kV); the energy bins start at 10 keV.
MIN_KVP, MAX_KVP = 10.0, 500.0
PALETTES: tuple[Palette, ...] = ("sixray", "pidray", "grey")


@dataclass(frozen=True)
class SynthConfig:
    """A synthetic set.

    palette: one of PALETTES, or "mixed" (each bag draws sixray or pidray with equal odds).
    size_px: the long (belt-wise) side; scans are 4:3 landscape, so the height is 3/4 of it.
    look: the scanner's noise, display processing and file format (`datasets.synth.look`); None = the
        look calibrated for the bag's palette.
    min_contrast: for training sets: contraband objects whose contrast to their clutter
        (`BagScene.contrast`) comes out below this are taken out of the bag again (`BagScene.without`),
        so that no label asks a model to find what the scan does not show; a bag may end up clean. 0 (the
        default, and what test sets use) keeps every object.
    """

    bags: int = 100
    seed: int = 0
    palette: Literal["sixray", "pidray", "grey", "mixed"] = "sixray"
    size_px: int = 768
    classes: tuple[str, ...] = CONTRABAND_CLASSES
    clean_fraction: float = 0.3
    look: ScannerLook | None = None
    kvp: float = 150.0
    n_clutter: tuple[int, int] = (8, 36)
    n_contraband: tuple[int, int] = (1, 3)
    min_contrast: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.classes, str):  # one class given bare, not a tuple of its letters
            object.__setattr__(self, "classes", (self.classes,))
        if not self.min_contrast >= 0.0:
            raise ValueError(f"min_contrast must be ≥ 0, got {self.min_contrast}")
        if self.bags < 0:
            raise ValueError(f"bags must be ≥ 0, got {self.bags}")
        if self.seed < 0:  # SeedSequence takes non-negative entropy only
            raise ValueError(f"seed must be ≥ 0, got {self.seed}")
        if self.size_px < 64:
            raise ValueError(f"size_px must be ≥ 64, got {self.size_px}")
        if not MIN_KVP < self.kvp <= MAX_KVP:
            raise ValueError(f"kvp must be in ({MIN_KVP:g}, {MAX_KVP:g}], got {self.kvp}")
        if self.palette not in (*PALETTES, "mixed"):
            raise ValueError(f"palette must be one of {[*PALETTES, 'mixed']}, got {self.palette!r}")
        unknown = [c for c in self.classes if c not in CONTRABAND_CLASSES]
        if unknown:
            raise ValueError(f"unknown contraband classes {unknown}; known: {list(CONTRABAND_CLASSES)}")
        # The bag-level checks (clean_fraction, the count ranges), here rather than in the first worker.
        self.bag_config()

    def bag_config(self) -> BagConfig:
        width = self.size_px
        height = int(round(width * 0.75))
        return BagConfig(
            size_px=(height, width),
            n_clutter=self.n_clutter,
            contraband_classes=self.classes,
            n_contraband=self.n_contraband,
            clean_fraction=self.clean_fraction,
        )


@dataclass(frozen=True)
class SynthBag:
    """One finished bag.

    image: H×W×3 uint8 RGB false colour (or H×W uint8 grey); raw: H×W×2 uint16 (low, high);
    boxes_xyxy: N×4 float32, visible extent of each contraband object; class_names: N names.
    """

    index: int
    stem: str
    palette: str
    image: np.ndarray
    raw: np.ndarray
    scene: BagScene
    boxes_xyxy: np.ndarray
    class_names: tuple[str, ...]
    seed: int = 0
    extra: dict = field(default_factory=dict)


def bag_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of bag `index` in the set of `seed` (independent of every other bag)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def render_image(raw: np.ndarray, palette: str) -> np.ndarray:
    """Raw dual-energy counts (H×W×2 uint16) as the bare palette shows them: false colour RGB or grey
    (no display processing; `datasets.synth.look.display` adds the scanner's)."""
    if palette == "grey":
        return render_grey(raw, channel="high")
    return render_false_colour(raw, palette=palette)


def make_bag(config: SynthConfig, index: int) -> SynthBag:
    """Make bag `index` of the set `config` (deterministic)."""
    from datasets.synth.physics import build_scanner

    rng = bag_rng(config.seed, index)
    scene = generate_bag(rng, config.bag_config())
    scanner = build_scanner(kvp=config.kvp)
    if config.min_contrast > 0.0:
        faint = [o for o in scene.contraband if scene.contrast(o, scanner=scanner) < config.min_contrast]
        if faint:
            scene = scene.without(faint)
    # "mixed" draws its palette first: the scanner look (noise included) belongs to the palette.
    palette = config.palette if config.palette != "mixed" else ("sixray", "pidray")[int(rng.integers(2))]
    look = config.look or look_for(palette)
    raw, image = render(scene.basis_cm, palette, look, rng, scanner)
    objs = scene.contraband
    boxes = np.array([o.box_xyxy for o in objs], np.float32).reshape(-1, 4)
    return SynthBag(
        index=index,
        stem=f"bag_{config.seed:06d}_{index:06d}",
        palette=palette,
        image=image,
        raw=raw,
        scene=scene,
        boxes_xyxy=boxes,
        class_names=tuple(str(o.class_name) for o in objs),
        seed=config.seed,
    )


def bag_metadata(bag: SynthBag, config: SynthConfig) -> dict:
    """What a bag is made of, as plain data (written to meta/<stem>.json)."""
    scene = bag.scene
    objects = []
    for o in scene.objects:
        objects.append(
            {
                "name": o.name,
                "class": o.class_name,
                "material": o.material,
                "concealment": o.concealment,
                "box_xyxy": [int(v) for v in o.box_xyxy],
            }
        )
    return {
        "stem": bag.stem,
        "set_seed": config.seed,
        "index": bag.index,
        "palette": bag.palette,
        "container": scene.container,
        "pixel_mm": round(float(scene.pixel_mm), 6),
        "fan_beam": scene.fan.to_dict() if scene.fan is not None else None,
        "width": int(bag.raw.shape[1]),
        "height": int(bag.raw.shape[0]),
        "scanner": {"kvp": config.kvp, **(config.look or look_for(bag.palette)).to_dict()},
        "objects": objects,
    }


def _write_png(path: Path, pixels: np.ndarray, compression: int = 1) -> None:
    path.write_bytes(encode_png(pixels, compression=compression))


def write_bag(bag: SynthBag, config: SynthConfig, out_dir: Path) -> dict:
    """Write one bag's files under `out_dir`; returns its metadata.

    The raw 16-bit counts are stored uncompressed: their low bits are quantum noise, zlib saves ~20 % of
    their size at 9x the time, and encoding them was the largest single cost of a bag.
    """
    _write_png(out_dir / "images" / f"{bag.stem}.png", bag.image)
    _write_png(out_dir / "raw" / f"{bag.stem}_low.png", np.ascontiguousarray(bag.raw[:, :, 0]), compression=0)
    _write_png(out_dir / "raw" / f"{bag.stem}_high.png", np.ascontiguousarray(bag.raw[:, :, 1]), compression=0)
    meta = bag_metadata(bag, config)
    for k, obj in enumerate(bag.scene.contraband):
        mask = np.zeros(obj.image_hw, np.uint8)
        (y0, x0), (h, w) = obj.offset_yx, obj.mask_crop.shape
        mask[y0 : y0 + h, x0 : x0 + w][obj.mask_crop] = 255
        _write_png(out_dir / "masks" / f"{bag.stem}_{k:02d}.png", mask)
    (out_dir / "meta" / f"{bag.stem}.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return meta


def _init_worker(kvp: float) -> None:
    from datasets.synth.physics import build_scanner

    cv2.setNumThreads(1)  # one process per core: nested threads only contend
    build_scanner(kvp=kvp)  # the table, once per process


def _worker(args: tuple[SynthConfig, int, str]) -> dict:
    config, index, out = args
    return write_bag(make_bag(config, index), config, Path(out))


def _iter_bags(config: SynthConfig, out_dir: Path, workers: int) -> Iterator[dict]:
    jobs = [(config, i, str(out_dir)) for i in range(config.bags)]
    if workers <= 1:
        for job in jobs:
            yield _worker(job)
        return
    # spawn, not fork: a forked child inherits OpenCV's and OpenMP's thread pools with their locks held
    # by threads that no longer exist, and hangs on its first parallel call.
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(config.kvp,)) as pool:
        yield from pool.imap(_worker, jobs, chunksize=2)


def synthesise_set(config: SynthConfig, out_dir: Path, *, workers: int = 1, progress: bool = True) -> Path:
    """Make `config.bags` bags under `out_dir` with `workers` processes; returns the COCO file's path.

    The output is byte-identical for the same config, whatever `workers` is.
    """
    from datasets.sample import Sample
    from datasets.synth.physics import build_scanner
    from datasets.writers import write_coco, write_yolo

    out_dir = Path(out_dir)
    for sub in ("images", "raw", "masks", "meta"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    if workers <= 1:
        build_scanner(kvp=config.kvp)
    metas: list[dict] = []
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns) as bar:
            task = bar.add_task("bags", total=config.bags)
            for meta in _iter_bags(config, out_dir, workers):
                metas.append(meta)
                bar.advance(task)
    else:
        metas = list(_iter_bags(config, out_dir, workers))
    samples = [
        Sample(
            image_path=out_dir / "images" / f"{m['stem']}.png",
            width=m["width"],
            height=m["height"],
            boxes_xyxy=np.array([o["box_xyxy"] for o in m["objects"] if o["class"]], np.float32).reshape(-1, 4),
            class_names=tuple(o["class"] for o in m["objects"] if o["class"]),
            source="xscreen-synth",
        )
        for m in metas
    ]
    coco = out_dir / "annotations.json"
    write_coco(samples, CONTRABAND_CLASSES, coco, image_root=out_dir)
    write_yolo(samples, CONTRABAND_CLASSES, out_dir / "yolo")
    (out_dir / "synth_config.json").write_text(json.dumps(asdict(config), indent=1, sort_keys=True))
    return coco


def parse_classes(values: Sequence[str] | None) -> tuple[str, ...]:
    """Class names from a CLI list (each item may itself be comma-separated); all classes when empty."""
    if not values:
        return CONTRABAND_CLASSES
    out: list[str] = []
    for v in values:
        out += [c.strip() for c in v.split(",") if c.strip()]
    return tuple(out)
