"""Operations routes: liveness, readiness, Prometheus metrics, and the API's OpenAPI description and pages
(`/openapi.json`, `/docs`, `/redoc`: for any station or user, not for anyone who reaches the port)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge.deps import AnyRoleDep, CtxDep, ReviewerDep
from edge.schemas import ErrorOut, HealthOut, MeOut, ReadyOut

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    response_model=HealthOut,
    summary="Liveness: the process is up",
    description="Always 200 while the process serves HTTP. No authentication.",
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="Readiness: the model is loaded, the database answers, the batcher runs, storage has room",
    description="200 when ready to screen, else 503 (a load balancer should send no scans). No authentication.",
    responses={503: {"model": ReadyOut, "description": "Not ready."}},
)
async def readyz(ctx: CtxDep) -> Response:
    db_ok, problem = False, "the store is not open"
    if ctx.store is not None:
        store = ctx.store
        db_ok = await asyncio.to_thread(store.ping)
        problem = await asyncio.to_thread(store.storage_problem, min_free_bytes=ctx.settings.min_free_bytes)
    body = {
        "model_loaded": ctx.engine is not None,
        "database": db_ok,
        "batcher": ctx.batcher is not None and ctx.batcher.running,
        "storage": problem is None,
    }
    ready = ctx.ready and all(body.values())
    return JSONResponse({"status": "ready" if ready else "not ready", **body, "storage_problem": problem},
                        status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Request counts and latencies per route, batch sizes, queue depth, alarms per class and lane, "
                "the model package. Role: supervisor, admin (scrape with a Bearer key).",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: {"model": ErrorOut}, 403: {"model": ErrorOut}},
)
async def metrics(principal: ReviewerDep, ctx: CtxDep) -> Response:
    if ctx.batcher is not None:
        ctx.metrics.queue_depth.set(ctx.batcher.depth)
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/me",
    response_model=MeOut,
    summary="Who the caller is",
    description="The authenticated principal's name, role and kind (a station simulator learns its station "
                "name from its key here). Any role.",
    responses={401: {"model": ErrorOut}},
)
async def me(principal: AnyRoleDep) -> dict[str, str]:
    return {"name": principal.name, "role": principal.role, "kind": principal.kind}


@router.get("/openapi.json", include_in_schema=False)
async def openapi_description(principal: AnyRoleDep, request: Request) -> JSONResponse:
    """The OpenAPI description of every route (any role)."""
    return JSONResponse(request.app.openapi())


def _reference_html(schema: dict) -> str:
    """The API's reference as plain HTML, from its OpenAPI description: every operation with its summary,
    description, parameters and answers. No script: nothing loads from another origin (the interactive
    Swagger and ReDoc pages fetch theirs from a CDN, which would run in the origin that holds supervisors'
    sessions, and which an offline lane box cannot reach); `/openapi.json` serves the tools that want one."""
    from html import escape

    sections = []
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            params = ", ".join(f"{p['name']} ({p['in']}{', required' if p.get('required') else ''})"
                               for p in op.get("parameters", []))
            answers = "; ".join(f"{code}: {r.get('description', '')}" for code, r in sorted(op.get("responses", {}).items()))
            sections.append(
                f'<section class="view"><h2><code>{escape(method.upper())} {escape(path)}</code></h2>'
                f"<p><b>{escape(op.get('summary', ''))}</b></p><p>{escape(op.get('description', ''))}</p>"
                f"<p>Parameters: {escape(params) or 'none'}{'; a body' if 'requestBody' in op else ''}.</p>"
                f"<p>Answers: {escape(answers)}</p></section>")
    info = schema.get("info", {})
    return (f'<p>{escape(str(info.get("description", "")))}</p><p>Machine-readable: '
            f'<a href="/openapi.json">/openapi.json</a> (OpenAPI {escape(str(schema.get("openapi", "")))}).</p>'
            + "\n".join(sections))


@router.get("/docs", include_in_schema=False)
@router.get("/redoc", include_in_schema=False)
async def reference_page(principal: AnyRoleDep, request: Request) -> HTMLResponse:
    """The API's reference page (any role; in a browser, after logging in at /login)."""
    from edge.ui import page

    return page(f"{request.app.title}: API {request.app.version}", _reference_html(request.app.openapi()))
