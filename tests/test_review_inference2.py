"""Second review of export and the lane engine (training.export*, training.parity, inference/): each test
asserts the correct behaviour and failed on the code as reviewed.

The engine tests use the hand-built model packages of test_review_vision_inference (constant outputs over the batch,
complete metadata, matching checksum), so they need neither torch nor an export.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from inference.engine import Engine, session_options
from test_review_vision_inference import CLASSES, HW, _package
from vision.package import PackageError
from vision.postprocess import PostprocessParams
from vision.preprocess import PreprocessSpec


@pytest.fixture()
def package(tmp_path: Path) -> Path:
    boxes = np.array([[2, 2, 8, 8], [4, 4, 12, 12]], np.float32)
    scores = np.array([[0.9, 0.01, 0.01], [0.01, 0.01, 0.6]], np.float32)
    return _package(tmp_path / "m.onnx", boxes_xyxy=boxes, scores=scores)


# ------------------------------------------------------------------------------ engine: providers, threads


def _cuda_listed_but_unusable(monkeypatch: pytest.MonkeyPatch) -> None:
    """What onnxruntime-gpu does on a box whose CUDA libraries are missing or broken: the provider is listed
    as available, but the session cannot use it and ONNX Runtime falls back to the CPU with a warning."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_engine_reports_the_providers_its_session_really_runs_on(package, monkeypatch):
    """With CUDA listed but unusable, ONNX Runtime silently ran the model on the CPU while `Engine.providers`
    still said CUDA: `xscreen predict` printed "CUDAExecutionProvider" in its summary and the service
    reported a GPU lane that was running on 2 CPU cores."""
    _cuda_listed_but_unusable(monkeypatch)
    engine = Engine(package, threads=1)
    assert engine.providers == engine.session.get_providers()


def test_engine_refuses_a_requested_provider_its_session_could_not_use(package, monkeypatch):
    """`providers=["CUDAExecutionProvider"]` is a requirement (choose_providers refuses one that is not
    available), yet a CUDA provider that failed to load gave an engine running on the CPU without a word."""
    _cuda_listed_but_unusable(monkeypatch)
    with pytest.raises((ValueError, PackageError), match="CUDAExecutionProvider"):
        Engine(package, threads=1, providers=["CUDAExecutionProvider"])


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is a Linux notion")
def test_default_threads_are_the_cores_this_process_may_run_on(monkeypatch):
    """"Default: all cores" took os.cpu_count(), the host's count: a lane service pinned to 2 cores
    (taskset, a container's cpuset) on a 64-core host ran 64 spinning ONNX Runtime threads on those 2
    cores, and every model call slowed by an order of magnitude."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert session_options().intra_op_num_threads == 2


# ---------------------------------------------------------------------------------- export: the INT8 gate


def _no_truth_case():
    """FP32 outputs of a model with nothing confident on a validation set with no truths of its classes: the
    case where the INT8 gate falls back to its raw-agreement criterion (any model whose class names are not
    the synthesiser's, exported without a labelled calibration folder)."""
    from training.metrics import ImageTruth
    from vision.letterbox import LetterboxParams

    rng = np.random.default_rng(0)
    corner = rng.uniform(2, 30, (2, 84, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(4, 30, (2, 84, 2))], axis=-1).astype(np.float32)
    scores = rng.uniform(0.0, 0.2, (2, 84, 3)).astype(np.float32)
    lb = LetterboxParams(scale=1.0, pad_x=0, pad_y=0, src_width=64, src_height=64, dst_width=64, dst_height=64)
    truths = [ImageTruth(image_id=str(i), width=64, height=64, boxes_xyxy=np.zeros((0, 4), np.float32),
                         class_ids=np.zeros(0, np.int64)) for i in range(2)]
    return (boxes, scores), [lb, lb], truths


def test_int8_gate_fails_a_graph_that_outputs_nan():
    """An INT8 graph giving NaN for every box and score passed the gate (p99 score error and median box IoU
    were NaN, and NaN > limit is False), so `xscreen export --int8` wrote a package that detects nothing."""
    from training.parity import int8_check

    fp32, letterbox, truths = _no_truth_case()
    broken = (np.full_like(fp32[0], np.nan), np.full_like(fp32[1], np.nan))
    check = int8_check(fp32, broken, letterbox, truths, CLASSES, PostprocessParams(score_floor=0.05))
    assert check.figures["criterion"] == "raw agreement"
    assert not check.passed


def test_int8_gate_is_not_blinded_by_one_nan_among_large_errors():
    """One NaN score hid a 0.3 error on every other score (np.percentile of an array holding a NaN is NaN):
    a quantisation with wrong scales passed."""
    from training.parity import int8_check

    fp32, letterbox, truths = _no_truth_case()
    scores = fp32[1] + np.float32(0.3)
    scores[0, 0, 0] = np.nan
    check = int8_check(fp32, (fp32[0], scores), letterbox, truths, CLASSES, PostprocessParams(score_floor=0.05))
    assert not check.passed


# ------------------------------------------------------------------------- export: the INT8 image sets


@pytest.fixture(scope="module")
def synth_calib_folder(tmp_path_factory) -> Path:
    """A folder as `xscreen synth` writes it (images/, raw/, masks/, annotations.json, yolo/ with links)."""
    from datasets.synth.pipeline import SynthConfig, synthesise_set

    folder = tmp_path_factory.mktemp("calib") / "synth"
    synthesise_set(SynthConfig(bags=4, seed=5, size_px=128), folder, progress=False)
    return folder


def test_int8_is_not_validated_on_the_images_it_was_calibrated_on(synth_calib_folder):
    """With `--calib` pointing at a labelled dataset, every labelled image the INT8 accuracy check measured
    was also a calibration image: MinMax ranges fitted to exactly those activations never clip there, so the
    gate's mAP drop understated what the lane loses on scans it has not seen."""
    from tiny_checkpoint import CLASSES as MODEL_CLASSES
    from training.export_data import calibration_set, validation_set

    spec = PreprocessSpec(input_kind="rgb", input_bits=8, height=64, width=64)
    calib = calibration_set(spec, synth_calib_folder, synthetic=0)
    val = validation_set(spec, MODEL_CLASSES, count=0, calib_dir=synth_calib_folder)
    calibrated = {Path(n).resolve() for n in calib.names}
    assert not calibrated & {Path(n).resolve() for n in val.names}


def test_calibration_takes_each_scan_of_a_synth_folder_once(synth_calib_folder):
    """`xscreen synth` writes yolo/images/ as links to images/; the calibration set listed both, so every scan
    was calibrated on twice and the 64-image budget held only 32 different scans."""
    from training.export_data import calibration_set

    spec = PreprocessSpec(input_kind="rgb", input_bits=8, height=64, width=64)
    calib = calibration_set(spec, synth_calib_folder, synthetic=0)
    resolved = [Path(n).resolve() for n in calib.names]
    assert resolved and len(set(resolved)) == len(resolved)


# ------------------------------------------------------------------------------------ xscreen predict


def test_predict_overlays_never_overwrite_the_scans_being_predicted(package, tmp_path):
    """`xscreen predict scans/ --overlays scans/` wrote each overlay as scans/<stem>.png: the operator's
    original PNG scans were replaced by annotated copies (and a second run screened the drawings)."""
    from inference.predict import collect_inputs, predict_inputs
    from vision.decode import encode_png

    folder = tmp_path / "scans"
    folder.mkdir()
    originals = {}
    for i in range(2):
        data = encode_png(np.full((HW, HW, 3), 40 + i, np.uint8))
        (folder / f"bag_{i}.png").write_bytes(data)
        originals[folder / f"bag_{i}.png"] = data
    engine = Engine(package, threads=1)
    try:  # refusing such an overlays folder is as good as writing the overlays elsewhere
        records = predict_inputs(engine, collect_inputs([folder], dual_energy=False), overlays_dir=folder)
        assert [r["alarm"] for r in records] == [True, True]
    except ValueError:
        pass
    for path, data in originals.items():
        assert path.read_bytes() == data, f"{path.name} was overwritten by its overlay"
