"""The lane service: `create_app(settings)` builds the FastAPI app; its lifespan makes the heavy objects.

Import this module freely: nothing heavy happens at import or in `create_app`. The lifespan, in order:
1. loads the model package (`inference.engine.Engine`, refusing a package whose metadata or checksum is wrong);
2. opens the store and migrates the schema; builds `Auth` on it;
3. starts the micro-batcher worker(s) and, if a webhook URL is set, the outbox sender;
then marks the service ready (`/readyz` 200). Shutdown stops them in reverse order. Under `xscreen serve`
this runs in the background (`create_app(..., start_in_background=True)`): the port is open while the model
loads, `/healthz` answers 200 and `/readyz` 503, and a failed start ends the process with an error.

    uvicorn --factory edge.app:app_from_env      # settings from XSCREEN_* variables
    xscreen serve --model model.onnx            # the same, from the command line

`xscreen serve` also sets uvicorn's WebSocket options (frame limit from XSCREEN_MAX_BODY_BYTES, no
permessage-deflate: edge/cli.py); with uvicorn's own command line pass `--ws-max-size` and
`--ws-per-message-deflate false` to match.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge.batcher import MicroBatcher
from edge.context import ServiceContext
from edge.intake import IntakeBudget
from edge.ingest import scan_preparer
from edge.limits import BodySizeLimitMiddleware
from edge.logs import configure_logging, log_event
from edge.metrics import EdgeMetrics, RequestMetricsMiddleware
from edge.ratelimit import RateLimiter
from edge.settings import EdgeSettings
from inference.cores import usable_cores

_log = logging.getLogger("xscreen.edge.app")

_DESCRIPTION = """\
The lane service of xscreen: stations send X-ray scans, the service screens them for concealed
contraband with the lane's model package, stores image and result durably, and supervisors review the
alarms in a browser.

Authentication: `Authorization: Bearer <key>` (stations, supervisors, admins), or the review UI's session
cookie (supervisors, admins; unsafe methods also need the CSRF token). Roles: *station* sends scans and
reads its own records; *supervisor* reads scans, images, TDRs and reviews them; *admin* may do all a
supervisor may.
"""

_TAGS = [
    {"name": "scans", "description": "Screening, stored scans, images, reviews and threat reports."},
    {"name": "stream", "description": (
        "`WS /v1/stream` (WebSockets are not listed below). Authenticate with a station key (Bearer header on "
        "the handshake, or a first message `{\"key\": ...}`; answer `{\"type\": \"ready\"}`). Then per scan: "
        "a JSON text frame `{station, lane, bag_id, view, seq?, content_type?}` and one binary frame with the "
        "image file (or the file as base64 in `image_b64`). Answers come in the order sent: `{type: result, "
        "seq, ...}` with the fields of `POST /v1/scans`, or `{type: error, seq, status, detail}`.")},
    {"name": "reviews", "description": "Seizure export."},
    {"name": "operations", "description": "Health, readiness, metrics."},
    {"name": "ui", "description": "The review UI (HTML)."},
]


def _start_engine(settings: EdgeSettings) -> Any:
    from inference.engine import Engine

    return Engine(settings.model_path, threads=settings.model_threads, max_batch=settings.batch_max_size,
                  spin=settings.engine_spin)


def _start_engine_alone(settings: EdgeSettings, engine: Any) -> Any | None:
    """A second session of the same package on every core, for batches that start while no other batch
    runs (`MicroBatcher.run_batch_alone`): at light load a scan gets the whole machine. Only when the
    threads per model call are the service's own choice (cores shared among parallel calls)."""
    from inference.engine import Engine

    cores = usable_cores()
    if settings.engine_threads is not None or settings.model_workers < 2 or cores <= settings.model_threads:
        return None
    alone = Engine(settings.model_path, threads=cores, max_batch=settings.batch_max_size, spin=settings.engine_spin)
    if alone.package.weights_sha256 != engine.package.weights_sha256:  # the file changed between the loads
        raise RuntimeError(f"{settings.model_path} changed while the service was starting; start it again")
    return alone


def _make_tdr_dir(tdr_dir: Any) -> None:
    """The TDR folder, made if missing and checked writable at start: a folder that cannot take reports
    would otherwise only log an error at every alarm."""
    import os

    try:
        tdr_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"the TDR folder {tdr_dir} cannot be made: {exc.strerror or exc}") from None
    if not os.access(tdr_dir, os.W_OK):
        raise ValueError(f"the TDR folder {tdr_dir} cannot be written")


def _open_store(settings: EdgeSettings) -> tuple[Any, Any]:
    from edge.auth import Auth
    from edge.store import Store

    store = Store(settings.db_url, settings.data_dir)
    try:
        store.migrate()
        store.images.make_root()
    except Exception:
        store.close()
        raise
    auth = Auth(store)
    auth.prepare_logins()  # one hash now, so that no login's "no such user" costs one more
    return store, auth


async def _start(ctx: ServiceContext, stack: AsyncExitStack) -> None:
    """Make the heavy objects, pushing their undoing onto `stack` as each is made, then mark the service
    ready. Blocking work runs in threads, so the loop (and /healthz, /readyz) answers meanwhile."""
    settings = ctx.settings
    engine = await asyncio.to_thread(_start_engine, settings)
    engine_alone = await asyncio.to_thread(_start_engine_alone, settings, engine)
    ctx.metrics.set_model(name=engine.package.name, version=engine.package.version,
                          sha256=engine.package.weights_sha256, classes=list(engine.class_names),
                          providers=list(engine.providers))
    if settings.tdr_dir is not None:
        await asyncio.to_thread(_make_tdr_dir, settings.tdr_dir)
    store, auth = await asyncio.to_thread(_open_store, settings)
    stack.push_async_callback(asyncio.to_thread, store.close)
    batcher = MicroBatcher(engine.detect_prepared, max_batch=settings.batch_max_size,
                           max_wait_ms=settings.batch_max_wait_ms, queue_max=settings.queue_max,
                           workers=settings.model_workers, metrics=ctx.metrics,
                           share_from=settings.batch_share_from, share_max=settings.batch_share_max,
                           run_batch_alone=engine_alone.detect_prepared if engine_alone is not None else None,
                           prepare=scan_preparer(engine, max_pixels=settings.max_pixels))
    await batcher.start()
    stack.push_async_callback(batcher.stop)
    ctx.engine, ctx.store, ctx.auth, ctx.batcher = engine, store, auth, batcher
    stack.callback(_clear, ctx)
    if settings.webhook_url:
        from edge.outbox import WebhookSender

        sender = WebhookSender(store, settings.webhook_url, timeout_s=settings.webhook_timeout_s,
                               poll_s=settings.outbox_poll_s, metrics=ctx.metrics)
        ctx.background.append(asyncio.create_task(sender.run(), name="webhook-sender"))
    stack.push_async_callback(_stop_background, ctx)
    ctx.ready = True
    log_event(_log, "service ready", model=engine.package.name, version=engine.package.version,
              providers=list(engine.providers), db=_redacted(settings.db_url))


def start_error_text(exc: BaseException) -> str:
    """A start-up failure in one line: a database driver's own message (not SQLAlchemy's three lines of
    statement, hint and link), else the exception's first line."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _start_in_background(app: FastAPI, stack: AsyncExitStack) -> None:
    """`_start`, its failure logged and kept in `ctx.start_error`, and the server asked to stop
    (`app.state.on_start_failure`, which `xscreen serve` sets)."""
    ctx: ServiceContext = app.state.ctx
    try:
        await _start(ctx, stack)
    except Exception as exc:  # noqa: BLE001 - reported, and the process told to end
        ctx.start_error = exc
        # A refusal the operator can act on (a package, a database, a folder) in one line; anything else
        # with its traceback.
        known = isinstance(exc, (OSError, ValueError, RuntimeError, SQLAlchemyError)) and not isinstance(exc, NotImplementedError)
        _log.error("start-up failed", exc_info=None if known else exc, extra={"fields": {"error": start_error_text(exc)}})
        stop = getattr(app.state, "on_start_failure", None)
        if stop is not None:
            stop()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    ctx: ServiceContext = app.state.ctx
    ctx.decode_slots = asyncio.Semaphore(ctx.settings.decode_workers)
    # The exit stack undoes whatever was started, in reverse order, also when a later step fails.
    async with AsyncExitStack() as stack:
        if not app.state.start_in_background:
            await _start(ctx, stack)  # a failure fails the start-up itself
            try:
                yield
            finally:
                ctx.ready = False
        else:
            # The server listens at once; /healthz answers and /readyz says 503 until the start is done.
            starting = asyncio.create_task(_start_in_background(app, stack), name="start-up")
            try:
                yield
            finally:
                ctx.ready = False
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
    log_event(_log, "service stopped")


def _clear(ctx: ServiceContext) -> None:
    ctx.engine = ctx.store = ctx.auth = ctx.batcher = None


async def _stop_background(ctx: ServiceContext) -> None:
    # Record writes that outlived their requests finish first: each is a scan the store must hold.
    await asyncio.gather(*list(ctx.writes), return_exceptions=True)
    for task in ctx.background:
        task.cancel()
    await asyncio.gather(*ctx.background, return_exceptions=True)
    ctx.background.clear()


def _redacted(db_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(db_url).render_as_string(hide_password=True)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # The UI's "log in first" redirect is an HTTPException with a Location header and a 303 status.
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    from edge import ui

    # One readable sentence first (the station operator's), the structured errors after it.
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}" for e in exc.errors()]
    detail = "; ".join(parts) or "invalid request"
    if ui.is_ui_page(request.url.path):  # a supervisor in a browser: a page, not JSON
        in_path = any(e.get("loc", ("",))[0] == "path" for e in exc.errors())
        return ui.invalid_request_page(request, detail, in_path=in_path)
    return JSONResponse({"detail": detail,
                         "errors": [{k: v for k, v in e.items() if k in ('loc', 'msg', 'type')} for e in exc.errors()]},
                        status_code=422)


#: The body of every JSON 422 (`_validation_error`), as /openapi.json gives it in place of FastAPI's default
#: (whose `detail` is the list of errors): a sentence, then the errors one by one.
_VALIDATION_ERROR_SCHEMA: dict[str, Any] = {
    "title": "ValidationErrorOut",
    "type": "object",
    "required": ["detail", "errors"],
    "properties": {
        "detail": {"type": "string", "description": "Every error in one sentence: `field: problem; ...`."},
        "errors": {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
    },
}


def _describe_request_errors(schema: dict[str, Any]) -> None:
    """Make `schema` (the app's OpenAPI, changed in place) say what the app answers to a request it cannot
    read: a 422 in the shape `_validation_error` writes (an HTML page on the review UI's pages), and a 400
    wherever a body is read (malformed JSON, form data or multipart, as Starlette's parsers refuse it)."""
    from edge import ui

    components = schema.setdefault("components", {}).setdefault("schemas", {})
    if "HTTPValidationError" in components:
        components["HTTPValidationError"] = _VALIDATION_ERROR_SCHEMA
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses and ui.is_ui_page(path):
                responses["422"] = {"description": "A field or parameter that cannot be read (an HTML page naming it).",
                                    "content": {"text/html": {"schema": {"type": "string"}}}}
            if "requestBody" in operation and "400" not in responses:
                responses["400"] = {
                    "description": "A body that cannot be parsed (malformed JSON, form data or multipart).",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
                }


def _openapi_with_request_errors(app: FastAPI) -> Any:
    """`app.openapi`, then `_describe_request_errors` once (FastAPI keeps the result in `app.openapi_schema`)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _describe_request_errors(build())
        assert app.openapi_schema is not None
        return app.openapi_schema

    return openapi


async def _database_error(request: Request, exc: Exception) -> Response:
    """A database that could not take a write: SQLite's busy timeout run out (another process, the admin
    command or an operator's shell held the write lock all along: 503 with Retry-After), or its volume full
    (507). The transaction that failed wrote nothing. Any other database error is an internal one."""
    from edge import ui
    from edge.db import SQLITE_BUSY_TIMEOUT_MS
    from edge.storage_faults import database_full

    cause = str(getattr(exc, "orig", exc))
    if "database is locked" in cause or "database table is locked" in cause:
        status_code, title = 503, "Database busy"
        detail = (f"the database is busy: another process held its write lock for over "
                  f"{SQLITE_BUSY_TIMEOUT_MS / 1000:g} s; the request was not completed; retry later")
    elif database_full(exc):
        status_code, title = 507, "Storage full"
        detail = "the lane box's storage is full (the database cannot grow); the request was not completed"
    else:
        return await _internal_error(request, exc)
    log_event(_log, title.lower(), logging.WARNING, path=request.url.path, error=repr(getattr(exc, "orig", exc)),
              request_id=request.scope.get("state", {}).get("request_id"))
    if ui.is_ui_page(request.url.path):
        return await ui.error_page(request, ui.UIPageError(status_code, title, detail[0].upper() + detail[1:] + "."))
    return JSONResponse({"detail": detail}, status_code=status_code, headers={"Retry-After": "5" if status_code == 503 else "30"})


class _AnswerUnhandledErrors:
    """Pure ASGI middleware (inside the request-metrics one, so the request has its id and the 500 is
    counted): an error no handler took is logged once, with the request's id, and answered 500 here.
    Starlette's outermost error middleware would answer it too, then re-raise it to the server, which logs
    the same traceback again without the id. An error raised after the answer began goes on up."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            response = await _internal_error(Request(scope), exc)
            await response(scope, receive, send)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Runs in Starlette's outermost middleware: log once with the traceback, answer JSON, never the trace.
    request_id = request.scope.get("state", {}).get("request_id")
    _log.error("unhandled error", exc_info=exc, extra={"fields": {"request_id": request_id, "path": request.url.path}})
    return JSONResponse({"detail": f"internal error (request id {request_id})"}, status_code=500)


def create_app(settings: EdgeSettings, *, start_in_background: bool = False) -> FastAPI:
    """The lane service app for `settings` (cheap: the lifespan does the heavy work).

    start_in_background: the lifespan's start-up returns at once and loads the model, the store and the
    batcher in a task, so a server listens meanwhile (`/healthz` 200, `/readyz` and every route 503 until
    ready: `xscreen serve`, for probes); a failure is logged and `app.state.on_start_failure()` called. By
    default the start-up completes (or fails) before the lifespan yields, as tests and embedding want."""
    from edge import routes_ops, routes_scans, routes_stream, seizures, ui

    configure_logging(settings.log_level)
    metrics = EdgeMetrics(batch_max_size=settings.batch_max_size)
    app = FastAPI(
        title="xscreen lane service",
        version="0.1.0",
        description=_DESCRIPTION,
        openapi_tags=_TAGS,
        lifespan=lifespan,
        # The API's description and its pages are served by routes_ops, behind a login like every route.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.start_in_background = start_in_background
    app.state.ctx = ServiceContext(
        settings=settings,
        metrics=metrics,
        limiter=RateLimiter(rate_per_s=settings.rate_limit_per_s, burst=settings.rate_limit_burst),
        read_limiter=RateLimiter(rate_per_s=settings.rate_limit_per_s, burst=settings.rate_limit_burst),
        intake=IntakeBudget(settings.intake_budget_bytes),
    )
    app.include_router(routes_scans.router)
    app.include_router(routes_stream.router)
    app.include_router(seizures.router)
    app.include_router(routes_ops.router)
    ui.mount(app)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(Exception, _internal_error)
    app.openapi = _openapi_with_request_errors(app)  # type: ignore[method-assign]
    # Outermost last: the metrics middleware sees every answer, including the body limit's 413s.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(_AnswerUnhandledErrors)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app


def app_from_env() -> FastAPI:
    """`create_app` with settings from the environment / `.env` (for `uvicorn --factory`)."""
    return create_app(EdgeSettings())  # type: ignore[call-arg]  # model_path comes from XSCREEN_MODEL_PATH
