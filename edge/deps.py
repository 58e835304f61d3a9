"""Request dependencies: the service context, authentication and role checks (FastAPI `Annotated` style).

Authentication, in order:
1. `Authorization: Bearer <key>` — stations, supervisors and admins (edge.auth API keys);
2. else the review UI's session cookie. A cookie is sent by the browser on its own, so every unsafe
   request (POST, PUT, PATCH, DELETE) authenticated by cookie must also carry the session's CSRF token,
   in the `X-CSRF-Token` header or the `csrf_token` form field; requests with a Bearer key need none
   (a browser never adds that header by itself).

Roles are checked per route with `require_roles(...)`; a refused role gets 403 naming the roles allowed.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from edge.auth import Principal, Role
from edge.context import ServiceContext
from edge.ratelimit import retry_after_header

CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="xscreen"'}


def get_ctx(conn: HTTPConnection) -> ServiceContext:
    """The service context of the app serving this request."""
    return conn.app.state.ctx


CtxDep = Annotated[ServiceContext, Depends(get_ctx)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers=_BEARER_CHALLENGE)


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header; None without a header; 401 if malformed."""
    if authorization is None:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    return key.strip()


def _remember(conn: HTTPConnection, principal: Principal) -> None:
    # Read back by the access-log middleware (scope["state"]).
    conn.state.principal = f"{principal.kind}:{principal.name}"
    if principal.role == "station":
        conn.state.station = principal.name


async def csrf_ok(request: Request, expected: str) -> bool:
    """True when the request carries `expected` in the X-CSRF-Token header or the csrf_token form field."""
    supplied = request.headers.get(CSRF_HEADER)
    if supplied is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()  # Starlette caches the parsed form for the route's own Form fields
            value = form.get(CSRF_FIELD)
            supplied = value if isinstance(value, str) else None
    return supplied is not None and hmac.compare_digest(supplied.encode(), expected.encode())


async def authenticate(request: Request, ctx: CtxDep) -> Principal:
    """The caller, from a Bearer key or the session cookie (see the module docstring); 401 otherwise."""
    _engine, _store, auth, _batcher = _ready(ctx)
    sent = request.headers.getlist("authorization")
    if len(sent) > 1:  # a proxy reading another of them would name another caller than the one served
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="send one Authorization header, not several")
    key = bearer_key(sent[0] if sent else None)
    if key is not None:
        principal = await run_in_threadpool(auth.principal_for_key, key)
        if principal is None:
            raise _unauthorized("invalid API key (unknown, rotated or disabled)")
        if principal.role == "station" and request.method in _SAFE_METHODS:
            # A station's reads have a rate bucket of their own, as its scans do (spent in the ingest route):
            # a compromised scanner PC cannot walk every id or load the database unhindered, and a station's
            # reads never cost it a scan.
            wait_s = ctx.read_limiter.acquire(principal.name)
            if wait_s > 0:
                ctx.metrics.rejections.labels(reason="rate_limited").inc()
                raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                                    detail=f"station {principal.name!r} is over its rate limit",
                                    headers={"Retry-After": retry_after_header(wait_s)})
        _remember(request, principal)
        return principal
    token = request.cookies.get(ctx.settings.session_cookie_name)
    if not token:
        raise _unauthorized("authentication required: send 'Authorization: Bearer <key>' or log in at /login")
    found = await run_in_threadpool(auth.session_principal, token)
    if found is None:
        raise _unauthorized("the login session has expired or was ended; log in again at /login")
    principal, csrf = found
    if request.method not in _SAFE_METHODS and not await csrf_ok(request, csrf):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="CSRF token missing or wrong; reload the page and retry")
    _remember(request, principal)
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def require_roles(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that admits only principals with one of `roles` (403 otherwise)."""
    allowed = tuple(roles)

    async def check(principal: PrincipalDep) -> Principal:
        if principal.role not in allowed:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"role {principal.role!r} may not use this route; it needs one of {list(allowed)}",
            )
        return principal

    return check


StationDep = Annotated[Principal, Depends(require_roles("station"))]
ReviewerDep = Annotated[Principal, Depends(require_roles("supervisor", "admin"))]
AnyRoleDep = Annotated[Principal, Depends(require_roles("station", "supervisor", "admin"))]
AdminDep = Annotated[Principal, Depends(require_roles("admin"))]


def _ready(ctx: ServiceContext):  # -> tuple[Engine, Store, Auth, MicroBatcher]
    try:
        return ctx.require()
    except RuntimeError:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="the service is starting or stopping",
                            headers={"Retry-After": "5"}) from None
