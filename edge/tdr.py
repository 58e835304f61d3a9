"""DICOS Threat Detection Reports (TDR) for alarmed scans, written with pydicos.

One TDR per alarmed scan (one view of a bag): a machine (ATR) TDR whose object of inspection is the bag
(`OOIID` = bag id), with one potential threat object (PTO) per detection that reached its class
threshold — its bounding box as the region of interest, the class name as the assessment description, the
score as its probability. The ATR block names the model and its per-class thresholds, so a report says
which calibration raised it.

Identifiers are DICOM UIDs under the `2.25` root (UUID-derived, ITU-T X.667), computed from the scan
record, so regenerating a report gives the same UIDs: the report's SOP instance, series and frame of
reference too (the toolkit would make up random ones, not even valid UIDs, on every write). A scan sent as
DICOS DX is linked to by its own UIDs: pass its bytes as `image` and the PTOs reference the DX's SOP
instance and the report joins the DX's scan; other scans get UIDs derived from their sha256.

pydicos writes only to files whose name ends in `.dcs`; reports go through a private temporary file.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.formats import DICOM_MEDIA_TYPE
from edge.images import write_durable
from edge.store import ScanRecord
from vision.dicos import DicosError, dx_header, is_dicos, load_pydicom

TDR_MEDIA_TYPE = "application/dicom"
#: SOP class of a DICOS DX image ("for processing"): what each PTO refers to.
_DICOS_DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.501.2.2"
#: Classes of this project that DICOS calls pharmaceutical; every other contraband class is "contraband".
_PHARMACEUTICAL = frozenset({"medicine_pills"})

_LOCK = threading.Lock()  # the toolkit is not documented as thread-safe


class TdrError(RuntimeError):
    """pydicos could not build or write the report."""


def _uid(*parts: object) -> str:
    """A stable DICOM UID: 2.25.<128-bit integer from a hash of `parts`>."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def _ooi_id(bag_id: str) -> str:
    """The bag id as the TDR's object-of-inspection id, a DICOS long string of at most 64 characters: a longer
    id (the service takes 128) keeps its first 55 and a hash of the whole, so two bags that share their first
    64 characters still get different ids."""
    if len(bag_id) <= 64:
        return bag_id
    return f"{bag_id[:55]}~{hashlib.sha256(bag_id.encode()).hexdigest()[:8]}"


def alarm_detections(record: ScanRecord) -> list[dict[str, Any]]:
    """The detections of a stored scan that reached their class threshold."""
    return [d for d in record.result.get("detections", []) if d.get("alarm")]


def build_tdr(record: ScanRecord, *, thresholds: dict[str, float] | None = None, image: bytes | None = None) -> bytes:
    """The TDR file bytes for an alarmed scan. image: the stored scan file (a DICOS DX's own UIDs are then
    referenced). Raises `TdrError` if pydicos fails, ValueError if the scan did not alarm."""
    if not record.alarm:
        raise ValueError(f"scan {record.id} did not alarm; a TDR is written only for alarms")
    try:
        from pyDICOS import (
            ABILITY_ASSESSMENT,
            ALARM_DECISION,
            ASSESSMENT_FLAG,
            OBJECT_OF_INSPECTION_TYPE,
            SCAN_TYPE,
            TDR_TYPE,
            THREAT_CATEGORY,
        )
        from pyDICOS import DcsUniqueIdentifier
        from pydicos import TDRLoader
    except ImportError as exc:  # pragma: no cover - pydicos is an `edge` dependency
        raise TdrError(f"pydicos is not installed ({exc})") from exc

    when = record.created_at
    date = (when.year, when.month, when.day)
    time_ = (when.hour, when.minute, when.second, when.microsecond)
    timings = record.result.get("timings", {})
    processing_ms = float(timings.get("inference_ms", 0.0)) + float(timings.get("decode_ms", 0.0))
    image_uid, image_class = _uid("image", record.image_sha256), _DICOS_DX_SOP_CLASS
    scan_uid = _uid("tdr", record.id, record.image_sha256)
    source = _dicos_source(image)
    image_uid = source.get("sop_instance_uid") or image_uid
    image_class = source.get("sop_class_uid") or image_class
    scan_uid = source.get("scan_instance_uid") or scan_uid
    frame_uid = source.get("frame_of_reference_uid") or _uid("frame", record.image_sha256)
    # ATR parameters are DICOS long strings ("-key=value", at most 64 characters each).
    params = {"model": record.model_name[:48], **{f"thr_{k}"[:40]: f"{v:g}" for k, v in (thresholds or {}).items()}}
    ptos = []
    for i, det in enumerate(alarm_detections(record)):
        x1, y1, x2, y2 = (float(v) for v in det["box_xyxy"])
        name = str(det["class"])
        category = THREAT_CATEGORY.enumPharmaceutical if name in _PHARMACEUTICAL else THREAT_CATEGORY.enumContraband
        ptos.append({
            # pydicos builds Point3Dfloat(Base["z"], Base["y"], Base["x"]) while the toolkit's constructor is
            # (x, y, z): so "z" here is the image x and "x" the slice index (0 for a 2-D view). Reading the
            # file back with TDRLoader.get_data gives x = the image x, as intended.
            "Base": {"z": x1, "y": y1, "x": 0.0},
            "Extent": {"z": max(x2 - x1, 1.0), "y": max(y2 - y1, 1.0), "x": 1.0},
            "ID": i,
            "Assessment": {
                "flag": ASSESSMENT_FLAG.enumThreat,
                "category": category,
                "ability": ABILITY_ASSESSMENT.enumNoInterference,
                "description": name,
                "probability": float(det["score"]),
            },
            "ReferencedInstance": {"SopClassUID": image_class, "SopInstanceUID": image_uid},
            "PTOProcessingTime": {
                "ProcessingStartTime": {"date": date, "time": time_},
                "ProcessingEndTime": {"date": date, "time": time_},
                "fTotalTimeMS": processing_ms,
            },
        })
    data = {
        "InstanceNumber": int(record.id),
        "InstanceUID": scan_uid,
        "OOIID": _ooi_id(record.bag_id),
        "ContentDateAndTime": {"date": date, "time": time_},
        "ProcessingTime": processing_ms,
        "ScanType": SCAN_TYPE.enumOperational,
        "AlarmDecision": ALARM_DECISION.enumAlarm,
        "AlarmDecisionDateTime": {"date": date, "time": time_},
        "ImageScaleRepresentation": 1,
        "ATR": {"manufacturer": "xscreen", "version": f"{record.model_name} {record.model_version}"[:64],
                "parameters": params},
        "TDRType": TDR_TYPE.enumMachine,
        "OOIType": OBJECT_OF_INSPECTION_TYPE.enumTypeBaggage,
        "PTOs": ptos,
    }
    with _LOCK, tempfile.TemporaryDirectory(prefix="xscreen-tdr-") as tmp:
        path = Path(tmp) / "report.dcs"
        try:
            tdr = TDRLoader()
            tdr.set_data(data)
            if not (tdr.SetSeriesInstanceUID(DcsUniqueIdentifier(_uid("tdr-series", record.id, record.image_sha256)))
                    and tdr.SetFrameOfReferenceUID(DcsUniqueIdentifier(frame_uid))):
                raise RuntimeError("the toolkit refused a series or frame of reference UID")
            tdr.write(path)
        except Exception as exc:
            raise TdrError(f"pydicos could not write the TDR of scan {record.id}: {exc}") from exc
        study = (source.get("study_date"), source.get("study_time"))  # a DICOS scan's own study: the report joins it
        return _finish_report(path.read_bytes(), _uid("tdr-sop", record.id, record.image_sha256), when=when,
                              study=study if study[0] else None)


def stored_dicos_image(store: Any, record: ScanRecord) -> bytes | None:
    """The stored file of a scan sent as DICOS (its UIDs go into the report), else None. store: edge.store.Store."""
    if record.media_type != DICOM_MEDIA_TYPE:
        return None
    try:
        return store.read_image(record.image_sha256)[0]
    except (KeyError, OSError):
        return None  # the report is still written, with derived UIDs


def _dicos_source(image: bytes | None) -> dict[str, Any]:
    """The UIDs of a stored DICOS scan (empty for any other scan, or a header that cannot be read)."""
    if image is None or not is_dicos(image):
        return {}
    try:
        return dx_header(image)
    except DicosError:
        return {}


def _finish_report(data: bytes, uid: str, *, when: datetime, study: tuple[str, str | None] | None) -> bytes:
    """The toolkit's TDR file, rewritten by pydicom (which recomputes the meta group's length) with what the
    toolkit cannot set: its SOP instance UID (it makes up its own) in the data set and the file meta; its
    character set, UTF-8 (a class name such as "couteau_café" is written as UTF-8, which a reader takes for
    ASCII without it); and its study and series dates and times, the scan's (the toolkit puts the time of
    writing there, so a report rewritten today filed last year's bag under today). `study`: the DICOS scan's
    own (date, time), which the report's study is."""
    pydicom = load_pydicom()
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SpecificCharacterSet = "ISO_IR 192"
        scan_date, scan_time = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
        ds.StudyDate, ds.StudyTime = (study[0], study[1] or "") if study else (scan_date, scan_time)
        ds.SeriesDate, ds.SeriesTime = scan_date, scan_time
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    except Exception as exc:
        raise TdrError(f"could not set the TDR's SOP instance UID ({type(exc).__name__}: {exc})") from exc
    return out.getvalue()


def read_tdr(data: bytes) -> dict[str, Any]:
    """Parse TDR bytes with pydicos (`TDRLoader.get_data`), e.g. to check a report."""
    from pydicos import TDRLoader

    with _LOCK, tempfile.TemporaryDirectory(prefix="xscreen-tdr-") as tmp:
        path = Path(tmp) / "report.dcs"
        path.write_bytes(data)
        return TDRLoader(path).get_data()


def tdr_file_name(record: ScanRecord) -> str:
    """`scan-<id>-<image sha256, 12 hex>.dcs`: the scan's id orders the folder; the image's digest keeps apart
    the reports of edge nodes with databases of their own (each numbers its scans from 1) that share one
    TDR folder, while a re-written report of the same scan keeps its name."""
    return f"scan-{record.id:09d}-{record.image_sha256[:12]}.dcs"


def write_tdr_file(record: ScanRecord, tdr_dir: Path, *, thresholds: dict[str, float] | None = None,
                   image: bytes | None = None) -> Path:
    """Write `<tdr_dir>/<tdr_file_name>` atomically and durably (`edge.images.write_durable`: safe when a
    re-send writes the same report at once, from another thread or another process on a shared folder);
    return its path."""
    tdr_dir.mkdir(parents=True, exist_ok=True)
    final = tdr_dir / tdr_file_name(record)
    write_durable(final, build_tdr(record, thresholds=thresholds, image=image))
    return final
