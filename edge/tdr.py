"""DICOS Threat Detection Reports (TDR) for alarmed scans, written with pydicos.

One TDR per alarmed bag: a machine (ATR) TDR whose object of inspection is the bag (`OOIID` = bag id),
with one potential threat object (PTO) per detection that reached its class threshold, in every view of
the bag that alarmed: its bounding box as the region of interest, in its view's image coordinates, and a
reference to that view's image; the class name as the assessment description, the score as its
probability. The ATR block names the model and its per-class thresholds, so a report says which
calibration raised it. A view that arrives later makes a new report of the bag (a new instance in the
bag's series) covering it too.

Identifiers are DICOM UIDs under the `2.25` root (UUID-derived, ITU-T X.667), computed from the scan
records, so regenerating a report gives the same UIDs: the report's SOP instance (from the views it
covers), series (the bag's, within its study) and frame of reference too (the toolkit would make up random ones, not even
valid UIDs, on every write). A view sent as DICOS DX is linked to by its own UIDs: pass its bytes in
`images` and its PTOs reference the DX's SOP instance, and the report joins the DX's scan and study; other
views' images get UIDs derived from their sha256.

pydicos writes only to files whose name ends in `.dcs`; reports go through a private temporary file.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import threading
from collections.abc import Mapping, Sequence
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


def bag_key(record: ScanRecord) -> str:
    """The bag a scan is a view of, as one string: its station and bag id (a bag is one station's)."""
    return f"{len(record.station)}:{record.station}:{record.bag_id}"


def alarmed_views(views: Sequence[ScanRecord]) -> list[ScanRecord]:
    """The views of a bag that alarmed, in the order they were recorded: the ones a report covers."""
    return sorted((v for v in views if v.alarm), key=lambda v: v.id)


def build_tdr(views: Sequence[ScanRecord], *, thresholds: dict[str, float] | None = None,
              images: Mapping[str, bytes] | None = None) -> bytes:
    """The TDR file bytes of an alarmed bag: `views` are its scans (one bag; those that did not alarm add
    nothing), each alarmed detection of each view a PTO that references its view's image. images: stored
    files by sha256, for the views sent as DICOS DX (their own UIDs are then referenced). Raises `TdrError` if
    pydicos fails, ValueError if no view alarmed or the views are not of one bag."""
    if len({bag_key(v) for v in views}) > 1:
        raise ValueError("a TDR covers one bag; these scans are of several")
    alarmed = alarmed_views(views)
    if not alarmed:
        ids = ", ".join(str(v.id) for v in views)
        raise ValueError(f"no view of this bag (scans {ids}) alarmed; a TDR is written only for alarms")
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

    first, latest = alarmed[0], alarmed[-1]
    key = bag_key(first)
    sources = [_dicos_source((images or {}).get(v.image_sha256)) for v in alarmed]
    ptos = []
    for view, source in zip(alarmed, sources):
        image_uid = source.get("sop_instance_uid") or _uid("image", view.image_sha256)
        image_class = source.get("sop_class_uid") or _DICOS_DX_SOP_CLASS
        for det in alarm_detections(view):
            x1, y1, x2, y2 = (float(v) for v in det["box_xyxy"])
            name = str(det["class"])
            category = THREAT_CATEGORY.enumPharmaceutical if name in _PHARMACEUTICAL else THREAT_CATEGORY.enumContraband
            ptos.append({
                # pydicos builds Point3Dfloat(Base["z"], Base["y"], Base["x"]) while the toolkit's constructor is
                # (x, y, z): so "z" here is the image x and "x" the slice index (0 for a 2-D view). Reading the
                # file back with TDRLoader.get_data gives x = the image x, as intended.
                "Base": {"z": x1, "y": y1, "x": 0.0},
                "Extent": {"z": max(x2 - x1, 1.0), "y": max(y2 - y1, 1.0), "x": 1.0},
                "ID": len(ptos),
                "Assessment": {
                    "flag": ASSESSMENT_FLAG.enumThreat,
                    "category": category,
                    "ability": ABILITY_ASSESSMENT.enumNoInterference,
                    "description": name,
                    "probability": float(det["score"]),
                },
                "ReferencedInstance": {"SopClassUID": image_class, "SopInstanceUID": image_uid},
                "PTOProcessingTime": {
                    "ProcessingStartTime": _date_time(view.created_at),
                    "ProcessingEndTime": _date_time(view.created_at),
                    "fTotalTimeMS": _processing_ms(view),
                },
            })
    # The report joins the first DICOS view's scan and frame of reference; else UIDs derived from the bag.
    dicos = next((s for s in sources if s), {})
    scan_uid = dicos.get("scan_instance_uid") or _uid("tdr", key)
    frame_uid = dicos.get("frame_of_reference_uid") or _uid("frame", key)
    # ATR parameters are DICOS long strings ("-key=value", at most 64 characters each). Views screened by
    # different models (a package reloaded between views, a bag screened again) name each view's model.
    models = list(dict.fromkeys(f"{v.model_name} {v.model_version}" for v in alarmed))
    params = ({"model": latest.model_name[:48]} if len(models) == 1
              else {f"model_scan{v.id}"[:24]: f"{v.model_name} {v.model_version}"[:38] for v in alarmed})
    params.update({f"thr_{k}"[:40]: f"{v:g}" for k, v in (thresholds or {}).items()})
    data = {
        "InstanceNumber": int(first.id),
        "InstanceUID": scan_uid,
        "OOIID": _ooi_id(first.bag_id),
        "ContentDateAndTime": _date_time(latest.created_at),
        "ProcessingTime": sum(_processing_ms(v) for v in alarmed),
        "ScanType": SCAN_TYPE.enumOperational,
        "AlarmDecision": ALARM_DECISION.enumAlarm,
        "AlarmDecisionDateTime": _date_time(first.created_at),
        "ImageScaleRepresentation": 1,
        "ATR": {"manufacturer": "xscreen", "version": ", ".join(models)[:64],
                "parameters": params},
        "TDRType": TDR_TYPE.enumMachine,
        "OOIType": OBJECT_OF_INSPECTION_TYPE.enumTypeBaggage,
        "PTOs": ptos,
    }
    # A report covering more views is another instance of the bag's series: one series per bag and study (a
    # DICOS view that alarms after other views moves the report into that scan's study, and a series never
    # spans two studies).
    sop_uid = _uid("tdr-sop", key, *(f"{v.id}/{v.image_sha256}" for v in alarmed))
    with _LOCK, tempfile.TemporaryDirectory(prefix="xscreen-tdr-") as tmp:
        path = Path(tmp) / "report.dcs"
        try:
            tdr = TDRLoader()
            tdr.set_data(data)
            if not (tdr.SetSeriesInstanceUID(DcsUniqueIdentifier(_uid("tdr-series", key, scan_uid, frame_uid)))
                    and tdr.SetFrameOfReferenceUID(DcsUniqueIdentifier(frame_uid))):
                raise RuntimeError("the toolkit refused a series or frame of reference UID")
            tdr.write(path)
        except Exception as exc:
            raise TdrError(f"pydicos could not write the TDR of bag {first.bag_id!r} (scans "
                           f"{', '.join(str(v.id) for v in alarmed)}): {exc}") from exc
        study = (dicos.get("study_date"), dicos.get("study_time"))  # a DICOS scan's own study: the report joins it
        return _finish_report(path.read_bytes(), sop_uid, when=first.created_at,
                              study=study if study[0] else None)


def _date_time(when: datetime) -> dict[str, tuple[int, ...]]:
    return {"date": (when.year, when.month, when.day), "time": (when.hour, when.minute, when.second, when.microsecond)}


def _processing_ms(record: ScanRecord) -> float:
    timings = record.result.get("timings", {})
    return float(timings.get("inference_ms", 0.0)) + float(timings.get("decode_ms", 0.0))


def stored_dicos_image(store: Any, record: ScanRecord) -> bytes | None:
    """The stored file of a scan sent as DICOS (its UIDs go into the report), else None. store: edge.store.Store."""
    if record.media_type != DICOM_MEDIA_TYPE:
        return None
    try:
        return store.read_image(record.image_sha256)[0]
    except (KeyError, OSError):
        return None  # the report is still written, with derived UIDs


def stored_dicos_images(store: Any, views: Sequence[ScanRecord]) -> dict[str, bytes]:
    """The stored files of a bag's alarmed views sent as DICOS, by sha256 (`build_tdr`'s `images`)."""
    found = ((v.image_sha256, stored_dicos_image(store, v)) for v in alarmed_views(views))
    return {sha: data for sha, data in found if data is not None}


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


def tdr_file_name(views: Sequence[ScanRecord]) -> str:
    """`bag-<first scan id>-<bag digest, 12 hex>.dcs`: one report per bag, rewritten as its views arrive. The
    first scan's id orders the folder; the digest of station and bag id keeps apart the reports of edge nodes
    with databases of their own (each numbers its scans from 1) that share one TDR folder."""
    first = min(views, key=lambda v: v.id)
    return f"bag-{first.id:09d}-{hashlib.sha256(bag_key(first).encode()).hexdigest()[:12]}.dcs"


def write_tdr_file(views: Sequence[ScanRecord], tdr_dir: Path, report: bytes) -> Path:
    """Write the bag's `report` (`build_tdr` of `views`) to `<tdr_dir>/<tdr_file_name>` atomically and durably
    (`edge.images.write_durable`: safe when another thread or process writes the same report at once, on a
    shared folder); return its path."""
    tdr_dir.mkdir(parents=True, exist_ok=True)
    final = tdr_dir / tdr_file_name(views)
    write_durable(final, report)
    return final
