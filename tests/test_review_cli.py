"""Bad input to the offline commands (train, eval, calibrate, export, predict, bench): a clear `error:` line,
a non-zero exit, no traceback, and nothing already written destroyed or left half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiny_checkpoint import exported_package, make_checkpoint
from vision.cli import app

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clear_error(result, *needles: str) -> None:
    """Exit 2, one `error:` line naming the problem, no Python traceback."""
    out = result.output
    assert result.exit_code == 2, out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out and "error:" in out, out
    for needle in needles:
        assert needle in out, out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.ckpt")


@pytest.fixture(scope="module")
def package() -> Path:
    return exported_package("rgb")[1]


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    result = invoke("synth", "--out", out, "--bags", 4, "--size", 96, "--seed", 0)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("scans")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(folder / "a.png")
    return folder


# --- export ---------------------------------------------------------------------------------------------


def test_export_refuses_to_overwrite_its_own_checkpoint(ckpt, tmp_path):
    victim = tmp_path / "best.ckpt"
    victim.write_bytes(ckpt.read_bytes())
    result = invoke("export", victim, "--out", victim)
    assert_clear_error(result, "--out")
    assert victim.read_bytes() == ckpt.read_bytes()  # the training checkpoint is intact


def test_export_of_an_onnx_package_says_it_wants_a_checkpoint(package, tmp_path):
    result = invoke("export", package, "--out", tmp_path / "o.onnx")
    assert_clear_error(result, "checkpoint")
    assert "weights_only" not in result.output  # not torch's advice to load untrusted pickles


def test_export_to_a_folder_fails_before_exporting(ckpt, tmp_path):
    (tmp_path / "out").mkdir()
    result = invoke("export", ckpt, "--out", tmp_path / "out")
    assert_clear_error(result, "folder")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary file left behind


def test_export_report_in_a_missing_folder_is_written(ckpt, tmp_path):
    report = tmp_path / "reports" / "r.json"
    result = invoke("export", ckpt, "--out", tmp_path / "m.onnx", "--report", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["out"] == str(tmp_path / "m.onnx")


# --- bench ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["missing-folder", "a-folder"])
def test_bench_json_to_a_bad_path(package, tmp_path, where):
    if where == "a-folder":
        target = tmp_path
        result = invoke("bench", package, "--batch", 1, "--runs", 3, "--threads", 1, "--json", target)
        assert_clear_error(result, str(target))
    else:
        target = tmp_path / "no" / "b.json"
        result = invoke("bench", package, "--batch", 1, "--runs", 3, "--threads", 1, "--json", target)
        assert result.exit_code == 0, result.output
        assert json.loads(target.read_text())["model"] == str(package)


# --- predict --------------------------------------------------------------------------------------------


def test_predict_json_to_a_folder_fails_before_predicting(package, scans, tmp_path, monkeypatch):
    import inference.predict

    def never(*a, **k):
        raise AssertionError("predicted although the output cannot be written")

    monkeypatch.setattr(inference.predict, "predict_inputs", never)
    result = invoke("predict", scans, "--model", package, "--json", tmp_path, "--no-progress")
    assert_clear_error(result, str(tmp_path))


def test_predict_interrupted_write_keeps_the_earlier_records(package, scans, tmp_path, monkeypatch):
    out = tmp_path / "p.json"
    out.write_text('["the earlier, good records"]\n')
    real_write_text = Path.write_text

    def torn_write(self, text, *a, **k):  # the process dies half-way through the write
        real_write_text(self, text[: len(text) // 2], *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", torn_write)
    invoke("predict", scans, "--model", package, "--json", out, "--no-progress")
    monkeypatch.undo()
    assert out.read_text() == '["the earlier, good records"]\n'
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


# --- eval and calibrate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["bogus", "cuda"])
def test_eval_with_an_unusable_device(ckpt, synth_set, device, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke("eval", "--model", ckpt, "--data", synth_set, "--device", device)
    assert_clear_error(result, "--device")


def test_eval_outputs_that_cannot_be_written_fail_before_evaluating(ckpt, synth_set, tmp_path, monkeypatch):
    import training.evaluate

    def never(*a, **k):
        raise AssertionError("evaluated although the output cannot be written")

    monkeypatch.setattr(training.evaluate, "predict_and_report", never)
    a_file = tmp_path / "f.txt"
    a_file.write_text("keep me")
    result = invoke("eval", "--model", ckpt, "--data", synth_set, "--device", "cpu", "--json", tmp_path)
    assert_clear_error(result, "--json")
    result = invoke("eval", "--model", ckpt, "--data", synth_set, "--device", "cpu", "--plots", a_file)
    assert_clear_error(result, "--plots")
    assert a_file.read_text() == "keep me"


def test_eval_unreadable_model_names_the_file(synth_set, tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("hello\n")
    result = invoke("eval", "--model", text, "--data", synth_set, "--device", "cpu")
    assert_clear_error(result, str(text))


def test_calibrate_out_a_folder_fails_before_calibrating(ckpt, synth_set, tmp_path, monkeypatch):
    import training.evaluate

    def never(*a, **k):
        raise AssertionError("calibrated although the output cannot be written")

    monkeypatch.setattr(training.evaluate, "predict_dataset", never)
    (tmp_path / "dest").mkdir()
    result = invoke("calibrate", "--model", ckpt, "--data", synth_set, "--device", "cpu", "--out", tmp_path / "dest")
    assert_clear_error(result, "--out")
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]


def test_calibrate_with_an_unusable_device(ckpt, synth_set):
    result = invoke("calibrate", "--model", ckpt, "--data", synth_set, "--device", "gpu0")
    assert_clear_error(result, "--device")


# --- train ----------------------------------------------------------------------------------------------


def test_train_resume_from_an_onnx_package(package, tmp_path):
    result = invoke("train", "--out", tmp_path / "run", "--resume", package)
    assert_clear_error(result, str(package))
    assert "weights_only" not in result.output


def test_train_config_that_is_not_text_names_the_config(ckpt, tmp_path):
    result = invoke("train", "--out", tmp_path / "run", "--config", ckpt)
    assert_clear_error(result, str(ckpt))
    assert "None" not in result.output


def test_train_out_an_existing_file(tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    result = invoke("train", "--config", TINY, "--out", out)
    assert_clear_error(result, "--out")
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("device", ["bogus", "cuda"])
def test_train_with_an_unusable_device(tmp_path, device, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke("train", "--config", TINY, "--out", tmp_path / "run", "--set", f"device={device}")
    assert_clear_error(result, "device")
    assert not (tmp_path / "run").exists()


def _not_a_checkpoint(kind: str, package: Path, ckpt: Path, folder: Path) -> Path:
    """An ONNX package saved under a .ckpt name, or a checkpoint cut short by an interrupted copy."""
    path = folder / f"{kind}.ckpt"
    path.write_bytes(package.read_bytes() if kind == "onnx" else ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return path


@pytest.mark.parametrize("kind", ["onnx", "truncated"])
def test_eval_and_calibrate_of_a_file_that_is_no_checkpoint(package, ckpt, synth_set, tmp_path, kind):
    bad = _not_a_checkpoint(kind, package, ckpt, tmp_path)
    for command in ("eval", "calibrate"):
        result = invoke(command, "--model", bad, "--data", synth_set, "--device", "cpu")
        assert_clear_error(result, str(bad))
        assert "weights_only" not in result.output


@pytest.mark.parametrize("kind", ["onnx", "truncated"])
def test_train_with_config_resume_of_a_file_that_is_no_checkpoint(package, ckpt, tmp_path, kind):
    bad = _not_a_checkpoint(kind, package, ckpt, tmp_path)
    result = invoke("train", "--config", TINY, "--out", tmp_path / "run", "--resume", bad)
    assert_clear_error(result, str(bad))
    assert not (tmp_path / "run").exists()


# --- data inspect / convert -----------------------------------------------------------------------------


def test_inspect_sheet_into_a_folder_fails_before_reading(synth_set, tmp_path):
    result = invoke("data", "inspect", synth_set, "--sheet", tmp_path)
    assert_clear_error(result, "--sheet")


@pytest.mark.parametrize("kind", ["missing", "binary"])
def test_convert_with_an_unreadable_classmap(synth_set, tmp_path, kind):
    classmap = tmp_path / "map.yaml"
    if kind == "binary":
        classmap.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    result = invoke("data", "convert", synth_set, "--to", "coco", "--out", tmp_path / "x.json", "--classmap", classmap)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "map.yaml" in result.output
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("to", ["coco", "yolo"])
def test_convert_out_of_the_wrong_kind_fails_and_leaves_nothing(synth_set, tmp_path, to):
    out = tmp_path / "out"
    out.mkdir() if to == "coco" else out.write_text("keep me")
    result = invoke("data", "convert", synth_set, "--to", to, "--out", out)
    assert_clear_error(result, "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert to == "coco" or out.read_text() == "keep me"


def test_train_into_a_folder_that_holds_a_run_needs_resume_or_overwrite(tmp_path):
    """A retyped command must not replace a run's checkpoints after its first epoch."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.ckpt").write_bytes(b"hours of training")
    result = invoke("train", "--config", TINY, "--out", run)
    assert result.exit_code == 2 and "--resume" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output
    assert (run / "best.ckpt").read_bytes() == b"hours of training" and not (run / "config.yaml").exists()


@pytest.mark.parametrize("command", ["eval", "calibrate"])
def test_data_in_no_known_layout_is_named_once(command, ckpt, tmp_path):
    data = tmp_path / "notes"
    data.mkdir()
    (data / "readme.txt").write_text("no annotations here\n")
    result = invoke(command, "--model", ckpt, "--data", data, "--device", "cpu")
    assert_clear_error(result, "layout not recognised")
    assert result.output.count(str(data)) == 1, result.output
