"""Request body size limit (HTTP 413), enforced while the body streams in.

A declared `Content-Length` over the limit is refused at the app's first read of the body, before a byte is
read (after routing, so the request metrics name the route it was sent to; a route that answers without
reading the body, e.g. a 401, answers as it would); a chunked body is counted as it arrives and refused as
soon as it passes the limit, so no handler ever buffers more than the limit.
Both refusals are raised from the app's own body read, so they must be HTTPExceptions: FastAPI
turns any other exception from its body parsing into a 400 "error parsing the body", and re-raises only
HTTPExceptions, which the app's handler then answers with this 413.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.metrics import EdgeMetrics


def _too_large_detail(max_body_bytes: int) -> str:
    return f"request body is larger than the limit of {max_body_bytes:,} bytes"


class _BodyTooLarge(HTTPException):
    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(413, detail=_too_large_detail(max_body_bytes), headers={"Connection": "close"})


class BodySizeLimitMiddleware:
    """Pure ASGI middleware: 413 for HTTP request bodies over `max_body_bytes`."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: EdgeMetrics | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        too_large = declared is not None and declared > self.max_body_bytes
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            if too_large:  # refused at the first read, once routed (the metrics name its route), nothing read
                self._count()
                raise _BodyTooLarge(self.max_body_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    self._count()  # here: the app usually answers this itself, and the except below never sees it
                    raise _BodyTooLarge(self.max_body_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:  # raised outside any route's exception handling (counted when raised)
            if started:  # the app answered before reading everything; nothing more to say
                return
            await self._refuse(send)

    def _count(self) -> None:
        if self.metrics is not None:
            self.metrics.rejections.labels(reason="body_too_large").inc()

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": _too_large_detail(self.max_body_bytes)}).encode()
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
