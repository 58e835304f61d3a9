"""inference.Engine and `xscreen predict`: the package checks a lane makes, and that the lane path gives the
evaluation path's detections (PyTorch model → vision.postprocess → unletterbox) in the scan's pixels."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from inference.engine import Engine, read_package, weights_sha256
from inference.modelfile import ModelFileError, parse_model_bytes
from inference.predict import collect_inputs
from tiny_checkpoint import exported_package
from training.export import load_export_checkpoint, run_torch
from vision.cli import app
from vision.decide import decide
from vision.decode import decode, encode_png
from vision.letterbox import unletterbox
from vision.package import METADATA_KEY, SCHEMA_KEY, ChecksumMismatchError, MissingMetadataError, PackageError, UnknownSchemaError
from vision.postprocess import postprocess_batch
from vision.preprocess import prepare


@pytest.fixture(scope="module")
def package() -> Path:
    return exported_package("rgb")[1]


@pytest.fixture(scope="module")
def torch_model():
    return load_export_checkpoint(exported_package("rgb")[0])


def _rewrite_metadata(src: Path, dst: Path, edit) -> Path:
    """Copy a package with its metadata_props edited by `edit(dict) -> dict` (the graph untouched)."""
    proto = onnx.load(str(src))
    props = edit({p.key: p.value for p in proto.metadata_props})
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(dst))
    return dst


def _scans(n: int, seed: int = 0) -> list[np.ndarray]:
    """Synthetic bags cut to assorted sizes and aspect ratios (none the model's 64×64)."""
    from datasets.synth.pipeline import SynthConfig, make_bag

    config = SynthConfig(size_px=256, seed=seed, palette="mixed")
    cuts = [np.s_[:, :], np.s_[:, :90], np.s_[:50, :], np.s_[20:84, 30:94], np.s_[::-1, 40:]]
    return [np.ascontiguousarray(make_bag(config, i).image[cuts[i % len(cuts)]]) for i in range(n)]


def test_engine_runs_a_dynamic_batch(package):
    engine = Engine(package, threads=1)
    batch = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    boxes, scores = engine.run(batch)
    assert boxes.shape == (3, 84, 4) and scores.shape == (3, 84, 7)
    assert engine.package.precision == "fp32" and engine.providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("spin, key, value", [
    ("off", "session.intra_op.allow_spinning", "0"),
    ("run", "session.force_spinning_stop", "1"),
])
def test_engine_spin_modes_give_the_same_answers(package, spin, key, value):
    from inference.engine import session_options

    assert session_options(2, spin=spin).get_session_config_entry(key) == value
    x = np.random.default_rng(3).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    spinning, other = Engine(package, threads=2), Engine(package, threads=2, spin=spin)
    for a, b in zip(spinning.run(x), other.run(x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_the_service_setting_offers_the_engine_spin_modes():
    from typing import get_args

    from edge.settings import EdgeSettings
    from inference.engine import SPIN_MODES

    assert get_args(EdgeSettings.model_fields["engine_spin"].annotation) == SPIN_MODES


def test_engine_refuses_an_unknown_spin_mode(package):
    with pytest.raises(ValueError, match="spin must be one of"):
        Engine(package, threads=1, spin=False)


def test_engine_refuses_a_changed_weight_byte(package, tmp_path):
    data = bytearray(package.read_bytes())
    proto = onnx.load(str(package))
    weight = max(proto.graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    at = data.find(weight) + len(weight) // 2
    data[at] ^= 0x01  # one bit of one float
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="changed after export"):
        Engine(bad)


def test_engine_refuses_missing_metadata(package, tmp_path):
    no_key = _rewrite_metadata(package, tmp_path / "a.onnx", lambda p: {k: v for k, v in p.items() if k != METADATA_KEY})
    with pytest.raises(MissingMetadataError, match="xscreen.package"):
        Engine(no_key)

    def drop_preprocess(props):
        doc = json.loads(props[METADATA_KEY])
        del doc["preprocess"]
        return {**props, METADATA_KEY: json.dumps(doc)}

    incomplete = _rewrite_metadata(package, tmp_path / "b.onnx", drop_preprocess)
    with pytest.raises(MissingMetadataError, match="preprocess"):
        Engine(incomplete)


def test_engine_refuses_unknown_schema_version(package, tmp_path):
    def bump(props):
        doc = json.loads(props[METADATA_KEY])
        doc["schema_version"] = 99
        return {METADATA_KEY: json.dumps(doc), SCHEMA_KEY: "99"}

    with pytest.raises(UnknownSchemaError, match="99"):
        Engine(_rewrite_metadata(package, tmp_path / "v99.onnx", bump))


def test_engine_refuses_metadata_that_contradicts_the_graph(package, tmp_path):
    def sixteen_bit(props):
        doc = json.loads(props[METADATA_KEY])
        doc["preprocess"]["input_bits"] = 16
        return {**props, METADATA_KEY: json.dumps(doc)}

    with pytest.raises(PackageError, match="uint16"):
        Engine(_rewrite_metadata(package, tmp_path / "c.onnx", sixteen_bit))


def test_metadata_is_outside_the_checksum_but_the_graph_is_not(package, tmp_path):
    renamed = _rewrite_metadata(
        package, tmp_path / "r.onnx", lambda p: {**p, METADATA_KEY: p[METADATA_KEY].replace('"tiny"', '"renamed"')}
    )
    assert Engine(renamed).package.name == "renamed"
    proto = onnx.load(str(package))
    assert weights_sha256(proto) == weights_sha256(package) == read_package(package)[1].weights_sha256
    proto.opset_import[0].version = 18  # not a weight, but part of what the graph computes
    assert weights_sha256(proto) != weights_sha256(package)


def test_model_file_parser_refuses_damaged_bytes(package):
    data = package.read_bytes()
    with pytest.raises(ModelFileError):
        parse_model_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        parse_model_bytes(b"\x00\x01 definitely not protobuf")
    assert parse_model_bytes(data).metadata[SCHEMA_KEY] == "1"


def test_engine_run_refuses_values_outside_the_input_type(package):
    engine = Engine(package, threads=1)
    with pytest.raises(ValueError, match="range"):
        engine.run(np.full((1, 3, 64, 64), 300, np.int32))
    with pytest.raises(ValueError, match="shape"):
        engine.run(np.zeros((1, 3, 32, 32), np.uint8))


def test_predict_equals_the_evaluation_path_in_scan_pixels(package, torch_model):
    engine = Engine(package, threads=1, max_batch=2)  # several chunks
    scans = _scans(5)
    got = engine.predict(scans)
    prepared = [prepare(s, torch_model.preprocess) for s in scans]
    raw = run_torch(torch_model.model, np.stack([p[0] for p in prepared]))
    want = postprocess_batch(*raw, torch_model.postprocess)
    n_dets = 0
    for scan, pred, ref, (_, params) in zip(scans, got, want, prepared):
        h, w = scan.shape[:2]
        d = pred.detections
        assert (d.boxes_xyxy[:, [0, 2]] >= 0).all() and (d.boxes_xyxy[:, [0, 2]] <= w).all()
        assert (d.boxes_xyxy[:, [1, 3]] >= 0).all() and (d.boxes_xyxy[:, [1, 3]] <= h).all()
        # The reference in scan pixels: mapped back, less the boxes lying wholly in the letterbox's padding.
        ref_boxes = unletterbox(ref.boxes_xyxy, params)
        over_scan = (ref_boxes[:, 2] > ref_boxes[:, 0]) & (ref_boxes[:, 3] > ref_boxes[:, 1])
        ref = ref.select(over_scan)
        assert len(d) == len(ref)
        np.testing.assert_array_equal(d.class_ids, ref.class_ids)
        np.testing.assert_allclose(d.scores, ref.scores, atol=1e-4)
        np.testing.assert_allclose(d.boxes_xyxy, ref_boxes[over_scan], atol=0.05)
        assert pred.decision.alarm == decide(ref, engine.class_names, engine.policy).alarm
        n_dets += len(d)
    assert n_dets > 0, "the fixture model must detect something for this test to mean anything"


def test_cli_predict_json_equals_the_evaluation_path(package, torch_model, tmp_path):
    from datasets.synth.pipeline import SynthConfig, make_bag

    folder = tmp_path / "scans"
    folder.mkdir()
    config = SynthConfig(size_px=160, seed=3, palette="mixed")
    for i in range(3):
        (folder / f"bag_{i}.png").write_bytes(encode_png(make_bag(config, i).image))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out, overlays = tmp_path / "pred.json", tmp_path / "overlays"
    result = CliRunner().invoke(
        app, ["predict", str(folder), "--model", str(package), "--json", str(out), "--overlays", str(overlays),
              "--threads", "1", "--no-progress"],
    )
    assert result.exit_code == 1, result.output  # the broken file is reported, the others predicted
    records = {Path(r["image"]).name: r for r in json.loads(out.read_text())}
    assert records["broken.png"]["alarm"] is None and "error" in records["broken.png"]
    names = [f"bag_{i}.png" for i in range(3)]
    pixels = [decode((folder / n).read_bytes()).pixels for n in names]
    prepared = [prepare(p, torch_model.preprocess) for p in pixels]
    raw = run_torch(torch_model.model, np.stack([p[0] for p in prepared]))
    for name, ref, (_, params) in zip(names, postprocess_batch(*raw, torch_model.postprocess), prepared):
        rec = records[name]
        assert [d["class"] for d in rec["detections"]] == [torch_model.classes[c] for c in ref.class_ids]
        np.testing.assert_allclose([d["score"] for d in rec["detections"]], ref.scores, atol=1e-4)
        np.testing.assert_allclose(
            np.array([d["box_xyxy"] for d in rec["detections"]]).reshape(-1, 4), unletterbox(ref.boxes_xyxy, params), atol=0.05
        )
        policy_alarm = decide(ref, torch_model.classes, Engine(package).policy).alarm
        assert rec["alarm"] == policy_alarm
        assert (overlays / name).is_file()


def test_collect_inputs_pairs_dual_energy_files_saved_with_different_suffixes(tmp_path):
    for name in ("a_low.tif", "a_high.tiff", "b_low.png", "b_high.PNG", "c_low.png", "c_high.png", "c_high.tif"):
        (tmp_path / name).write_bytes(b"x")
    scans = collect_inputs([tmp_path], dual_energy=True)
    by_name = {Path(s.name).name: [p.name for p in s.paths] for s in scans if s.problem is None}
    # Each pair once; where both suffixes exist, the file's own suffix is taken.
    assert by_name == {"a": ["a_low.tif", "a_high.tiff"], "b": ["b_low.png", "b_high.PNG"], "c": ["c_low.png", "c_high.png"]}
    assert len(scans) == 3


def test_collect_inputs_pairs_dual_energy_files(tmp_path):
    for name in ("a_low.png", "a_high.png", "b_low.png", "c.png"):
        (tmp_path / name).write_bytes(b"")
    scans = collect_inputs([tmp_path], dual_energy=True)
    by_name = {Path(s.name).name: s for s in scans}
    assert set(by_name) == {"a", "b", "c.png"}
    assert by_name["a"].problem is None and [p.name for p in by_name["a"].paths] == ["a_low.png", "a_high.png"]
    assert "b_high.png missing" in by_name["b"].problem
    assert "not a dual-energy scan" in by_name["c.png"].problem
    assert len(collect_inputs([tmp_path], dual_energy=False)) == 4


def test_importing_inference_loads_neither_torch_nor_onnx():
    code = (
        "import sys, inference, inference.engine, inference.predict, inference.bench, inference.modelfile, inference.cli\n"
        "bad = [m for m in ('torch', 'onnx') if m in sys.modules]\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_engine_on_a_copy_without_onnx_installed(package, tmp_path):
    """The lane box has onnxruntime but not onnx: the engine must load and check a package without it."""
    shutil.copy(package, tmp_path / "m.onnx")
    code = (
        "import sys\n"
        "sys.modules['onnx'] = None  # any `import onnx` now fails\n"
        "from inference.engine import Engine\n"
        f"e = Engine({str(tmp_path / 'm.onnx')!r}, threads=1)\n"
        "import numpy as np\n"
        "print(len(e.predict([np.zeros((80, 100, 3), np.uint8)])))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr


def test_a_detection_wholly_in_the_letterbox_padding_is_dropped_and_does_not_alarm(package, monkeypatch):
    """A wide scan leaves bands of padding above and below it in the model's square input; a confident box
    there covers nothing that was scanned and must neither be reported nor alarm the bag."""
    engine = Engine(package, threads=1)
    scan = _scans(1)[0][:40]  # much wider than high: padding above and below
    batch, params = prepare(scan, engine.package.preprocess)
    assert params.pad_y > 4, "the scan must leave padding for this test to mean anything"
    k = len(engine.class_names)
    in_pad = [2.0, 0.0, 30.0, params.pad_y - 1.0]  # wholly above the scan
    straddling = [2.0, params.pad_y - 3.0, 30.0, params.pad_y + 3.0]
    boxes = np.array([[in_pad, straddling]], np.float32)
    scores = np.zeros((1, 2, k), np.float32)
    scores[0, 0, 0] = 0.99
    scores[0, 1, 1 % k] = 0.6
    monkeypatch.setattr(engine, "run", lambda _batch: (boxes, scores))
    (pred,) = engine.predict([scan])
    assert len(pred.detections) == 1
    assert pred.detections.scores[0] == pytest.approx(0.6)
    assert pred.detections.boxes_xyxy[0, 1] == 0.0 and pred.detections.boxes_xyxy[0, 3] > 0.0
    scores[0, 1] = 0.0
    (pred,) = engine.predict([scan])
    assert len(pred.detections) == 0 and not pred.decision.alarm
