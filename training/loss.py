"""Detection loss for the anchor-free head: task-aligned assignment (training/assign.py), BCE on soft
class targets, CIoU box loss and distribution focal loss (DFL) on the box-bin logits. This is the YOLOv8
recipe (gains box 7.5, cls 0.5, dfl 1.5).

Normalisation: every term is summed over the batch and divided by the sum of the soft class targets
(≈ the number of positives weighted by their quality), so the loss does not scale with batch size or
with the number of objects. (YOLOv8 multiplies by the batch size for its SGD learning rate; we do not.)
Images without boxes contribute only background classification terms.

Class imbalance: optional `class_weights` (K values, default 1) multiply the positive term of the BCE
for that class (BCE `pos_weight`) and the box/DFL terms of points assigned to a box of that class. They
do not touch the background terms, so a large weight makes a rare class easier to fire without teaching
the network that every point of other classes is a stronger negative for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from training.assign import TaskAlignedAssigner, pad_targets
from training.head import (
    HeadMaps,
    dfl_expectation,
    distances_to_xyxy,
    flatten_levels,
    make_anchor_points,
    xyxy_to_distances,
)


@dataclass(frozen=True)
class LossGains:
    """Weights of the three terms in the total (YOLOv8 defaults)."""

    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5


class LossOutput(NamedTuple):
    """total: scalar to backpropagate; cls/box/dfl: unweighted terms (detached, for logging);
    num_fg: number of positive points in the batch (int tensor)."""

    total: torch.Tensor
    cls: torch.Tensor
    box: torch.Tensor
    dfl: torch.Tensor
    num_fg: torch.Tensor


def ciou_xyxy(pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU (Zheng et al. 2020) of paired N×4 xyxy boxes → N, in [−1.5, 1]: IoU minus a centre
    distance penalty minus an aspect-ratio consistency penalty."""
    px1, py1, px2, py2 = pred_xyxy.unbind(-1)
    tx1, ty1, tx2, ty2 = target_xyxy.unbind(-1)
    pw, ph = (px2 - px1).clamp(min=0), (py2 - py1).clamp(min=0) + eps
    tw, th = (tx2 - tx1).clamp(min=0), (ty2 - ty1).clamp(min=0) + eps
    inter = (torch.minimum(px2, tx2) - torch.maximum(px1, tx1)).clamp(min=0) * (
        torch.minimum(py2, ty2) - torch.maximum(py1, ty1)
    ).clamp(min=0)
    union = pw * ph + tw * th - inter + eps
    iou = inter / union
    cw = torch.maximum(px2, tx2) - torch.minimum(px1, tx1)
    ch = torch.maximum(py2, ty2) - torch.minimum(py1, ty1)
    diag2 = cw.pow(2) + ch.pow(2) + eps
    centre2 = ((px1 + px2 - tx1 - tx2).pow(2) + (py1 + py2 - ty1 - ty2).pow(2)) / 4
    v = (4 / math.pi**2) * (torch.atan(tw / th) - torch.atan(pw / ph)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (centre2 / diag2 + v * alpha)


def dfl_loss(bin_logits: torch.Tensor, target_bins: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss. bin_logits N×4×R, target_bins N×4 continuous in [0, R−1) → N (mean over
    the 4 sides): cross-entropy to the two bins enclosing the target, weighted by proximity."""
    n, sides, r = bin_logits.shape
    left = target_bins.floor().long()
    right = left + 1
    w_left = right.float() - target_bins
    w_right = 1.0 - w_left
    flat = bin_logits.reshape(-1, r)
    ce_left = F.cross_entropy(flat, left.reshape(-1), reduction="none").view(n, sides)
    ce_right = F.cross_entropy(flat, right.reshape(-1), reduction="none").view(n, sides)
    return (ce_left * w_left + ce_right * w_right).mean(-1)


class DetectionLoss(nn.Module):
    """`loss(maps, gt_boxes_xyxy, gt_class_ids) -> LossOutput`.

    maps: the model's training-mode HeadMaps. gt_boxes_xyxy: one N_i×4 float tensor per image, input
    pixels; gt_class_ids: one N_i int64 tensor per image, in [0, K). N_i may be 0.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        reg_max: int,
        class_weights: Sequence[float] | None = None,
        gains: LossGains = LossGains(),
        assigner: TaskAlignedAssigner | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.gains = gains
        self.assigner = assigner or TaskAlignedAssigner(num_classes=num_classes)
        weights = torch.ones(num_classes) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if weights.shape != (num_classes,) or bool((weights <= 0).any()):
            raise ValueError(f"class_weights needs {num_classes} positive values, got {class_weights}")
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(
        self, maps: HeadMaps, gt_boxes_xyxy: list[torch.Tensor], gt_class_ids: list[torch.Tensor]
    ) -> LossOutput:
        cls_logits = flatten_levels(maps.cls_logits)  # B×A×K
        box_logits = flatten_levels(maps.box_logits)  # B×A×4R
        b, a, k = cls_logits.shape
        if k != self.num_classes:
            raise ValueError(f"head has {k} classes, loss expects {self.num_classes}")
        device = cls_logits.device
        hws = [(int(m.shape[2]), int(m.shape[3])) for m in maps.cls_logits]
        points, point_strides = make_anchor_points(hws, maps.strides, device=device)

        pred_dist = dfl_expectation(box_logits, self.reg_max)  # stride units
        pred_boxes = distances_to_xyxy(points, pred_dist * point_strides)  # pixels

        gt_boxes, gt_labels, gt_valid = pad_targets(gt_boxes_xyxy, gt_class_ids, device=device)
        if bool(((gt_labels < 0) | (gt_labels >= k))[gt_valid].any()):
            raise ValueError(f"class ids must lie in [0, {k})")
        assigned = self.assigner(
            # (float32 whatever the autocast: the alignment of a small box, ~1e-16, is 0 in float16)
            cls_logits.detach().float().sigmoid(), pred_boxes.detach().float(), points, point_strides, gt_boxes,
            gt_labels, gt_valid,
        )
        target_scores = assigned.target_scores
        score_sum = target_scores.sum().clamp(min=1.0)

        bce = F.binary_cross_entropy_with_logits(
            cls_logits, target_scores, pos_weight=self.class_weights, reduction="none"
        )
        loss_cls = bce.sum() / score_sum

        fg = assigned.fg_mask
        if bool(fg.any()):
            weight = target_scores.sum(-1)[fg] * self.class_weights[assigned.target_labels[fg]]  # N_fg
            ciou = ciou_xyxy(pred_boxes[fg], assigned.target_boxes_xyxy[fg])
            loss_box = ((1.0 - ciou) * weight).sum() / score_sum
            target_bins = xyxy_to_distances(points[None].expand(b, a, 2)[fg], assigned.target_boxes_xyxy[fg])
            target_bins = (target_bins / point_strides[None].expand(b, a, 1)[fg]).clamp(0, self.reg_max - 1 - 0.01)
            bins = box_logits[fg].view(-1, 4, self.reg_max)
            loss_dfl = (dfl_loss(bins, target_bins) * weight).sum() / score_sum
        else:
            # Keep the box branch in the graph (zero gradient) so DDP and optimisers see every parameter.
            loss_box = box_logits.sum() * 0.0
            loss_dfl = box_logits.sum() * 0.0

        g = self.gains
        total = g.box * loss_box + g.cls * loss_cls + g.dfl * loss_dfl
        return LossOutput(
            total=total,
            cls=loss_cls.detach(),
            box=loss_box.detach(),
            dfl=loss_dfl.detach(),
            num_fg=fg.sum(),
        )


def build_loss(
    *,
    num_classes: int,
    reg_max: int = 16,
    class_weights: Sequence[float] | None = None,
    gains: LossGains = LossGains(),
    top_k: int = 10,
) -> DetectionLoss:
    """The detection loss for a head with `num_classes` classes and `reg_max` distance bins (use the
    model's: `build_loss(num_classes=model.num_classes, reg_max=model.reg_max)`)."""
    return DetectionLoss(
        num_classes=num_classes,
        reg_max=reg_max,
        class_weights=class_weights,
        gains=gains,
        assigner=TaskAlignedAssigner(num_classes=num_classes, top_k=top_k),
    )
