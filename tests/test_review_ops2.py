"""Second review of the lane service's operations side and the station simulator, as operators meet them:
`xscreen serve` configured from the environment, /healthz and /readyz while the model loads, a station
that drops its upload half way, and the simulator's throughput figure, its folder source with a file gone
and with dual-energy pairs. Each test asserts the behaviour users are promised; they fail on the code as
reviewed."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from typer.testing import CliRunner

from edge.station import StationConfig, StationError, folder_source, run_station
from edge_model import tiny_package
from edge_support import free_port, grey16_png, make_settings, png_bytes, served_service, uvicorn_server
from vision.cli import app as cli_app


# -- a stand-in lane service for the simulator ---------------------------------------------------------------


def _recording_service() -> FastAPI:
    """A lane service stand-in: /v1/me names station st1; /v1/scans records each request's form (field name →
    the file part's content type, or the text value) and when it came, and answers a clear scan."""
    app = FastAPI()
    app.state.posts = []

    @app.get("/v1/me")
    async def who() -> Any:
        return {"kind": "station", "name": "st1", "role": "station"}

    @app.post("/v1/scans")
    async def scan(request: Request) -> Any:
        form = await request.form()
        parts = {k: getattr(v, "content_type", v) for k, v in form.multi_items()}
        app.state.posts.append((time.monotonic(), parts))
        return {"id": len(app.state.posts), "alarm": False, "duplicate": False}

    return app


def _cfg(url: str, **overrides: Any) -> StationConfig:
    values: dict[str, Any] = dict(url=url, key="xs_st_test", lanes=1, rate=1000.0, bags=2, live=False, max_retries=0)
    values.update(overrides)
    return StationConfig(**values)


# -- the station simulator ---------------------------------------------------------------------------------


def test_the_simulators_bags_per_second_does_not_exceed_the_rate_it_offers():
    """`xscreen station --rate 2 --bags 3` against a service that answers at once shows "bags/s 2.9": the
    elapsed time runs from the first bag's send, so B bags are divided by B-1 intervals (the live table even
    starts at hundreds of bags/s). A service that keeps up must show about the offered 2 bags/s."""
    app = _recording_service()
    with uvicorn_server(app) as url:
        summary = run_station(_cfg(url, rate=2.0, bags=3),
                              source=lambda k: (png_bytes(k), "image/png", f"bag{k}"))
    assert (summary.sent, summary.errors) == (3, 0), summary.error_samples
    assert summary.as_dict()["bags_per_s"] <= 2.0 * 1.15, summary.as_dict()


def test_a_scan_file_gone_from_the_folder_is_reported_not_a_traceback(tmp_path):
    """A scan deleted (or made unreadable) while `xscreen station --source DIR` runs ends the run with a
    bare FileNotFoundError traceback and no summary; it must count as that bag's error (the run going on) or
    stop the run with a StationError naming the file."""
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(1))
    (folder / "b.png").write_bytes(png_bytes(2))
    source = folder_source(folder)
    (folder / "b.png").unlink()
    app = _recording_service()
    with uvicorn_server(app) as url:
        try:
            summary = run_station(_cfg(url, lanes=2, bags=4), source=source)
        except StationError as exc:
            assert "b.png" in str(exc)
        else:
            assert (summary.sent, summary.errors) == (2, 2), summary.as_dict()
            assert any("b.png" in s for s in summary.error_samples), summary.error_samples


def test_a_folder_of_dual_energy_pairs_is_sent_as_pairs(tmp_path):
    """A folder holding `<stem>_low.png` + `<stem>_high.png` pairs (the layout `xscreen predict` reads as one
    dual-energy scan, and the service takes as form parts `low` and `high`) is sent by `xscreen station
    --source DIR` as two unrelated grey scans in field `image`: a dual-energy lane refuses both halves, an
    RGB lane screens each half as a separate bag. One bag must be one POST with parts `low` and `high`."""
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "bag1_low.png").write_bytes(grey16_png(1))
    (folder / "bag1_high.png").write_bytes(grey16_png(2))
    app = _recording_service()
    with uvicorn_server(app) as url:
        summary = run_station(_cfg(url, source=str(folder), bags=1))
    assert summary.errors == 0, summary.error_samples
    assert len(app.state.posts) == 1
    parts = app.state.posts[0][1]
    assert "image" not in parts and {"low", "high"} <= set(parts), parts


# -- xscreen serve and its settings ------------------------------------------------------------------------


def test_serve_takes_the_model_from_xscreen_model_path(monkeypatch, tmp_path):
    """edge/settings.py documents `XSCREEN_MODEL_PATH=model.onnx ... xscreen serve` (and `.env` may hold it),
    but `xscreen serve` without `--model` stops with "Missing option '--model'": the model package cannot
    come from the environment like every other setting."""
    from edge.logs import configure_logging

    configure_logging()  # bound to this process's stderr, not to the CLI runner's captured one
    started: dict[str, Any] = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.update(app=app, **kw))
    monkeypatch.chdir(tmp_path)
    for name in ("XSCREEN_DB_URL", "XSCREEN_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XSCREEN_MODEL_PATH", str(tiny_package()))
    result = CliRunner().invoke(cli_app, ["serve"])
    assert result.exit_code == 0, result.output
    assert started["app"].state.ctx.settings.model_path == tiny_package()


def test_healthz_and_readyz_answer_while_the_model_loads(tmp_path, monkeypatch):
    """edge/app.py loads the model in a thread "so the loop (and /healthz) stays responsive", and /readyz is
    to say 503 until the engine is loaded; but uvicorn opens its port only after the lifespan's start-up, so
    while a model loads both refuse connections: a liveness probe kills a lane box whose model loads slowly,
    and a load balancer cannot tell "starting" from "down"."""
    import uvicorn

    import edge.app as edge_app

    release = threading.Event()
    real_start = edge_app._start_engine

    def held_start(settings: Any) -> Any:
        release.wait(20.0)
        return real_start(settings)

    monkeypatch.setattr(edge_app, "_start_engine", held_start)
    app = edge_app.create_app(make_settings(tmp_path), start_in_background=True)  # as `xscreen serve` builds it
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    seen: tuple[int, int] | None = None
    try:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline and seen is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code
                seen = (health, ready)
            except httpx.TransportError:
                time.sleep(0.2)
        release.set()
        deadline = time.monotonic() + 20.0
        ready = 503
        while time.monotonic() < deadline and ready != 200:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code
            time.sleep(0.1)
    finally:
        release.set()
        server.should_exit = True
        thread.join(20.0)
    assert seen == (200, 503), f"while the model loads: {seen or 'connection refused'}"
    assert ready == 200, "never ready once the model loaded"


def test_a_start_that_fails_in_the_background_is_reported_and_stops_the_server(tmp_path):
    """With the start-up in the background (`xscreen serve`), a model package that cannot be loaded is
    logged, kept as the start error, and the server is asked to stop (xscreen serve then exits 2)."""
    import edge.app as edge_app

    bad = tmp_path / "not-a-model.onnx"
    bad.write_bytes(b"not an onnx file")
    app = edge_app.create_app(make_settings(tmp_path, model_path=bad), start_in_background=True)
    stopped = threading.Event()
    app.state.on_start_failure = stopped.set
    with uvicorn_server(app) as url:
        assert stopped.wait(20.0), "the server was never asked to stop"
        assert httpx.get(f"{url}/readyz", timeout=2.0).status_code == 503
    assert app.state.ctx.start_error is not None and "not-a-model.onnx" in str(app.state.ctx.start_error)


# -- request metrics and logs ------------------------------------------------------------------------------


def _raw_partial_upload(port: int, key: str, content_type: str, body: bytes) -> None:
    """POST a scan declaring 100 kB, send only `body`, and hang up (a station whose upload was cut off)."""
    head = (f"POST /v1/scans?station=st1&lane=1&bag_id=cut-1&view=top HTTP/1.1\r\nHost: lane\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: {content_type}\r\nContent-Length: 100000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
        s.sendall(head.encode() + body)
        time.sleep(0.3)


@pytest.mark.parametrize("kind", ["raw", "multipart"])
def test_a_station_hanging_up_mid_upload_is_not_a_server_error(tmp_path, caplog, kind):
    """A station whose upload is cut off (its timeout, a network drop) makes the service count a 500 on
    /v1/scans and log "unhandled error" with a traceback (starlette's ClientDisconnect escapes the route):
    alerts on the 5xx rate fire for the stations' own network trouble. The server did nothing wrong: no 5xx
    status, no ERROR log."""
    png = png_bytes(3)
    if kind == "raw":
        content_type, body = "image/png", png[: len(png) // 2]
    else:
        content_type = "multipart/form-data; boundary=XSB"
        body = (b"--XSB\r\nContent-Disposition: form-data; name=\"image\"; filename=\"s.png\"\r\n"
                b"Content-Type: image/png\r\n\r\n" + png[: len(png) // 2])
    with served_service(tmp_path) as svc, caplog.at_level(logging.INFO):
        port = int(svc.url.rsplit(":", 1)[1])
        _raw_partial_upload(port, svc.keys["station"], content_type, body)
        value = svc.ctx.metrics.registry.get_sample_value
        deadline = time.monotonic() + 5.0
        statuses: dict[str, float] = {}
        while time.monotonic() < deadline and not statuses:
            time.sleep(0.1)
            statuses = {s: v for s in ("400", "413", "422", "499", "500")
                        if (v := value("xscreen_http_requests_total",
                                       {"route": "/v1/scans", "method": "POST", "status": s})) is not None}
    assert statuses and "500" not in statuses, statuses
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("xscreen")]
    assert errors == [], errors


# -- body limits -------------------------------------------------------------------------------------------


def test_a_base64_scan_under_the_body_limit_is_screened_over_the_stream(tmp_path, monkeypatch):
    """WS /v1/stream takes a scan as base64 in the header (`image_b64`) and refuses one over
    XSCREEN_MAX_BODY_BYTES with a 413 answer; but `xscreen serve` caps a WebSocket frame at the limit plus
    64 KiB, while base64 is 4/3 of the file: with a 1 MB limit an 842-kB scan is dropped with close code 1009
    (message too big), and every answer still due on that stream is lost. A scan under the limit must be
    screened, in either form."""
    import base64
    import json

    import uvicorn
    from websockets.sync.client import connect

    from edge.logs import configure_logging

    configure_logging()  # bound to this process's stderr, not to the CLI runner's captured one
    started: dict[str, Any] = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.update(app=app, **kw))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XSCREEN_MAX_BODY_BYTES", "1000000")
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tiny_package()), "--db",
                                          f"sqlite:///{tmp_path}/edge.db", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    app = started.pop("app")
    started.pop("log_config", None)
    started.update(host="127.0.0.1", port=free_port(), log_level="warning", lifespan="on")
    server = uvicorn.Server(uvicorn.Config(app, **started))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30.0
        while not app.state.ctx.ready and time.monotonic() < deadline:  # (xscreen serve starts in the background)
            time.sleep(0.05)
        key = app.state.ctx.auth.add_station("st1")
        scan = png_bytes(5, hw=(500, 560))
        assert 800_000 < len(scan) < 1_000_000
        header = {"station": "st1", "lane": "1", "bag_id": "b64-1", "view": "top", "seq": 1,
                  "image_b64": base64.b64encode(scan).decode()}
        with connect(f"ws://127.0.0.1:{started['port']}/v1/stream", additional_headers={"Authorization": f"Bearer {key}"},
                     compression=None, max_size=None, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"
            ws.send(json.dumps(header))
            try:
                answer = json.loads(ws.recv(timeout=10))
            except Exception as exc:  # noqa: BLE001 - the stream closed instead of answering
                answer = {"closed": repr(exc)}
    finally:
        server.should_exit = True
        thread.join(20.0)
    assert answer.get("type") == "result" and answer.get("seq") == 1, answer


def test_xscreen_serve_with_a_broken_model_exits_with_an_error_line(tmp_path):
    """`xscreen serve` opens its port before the model loads; a package that cannot be loaded still ends the
    process, with an error line and a failing exit status (a supervisor restarts or alerts), not a hang."""
    import subprocess
    import sys

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    proc = subprocess.run(
        [sys.executable, "-m", "vision.cli", "serve", "--model", str(bad), "--db", f"sqlite:///{tmp_path}/edge.db",
         "--data-dir", str(tmp_path / "data"), "--host", "127.0.0.1", "--port", str(free_port())],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: the service did not start" in proc.stderr and "broken.onnx" in proc.stderr
