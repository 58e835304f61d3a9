"""One DICOS TDR per alarmed bag: its PTOs come from every alarmed view, each referencing its own view's image;
the service's download and its TDR folder give the bag's report, rewritten as views arrive."""

from __future__ import annotations

import asyncio
import dataclasses
import io

import pydicom
import pytest
from edge_support import running_service
from test_review_dicos import _PIXELS, native_dx, template  # noqa: F401 (template: a fixture)
from test_review_dicos import _record as _scan
from test_review_edge_ui import _record as _stored

import edge.ingest
from edge.formats import DICOM_MEDIA_TYPE
from edge.tdr import build_tdr, read_tdr, tdr_file_name


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _referenced(ds: pydicom.Dataset) -> list[str]:
    """The images the report references, in order, each once (a PTO names its image in two sequences)."""
    return list(dict.fromkeys(str(e.value) for e in ds.iterall() if e.keyword == "ReferencedSOPInstanceUID"))


def _view(scan_id: int, sha: str, view: str, cls: str | None) -> object:
    """A view of bag-1 at st1: alarmed with one `cls` box, or clear (cls None)."""
    r = _scan(scan_id, sha)
    if cls is None:
        return dataclasses.replace(r, alarm=False, alarm_classes=[], result={"detections": []}, view=view)
    det = {**r.result["detections"][0], "class": cls, "box_xyxy": [scan_id, 20.0, scan_id + 30.0, 60.0]}
    return dataclasses.replace(r, view=view, alarm_classes=[cls], result={**r.result, "detections": [det]})


def test_a_bag_report_holds_the_ptos_of_every_alarmed_view_each_referencing_its_image():
    top, side, front = _view(7, "ab" * 32, "top", "cocaine"), _view(8, "cd" * 32, "side", "cash"), _view(9, "ef" * 32, "front", None)
    report = read_tdr(build_tdr([side, front, top]))  # any order: the report follows the records' ids
    assert [p["Assessment"]["description"] for p in report["PTOs"]] == ["cocaine", "cash"]
    assert [p["Base"]["x"] for p in report["PTOs"]] == [7.0, 8.0]  # each box in its own view's coordinates
    assert report["OOIID"] == "bag-1" and report["InstanceNumber"] == 7
    ds = _read(build_tdr([top, side, front]))
    referenced = _referenced(ds)
    assert len(referenced) == 2 and referenced[0] != referenced[1]  # two images, one PTO each
    # The clear view adds nothing: the report is the same instance without it.
    assert _read(build_tdr([top, side])).SOPInstanceUID == ds.SOPInstanceUID
    # A report covering one view more is another instance of the bag's series.
    alone = _read(build_tdr([top]))
    assert alone.SOPInstanceUID != ds.SOPInstanceUID and alone.SeriesInstanceUID == ds.SeriesInstanceUID
    assert _referenced(alone) == referenced[:1]


def test_a_report_covers_one_bag_and_needs_an_alarm():
    top, clear = _view(7, "ab" * 32, "top", "cocaine"), _view(8, "cd" * 32, "side", None)
    with pytest.raises(ValueError, match="one bag"):
        build_tdr([top, dataclasses.replace(clear, bag_id="bag-2")])
    with pytest.raises(ValueError, match="alarmed"):
        build_tdr([clear])
    with pytest.raises(ValueError, match="one bag"):  # the same bag id at another station is another bag
        build_tdr([top, dataclasses.replace(_view(8, "cd" * 32, "side", "cash"), station="st2")])


def test_a_dicos_view_is_referenced_by_its_own_uid_beside_a_png_view(template):  # noqa: F811 (the fixture)
    dx = native_dx(template, _PIXELS)
    dicos = dataclasses.replace(_view(7, "ab" * 32, "top", "cocaine"), media_type=DICOM_MEDIA_TYPE)
    png = _view(8, "cd" * 32, "side", "cash")
    ds = _read(build_tdr([dicos, png], images={dicos.image_sha256: dx}))
    referenced = _referenced(ds)
    assert referenced[0] == _read(dx).SOPInstanceUID and referenced[1] != referenced[0]
    assert ds.StudyInstanceUID == _read(dx).StudyInstanceUID


def test_the_service_gives_one_report_per_bag_from_any_view_and_one_file(tmp_path):
    with running_service(tmp_path, tdr_dir=tmp_path / "tdr") as svc:
        store = svc.ctx.store
        top = _stored(store, "bag-two", alarm=True, classes=("cocaine",))
        side = _stored(store, "bag-two", alarm=True, view="side", classes=("cash",))
        asyncio.run(edge.ingest._after_record(svc.ctx, top, enqueued=True))
        asyncio.run(edge.ingest._after_record(svc.ctx, side, enqueued=True))
        files = sorted((tmp_path / "tdr").iterdir())
        assert [f.name for f in files] == [tdr_file_name([top, side])]
        downloads = [svc.client.get(f"/v1/scans/{r.id}/tdr", headers=svc.auth("supervisor")) for r in (top, side)]
    assert all(d.status_code == 200 for d in downloads)
    # The same report (its creation time aside) through either view and in the folder.
    reports = [_read(d.content) for d in downloads] + [_read(files[0].read_bytes())]
    assert len({r.SOPInstanceUID for r in reports}) == 1 and len({tuple(_referenced(r)) for r in reports}) == 1
    assert [p["Assessment"]["description"] for p in read_tdr(files[0].read_bytes())["PTOs"]] == ["cocaine", "cash"]
    assert downloads[0].headers["content-disposition"].endswith(f'filename="{files[0].name}"')


def test_a_slow_writer_of_an_earlier_view_does_not_leave_the_bag_report_without_a_later_one(tmp_path, monkeypatch):
    """Two views of one bag recorded at once: the first view's writer read the bag before the second view was
    recorded, and writes its report after the second view's writer wrote the full one. The report in the
    folder must still cover both views."""
    real_write = edge.ingest.write_tdr_file
    with running_service(tmp_path, tdr_dir=tmp_path / "tdr") as svc:
        store = svc.ctx.store
        top = _stored(store, "bag-race", alarm=True, classes=("cocaine",))
        calls = []

        def slow_first_write(views, tdr_dir, report):
            calls.append([v.id for v in views])
            if len(calls) == 1:  # meanwhile the side view is recorded and its writer writes the full report
                side = _stored(store, "bag-race", alarm=True, view="side", classes=("cash",))
                both = store.bag_scans(side.station, side.bag_id)
                real_write(both, tdr_dir, build_tdr(both))
            return real_write(views, tdr_dir, report)

        monkeypatch.setattr(edge.ingest, "write_tdr_file", slow_first_write)
        asyncio.run(edge.ingest._after_record(svc.ctx, top, enqueued=True))
        (report,) = (tmp_path / "tdr").iterdir()
    assert calls[0] == [top.id] and len(calls) == 2 and len(calls[1]) == 2
    assert [p["Assessment"]["description"] for p in read_tdr(report.read_bytes())["PTOs"]] == ["cocaine", "cash"]


def test_the_seizure_export_links_the_bags_report_when_only_a_clear_view_was_confirmed(tmp_path):
    """A verdict sent per scan (POST /v1/scans/{id}/reviews) may confirm a bag's clear view only; the bag
    still has a report, through its alarmed view, and the export names it as the bag page does."""
    from edge.seizures import collect_seizures

    with running_service(tmp_path, tdr_dir=None) as svc:
        store = svc.ctx.store
        alarmed = _stored(store, "bag-seized", alarm=True, classes=("cocaine",))
        clear = _stored(store, "bag-seized", alarm=False, view="side")
        r = svc.client.post(f"/v1/scans/{clear.id}/reviews", json={"verdict": "confirmed", "note": ""},
                            headers=svc.auth("supervisor"))
        assert r.status_code in (200, 201), r.text
        (seizure,) = collect_seizures(store)
        assert seizure["scan_ids"] == [clear.id] and seizure["tdr_url"] == f"/v1/scans/{alarmed.id}/tdr"
        assert svc.client.get(seizure["tdr_url"], headers=svc.auth("supervisor")).status_code == 200
        _stored(store, "bag-clean", alarm=False)
        clean = store.bag_scans("st1", "bag-clean")[0]
        store.add_review(clean.id, user="sup", verdict="confirmed")
        assert [s["tdr_url"] for s in collect_seizures(store) if s["bag_id"] == "bag-clean"] == [None]
