"""Edge cases of the image core (vision/) and the lane engine (inference/) found in review: each test failed on
the code before its fix.

The model packages here are hand-built ONNX graphs (onnx.helper: constant outputs broadcast over the batch,
with complete package metadata and a matching checksum), so these tests need neither torch nor an export.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError
from typer.testing import CliRunner

from inference.engine import Engine
from inference.modelfile import package_sha256
from inference.predict import ScanInput, load_scan
from vision.boxes import batched_nms_xyxy, nms_xyxy
from vision.cli import app
from vision.colour import false_colour_to_pseudo_log_attenuation, render_false_colour
from vision.decode import TooManyPixelsError, encode_png
from vision.letterbox import LetterboxSpec, letterbox
from vision.package import ModelPackage, PackageError
from vision.postprocess import PostprocessParams, postprocess
from vision.preprocess import IncompatibleScanError, PreprocessSpec, prepare, to_layout

CLASSES = ("drug_package", "cannabis", "cash_bundle")
HW = 16


def _package(
    path: Path,
    *,
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    class_names: tuple[str, ...] = CLASSES,
    box_width: int = 4,
    symbolic_tails: bool = False,
) -> Path:
    """A model package whose graph takes B×3×HW×HW uint8 and gives the constant outputs `boxes_xyxy`
    (A×box_width) and `scores` (A×K) for every image of the batch."""
    anchors, k = scores.shape
    tails = {"box_tail": [anchors, box_width], "score_tail": [anchors, k]}
    nodes = [
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "box_tail"], ["box_shape"], axis=0),
        helper.make_node("Concat", ["batch", "score_tail"], ["score_shape"], axis=0),
        helper.make_node("Expand", ["box_const", "box_shape"], ["boxes_xyxy"]),
        helper.make_node("Expand", ["score_const", "score_shape"], ["scores"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        *(numpy_helper.from_array(np.array(v, np.int64), n) for n, v in tails.items()),
        numpy_helper.from_array(np.asarray(boxes_xyxy, np.float32)[None], "box_const"),
        numpy_helper.from_array(np.asarray(scores, np.float32)[None], "score_const"),
    ]
    graph = helper.make_graph(
        nodes, "review", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 3, HW, HW])],
        [helper.make_tensor_value_info("boxes_xyxy", TensorProto.FLOAT,
                                       ["batch", anchors, "box_width" if symbolic_tails else box_width]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", anchors, "k" if symbolic_tails else k])],
        inits,
    )
    if symbolic_tails:
        # Outputs tiled over the batch by a count read off the input at run time: shape inference cannot see
        # through Tile's repeats, so the session reports the outputs' widths as the declared symbols.
        nodes = [
            helper.make_node("Shape", ["images"], ["shape"]),
            helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
            helper.make_node("Concat", ["batch", "one", "one"], ["repeats"], axis=0),
            helper.make_node("Tile", ["box_const", "repeats"], ["boxes_xyxy"]),
            helper.make_node("Tile", ["score_const", "repeats"], ["scores"]),
        ]
        graph = helper.make_graph(nodes, "review", list(graph.input), list(graph.output), inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    package = ModelPackage(
        name="review", version="0.0.1", created_at="2024-01-01T00:00:00Z", weights_sha256=package_sha256(model),
        class_names=class_names, thresholds={c: 0.5 for c in class_names},
        preprocess=PreprocessSpec(input_kind="rgb", input_bits=8, height=HW, width=HW),
        postprocess=PostprocessParams(), operational_use=False,
    )
    helper.set_model_props(model, package.to_metadata())
    onnx.save(model, str(path))
    return path


_BOXES = np.array([[2, 2, 8, 8], [4, 4, 12, 12]], np.float32)
_SCORES = np.array([[0.9, 0.01, 0.01], [0.01, 0.01, 0.6]], np.float32)


@pytest.fixture()
def good_package(tmp_path: Path) -> Path:
    return _package(tmp_path / "good.onnx", boxes_xyxy=_BOXES, scores=_SCORES)


def test_the_hand_built_package_runs(good_package):
    engine = Engine(good_package, threads=1)
    (pred,) = engine.predict([np.zeros((HW, HW, 3), np.uint8)])
    assert pred.detections.class_ids.tolist() == [0, 2] and pred.decision.alarm_classes == ("drug_package", "cash_bundle")


# --- post-processing -------------------------------------------------------------------------------------


def test_postprocess_drops_infinite_scores():
    """A broken output must not become an alarm: +inf (like NaN) is not a score. It used to survive the floor
    and give an infinite suspicion and JSON that strict parsers refuse."""
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([[np.inf, 0.0], [0.0, 0.7]], np.float32)
    dets = postprocess(boxes, scores, PostprocessParams())
    assert np.isfinite(dets.scores).all()
    assert dets.class_ids.tolist() == [1] and dets.scores.tolist() == pytest.approx([0.7])


def test_nms_refuses_boxes_and_scores_of_different_lengths():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float64)
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        nms_xyxy(boxes, np.array([0.9]), 0.5)
    with pytest.raises(ValueError, match="2 boxes but 1 class ids"):
        batched_nms_xyxy(boxes, np.array([0.9, 0.5]), np.array([0]), 0.5)


# --- preprocessing ---------------------------------------------------------------------------------------


def test_dual_energy_model_of_8_bits_gets_8_bit_input():
    """to_layout converted every dual-energy scan to uint16 whatever the model's input_bits said."""
    spec = PreprocessSpec(input_kind="dual_energy", input_bits=8, height=8, width=8, pad_value=255)
    pair = np.full((8, 8, 2), 65535, np.uint16)
    x, _ = prepare(pair, spec)
    assert x.dtype == np.uint8 and x.shape == (2, 8, 8) and int(x.max()) == 255


def test_single_channel_h_w_1_scan_feeds_an_rgb_model():
    """An H×W×1 grey array is a grey scan: an RGB model gets it on three channels (it used to get one)."""
    x, _ = prepare(np.full((8, 8, 1), 7, np.uint8), PreprocessSpec(input_kind="rgb", height=8, width=8))
    assert x.shape == (3, 8, 8) and (x == 7).all()


@pytest.mark.parametrize("pixels, match", [
    (np.zeros((8, 8, 4), np.uint8), "4 channels"),
    (np.zeros((8, 8, 3), np.float32), "float32"),
    (np.zeros((8, 8), bool), "bool"),
])
def test_scans_no_model_can_take_are_refused_clearly(pixels, match):
    for kind in ("rgb", "grey"):
        with pytest.raises(IncompatibleScanError, match=match):
            to_layout(pixels, PreprocessSpec(input_kind=kind, height=8, width=8))


def test_a_pad_value_the_input_depth_cannot_hold_is_refused():
    with pytest.raises(ValidationError, match="pad_value"):
        PreprocessSpec(input_kind="rgb", input_bits=8, pad_value=60000)
    assert PreprocessSpec(input_kind="dual_energy", input_bits=16, pad_value=60000).pad_value == 60000


def test_letterbox_errors_name_the_problem():
    with pytest.raises(ValueError, match="pad value 1000 does not fit"):
        letterbox(np.zeros((10, 10), np.uint8), LetterboxSpec(height=16, width=16, pad_value=1000))
    with pytest.raises(ValueError, match="int64"):
        letterbox(np.zeros((10, 10), np.int64), LetterboxSpec(height=16, width=16))


# --- false colour ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 33_000), (33_000, 2)])
def test_false_colour_renders_scans_longer_than_32767_px(shape):
    """cv2.remap refuses maps with a side of 32767 px or more; a long belt scan (within the pixel budget) made
    the renderer and its inverse raise cv2.error."""
    rng = np.random.default_rng(0)
    pair = rng.integers(2000, 60000, shape + (2,), dtype=np.uint16)
    rgb = render_false_colour(pair)
    assert rgb.shape == shape + (3,) and rgb.dtype == np.uint8
    # The rendering is per pixel: a long scan renders as its pieces do, across any internal seam too.
    window = np.s_[:, 16_000:17_000] if shape[0] == 1 else np.s_[16_000:17_000]
    np.testing.assert_array_equal(rgb[window], render_false_colour(pair[window]))
    back = false_colour_to_pseudo_log_attenuation(rgb, match_background=False)
    assert back.shape == shape + (2,) and np.isfinite(back).all()


# --- engine ----------------------------------------------------------------------------------------------


def test_engine_refuses_a_graph_whose_scores_do_not_match_the_class_names(tmp_path):
    """Three score columns but two class names: the engine loaded it and then failed on every scan that
    detected the third class (class ids outside the policy), taking a whole `xscreen predict` run down."""
    path = _package(tmp_path / "k.onnx", boxes_xyxy=_BOXES, scores=_SCORES, class_names=CLASSES[:2])
    with pytest.raises(PackageError, match=r"scores has shape \[.batch., 2, 3\].*\(batch, anchors, 2\): 2 classes"):
        Engine(path, threads=1)


def test_engine_checks_output_widths_the_graph_leaves_symbolic(tmp_path):
    """A graph may declare its class dimension symbolically ("k"): the engine then runs it once at load to
    see the real width, instead of loading a 3-class graph under 2 class names."""
    path = _package(tmp_path / "k.onnx", boxes_xyxy=_BOXES, scores=_SCORES, class_names=CLASSES[:2], symbolic_tails=True)
    with pytest.raises(PackageError, match=r"scores gives shape \[1, 2, 3\].*\(batch, anchors, 2\): 2 classes"):
        Engine(path, threads=1)
    good = _package(tmp_path / "good.onnx", boxes_xyxy=_BOXES, scores=_SCORES, symbolic_tails=True)
    (pred,) = Engine(good, threads=1).predict([np.zeros((HW, HW, 3), np.uint8)])
    assert pred.detections.class_ids.tolist() == [0, 2]


def test_engine_refuses_a_graph_whose_boxes_are_not_four_numbers(tmp_path):
    path = _package(tmp_path / "b.onnx", boxes_xyxy=np.zeros((2, 5), np.float32), scores=_SCORES, box_width=5)
    with pytest.raises(PackageError, match="boxes_xyxy"):
        Engine(path, threads=1)


# --- xscreen predict ---------------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width × height (valid CRC) and whose data is one tiny image's: enough for a
    header check, which must refuse it before any pixel is decoded."""
    png = bytearray(encode_png(np.zeros((1, 1), np.uint8)))
    at = png.index(b"IHDR")
    png[at + 4 : at + 12] = struct.pack(">II", width, height)
    png[at + 17 : at + 21] = struct.pack(">I", zlib.crc32(bytes(png[at : at + 17])))
    return bytes(png)


def test_predict_uses_the_lane_services_pixel_budget(tmp_path):
    """`xscreen predict` decoded up to 64 MP while the service refuses scans over 32 MP (edge.settings): the
    same bytes got an answer from one and a refusal from the other."""
    from edge.settings import DEFAULT_SERVICE_MAX_PIXELS
    from vision.decode import LANE_MAX_PIXELS

    assert LANE_MAX_PIXELS == DEFAULT_SERVICE_MAX_PIXELS
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(6000, 6000))  # 36 MP: over the lane's budget, under 64 MP
    with pytest.raises(TooManyPixelsError, match="over the budget of 32,000,000"):
        load_scan(ScanInput(str(path), (path,)))
    low, high = tmp_path / "a_low.png", tmp_path / "a_high.png"
    low.write_bytes(path.read_bytes())
    high.write_bytes(path.read_bytes())
    with pytest.raises(TooManyPixelsError, match="over the budget of 32,000,000"):
        load_scan(ScanInput(str(tmp_path / "a"), (low, high)))


def _scan_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "bag.png").write_bytes(encode_png(np.zeros((HW, HW, 3), np.uint8)))
    return folder


def test_cli_predict_overlays_path_that_is_a_file_is_a_clear_error(good_package, tmp_path):
    folder = _scan_folder(tmp_path)
    not_a_folder = tmp_path / "overlays"
    not_a_folder.write_text("in the way")
    result = CliRunner().invoke(app, ["predict", str(folder), "--model", str(good_package), "--overlays",
                                      str(not_a_folder), "--threads", "1", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "overlays" in result.output


def test_cli_predict_json_path_that_is_a_folder_is_a_clear_error(good_package, tmp_path):
    folder = _scan_folder(tmp_path)
    result = CliRunner().invoke(app, ["predict", str(folder), "--model", str(good_package), "--json", str(folder),
                                      "--threads", "1", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "cannot write" in result.output


def test_cli_predict_succeeds_with_exit_code_0(good_package, tmp_path):
    folder = _scan_folder(tmp_path)
    out = tmp_path / "pred.json"
    result = CliRunner().invoke(app, ["predict", str(folder), "--model", str(good_package), "--json", str(out),
                                      "--threads", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    (record,) = json.loads(out.read_text())
    assert record["alarm"] is True and [d["class"] for d in record["detections"]] == ["drug_package", "cash_bundle"]


@pytest.mark.parametrize("sizes", ["0", ",", "1,-2"])
def test_cli_bench_refuses_batch_sizes_below_one(good_package, sizes):
    result = CliRunner().invoke(app, ["bench", str(good_package), "--batch", sizes, "--threads", "1", "--runs", "3"])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "--batch" in result.output


def test_cli_bench_skips_scans_it_cannot_read(good_package, tmp_path):
    folder = _scan_folder(tmp_path)
    (folder / "a_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # listed first
    result = CliRunner().invoke(app, ["bench", str(good_package), "--batch", "1", "--threads", "1", "--runs", "3",
                                      "--images", str(folder)])
    assert result.exit_code == 0, result.output
    assert "a_broken.png" in result.output


def test_collect_inputs_reports_a_pair_file_without_a_stem(tmp_path):
    """`_low.png` (nothing before the suffix) crashed `xscreen predict` for a dual-energy model with
    "ValueError: Invalid name ''" before any scan was predicted; it is now one input with a problem."""
    from inference.predict import collect_inputs

    for name in ("_low.png", "_high.png", "a_low.png", "a_high.png"):
        (tmp_path / name).write_bytes(b"")
    scans = {Path(s.name).name: s for s in collect_inputs([tmp_path], dual_energy=True)}
    assert set(scans) == {"_high.png", "_low.png", "a"}
    assert scans["a"].problem is None
    assert "not a dual-energy scan" in scans["_low.png"].problem and "_high.png" in scans
