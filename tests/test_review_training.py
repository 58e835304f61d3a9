"""Review of the path from a labelled scan to the loss, each step checked against an independent computation:
augmentation moves boxes as it moves pixels, the letterbox maps boxes as it maps pixels, class ids stay with
their boxes, assignment gives each box positives inside it, decoding is in input pixels with the right
stride and (x, y) order, the loss is minimal for perfect predictions and normalised as documented, and the
EMA averages as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.assign import TaskAlignedAssigner, pad_targets
from training.augment import AugmentConfig, augment_scan, transmission_gain_noise
from training.data import DetectionDataset, ScanItem
from training.ema import ModelEMA
from training.head import STRIDES, HeadMaps, make_anchor_points, xyxy_to_distances
from training.loss import build_loss
from training.model import build_detector
from vision.colour import RAW_AIR_LEVEL, RAW_DARK_LEVEL
from vision.preprocess import PreprocessSpec

GEOMETRY_ONLY = dict(p_gain=0.0, p_noise=0.0)


def _extent(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


# --- augmentation -----------------------------------------------------------------------------------------


def test_augment_moves_each_box_with_its_pixels_and_keeps_its_class():
    """Box k is painted black in channel k only, so each returned box can be compared with the extent of
    its own class's pixels (a class id detached from its box would be compared with another box)."""
    h, w = 120, 160
    boxes = np.array([[5, 5, 40, 30], [60, 50, 150, 110], [100, 10, 130, 40]], np.float32)
    config = AugmentConfig(p_crop=0.7, **GEOMETRY_ONLY)
    seen = 0
    for seed in range(60):
        img = np.full((h, w, 3), 255, np.uint8)
        for k, b in enumerate(boxes.astype(int)):
            img[b[1] : b[3], b[0] : b[2], k] = 0
        out, new_boxes, ids = augment_scan(img, boxes, np.array([0, 1, 2]), seed=seed, config=config)
        assert new_boxes.dtype == np.float32 and ids.dtype == np.int64 and len(new_boxes) == len(ids)
        for box, c in zip(new_boxes, ids, strict=True):
            np.testing.assert_allclose(box, _extent(out[..., c] < 128), atol=1.0, err_msg=f"seed {seed}, class {c}")
            seen += 1
    assert seen > 100


@pytest.mark.parametrize("kind", ["grey", "grey1", "raw"])
def test_augment_geometry_for_grey_and_raw_scans(kind):
    h, w = 90, 130
    box = np.array([[20, 15, 70, 60]], np.float32)
    for seed in range(25):
        if kind == "raw":
            img = np.full((h, w, 2), RAW_AIR_LEVEL, np.uint16)
            img[15:60, 20:70] = 5000
        else:
            img = np.full((h, w) if kind == "grey" else (h, w, 1), 255, np.uint8)
            img[15:60, 20:70] = 0
        out, new_boxes, ids = augment_scan(img, box, np.array([4]), seed=seed, config=AugmentConfig(**GEOMETRY_ONLY))
        assert out.shape[2:] == img.shape[2:] and out.dtype == img.dtype
        if len(new_boxes):
            plane = out if out.ndim == 2 else out[..., 0]
            dark = plane < (RAW_AIR_LEVEL // 2 if kind == "raw" else 128)
            np.testing.assert_allclose(new_boxes[0], _extent(dark), atol=1.0)
            assert ids.tolist() == [4]


def test_photometric_augment_keeps_the_material():
    """raw: log-attenuation scaled alike in both layers (the low/high ratio is kept); rgb: one darkness
    factor for all channels (channel ratios of the darkness kept)."""
    raw = np.stack([np.full((8, 8), 30000), np.full((8, 8), 40000)], -1).astype(np.uint16)
    out = transmission_gain_noise(raw, np.random.default_rng(0), gain=1.3, noise=0.0)

    def log_att(v):
        return -np.log((v.astype(np.float64) - RAW_DARK_LEVEL) / (RAW_AIR_LEVEL - RAW_DARK_LEVEL))

    np.testing.assert_allclose(log_att(out[0, 0]), 1.3 * log_att(raw[0, 0]), rtol=1e-3)
    rgb = np.zeros((8, 8, 3), np.uint8) + np.array([250, 180, 100], np.uint8)
    out = transmission_gain_noise(rgb, np.random.default_rng(0), gain=1.1, noise=0.0)
    d_in, d_out = 255.0 - rgb[0, 0].astype(float), 255.0 - out[0, 0].astype(float)
    np.testing.assert_allclose(d_out, 1.1 * d_in, atol=0.6)


# --- dataset item: letterbox of boxes, filtering ---------------------------------------------------------


class _OneScan(DetectionDataset):
    def __init__(self, item: ScanItem, **kw):
        super().__init__(**kw)
        self.item = item

    def __len__(self) -> int:
        return 1

    def load(self, i: int, epoch: int) -> ScanItem:
        return self.item

    def box_counts(self) -> np.ndarray:
        return np.zeros(len(self.classes))


@pytest.mark.parametrize("augment", [False, True])
def test_item_boxes_match_the_letterboxed_pixels_and_keep_their_classes(augment):
    h, w = 300, 200
    img = np.full((h, w, 3), 255, np.uint8)
    boxes = np.array([[10, 20, 60, 100], [100, 150, 190, 290], [150, 5, 151, 6]], np.float32)  # the last: sub-pixel
    for k, b in enumerate(boxes[:2].astype(int)):
        img[b[1] : b[3], b[0] : b[2], k] = 0
    spec = PreprocessSpec(input_kind="rgb", input_bits=8, height=128, width=128, pad_value=255)  # pad: not "dark"
    for epoch in range(6 if augment else 1):
        ds = _OneScan(ScanItem(img, boxes, np.array([0, 1, 2]), "x"), classes=("a", "b", "c"), spec=spec,
                      train=True, augment=augment, seed=0)
        ds.augment_config = AugmentConfig(**GEOMETRY_ONLY)
        image, target = ds.get(0, epoch)
        arr = image.numpy()
        assert arr.shape == (3, 128, 128) and target["has_threat"]
        assert 2 not in target["class_ids"].tolist()  # the 1-px box is below MIN_BOX_PX in the input
        assert len(target["class_ids"]) >= 1
        for box, c in zip(target["boxes_xyxy"].numpy(), target["class_ids"].tolist(), strict=True):
            # Resampled edges are grey: the half-way threshold between black and white marks the edge.
            np.testing.assert_allclose(box, _extent(arr[c] < 128), atol=1.0, err_msg=f"epoch {epoch}, class {c}")


# --- decoding -----------------------------------------------------------------------------------------------


def _maps_from_points(hws, per_point_cls: torch.Tensor, per_point_box: torch.Tensor) -> HeadMaps:
    """Per-point A×K class logits and A×4R box logits → one image's HeadMaps (levels row-major)."""
    cls, box, o = [], [], 0
    for h, w in hws:
        n = h * w
        cls.append(per_point_cls[o : o + n].T.reshape(1, -1, h, w))
        box.append(per_point_box[o : o + n].T.reshape(1, -1, h, w))
        o += n
    return HeadMaps(cls, box, STRIDES)


def _dfl_logits(distances_bins: torch.Tensor, reg_max: int) -> torch.Tensor:
    """A×4 distances in bins (within [0, reg_max−1]) → A×4·R logits whose expectation is exactly them."""
    d = distances_bins.clamp(0, reg_max - 1 - 1e-4)
    left = d.floor().long()
    w_right = d - left
    probs = torch.zeros(*d.shape, reg_max)
    probs.scatter_(-1, left[..., None], (1 - w_right)[..., None])
    probs.scatter_add_(-1, (left + 1)[..., None], w_right[..., None])
    return torch.log(probs.clamp(min=1e-30)).reshape(d.shape[0], -1)


def test_decode_gives_input_pixels_with_the_stride_and_xy_order():
    """A non-square input so that a swapped x/y or H/W shows; each side's bin differs so a swapped ltrb
    order shows."""
    model = build_detector(size="n", num_classes=2, in_channels=3, input_kind="rgb", input_bits=8, input_hw=(64, 96))
    hws = [(64 // s, 96 // s) for s in STRIDES]
    a = sum(h * w for h, w in hws)
    r = model.reg_max
    dist_bins = torch.tensor([1.0, 2.0, 3.0, 4.5]).expand(a, 4)
    cls = torch.full((a, 2), -3.0)
    cls[:, 1] = 2.0
    boxes, scores = model.decode(_maps_from_points(hws, cls, _dfl_logits(dist_bins, r)))
    expected = []
    for (h, w), s in zip(hws, STRIDES, strict=True):
        for i in range(h):
            for j in range(w):
                cx, cy = (j + 0.5) * s, (i + 0.5) * s
                expected.append([cx - 1.0 * s, cy - 2.0 * s, cx + 3.0 * s, cy + 4.5 * s])
    torch.testing.assert_close(boxes[0], torch.tensor(expected), atol=1e-3, rtol=0)
    torch.testing.assert_close(scores[0, :, 0], torch.sigmoid(torch.tensor(-3.0)).expand(a))
    torch.testing.assert_close(scores[0, :, 1], torch.sigmoid(torch.tensor(2.0)).expand(a))


# --- assignment ---------------------------------------------------------------------------------------------


def _grid(hw=(64, 64)):
    hws = [(hw[0] // s, hw[1] // s) for s in STRIDES]
    points, strides = make_anchor_points(hws, STRIDES)
    return hws, points, strides


def test_assigner_gives_each_box_positives_inside_it_with_its_class():
    hws, points, strides = _grid((96, 96))
    a = points.shape[0]
    gt = [torch.tensor([[4.0, 6.0, 44.0, 40.0], [30.0, 30.0, 90.0, 80.0], [70.0, 8.0, 73.0, 12.0]]),
          torch.zeros(0, 4), torch.tensor([[10.0, 50.0, 60.0, 90.0]])]
    ids = [torch.tensor([2, 0, 1]), torch.zeros(0, dtype=torch.long), torch.tensor([1])]
    boxes, labels, valid = pad_targets(gt, ids, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    pred_dist = torch.rand(3, a, 4, generator=g) * 4 * strides
    pred_boxes = torch.cat((points - pred_dist[..., :2], points + pred_dist[..., 2:]), -1)
    pred_scores = torch.rand(3, a, 3, generator=g)
    assigner = TaskAlignedAssigner(num_classes=3, top_k=10)
    out = assigner(pred_scores, pred_boxes, points, strides, boxes, labels, valid)
    again = assigner(pred_scores, pred_boxes, points, strides, boxes, labels, valid)
    for x, y in zip(out, again, strict=True):
        assert torch.equal(x, y)  # deterministic
    assert not out.fg_mask[1].any() and (out.target_scores[1] == 0).all()
    for b in (0, 2):
        for m in range(len(gt[b])):
            mine = out.fg_mask[b] & (out.gt_index[b] == m)
            assert 1 <= int(mine.sum()) <= 10, (b, m)
            assert (out.target_labels[b, mine] == ids[b][m]).all()
            torch.testing.assert_close(out.target_boxes_xyxy[b, mine], gt[b][m].expand(int(mine.sum()), 4))
            box = gt[b][m]
            if float((box[2:] - box[:2]).min()) >= 8:  # a box holding cell centres: positives lie inside it
                p = points[mine]
                assert ((p > box[:2]) & (p < box[2:])).all(), (b, m)
            else:  # a tiny box: within one stride of its centre
                centre = (box[:2] + box[2:]) / 2
                assert ((points[mine] - centre).abs().amax(-1) < strides[mine, 0]).all()
        assert out.gt_index[b][out.fg_mask[b]].max() < len(gt[b])  # never a padded row
    assert (out.target_scores <= 1).all() and (out.target_scores[~out.fg_mask] == 0).all()


# --- loss -----------------------------------------------------------------------------------------------------


def _perfect_maps(hws, points, strides, gt_box, reg_max, k, cls_logit=-6.0):
    a = points.shape[0]
    dist_bins = xyxy_to_distances(points, gt_box.expand(a, 4)) / strides
    cls = torch.full((a, k), cls_logit)
    return _maps_from_points(hws, cls, _dfl_logits(dist_bins, reg_max))


def test_loss_is_minimal_for_perfect_boxes_and_grows_with_the_error():
    hws, points, strides = _grid()
    loss = build_loss(num_classes=3, reg_max=16)
    gt, gid = torch.tensor([[10.0, 12.0, 40.0, 50.0]]), torch.tensor([1])
    perfect = loss(_perfect_maps(hws, points, strides, gt, 16, 3), [gt], [gid])
    assert int(perfect.num_fg) > 0 and float(perfect.box) < 1e-5
    last = perfect
    for shift in (2.0, 5.0, 9.0):
        worse = loss(_perfect_maps(hws, points, strides, gt + torch.tensor([shift, -shift, shift, shift]), 16, 3),
                     [gt], [gid])
        assert float(worse.box) > float(last.box) and float(worse.dfl) > float(last.dfl)
        last = worse


def test_loss_is_normalised_per_batch_and_empty_images_add_only_background():
    hws, points, strides = _grid()
    loss = build_loss(num_classes=3, reg_max=16)
    gt, gid = torch.tensor([[10.0, 12.0, 40.0, 50.0]]), torch.tensor([1])
    maps = _perfect_maps(hws, points, strides, gt + 3.0, 16, 3)
    one = loss(maps, [gt], [gid])
    two_maps = HeadMaps([torch.cat([m, m]) for m in maps.cls_logits], [torch.cat([m, m]) for m in maps.box_logits], STRIDES)
    two = loss(two_maps, [gt, gt], [gid, gid])
    torch.testing.assert_close(two.total, one.total)  # no scaling with the batch size
    empty = loss(two_maps, [gt, torch.zeros(0, 4)], [gid, torch.zeros(0, dtype=torch.long)])
    torch.testing.assert_close(empty.box, one.box)
    torch.testing.assert_close(empty.dfl, one.dfl)
    assert float(empty.cls) > float(one.cls) and int(empty.num_fg) == int(one.num_fg)
    none = loss(maps, [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)])
    assert int(none.num_fg) == 0 and float(none.box) == 0 and float(none.dfl) == 0 and float(none.cls) > 0


# --- EMA ------------------------------------------------------------------------------------------------------


def test_ema_follows_the_documented_formula_for_weights_and_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9, tau=5.0)
    expected = {k: v.clone().float() for k, v in ema.model.state_dict().items()}
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * step)
        model.train()(torch.randn(4, 3))  # BN running stats move
        ema.update(model)
        d = 0.9 * (1 - np.exp(-step / 5.0))
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                expected[key] = d * expected[key] + (1 - d) * value.float()
            else:
                expected[key] = value.clone()
    for key, value in ema.model.state_dict().items():
        torch.testing.assert_close(value.float(), expected[key].float(), msg=key)
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
