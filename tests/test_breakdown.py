"""Recall per concealment: the hand-made counting rule, the meta lookup of a synthetic set, and `xscreen eval`
reporting it for a set made by the synthesiser (and not for other datasets)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from datasets.synth.concealment import CONCEALMENTS
from datasets.synth.pipeline import SynthConfig, synthesise_set
from tests.tiny_checkpoint import CLASSES, make_checkpoint
from training.breakdown import recall_by_group, synth_concealments
from training.evaluate import build_eval_dataset, predict_dataset
from training.metrics import ImageTruth
from vision.cli import app
from vision.decide import DecisionPolicy
from vision.postprocess import Detections, PostprocessParams
from vision.preprocess import PreprocessSpec

TWO = ("drug_package", "cash_bundle")


def _truth(image_id: str, boxes: list[list[float]], ids: list[int]) -> ImageTruth:
    return ImageTruth(image_id=image_id, width=100, height=100, boxes_xyxy=np.array(boxes, np.float32).reshape(-1, 4),
                      class_ids=np.array(ids, np.int64))


def _dets(boxes: list[list[float]], scores: list[float], ids: list[int]) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32), np.array(ids, np.int64))


def test_recall_by_group_counts_found_and_located_at_the_thresholds():
    policy = DecisionPolicy(class_names=TWO, thresholds={"drug_package": 0.5, "cash_bundle": 0.3})
    truths = [
        _truth("a", [[0, 0, 10, 10], [50, 50, 70, 70], [80, 0, 100, 20]], [0, 1, 0]),
        _truth("b", [[0, 0, 40, 40], [60, 60, 90, 90]], [1, 0]),
    ]
    dets = [
        _dets(
            [[0, 0, 10, 11],    # drug_package 0.6 ≥ 0.5 on truth 0: found
             [50, 50, 70, 69],  # drug_package 0.55 on the cash truth: located, not found
             [80, 0, 100, 20]],  # drug_package 0.45 < 0.5 on truth 2: nothing
            [0.6, 0.55, 0.45], [0, 0, 0],
        ),
        _dets([[0, 0, 40, 40], [0, 0, 12, 12]], [0.31, 0.99], [1, 1]),  # cash 0.31 ≥ 0.3: found; 2nd misses
    ]
    groups = [["none", "lining", "none"], ["lining", None]]  # None: left out
    out = recall_by_group(truths, dets, groups, policy)
    assert list(out) == ["lining", "none"]
    assert out["none"] == {"objects": 2, "found": 0.5, "located": 0.5}
    assert out["lining"] == {"objects": 2, "found": 0.5, "located": 1.0}
    # The lane's floor above a threshold hides the detections between them.
    floored = recall_by_group(truths, dets, groups, policy, score_floor=0.58)
    assert floored["lining"] == {"objects": 2, "found": 0.0, "located": 0.0}
    assert floored["none"]["found"] == 0.5
    with pytest.raises(ValueError, match="group names"):
        recall_by_group(truths, dets, [["none"], ["lining", None]], policy)


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesise_set(SynthConfig(bags=4, seed=3, palette="mixed", size_px=128, clean_fraction=0.0), out, workers=1,
                   progress=False)
    return out


def test_synth_concealments_come_from_the_sets_meta_files(synth_set):
    spec = PreprocessSpec(input_kind="rgb", input_bits=8, height=64, width=64)
    dataset = build_eval_dataset(synth_set, format="auto", classes=CLASSES, spec=spec)

    def nothing(images):  # a predictor that detects nothing: only the truths matter here
        return np.zeros((len(images), 1, 4), np.float32), np.zeros((len(images), 1, len(CLASSES)), np.float32)

    preds = predict_dataset(nothing, dataset, postprocess=PostprocessParams(), batch_size=2)
    names = synth_concealments(preds.truths, CLASSES)
    assert names is not None and [len(n) for n in names] == [len(t.class_ids) for t in preds.truths]
    expected: Counter[str] = Counter()
    for meta in sorted((synth_set / "meta").glob("*.json")):
        expected.update(o["concealment"] for o in json.loads(meta.read_text())["objects"] if o["class"])
    got = Counter(n for row in names for n in row)
    assert None not in got and set(got) <= set(CONCEALMENTS)
    assert got == expected
    # A folder without meta files is not a synthetic set.
    stray = [ImageTruth(image_id=str(synth_set / "elsewhere" / "x.png"), width=10, height=10,
                        boxes_xyxy=np.zeros((1, 4), np.float32), class_ids=np.zeros(1, np.int64))]
    assert synth_concealments(stray, CLASSES) is None


def test_eval_reports_recall_per_concealment_on_a_synthetic_set(synth_set, tmp_path):
    ckpt = make_checkpoint(tmp_path / "m.ckpt", thresholds={c: 0.05 for c in CLASSES})
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval", "--model", str(ckpt), "--data", str(synth_set), "--json", str(out),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    rows = summary["per_concealment"]
    assert sum(r["objects"] for r in rows.values()) == summary["counts"]["boxes"]
    assert all(0.0 <= r["found"] <= r["located"] <= 1.0 for r in rows.values())
    assert "by concealment" in result.output
