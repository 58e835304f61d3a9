"""Evaluation through the lane's code: known-AP fake predictors, letterbox consistency, threshold
calibration meeting its false-alarm target, and the `xscreen eval` / `xscreen calibrate` commands."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from training.evaluate import (
    MAP_SCORE_FLOOR,
    calibrate_from_predictions,
    evaluate_model,
    load_model,
    predict_dataset,
)
from vision.cli import app
from vision.decide import DecisionPolicy, decide
from vision.letterbox import LetterboxSpec, letterbox, letterbox_boxes
from vision.postprocess import PostprocessParams
from tiny_checkpoint import liven, one_torch_thread  # noqa: F401 - one_torch_thread: autouse fixture

CLASSES = ("drug_package", "cash_bundle")
INPUT = 64
ANCHORS = 8




def _item(index: int, orig_hw: tuple[int, int], boxes_orig: list[list[float]], class_ids: list[int]):
    """One dataset item as training.data makes it; the image carries its index in pixel (0, 0, 0) so a fake
    predictor knows which image it sees."""
    _, params = letterbox(np.zeros((*orig_hw, 3), np.uint8), LetterboxSpec(height=INPUT, width=INPUT))
    image = torch.zeros(3, INPUT, INPUT, dtype=torch.uint8)
    image[0, 0, 0] = index
    boxes = letterbox_boxes(np.array(boxes_orig, np.float32).reshape(-1, 4), params)
    target = {
        "boxes_xyxy": torch.from_numpy(boxes),
        "class_ids": torch.tensor(class_ids, dtype=torch.int64),
        "image_id": f"img{index}",
        "has_threat": bool(class_ids),
        "scan_boxes_xyxy": np.array(boxes_orig, np.float32).reshape(-1, 4),
        "scan_class_ids": np.array(class_ids, np.int64),
        "orig_hw": orig_hw,
        "letterbox": params,
    }
    return image, target


def _dataset():
    """Six scans of odd sizes (so the letterbox pads and scales): four with contraband, two clean."""
    return [
        _item(0, (100, 80), [[10, 20, 40, 60]], [0]),
        _item(1, (60, 120), [[5, 5, 50, 40], [60, 10, 110, 50]], [0, 1]),
        _item(2, (90, 90), [[30, 30, 80, 70]], [1]),
        _item(3, (128, 64), [[8, 40, 56, 100]], [0]),
        _item(4, (100, 80), [], []),
        _item(5, (70, 110), [], []),
    ]


def _oracle(dataset, *, score: float = 0.9):
    """A predictor that returns each image's ground truth (input pixels) at `score`, nothing else."""

    def predict(images: np.ndarray):
        b = images.shape[0]
        boxes = np.zeros((b, ANCHORS, 4), np.float32)
        scores = np.zeros((b, ANCHORS, len(CLASSES)), np.float32)
        for row in range(b):
            target = dataset[int(images[row, 0, 0, 0])][1]
            gt = target["boxes_xyxy"].numpy()
            boxes[row, : len(gt)] = gt
            scores[row, np.arange(len(gt)), target["class_ids"].numpy()] = score
        return boxes, scores

    return predict


def _blind(images: np.ndarray):
    b = images.shape[0]
    return np.zeros((b, ANCHORS, 4), np.float32), np.zeros((b, ANCHORS, len(CLASSES)), np.float32)


def _evaluate(predictor, dataset):
    return evaluate_model(
        predictor, dataset, classes=CLASSES, postprocess=PostprocessParams(),
        policy=DecisionPolicy(class_names=CLASSES), batch_size=4,
    )  # fmt: skip


def test_exact_predictions_score_one():
    dataset = _dataset()
    report = _evaluate(_oracle(dataset), dataset)
    assert report.detection.map50 == pytest.approx(1.0)
    assert report.detection.map50_95 == pytest.approx(1.0)
    assert report.detection.ap50_per_class == {"drug_package": pytest.approx(1.0), "cash_bundle": pytest.approx(1.0)}
    assert report.screening.auroc == pytest.approx(1.0)
    assert report.screening.pd_at(0.05) == pytest.approx(1.0)


def test_map_counts_low_scores_but_screening_only_what_the_lane_reports():
    dataset = _dataset()
    # Exact boxes at 0.02, under the lane's floor (0.05): a full PR curve for mAP, but the lane reports
    # nothing, so no bag can alarm and the screening figures are those of a blind model.
    report = _evaluate(_oracle(dataset, score=0.02), dataset)
    assert report.detection.map50 == pytest.approx(1.0)
    assert report.screening.auroc == pytest.approx(0.5)
    assert report.screening.pd_at(0.05) == 0.0
    assert MAP_SCORE_FLOOR < PostprocessParams().score_floor


def test_no_predictions_score_zero():
    dataset = _dataset()
    report = _evaluate(_blind, dataset)
    assert report.detection.map50 == 0.0
    assert report.screening.auroc == pytest.approx(0.5)  # every bag scores 0: a tie
    assert report.screening.pd_at(0.05) == 0.0


def test_boxes_are_compared_in_original_scan_pixels():
    dataset = _dataset()
    preds = predict_dataset(_oracle(dataset), dataset, postprocess=PostprocessParams(), batch_size=4)
    np.testing.assert_allclose(preds.truths[1].boxes_xyxy, [[5, 5, 50, 40], [60, 10, 110, 50]], atol=1e-3)
    assert (preds.truths[1].width, preds.truths[1].height) == (120, 60)
    order = np.argsort(preds.detections[1].class_ids)
    np.testing.assert_allclose(preds.detections[1].boxes_xyxy[order], preds.truths[1].boxes_xyxy, atol=1e-3)
    assert preds.has_threat.tolist() == [True, True, True, True, False, False]


def test_calibrated_thresholds_meet_the_target_pfa():
    rng = np.random.default_rng(0)
    dataset = [_item(i, (80, 80), [[10, 10, 50, 50]] if i < 10 else [], [i % 2] if i < 10 else []) for i in range(40)]
    # Clean bags get one random false detection each; threat bags a hit on their class.
    fake = {i: (int(rng.integers(2)), float(rng.uniform(0.05, 0.95))) for i in range(40)}

    def predictor(images):
        b = images.shape[0]
        boxes = np.tile(np.array([[10.0, 10.0, 40.0, 40.0]], np.float32), (b, ANCHORS, 1))
        scores = np.zeros((b, ANCHORS, 2), np.float32)
        for row in range(b):
            i = int(images[row, 0, 0, 0])
            cls, s = (i % 2, 0.3 + 0.6 * fake[i][1]) if i < 10 else fake[i]
            scores[row, 0, cls] = s
        return boxes, scores

    preds = predict_dataset(predictor, dataset, postprocess=PostprocessParams(), batch_size=8)
    cal = calibrate_from_predictions(preds, classes=CLASSES, target_pfa=0.1, score_floor=0.05)
    policy = DecisionPolicy(class_names=CLASSES, thresholds=cal.thresholds)
    alarms = np.array([decide(d, CLASSES, policy).alarm for d in preds.detections])
    clean = ~preds.has_threat
    assert alarms[clean].mean() <= 0.1 + 1e-12
    assert alarms[clean].sum() >= 1  # the budget is used, not wasted on a threshold of 1.0
    assert cal.achieved_pfa == pytest.approx(alarms[clean].mean())
    assert cal.pd == pytest.approx(alarms[~clean].mean())


def test_an_under_confident_models_floor_follows_its_thresholds(tmp_path):
    from training.checkpoint import with_thresholds
    from training.evaluate import calibrated_score_floor

    assert calibrated_score_floor({"a": 0.3, "b": 0.02}, 0.05) == 0.02  # lowered to the lowest threshold
    assert calibrated_score_floor({"a": 0.3, "b": 0.2}, 0.05) == 0.05  # never raised
    state = {"classes": ["a", "b"], "thresholds": {"a": 0.5, "b": 0.5}, "postprocess": {"score_floor": 0.05, "iou_threshold": 0.6}}
    out = with_thresholds(state, {"a": 0.3, "b": 0.02}, None, score_floor=0.02)
    assert out["postprocess"] == {"score_floor": 0.02, "iou_threshold": 0.6} and state["postprocess"]["score_floor"] == 0.05
    with pytest.raises(ValueError, match="score_floor"):
        with_thresholds(state, {"a": 0.3, "b": 0.02}, None, score_floor=0.05)  # above a threshold: alarms lost


# --- the commands -------------------------------------------------------------------------------------


def _checkpoint(path: Path) -> Path:
    """A checkpoint of an untrained 64-px model with varied outputs and raised class biases, so it fires at
    varied scores and calibration has something to work on (at the default init every score is the class
    bias's own, and which tied detection or bag wins would rest on rounding)."""
    from training import engine
    from training.checkpoint import build_checkpoint, save_checkpoint
    from training.config import load_config
    from training.ema import ModelEMA
    from training.schedule import build_optimizer, build_schedule

    config = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml",
        ["model.input_size=64", f"data.classes=[{','.join(CLASSES)}]"],
    )
    spec = engine.data_lib.preprocess_spec_for(config.model)
    torch.manual_seed(0)
    model = engine.build_model(config, spec).eval()
    liven(model, spec, class_bias=-1.0)
    state = build_checkpoint(
        config=config, spec=spec, model=model, ema=ModelEMA(model, decay=0.9),
        optimizer=build_optimizer(model, lr=1e-3, weight_decay=0.0), scaler=torch.amp.GradScaler("cpu", enabled=False),
        schedule=build_schedule(peak_lr=1e-3, epochs=1, steps_per_epoch=1, warmup_epochs=0),
        step=0, epoch=0, best_map50=None, metrics=None,
    )  # fmt: skip
    return save_checkpoint(state, path)


def _coco_folder(root: Path) -> Path:
    """Six noise scans (80×60) in COCO layout: four with boxes, two clean."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(6):
        cv2.imwrite(str(root / "images" / f"s{i}.png"), rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": f"s{i}.png", "width": 80, "height": 60})
        if i < 4:
            anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "bbox": [10, 8, 30, 25], "area": 750, "iscrowd": 0})
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return root


def test_eval_command_writes_json_and_plots(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.ckpt")
    data = _coco_folder(tmp_path / "data")
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        app, ["eval", "--model", str(ckpt), "--data", str(data), "--json", str(out), "--plots", str(tmp_path / "plots"), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert {"map50", "map50_95", "per_class", "bag_auroc", "pd_at_pfa"} <= set(summary)
    assert set(summary["pd_at_pfa"]) == {"0.01", "0.05"}
    assert set(summary["per_class"]) == set(CLASSES)
    assert summary["counts"]["images"] == 6 and summary["counts"]["clean_bags"] == 2
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["bag_roc.png", "confusion_matrix.png", "pr_curves.png"]


def test_calibrate_command_saves_thresholds_that_meet_the_target(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.ckpt")
    data = _coco_folder(tmp_path / "data")
    out = tmp_path / "calibrated.ckpt"
    result = CliRunner().invoke(
        app, ["calibrate", "--model", str(ckpt), "--data", str(data), "--target-pfa", "0.5", "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert "threshold" in result.output and "Pd" in result.output
    loaded = load_model(out, device="cpu")
    state = loaded.checkpoint
    assert set(state["thresholds"]) == set(CLASSES)
    assert state["thresholds"] != {c: 0.5 for c in CLASSES}
    assert state["operating_point"]["target_pfa"] == 0.5
    # The lane reports every detection that may alarm: its floor is at most the lowest threshold.
    assert loaded.postprocess.score_floor == state["operating_point"]["score_floor"]
    assert loaded.postprocess.score_floor <= min(state["thresholds"].values())
    assert torch.load(ckpt, weights_only=True)["thresholds"] == {c: 0.5 for c in CLASSES}  # --out left --model alone
    # Re-run the calibrated model through the lane's decision: at most half of the 2 clean bags alarm.
    from training.evaluate import build_eval_dataset

    dataset = build_eval_dataset(data, format="auto", classes=loaded.classes, spec=loaded.spec)
    preds = predict_dataset(loaded.predictor, dataset, postprocess=loaded.postprocess, batch_size=4)
    alarms = np.array([decide(d, loaded.classes, loaded.policy).alarm for d in preds.detections])
    assert preds.has_threat.sum() == 4
    assert alarms[~preds.has_threat].mean() <= 0.5
    assert state["operating_point"]["achieved_pfa"] == pytest.approx(alarms[~preds.has_threat].mean())


def test_eval_of_an_onnx_file_fails_clearly(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    data = _coco_folder(tmp_path / "data")
    result = CliRunner().invoke(app, ["eval", "--model", str(bogus), "--data", str(data)])
    assert result.exit_code == 2
    assert "model.onnx" in result.output


@pytest.mark.slow
def test_onnx_package_and_checkpoint_evaluate_alike(tmp_path):
    pytest.importorskip("training.export")
    pytest.importorskip("inference.engine")
    ckpt = _checkpoint(tmp_path / "m.ckpt")
    data = _coco_folder(tmp_path / "data")
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(ckpt), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    summaries = []
    for model in (ckpt, tmp_path / "m.onnx"):
        out = tmp_path / f"{model.suffix[1:]}.json"
        result = runner.invoke(app, ["eval", "--model", str(model), "--data", str(data), "--json", str(out), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        summaries.append(json.loads(out.read_text()))
    a, b = summaries
    assert a["counts"]["predicted_boxes"] == b["counts"]["predicted_boxes"] > 0
    for key in ("map50", "map50_95", "bag_auroc"):
        assert a[key] == pytest.approx(b[key], abs=1e-6)
