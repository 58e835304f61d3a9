"""The export gate: PyTorch, ONNX FP32 and ONNX INT8/FP16 outputs compared before a package is written.

Two kinds of check (DESIGN.md §3):

- *Agreement* (PyTorch vs ONNX FP32, or vs FP16) on fixed images: the raw outputs (every anchor's box and
  class scores) within tolerance, and after vision.postprocess every detection of one side matched on the
  other by class with IoU ≥ 0.95 and score within 0.02 — matched against the other side's raw
  candidates, so NMS ties (which of two overlapping near-equal boxes survives) and the score floor cannot
  fail a graph that computes the same numbers.
- *Accuracy* (ONNX INT8 vs ONNX FP32) on a labelled validation set: COCO mAP@0.5 (training.metrics) may
  drop by at most `max_map50_drop`. Quantisation error is expected, so agreement is the wrong test; but an
  mAP is meaningless for a model that detects nothing (an untrained one), so below `min_meaningful_map50`
  the gate falls back to a raw-agreement criterion with quantisation-sized tolerances (see
  `Int8Tolerances`) and says so in its report.

Everything here works on numpy outputs; the callers (training.export) make them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from training.metrics import ImageTruth, detection_metrics
from vision.boxes import iou_xyxy
from vision.letterbox import LetterboxParams
from vision.postprocess import Detections, PostprocessParams, postprocess_batch, postprocess_to_scans

#: Raw outputs of one run: boxes_xyxy B×A×4 (input pixels) and scores B×A×K.
RawOutputs = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Tolerances:
    """Agreement tolerances. box_iou/score_atol: per matched detection (the DESIGN's figures);
    raw_box_atol_px/raw_score_atol: per anchor, over all anchors and classes."""

    box_iou: float = 0.95
    score_atol: float = 0.02
    raw_box_atol_px: float = 1.0
    raw_score_atol: float = 0.02


#: FP16 keeps 11 significant bits: box coordinates near 512 px are stored to 0.25–0.5 px, so the raw box
#: tolerance grows; detection-level figures stay those of FP32.
FP16_TOLERANCES = Tolerances(raw_box_atol_px=2.0)


@dataclass(frozen=True)
class Int8Tolerances:
    """INT8 vs FP32. max_map50_drop: in mAP units (0.01 = 1 point). Below min_meaningful_map50 (FP32 mAP
    of an untrained or unrelated model) the raw criterion applies instead: the 99th percentile of the
    per-anchor score error ≤ raw_score_p99; among the `top_k` anchors of each image by FP32 score, the
    median IoU of INT8 vs FP32 boxes ≥ raw_box_median_iou; and at least det_recall of the FP32
    detections scoring ≥ det_min_score found again by INT8 (same class, IoU ≥ 0.5).

    For scale: a briefly trained n model (128 px) quantised as training.quantize does gave a p99 score
    error of 0.003 and a median top-box IoU of 0.98 (0.93 with its head quantised too), so the raw limits
    pass a sound quantisation with a wide margin and catch a broken one (wrong scales, a quantised decode)."""

    max_map50_drop: float = 0.01
    min_meaningful_map50: float = 0.05
    raw_score_p99: float = 0.05
    raw_box_median_iou: float = 0.85
    top_k: int = 100
    det_min_score: float = 0.25
    det_recall: float = 0.9


@dataclass(frozen=True)
class GateCheck:
    """One comparison. figures: what was measured; failures: why it failed (empty when it passed)."""

    name: str
    figures: dict[str, float | int | str | None]
    failures: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        status = "passed" if self.passed else "FAILED"
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in self.figures.items())
        lines = [f"{self.name}: {status} ({shown})"]
        lines += [f"  - {f}" for f in self.failures]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(value: float | int | str | None) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def compare_raw(ref: RawOutputs, test: RawOutputs, tol: Tolerances) -> tuple[dict[str, float], list[str]]:
    """Per-anchor agreement of two raw outputs of the same inputs (shapes must match)."""
    (rb, rs), (tb, ts) = ref, test
    failures: list[str] = []
    if rb.shape != tb.shape or rs.shape != ts.shape:
        return {}, [f"output shapes differ: boxes {rb.shape} vs {tb.shape}, scores {rs.shape} vs {ts.shape}"]
    if not (np.isfinite(tb).all() and np.isfinite(ts).all()):
        failures.append("non-finite values in the outputs under test")
    box_err = float(np.nanmax(np.abs(rb.astype(np.float64) - tb))) if rb.size else 0.0
    score_err = float(np.nanmax(np.abs(rs.astype(np.float64) - ts))) if rs.size else 0.0
    if box_err > tol.raw_box_atol_px:
        failures.append(f"raw boxes differ by up to {box_err:.3g} px (tolerance {tol.raw_box_atol_px} px)")
    if score_err > tol.raw_score_atol:
        failures.append(f"raw scores differ by up to {score_err:.3g} (tolerance {tol.raw_score_atol})")
    return {"raw_box_max_err_px": box_err, "raw_score_max_err": score_err}, failures


def _unmatched(
    dets: Detections, boxes: np.ndarray, scores: np.ndarray, tol: Tolerances
) -> tuple[int, list[str], float, float]:
    """Count detections of one side that no anchor of the other side's raw output reproduces (same
    class, score within score_atol, IoU ≥ box_iou); also the worst IoU and score error among matches.

    Matching against the other side's anchors rather than its final detections makes the check immune to
    NMS ties: when two overlapping boxes have near-equal scores, float noise decides which one survives,
    but both sides still *produce* both boxes.
    """
    missing, examples = 0, []
    worst_iou, worst_score = 1.0, 0.0
    for box, score, cid in zip(dets.boxes_xyxy, dets.scores, dets.class_ids):
        err = np.abs(scores[:, cid].astype(np.float64) - float(score))
        near = np.flatnonzero(err <= tol.score_atol)  # NaN compares False: a NaN output never matches
        ious = iou_xyxy(box[None], boxes[near])[0] if near.size else np.zeros(0)
        ok = ious >= tol.box_iou
        if ok.any():
            worst_iou = min(worst_iou, float(ious[ok].max()))
            worst_score = max(worst_score, float(err[near][ok].min()))
            continue
        missing += 1
        if len(examples) < 3:
            best_iou = float(ious.max()) if ious.size else 0.0
            closest = float(scores[np.nanargmin(err), cid]) if np.isfinite(err).any() else float("nan")
            examples.append(
                f"class {int(cid)} score {float(score):.3f} box {np.round(box, 1).tolist()}: best IoU among anchors "
                f"scoring within {tol.score_atol} {best_iou:.3f}; closest score {closest:.3f}"
            )
    return missing, examples, worst_iou, worst_score


def compare_detections(
    ref: RawOutputs, test: RawOutputs, params: PostprocessParams, tol: Tolerances
) -> tuple[dict[str, float | int], list[str]]:
    """Both directions: every detection (after vision.postprocess) of one side is reproduced by the other."""
    ref_dets, test_dets = postprocess_batch(*ref, params), postprocess_batch(*test, params)
    failures: list[str] = []
    counts = {"missing from": 0, "extra in": 0}
    worst_iou, worst_score = 1.0, 0.0
    for i in range(len(ref_dets)):
        for direction, dets, (boxes, scores) in (
            ("missing from", ref_dets[i], (test[0][i], test[1][i])),
            ("extra in", test_dets[i], (ref[0][i], ref[1][i])),
        ):
            count, examples, w_iou, w_score = _unmatched(dets, boxes, scores, tol)
            worst_iou, worst_score = min(worst_iou, w_iou), max(worst_score, w_score)
            counts[direction] += count
            failures += [f"image {i}: detection {direction} the graph under test: {e}" for e in examples]
    figures = {
        "detections_ref": int(sum(len(d) for d in ref_dets)),
        "detections_test": int(sum(len(d) for d in test_dets)),
        "unmatched_ref": counts["missing from"],
        "unmatched_test": counts["extra in"],
        "worst_match_iou": worst_iou,
        "worst_match_score_err": worst_score,
    }
    return figures, failures


def agreement_check(
    name: str, ref: RawOutputs, test: RawOutputs, params: PostprocessParams, tol: Tolerances = Tolerances()
) -> GateCheck:
    """Raw and detection-level agreement of two runs on the same letterboxed inputs (input pixels)."""
    figures, failures = compare_raw(ref, test, tol)
    if figures:
        det_figures, det_failures = compare_detections(ref, test, params, tol)
        figures |= det_figures
        failures += det_failures
    return GateCheck(name=name, figures=figures, failures=tuple(failures))


def detections_in_scan_pixels(
    raw: RawOutputs, letterbox: Sequence[LetterboxParams], params: PostprocessParams
) -> list[Detections]:
    """vision.postprocess.postprocess_to_scans: the lane's detections, in each scan's own pixels."""
    return postprocess_to_scans(*raw, params, letterbox)


def _paired_box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of a[i] with b[i] for N×4 xyxy arrays."""
    lt = np.maximum(a[:, :2], b[:, :2])
    rb = np.minimum(a[:, 2:], b[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def _raw_int8_agreement(
    fp32: RawOutputs, int8: RawOutputs, fp32_dets: Sequence[Detections], int8_dets: Sequence[Detections],
    tol: Int8Tolerances,
) -> tuple[dict[str, float | int], list[str]]:
    (b32, s32), (b8, s8) = fp32, int8
    failures: list[str] = []
    score_p99 = float(np.percentile(np.abs(s32.astype(np.float64) - s8), 99)) if s32.size else 0.0
    top = np.argsort(-s32.max(axis=2), axis=1)[:, : tol.top_k]  # B×k anchors FP32 is surest about
    rows = np.arange(b32.shape[0])[:, None]
    ious = _paired_box_iou(b32[rows, top].reshape(-1, 4), b8[rows, top].reshape(-1, 4))
    median_iou = float(np.median(ious)) if ious.size else 1.0
    confident = found = 0
    for d32, d8 in zip(fp32_dets, int8_dets):
        for box, score, cid in zip(d32.boxes_xyxy, d32.scores, d32.class_ids):
            if score < tol.det_min_score:
                continue
            confident += 1
            same = d8.class_ids == cid
            found += bool(same.any() and iou_xyxy(box[None], d8.boxes_xyxy[same]).max() >= 0.5)
    recall = found / confident if confident else 1.0
    # (Written so that a NaN figure fails: NaN compares false both ways.)
    if not score_p99 <= tol.raw_score_p99:
        failures.append(f"99th percentile of the score error {score_p99:.3g} > {tol.raw_score_p99}")
    if not median_iou >= tol.raw_box_median_iou:
        failures.append(f"median IoU of the top-{tol.top_k} boxes {median_iou:.3f} < {tol.raw_box_median_iou}")
    if recall < tol.det_recall:
        failures.append(f"INT8 finds {found}/{confident} of FP32's detections scoring ≥ {tol.det_min_score}")
    figures = {"raw_score_err_p99": score_p99, "top_box_median_iou": median_iou, "fp32_confident_dets": confident,
               "int8_recall_of_fp32": recall}
    return figures, failures


def int8_check(
    fp32: RawOutputs,
    int8: RawOutputs,
    letterbox: Sequence[LetterboxParams],
    truths: Sequence[ImageTruth],
    class_names: Sequence[str],
    params: PostprocessParams,
    tol: Int8Tolerances = Int8Tolerances(),
) -> GateCheck:
    """INT8 vs FP32 accuracy on a labelled validation set (see module docstring for the criterion)."""
    d32 = detections_in_scan_pixels(fp32, letterbox, params)
    d8 = detections_in_scan_pixels(int8, letterbox, params)
    m32 = detection_metrics(truths, d32, class_names).map50
    m8 = detection_metrics(truths, d8, class_names).map50
    figures: dict[str, float | int | str | None] = {"map50_fp32": m32, "map50_int8": m8, "images": len(truths)}
    raw_figures, raw_failures = _raw_int8_agreement(fp32, int8, d32, d8, tol)
    figures |= raw_figures
    # Non-finite outputs fail whatever the criterion (post-processing drops them, so the mAP cannot see them).
    broken = [] if np.isfinite(int8[0]).all() and np.isfinite(int8[1]).all() else ["non-finite values in the INT8 outputs"]
    if m32 is not None and m32 >= tol.min_meaningful_map50:
        figures["criterion"] = "map50"
        drop = m32 - (m8 or 0.0)
        figures["map50_drop_points"] = 100.0 * drop
        failures = [] if drop <= tol.max_map50_drop else [
            f"INT8 mAP@0.5 {m8:.4f} is {100 * drop:.2f} points below FP32's {m32:.4f} (allowed {100 * tol.max_map50_drop:.1f})"
        ]
        return GateCheck(name="onnx int8 vs onnx fp32 (validation mAP)", figures=figures,
                         failures=tuple(broken + failures))
    figures["criterion"] = "raw agreement"
    why = "has no ground truth of the model's classes" if m32 is None else f"gives FP32 mAP@0.5 {m32:.4f}"
    note = (f"the validation set {why} (< {tol.min_meaningful_map50}: an untrained or unrelated model), so the "
            "raw-output agreement criterion was used instead of the mAP drop")
    return GateCheck(name="onnx int8 vs onnx fp32 (raw agreement)", figures=figures,
                     failures=tuple(broken + raw_failures), notes=(note,))
