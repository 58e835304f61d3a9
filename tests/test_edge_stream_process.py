"""`WS /v1/stream` through a real `xscreen serve` process (uvicorn's WebSocket stack, not the in-process test
client): a scan streamed by a client that offers permessage-deflate (as most do) is answered, on a socket
that negotiated no compression; a frame over the body limit closes the stream with 1009 (message too big).
Slow: it starts a service process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from edge_model import tiny_package
from edge_process import add_station, new_server, server_processes
from edge_support import png_bytes

pytestmark = pytest.mark.slow

MAX_BODY_BYTES = 200_000


def _header(bag_id: str, seq: int) -> str:
    return json.dumps({"station": "st1", "lane": "1", "bag_id": bag_id, "view": "top", "seq": seq,
                       "content_type": "image/png"})


def test_stream_through_the_real_server(tmp_path: Path):
    db_url, data_dir, work = f"sqlite:///{tmp_path / 'service.db'}", tmp_path / "data", tmp_path / "work"
    work.mkdir()
    key = add_station("st1", db_url=db_url, data_dir=data_dir, workdir=work)
    server = new_server(tiny_package(), db_url, data_dir, work, env={"XSCREEN_MAX_BODY_BYTES": str(MAX_BODY_BYTES)})
    url = "ws" + server.url.removeprefix("http") + "/v1/stream"
    over = png_bytes(1, hw=(300, 300))  # random pixels do not compress: 270 kB, over the scan limit
    # A frame may hold a scan in base64 (4/3 of its size) and its header: xscreen serve's frame limit.
    frame_limit = -(-MAX_BODY_BYTES * 4 // 3) + 65536
    assert MAX_BODY_BYTES < len(over) < frame_limit
    big = png_bytes(2, hw=(400, 400))  # 480 kB: over the frame limit itself
    assert len(big) > frame_limit

    with server_processes(server):
        with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, compression="deflate") as ws:
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None  # offered, not taken
            assert json.loads(ws.recv(timeout=30)) == {"type": "ready", "station": "st1"}
            ws.send(_header("bag-real-0", 0))
            ws.send(png_bytes(0))
            answer = json.loads(ws.recv(timeout=60))
            assert (answer["type"], answer["seq"], answer["bag_id"], answer["duplicate"]) == ("result", 0, "bag-real-0", False)
            assert isinstance(answer["id"], int)

        with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, compression=None,
                     max_size=None) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "ready"
            ws.send(_header("bag-real-over", 1))
            ws.send(over)  # a scan over the limit: refused, the stream goes on
            answer = json.loads(ws.recv(timeout=30))
            assert (answer["type"], answer["seq"], answer["status"]) == ("error", 1, 413), answer
            ws.send(_header("bag-real-big", 2))
            ws.send(big)  # a frame over the frame limit: the stream is closed
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
