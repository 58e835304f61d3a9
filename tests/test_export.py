"""training.export: the graph's interface, the metadata round trip, provenance, and the gate that keeps a
disagreeing graph from ever being written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

import training.export as export_mod
from inference.engine import Engine, read_package, weights_sha256
from tiny_checkpoint import CLASSES, exported_package, make_checkpoint
from training.export import (
    CheckpointError,
    ExportGateError,
    export_package,
    load_export_checkpoint,
    operational_use,
    provenance_entry,
)
from training.metrics import ImageTruth
from training.parity import Int8Tolerances, Tolerances, agreement_check, int8_check
from training.quantize import QuantizationError, int8_excluded_nodes
from vision.cli import app
from vision.letterbox import LetterboxParams
from vision.package import DatasetProvenance, ModelPackage
from vision.postprocess import PostprocessParams


def _perturbed(original):
    """A torch_to_onnx that returns a graph whose class-score bias was nudged (a corrupted export)."""

    def export(model, **kwargs):
        proto = original(model, **kwargs)
        bias = next(t for t in proto.graph.initializer if "cls_branches" in t.name and t.name.endswith("bias"))
        values = onnx.numpy_helper.to_array(bias) + np.float32(0.5)
        bias.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), bias.name))
        return proto

    return export


# ----------------------------------------------------------------------------------------- FP32 package


def test_fp32_package_interface_and_metadata_round_trip():
    ckpt, path = exported_package("rgb")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8 and dims == ["batch", 3, 64, 64]
    assert [o.name for o in proto.graph.output] == ["boxes_xyxy", "scores"]

    _, package = read_package(path)
    state = torch.load(ckpt, weights_only=True)
    assert package.name == "tiny" and package.version == "e3+abababab"
    assert package.class_names == CLASSES and package.thresholds == {c: 0.4 for c in CLASSES}
    assert package.preprocess.model_dump() == state["preprocess"]
    assert package.postprocess.model_dump() == state["postprocess"]
    assert package.precision == "fp32" and package.training_config_sha256 == "ab" * 32
    assert package.weights_sha256 == weights_sha256(path)
    assert package.operational_use and [d.kind for d in package.datasets] == ["synthetic"]
    assert package.outputs == ("boxes_xyxy", "scores")


def test_gate_fails_on_a_perturbed_graph_and_writes_nothing(tmp_path, monkeypatch):
    ckpt, _ = exported_package("rgb")
    monkeypatch.setattr(export_mod, "torch_to_onnx", _perturbed(export_mod.torch_to_onnx))
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportGateError, match="no package was written") as info:
        export_package(ckpt, out)
    assert not out.exists() and not list(tmp_path.iterdir())
    (check,) = info.value.checks
    assert not check.passed and any("raw scores differ" in f for f in check.failures)


def test_export_command_exit_codes(tmp_path, monkeypatch):
    ckpt, _ = exported_package("rgb")

    def failing_export(*args, **kwargs):
        raise ExportGateError("export gate failed (pytorch vs onnx fp32); no package was written:\n…", ())

    monkeypatch.setattr(export_mod, "export_package", failing_export)
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(out)])
    assert result.exit_code == 1 and "no package was written" in result.output and not out.exists()
    result = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(out), "--calib", str(tmp_path)])
    assert result.exit_code != 0 and "--int8" in result.output


@pytest.mark.slow
def test_dual_energy_package_takes_uint16_pairs(tmp_path):
    from datasets.synth.pipeline import SynthConfig, make_bag
    from inference.predict import collect_inputs, predict_inputs
    from vision.decode import encode_png

    _, path = exported_package("dual_energy")
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT16
    engine = Engine(path, threads=1)
    assert engine.spec.input_kind == "dual_energy" and engine.spec.input_bits == 16
    raw = make_bag(SynthConfig(size_px=128, seed=9), 0).raw  # H×W×2 uint16 counts, air ≈ 60000
    (tmp_path / "s_low.png").write_bytes(encode_png(raw[:, :, 0]))
    (tmp_path / "s_high.png").write_bytes(encode_png(raw[:, :, 1]))
    (record,) = predict_inputs(engine, collect_inputs([tmp_path], dual_energy=True))
    assert "error" not in record and record["image"].endswith("/s")
    direct = engine.predict([raw])[0].detections
    assert len(record["detections"]) == len(direct)
    np.testing.assert_allclose([d["score"] for d in record["detections"]], direct.scores)


# ---------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_defaults_and_refusals(tmp_path):
    ckpt = make_checkpoint(tmp_path / "a.ckpt", class_bias=None, thresholds={"ivory": 0.7},
                           extra={"postprocess": None, "datasets": None})
    ck = load_export_checkpoint(ckpt)
    assert ck.thresholds["ivory"] == 0.7 and ck.thresholds["tobacco"] == 0.5
    assert ck.postprocess == PostprocessParams() and ck.datasets == () and not operational_use(ck.datasets)

    state = torch.load(ckpt, weights_only=True)
    for broken, message in (
        ({k: v for k, v in state.items() if k != "classes"}, "lacks"),
        ({**state, "classes": CLASSES[:3]}, "3 class names"),
        ({**state, "preprocess": {**state["preprocess"], "height": 128}}, "does not match the model"),
        ({**state, "thresholds": {"weapons": 0.5}}, "weapons"),
        ({**state, "thresholds": {state["classes"][0]: 0.01}, "postprocess": {"score_floor": 0.05}},
         "below the post-processing score floor 0.05"),
    ):
        torch.save(broken, tmp_path / "b.ckpt")
        with pytest.raises(CheckpointError, match=message):
            load_export_checkpoint(tmp_path / "b.ckpt")


def test_provenance_marks_academic_data_not_for_operational_use():
    synth = provenance_entry({"split": "train", "kind": "synth", "name": "xscreen-synth", "path": None})
    assert synth.kind == "synthetic" and operational_use((synth,))
    sixray = provenance_entry({"kind": "dataset", "name": "coco", "path": "/data/SIXray_10", "format": "coco"})
    assert "sixray" in sixray.name.lower() and sixray.licence.startswith("academic")
    tip = provenance_entry({"kind": "tip", "name": "tip:pidray_easy"})
    unknown = provenance_entry({"kind": "dataset", "name": "airport_x", "path": "/data/airport_x"})
    for datasets in ((synth, sixray), (synth, tip), (synth, unknown), ()):
        assert not operational_use(datasets)
    with pytest.raises(ValueError, match="academic-only"):
        ModelPackage(
            name="m", version="1", created_at="2025-01-01T00:00:00Z", weights_sha256="0" * 64, class_names=("a",),
            thresholds={"a": 0.5}, preprocess={}, postprocess={}, datasets=(DatasetProvenance(name="tip:SIXray", licence="x"),),
            operational_use=True,
        )


# ------------------------------------------------------------------------------------- gate arithmetic


def _raw(boxes, scores):
    return np.asarray(boxes, np.float32)[None], np.asarray(scores, np.float32)[None]


def test_agreement_check_tolerates_float_noise_and_nms_ties_only():
    params = PostprocessParams(score_floor=0.05, iou_threshold=0.5)
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 50, 50]]
    ref = _raw(boxes, [[0.80, 0.0], [0.80, 0.0], [0.0, 0.6]])
    # Two overlapping boxes of one class at an exact tie: float noise decides which one NMS keeps.
    flipped = _raw(boxes, [[0.80, 0.0], [0.800001, 0.0], [0.0, 0.6]])
    assert agreement_check("tie", ref, flipped, params).passed
    shifted = _raw([[0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 50, 56]], [[0.80, 0.0], [0.80, 0.0], [0.0, 0.6]])
    check = agreement_check("moved", ref, shifted, params, Tolerances(raw_box_atol_px=10.0))
    assert not check.passed and check.figures["unmatched_ref"] == 1
    rescored = _raw(boxes, [[0.80, 0.0], [0.80, 0.0], [0.0, 0.65]])
    assert not agreement_check("score", ref, rescored, params).passed


def test_int8_check_uses_map_drop_when_fp32_detects():
    params = PostprocessParams(score_floor=0.05)
    lb = LetterboxParams(scale=1.0, pad_x=0, pad_y=0, src_width=100, src_height=100, dst_width=100, dst_height=100)
    truths = [ImageTruth(image_id=i, width=100, height=100, boxes_xyxy=np.array([[10, 10, 40, 40], [60, 60, 90, 90]], np.float32),
                         class_ids=np.array([0, 1])) for i in range(2)]
    boxes = np.tile(np.array([[10, 10, 40, 40], [60, 60, 90, 90], [0, 0, 5, 5]], np.float32), (2, 1, 1))
    good = np.tile(np.array([[0.9, 0.0], [0.0, 0.8], [0.0, 0.0]], np.float32), (2, 1, 1))
    worse = good.copy()
    worse[:, 1, 1] = 0.01  # INT8 loses the class-1 object in both images
    ok = int8_check((boxes, good), (boxes, good + 0.001), [lb, lb], truths, ("a", "b"), params)
    assert ok.passed and ok.figures["criterion"] == "map50" and ok.figures["map50_fp32"] == pytest.approx(1.0)
    bad = int8_check((boxes, good), (boxes, worse), [lb, lb], truths, ("a", "b"), params)
    assert not bad.passed and bad.figures["map50_drop_points"] == pytest.approx(50.0)
    untrained = int8_check((boxes, good * 0), (boxes, worse * 0), [lb, lb], truths, ("a", "b"), params, Int8Tolerances())
    assert untrained.figures["criterion"] == "raw agreement" and untrained.notes


def test_int8_exclusions_find_the_head_and_refuse_foreign_graphs():
    _, path = exported_package("rgb")
    proto = onnx.load(str(path))
    excluded = set(int8_excluded_nodes(proto))
    by_name = {n.name: n for n in proto.graph.node}
    assert sum(by_name[n].op_type == "Conv" for n in excluded) == 6
    assert {"Softmax", "Sigmoid", "Cast"} <= {by_name[n].op_type for n in excluded}
    assert not any(n.startswith("/backbone/") or n.startswith("/neck/") for n in excluded)
    for node in proto.graph.node:
        node.name = node.name.replace("/head/", "/other/")
    with pytest.raises(QuantizationError, match="6 final convs"):
        int8_excluded_nodes(proto)


# ---------------------------------------------------------------------------------- INT8 and FP16 (slow)


@pytest.mark.slow
def test_int8_package_is_qdq_and_runs(tmp_path):
    ckpt, fp32_path = exported_package("rgb")
    calib = tmp_path / "calib"
    calib.mkdir()
    from datasets.synth.pipeline import SynthConfig, make_bag
    from vision.decode import encode_png

    for i in range(4):
        (calib / f"scan_{i}.png").write_bytes(encode_png(make_bag(SynthConfig(size_px=128, seed=77), i).image))
    report = export_package(ckpt, tmp_path / "int8.onnx", int8=True, calib_dir=calib, val_images=8, calib_synthetic=8)
    assert all(c.passed for c in report.checks) and len(report.checks) == 2
    proto = onnx.load(str(report.out))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    engine = Engine(report.out, threads=1)
    assert engine.package.precision == "int8"
    assert report.size_bytes < 0.5 * fp32_path.stat().st_size
    boxes, scores = engine.run(np.full((2, 3, 64, 64), 128, np.uint8))
    assert boxes.shape == (2, 84, 4) and np.isfinite(scores).all()


@pytest.mark.slow
def test_fp16_package(tmp_path):
    ckpt, _ = exported_package("rgb")
    report = export_package(ckpt, tmp_path / "fp16.onnx", fp16=True)
    assert [c.passed for c in report.checks] == [True, True]
    assert Engine(report.out, threads=1).package.precision == "fp16"


def test_package_refuses_thresholds_below_its_score_floor():
    """A class whose threshold lies under the post-processing floor would alarm at the floor, not at its
    threshold (post-processing drops those detections first): such a package is refused, not written."""
    fields = dict(name="m", version="1", created_at="2025-01-01T00:00:00Z", weights_sha256="0" * 64,
                  class_names=("a", "b"), preprocess={}, operational_use=False)
    with pytest.raises(ValueError, match=r"\{'b': 0.03\} lie below the post-processing score floor 0.05"):
        ModelPackage(thresholds={"a": 0.5, "b": 0.03}, postprocess={"score_floor": 0.05}, **fields)
    ok = ModelPackage(thresholds={"a": 0.5, "b": 0.05}, postprocess={"score_floor": 0.05}, **fields)
    assert ok.thresholds["b"] == 0.05
