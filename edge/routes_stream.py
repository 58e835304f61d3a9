"""`WS /v1/stream`: a station streams scans over one WebSocket and gets the answers in order.

Protocol (all JSON text frames except the image bytes):
1. Authenticate: an `Authorization: Bearer <station key>` header on the handshake, or, without it, a first
   message `{"key": "<station key>"}`. The server answers `{"type": "ready", "station": name}`, or an
   error message and close code 1008 (policy violation). The key is looked up again before a scan once
   the last check is over `KEY_RECHECK_S` (1 s) old, not before every scan: a station streams up to ~60
   scans/s and a lookup per scan would be a database query each. So a station disabled, or whose key is
   rotated, while its stream is open has its scans screened for up to about a second longer (HTTP refuses
   the key at once); then its next scan is answered with a 401 error and the socket is closed with 1008.
2. For each scan, a header `{"station", "lane", "bag_id", "view", "seq"?, "content_type"?}` followed by
   exactly one binary frame holding the image file (PNG, JPEG, TIFF or DICOS DX). Instead of the binary
   frame the header may carry the file as base64 in `"image_b64"` (null: absent). The identifying fields
   are strings; `seq` (a finite number or a string of at most 256 printable characters) is echoed back.
   A header that is not a JSON object is answered with a 400 error; a binary frame right after it is taken
   as that refused scan's image and dropped, so each scan gets exactly one answer.
3. Each scan is answered, in the order the scans were sent, with `{"type": "result", "seq", ...}` (the
   fields of `POST /v1/scans`'s answer) or `{"type": "error", "seq", "status", "detail"}` (the status an
   HTTP request would have got; 429/503 carry `retry_after_s`).

Up to `MAX_IN_FLIGHT` scans of one connection are screened or waiting for their answer at once (so they can
share a batch); beyond that the server stops reading until the oldest is answered, which pushes back on
the station through TCP. Views of one bag are recorded in the order they were sent, so the answer to a
bag's last view carries the verdict fused over all its views. Dual-energy pairs are sent over HTTP only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from edge.auth import Auth, Principal
from edge.context import ServiceContext
from edge.deps import bearer_key
from edge.formats import UnsupportedMediaTypeError, upload_from_bytes
from edge.ingest import IngestError, check_rate, count_refusal, screen, validate_meta
from edge.logs import ACCESS_LOGGER, log_event
from edge.schemas import ScanResultOut

router = APIRouter(tags=["stream"])

#: Scans of one connection screened concurrently before the server stops reading.
MAX_IN_FLIGHT = 8
#: How long a connection may take to send its key message.
AUTH_TIMEOUT_S = 10.0
#: How old a connection's last key check may be before a scan makes it look the key up again.
KEY_RECHECK_S = 1.0
_POLICY_VIOLATION = 1008
_access_log = logging.getLogger(ACCESS_LOGGER)


class _UnreadableHeader(IngestError):
    """A header frame that is not a JSON object: a binary frame after it is the same scan's image."""


async def _station_for_key(auth: Auth, key: str) -> Principal | None:
    """The enabled station whose key this is (looked up in a thread: it queries the database), else None."""
    principal = await run_in_threadpool(auth.principal_for_key, key)
    return principal if principal is not None and principal.role == "station" else None


class _KeyCheck:
    """A connection's key, looked up again when the last successful check is over `KEY_RECHECK_S` old."""

    def __init__(self, auth: Auth, key: str) -> None:
        self._auth = auth
        self._key = key
        self._checked_at = time.monotonic()

    async def still_valid(self) -> bool:
        if time.monotonic() - self._checked_at < KEY_RECHECK_S:
            return True
        if await _station_for_key(self._auth, self._key) is None:
            return False
        self._checked_at = time.monotonic()
        return True


async def _authenticate(ws: WebSocket, ctx: ServiceContext) -> tuple[Principal, _KeyCheck] | None:
    """The station behind this socket and its key's check, or None after refusing it (the socket is then
    closed)."""
    try:
        _engine, _store, auth, _batcher = ctx.require()
    except RuntimeError:
        await ws.close(code=1013, reason="service starting")  # 1013: try again later
        return None
    try:
        key = bearer_key(ws.headers.get("authorization"))
    except Exception:
        await ws.close(code=_POLICY_VIOLATION, reason="malformed Authorization header")
        return None
    if key is not None:
        principal = await _station_for_key(auth, key)
        if principal is None:
            # Refuse the handshake itself (HTTP 403) when the header is wrong.
            await ws.close(code=_POLICY_VIOLATION, reason="invalid key or not a station key")
            return None
        await ws.accept()
    else:
        await ws.accept()
        try:
            message = await asyncio.wait_for(ws.receive_text(), timeout=AUTH_TIMEOUT_S)
            key = json.loads(message).get("key")
        except (TimeoutError, ValueError, AttributeError, KeyError, RecursionError, WebSocketDisconnect):
            key = None  # RecursionError: json.loads on a deeply nested message
        principal = await _station_for_key(auth, key) if isinstance(key, str) else None
        if principal is None:
            await _send_error(ws, None, 401, "authenticate first: send {\"key\": \"<station key>\"} or an "
                                             "Authorization: Bearer header; the key must be a valid station key")
            await ws.close(code=_POLICY_VIOLATION)
            return None
    ws.state.principal = f"{principal.kind}:{principal.name}"
    ws.state.station = principal.name
    return principal, _KeyCheck(auth, key)  # ("ready" is said once the stream has its slot)


async def _send_error(ws: WebSocket, seq: Any, status: int, detail: str, retry_after_s: float | None = None) -> None:
    doc: dict[str, Any] = {"type": "error", "seq": seq, "status": status, "detail": detail}
    if retry_after_s is not None:
        doc["retry_after_s"] = retry_after_s
    await ws.send_json(doc)


async def _screen_one(ctx: ServiceContext, principal: Principal, header: dict[str, Any], data: bytes | None,
                      error: IngestError | None, request_id: str | None = None,
                      after: asyncio.Task[Any] | None = None) -> dict[str, Any]:
    """One scan's answer message (never raises for a refusal: it becomes an error message).

    after: the connection's previous scan of the same bag: this one is recorded after it, so its answer's
    bag verdict covers every view sent before it (`screen`'s `after`)."""
    started = time.perf_counter()
    seq = header.get("seq")
    status = 200
    try:
        if error is not None:
            raise error
        assert data is not None
        if len(data) > ctx.settings.max_body_bytes:
            raise IngestError(413, f"image is larger than the limit of {ctx.settings.max_body_bytes:,} bytes",
                              reason="body_too_large")
        check_rate(ctx, principal.name)
        content_type = header.get("content_type")
        if content_type is not None and not isinstance(content_type, str):
            raise IngestError(422, "content_type must be a string", reason="invalid_fields")
        try:
            upload = upload_from_bytes(data, content_type)
        except UnsupportedMediaTypeError as exc:
            raise IngestError(415, str(exc), reason="media_type") from None
        meta = validate_meta(header, station_name=principal.name)
        result = await screen(ctx, meta, upload, started=started, after=after)
        return {"type": "result", "seq": seq, **ScanResultOut.model_validate(result).model_dump(mode="json", by_alias=True)}
    except IngestError as exc:
        count_refusal(ctx, exc)
        status = exc.status
        doc: dict[str, Any] = {"type": "error", "seq": seq, "status": exc.status, "detail": exc.detail}
        if "Retry-After" in exc.headers:
            doc["retry_after_s"] = float(exc.headers["Retry-After"])
        return doc
    except Exception as exc:  # an internal failure answers this scan and keeps the stream alive
        status = 500
        log_event(_access_log, "stream scan failed", logging.ERROR, error=repr(exc), station=principal.name)
        return {"type": "error", "seq": seq, "status": 500, "detail": "internal error while screening this scan"}
    finally:
        # Each scan counts in the request metrics like a POST /v1/scans does (the session's own line comes
        # when it closes, with its whole duration).
        latency_s = time.perf_counter() - started
        ctx.metrics.requests.labels(route="/v1/stream", method="SCAN", status=str(status)).inc()
        ctx.metrics.request_latency.labels(route="/v1/stream", method="SCAN").observe(latency_s)
        log_event(_access_log, "stream scan", request_id=request_id, seq=seq, route="/v1/stream", status=status,
                  station=principal.name, latency_ms=round(latency_s * 1000.0, 2))


async def _send_in_order(ws: WebSocket, pending: asyncio.Queue[asyncio.Task[dict[str, Any]] | None],
                         slots: asyncio.Semaphore) -> None:
    """Answer the scans in the order they came; each answer sent gives its scan's slot back."""
    while True:
        task = await pending.get()
        if task is None:
            return
        try:
            answer = await task
            await ws.send_text(_json_text(answer))
        finally:
            slots.release()


def _json_text(doc: dict[str, Any]) -> str:
    """`doc` as strict JSON text that can go out as UTF-8 (a lone surrogate in an echoed string is escaped)."""
    text = json.dumps(doc, allow_nan=False, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(doc, allow_nan=False, ensure_ascii=True)
    return text


def _seq_problem(seq: Any) -> str | None:
    """Why `seq` cannot be echoed in an answer, or None: a station's own tag for a scan, a finite number or
    a short string (JSON's NaN and Infinity are no JSON a client can read back)."""
    if seq is None or isinstance(seq, bool) or (isinstance(seq, int) and abs(seq) < 2**63):
        return None
    if isinstance(seq, float) and math.isfinite(seq):
        return None
    if isinstance(seq, str) and len(seq) <= 256 and seq.isprintable():  # (a lone surrogate is not printable)
        return None
    return "seq must be a finite number, or a string of at most 256 printable characters"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Frames:
    """The socket's frames, with room to give one back: a text frame that came where a header's image was
    due is the next scan's header, read again by the next `_next_scan`."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.held: dict[str, Any] | None = None

    async def receive(self) -> dict[str, Any]:
        if self.held is not None:
            message, self.held = self.held, None
            return message
        return await self.ws.receive()


async def _next_scan(frames: _Frames, *, after_unreadable_header: bool
                     ) -> tuple[dict[str, Any], bytes | None, IngestError | None] | None:
    """Read one header (and its binary frame); None when the client closed the socket.

    after_unreadable_header: the previous header was answered with an `_UnreadableHeader` error, so a
    binary frame now is that scan's image and is dropped (answering it too would shift every later answer
    by one for a client that pairs answers with scans by order); a text frame is the next header.
    A header followed by a text frame instead of its image is refused, and that text frame is the next
    scan's header (a station whose file read failed loses that scan only, not the next one too).
    """
    message = await frames.receive()
    if after_unreadable_header and message.get("bytes") is not None:
        message = await frames.receive()
    if message["type"] == "websocket.disconnect":
        return None
    if message.get("text") is None:
        return {}, None, IngestError(400, "expected a JSON header text frame before the image's binary frame",
                                     reason="bad_frame")
    try:
        header = json.loads(message["text"], parse_constant=_no_constants)
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (ValueError, RecursionError):  # RecursionError: json.loads on deep nesting
        return {}, None, _UnreadableHeader(400, "the header frame is not a JSON object", reason="bad_frame")
    refusal = None
    if (problem := _seq_problem(header.get("seq"))) is not None:
        header["seq"] = None  # never echoed: the answer must stay readable JSON
        refusal = IngestError(400, problem, reason="bad_frame")
    if header.get("image_b64") is not None:
        try:
            data = base64.b64decode(header.pop("image_b64"), validate=True)
        except (ValueError, TypeError):  # ValueError: binascii.Error, or a non-ASCII str
            return header, None, IngestError(400, "image_b64 is not valid base64", reason="bad_frame")
        return header, data, refusal
    header.pop("image_b64", None)  # null: absent (the image comes as a binary frame)
    frame = await frames.receive()
    if frame["type"] == "websocket.disconnect":
        return None
    if frame.get("bytes") is None:
        frames.held = frame
        return header, None, IngestError(400, "expected the image as a binary frame after the header (a text "
                                              "frame came: it is read as the next scan's header)", reason="bad_frame")
    return header, frame["bytes"], refusal


@router.websocket("/v1/stream", name="stream")
async def stream(websocket: WebSocket) -> None:
    """Stream scans; see the module docstring for the protocol. Role: station."""
    ctx: ServiceContext = websocket.app.state.ctx
    authenticated = await _authenticate(websocket, ctx)
    if authenticated is None:
        return
    # Only authenticated streams hold a slot (an anonymous socket holds none while it has AUTH_TIMEOUT_S
    # to send its key), and one station cannot take every slot.
    station = authenticated[0].name
    if ctx.streams >= ctx.settings.max_streams or ctx.station_streams.get(station, 0) >= ctx.settings.max_streams_per_station:
        await websocket.close(code=1013, reason=f"the lane box has {ctx.settings.max_streams} streams open, at most "
                                                f"{ctx.settings.max_streams_per_station} per station: retry later")
        return
    ctx.streams += 1
    ctx.station_streams[station] = ctx.station_streams.get(station, 0) + 1
    try:
        await _serve_stream(websocket, ctx, authenticated)
    finally:
        ctx.streams -= 1
        ctx.station_streams[station] -= 1
        if not ctx.station_streams[station]:
            del ctx.station_streams[station]


async def _screen_held(ctx: ServiceContext, held: int, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """`_screen_one`, giving the scan's `held` bytes back to the intake budget once it is answered."""
    try:
        return await _screen_one(ctx, *args, **kwargs)
    finally:
        if held and ctx.intake is not None:
            ctx.intake.release(held)


async def _serve_stream(websocket: WebSocket, ctx: ServiceContext, authenticated: tuple[Principal, _KeyCheck]) -> None:
    principal, key_check = authenticated
    await websocket.send_json({"type": "ready", "station": principal.name})
    request_id = websocket.scope.get("state", {}).get("request_id")
    frames = _Frames(websocket)
    # A slot per scan from before its header is read until its answer is sent: at most MAX_IN_FLIGHT scans
    # of this connection are in screening or waiting to be answered, and without a free slot nothing is read.
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    pending: asyncio.Queue[asyncio.Task[dict[str, Any]] | None] = asyncio.Queue()  # bounded by the slots
    sender = asyncio.create_task(_send_in_order(websocket, pending, slots))
    tasks: list[asyncio.Task[dict[str, Any]]] = []
    last_of_bag: dict[str, asyncio.Task[dict[str, Any]]] = {}  # the latest scan of each bag still screening
    after_unreadable_header = False
    close_code, close_reason = 1000, None
    try:
        while not sender.done():
            # Wait for a slot, unless the sender died (client gone).
            room = asyncio.create_task(slots.acquire())
            await asyncio.wait({room, sender}, return_when=asyncio.FIRST_COMPLETED)
            if not room.done():
                room.cancel()
                break
            item = await _next_scan(frames, after_unreadable_header=after_unreadable_header)
            if item is None:
                slots.release()
                break
            header, data, error = item
            after_unreadable_header = isinstance(error, _UnreadableHeader)
            held = 0
            if error is None and data is not None and ctx.intake is not None:
                if ctx.intake.try_reserve(len(data)):
                    held = len(data)
                else:  # the service holds all it can: answered at once, the frame let go
                    data, error = None, IngestError(503, "the lane box holds as many scans as it can take at once; "
                                                         "retry shortly", {"Retry-After": "1"}, reason="intake_full")
            revoked = not await key_check.still_valid()
            if revoked:
                error = IngestError(401, "this station's key no longer authenticates it (the station was disabled "
                                         "or its key rotated): reconnect with a valid station key")
            # Views of one bag are recorded in the order they were sent, so the answer to a later view (the
            # one a station takes as the bag's verdict) fuses the views before it; their model calls still
            # run together.
            bag_id = header.get("bag_id")
            earlier = last_of_bag.get(bag_id) if isinstance(bag_id, str) else None
            task = asyncio.create_task(_screen_held(ctx, held, principal, header, data, error, request_id, after=earlier))
            tasks = [t for t in tasks if not t.done()] + [task]
            last_of_bag = {b: t for b, t in last_of_bag.items() if not t.done()}
            if isinstance(bag_id, str):
                last_of_bag[bag_id] = task
            pending.put_nowait(task)
            if revoked:
                close_code, close_reason = _POLICY_VIOLATION, "station key no longer valid"
                break
    except WebSocketDisconnect:
        pass
    finally:
        # Let the sender answer everything queued (the 401 of a revoked key included), then stop; if the
        # client is gone the sends fail and it stops sooner.
        pending.put_nowait(None)
        await asyncio.gather(sender, return_exceptions=True)
        # Scans already accepted finish (their records are written) even if nobody reads the answers.
        await asyncio.gather(*tasks, return_exceptions=True)
        if websocket.client_state == WebSocketState.CONNECTED:
            try:
                await websocket.close(code=close_code, reason=close_reason)
            except Exception:  # the peer may already be gone
                pass
