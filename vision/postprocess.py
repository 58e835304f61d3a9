"""The one post-processing path: dense model outputs → final detections (numpy only).

Evaluation, the ONNX engine and the service all call `postprocess`/`postprocess_batch`, so a reported mAP
is measured on exactly the boxes a lane would show.

Input: the model's eval outputs for one image, `boxes_xyxy` N×4 (input pixels) and `scores` N×K
(per-class probabilities), one row per anchor point. Steps:
1. candidates = every (point, class) pair with score ≥ score_floor ("multi-label"). We keep all classes
   above the floor rather than only the best class per point: a carton of cigarettes with banknotes
   inside can legitimately fire two classes at the same place, the bag decision should see a strong
   second class, and COCO mAP rewards the extra recall. With class_agnostic=True the NMS below removes
   the weaker class of such pairs anyway, which is the best-class behaviour.
2. keep the pre_nms_top_k highest candidates (bounds the greedy NMS cost when a poorly trained model
   fires everywhere).
3. NMS at iou_threshold: class-aware (boxes of different classes never suppress each other) unless
   class_agnostic.
4. keep the max_detections highest, highest score first (ties: lower point index, then lower class id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from vision.boxes import batched_nms_xyxy, nms_xyxy
from vision.letterbox import LetterboxParams, unletterbox


class PostprocessParams(BaseModel):
    """Post-processing settings; stored in the model package metadata so lanes use the calibrated ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    score_floor: float = Field(default=0.05, ge=0.0, le=1.0)
    iou_threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    max_detections: int = Field(default=100, ge=1)
    class_agnostic: bool = False
    pre_nms_top_k: int = Field(default=1000, ge=1)


@dataclass(frozen=True, eq=False)
class Detections:
    """Final detections of one image: boxes_xyxy M×4 float32 (the coordinate frame of the input boxes),
    scores M float32, class_ids M int64 (indices into the model's class names); highest score first."""

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        m = self.scores.shape[0]
        if self.boxes_xyxy.shape != (m, 4) or self.class_ids.shape != (m,):
            raise ValueError(
                f"inconsistent detections: boxes {self.boxes_xyxy.shape}, scores {self.scores.shape}, "
                f"class_ids {self.class_ids.shape}"
            )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            boxes_xyxy=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32), class_ids=np.zeros(0, np.int64)
        )

    @classmethod
    def from_arrays(cls, boxes_xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray) -> Detections:
        """Build with the canonical dtypes (float32, float32, int64) and shapes (M×4, M, M)."""
        return cls(
            boxes_xyxy=np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4),
            scores=np.asarray(scores, dtype=np.float32).reshape(-1),
            class_ids=np.asarray(class_ids, dtype=np.int64).reshape(-1),
        )

    def select(self, index: np.ndarray) -> Detections:
        """Subset by integer indices or a boolean mask (order as given)."""
        return Detections(
            boxes_xyxy=self.boxes_xyxy[index], scores=self.scores[index], class_ids=self.class_ids[index]
        )


def postprocess(boxes_xyxy: np.ndarray, scores: np.ndarray, params: PostprocessParams) -> Detections:
    """N×4 boxes and N×K scores of one image → `Detections` (see module docstring for the steps)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float32)
    probs = np.asarray(scores, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or probs.ndim != 2 or probs.shape[0] != boxes.shape[0]:
        raise ValueError(f"expected boxes N×4 and scores N×K, got {boxes.shape} and {probs.shape}")
    # NaN scores compare False and drop out here, +inf scores and non-finite boxes are dropped too (a broken
    # output must not become an alarm of infinite suspicion, or an alarm box at infinity).
    point_idx, class_idx = np.nonzero((probs >= params.score_floor) & (probs < np.inf))
    finite = np.isfinite(boxes[point_idx]).all(axis=1)
    point_idx, class_idx = point_idx[finite], class_idx[finite]
    if point_idx.size == 0:
        return Detections.empty()
    cand_scores = probs[point_idx, class_idx]
    # Stable sort on (−score, point, class): np.nonzero yields (point, class) in row-major order already.
    order = np.argsort(-cand_scores, kind="stable")[: params.pre_nms_top_k]
    point_idx, class_idx, cand_scores = point_idx[order], class_idx[order], cand_scores[order]
    cand_boxes = boxes[point_idx]
    if params.class_agnostic:
        keep = nms_xyxy(cand_boxes, cand_scores, params.iou_threshold, max_keep=params.max_detections)
    else:
        keep = batched_nms_xyxy(cand_boxes, cand_scores, class_idx, params.iou_threshold, max_keep=params.max_detections)
    return Detections.from_arrays(cand_boxes[keep], cand_scores[keep], class_idx[keep])


def postprocess_batch(boxes_xyxy: np.ndarray, scores: np.ndarray, params: PostprocessParams) -> list[Detections]:
    """B×N×4 boxes and B×N×K scores → one `Detections` per image."""
    boxes = np.asarray(boxes_xyxy)
    probs = np.asarray(scores)
    if boxes.ndim != 3 or probs.ndim != 3 or boxes.shape[0] != probs.shape[0]:
        raise ValueError(f"expected boxes B×N×4 and scores B×N×K, got {boxes.shape} and {probs.shape}")
    return [postprocess(b, s, params) for b, s in zip(boxes, probs)]


def in_scan_pixels(dets: Detections, letterbox: LetterboxParams) -> Detections:
    """Detections in a letterboxed input's pixels → the scan's own pixels (`vision.letterbox.unletterbox`).

    A box lying wholly in the letterbox's padding (nothing of it over the scan: no width or no height left
    once clipped to the scan) is dropped: nothing was scanned there, so it can be neither an alarm nor a
    detection to score. Training's evaluation, the export checks and the engine all map boxes back here."""
    boxes = unletterbox(dets.boxes_xyxy, letterbox)
    inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return Detections.from_arrays(boxes[inside], dets.scores[inside], dets.class_ids[inside])


def postprocess_to_scans(
    boxes_xyxy: np.ndarray, scores: np.ndarray, params: PostprocessParams, letterbox: Sequence[LetterboxParams]
) -> list[Detections]:
    """`postprocess_batch`, then `in_scan_pixels` with each input's own letterbox: the B scans' detections."""
    dets = postprocess_batch(boxes_xyxy, scores, params)
    if len(letterbox) != len(dets):
        raise ValueError(f"{len(dets)} inputs but {len(letterbox)} letterbox parameter sets")
    return [in_scan_pixels(d, p) for d, p in zip(dets, letterbox)]
