"""The load generator's ways of sending a scan to the lane service (bench/service_load.py --client): plain
HTTP/1.1 through h11 on asyncio streams (the lightest on a 2-core box, where the stations share the cores
with the service), an httpx.AsyncClient, or one WebSocket per station over `WS /v1/stream`. Each has
`post_scan(fields, data, *, key, media_type, multipart) -> (status, body)`, `errors` (what a failed request
raises) and `aclose()`."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import h11

REQUEST_TIMEOUT_S = 30.0
#: The h11 client reuses a keep-alive connection only if it idled less than this (uvicorn closes idle ones
#: after 5 s; a request sent on a connection the service is closing fails).
KEEPALIVE_REUSE_S = 2.0


class _HttpxClient:
    """Stations' requests through one `httpx.AsyncClient` (connection pool of `max_connections`)."""

    def __init__(self, url: str, *, max_connections: int) -> None:
        import httpx

        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.client = httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits)
        self.errors: tuple[type[BaseException], ...] = (httpx.HTTPError,)

    async def post_scan(self, fields: dict[str, str], data: bytes, *, key: str, media_type: str,
                        multipart: bool) -> tuple[int, bytes]:
        if multipart:
            r = await self.client.post("/v1/scans", files={"image": ("scan", data, media_type)}, data=fields,
                                       headers={"Authorization": f"Bearer {key}"})
        else:  # the raw-body form of the API: the image is the body, the fields are query parameters
            r = await self.client.post("/v1/scans", content=data, params=fields,
                                       headers={"Authorization": f"Bearer {key}", "Content-Type": media_type})
        return r.status_code, r.content

    async def aclose(self) -> None:
        await self.client.aclose()


class _H11Client:
    """Stations' requests as plain HTTP/1.1 over asyncio streams, framed by h11 (the sans-I/O protocol
    library under httpx and uvicorn): a lighter load generator, which on a 2-core box leaves more of the
    CPU, and of each request's latency, to the service under test. Raw bodies only (no multipart).
    Keep-alive connections are reused (the latest first, none idle for KEEPALIVE_REUSE_S or more); one that
    ends a cycle unclean is closed."""

    def __init__(self, url: str, *, max_connections: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, object, float]] = []
        self.slots = asyncio.Semaphore(max_connections)
        self.errors: tuple[type[BaseException], ...] = (OSError, TimeoutError, h11.ProtocolError)

    async def post_scan(self, fields: dict[str, str], data: bytes, *, key: str, media_type: str,
                        multipart: bool) -> tuple[int, bytes]:
        if multipart:
            raise ValueError("the h11 client sends raw bodies only: use --client httpx with --multipart")
        async with self.slots:
            return await asyncio.wait_for(self._post(fields, data, key=key, media_type=media_type), REQUEST_TIMEOUT_S)

    async def _post(self, fields: dict[str, str], data: bytes, *, key: str, media_type: str) -> tuple[int, bytes]:
        while self.idle:  # the most recently used first; the service closes what idled past its keep-alive
            reader, writer, conn, idle_since = self.idle.pop()
            if not reader.at_eof() and time.monotonic() - idle_since < KEEPALIVE_REUSE_S:
                break
            writer.close()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            conn = h11.Connection(h11.CLIENT)
        try:
            headers = [("Host", f"{self.host}:{self.port}"), ("Authorization", f"Bearer {key}"),
                       ("Content-Type", media_type), ("Content-Length", str(len(data)))]
            request = h11.Request(method="POST", target=f"/v1/scans?{urlencode(fields)}", headers=headers)
            writer.write(conn.send(request) + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
            await writer.drain()
            status, body = 0, []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionError("the service closed the connection before answering")
        except BaseException:
            writer.close()
            raise
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.idle.append((reader, writer, conn, time.monotonic()))
        else:
            writer.close()
        return status, b"".join(body)

    async def aclose(self) -> None:
        for _reader, writer, _conn, _since in self.idle:
            writer.close()
        self.idle.clear()


@dataclass
class _Stream:
    """One station's open WebSocket: answers still awaited (by seq), the lock that keeps a header and its
    image together on the socket, and the task that reads the answers."""

    ws: Any
    pending: dict[int, asyncio.Future]
    sending: asyncio.Lock
    reader: asyncio.Task


class _StreamClient:
    """Stations streaming over `WS /v1/stream` (edge/routes_stream.py): one WebSocket per station, opened with
    its key on the handshake (`edge.station.open_stream`, as the station simulator opens it), a JSON header
    and a binary frame per scan, answers matched to scans by `seq`. Raw images only (no multipart).
    A stream that broke is replaced on its station's next scan."""

    def __init__(self, url: str, *, max_connections: int) -> None:
        from websockets.exceptions import WebSocketException

        self.url = url
        self.streams: dict[str, _Stream] = {}
        self.opening: dict[str, asyncio.Lock] = {}
        self.seq = 0
        self.errors: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError, WebSocketException)

    async def _stream(self, key: str) -> _Stream:
        from edge.station import open_stream

        async with self.opening.setdefault(key, asyncio.Lock()):
            if key in self.streams and self.streams[key].reader.done():
                await self.streams.pop(key).ws.close()
            if key not in self.streams:
                ws = await open_stream(self.url, key, timeout_s=REQUEST_TIMEOUT_S)
                pending: dict[int, asyncio.Future] = {}
                self.streams[key] = _Stream(ws, pending, asyncio.Lock(), asyncio.create_task(self._read(ws, pending)))
            return self.streams[key]

    @staticmethod
    async def _read(ws: Any, pending: dict[int, asyncio.Future]) -> None:
        try:
            async for message in ws:
                future = pending.pop(json.loads(message).get("seq"), None)
                if future is not None and not future.done():
                    future.set_result(message)
        except Exception:  # noqa: BLE001 - a broken stream fails its pending scans below
            pass
        finally:
            for future in pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the stream closed before answering"))
            pending.clear()

    async def post_scan(self, fields: dict[str, str], data: bytes, *, key: str, media_type: str,
                        multipart: bool) -> tuple[int, bytes]:
        if multipart:
            raise ValueError("the stream client sends raw images only: use --client httpx with --multipart")
        stream = await self._stream(key)
        self.seq += 1
        seq = self.seq
        answer = asyncio.get_running_loop().create_future()
        stream.pending[seq] = answer
        try:
            async with stream.sending:  # a header and its image go out back to back on the socket
                await stream.ws.send(json.dumps({**fields, "seq": seq, "content_type": media_type}))
                await stream.ws.send(data)
            message = await asyncio.wait_for(answer, REQUEST_TIMEOUT_S)
        finally:
            stream.pending.pop(seq, None)
        doc = json.loads(message)
        return (200 if doc.get("type") == "result" else int(doc.get("status", 0))), message.encode()

    async def aclose(self) -> None:
        for stream in self.streams.values():
            await stream.ws.close()
            await asyncio.gather(stream.reader, return_exceptions=True)
        self.streams.clear()


#: --client: how the stations talk to the service.
CLIENTS = {"h11": _H11Client, "httpx": _HttpxClient, "ws": _StreamClient}
