"""Detection metrics (COCO mAP via faster-coco-eval, PR curves, confusion matrix) and the evaluation JSON.

Imports only numpy, faster_coco_eval, vision and the standard library — never torch — so an exported ONNX
model is evaluated on a lane box or in CI without PyTorch. Bag-level screening figures (ROC, Pd at Pfa,
threshold calibration) live in `training.screening`; `evaluation_json` gathers both into what
`xscreen eval --json` writes.

Conventions: boxes are `boxes_xyxy` in pixels of the original image; class ids are 0-based indices into
one explicit `class_names` list (COCO category id = class id + 1 internally, never exposed). Predictions
are matched to truths by position: `preds[i]` belongs to `gts[i]`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

# Re-exported so callers find every evaluation figure in one module.
from training.screening import (
    OperatingPoint,
    ScreeningReport,
    ThresholdCalibration,
    calibrate_thresholds,
    roc_curve,
    screening_metrics,
)
from vision.boxes import iou_xyxy, xyxy_to_xywh

__all__ = [
    "DetectionReport",
    "DetectionsLike",
    "EvaluationReport",
    "ImagePredictions",
    "ImageTruth",
    "OperatingPoint",
    "ScreeningReport",
    "ThresholdCalibration",
    "calibrate_thresholds",
    "confusion_matrix",
    "detection_metrics",
    "evaluation_json",
    "image_has_threat",
    "map_at_ious",
    "per_image_class_max_scores",
    "pfa_key",
    "roc_curve",
    "screening_metrics",
]


class DetectionsLike(Protocol):
    """Anything with the three arrays of `vision.postprocess.Detections` (which satisfies this)."""

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray


@dataclass(frozen=True, eq=False)
class ImageTruth:
    """Ground truth of one image: boxes_xyxy N×4 float (pixels), class_ids N int64 (0-based).

    image_id: any stable name of the image (file name, sample id); used in messages only.
    width, height: the image size in pixels (COCO needs it; it does not affect bbox AP).
    """

    image_id: str | int
    width: int
    height: int
    boxes_xyxy: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        n = np.asarray(self.class_ids).reshape(-1).shape[0]
        if np.asarray(self.boxes_xyxy).reshape(-1, 4).shape[0] != n:
            raise ValueError(f"image {self.image_id}: {np.asarray(self.boxes_xyxy).shape} boxes for {n} class ids")
        _check_boxes(self.boxes_xyxy, f"image {self.image_id}: truth")


@dataclass(frozen=True, eq=False)
class ImagePredictions:
    """Detections of one image: boxes_xyxy M×4 float (pixels), scores M float, class_ids M int64."""

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        m = np.asarray(self.scores).reshape(-1).shape[0]
        if np.asarray(self.boxes_xyxy).reshape(-1, 4).shape[0] != m or np.asarray(self.class_ids).size != m:
            raise ValueError("inconsistent prediction arrays")
        _check_boxes(self.boxes_xyxy, "prediction")


def _check_boxes(boxes_xyxy: np.ndarray, what: str) -> None:
    """Boxes must be finite x1 ≤ x2, y1 ≤ y2: COCO would read an inverted box as a negative width and
    score it silently (never matched, or matched through a negative area)."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{what} boxes must be finite")
    bad = np.nonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))[0]
    if bad.size:
        raise ValueError(f"{what} box {bad[0]} is not x1 ≤ x2, y1 ≤ y2 (xyxy): {boxes[bad[0]].tolist()}")


@dataclass(frozen=True, eq=False)
class DetectionReport:
    """COCO detection figures over a set of images.

    map50, map50_95: mean over classes that have ground truth (None when no class has any).
    ap50_per_class, ap50_95_per_class: class name → AP, None for a class without ground truth (COCO marks
    it -1 and leaves it out of the mean; a class with truths but no detections scores 0.0).
    pr_recall: R=101 recall points (COCO's 0, 0.01, …, 1). pr_precision: K×R interpolated precision at
    IoU 0.5 (COCO's `eval['precision'][0, :, k, area=all, maxDets=100]`), NaN rows for classes without
    ground truth; precision is 0 beyond the highest recall reached.
    confusion: (K+1)×(K+1) int64 counts at `confusion_iou` and `confusion_score_thresholds` (K): rows are
    the true class, columns the predicted class, index K is background (row K: false alarms, column K:
    missed truths). See `confusion_matrix`.
    """

    class_names: tuple[str, ...]
    map50: float | None
    map50_95: float | None
    ap50_per_class: dict[str, float | None]
    ap50_95_per_class: dict[str, float | None]
    pr_recall: np.ndarray
    pr_precision: np.ndarray
    confusion: np.ndarray
    confusion_iou: float
    confusion_score_thresholds: np.ndarray
    n_images: int
    n_gt_boxes: int
    n_pred_boxes: int
    gt_boxes_per_class: dict[str, int]


def _validate(gts: Sequence[ImageTruth], preds: Sequence[DetectionsLike], num_classes: int) -> None:
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth images but {len(preds)} prediction sets")
    for gt, pr in zip(gts, preds):
        for name, ids in (("truth", np.asarray(gt.class_ids)), ("prediction", np.asarray(pr.class_ids))):
            if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
                raise ValueError(f"image {gt.image_id}: {name} class id outside [0, {num_classes})")
        if not np.all(np.isfinite(np.asarray(pr.scores, dtype=np.float64))):
            raise ValueError(f"image {gt.image_id}: non-finite prediction scores")


def _coco_objects(
    gts: Sequence[ImageTruth], preds: Sequence[DetectionsLike], class_names: Sequence[str]
) -> tuple[COCO, COCO]:
    """Build COCO ground-truth and result objects in memory. Image ids and annotation ids start at 1:
    the COCO matcher uses id 0 as "unmatched", so a 0 id would silently never match."""
    images, gt_anns, dt_anns = [], [], []
    for i, (gt, pr) in enumerate(zip(gts, preds), start=1):
        images.append({"id": i, "width": int(gt.width), "height": int(gt.height), "file_name": str(gt.image_id)})
        g_xywh = xyxy_to_xywh(gt.boxes_xyxy)
        for box, cid in zip(g_xywh.tolist(), np.asarray(gt.class_ids).reshape(-1).tolist()):
            gt_anns.append({
                "id": len(gt_anns) + 1,
                "image_id": i,
                "category_id": int(cid) + 1,
                "bbox": box,
                "area": max(box[2], 0.0) * max(box[3], 0.0),
                "iscrowd": 0,
            })
        p_xywh = xyxy_to_xywh(pr.boxes_xyxy)
        p_scores = np.asarray(pr.scores, dtype=np.float64).reshape(-1).tolist()
        for box, score, cid in zip(p_xywh.tolist(), p_scores, np.asarray(pr.class_ids).reshape(-1).tolist()):
            dt_anns.append({"image_id": i, "category_id": int(cid) + 1, "bbox": box, "score": score})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(class_names)]
    quiet = lambda *args, **kwargs: None  # noqa: E731 — faster-coco-eval logs progress lines per call
    coco_gt = COCO({"images": images, "annotations": gt_anns, "categories": categories}, print_function=quiet)
    return coco_gt, coco_gt.loadRes(dt_anns)


def _coco_precision(
    gts: Sequence[ImageTruth], preds: Sequence[DetectionsLike], class_names: Sequence[str],
    ious: Sequence[float] | None = None,
) -> tuple[np.ndarray, Any]:
    """COCO's interpolated precision T×R×K (IoU thresholds × 101 recall points × classes; area 'all',
    maxDets 100; -1 where a class has no ground truth) and the evaluation parameters. ious: the IoU
    thresholds (default COCO's 0.50:0.05:0.95)."""
    coco_gt, coco_dt = _coco_objects(gts, preds, class_names)
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
    # Evaluate every class, even one absent from both truth and detections, so indices stay 0..K-1.
    ev.params.catIds = [k + 1 for k in range(len(class_names))]
    if ious is not None:
        ev.params.iouThrs = np.asarray(ious, np.float64)
    ev.evaluate()
    ev.accumulate()
    p = ev.params
    area_all, max_dets = p.areaRngLbl.index("all"), len(p.maxDets) - 1  # maxDets sorted: last is 100
    return np.asarray(ev.eval["precision"])[:, :, :, area_all, max_dets], p


def _mean_valid(values: np.ndarray) -> float | None:
    """COCO's summary: mean over entries > -1 (-1 marks 'no ground truth'); None when there are none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def detection_metrics(
    gts: Sequence[ImageTruth],
    preds: Sequence[DetectionsLike],
    class_names: Sequence[str],
    *,
    confusion_iou: float = 0.5,
    confusion_score_threshold: float | Sequence[float] | np.ndarray = 0.25,
) -> DetectionReport:
    """COCO bbox mAP@0.5 and mAP@0.5:0.95 (area 'all', maxDets 100 per image and class, 101-point
    interpolation), AP per class, the PR curves at IoU 0.5 and a confusion matrix.

    gts[i], preds[i]: truth and detections of image i (boxes_xyxy, pixels; 0-based class ids into
    class_names). preds may be `ImagePredictions` or `vision.postprocess.Detections`. Images without boxes
    are fine: their detections count as false positives. confusion_score_threshold: one score, or K
    per-class scores (e.g. the calibrated lane thresholds); it affects only the confusion matrix — AP sweeps
    every score.
    """
    names = tuple(class_names)
    num_classes = len(names)
    if num_classes == 0 or len(set(names)) != num_classes:
        raise ValueError(f"class_names must be non-empty and unique: {names}")
    _validate(gts, preds, num_classes)

    k_range = range(num_classes)
    precision = np.full((1, 101, num_classes), -1.0)
    recall_points = np.linspace(0.0, 1.0, 101)
    map50 = map50_95 = None
    ap50: dict[str, float | None] = {n: None for n in names}
    ap50_95: dict[str, float | None] = {n: None for n in names}
    if gts:
        all_thr, p = _coco_precision(gts, preds, names)
        t50 = int(np.flatnonzero(np.isclose(p.iouThrs, 0.5))[0])
        precision = all_thr[t50 : t50 + 1]
        recall_points = np.asarray(p.recThrs, dtype=np.float64)
        map50, map50_95 = _mean_valid(precision), _mean_valid(all_thr)
        for k in k_range:
            ap50[names[k]] = _mean_valid(precision[:, :, k])
            ap50_95[names[k]] = _mean_valid(all_thr[:, :, k])

    pr_precision = precision[0].T.astype(np.float64)  # K×R
    pr_precision[pr_precision < 0] = np.nan
    score_thr = np.broadcast_to(np.asarray(confusion_score_threshold, dtype=np.float64), (num_classes,)).copy()
    gt_counts = np.bincount(
        np.concatenate([np.asarray(g.class_ids, dtype=np.int64).reshape(-1) for g in gts] or [np.zeros(0, int)]),
        minlength=num_classes,
    )
    return DetectionReport(
        class_names=names,
        map50=map50,
        map50_95=map50_95,
        ap50_per_class=ap50,
        ap50_95_per_class=ap50_95,
        pr_recall=recall_points,
        pr_precision=pr_precision,
        confusion=confusion_matrix(gts, preds, num_classes, iou_threshold=confusion_iou, score_threshold=score_thr),
        confusion_iou=float(confusion_iou),
        confusion_score_thresholds=score_thr,
        n_images=len(gts),
        n_gt_boxes=int(gt_counts.sum()),
        n_pred_boxes=int(sum(np.asarray(p.scores).size for p in preds)),
        gt_boxes_per_class={names[k]: int(gt_counts[k]) for k in k_range},
    )


def map_at_ious(
    gts: Sequence[ImageTruth],
    preds: Sequence[DetectionsLike],
    class_names: Sequence[str],
    ious: Sequence[float],
    *,
    class_agnostic: bool = False,
) -> dict[str, float | None]:
    """COCO mAP (as `detection_metrics`) at each IoU threshold of `ious` on its own: "0.1" → mAP@0.1, ….

    A diagnosis of what a detector gets wrong: mAP rising steeply as the IoU threshold falls means it finds
    objects but boxes them loosely. class_agnostic: every truth and detection counted as one class (the
    detections are not merged again: two overlapping boxes of two classes stay two), which separates
    finding an object from naming its class. None where no image holds a truth.
    """
    names = ("object",) if class_agnostic else tuple(class_names)
    _validate(gts, preds, len(tuple(class_names)))
    if class_agnostic:
        gts = [replace(g, class_ids=np.zeros_like(np.asarray(g.class_ids, np.int64))) for g in gts]
        preds = [ImagePredictions(boxes_xyxy=np.asarray(p.boxes_xyxy, np.float64).reshape(-1, 4),
                                  scores=np.asarray(p.scores, np.float64).reshape(-1),
                                  class_ids=np.zeros(np.asarray(p.scores).size, np.int64)) for p in preds]
    keys = [f"{float(t):g}" for t in ious]
    if not any(np.asarray(g.class_ids).size for g in gts):
        return dict.fromkeys(keys)
    precision, _params = _coco_precision(gts, preds, names, ious=ious)
    return {key: _mean_valid(precision[i]) for i, key in enumerate(keys)}


def _greedy_match(
    iou: np.ndarray, order: np.ndarray, allowed: np.ndarray, gt_taken: np.ndarray, pred_gt: np.ndarray, thr: float
) -> None:
    """Match predictions (in `order`) to the free truth of highest IoU ≥ thr where allowed[g, p]; in place."""
    eligible = allowed & (iou >= thr)
    # Most detections overlap no truth at all; skipping them up front keeps the Python loop short.
    for p in order[eligible.any(axis=0)[order]]:
        if pred_gt[p] >= 0:
            continue
        cand = np.where(eligible[:, p] & ~gt_taken, iou[:, p], -1.0)
        if cand.max() >= 0:
            g = int(cand.argmax())
            gt_taken[g] = True
            pred_gt[p] = g


def confusion_matrix(
    gts: Sequence[ImageTruth],
    preds: Sequence[DetectionsLike],
    num_classes: int,
    *,
    iou_threshold: float = 0.5,
    score_threshold: float | np.ndarray = 0.25,
) -> np.ndarray:
    """(K+1)×(K+1) int64 counts: rows true class, columns predicted class, index K = background.

    Per image, predictions with score ≥ score_threshold (scalar or K per class) are matched one-to-one to
    truths with IoU ≥ iou_threshold in two greedy passes, each in descending score order: first to truths
    of the same class (as COCO does, so a correct box is never displaced by a better-overlapping wrong-class
    box of the multi-label post-processing), then the leftovers to truths of any class (class confusions).
    A matched pair counts at [true, predicted]; an unmatched truth at [true, K] (missed); an unmatched
    prediction at [K, predicted] (false alarm). So row k sums to the truths of class k and column k to the
    kept predictions of class k; [K, K] stays 0.
    """
    k_bg = num_classes
    thr = np.broadcast_to(np.asarray(score_threshold, dtype=np.float64), (num_classes,))
    cm = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for gt, pr in zip(gts, preds):
        g_cls = np.asarray(gt.class_ids, dtype=np.int64).reshape(-1)
        p_cls = np.asarray(pr.class_ids, dtype=np.int64).reshape(-1)
        p_scores = np.asarray(pr.scores, dtype=np.float64).reshape(-1)
        keep = p_scores >= thr[p_cls] if p_cls.size else np.zeros(0, bool)
        p_cls, p_scores = p_cls[keep], p_scores[keep]
        p_boxes = np.asarray(pr.boxes_xyxy, dtype=np.float64).reshape(-1, 4)[keep]
        gt_taken = np.zeros(g_cls.size, dtype=bool)
        pred_gt = np.full(p_cls.size, -1, dtype=np.int64)
        if g_cls.size and p_cls.size:
            iou = iou_xyxy(gt.boxes_xyxy, p_boxes)
            order = np.argsort(-p_scores, kind="stable")
            same = g_cls[:, None] == p_cls[None, :]
            _greedy_match(iou, order, same, gt_taken, pred_gt, iou_threshold)
            _greedy_match(iou, order, np.ones_like(same), gt_taken, pred_gt, iou_threshold)
        matched = pred_gt >= 0
        np.add.at(cm, (g_cls[pred_gt[matched]], p_cls[matched]), 1)
        np.add.at(cm, (g_cls[~gt_taken], k_bg), 1)
        np.add.at(cm, (k_bg, p_cls[~matched]), 1)
    return cm


def per_image_class_max_scores(preds: Sequence[DetectionsLike], num_classes: int) -> np.ndarray:
    """B×K float64: each image's highest detection score per class, 0.0 where the class has no detection.
    The input of `training.screening.calibrate_thresholds`; for a multi-view bag take the max over views."""
    out = np.zeros((len(preds), num_classes), dtype=np.float64)
    for i, pr in enumerate(preds):
        cls = np.asarray(pr.class_ids, dtype=np.int64).reshape(-1)
        if cls.size:
            np.maximum.at(out[i], cls, np.asarray(pr.scores, dtype=np.float64).reshape(-1))
    return out


def image_has_threat(gts: Sequence[ImageTruth]) -> np.ndarray:
    """B bool: the image holds at least one contraband box (every class is contraband; clean = no box)."""
    return np.array([np.asarray(g.class_ids).size > 0 for g in gts], dtype=bool)


@dataclass(frozen=True, eq=False)
class EvaluationReport:
    """Everything one evaluation produced: what `evaluation_json` serialises and `write_plots` draws."""

    detection: DetectionReport
    screening: ScreeningReport | None = None
    calibration: ThresholdCalibration | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def _num(x: float | None) -> float | None:
    """JSON-safe number: NaN and ±inf become null (strict JSON has neither)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def pfa_key(target_pfa: float) -> str:
    """The JSON key of an operating point: 0.01 → "0.01", 0.05 → "0.05"."""
    return f"{target_pfa:g}"


def evaluation_json(report: EvaluationReport) -> dict[str, Any]:
    """The evaluation summary as a strict-JSON-safe dict (no NaN/inf; missing figures are null).

    Keys: map50, map50_95, per_class (class → AP50 or null where the class has no ground truth),
    per_class_ap50_95, bag_auroc, pd_at_pfa / threshold_at_pfa / achieved_pfa (keys "0.01", "0.05", …,
    null without screening data), counts {images, boxes, predicted_boxes, boxes_per_class,
    bags_with_threats, clean_bags}, calibration (thresholds, target and achieved Pfa, Pd) when given, and
    notes (why a figure is null, too few clean bags for a Pfa, …).
    """
    det, scr = report.detection, report.screening
    notes = list(report.notes)
    counts: dict[str, Any] = {
        "images": det.n_images,
        "boxes": det.n_gt_boxes,
        "predicted_boxes": det.n_pred_boxes,
        "boxes_per_class": dict(det.gt_boxes_per_class),
        "bags_with_threats": None if scr is None else scr.n_threat,
        "clean_bags": None if scr is None else scr.n_clean,
    }
    out: dict[str, Any] = {
        "map50": _num(det.map50),
        "map50_95": _num(det.map50_95),
        "per_class": {n: _num(v) for n, v in det.ap50_per_class.items()},
        "per_class_ap50_95": {n: _num(v) for n, v in det.ap50_95_per_class.items()},
        "bag_auroc": None,
        "pd_at_pfa": {},
        "threshold_at_pfa": {},
        "achieved_pfa": {},
        "counts": counts,
    }
    missing = [n for n, v in det.ap50_per_class.items() if v is None]
    if missing:
        notes.append(f"no ground truth for {missing}: AP null, left out of the mean (COCO convention)")
    if scr is not None:
        out["bag_auroc"] = _num(scr.auroc)
        for op in scr.operating_points:
            key = pfa_key(op.target_pfa)
            out["pd_at_pfa"][key] = _num(op.pd)
            out["threshold_at_pfa"][key] = _num(op.threshold)
            out["achieved_pfa"][key] = _num(op.pfa)
        notes.extend(scr.notes)
    else:
        out["pd_at_pfa"] = {"0.01": None, "0.05": None}
        notes.append("no bag scores given: screening figures null")
    cal = report.calibration
    if cal is not None:
        out["calibration"] = {
            "thresholds": {n: _num(v) for n, v in cal.thresholds.items()},
            "target_pfa": cal.target_pfa,
            "achieved_pfa": _num(cal.achieved_pfa),
            "pd": _num(cal.pd),
            "n_clean": cal.n_clean,
            "n_threat": cal.n_threat,
        }
        notes.extend(cal.notes)
    out["notes"] = notes
    return out
