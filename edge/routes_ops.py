"""Operations routes: liveness, readiness, Prometheus metrics, and the API's OpenAPI description and pages
(`/openapi.json`, `/docs`, `/redoc`: for any station or user, not for anyone who reaches the port)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
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


@router.get("/docs", include_in_schema=False)
async def swagger_page(principal: AnyRoleDep, request: Request) -> HTMLResponse:
    """Swagger UI over `/openapi.json` (any role; in a browser, after logging in at /login)."""
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} - API")


@router.get("/redoc", include_in_schema=False)
async def redoc_page(principal: AnyRoleDep, request: Request) -> HTMLResponse:
    """ReDoc over `/openapi.json` (any role)."""
    return get_redoc_html(openapi_url="/openapi.json", title=f"{request.app.title} - API")
