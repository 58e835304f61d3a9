"""Second review of DICOS out: what a DICOM viewer (pydicom, any PACS) reads from a TDR."""

from __future__ import annotations

import dataclasses
import io

import pydicom

from edge.tdr import build_tdr
from test_review_dicos import _record


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_tdr_non_ascii_class_name_declares_its_character_set():
    """A model whose class is named e.g. 'couteau_café' gets a TDR whose threat description a DICOM reader
    shows as 'couteau_cafÃ©': the UTF-8 bytes are written without Specific Character Set (ISO_IR 192), so
    every standard reader decodes them as the default repertoire."""
    r = _record()
    det = {**r.result["detections"][0], "class": "couteau_café"}
    ds = _read(build_tdr([dataclasses.replace(r, result={**r.result, "detections": [det]})]))
    descriptions = [str(e.value) for e in ds.iterall() if e.keyword == "ThreatCategoryDescription"]
    assert descriptions == ["couteau_café"], (ds.get("SpecificCharacterSet"), descriptions)


def test_tdr_study_date_is_the_scans_date_not_the_download_date():
    """A TDR downloaded (or regenerated) today for a scan of 2024-05-06 carries Study/Series Date = today:
    a search of the archive by date finds the report of last year's bag under today, and two downloads of the
    same report differ in their dates while keeping the same UIDs."""
    ds = _read(build_tdr([_record()]))
    assert (ds.StudyDate, ds.SeriesDate) == ("20240506", "20240506")
    assert ds.StudyTime.startswith("070809")
