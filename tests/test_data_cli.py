"""`xscreen data inspect` and `xscreen data convert` through typer's CliRunner, on the real scans in
../shared/xray-real (skipped when absent) and on small fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from datasets.cli import register
from datasets.readers import read_dataset

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "xray-real"
needs_real = pytest.mark.skipif(not (REAL / "manifest.csv").is_file(), reason=f"real scans not present at {REAL}")


@pytest.fixture
def cli():
    """A root app with only the data commands: other packages' commands are not under test here."""
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["data", *map(str, args)])


def lines_fixture(root: Path, rows: str) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new("RGB", (100, 50), (90, 160, 200)).save(root / "images" / "x.jpg")
    (root / "annotations" / "x.txt").write_text(rows)
    return root


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_real
def test_inspect_sixray_prints_table_and_writes_default_sheet(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("inspect", REAL / "sixray")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "voc (sixray)" in out and "47 (47 with boxes)" in out and "76" in out
    assert "Pliers" in out and "24" in out  # 24 Pliers boxes in the manifest
    assert "width 238–1491" in out
    assert is_png(tmp_path / "inspect-sheet.png")


@needs_real
def test_inspect_json_is_the_only_stdout(cli, tmp_path):
    result = cli("inspect", REAL / "opixray", "--json", "--sheet", tmp_path / "s.png")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["format"], doc["source"], doc["images"], doc["boxes"]) == ("lines", "opixray", 8, 8)
    assert doc["boxes_per_class"] == {
        "Folding_Knife": 0,
        "Straight_Knife": 6,
        "Scissor": 2,
        "Utility_Knife": 0,
        "Multi-tool_Knife": 0,
    }
    assert doc["problems"] == [] and doc["width_range_px"] == [1225, 1225]
    assert is_png(tmp_path / "s.png") and doc["sheet"] == str(tmp_path / "s.png")


@needs_real
def test_convert_opixray_to_coco(cli, tmp_path):
    result = cli("convert", REAL / "opixray", "--to", "coco", "--out", tmp_path / "x.json")
    assert result.exit_code == 0, result.output
    assert "wrote 8 images, 8 boxes (opixray, 5 classes)" in result.stdout
    doc = json.loads((tmp_path / "x.json").read_text())
    assert Path(doc["images"][0]["file_name"]).is_absolute()
    original, back = read_dataset(REAL / "opixray"), read_dataset(tmp_path / "x.json")
    assert (back.source, back.classes) == ("opixray", original.classes)
    for a, b in zip(original.samples, back.samples, strict=True):
        assert a.image_path == b.image_path and a.class_names == b.class_names
        np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, atol=1e-3)


@needs_real
def test_convert_sixray_to_yolo_with_a_classmap(cli, tmp_path):
    cmap = tmp_path / "map.yaml"
    cmap.write_text(
        "target_classes: [knife, tool]\nmapping: {Knife: knife, Wrench: tool, Pliers: tool, "
        "Scissors: null, Gun: null}\n"
    )
    result = cli("convert", REAL / "sixray", "--to", "yolo", "--out", tmp_path / "y", "--classmap", cmap)
    assert result.exit_code == 0, result.output
    back = read_dataset(tmp_path / "y")
    assert back.classes == ("knife", "tool")
    assert sum(s.num_boxes for s in back.samples) == 12 + 18 + 24  # Knife + Wrench + Pliers in the manifest


def test_convert_with_unmapped_class_fails_naming_it(cli, tmp_path):
    root = lines_fixture(tmp_path / "d", "x.jpg Scissor 1 2 30 40\n")
    cmap = tmp_path / "map.yaml"
    cmap.write_text("target_classes: [knife]\nmapping: {Straight_Knife: knife}\n")
    result = cli("convert", root, "--to", "coco", "--out", tmp_path / "o.json", "--classmap", cmap)
    assert result.exit_code == 2
    assert "['Scissor']" in result.stderr and not (tmp_path / "o.json").exists()


def test_inspect_malformed_file_exits_2_naming_file_and_line(cli, tmp_path):
    root = lines_fixture(tmp_path / "d", "x.jpg Scissor 1 2 30 40\nx.jpg Scissor 1 2 3O 40\n")
    result = cli("inspect", root, "--no-sheet")
    assert result.exit_code == 2
    assert f"{root / 'annotations' / 'x.txt'}:2: x2 '3O' is not a number" in result.stderr


def test_inspect_lists_problems_and_strict_fails(cli, tmp_path):
    root = lines_fixture(tmp_path / "d", "x.jpg Scissor 1 2 300 40\n")
    result = cli("inspect", root, "--json", "--no-sheet")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["problems_per_kind"] == {"box_outside_image": 1} and doc["sheet"] is None
    assert doc["problems"][0]["where"].endswith("x.txt:1")
    assert cli("inspect", root, "--no-sheet", "--strict").exit_code == 2


def test_convert_fixture_to_yolo_and_unknown_format(cli, tmp_path):
    root = lines_fixture(tmp_path / "d", "x.jpg Scissor 10 5 30 45\n")
    result = cli("convert", root, "--to", "yolo", "--out", tmp_path / "y")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "y" / "labels" / "x.txt").read_text() == "2 0.200000 0.500000 0.200000 0.800000\n"
    bad = cli("inspect", root, "--format", "labelme")
    assert bad.exit_code == 2 and "unknown format 'labelme'" in bad.stderr
