"""Review: `WS /v1/stream` under hostile or broken clients (edge/routes_stream.py).

A bounded hypothesis test sends sequences of frames (valid scans, unreadable headers, stray and empty binary
frames, two headers in a row, truncated / undecodable / bomb images, mismatched and unsupported content types,
headers with missing, extra, oversized or wrongly typed fields, any JSON value as seq (one the stream cannot
echo is refused), duplicate seqs, another
station's name, re-sends, a client that closes mid-scan) and checks the stream's invariants:

- each scan (a header and its image, or a header with `image_b64`) gets exactly one answer, in order, carrying
  its seq; an unreadable header with its image, a stray binary frame and a header without its image get one
  400 each;
- every error is a 4xx with a clear detail, never a 500 / "internal error";
- every scan answered "result" is stored (GET /v1/scans/{id} as supervisor, same sha256) and its re-send on a
  new stream is answered duplicate with the same id; nothing is stored for a refused scan;
- /healthz and /readyz stay 200 and a new stream works.

Plain tests then cover the station-key refusals, the per-connection in-flight bound and a client that closes
without reading its answers, and each fault found (those fail on the code as reviewed; see each one's comment).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from edge import routes_stream
from edge_support import bomb_png, jpeg_bytes, png_bytes, running_service, scan_fields, served_service

FAST = dict(tdr_dir=None, rate_limit_per_s=100_000.0, rate_limit_burst=100_000)
_ids = itertools.count()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with running_service(tmp_path_factory.mktemp("review-stream-fuzz"), **FAST) as svc:
        yield svc


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with served_service(tmp_path_factory.mktemp("review-stream-served"), **FAST) as svc:
        yield svc


# -- the model of a frame sequence -----------------------------------------------------------------------

#: image kind -> (bytes for a seed, content_type to declare, statuses it may be refused with; empty: accepted)
def _image(kind: str, seed: int) -> tuple[bytes, Any, set[int]]:
    if kind == "png":
        return png_bytes(seed), None, set()
    if kind == "png_declared":
        return png_bytes(seed), "image/png", set()
    if kind == "jpeg":
        return jpeg_bytes(seed), "image/jpeg", set()
    if kind == "png_declared_jpeg":  # the declared type is a hint: the bytes decide
        return png_bytes(seed), "image/jpeg", set()
    if kind == "empty":
        return b"", None, {422}
    if kind == "truncated":
        data = png_bytes(seed)
        return data[: len(data) // 2], "image/png", {422}
    if kind == "garbage":
        return b"this is not an image " + str(seed).encode(), None, {415, 422}
    if kind == "bomb":
        return bomb_png(), "image/png", {413}
    if kind == "unsupported_type":
        return png_bytes(seed), "text/plain", {415}
    if kind == "content_type_not_a_string":
        return png_bytes(seed), ["image/png"], {422}
    raise AssertionError(kind)


IMAGE_KINDS = ["png", "png_declared", "jpeg", "png_declared_jpeg", "empty", "truncated", "garbage", "bomb",
               "unsupported_type", "content_type_not_a_string"]


def _fields(kind: str, bag: str) -> tuple[dict[str, Any], set[int]]:
    base: dict[str, Any] = dict(scan_fields(bag))
    if kind == "ok":
        return base, set()
    if kind == "extra":
        return {**base, "extra": {"a": [1, None]}, "priority": 3, "key": "not-a-key"}, set()
    if kind == "other_station":
        return {**base, "station": "st2"}, {403}
    if kind == "missing_lane":
        del base["lane"]
        return base, {422}
    if kind == "huge_bag_id":
        return {**base, "bag_id": "b" * 200_000}, {422}
    if kind == "bad_chars":
        return {**base, "view": "top/../x"}, {422}
    if kind == "lane_list":
        return {**base, "lane": ["1"]}, {422}
    raise AssertionError(kind)


FIELD_KINDS = ["ok", "extra", "other_station", "missing_lane", "huge_bag_id", "bad_chars", "lane_list"]

ABSENT = object()
seqs = st.one_of(
    st.just(ABSENT), st.none(), st.integers(0, 3), st.integers(-(2**70), 2**70), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12), st.just("s" * 100_000),
    st.lists(st.integers(0, 3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)

UNREADABLE = ["{not json", "[1, 2]", '"a string"', "null", "42", "", "{\"a\": 1", "[" * 5000 + "]" * 5000,
              "\x00\x01", "{'single': 'quotes'}"]


@dataclass
class Scan:
    img: str
    fields: str
    seq: Any
    b64: bool
    resend: bool = False  # re-send it at once, in the same stream (answered while the original may be in flight)


@dataclass
class Resend:  # the same header and bytes as an earlier accepted scan of this sequence
    which: int
    seq: Any


@dataclass
class BadText:  # a text frame that is not a JSON object, then the binary frame meant as its image
    text: str


@dataclass
class Stray:  # a binary frame with no header before it
    empty: bool


@dataclass
class TwoHeaders:  # a header whose image never comes (the next frame is another scan's header)
    seq: Any
    then: Scan


# Weighted toward scans that are accepted, so that results, re-sends and their records are exercised too.
image_kinds = st.one_of(st.sampled_from(["png", "png_declared", "jpeg", "png_declared_jpeg"]), st.sampled_from(IMAGE_KINDS))
field_kinds = st.one_of(st.sampled_from(["ok", "extra"]), st.sampled_from(FIELD_KINDS))
scans = st.builds(Scan, image_kinds, field_kinds, seqs, st.booleans(), st.booleans())
actions = st.one_of(
    scans, scans, scans,
    st.builds(Resend, st.integers(0, 5), seqs),
    st.builds(BadText, st.sampled_from(UNREADABLE)),
    st.builds(Stray, st.booleans()),
    st.builds(TwoHeaders, seqs, scans),
)


@dataclass
class Expected:
    seq: Any
    refused: set[int] | None  # None: a result is due; a set: an error with one of these statuses
    bag: str | None = None
    header: dict[str, Any] | None = None
    data: bytes | None = None
    duplicate_of: int | None = None  # index in `sent` of the scan this is a re-send of
    ok: bool = field(default=False)


def _with_seq(doc: dict[str, Any], seq: Any) -> dict[str, Any]:
    return doc if seq is ABSENT else {**doc, "seq": seq}


def _seq_ok(seq: Any) -> bool:
    """The stream's rule for a seq it echoes: none, a finite number (integers within 64 bits), or a string
    of at most 256 printable characters; any other is refused (400) and not echoed."""
    if seq is ABSENT or seq is None or isinstance(seq, bool):
        return True
    if isinstance(seq, int):
        return abs(seq) < 2**63
    if isinstance(seq, float):
        return math.isfinite(seq)
    return isinstance(seq, str) and len(seq) <= 256 and seq.isprintable()


def _echo(seq: Any) -> Any:
    return None if seq is ABSENT or not _seq_ok(seq) else json.loads(json.dumps(seq))


def _check_error(answer: dict[str, Any], allowed: set[int] | None = None) -> None:
    assert answer["type"] == "error", answer
    status = answer["status"]
    assert isinstance(status, int) and 400 <= status < 500, answer  # never a 500
    assert isinstance(answer["detail"], str) and answer["detail"].strip(), answer
    assert "internal error" not in answer["detail"], answer
    if allowed:
        assert status in allowed, answer


def _send_scan(ws: Any, header: dict[str, Any], data: bytes, b64: bool) -> None:
    if b64:
        ws.send_text(json.dumps({**header, "image_b64": base64.b64encode(data).decode()}))
    else:
        ws.send_text(json.dumps(header))
        ws.send_bytes(data)


def _scan_frames(ws: Any, action: Scan, expected: list[Expected]) -> None:
    n = next(_ids)
    bag = f"fz-{n}"
    data, content_type, img_refusals = _image(action.img, 10_000 + n)
    fields, field_refusals = _fields(action.fields, bag)
    header = _with_seq(fields, action.seq)
    if content_type is not None:
        header["content_type"] = content_type
    _send_scan(ws, header, data, action.b64)
    # A seq the stream cannot echo refuses the scan first, whatever else is wrong with it.
    refused = (img_refusals | field_refusals) if _seq_ok(action.seq) else {400}
    expected.append(Expected(_echo(action.seq), refused or None, bag, header, data, ok=not refused))
    if action.resend and not refused:
        _send_scan(ws, {**header, "seq": "again"}, data, False)
        expected.append(Expected("again", None, bag, header, data, duplicate_of=len(expected) - 1))


def _run_sequence(svc: Any, plan: list[Any], close_mid_scan: bool) -> None:
    expected: list[Expected] = []
    with svc.client.websocket_connect("/v1/stream", headers=svc.auth("station")) as ws:
        assert ws.receive_json() == {"type": "ready", "station": "st1"}
        for action in plan:
            if isinstance(action, Scan):
                _scan_frames(ws, action, expected)
            elif isinstance(action, Resend):
                accepted = [i for i, e in enumerate(expected) if e.ok and e.duplicate_of is None]
                if not accepted:
                    continue
                i = accepted[action.which % len(accepted)]
                original = expected[i]
                assert original.header is not None and original.data is not None
                header = _with_seq({k: v for k, v in original.header.items() if k != "seq"}, action.seq)
                _send_scan(ws, header, original.data, False)
                if _seq_ok(action.seq):
                    expected.append(Expected(_echo(action.seq), None, original.bag, header, original.data,
                                             duplicate_of=i))
                else:
                    expected.append(Expected(None, {400}))  # refused: nothing new stored (its bag holds the original)
            elif isinstance(action, BadText):
                ws.send_text(action.text)
                ws.send_bytes(png_bytes(1))  # its image: dropped with it
                expected.append(Expected(None, {400}))
            elif isinstance(action, Stray):
                ws.send_bytes(b"" if action.empty else png_bytes(2))
                expected.append(Expected(None, {400}))
            elif isinstance(action, TwoHeaders):
                bag = f"fz-lone-{next(_ids)}"
                ws.send_text(json.dumps(_with_seq(scan_fields(bag), action.seq)))
                expected.append(Expected(_echo(action.seq), {400}, bag))
                _scan_frames(ws, action.then, expected)
        answers = [ws.receive_json() for _ in expected]
        if close_mid_scan:  # a header, half of nothing: the client goes away before the image
            half_bag = f"fz-half-{next(_ids)}"
            ws.send_text(json.dumps({**scan_fields(half_bag), "seq": "half"}))
            expected.append(Expected("half", {0}, half_bag))
    # Exactly one answer each, in order, with its seq.
    for want, got in zip(expected, answers):
        assert got.get("seq") == want.seq, (want, got)
        if want.refused is None:
            assert got["type"] == "result", (want.header, got)
            assert got["bag_id"] == want.bag and got["station"] == "st1", got
        else:
            _check_error(got, want.refused)
    client = svc.client
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    # Re-sends answered in this stream: the original's id, marked duplicate.
    for want, got in zip(expected, answers):
        if want.duplicate_of is not None:
            original = answers[want.duplicate_of]
            assert (got["duplicate"], got["id"]) == (True, original["id"]), (original, got)
    # Every result is stored, with its bytes; a new stream works and answers each re-send as a duplicate.
    results = [(want, got) for want, got in zip(expected, answers) if got["type"] == "result"]
    for want, got in results:
        record = client.get(f"/v1/scans/{got['id']}", headers=svc.auth("supervisor"))
        assert record.status_code == 200, record.text
        assert record.json()["image_sha256"] == hashlib.sha256(want.data).hexdigest()
        assert record.json()["bag_id"] == want.bag
    with client.websocket_connect("/v1/stream", headers=svc.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        for k, (want, _got) in enumerate(results):
            assert want.header is not None and want.data is not None
            _send_scan(ws, {**want.header, "seq": k}, want.data, False)
        again = [ws.receive_json() for _ in results]
        fresh = next(_ids)
        _send_scan(ws, {**scan_fields(f"fz-fresh-{fresh}"), "seq": "fresh"}, png_bytes(20_000 + fresh), False)
        assert ws.receive_json()["type"] == "result"
    for k, ((_want, got), resent) in enumerate(zip(results, again)):
        assert (resent["type"], resent["seq"], resent["duplicate"], resent["id"]) == ("result", k, True, got["id"])
    # Nothing is stored for a refused scan (nor for the half-sent one, once its stream is gone).
    store = svc.ctx.store
    for want in expected:
        if want.refused is not None and want.bag is not None and len(want.bag) < 200:
            assert store.bag_scans("st1", want.bag) == [] and store.bag_scans("st2", want.bag) == [], want


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(plan=st.lists(actions, min_size=1, max_size=7), close_mid_scan=st.booleans())
def test_stream_fuzz_invariants(service, plan, close_mid_scan):
    _run_sequence(service, plan, close_mid_scan)


# -- plain checks of what the brief names (these pass) ---------------------------------------------------


@pytest.mark.parametrize("first", [
    "wrong-key", "unknown-station-key", "supervisor-key", "disabled-station-key", "key-not-a-string",
    "binary-first-frame", "scan-header-first"])
def test_a_refused_key_message_is_a_401_and_1008(tmp_path, first):
    with running_service(tmp_path, **FAST) as svc:
        if first == "disabled-station-key":
            svc.ctx.auth.set_disabled("st2", kind="station")
        key = {"wrong-key": "xs_st_this-key-was-never-issued", "unknown-station-key": "not even a key",
               "supervisor-key": svc.keys["supervisor"], "disabled-station-key": svc.keys["station2"],
               "key-not-a-string": 12345}.get(first)
        with svc.client.websocket_connect("/v1/stream") as ws:
            if first == "binary-first-frame":
                ws.send_bytes(svc.keys["station"].encode())
            elif first == "scan-header-first":
                ws.send_text(json.dumps(scan_fields("bag-no-key")))
            else:
                ws.send_text(json.dumps({"key": key}))
            answer = ws.receive_json()
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
        assert (answer["type"], answer["status"]) == ("error", 401), answer
        assert "station key" in answer["detail"]
        assert closed.value.code == 1008
        assert svc.client.get("/readyz").status_code == 200


@pytest.mark.parametrize("who", ["wrong", "supervisor", "admin"])
def test_a_non_station_bearer_key_is_refused_at_the_handshake(service, who):
    with pytest.raises(WebSocketDisconnect) as closed:
        with service.client.websocket_connect("/v1/stream", headers=service.auth(who)):
            pass
    assert closed.value.code == 1008 and "station key" in closed.value.reason


def test_the_in_flight_bound_holds_for_a_client_that_never_reads(service, monkeypatch):
    state = {"now": 0, "max": 0}
    screen = routes_stream.screen

    async def slow_screen(*args: Any, **kwargs: Any) -> Any:
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        try:
            await asyncio.sleep(0.02)
            return await screen(*args, **kwargs)
        finally:
            state["now"] -= 1

    monkeypatch.setattr(routes_stream, "screen", slow_screen)
    n = 3 * routes_stream.MAX_IN_FLIGHT
    with service.client.websocket_connect("/v1/stream", headers=service.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        for i in range(n):
            _send_scan(ws, {**scan_fields(f"bound-{i}"), "seq": i}, png_bytes(30_000 + i), False)
        time.sleep(0.3)
        answers = [ws.receive_json() for _ in range(n)]
    assert [(a["type"], a["seq"]) for a in answers] == [("result", i) for i in range(n)]
    assert 1 < state["max"] <= routes_stream.MAX_IN_FLIGHT


def test_a_client_that_closes_without_reading_loses_no_scan_it_sent(served):
    url = "ws" + served.url.removeprefix("http") + "/v1/stream"
    with connect(url, additional_headers={"Authorization": f"Bearer {served.keys['station']}"}) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        for i in range(5):
            ws.send(json.dumps({**scan_fields(f"gone-{i}"), "seq": i}))
            ws.send(png_bytes(40_000 + i))
        ws.send(json.dumps({**scan_fields("gone-half"), "seq": 5}))  # its image never comes
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stored = sorted(r.bag_id for r in served.ctx.store.list_scans(limit=500) if r.bag_id.startswith("gone-"))
        if len(stored) >= 5:
            break
        time.sleep(0.1)
    assert stored == [f"gone-{i}" for i in range(5)]


# -- faults found (each failed on the code as reviewed, and is fixed) ---------------------------------------


def test_fault_key_message_with_a_lone_surrogate_is_a_401_not_a_crash(service):
    # Fixed (failed on the code as reviewed): `{"key": "xs_st_\ud800"}` is valid JSON (a \u escape) and json.loads gives a str with a lone
    # surrogate; Auth.principal_for_key hashes key.encode("utf-8"), which raises UnicodeEncodeError, and
    # _authenticate (edge/routes_stream.py) does not catch it: the handler crashes (a traceback in the log;
    # under uvicorn the client sees the socket dropped without a close frame, 1006). It should be refused like
    # any wrong key: a 401 error message and close 1008. Fix: treat a key that is not encodable as invalid
    # (edge/auth.py principal_for_key, or check it in _authenticate).
    with service.client.websocket_connect("/v1/stream") as ws:
        ws.send_text('{"key": "xs_st_\\ud800"}')
        answer = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert (answer["type"], answer["status"]) == ("error", 401), answer
    assert closed.value.code == 1008


def test_fault_seq_with_a_lone_surrogate_silences_the_stream(served):
    # Fixed (failed on the code as reviewed): seq is echoed as "any JSON value"; `"seq": "\ud800"` is valid JSON, but the answer holding it
    # cannot be encoded as UTF-8, so the WebSocket send raises in _send_in_order (edge/routes_stream.py) and
    # the sender task dies. The scan is recorded, yet neither it nor any later scan of the stream is answered:
    # the station waits forever (the stream is only closed, 1000, once it sends more). Any answer should
    # be sendable: refuse such a header with a 400 (or echo the seq escaped), and the next scan is answered.
    url = "ws" + served.url.removeprefix("http") + "/v1/stream"
    with connect(url, additional_headers={"Authorization": f"Bearer {served.keys['station']}"}) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send('{"station": "st1", "lane": "1", "bag_id": "bag-surrogate-seq", "view": "top", "seq": "\\ud800"}')
        ws.send(png_bytes(50_001))
        ws.send(json.dumps({**scan_fields("bag-after-surrogate-seq"), "seq": 2}))
        ws.send(png_bytes(50_002))
        try:
            first, second = json.loads(ws.recv(timeout=5)), json.loads(ws.recv(timeout=5))
        except (TimeoutError, ConnectionClosed) as exc:
            pytest.fail(f"the stream stopped answering after a seq with a lone surrogate: {exc!r}")
    assert first["type"] == "result" or 400 <= first["status"] < 500, first
    assert (second["type"], second["seq"]) == ("result", 2), second


def test_fault_seq_beyond_float_range_is_echoed_as_invalid_json(service):
    # Fixed (failed on the code as reviewed): `"seq": 1e400` is valid JSON (RFC 8259 puts no limit on a number's range); json.loads reads it as
    # inf and the answer is sent by Starlette's send_json (json.dumps, allow_nan=True) as `"seq":Infinity`,
    # which is not JSON: a strict client (JavaScript's JSON.parse, Go, serde_json) cannot read the answer, so
    # that scan's result is lost to the station. The bare literal NaN (not JSON at all) is likewise accepted as
    # a header instead of being a 400. Every answer should be strict JSON: refuse a non-finite seq (400),
    # or parse headers with parse_constant raising (edge/routes_stream.py _next_scan / _screen_one).
    with service.client.websocket_connect("/v1/stream", headers=service.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_text('{"station": "st1", "lane": "1", "bag_id": "bag-seq-inf", "view": "top", "seq": 1e400}')
        ws.send_bytes(png_bytes(50_010))
        text = ws.receive_text()

    def strict(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    json.loads(text, parse_constant=strict)


def test_fault_image_b64_null_gives_one_scan_two_answers(service):
    # Fixed (failed on the code as reviewed): a header with `"image_b64": null` (a station whose client serialises an unset optional field as
    # null) followed by its image frame: _next_scan tests `"image_b64" in header`, base64-decodes None and
    # answers 400 "image_b64 is not valid base64"; the image frame is then answered as a stray frame (a
    # second 400), so one scan gets two answers and every later answer is shifted by one for a station that
    # pairs answers with scans by order. A null image_b64 should count as absent (the scan is then screened
    # from its binary frame); at the least a refused header's image frame must be dropped with it.
    with service.client.websocket_connect("/v1/stream", headers=service.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_text(json.dumps({**scan_fields("bag-b64-null"), "seq": 0, "image_b64": None}))
        ws.send_bytes(png_bytes(50_020))
        ws.send_text(json.dumps({**scan_fields("bag-b64-null-next"), "seq": 1}))
        ws.send_bytes(png_bytes(50_021))
        first, second = ws.receive_json(), ws.receive_json()
    assert first["seq"] == 0 and second["seq"] == 1, (first, second)
    assert (second["type"], second["bag_id"]) == ("result", "bag-b64-null-next"), second


def test_fault_a_numeric_bag_id_loses_the_view_order_of_its_bag(tmp_path):
    # Fixed (failed on the code as reviewed): validate_meta accepts a numeric bag_id (str(77) == "77") and records the views under bag "77",
    # but the stream chains the views of a bag only when the header's bag_id is a str (`isinstance(bag_id,
    # str)` in stream(), edge/routes_stream.py), so views of bag 77 are recorded in whatever order their
    # screening ends: the answer to the bag's last view (the one a station takes as the bag's verdict) may not
    # cover the earlier views (bag_views 1 instead of 2 here, where the first view's record write is slow).
    # Either refuse non-string identifying fields with a 422, or chain on the validated bag_id.
    with running_service(tmp_path, **FAST) as svc:
        store = svc.ctx.store
        record = store.record_scan_in_bag

        def slow_first_view(**kwargs: Any) -> Any:
            if kwargs["view"] == "first":
                time.sleep(0.5)
            return record(**kwargs)

        store.record_scan_in_bag = slow_first_view
        with svc.client.websocket_connect("/v1/stream", headers=svc.auth("station")) as ws:
            assert ws.receive_json()["type"] == "ready"
            for i, view in enumerate(["first", "second"]):
                ws.send_text(json.dumps({"station": "st1", "lane": "1", "bag_id": 77, "view": view, "seq": i}))
                ws.send_bytes(png_bytes(50_030 + i))
            answers = [ws.receive_json() for _ in range(2)]
    last = answers[1]
    assert last["type"] != "result" or last["bag_views"] == 2, answers
