"""`WS /v1/stream` on bad input and revoked keys: each bad scan gets exactly one 4xx answer and the stream
goes on (a non-string `content_type`, a header that is not a JSON object followed by its image frame, a
non-ASCII `image_b64`, a deeply nested header); a deeply nested key message is refused with 1008; a station
disabled, or whose key is rotated, while its stream is open gets a 401 answer (after the answers of the
scans before it) and close code 1008 once its key is looked up again, and that look-up is not made for every
scan."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from edge import routes_stream
from edge_support import png_bytes, running_service, scan_fields

DEEP = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError, not ValueError


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with running_service(tmp_path_factory.mktemp("edge-stream-errors"), tdr_dir=None) as svc:
        yield svc


@pytest.fixture()
def own_service(tmp_path):
    """A service of its own, for tests that disable a station or rotate its key."""
    with running_service(tmp_path, tdr_dir=None) as svc:
        yield svc


def _send_scan(ws, bag_id: str, seq: int, seed: int, **extra) -> None:
    ws.send_text(json.dumps({**scan_fields(bag_id), "seq": seq, **extra}))
    ws.send_bytes(png_bytes(seed))


def _assert_next_scan_is_screened(ws, bag_id: str, seed: int) -> None:
    """The stream is still alive and in step: the next scan's answer is the next message."""
    _send_scan(ws, bag_id, 99, seed)
    answer = ws.receive_json()
    assert (answer["type"], answer["seq"], answer["bag_id"]) == ("result", 99, bag_id), answer


@pytest.mark.parametrize("content_type", [5, ["image/png"], {"type": "image/png"}])
def test_a_non_string_content_type_is_a_422_answer(service, content_type):
    with service.client.websocket_connect("/v1/stream", headers=service.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        _send_scan(ws, "bag-ct-bad", 0, 1, content_type=content_type)
        answer = ws.receive_json()
        assert answer == {"type": "error", "seq": 0, "status": 422, "detail": "content_type must be a string"}
        _assert_next_scan_is_screened(ws, "bag-ct-next", 2)


@pytest.mark.parametrize("bad_header", ["{not json", "[1, 2]", '"a string"', DEEP],
                         ids=["not-json", "array", "string", "deeply-nested"])
def test_an_unreadable_header_and_its_image_get_one_answer(service, bad_header):
    """The error is answered before the image frame arrives (a client may wait for it), and the image frame
    is then dropped as part of that scan instead of being answered as a stray frame."""
    with service.client.websocket_connect("/v1/stream", headers=service.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_text(bad_header)
        answer = ws.receive_json()
        assert (answer["type"], answer["status"]) == ("error", 400), answer
        ws.send_bytes(png_bytes(3))
        _assert_next_scan_is_screened(ws, "bag-after-unreadable", 4)


@pytest.mark.parametrize("bad_header", ["{not json", DEEP], ids=["not-json", "deeply-nested"])
def test_an_unreadable_header_without_an_image_frame_leaves_the_next_header_alone(service, bad_header):
    """A bad header meant to carry `image_b64` has no binary frame after it: the next text frame is a header."""
    with service.client.websocket_connect("/v1/stream", headers=service.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_text(bad_header)
        _send_scan(ws, "bag-next-header", 1, 5)
        first, second = ws.receive_json(), ws.receive_json()
    assert (first["type"], first["status"]) == ("error", 400), first
    assert (second["type"], second["seq"], second["bag_id"]) == ("result", 1, "bag-next-header"), second


def test_a_stray_binary_frame_is_still_answered(service):
    """Only the frame after an unreadable header is dropped: a binary frame where a header belongs is an error."""
    with service.client.websocket_connect("/v1/stream", headers=service.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(png_bytes(6))
        answer = ws.receive_json()
        assert (answer["type"], answer["status"]) == ("error", 400), answer
        _assert_next_scan_is_screened(ws, "bag-after-stray", 7)


@pytest.mark.parametrize("image_b64", ["é", "aGk=é", 5], ids=["non-ascii", "trailing-non-ascii", "not-a-string"])
def test_an_invalid_image_b64_is_a_400_answer(service, image_b64):
    with service.client.websocket_connect("/v1/stream", headers=service.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_text(json.dumps({**scan_fields("bag-b64-bad"), "seq": 0, "image_b64": image_b64}))
        answer = ws.receive_json()
        assert answer == {"type": "error", "seq": 0, "status": 400, "detail": "image_b64 is not valid base64"}
        _assert_next_scan_is_screened(ws, "bag-b64-next", 8)


def test_a_deeply_nested_key_message_is_refused_with_1008(service):
    with service.client.websocket_connect("/v1/stream") as ws:
        ws.send_text(DEEP)
        answer = ws.receive_json()
        assert (answer["type"], answer["status"]) == ("error", 401), answer
        assert "station key" in answer["detail"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008


@contextmanager
def _stream(svc, how: str) -> Iterator[Any]:
    """A stream authenticated by the handshake header or by the first message; the ready message is read."""
    with svc.client.websocket_connect("/v1/stream", headers=svc.auth("station" if how == "header" else "none")) as ws:
        if how == "message":
            ws.send_text(json.dumps({"key": svc.keys["station"]}))
        assert ws.receive_json() == {"type": "ready", "station": "st1"}
        yield ws


@pytest.mark.parametrize("how", ["header", "message"])
@pytest.mark.parametrize("revoke", ["disable", "rotate"])
def test_a_revoked_station_key_ends_its_open_stream(own_service, monkeypatch, revoke, how):
    monkeypatch.setattr(routes_stream, "KEY_RECHECK_S", 0.0)  # look the key up before every scan
    svc = own_service
    with _stream(svc, how) as ws:
        _send_scan(ws, "bag-before", 0, 10)
        assert ws.receive_json()["type"] == "result"
        if revoke == "disable":
            svc.ctx.auth.set_disabled("st1", kind="station")
        else:
            svc.ctx.auth.rotate_key("st1", kind="station")
        _send_scan(ws, "bag-after", 1, 11)
        answer = ws.receive_json()
        assert (answer["type"], answer["seq"], answer["status"]) == ("error", 1, 401), answer
        assert "no longer authenticates" in answer["detail"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008
    assert [r.bag_id for r in svc.ctx.store.list_scans(limit=10)] == ["bag-before"]


def _count_key_lookups(svc, monkeypatch) -> list[str]:
    calls: list[str] = []
    lookup = svc.ctx.auth.principal_for_key

    def counting(key: str):
        calls.append(key)
        return lookup(key)

    monkeypatch.setattr(svc.ctx.auth, "principal_for_key", counting)
    return calls


@pytest.mark.parametrize(("recheck_s", "lookups"), [(60.0, 1), (0.0, 4)], ids=["within-the-interval", "every-scan"])
def test_the_key_is_looked_up_again_only_once_the_last_check_is_old(own_service, monkeypatch, recheck_s, lookups):
    """At up to ~60 scans/s a look-up per scan would be a database query each: within the interval none
    but the handshake's; with no interval one before each scan, and a key that still works goes on."""
    monkeypatch.setattr(routes_stream, "KEY_RECHECK_S", recheck_s)
    calls = _count_key_lookups(own_service, monkeypatch)
    n = lookups - 1 if recheck_s == 0.0 else 6
    with own_service.client.websocket_connect("/v1/stream", headers=own_service.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        for i in range(n):
            _send_scan(ws, f"bag-checked-{recheck_s:g}-{i}", i, 20 + 10 * (recheck_s == 0.0) + i)
        answers = [ws.receive_json() for _ in range(n)]
    assert [(a["type"], a["seq"]) for a in answers] == [("result", i) for i in range(n)]
    assert calls == [own_service.keys["station"]] * lookups


def test_scans_before_a_revocation_are_answered_in_order_before_its_401(own_service, monkeypatch):
    """The 401 is queued behind the scans still in flight (a full queue with MAX_IN_FLIGHT=2): the stream must
    answer them all, in order, before it closes, not drop the queue."""
    monkeypatch.setattr(routes_stream, "KEY_RECHECK_S", 0.0)
    monkeypatch.setattr(routes_stream, "MAX_IN_FLIGHT", 2)
    calls = _count_key_lookups(own_service, monkeypatch)
    lookup = own_service.ctx.auth.principal_for_key
    # The handshake and the checks before scans 0-5 find the station; the one before scan 6 does not.
    monkeypatch.setattr(own_service.ctx.auth, "principal_for_key", lambda key: lookup(key) if len(calls) < 7 else None)
    with own_service.client.websocket_connect("/v1/stream", headers=own_service.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        for i in range(8):
            _send_scan(ws, f"bag-queued-{i}", i, 40 + i)
        answers = [ws.receive_json() for _ in range(7)]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert [(a["seq"], a["type"]) for a in answers] == [(i, "result") for i in range(6)] + [(6, "error")]
    assert answers[6]["status"] == 401
    assert closed.value.code == 1008
    assert sorted(r.bag_id for r in own_service.ctx.store.list_scans(limit=20)) == [f"bag-queued-{i}" for i in range(6)]
