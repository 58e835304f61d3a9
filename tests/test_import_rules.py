"""The lane box installs without PyTorch: importing vision, datasets readers, inference and edge must not
load torch (DESIGN.md §2). Run in a subprocess so other tests' imports do not leak in."""

from __future__ import annotations

import subprocess
import sys

import pytest

LANE_MODULES = ["vision", "vision.decode", "vision.letterbox", "vision.boxes", "vision.draw", "vision.cli", "inference", "edge"]


@pytest.mark.parametrize("module", LANE_MODULES)
def test_module_does_not_import_torch(module):
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, f"importing {module} pulled in torch\n{proc.stderr}"


def test_cli_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from vision.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "sys.exit(1 if 'torch' in sys.modules else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
