"""`xscreen serve` and `xscreen station`.

Only typer and edge.defaults are imported at load time (see vision/cli.py): FastAPI, uvicorn, ONNX Runtime
and httpx are imported inside the commands, so `xscreen --help` stays fast on any install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edge.defaults import DEFAULT_DATA_DIR, DEFAULT_DB_URL

__all__ = ["register"]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def serve_command(
    model: Annotated[Optional[Path], typer.Option("--model", exists=True, dir_okay=False,
                                                  help="Model package (.onnx) (or XSCREEN_MODEL_PATH).")] = None,
    db: Annotated[Optional[str], typer.Option("--db", help=f"Database URL (default {DEFAULT_DB_URL}, or XSCREEN_DB_URL).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help=f"Image store (default {DEFAULT_DATA_DIR}, or XSCREEN_DATA_DIR).")] = None,
    host: Annotated[Optional[str], typer.Option("--host", help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", min=1, max=65535, help="Port (default 8000).")] = None,
    tdr_dir: Annotated[Optional[Path], typer.Option("--tdr-dir", help="Write a DICOS TDR per alarmed bag here.")] = None,
    webhook_url: Annotated[Optional[str], typer.Option("--webhook-url", help="POST every alarm here.")] = None,
    insecure_cookies: Annotated[bool, typer.Option("--insecure-cookies", help="Session cookies without Secure (plain-HTTP development only).")] = False,
) -> None:
    """Run the lane service (FastAPI + uvicorn). Other settings come from XSCREEN_* variables or .env."""
    import os
    import signal
    import socket

    import uvicorn
    from pydantic import ValidationError

    from edge.app import create_app
    from edge.logs import configure_logging, uvicorn_log_config
    from edge.settings import EdgeSettings, unknown_environment_settings

    overrides = {"model_path": model, "db_url": db, "data_dir": data_dir, "host": host, "port": port,
                 "tdr_dir": tdr_dir, "webhook_url": webhook_url}
    if insecure_cookies:
        overrides["session_cookie_secure"] = False
    try:
        settings = EdgeSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        # Each error without its input value: a database or webhook URL may carry a password or a token.
        errors = [f"  {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
                  + (" (give --model, or set XSCREEN_MODEL_PATH)" if e["loc"] == ("model_path",) else "")
                  for e in exc.errors()]
        raise _fail("invalid settings:\n" + "\n".join(errors)) from None
    except ValueError as exc:  # the .env file's own refusal (a misspelt XSCREEN_* key), raised before validation
        raise _fail(f"invalid settings: {exc}") from None
    unknown = unknown_environment_settings(dict(os.environ))
    if unknown:
        raise _fail(f"the environment holds XSCREEN_* variables that are no setting: {unknown} (misspelt?); "
                    "see xscreen serve --help and the XSCREEN_* settings in edge/settings.py")
    try:  # a host name that does not resolve, named here rather than in a bind error of the server's
        socket.getaddrinfo(settings.host, settings.port)
    except OSError as exc:
        raise _fail(f"cannot serve on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    if not settings.model_path.is_file():  # (from the environment or .env: --model's own check did not run)
        raise _fail(f"model package {settings.model_path} is not a file")
    configure_logging(settings.log_level)
    # The port opens at once, and /healthz and /readyz answer while the model loads (probes tell a lane that
    # is starting from one that is down); a failed start stops the server as Ctrl-C does, then exits 2.
    app = create_app(settings, start_in_background=True)
    # (SIGINT, as Ctrl-C: uvicorn re-raises the signal that stopped it once it is down, and a KeyboardInterrupt
    # can be caught here, a SIGTERM's default action could not.)
    app.state.on_start_failure = lambda: signal.raise_signal(signal.SIGINT)
    # uvicorn's own access log is off: the service writes one structured line per request itself.
    # WS /v1/stream refuses permessage-deflate, which clients offer by default: scans come compressed
    # already (a 556-kB PNG deflates by 5 %), and inflating each frame would cost the lane's cores about
    # 1.7 ms a scan (docs/lane_bench.md).
    # A stream frame holds a scan's bytes, or its header with the scan in base64 (4/3 of its size), and the
    # header's fields: the scan limit itself is the stream handler's (413 for that scan, the stream going on).
    ws_max_size = -(-settings.max_body_bytes * 4 // 3) + 65536
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, access_log=False,
                    log_config=uvicorn_log_config(settings.log_level), ws_max_size=ws_max_size,
                    ws_per_message_deflate=False, timeout_graceful_shutdown=10,
                    # A stream's frames wait in the server's queue while the service takes no more of that
                    # stream's scans (MAX_IN_FLIGHT): two at most, so that memory is bounded by the settings.
                    ws_max_queue=2, limit_concurrency=settings.max_connections)
    except KeyboardInterrupt:
        if app.state.ctx.start_error is None:
            raise
    if app.state.ctx.start_error is not None:
        from edge.app import start_error_text

        raise _fail(f"the service did not start: {start_error_text(app.state.ctx.start_error)}")


def station_command(
    url: Annotated[str, typer.Option("--url", help="Lane service base URL, e.g. http://127.0.0.1:8000.")],
    key: Annotated[str, typer.Option("--key", envvar="XSCREEN_STATION_KEY", help="Station API key (or XSCREEN_STATION_KEY).")],
    lanes: Annotated[int, typer.Option("--lanes", min=1, max=64, help="Lanes sending concurrently.")] = 2,
    rate: Annotated[float, typer.Option("--rate", min=0.001, help="Bags per second over all lanes.")] = 2.0,
    source: Annotated[str, typer.Option("--source", help="'synth' (physics synthesiser) or a folder of scans.")] = "synth",
    bags: Annotated[int, typer.Option("--bags", min=0, help="Stop after this many bags.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Synthetic bag seed.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the final summary as JSON (no live table).")] = False,
    stream: Annotated[bool, typer.Option("--stream", help="Send over WS /v1/stream, a WebSocket per lane, instead of POST /v1/scans.")] = False,
) -> None:
    """Simulate a station: stream bags to a lane service and show sent, alarms, latency p50/p95, errors."""
    import json

    from edge.station import StationConfig, StationError, StationSummary, run_station

    if source != "synth" and not Path(source).is_dir():
        raise _fail(f"--source must be 'synth' or a folder; {source!r} is neither")
    cfg = StationConfig(url=url.rstrip("/"), key=key, lanes=lanes, rate=rate, source=source, bags=bags, seed=seed,
                        live=not json_out, stream=stream)
    summary = StationSummary()
    interrupted = False
    try:
        run_station(cfg, summary=summary)
    except StationError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:  # Ctrl-C: every lane has stopped; the figures so far, then 130 as a shell expects
        interrupted = True
    if json_out:
        typer.echo(json.dumps({**summary.as_dict(), **({"interrupted": True} if interrupted else {})}))
    for sample in summary.error_samples:
        typer.echo(f"error sample: {sample}", err=True)
    if not interrupted and (note := summary.shortfall(rate)) is not None:
        typer.echo(f"note: {note}", err=True)
    if interrupted:
        typer.echo("stopped (Ctrl-C)", err=True)
        raise typer.Exit(code=130)
    if summary.errors:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add `serve` and `station` to the root `xscreen` app (`admin` comes from edge.admin_cli)."""
    app.command("serve")(serve_command)
    app.command("station")(station_command)
