"""Review of DICOS in and out: DX files as scanners write them (MONOCHROME1, Bits Stored < Bits Allocated,
attributes pydicos refuses, gigapixel headers on a few kilobytes), content over declared type, and the TDR's
UIDs and links.

DX variants are built by hand from a pydicos-written file (native explicit VR little endian, the attributes
under test replaced), since pydicos itself writes only one kind.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re
import struct

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

import vision.dicos as dicos
from edge.formats import DICOM_MEDIA_TYPE, decode_upload, upload_from_bytes
from edge.store import ScanRecord
from edge.tdr import build_tdr, read_tdr
from edge_support import running_service, scan_fields
from vision.decode import TooManyPixelsError, encode_png
from vision.dicos import DicosError, load_pydicom, read_dicos_dx, write_dicos_dx

load_pydicom()  # as the service reads: pydicos's own UIDs (leading zeros) are not warned about on each read

_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_PIXELS = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1300)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("dx") / "t.dcs"
    write_dicos_dx(_PIXELS, path)
    return path.read_bytes()


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _write(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def native_dx(template: bytes, pixels: np.ndarray, changes: dict | None = None) -> bytes:
    """The pydicos-written DX `template` made uncompressed (explicit VR little endian) with `pixels` (uint16)
    and the attributes `changes` ({pydicom keyword: value}) set: the variants scanners write that pydicos does
    not."""
    ds = _read(template)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    ds["PixelData"].is_undefined_length = False
    for keyword, value in (changes or {}).items():
        setattr(ds, keyword, value)
    return _write(ds)


# -- DX in --------------------------------------------------------------------------------------------------


def test_the_hand_built_native_dx_reads_back_as_written(template):
    scan = read_dicos_dx(native_dx(template, _PIXELS), max_pixels=10_000)
    assert scan.pixels.dtype == np.uint16 and np.array_equal(scan.pixels, _PIXELS)


def test_a_gigapixel_header_on_a_small_file_is_refused_before_pydicos_reads_it(template, monkeypatch):
    # pydicos's JPEG-lossless reader allocates what the header declares: a 1.5 KB file declaring 40000×40000
    # took 3 GB and 8 s before the budget was checked. The budget must be checked on the header first.
    bomb = bytearray(template)
    for tag in (b"\x28\x00\x10\x00US\x02\x00", b"\x28\x00\x11\x00US\x02\x00"):
        at = bomb.index(tag) + len(tag)
        bomb[at : at + 2] = struct.pack("<H", 40000)
    sof = bomb.index(b"\xff\xc3\x00\x0b\x10") + 5  # the JPEG frame header: height, width
    bomb[sof : sof + 4] = struct.pack(">HH", 40000, 40000)
    import pydicos

    def must_not_read(self, filename):
        raise AssertionError("pydicos was asked to read a file over the pixel budget")

    monkeypatch.setattr(pydicos.DXLoader, "read", must_not_read)
    with pytest.raises(TooManyPixelsError, match="40000"):
        read_dicos_dx(bytes(bomb), max_pixels=32_000_000)


def test_monochrome1_is_inverted_to_the_monochrome2_convention(template):
    mono1 = native_dx(template, _PIXELS, {"PhotometricInterpretation": "MONOCHROME1"})
    scan = read_dicos_dx(mono1, max_pixels=10_000)
    assert np.array_equal(scan.pixels, 65535 - _PIXELS)


def test_12_bit_data_is_masked_to_bits_stored_and_scaled_to_full_range(template):
    stored = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 87)  # 0..4089
    noisy = stored | np.uint16(0xA000)  # bits above Bits Stored may hold anything (e.g. overlays)
    dx = native_dx(template, noisy, {"BitsStored": 12, "HighBit": 11})
    scan = read_dicos_dx(dx, max_pixels=10_000)
    expected = ((stored.astype(np.uint32) * 65535 + 2047) // 4095).astype(np.uint16)
    assert scan.bit_depth == 16 and np.array_equal(scan.pixels, expected)
    assert int(scan.pixels.max()) > 60000  # not a nearly black image for a full-range model


def test_a_refused_attribute_is_named_in_the_message_not_its_consequence(template):
    dx = native_dx(template, _PIXELS, {"RescaleSlope": "2"})
    with pytest.raises(DicosError, match="Rescale Slope"):
        read_dicos_dx(dx, max_pixels=10_000)


def test_dx_header_reads_the_image_attributes_without_pydicos(template):
    h = dicos.dx_header(template)
    assert (h["rows"], h["columns"], h["bits_stored"], h["photometric"]) == (6, 8, 16, "MONOCHROME2")
    assert "rows" not in dicos.dx_header(template[:200])  # cut before the image attributes
    with pytest.raises(DicosError, match="no image size"):
        read_dicos_dx(template[:200], max_pixels=10_000)
    with pytest.raises(DicosError, match="DICM"):
        dicos.dx_header(b"\x00" * 300)


def test_png_bytes_declared_as_dicom_are_screened_as_the_png_they_are():
    # `xscreen predict` decodes a PNG saved as scan.dcs as a PNG; the service must give the same answer.
    png = encode_png((_PIXELS >> 8).astype(np.uint8))
    upload = upload_from_bytes(png, DICOM_MEDIA_TYPE)
    assert upload.media_type == "image/png"
    assert decode_upload(upload, max_pixels=10_000).pixels.shape == _PIXELS.shape
    with pytest.raises(DicosError, match="not a DICOS file"):
        decode_upload(upload_from_bytes(b"garbage" * 40, DICOM_MEDIA_TYPE), max_pixels=10_000)


def test_the_service_refuses_bad_dx_with_4xx_and_stays_healthy(tmp_path, template):
    bomb = native_dx(template, _PIXELS, {"Rows": 60000, "Columns": 60000})
    slope = native_dx(template, _PIXELS, {"RescaleSlope": "2"})
    with running_service(tmp_path) as svc:
        def post(data: bytes, bag: str):
            return svc.client.post("/v1/scans", params=scan_fields(bag), content=data,
                                   headers={**svc.auth("station"), "Content-Type": DICOM_MEDIA_TYPE})

        r = post(bomb, "bag-bomb")
        assert r.status_code == 413, r.text
        r = post(slope, "bag-slope")
        assert r.status_code == 422 and "Rescale Slope" in r.json()["detail"], r.text
        assert svc.client.get("/healthz").status_code == 200
        assert post(native_dx(template, _PIXELS), "bag-ok").status_code == 200


# -- TDR out ------------------------------------------------------------------------------------------------


def _record(scan_id: int = 7, sha: str = "ab" * 32, media_type: str = "image/png") -> ScanRecord:
    fields = {f.name for f in dataclasses.fields(ScanRecord)}
    values = dict(
        id=scan_id, created_at=dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone.utc), station="st1",
        lane="1", bag_id="bag-1", view="top", image_sha256=sha, media_type=media_type, width=80, height=96,
        result={"detections": [{"class": "knife", "class_id": 0, "score": 0.9, "box_xyxy": [10.0, 20.0, 30.0, 60.0],
                                "alarm": True}], "timings": {"inference_ms": 3.5, "decode_ms": 1.0}},
        model_name="tiny", model_version="0.1", alarm=True, alarm_classes=["knife"], reviewed=False, verdict=None,
    )
    return ScanRecord(**{k: v for k, v in values.items() if k in fields})


def test_tdr_uids_are_valid_stable_and_distinct_per_bag():
    other_bag = dataclasses.replace(_record(8, "cd" * 32), bag_id="bag-2")
    first, again, other = (_read(build_tdr([r])) for r in (_record(), _record(), other_bag))
    uids = {e.keyword: str(e.value) for e in first.iterall() if e.VR == "UI"}
    uids.update({e.keyword: str(e.value) for e in first.file_meta if e.VR == "UI"})
    for keyword, uid in uids.items():
        assert len(uid) <= 64 and _UID_RE.fullmatch(uid), (keyword, uid)
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID  # file meta and data set agree
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert again[keyword].value == first[keyword].value, keyword
        assert other[keyword].value != first[keyword].value, keyword
    report = read_tdr(build_tdr([_record()]))  # and pydicos reads it back
    assert report["OOIID"] == "bag-1" and report["PTOs"][0]["Assessment"]["description"] == "knife"
    referenced = [e.value for e in first.iterall() if e.keyword == "ReferencedSOPInstanceUID"]
    assert referenced and first.SOPInstanceUID not in referenced  # the PTOs point at the scan, not the report


def test_tdr_of_a_dicos_scan_links_to_the_dx_uids(template):
    dx = native_dx(template, _PIXELS)
    source = _read(dx)
    record = _record(media_type=DICOM_MEDIA_TYPE)
    report = _read(build_tdr([record], images={record.image_sha256: dx}))
    referenced = [e.value for e in report.iterall() if e.keyword == "ReferencedSOPInstanceUID"]
    assert referenced and referenced == [source.SOPInstanceUID] * len(referenced)
    assert report.StudyInstanceUID == source.StudyInstanceUID  # the report joins the DX's scan
    assert read_tdr(build_tdr([record], images={record.image_sha256: dx}))["PTOs"][0]["Assessment"]["description"] == "knife"


def test_the_service_tdr_of_a_dicos_scan_references_that_scan(tmp_path, template):
    from edge.tdr import tdr_file_name
    from vision.decide import DecisionPolicy

    grey = (np.random.default_rng(3).random((96, 80)) * 65535).astype(np.uint16)
    dx = native_dx(template, grey)
    with running_service(tmp_path, tdr_dir=tmp_path / "tdr") as svc:
        engine = svc.ctx.engine  # any detection alarms: the report's links are under test, not the model
        engine.policy = DecisionPolicy(class_names=engine.class_names, thresholds={c: 1e-6 for c in engine.class_names})
        r = svc.client.post("/v1/scans", params=scan_fields("bag-dx-tdr"), content=dx,
                            headers={**svc.auth("station"), "Content-Type": DICOM_MEDIA_TYPE})
        assert r.status_code == 200 and r.json()["alarm"], r.text
        scan_id = r.json()["id"]
        downloaded = svc.client.get(f"/v1/scans/{scan_id}/tdr", headers=svc.auth("supervisor"))
        assert downloaded.status_code == 200
        written = (tmp_path / "tdr" / tdr_file_name([svc.ctx.store.get_scan(scan_id)])).read_bytes()
    source = _read(dx)
    for data in (downloaded.content, written):
        report = _read(data)
        referenced = [e.value for e in report.iterall() if e.keyword == "ReferencedSOPInstanceUID"]
        assert referenced and set(referenced) == {source.SOPInstanceUID}
        assert report.StudyInstanceUID == source.StudyInstanceUID


def test_bag_ids_longer_than_the_tdr_field_stay_apart():
    long_a, long_b = "b" * 64 + "-view-a", "b" * 64 + "-view-b"
    ids = []
    for bag_id in (long_a, long_b, "bag-1"):
        record = dataclasses.replace(_record(), bag_id=bag_id)
        ids.append(read_tdr(build_tdr([record]))["OOIID"])
    assert ids[0] != ids[1] and all(len(i) <= 64 for i in ids)
    assert ids[0].startswith("b" * 55) and ids[2] == "bag-1"
