"""`xscreen demo`'s lane step: the service and a simulated station, run twice into one output folder."""

from __future__ import annotations

import io
import shutil

from rich.console import Console

from edge_model import tiny_package
from vision.demo import run_lane


def test_the_lane_step_runs_again_into_the_same_folder(tmp_path) -> None:
    shutil.copy(tiny_package(), tmp_path / "model.onnx")
    console = Console(file=io.StringIO(), width=200)
    assert run_lane(tmp_path, console, bags=2), console.file.getvalue()
    # A second `make demo` finds the first run's lane database (with its demo station) and starts afresh.
    assert run_lane(tmp_path, console, bags=2), console.file.getvalue()
    assert (tmp_path / "lane" / "xscreen.db").exists()
