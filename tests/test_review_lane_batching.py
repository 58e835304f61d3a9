"""Review of the lane service's batching, back-pressure, stream and multi-view answers: each test asserts
the behaviour a station is promised and fails on the code as it was reviewed (see each docstring)."""

from __future__ import annotations

import asyncio
import json
import time

import cv2
import numpy as np
import pytest

from edge import routes_stream
from edge.batcher import MicroBatcher
from edge_support import png_bytes, post_png, running_service, scan_fields
from test_edge_batcher import _overlap_recording_run
from vision.letterbox import LetterboxParams
from vision.postprocess import Detections

PARAMS = LetterboxParams(scale=1.0, pad_x=0, pad_y=0, src_width=8, src_height=8, dst_width=8, dst_height=8)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with running_service(tmp_path_factory.mktemp("review-lane"), tdr_dir=None) as svc:
        yield svc


@pytest.fixture()
def own_service(tmp_path):
    with running_service(tmp_path, tdr_dir=None) as svc:
        yield svc


def _black_png(hw: tuple[int, int] = (96, 80)) -> bytes:
    ok, buf = cv2.imencode(".png", np.zeros((*hw, 3), np.uint8))
    assert ok
    return buf.tobytes()


def _brightness_model(batch: np.ndarray, params) -> list[Detections]:
    """A stand-in model: a bright scan holds one drug package (score 0.9), a dark one (an empty tray) nothing."""
    out = []
    for x in batch:
        if float(x.mean()) > 60.0:
            out.append(Detections.from_arrays(np.array([[1.0, 1.0, 20.0, 20.0]]), np.array([0.9]), np.array([0])))
        else:
            out.append(Detections.empty())
    return out


def _rejected(svc, reason: str) -> float:
    return svc.ctx.metrics.registry.get_sample_value("xscreen_rejections_total", {"reason": reason}) or 0.0


# -- WS /v1/stream ----------------------------------------------------------------------------------------


def test_stream_answer_of_a_later_view_fuses_the_earlier_views_of_its_bag(own_service):
    """A station streams view 'top' (alarms) then view 'side' (clear) of one bag over one connection. The
    answers come in order, so the station takes the last one, side's, as the bag's verdict. When top's
    record is written after side's (a slower write or decode: the scans of a stream are screened
    concurrently), side's answer says bag_alarm false over 1 view: the bag is cleared although its top view
    alarmed."""
    svc = own_service
    batcher = svc.ctx.batcher
    batcher.run_batch = _brightness_model
    if batcher.run_batch_alone is not None:
        batcher.run_batch_alone = _brightness_model
    store = svc.ctx.store
    record = store.record_scan_in_bag

    def slow_top(**kwargs):  # noqa: ANN003, ANN202
        if kwargs["view"] == "top":
            time.sleep(0.5)
        return record(**kwargs)

    store.record_scan_in_bag = slow_top
    with svc.client.websocket_connect("/v1/stream", headers=svc.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_text(json.dumps({**scan_fields("bag-order", view="top"), "seq": 0}))
        ws.send_bytes(png_bytes(1))
        ws.send_text(json.dumps({**scan_fields("bag-order", view="side"), "seq": 1}))
        ws.send_bytes(_black_png())
        top, side = ws.receive_json(), ws.receive_json()
    assert (top["seq"], side["seq"]) == (0, 1)
    assert top["alarm"] is True and side["alarm"] is False
    # The answer to the later view covers the bag's views sent before it.
    assert side["bag_views"] == 2, side
    assert side["bag_alarm"] is True and side["bag_alarm_classes"] == ["drug_package"]


def test_stream_screens_at_most_max_in_flight_scans_of_one_connection(own_service, monkeypatch):
    """The stream promises that at most MAX_IN_FLIGHT (8) scans of one connection are screened at once, then
    it stops reading (back-pressure through TCP). A station that sends faster than it is answered gets 10 of
    its scans screened at once: the task of the scan that waits for room is already running, and so is the
    one the sender awaits, outside the bounded queue of pending answers."""
    svc = own_service
    real = routes_stream.screen
    state = {"now": 0, "peak": 0}

    async def counting(ctx, meta, upload, *, started, **kwargs):  # noqa: ANN001, ANN003, ANN202
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        try:
            await asyncio.sleep(0.6)
            return await real(ctx, meta, upload, started=started, **kwargs)
        finally:
            state["now"] -= 1

    monkeypatch.setattr(routes_stream, "screen", counting)
    n = 14
    with svc.client.websocket_connect("/v1/stream", headers=svc.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        for i in range(n):
            ws.send_text(json.dumps({**scan_fields(f"bag-inflight-{i}"), "seq": i}))
            ws.send_bytes(png_bytes(300 + i))
        answers = [ws.receive_json() for _ in range(n)]
    assert [a["seq"] for a in answers] == list(range(n))
    assert all(a["type"] == "result" for a in answers)
    assert state["peak"] <= routes_stream.MAX_IN_FLIGHT, state


def test_an_unreadable_stream_header_counts_as_a_rejection(service):
    """Every refusal of a scan counts in xscreen_rejections under its reason (a stream frame out of order
    counts as bad_frame). A header frame that is not a JSON object is answered 400, yet counts nowhere: a
    station sending garbage headers is invisible on the rejections dashboard."""
    before = sum(_rejected(service, r) for r in ("bad_frame", "invalid_fields"))
    with service.client.websocket_connect("/v1/stream", headers=service.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_text("{not json")
        ws.send_bytes(png_bytes(1))
        answer = ws.receive_json()
    assert (answer["type"], answer["status"]) == ("error", 400)
    after = sum(_rejected(service, r) for r in ("bad_frame", "invalid_fields"))
    assert after == before + 1


def test_a_header_without_its_image_does_not_swallow_the_next_scan(service):
    """A station sends a header whose image frame never comes (its read of the file failed), then a
    well-formed scan. The first is refused (400), as it should be; but its refusal consumes the next
    header as the missing image, so the well-formed scan is refused too, as a stray binary frame with
    seq null: the station cannot pair that answer with its scan, and a good scan was never screened."""
    with service.client.websocket_connect("/v1/stream", headers=service.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_text(json.dumps({**scan_fields("bag-noimage"), "seq": 0}))
        ws.send_text(json.dumps({**scan_fields("bag-after-noimage"), "seq": 1}))
        ws.send_bytes(png_bytes(41))
        first, second = ws.receive_json(), ws.receive_json()
    assert (first["type"], first["seq"], first["status"]) == ("error", 0, 400), first
    assert (second["type"], second["seq"], second.get("bag_id")) == ("result", 1, "bag-after-noimage"), second


# -- deadlines ----------------------------------------------------------------------------------------------


def test_a_stalled_record_write_does_not_hold_the_station_past_its_deadline(tmp_path):
    """`request_deadline_s`: a scan not answered by then gets 504. A record write held up (e.g. SQLite
    waiting on another writer) holds the station's POST for as long as the write takes, answered 200 far
    past the deadline; the deadline is honoured only up to the model's answer."""
    with running_service(tmp_path, tdr_dir=None, request_deadline_s=0.3) as svc:
        store = svc.ctx.store
        record = store.record_scan_in_bag

        def slow_record(**kwargs):  # noqa: ANN003, ANN202
            time.sleep(1.2)
            return record(**kwargs)

        store.record_scan_in_bag = slow_record
        t0 = time.monotonic()
        r = post_png(svc, png_bytes(3), "bag-slow-write")
        took = time.monotonic() - t0
        store.record_scan_in_bag = record
        assert r.status_code == 504, (r.status_code, took)
        assert took < 1.0
        assert "still being written" in r.json()["detail"]
    # The service awaited the write before it stopped: the scan is in the store (a re-send is answered from it).
    from edge.store import Store

    store = Store(f"sqlite:///{tmp_path}/edge.db", tmp_path / "data")
    try:
        assert [r.bag_id for r in store.list_scans()] == ["bag-slow-write"]
    finally:
        store.close()


# -- the micro-batcher --------------------------------------------------------------------------------------


def test_with_sharing_off_a_burst_runs_alone_one_batch_after_another():
    """`share_from` above `queue_max` turns sharing off: "every batch runs alone, one after another" (all
    cores per call: the lower-latency setting just below saturation). A burst of 5 scans on idle cores with
    max_batch 4 instead runs as two parallel one-core calls (4 and 1 scans), neither on the all-core session."""

    async def main() -> tuple[list[int], list[int], int]:
        shared: list[int] = []
        alone: list[int] = []
        peak, running = [0], [0]
        b = MicroBatcher(_overlap_recording_run(shared, peak, 0.2, running), max_batch=4, max_wait_ms=0.0, queue_max=16,
                         workers=2, run_batch_alone=_overlap_recording_run(alone, peak, 0.2, running), share_from=100)
        await b.start()
        try:
            deadline = time.monotonic() + 5
            tickets = [b.enqueue(np.full((3, 8, 8), i, np.uint8), PARAMS, deadline=deadline) for i in range(5)]
            await asyncio.gather(*(b.wait(t) for t in tickets))
        finally:
            await b.stop()
        return alone, shared, peak[0]

    alone, shared, peak = asyncio.run(main())
    assert (alone, shared, peak) == ([4, 1], [], 1)


def test_a_write_that_fails_after_its_station_stopped_waiting_is_logged(tmp_path, caplog):
    """A record write that fails once its request was answered 504 has nobody to raise to: it is logged
    (with the bag), not lost as an unretrieved task exception."""
    with running_service(tmp_path, tdr_dir=None, request_deadline_s=0.3) as svc:
        store = svc.ctx.store

        def failing_record(**kwargs):  # noqa: ANN003, ANN202
            time.sleep(0.6)
            raise OSError("disk full")

        store.record_scan_in_bag = failing_record
        with caplog.at_level("ERROR", logger="xscreen.edge.ingest"):
            r = post_png(svc, png_bytes(5), "bag-write-fails")
            assert r.status_code == 504
            deadline = time.monotonic() + 5
            while not any("scan not recorded" in m for m in caplog.messages) and time.monotonic() < deadline:
                time.sleep(0.05)
    logged = [r for r in caplog.records if r.getMessage() == "scan not recorded"]
    assert logged and logged[0].fields["bag_id"] == "bag-write-fails" and "disk full" in logged[0].fields["error"]
