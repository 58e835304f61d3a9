"""Task-aligned target assignment (TOOD, Feng et al. 2021; the YOLOv8 recipe), vectorised over the batch.

For every ground-truth box, candidate anchor points are those whose centre lies inside the box. Each
candidate gets an alignment metric t = s^α · IoU^β, with s the predicted probability of the box's class
and IoU between the predicted and the true box; the top-k candidates per box become positives. A point
claimed by several boxes keeps the one it overlaps most. Classification targets are soft: the alignment,
rescaled per box so that its best point's target equals that point's IoU. So the class score learns to
rank well-localised predictions first, which is what NMS and the mAP sort need.

One deviation from YOLOv8: a box too small to contain any cell centre (smaller than a stride-8 cell, e.g.
a single pill at 512 px) would get no positives at all; such a box instead takes the points within one
stride of its centre (square neighbourhood, every level) as candidates.

Shapes: B images, A anchor points, M = max boxes per image (padded), K classes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from training.head import xyxy_to_distances


class Assignment(NamedTuple):
    """Per-point targets. fg_mask B×A bool; target_boxes_xyxy B×A×4 (input pixels, zero where bg);
    target_labels B×A long (class of the assigned box, 0 where bg); target_scores B×A×K soft class
    targets in [0, 1] (zero rows for background); gt_index B×A long (the assigned box's index in the
    padded list, 0 where bg)."""

    fg_mask: torch.Tensor
    target_boxes_xyxy: torch.Tensor
    target_labels: torch.Tensor
    target_scores: torch.Tensor
    gt_index: torch.Tensor


def pad_targets(
    gt_boxes_xyxy: list[torch.Tensor], gt_class_ids: list[torch.Tensor], *, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lists of per-image N_i×4 float boxes and N_i int64 class ids → (boxes B×M×4, class ids B×M long,
    valid mask B×M bool), M = max N_i (at least 1 so shapes stay non-empty)."""
    if len(gt_boxes_xyxy) != len(gt_class_ids):
        raise ValueError("gt_boxes_xyxy and gt_class_ids must have one entry per image")
    b = len(gt_boxes_xyxy)
    m = max([1] + [int(t.shape[0]) for t in gt_boxes_xyxy])
    boxes = torch.zeros(b, m, 4, device=device)
    labels = torch.zeros(b, m, dtype=torch.long, device=device)
    valid = torch.zeros(b, m, dtype=torch.bool, device=device)
    for i, (bx, cl) in enumerate(zip(gt_boxes_xyxy, gt_class_ids)):
        n = int(bx.shape[0])
        if n != int(cl.shape[0]):
            raise ValueError(f"image {i}: {n} boxes but {int(cl.shape[0])} class ids")
        if n:
            boxes[i, :n] = bx.reshape(n, 4).to(device=device, dtype=torch.float32)
            labels[i, :n] = cl.reshape(n).to(device=device, dtype=torch.long)
            valid[i, :n] = True
    return boxes, labels, valid


def box_iou_pairwise(a_xyxy: torch.Tensor, b_xyxy: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Elementwise IoU of broadcastable …×4 xyxy boxes → … ."""
    lt = torch.maximum(a_xyxy[..., :2], b_xyxy[..., :2])
    rb = torch.minimum(a_xyxy[..., 2:], b_xyxy[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a_xyxy[..., 2:] - a_xyxy[..., :2]).clamp(min=0).prod(-1)
    area_b = (b_xyxy[..., 2:] - b_xyxy[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter + eps)


class TaskAlignedAssigner:
    """Callable; see module docstring. top_k=10, alpha=0.5, beta=6.0 are the TOOD/YOLOv8 values."""

    def __init__(self, *, num_classes: int, top_k: int = 10, alpha: float = 0.5, beta: float = 6.0) -> None:
        self.num_classes = num_classes
        self.top_k = top_k
        self.alpha = alpha
        self.beta = beta

    @torch.no_grad()
    def __call__(
        self,
        pred_scores: torch.Tensor,
        pred_boxes_xyxy: torch.Tensor,
        points_xy: torch.Tensor,
        point_strides: torch.Tensor,
        gt_boxes_xyxy: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_valid: torch.Tensor,
    ) -> Assignment:
        """pred_scores B×A×K probabilities; pred_boxes_xyxy B×A×4 pixels; points_xy A×2 pixels;
        point_strides A×1; gt_boxes_xyxy B×M×4; gt_labels B×M long; gt_valid B×M bool."""
        b, a, k = pred_scores.shape
        m = gt_boxes_xyxy.shape[1]
        device = pred_scores.device
        if not bool(gt_valid.any()):
            return Assignment(
                fg_mask=torch.zeros(b, a, dtype=torch.bool, device=device),
                target_boxes_xyxy=torch.zeros(b, a, 4, device=device),
                target_labels=torch.zeros(b, a, dtype=torch.long, device=device),
                target_scores=torch.zeros(b, a, k, device=device),
                gt_index=torch.zeros(b, a, dtype=torch.long, device=device),
            )

        candidates = self._candidates(points_xy, point_strides, gt_boxes_xyxy) & gt_valid[:, :, None]  # B×M×A

        overlaps = box_iou_pairwise(gt_boxes_xyxy[:, :, None, :], pred_boxes_xyxy[:, None, :, :])  # B×M×A
        overlaps = overlaps * candidates
        cls_idx = gt_labels.clamp(0, k - 1)[:, :, None].expand(b, m, a)
        box_scores = pred_scores.transpose(1, 2).gather(1, cls_idx)  # B×M×A: p(class of box m) at point a
        align = box_scores.pow(self.alpha) * overlaps.pow(self.beta) * candidates

        # Top-k candidates per box. Non-candidates are pushed below every candidate (−1), so a box with
        # all-zero alignment (early training) still takes candidates, never points outside it.
        k_eff = min(self.top_k, a)
        ranked = torch.where(candidates, align, torch.full_like(align, -1.0))
        top_idx = ranked.topk(k_eff, dim=-1).indices  # B×M×k
        in_top = torch.zeros_like(candidates).scatter_(-1, top_idx, True)
        positive = in_top & candidates  # B×M×A

        # A point claimed by several boxes keeps the one (among those claiming it) with the highest IoU.
        multi = positive.sum(1, keepdim=True) > 1  # B×1×A
        if bool(multi.any()):
            best = torch.where(positive, overlaps, torch.full_like(overlaps, -1.0)).argmax(1, keepdim=True)
            best_mask = torch.zeros_like(positive).scatter_(1, best, True)
            positive = torch.where(multi, best_mask, positive)

        fg_mask = positive.any(1)  # B×A
        gt_index = positive.float().argmax(1)  # B×A
        batch_idx = torch.arange(b, device=device)[:, None]
        target_boxes = gt_boxes_xyxy[batch_idx, gt_index] * fg_mask[..., None]  # B×A×4
        target_labels = gt_labels[batch_idx, gt_index].clamp(0, k - 1) * fg_mask  # B×A

        # Soft targets: normalise alignment per box so its best point gets that point's IoU.
        align = align * positive
        max_align = align.amax(-1, keepdim=True)  # B×M×1
        max_iou = (overlaps * positive).amax(-1, keepdim=True)  # B×M×1
        # (A box's alignment can be tiny, ~1e-16 for a small box against an untrained model's boxes: an
        # additive epsilon would swamp it and give its best point a target of ~0 instead of its IoU.)
        safe = torch.where(max_align > 0, max_align, torch.ones_like(max_align))
        norm = torch.where(max_align > 0, align * max_iou / safe, torch.zeros_like(align)).amax(1)  # B×A
        target_scores = torch.zeros(b, a, k, device=device)
        target_scores.scatter_(-1, target_labels[..., None], 1.0)
        target_scores = target_scores * (norm * fg_mask)[..., None]
        return Assignment(
            fg_mask=fg_mask,
            target_boxes_xyxy=target_boxes,
            target_labels=target_labels,
            target_scores=target_scores,
            gt_index=gt_index,
        )

    @staticmethod
    def _candidates(points_xy: torch.Tensor, point_strides: torch.Tensor, gt_boxes_xyxy: torch.Tensor) -> torch.Tensor:
        """B×M×A: point inside the box; for boxes containing no point, points within one stride of its
        centre (max-norm)."""
        dist = xyxy_to_distances(points_xy[None, None], gt_boxes_xyxy[:, :, None, :])  # B×M×A×4
        inside = dist.amin(-1) > 1e-9
        centre = (gt_boxes_xyxy[..., :2] + gt_boxes_xyxy[..., 2:]) / 2  # B×M×2
        offset = (points_xy[None, None] - centre[:, :, None, :]).abs().amax(-1)  # B×M×A
        near_centre = offset < point_strides[:, 0][None, None]
        has_inside = inside.any(-1, keepdim=True)
        return torch.where(has_inside, inside, near_centre)
