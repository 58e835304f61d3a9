"""`xscreen predict` on DICOS DX files: it lists and reads them, dispatches on the bytes (the DICOM
preamble, as the service sniffs a scan) rather than the name, and its answer for a DX file equals
`POST /v1/scans` on the same bytes (the requirement "/v1/scans answers equal `xscreen predict`"). Also: the
one DX reader lives in vision.dicos (edge.formats re-exports it) and pydicos is imported only to read one.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import edge.formats
import vision.dicos
from edge_model import tiny_package
from edge_support import running_service, scan_fields
from inference.engine import Engine
from inference.predict import IMAGE_SUFFIXES, collect_inputs, predict_inputs
from vision.decode import encode_png
from vision.dicos import write_dicos_dx

_PIXELS = np.random.default_rng(7).integers(0, 65535, (40, 56), dtype=np.uint16)


@pytest.fixture(scope="module")
def dx_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("dx") / "scan.dcs"
    write_dicos_dx(_PIXELS, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(tiny_package(), threads=1)


def _assert_same_answer(record: dict, body: dict) -> None:
    assert "error" not in record, record
    assert record["alarm"] == body["alarm"]
    assert record["alarm_classes"] == body["alarm_classes"]
    assert [d["class"] for d in record["detections"]] == [d["class"] for d in body["detections"]]
    for mine, theirs in zip(record["detections"], body["detections"]):
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-5)
        assert mine["box_xyxy"] == pytest.approx(theirs["box_xyxy"], abs=1e-3)


@pytest.mark.parametrize("how", ["raw-dicom", "multipart-octet-stream"])
def test_predict_on_a_dx_file_equals_the_service_on_the_same_bytes(tmp_path, dx_bytes, engine, how):
    (tmp_path / "scan.dcs").write_bytes(dx_bytes)
    (record,) = predict_inputs(engine, collect_inputs([tmp_path / "scan.dcs"], dual_energy=False))
    assert record["image"] == str(tmp_path / "scan.dcs")
    assert record["detections"], "the tiny model finds nothing: the comparison would prove nothing"
    with running_service(tmp_path / "svc") as svc:
        if how == "raw-dicom":  # as the station simulator sends a .dcs file
            r = svc.client.post("/v1/scans", params=scan_fields("bag-dx"), content=dx_bytes,
                                headers={**svc.auth("station"), "Content-Type": "application/dicom"})
        else:  # undeclared: the service sniffs the DICOM preamble, as predict does
            r = svc.client.post("/v1/scans", files={"image": ("scan.dcs", dx_bytes, "application/octet-stream")},
                                data=scan_fields("bag-dx"), headers=svc.auth("station"))
        assert r.status_code == 200, r.text
        stored = svc.client.get(f"/v1/scans/{r.json()['id']}", headers=svc.auth("supervisor")).json()
    assert stored["media_type"] == "application/dicom"
    _assert_same_answer(record, r.json())
    # and both are the engine's answer on the DX pixels themselves
    expected = engine.predict([_PIXELS])[0]
    assert [d["score"] for d in record["detections"]] == pytest.approx(expected.detections.scores.tolist(), abs=1e-5)


def test_a_folder_lists_its_dcs_scans_and_predicts_them(tmp_path, dx_bytes, engine):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "a.dcs").write_bytes(dx_bytes)
    (folder / "B.DCS").write_bytes(dx_bytes)
    (folder / "c.png").write_bytes(encode_png((_PIXELS >> 8).astype(np.uint8)))
    (folder / "notes.txt").write_text("not a scan")
    assert ".dcs" in IMAGE_SUFFIXES
    inputs = collect_inputs([folder], dual_energy=False)
    assert [s.paths[0].name for s in inputs] == ["B.DCS", "a.dcs", "c.png"]
    records = predict_inputs(engine, inputs)
    assert all("error" not in r for r in records), records
    assert records[0]["detections"] == records[1]["detections"]  # the same bytes, the same answer


def test_a_single_file_is_decoded_by_its_content_not_its_name(tmp_path, dx_bytes, engine):
    (tmp_path / "ref.dcs").write_bytes(dx_bytes)
    (tmp_path / "scan.dcm").write_bytes(dx_bytes)  # DICOM bytes under another suffix
    (tmp_path / "export.bin").write_bytes(encode_png((_PIXELS >> 8).astype(np.uint8)))  # PNG bytes, odd name
    files = [tmp_path / "ref.dcs", tmp_path / "scan.dcm", tmp_path / "export.bin"]
    ref, dcm, png = predict_inputs(engine, collect_inputs(files, dual_energy=False))
    assert all("error" not in r for r in (ref, dcm, png)), (ref, dcm, png)
    assert dcm["detections"] == ref["detections"]


def test_a_damaged_dx_file_is_an_error_record_and_the_others_are_still_predicted(tmp_path, dx_bytes, engine):
    (tmp_path / "bad.dcs").write_bytes(dx_bytes[: len(dx_bytes) // 2])
    (tmp_path / "good.dcs").write_bytes(dx_bytes)
    bad, good = predict_inputs(engine, collect_inputs([tmp_path], dual_energy=False))
    assert bad["alarm"] is None and bad["detections"] == [] and "DICOS" in bad["error"]
    assert "error" not in good and good["detections"]


def test_edge_formats_re_exports_the_one_dx_reader():
    for name in ("DicosError", "is_dicos", "read_dicos_dx", "write_dicos_dx"):
        assert getattr(edge.formats, name) is getattr(vision.dicos, name), name


def test_importing_predict_and_vision_dicos_does_not_load_pydicos_or_edge():
    code = ("import sys, vision.dicos, inference.predict\n"
            "bad = [m for m in ('pydicos', 'pyDICOS', 'torch', 'edge') if m in sys.modules]\n"
            "sys.exit(str(bad) if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
