"""Training data: shapes and dtypes per input kind, boxes through letterbox and augmentation, class maps,
weighted DDP sampling, on-the-fly synth and TIP determinism, hue-preserving augmentation, collate."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datasets.classmap import ClassMapError
from datasets.synth.pipeline import SynthConfig, make_bag, synthesise_set
from training.augment import AugmentConfig, augment_scan, transmission_gain_noise
from training.config import DataConfig, ModelConfig, SourceConfig
from training.data import (
    build_dataset,
    build_sampler,
    class_frequencies,
    collate,
    preprocess_spec_for,
)
from training.sampler import WeightedSourceSampler
from vision.colour import RAW_AIR_LEVEL, raw_to_log_attenuation
from vision.decode import encode_png

CLASSES = DataConfig().classes


def _spec(kind: str = "rgb", size: int = 64):
    return preprocess_spec_for(ModelConfig(input_kind=kind, input_size=size))


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """Three clean synthetic bags (128 px, images + raw pairs + COCO) to project contraband into."""
    out = tmp_path_factory.mktemp("scans")
    synthesise_set(SynthConfig(bags=3, seed=3, clean_fraction=1.0, size_px=128), out, progress=False)
    return out


def _coco(root: Path, names: list[str], boxes: list[tuple[str, tuple[int, int, int, int]]], size=(120, 80)) -> Path:
    """A one-image COCO set: dark background, a bright rectangle for each box. size = (width, height)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    w, h = size
    img = np.full((h, w, 3), 30, np.uint8)
    for _, (x1, y1, x2, y2) in boxes:
        img[y1:y2, x1:x2] = 230
    (root / "images" / "a.png").write_bytes(encode_png(img))
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(names)]
    anns = [
        {"id": k + 1, "image_id": 1, "category_id": names.index(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
        for k, (c, (x1, y1, x2, y2)) in enumerate(boxes)
    ]
    doc = {"images": [{"id": 1, "file_name": "images/a.png", "width": w, "height": h}], "annotations": anns, "categories": cats}
    (root / "annotations.json").write_text(json.dumps(doc))
    return root / "annotations.json"


def _bright_box(image: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(image.numpy().mean(axis=0) > 128)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# --- spec, shapes, dtypes ---------------------------------------------------------------------------


def test_preprocess_spec_for_each_kind():
    rgb, grey, dual = _spec("rgb", 96), _spec("grey", 96), _spec("dual_energy", 96)
    assert (rgb.channels, rgb.input_bits, rgb.pad_value, rgb.height, rgb.width) == (3, 8, 114, 96, 96)
    assert (grey.channels, grey.input_bits) == (1, 8)
    assert (dual.channels, dual.input_bits, dual.pad_value) == (2, 16, RAW_AIR_LEVEL)


@pytest.mark.parametrize(("kind", "channels", "dtype"), [("rgb", 3, torch.uint8), ("grey", 1, torch.uint8), ("dual_energy", 2, torch.int32)])
@pytest.mark.parametrize("train", [False, True])
def test_synth_and_tip_items_have_the_model_layout(scans, kind, channels, dtype, train):
    sources = [SourceConfig(kind="synth", seed=1, length=2), SourceConfig(kind="tip", path=str(scans), length=2, clean_fraction=0.0)]
    ds = build_dataset(sources, classes=CLASSES, spec=_spec(kind, 64), train=train, augment=train, seed=0)
    assert len(ds) == 4
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (channels, 64, 64) and image.dtype == dtype
        if dtype == torch.int32:
            assert 0 <= int(image.min()) and int(image.max()) <= 65535
        boxes = target["boxes_xyxy"]
        assert boxes.dtype == torch.float32 and boxes.shape[1] == 4
        assert target["class_ids"].dtype == torch.int64 and len(target["class_ids"]) == len(boxes)
        assert target["has_threat"] == (len(boxes) > 0)
        if len(boxes):
            assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 64).all() and (boxes[:, [1, 3]] <= 64).all()
            assert ((boxes[:, 2:] - boxes[:, :2]) >= 2).all()
            assert int(target["class_ids"].max()) < len(CLASSES)
        h, w = target["orig_hw"]
        lb = target["letterbox"]
        assert (lb.src_height, lb.src_width) == (h, w) and max(lb.dst_width, lb.dst_height) == 64
    # TIP with clean_fraction 0 into a 128-px bag: every item got contraband.
    assert all(ds[i][1]["has_threat"] for i in (2, 3))


def test_collate_stacks_images_and_keeps_targets(scans):
    ds = build_dataset([SourceConfig(kind="synth", seed=2, length=3)], classes=CLASSES, spec=_spec("rgb", 64), train=False, augment=False, seed=0)
    images, targets = collate([ds[i] for i in range(3)])
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.uint8
    assert [t["image_id"] for t in targets] == [ds[i][1]["image_id"] for i in range(3)]
    assert torch.equal(images[1], ds[1][0])


# --- boxes through letterbox and augmentation; class maps ------------------------------------------


def test_box_covers_the_bright_rectangle_after_letterbox(tmp_path):
    _coco(tmp_path, ["cocaine"], [("cocaine", (40, 20, 90, 50))])
    src = SourceConfig(kind="dataset", path=str(tmp_path), class_map={"cocaine": "drug_package"})
    ds = build_dataset([src], classes=CLASSES, spec=_spec("rgb", 96), train=False, augment=False, seed=0)
    image, target = ds[0]
    assert target["orig_hw"] == (80, 120) and target["letterbox"].pad_y > 0  # landscape: padded top and bottom
    (box,) = target["boxes_xyxy"].tolist()
    assert np.allclose(box, _bright_box(image), atol=1.0)
    assert target["class_ids"].tolist() == [CLASSES.index("drug_package")]


def test_augmented_boxes_follow_the_rectangle(tmp_path):
    _coco(tmp_path, ["cocaine"], [("cocaine", (40, 20, 90, 50))])
    src = SourceConfig(kind="dataset", path=str(tmp_path), class_map={"cocaine": "drug_package"})
    ds = build_dataset([src], classes=CLASSES, spec=_spec("rgb", 96), train=True, augment=True, seed=0)
    seen = set()
    for epoch in range(12):
        image, target = ds[epoch * len(ds)]
        seen.add(image.numpy().tobytes())
        if len(target["boxes_xyxy"]) == 0:  # the crop may cut the box below min_visibility
            continue
        (box,) = target["boxes_xyxy"].tolist()
        assert np.allclose(box, _bright_box(image), atol=1.5)
    assert len(seen) > 6  # augmentation varies per epoch


def test_class_map_remaps_drops_and_names_unmapped(tmp_path):
    _coco(tmp_path, ["cocaine", "gun"], [("cocaine", (10, 10, 40, 40)), ("gun", (60, 20, 100, 60))])
    ok = SourceConfig(kind="dataset", path=str(tmp_path), class_map={"cocaine": "drug_package", "gun": None})
    ds = build_dataset([ok], classes=CLASSES, spec=_spec("rgb", 64), train=False, augment=False, seed=0)
    assert ds[0][1]["class_ids"].tolist() == [CLASSES.index("drug_package")]
    assert class_frequencies(ds).tolist() == [1.0 if c == "drug_package" else 0.0 for c in CLASSES]
    partial = SourceConfig(kind="dataset", path=str(tmp_path), class_map={"cocaine": "drug_package"})
    with pytest.raises(ClassMapError, match="gun"):
        build_dataset([partial], classes=CLASSES, spec=_spec(), train=False, augment=False, seed=0)
    bare = SourceConfig(kind="dataset", path=str(tmp_path))
    with pytest.raises(ClassMapError, match=r"'cocaine', 'gun'"):
        build_dataset([bare], classes=CLASSES, spec=_spec(), train=False, augment=False, seed=0)


# --- sampler ---------------------------------------------------------------------------------------


def test_weighted_sampler_shares_follow_weights():
    sampler = WeightedSourceSampler([300, 300], [3.0, 1.0], epoch_len=400, seed=0)
    shares = Counter(int(i % 600 >= 300) for i in sampler)
    assert abs(shares[0] / 400 - 0.75) < 0.1 and abs(shares[1] / 400 - 0.25) < 0.1


def test_sampler_epochs_are_deterministic_and_differ():
    a = WeightedSourceSampler([50, 70], [1.0, 2.0], epoch_len=100, seed=7)
    b = WeightedSourceSampler([50, 70], [1.0, 2.0], epoch_len=100, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    first = [i % 120 for i in a]
    a.set_epoch(4)
    assert [i % 120 for i in a] != first
    assert all(i // 120 == 4 for i in a)  # indices carry their epoch


def test_ddp_shards_are_disjoint_and_cover_the_epoch():
    shards = []
    for rank in range(3):
        s = WeightedSourceSampler([400, 400], [3.0, 1.0], epoch_len=400, seed=1, rank=rank, world_size=3)
        s.set_epoch(2)
        shards.append(list(s))
    assert len({len(x) for x in shards}) == 1 and sum(map(len, shards)) == 402  # rounded up: equal steps per rank
    flat = [i for x in shards for i in x]
    assert len(set(flat)) == len(flat)
    whole = WeightedSourceSampler([400, 400], [3.0, 1.0], epoch_len=402, seed=1)
    whole.set_epoch(2)
    assert sorted(flat) == sorted(whole)


def test_build_sampler_over_a_mixed_dataset(scans):
    sources = [SourceConfig(kind="synth", seed=1, length=6, weight=3.0), SourceConfig(kind="tip", path=str(scans), length=6, weight=1.0)]
    ds = build_dataset(sources, classes=CLASSES, spec=_spec("rgb", 64), train=True, augment=False, seed=0)
    sampler = build_sampler(ds, sources, epoch_len=8, seed=0)
    sampler.set_epoch(1)
    located = [ds.locate(i) for i in sampler]
    assert Counter(s for s, _, _ in located) == {0: 6, 1: 2}
    assert {e for _, _, e in located} == {1}
    val = build_dataset(sources, classes=CLASSES, spec=_spec("rgb", 64), train=False, augment=False, seed=0)
    shards = [list(build_sampler(val, sources, epoch_len=None, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(12))


# --- on-the-fly sources ----------------------------------------------------------------------------


def test_synth_is_deterministic_and_new_each_train_epoch():
    src = [SourceConfig(kind="synth", seed=5, length=3)]
    a = build_dataset(src, classes=CLASSES, spec=_spec("dual_energy", 64), train=True, augment=True, seed=0)
    b = build_dataset(src, classes=CLASSES, spec=_spec("dual_energy", 64), train=True, augment=True, seed=0)
    assert torch.equal(a[4][0], b[4][0]) and a[4][1]["image_id"] == "synth:5:4"
    assert not torch.equal(a[1][0], a[4][0])  # epoch 1 makes bag 4, not bag 1 again
    val = build_dataset(src, classes=CLASSES, spec=_spec("dual_energy", 64), train=False, augment=True, seed=0)
    assert val[1][1]["image_id"] == "synth:5:1" and torch.equal(val[1][0], val[1 + 3][0])  # fixed bags, no augmentation


def test_synth_min_contrast_reaches_the_bags_and_only_synth_takes_it(scans):
    src = SourceConfig(kind="synth", seed=5, length=2, min_contrast=0.3)
    ds = build_dataset([src], classes=CLASSES, spec=_spec("rgb", 64), train=False, augment=False, seed=0)
    assert ds.datasets[0].config.min_contrast == 0.3
    with pytest.raises(ValueError, match="min_contrast applies to synth sources only"):
        build_dataset([SourceConfig(kind="synth", seed=5, length=2),
                       SourceConfig(kind="tip", path=str(scans), length=2, min_contrast=0.3)],
                      classes=CLASSES, spec=_spec("rgb", 64), train=True, augment=False, seed=0)


def test_tip_projects_allowed_classes_deterministically(scans):
    classes = ("cash_bundle", "ivory", "knife")
    src = [SourceConfig(kind="tip", path=str(scans), length=6, clean_fraction=0.0, seed=2)]
    ds = build_dataset(src, classes=classes, spec=_spec("rgb", 96), train=True, augment=False, seed=0)
    again = build_dataset(src, classes=classes, spec=_spec("rgb", 96), train=True, augment=False, seed=0)
    found = []
    for i in range(6):
        image, target = ds[i]
        assert torch.equal(image, again[i][0])
        found += target["class_ids"].tolist()
    assert found and set(found) <= {0, 1}  # never "knife": TIP makes contraband only
    assert not torch.equal(ds[0][0], ds[6][0])  # epoch 1: the same scan, another projection
    clean = build_dataset([SourceConfig(kind="tip", path=str(scans), length=4, clean_fraction=1.0)], classes=classes,
                          spec=_spec("rgb", 96), train=False, augment=False, seed=0)
    assert not any(clean[i][1]["has_threat"] for i in range(4))
    freq = class_frequencies(ds)
    assert freq[2] == 0 and freq[0] == pytest.approx(freq[1]) and freq.sum() == pytest.approx(6 * 1.5)


# --- augmentation keeps X-ray meaning --------------------------------------------------------------


def _hue_hist(rgb: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float64)
    # Each pixel counts by how coloured it is (saturation, fading out near black and white) rather than by a
    # hard cut-off, so noise on pale pixels near a threshold cannot flip them in and out of the histogram.
    v = hsv[..., 2]
    weight = (hsv[..., 1] / 255.0) * np.clip((v - 20) / 40, 0, 1) * np.clip((252 - v) / 20, 0, 1)
    h = np.histogram(hsv[..., 0], bins=18, range=(0, 180), weights=weight)[0]
    return h / h.sum()


def test_augmentation_never_changes_hue():
    bag = make_bag(SynthConfig(size_px=128, seed=4, palette="sixray", clean_fraction=0.0), 0)
    before = _hue_hist(bag.image)
    cfg = AugmentConfig(p_affine=0.0, p_crop=0.0, p_gain=1.0, p_noise=1.0)  # crops would change which pixels count
    for seed in range(6):
        out, _, _ = augment_scan(bag.image, bag.boxes_xyxy, np.zeros(len(bag.boxes_xyxy), np.int64), seed=seed, config=cfg)
        assert not np.array_equal(out, bag.image)
        assert np.abs(_hue_hist(out) - before).sum() < 0.1
    # Pixel by pixel (no geometry), at the strongest gain and noise: hue moves by rounding only.
    h0 = cv2.cvtColor(bag.image, cv2.COLOR_RGB2HSV).astype(np.int32)
    coloured = (h0[..., 1] > 60) & (h0[..., 2] > 40) & (h0[..., 2] < 250)
    for gain in (0.85, 1.15):
        out = transmission_gain_noise(bag.image, np.random.default_rng(0), gain=gain, noise=0.05)
        d = np.abs(cv2.cvtColor(out, cv2.COLOR_RGB2HSV)[..., 0].astype(np.int32) - h0[..., 0])
        assert np.minimum(d, 180 - d)[coloured].mean() < 0.5  # per-channel noise of this size gives ~2.4
    # The histogram measure would catch a colour change: a small hue shift or a per-channel gain.
    hsv = cv2.cvtColor(bag.image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + 8) % 180
    assert np.abs(_hue_hist(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)) - before).sum() > 0.3
    tinted = (bag.image * np.array([1.0, 1.0, 0.9])).astype(np.uint8)
    assert np.abs(_hue_hist(tinted) - before).sum() > 0.3


def test_raw_gain_keeps_the_material_ratio_and_air():
    bag = make_bag(SynthConfig(size_px=96, seed=6), 0)
    out = transmission_gain_noise(bag.raw, np.random.default_rng(0), gain=1.2, noise=0.0)
    before, after = raw_to_log_attenuation(bag.raw), raw_to_log_attenuation(out)
    dense = before[..., 1] > 0.5
    ratio_before = before[..., 0][dense] / before[..., 1][dense]
    ratio_after = after[..., 0][dense] / after[..., 1][dense]
    assert np.median(np.abs(ratio_after - ratio_before)) < 0.01
    assert np.median(after[..., 1][dense] / before[..., 1][dense]) == pytest.approx(1.2, abs=0.02)
    air = before.mean(axis=2) < 0.01
    change = out[air].astype(np.float64) - bag.raw[air]
    assert abs(change.mean()) < 50 and np.abs(change).max() < 0.01 * RAW_AIR_LEVEL  # air stays air (its noise scales by k)


@pytest.mark.parametrize("kind", ["rgb", "grey", "raw"])
def test_augmentation_keeps_boxes_valid(kind):
    bag = make_bag(SynthConfig(size_px=128, seed=8, clean_fraction=0.0), 0)
    pixels = {"rgb": bag.image, "grey": cv2.cvtColor(bag.image, cv2.COLOR_RGB2GRAY), "raw": bag.raw}[kind]
    ids = np.arange(len(bag.boxes_xyxy), dtype=np.int64)
    assert len(ids) > 0
    for seed in range(10):
        out, boxes, out_ids = augment_scan(pixels, bag.boxes_xyxy, ids, seed=seed)
        assert out.dtype == pixels.dtype and out.ndim == pixels.ndim and out.shape[2:] == pixels.shape[2:]
        h, w = out.shape[:2]
        assert len(boxes) == len(out_ids) and set(out_ids.tolist()) <= set(ids.tolist())
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_datasets_pickle_for_spawned_workers(tmp_path, scans):
    _coco(tmp_path, ["cocaine"], [("cocaine", (40, 20, 90, 50))])
    sources = [
        SourceConfig(kind="dataset", path=str(tmp_path), class_map={"cocaine": "drug_package"}),
        SourceConfig(kind="tip", path=str(scans), length=2),
        SourceConfig(kind="synth", length=2),
    ]
    ds = build_dataset(sources, classes=CLASSES, spec=_spec("rgb", 64), train=True, augment=True, seed=0)
    copy = pickle.loads(pickle.dumps(ds))
    for i in (0, 1, 3, len(ds) + 2):
        assert torch.equal(copy[i][0], ds[i][0])
