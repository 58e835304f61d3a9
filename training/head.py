"""Decoupled anchor-free head (YOLOv8/TOOD style) and the decoding shared by inference and the loss.

Per level (strides 8, 16, 32) two branches of two 3×3 ConvBNAct and a 1×1 conv:
- classification: K logits per point (sigmoid → class probability; no objectness branch, the
  task-aligned targets make the class score carry localisation quality);
- box: 4 × reg_max logits per point, a discrete distribution (DFL, Li et al. 2020, "Generalized Focal
  Loss") over the distance from the point to each side (left, top, right, bottom), in units of the
  level's stride, bins 0 … reg_max−1. The expected value of each distribution is the distance.

Anchor points are the centres of the feature-map cells: ((j + 0.5)·stride, (i + 0.5)·stride) in input
pixels; points are ordered level by level, row-major within a level (A = Σ H_l·W_l).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from training.backbone import ConvBNAct

STRIDES: tuple[int, int, int] = (8, 16, 32)


class HeadMaps(NamedTuple):
    """Raw per-level head outputs (training mode).

    cls_logits[l]: B×K×H_l×W_l class logits; box_logits[l]: B×(4·reg_max)×H_l×W_l distance-bin logits,
    channel order side-major (4 sides × reg_max bins); strides[l]: stride of level l in input pixels.
    """

    cls_logits: list[torch.Tensor]
    box_logits: list[torch.Tensor]
    strides: tuple[int, ...]


class DecoupledHead(nn.Module):
    """(P3, P4, P5) → HeadMaps. Separate (unshared) branches per level, as scales differ a lot in X-ray."""

    def __init__(
        self,
        *,
        in_channels: tuple[int, int, int],
        num_classes: int,
        reg_max: int,
        box_width: int,
        cls_width: int,
        input_hw: tuple[int, int],
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.box_branches = nn.ModuleList(
            nn.Sequential(ConvBNAct(c, box_width, 3), ConvBNAct(box_width, box_width, 3), nn.Conv2d(box_width, 4 * reg_max, 1))
            for c in in_channels
        )
        self.cls_branches = nn.ModuleList(
            nn.Sequential(ConvBNAct(c, cls_width, 3), ConvBNAct(cls_width, cls_width, 3), nn.Conv2d(cls_width, num_classes, 1))
            for c in in_channels
        )
        self._init_biases(input_hw)

    def _init_biases(self, input_hw: tuple[int, int]) -> None:
        for box, cls, stride in zip(self.box_branches, self.cls_branches, STRIDES):
            # Equal bin logits: the initial expected distance is the middle bin, boxes of ~reg_max strides.
            nn.init.constant_(box[-1].bias, 1.0)
            # Class prior ≈ 5 objects per image spread over all points of the level (the YOLOv8 init), so
            # the initial BCE is not swamped by thousands of confident false positives.
            points = (input_hw[0] / stride) * (input_hw[1] / stride)
            prior = min(0.5, 5.0 / self.num_classes / points)
            nn.init.constant_(cls[-1].bias, math.log(prior / (1.0 - prior)))

    def forward(self, feats: tuple[torch.Tensor, ...]) -> HeadMaps:
        cls_logits = [branch(f) for branch, f in zip(self.cls_branches, feats)]
        box_logits = [branch(f) for branch, f in zip(self.box_branches, feats)]
        return HeadMaps(cls_logits=cls_logits, box_logits=box_logits, strides=STRIDES)


def build_head(
    *,
    in_channels: tuple[int, int, int],
    num_classes: int,
    reg_max: int,
    box_width: int,
    cls_width: int,
    input_hw: tuple[int, int],
) -> DecoupledHead:
    """The decoupled head over three levels (strides 8, 16, 32)."""
    return DecoupledHead(
        in_channels=in_channels,
        num_classes=num_classes,
        reg_max=reg_max,
        box_width=box_width,
        cls_width=cls_width,
        input_hw=input_hw,
    )


def make_anchor_points(
    feature_hws: list[tuple[int, int]], strides: tuple[int, ...], *, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres of every level: (points_xy A×2 in input pixels, stride_per_point A×1), float32."""
    points, point_strides = [], []
    for (h, w), stride in zip(feature_hws, strides):
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) * stride
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x, grid_y), dim=-1).reshape(-1, 2))
        point_strides.append(torch.full((h * w, 1), float(stride), dtype=torch.float32, device=device))
    return torch.cat(points, dim=0), torch.cat(point_strides, dim=0)


def flatten_levels(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-level B×C×H_l×W_l maps → B×A×C, levels concatenated in order."""
    return torch.cat([m.flatten(2) for m in maps], dim=2).transpose(1, 2)


def dfl_expectation(box_logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """B×A×(4·reg_max) bin logits → B×A×4 expected distances (ltrb) in stride units, in [0, reg_max−1]."""
    b, a, _ = box_logits.shape
    probs = box_logits.view(b, a, 4, reg_max).softmax(dim=-1)
    bins = torch.arange(reg_max, dtype=probs.dtype, device=probs.device)
    return (probs * bins).sum(dim=-1)


def distances_to_xyxy(points_xy: torch.Tensor, distances_ltrb: torch.Tensor) -> torch.Tensor:
    """A×2 points and B×A×4 (left, top, right, bottom) distances, same units → B×A×4 boxes xyxy."""
    lt, rb = distances_ltrb.split((2, 2), dim=-1)
    return torch.cat((points_xy - lt, points_xy + rb), dim=-1)


def xyxy_to_distances(points_xy: torch.Tensor, boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """Inverse of `distances_to_xyxy`: points …×2 and boxes …×4 xyxy → …×4 ltrb distances (can be < 0)."""
    x1y1, x2y2 = boxes_xyxy.split((2, 2), dim=-1)
    return torch.cat((points_xy - x1y1, x2y2 - points_xy), dim=-1)
