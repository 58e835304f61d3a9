"""Evaluate a detector on a dataset through the lane's own code: vision.postprocess → vision.letterbox
.unletterbox → vision.decide, then training.metrics.

The model is reached only through a *predictor*: a callable

    predictor(images) -> (boxes_xyxy, scores)
        images:     B×C×H×W numpy array, the letterboxed model input (uint8, or int32 holding uint16 values)
        boxes_xyxy: B×A×4 float32, input pixels (the letterboxed frame)
        scores:     B×A×K float32 per-class probabilities

made from a torch Detector (`torch_predictor`) or from the ONNX Runtime engine (`inference.engine.Engine.run`),
so a PyTorch model and its exported package are measured by exactly the same code.

Coordinates: detections and ground truth are both compared in the *original scan's* pixels. Detections are
mapped back by `vision.postprocess.postprocess_to_scans` with the target's own LetterboxParams (as on the
lane: `unletterbox`, and a box wholly in the padding dropped); ground truth, which the data pipeline
letterboxed, is mapped back with the same parameters (an exact inverse, up to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from training.config import SourceConfig
from training.data import build_dataset, collate
from training.metrics import (
    EvaluationReport,
    ImageTruth,
    ThresholdCalibration,
    calibrate_thresholds,
    detection_metrics,
    per_image_class_max_scores,
    screening_metrics,
)
from vision.decide import DecisionPolicy, bag_score
from vision.postprocess import Detections, PostprocessParams, postprocess_to_scans
from vision.preprocess import PreprocessSpec

Predictor = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
TARGET_PFAS = (0.01, 0.05)


def torch_predictor(model: torch.nn.Module, *, device: torch.device | str = "cpu") -> Predictor:
    """A predictor running `model` (a Detector; switched to eval mode) on `device`, without gradients."""
    device = torch.device(device)
    model.eval()

    @torch.no_grad()
    def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        boxes_xyxy, scores = model(x)
        return boxes_xyxy.float().cpu().numpy(), scores.float().cpu().numpy()

    return predict


@dataclass(frozen=True, eq=False)
class DatasetPredictions:
    """Per image of a dataset, in dataset order: truths and detections in original-scan pixels, and
    whether the bag holds contraband (B bool)."""

    truths: list[ImageTruth]
    detections: list[Detections]
    has_threat: np.ndarray


def predict_dataset(
    predictor: Predictor,
    dataset: Dataset,
    *,
    postprocess: PostprocessParams,
    batch_size: int,
    workers: int = 0,
) -> DatasetPredictions:
    """Run `predictor` over every item of `dataset` (items: image C×H×W tensor, target dict with
    scan_boxes_xyxy N×4 and scan_class_ids N (every annotated object, scan pixels), image_id, has_threat,
    orig_hw, letterbox) and post-process."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
    truths: list[ImageTruth] = []
    detections: list[Detections] = []
    threat: list[bool] = []
    for images, targets in loader:
        boxes_xyxy, scores = predictor(images.numpy())
        letterboxes = [target["letterbox"] for target in targets]
        for dets, target in zip(postprocess_to_scans(boxes_xyxy, scores, postprocess, letterboxes), targets, strict=True):
            detections.append(dets)
            height, width = (int(v) for v in target["orig_hw"])
            truths.append(
                ImageTruth(
                    image_id=str(target["image_id"]),
                    width=width,
                    height=height,
                    boxes_xyxy=np.asarray(target["scan_boxes_xyxy"], dtype=np.float32).reshape(-1, 4),
                    class_ids=np.asarray(target["scan_class_ids"], dtype=np.int64).reshape(-1),
                )
            )
            threat.append(bool(target["has_threat"]))
    return DatasetPredictions(truths=truths, detections=detections, has_threat=np.array(threat, dtype=bool))


#: Score floor of the detection (mAP) figures. COCO mAP integrates the whole precision–recall curve, so
#: detections down to this score are kept, as YOLO's and Detectron's validation do; a lane floor of 0.05
#: would cut the curve short and understate an under-confident model's AP (by 3x on a 33-minute CPU run).
#: The screening figures use only what the lane itself reports (detections ≥ the package's own floor).
MAP_SCORE_FLOOR = 0.001


def map_postprocess(postprocess: PostprocessParams) -> PostprocessParams:
    """The lane's post-processing with its floor lowered to MAP_SCORE_FLOOR: what mAP and calibration see."""
    return postprocess.model_copy(update={"score_floor": min(postprocess.score_floor, MAP_SCORE_FLOOR)})


def calibrated_score_floor(thresholds: dict[str, float], floor: float) -> float:
    """The post-processing floor of a calibrated package: its own, lowered to its lowest threshold when the
    calibration needed one below it (an under-confident model), so that every alarm the thresholds call
    for is among the detections the lane reports."""
    return min(float(floor), min(float(v) for v in thresholds.values()))


def _at_least(dets: Detections, floor: float) -> Detections:
    keep = dets.scores >= floor
    if bool(keep.all()):
        return dets
    return Detections(dets.boxes_xyxy[keep], dets.scores[keep], dets.class_ids[keep])


def report_from_predictions(
    predictions: DatasetPredictions,
    *,
    classes: Sequence[str],
    policy: DecisionPolicy,
    target_pfas: Sequence[float] = TARGET_PFAS,
    lane_score_floor: float = 0.0,
) -> EvaluationReport:
    """COCO figures (confusion matrix at the policy's thresholds) and bag-level screening figures, the bag
    score being `vision.decide.bag_score` (≥ 1 ⇔ the deployed policy alarms).

    lane_score_floor: the screening figures see only detections scoring at least this (the lane's own
    post-processing floor), when `predictions` were made with a lower one for the mAP figures. Greedy NMS
    never lets a lower score suppress a higher one, so the detections left are exactly the lane's.
    """
    names = tuple(classes)
    if policy.class_names != names:
        raise ValueError(f"policy classes {policy.class_names} do not match the model's {names}")
    detection = detection_metrics(
        predictions.truths, predictions.detections, names, confusion_score_threshold=policy.threshold_array()
    )
    lane = [_at_least(d, lane_score_floor) for d in predictions.detections]
    bag_scores = np.array([bag_score(d, None, policy) for d in lane], dtype=np.float64)
    screening = screening_metrics(bag_scores, predictions.has_threat, target_pfas=target_pfas)
    return EvaluationReport(detection=detection, screening=screening)


def predict_and_report(
    predictor: Predictor,
    dataset: Dataset,
    *,
    classes: Sequence[str],
    postprocess: PostprocessParams,
    policy: DecisionPolicy,
    batch_size: int,
    workers: int = 0,
    target_pfas: Sequence[float] = TARGET_PFAS,
) -> tuple[DatasetPredictions, EvaluationReport]:
    """Detection mAP (map50, map50_95, per class) and bag screening (AUROC, Pd at each Pfa) of a predictor
    on a dataset, with the predictions they were measured on (for figures of one's own on the same
    detections). Serialise the report with `training.metrics.evaluation_json`, draw it with
    `training.plots.write_plots`.

    mAP counts detections down to MAP_SCORE_FLOOR; the screening figures only those the lane reports."""
    predictions = predict_dataset(predictor, dataset, postprocess=map_postprocess(postprocess),
                                  batch_size=batch_size, workers=workers)
    report = report_from_predictions(predictions, classes=classes, policy=policy, target_pfas=target_pfas,
                                     lane_score_floor=postprocess.score_floor)
    return predictions, report


def evaluate_model(predictor: Predictor, dataset: Dataset, **kwargs: Any) -> EvaluationReport:
    """The report of `predict_and_report` (same keyword arguments), without the predictions."""
    return predict_and_report(predictor, dataset, **kwargs)[1]


def calibrate_from_predictions(
    predictions: DatasetPredictions, *, classes: Sequence[str], target_pfa: float, score_floor: float
) -> ThresholdCalibration:
    """Per-class thresholds whose bag-level false-alarm rate on the clean bags is ≤ target_pfa
    (`training.metrics.calibrate_thresholds`; Pd is reported on the threat bags).

    Thresholds are raised to at least `score_floor`: no detection exists below it, so a lower threshold
    alarms on exactly the same bags and would only read as a misleadingly sensitive setting."""
    scores = per_image_class_max_scores(predictions.detections, len(classes))
    cal = calibrate_thresholds(scores, ~predictions.has_threat, target_pfa, classes)
    floor = max(float(score_floor), np.nextafter(np.float32(0), np.float32(1)).item())
    return ThresholdCalibration(
        thresholds={k: max(v, floor) for k, v in cal.thresholds.items()},
        target_pfa=cal.target_pfa,
        achieved_pfa=cal.achieved_pfa,
        pd=cal.pd,
        per_class_false_alarms=cal.per_class_false_alarms,
        n_clean=cal.n_clean,
        n_threat=cal.n_threat,
        notes=cal.notes,
    )


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for `evaluate_model`, and what it was shipped with. checkpoint: the checkpoint dict
    (None for an ONNX package)."""

    predictor: Predictor
    classes: tuple[str, ...]
    spec: PreprocessSpec
    postprocess: PostprocessParams
    policy: DecisionPolicy
    checkpoint: dict[str, Any] | None


class OnnxEngineUnavailableError(RuntimeError):
    """Evaluating a .onnx package needs `inference.engine.Engine` (ONNX Runtime), which is not installed here."""


def load_model(path: Path | str, *, device: str = "auto") -> LoadedModel:
    """A training checkpoint (.ckpt/.pt: its EMA weights, thresholds and settings) or an exported ONNX
    package (through `inference.engine.Engine`, so the package metadata is checked as a lane would)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path)
    from training.checkpoint import load_checkpoint
    from training.distributed import resolve_device
    from training.model import detector_from_checkpoint

    state = load_checkpoint(path)
    dev = resolve_device(device)
    model = detector_from_checkpoint(state).to(dev)
    classes = tuple(state["classes"])
    return LoadedModel(
        predictor=torch_predictor(model, device=dev),
        classes=classes,
        spec=PreprocessSpec.model_validate(state["preprocess"]),
        postprocess=PostprocessParams.model_validate(state["postprocess"]),
        policy=DecisionPolicy(class_names=classes, thresholds=dict(state["thresholds"])),
        checkpoint=state,
    )


def _load_onnx(path: Path) -> LoadedModel:
    try:
        from inference.engine import Engine
    except ImportError as exc:
        raise OnnxEngineUnavailableError(
            f"{path}: evaluating an ONNX package needs the ONNX engine (inference.engine.Engine, ONNX Runtime), "
            f"which this install lacks ({exc}); evaluate the training checkpoint instead"
        ) from exc
    engine = Engine(path)
    return LoadedModel(
        predictor=engine.run,
        classes=tuple(engine.class_names),
        spec=engine.spec,
        postprocess=engine.package.postprocess,
        policy=engine.policy,
        checkpoint=None,
    )


def build_eval_dataset(path: Path | str, *, format: str, classes: Sequence[str], spec: PreprocessSpec) -> Dataset:
    """A dataset folder or file read through the training data pipeline as one `dataset` source, with the
    model's classes (a folder made by `xscreen synth` is a COCO dataset)."""
    source = SourceConfig(kind="dataset", path=str(path), format=format)
    return build_dataset((source,), classes=tuple(classes), spec=spec, train=False, augment=False, seed=0)
