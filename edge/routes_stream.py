"""`WS /v1/stream`: a station streams scans over one WebSocket and gets the answers in order.

Protocol (all JSON text frames except the image bytes):
1. Authenticate: an `Authorization: Bearer <station key>` header on the handshake, or, without it, a first
   message `{"key": "<station key>"}`. The server answers `{"type": "ready", "station": name}`, or an
   error message and close code 1008 (policy violation).
2. For each scan, a header `{"station", "lane", "bag_id", "view", "seq"?, "content_type"?}` followed by
   exactly one binary frame holding the image file (PNG, JPEG, TIFF or DICOS DX). Instead of the binary
   frame the header may carry the file as base64 in `"image_b64"`. `seq` is echoed back (any JSON value).
3. Each scan is answered, in the order the scans were sent, with `{"type": "result", "seq", ...}` (the
   fields of `POST /v1/scans`'s answer) or `{"type": "error", "seq", "status", "detail"}` (the status an
   HTTP request would have got; 429/503 carry `retry_after_s`).

Up to `MAX_IN_FLIGHT` scans of one connection are screened at once (so they can share a batch); beyond
that the server stops reading until the oldest is answered, which pushes back on the station through
TCP. Dual-energy pairs are sent over HTTP only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from edge.auth import Principal
from edge.context import ServiceContext
from edge.deps import bearer_key
from edge.formats import UnsupportedMediaTypeError, upload_from_bytes
from edge.ingest import IngestError, check_rate, screen, validate_meta
from edge.logs import ACCESS_LOGGER, log_event
from edge.schemas import ScanResultOut

router = APIRouter(tags=["stream"])

#: Scans of one connection screened concurrently before the server stops reading.
MAX_IN_FLIGHT = 8
#: How long a connection may take to send its key message.
AUTH_TIMEOUT_S = 10.0
_POLICY_VIOLATION = 1008
_access_log = logging.getLogger(ACCESS_LOGGER)


async def _authenticate(ws: WebSocket, ctx: ServiceContext) -> Principal | None:
    """The station behind this socket, or None after refusing it (the socket is then closed)."""
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
        principal = await run_in_threadpool(auth.principal_for_key, key)
        if principal is None or principal.role != "station":
            # Refuse the handshake itself (HTTP 403) when the header is wrong.
            await ws.close(code=_POLICY_VIOLATION, reason="invalid key or not a station key")
            return None
        await ws.accept()
    else:
        await ws.accept()
        try:
            message = await asyncio.wait_for(ws.receive_text(), timeout=AUTH_TIMEOUT_S)
            key = json.loads(message).get("key")
        except (TimeoutError, ValueError, AttributeError, KeyError, WebSocketDisconnect):
            key = None
        principal = await run_in_threadpool(auth.principal_for_key, key) if isinstance(key, str) else None
        if principal is None or principal.role != "station":
            await _send_error(ws, None, 401, "authenticate first: send {\"key\": \"<station key>\"} or an "
                                             "Authorization: Bearer header; the key must be a valid station key")
            await ws.close(code=_POLICY_VIOLATION)
            return None
    ws.state.principal = f"{principal.kind}:{principal.name}"
    ws.state.station = principal.name
    await ws.send_json({"type": "ready", "station": principal.name})
    return principal


async def _send_error(ws: WebSocket, seq: Any, status: int, detail: str, retry_after_s: float | None = None) -> None:
    doc: dict[str, Any] = {"type": "error", "seq": seq, "status": status, "detail": detail}
    if retry_after_s is not None:
        doc["retry_after_s"] = retry_after_s
    await ws.send_json(doc)


async def _screen_one(ctx: ServiceContext, principal: Principal, header: dict[str, Any], data: bytes | None,
                      error: IngestError | None, request_id: str | None = None) -> dict[str, Any]:
    """One scan's answer message (never raises for a refusal: it becomes an error message)."""
    started = time.perf_counter()
    seq = header.get("seq")
    status = 200
    try:
        if error is not None:
            raise error
        assert data is not None
        if len(data) > ctx.settings.max_body_bytes:
            raise IngestError(413, f"image is larger than the limit of {ctx.settings.max_body_bytes:,} bytes")
        check_rate(ctx, principal.name)
        try:
            upload = upload_from_bytes(data, header.get("content_type"))
        except UnsupportedMediaTypeError as exc:
            raise IngestError(415, str(exc)) from None
        meta = validate_meta(header, station_name=principal.name)
        result = await screen(ctx, meta, upload, started=started)
        return {"type": "result", "seq": seq, **ScanResultOut.model_validate(result).model_dump(mode="json", by_alias=True)}
    except IngestError as exc:
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


async def _send_in_order(ws: WebSocket, pending: asyncio.Queue[asyncio.Task[dict[str, Any]] | None]) -> None:
    while True:
        task = await pending.get()
        if task is None:
            return
        answer = await task
        await ws.send_json(answer)


async def _next_scan(ws: WebSocket) -> tuple[dict[str, Any], bytes | None, IngestError | None] | None:
    """Read one header (and its binary frame); None when the client closed the socket."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        return None
    if message.get("text") is None:
        return {}, None, IngestError(400, "expected a JSON header text frame before the image's binary frame")
    try:
        header = json.loads(message["text"])
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except ValueError:
        return {}, None, IngestError(400, "the header frame is not a JSON object")
    if "image_b64" in header:
        try:
            return header, base64.b64decode(header.pop("image_b64"), validate=True), None
        except (binascii.Error, TypeError):
            return header, None, IngestError(400, "image_b64 is not valid base64")
    frame = await ws.receive()
    if frame["type"] == "websocket.disconnect":
        return None
    if frame.get("bytes") is None:
        return header, None, IngestError(400, "expected the image as a binary frame after the header")
    return header, frame["bytes"], None


@router.websocket("/v1/stream", name="stream")
async def stream(websocket: WebSocket) -> None:
    """Stream scans; see the module docstring for the protocol. Role: station."""
    ctx: ServiceContext = websocket.app.state.ctx
    principal = await _authenticate(websocket, ctx)
    if principal is None:
        return
    request_id = websocket.scope.get("state", {}).get("request_id")
    pending: asyncio.Queue[asyncio.Task[dict[str, Any]] | None] = asyncio.Queue(maxsize=MAX_IN_FLIGHT)
    sender = asyncio.create_task(_send_in_order(websocket, pending))
    tasks: list[asyncio.Task[dict[str, Any]]] = []
    try:
        while not sender.done():
            item = await _next_scan(websocket)
            if item is None:
                break
            header, data, error = item
            task = asyncio.create_task(_screen_one(ctx, principal, header, data, error, request_id))
            tasks = [t for t in tasks if not t.done()] + [task]
            # Wait for room among the in-flight answers, unless the sender died (client gone).
            put = asyncio.create_task(pending.put(task))
            await asyncio.wait({put, sender}, return_when=asyncio.FIRST_COMPLETED)
            if not put.done():
                put.cancel()
                break
    except WebSocketDisconnect:
        pass
    finally:
        if not sender.done():
            # Let the sender answer everything queued, then stop it; if the client is gone the sends fail.
            try:
                pending.put_nowait(None)
            except asyncio.QueueFull:
                sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        # Scans already accepted finish (their records are written) even if nobody reads the answers.
        await asyncio.gather(*tasks, return_exceptions=True)
        if websocket.client_state == WebSocketState.CONNECTED:
            try:
                await websocket.close()
            except Exception:  # the peer may already be gone
                pass
