"""DICOS Threat Detection Reports (TDR) for alarmed scans, written with pydicos.

One TDR per alarmed scan (one view of a bag): a machine (ATR) TDR whose object of inspection is the bag
(`OOIID` = bag id), with one potential threat object (PTO) per detection that reached its class
threshold — its bounding box as the region of interest, the class name as the assessment description, the
score as its probability. The ATR block names the model and its per-class thresholds, so a report says
which calibration raised it.

Identifiers are DICOM UIDs under the `2.25` root (UUID-derived, ITU-T X.667), computed from the scan
record, so regenerating a report gives the same UIDs.

pydicos writes only to files whose name ends in `.dcs`; reports go through a private temporary file.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from pathlib import Path
from typing import Any

from edge.images import write_durable
from edge.store import ScanRecord

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


def alarm_detections(record: ScanRecord) -> list[dict[str, Any]]:
    """The detections of a stored scan that reached their class threshold."""
    return [d for d in record.result.get("detections", []) if d.get("alarm")]


def build_tdr(record: ScanRecord, *, thresholds: dict[str, float] | None = None) -> bytes:
    """The TDR file bytes for an alarmed scan. Raises `TdrError` if pydicos fails, ValueError if the scan
    did not alarm."""
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
        from pydicos import TDRLoader
    except ImportError as exc:  # pragma: no cover - pydicos is an `edge` dependency
        raise TdrError(f"pydicos is not installed ({exc})") from exc

    when = record.created_at
    date = (when.year, when.month, when.day)
    time_ = (when.hour, when.minute, when.second, when.microsecond)
    timings = record.result.get("timings", {})
    processing_ms = float(timings.get("inference_ms", 0.0)) + float(timings.get("decode_ms", 0.0))
    image_uid = _uid("image", record.image_sha256)
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
            "ReferencedInstance": {"SopClassUID": _DICOS_DX_SOP_CLASS, "SopInstanceUID": image_uid},
            "PTOProcessingTime": {
                "ProcessingStartTime": {"date": date, "time": time_},
                "ProcessingEndTime": {"date": date, "time": time_},
                "fTotalTimeMS": processing_ms,
            },
        })
    data = {
        "InstanceNumber": int(record.id),
        "InstanceUID": _uid("tdr", record.id, record.image_sha256),
        "OOIID": record.bag_id[:64],
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
            tdr.write(path)
        except Exception as exc:
            raise TdrError(f"pydicos could not write the TDR of scan {record.id}: {exc}") from exc
        return path.read_bytes()


def read_tdr(data: bytes) -> dict[str, Any]:
    """Parse TDR bytes with pydicos (`TDRLoader.get_data`), e.g. to check a report."""
    from pydicos import TDRLoader

    with _LOCK, tempfile.TemporaryDirectory(prefix="xscreen-tdr-") as tmp:
        path = Path(tmp) / "report.dcs"
        path.write_bytes(data)
        return TDRLoader(path).get_data()


def write_tdr_file(record: ScanRecord, tdr_dir: Path, *, thresholds: dict[str, float] | None = None) -> Path:
    """Write `<tdr_dir>/scan-<id>.dcs` atomically and durably (`edge.images.write_durable`: safe when a
    re-send writes the same report at once, from another thread or another process on a shared folder);
    return its path."""
    tdr_dir.mkdir(parents=True, exist_ok=True)
    final = tdr_dir / f"scan-{record.id:09d}.dcs"
    write_durable(final, build_tdr(record, thresholds=thresholds))
    return final
