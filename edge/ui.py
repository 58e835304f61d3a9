"""The review UI: plain server-rendered HTML (templates in edge/ui/templates, CSS/JS in edge/ui/static).

Pages: /login; /ui/queue (alarmed bags, unreviewed first, with thumbnails that have the alarmed boxes
drawn server-side); /ui/bags/{scan_id} (every view of that bag, detections, review trail, confirm / clear
with a note); /ui/seizures (confirmed bags, JSON export and TDR links).

Security: supervisors and admins log in with a password; the session token travels only in an HttpOnly,
SameSite=Strict cookie (Secure unless turned off in settings). Every POST from the UI carries the
session's CSRF token in a hidden field and is refused without it; the login form itself is protected by a
double-submit token (a cookie and a field that must match). Pages are sent with a strict
Content-Security-Policy (no inline script), no framing, no referrer. Every value put into a page is
HTML-escaped.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import secrets
from collections import OrderedDict
from pathlib import Path
from string import Template
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from edge.auth import Principal
from edge.context import ServiceContext
from edge.deps import CtxDep, csrf_ok
from edge.schemas import DB_INT_MAX, ScanIdPath, StoredText
from edge.seizures import collect_seizures
from edge.store import ReviewConflictError, ScanRecord
from edge.tdr import alarmed_views

_HERE = Path(__file__).resolve().parent / "ui"
TEMPLATES = _HERE / "templates"
STATIC = _HERE / "static"
LOGIN_CSRF_COOKIE = "xscreen_login_csrf"
QUEUE_LIMIT = 100  # bags on a page of the review queue
NOTE_MAX_CHARS = 2000  # a verdict's note, as the bag page's textarea allows

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(tags=["ui"], include_in_schema=True)


def _template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


def e(value: Any) -> str:
    """HTML-escape any value for text and attribute positions."""
    return html.escape(str(value), quote=True)


def page(title: str, body: str, *, principal: Principal | None = None, csrf: str = "", status_code: int = 200) -> HTMLResponse:
    """A page of the UI's layout, with its security headers (`body`: HTML, escaped by the caller)."""
    nav = ""
    if principal is not None:
        nav = _template("nav.html").substitute(user=e(principal.name), role=e(principal.role), csrf=e(csrf))
    doc = _template("layout.html").substitute(title=e(title), nav=nav, body=body)
    return HTMLResponse(doc, status_code=status_code, headers=_SECURITY_HEADERS)


class UIPageError(Exception):
    """An error of the review UI, answered as an HTML page with a way on (`mount` installs the handler),
    not as the API's JSON: the supervisor is in a browser."""

    def __init__(
        self, status_code: int, title: str, message: str, *, link: tuple[str, str] = ("/ui/queue", "Back to the queue")
    ) -> None:
        super().__init__(message)
        self.status_code, self.title, self.message, self.link = status_code, title, message, link


async def error_page(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, UIPageError)
    href, text = exc.link
    body = f'<p class="error">{e(exc.message)}</p>\n<p><a href="{e(href)}">{e(text)}</a></p>'
    return page(exc.title, body, status_code=exc.status_code)


def invalid_request_page(request: Request, detail: str, *, in_path: bool) -> HTMLResponse:
    """A UI request its route cannot read, as an HTML page with a way on (the app's validation handler calls
    this for UI paths, with its `detail`): a bag id that is no scan id (/ui/bags/abc, `in_path`) is a page
    that does not exist, 404; a bad form field or query parameter is a 422 that names it and leads back to
    the page it came from."""
    if in_path:
        return page("No such page", f'<p class="error">There is no page at {e(request.url.path)}.</p>\n'
                     '<p><a href="/ui/queue">Back to the queue</a></p>', status_code=status.HTTP_404_NOT_FOUND)
    href = _form_page(request)
    body = f'<p class="error">The request could not be read ({e(detail)}).</p>\n<p><a href="{e(href)}">Back</a></p>'
    return page("Invalid request", body, status_code=422)


def is_ui_page(path: str) -> bool:
    """Whether `path` is one of the review UI's HTML pages (its errors are pages too, not the API's JSON)."""
    return (path.startswith("/ui/") and not path.startswith("/ui/static/")) or path == "/login"


def _form_page(request: Request) -> str:
    """The page a UI form was posted from: the bag page for a verdict, else the queue."""
    path = request.url.path
    return path.removesuffix("/review") if path.startswith("/ui/bags/") and path.endswith("/review") else "/ui/queue"


_HTML = {"text/html": {"schema": {"type": "string"}}}
#: What a UI page answers without a usable session (`ui_session`), for /openapi.json.
_PAGE_SESSION: dict[int | str, dict[str, Any]] = {
    303: {"description": "No session: redirected to /login."},
    403: {"description": "The session's user is no supervisor or admin (a page).", "content": _HTML},
}
#: What a UI form answers without a usable session or CSRF token.
_FORM_SESSION: dict[int | str, dict[str, Any]] = {
    401: {"description": "No session (it expired or was ended): nothing recorded (a page).", "content": _HTML},
    403: {"description": "No supervisor or admin, or the form's CSRF token missing or wrong: nothing recorded "
                         "(a page).", "content": _HTML},
}


class UISession:
    """The logged-in UI user and the session's CSRF token."""

    def __init__(self, principal: Principal, csrf: str) -> None:
        self.principal = principal
        self.csrf = csrf


async def ui_session(request: Request, ctx: CtxDep) -> UISession:
    """The session behind the cookie; GET without one → redirect to /login; POST without CSRF → 403."""
    _engine, _store, auth, _batcher = ctx.require()
    token = request.cookies.get(ctx.settings.session_cookie_name)
    found = await run_in_threadpool(auth.session_principal, token) if token else None
    if found is None:
        if request.method in ("GET", "HEAD"):
            raise HTTPException(status.HTTP_303_SEE_OTHER, detail="log in first", headers={"Location": "/login"})
        # A form posted after the session ended (expired, or logged out in another tab): say so in a page,
        # so the supervisor knows the verdict did not count.
        raise UIPageError(status.HTTP_401_UNAUTHORIZED, "Session ended",
                          "Your session has ended (it expired or you logged out), so this was not recorded. "
                          "Log in and try again.", link=("/login", "Log in"))
    principal, csrf = found
    if principal.role not in ("supervisor", "admin"):
        raise UIPageError(status.HTTP_403_FORBIDDEN, "Not allowed", "The review UI is for supervisors and admins.",
                          link=("/login", "Log in as someone else"))
    if request.method not in ("GET", "HEAD") and not await csrf_ok(request, csrf):
        raise UIPageError(status.HTTP_403_FORBIDDEN, "Form expired",
                          "CSRF token missing or wrong (the form is from an earlier session or another site); "
                          "nothing was recorded. Reload the page and try again.", link=(_form_page(request), "Reload"))
    request.state.principal = f"{principal.kind}:{principal.name}"
    return UISession(principal, csrf)


SessionDep = Annotated[UISession, Depends(ui_session)]


# -- login / logout -------------------------------------------------------------------------------------


def _login_page(ctx: ServiceContext, message: str = "", status_code: int = 200) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    body = _template("login.html").substitute(csrf=e(token), message=f'<p class="error">{e(message)}</p>' if message else "")
    response = page("Log in", body, status_code=status_code)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/login",
                        secure=ctx.settings.session_cookie_secure, max_age=3600)
    return response


@router.get("/login", response_class=HTMLResponse, summary="Login page of the review UI")
async def login_form(ctx: CtxDep) -> HTMLResponse:
    return _login_page(ctx)


@router.post("/login", response_class=HTMLResponse, summary="Log in with a password; sets the session cookie",
             responses={303: {"description": "Logged in: go to the queue."},
                        401: {"description": "Wrong name or password (the login page).", "content": _HTML},
                        403: {"description": "The login form expired or its token is missing (the login page).",
                              "content": _HTML},
                        429: {"description": "Too many attempts from this address or for this name (the login page).",
                              "content": _HTML}})
async def login(
    request: Request,
    ctx: CtxDep,
    username: Annotated[str, Form(max_length=128)],
    password: Annotated[str, Form(max_length=1024)],
    csrf_token: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    _engine, _store, auth, _batcher = ctx.require()
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), csrf_token.encode()):
        return _login_page(ctx, "The login form expired; please try again.", status.HTTP_403_FORBIDDEN)
    # The address first: refused there, the made-up name gets no bucket of its own.
    address = request.client.host if request.client is not None else ""
    if (ctx.login_address_limiter.acquire(address) > 0 or ctx.login_limiter.acquire(f"{address}|{username}") > 0
            or ctx.login_name_limiter.acquire(username) > 0):
        return _login_page(ctx, "Too many attempts; wait a minute and try again.", status.HTTP_429_TOO_MANY_REQUESTS)
    logged_in = await run_in_threadpool(lambda: auth.login(username, password, ttl_s=ctx.settings.session_ttl_s))
    if logged_in is None:
        return _login_page(ctx, "Wrong name or password.", status.HTTP_401_UNAUTHORIZED)
    principal, token, _csrf = logged_in
    request.state.principal = f"{principal.kind}:{principal.name}"
    response = RedirectResponse("/ui/queue", status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(ctx.settings.session_cookie_name, token, httponly=True, samesite="strict", path="/",
                        secure=ctx.settings.session_cookie_secure, max_age=ctx.settings.session_ttl_s)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout", summary="End the UI session",
             responses={303: {"description": "Logged out."}, **_FORM_SESSION})
async def logout(request: Request, session: SessionDep, ctx: CtxDep) -> Response:
    _engine, _store, auth, _batcher = ctx.require()
    token = request.cookies.get(ctx.settings.session_cookie_name, "")
    await run_in_threadpool(auth.end_session, token)
    response = RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(ctx.settings.session_cookie_name, path="/")
    return response


@router.get("/", include_in_schema=False)
async def root() -> Response:
    return RedirectResponse("/ui/queue", status_code=status.HTTP_303_SEE_OTHER)


# -- pages ----------------------------------------------------------------------------------------------


def _classes(record: ScanRecord) -> str:
    return ", ".join(e(c) for c in record.alarm_classes) or "—"


def _group_bags(records: list[ScanRecord]) -> "OrderedDict[tuple[str, str], list[ScanRecord]]":
    bags: OrderedDict[tuple[str, str], list[ScanRecord]] = OrderedDict()
    for r in records:
        bags.setdefault((r.station, r.bag_id), []).append(r)
    return bags


def _queue_rows(records: list[ScanRecord], *, empty: str) -> str:
    rows = []
    for (station, bag_id), views in _group_bags(records).items():
        first = views[0]
        thumbs = "".join(
            f'<img class="thumb" alt="view {e(v.view)}" src="/v1/scans/{v.id}/preview.png?max_side=256">' for v in views
        )
        state = e(first.verdict) if first.verdict else '<span class="badge">unreviewed</span>'
        classes = sorted({c for v in views for c in v.alarm_classes})
        rows.append(
            f'<tr class="bag" data-scan-id="{first.id}"><td>{thumbs}</td>'
            f'<td><a href="/ui/bags/{first.id}">{e(bag_id)}</a></td><td>{e(station)} / {e(first.lane)}</td>'
            f'<td>{", ".join(e(c) for c in classes)}</td><td>{e(first.created_at.strftime("%Y-%m-%d %H:%M:%S"))}</td>'
            f'<td>{state}</td></tr>'
        )
    return "\n".join(rows) or f'<tr><td colspan="6">{e(empty)}</td></tr>'


def _queue_pager(before: int | None, *, older: int | None) -> str:
    links = []
    if before is not None:
        links.append('<a href="/ui/queue" rel="first">← newest</a>')
    if older is not None:
        links.append(f'<a href="/ui/queue?before={older}" rel="next">older →</a>')
    return f'<p class="pager">{" ".join(links)}</p>' if links else ""


@router.get("/ui/queue", response_class=HTMLResponse, summary="Queue of flagged bags (unreviewed first)",
            responses=_PAGE_SESSION)
async def queue_page(
    session: SessionDep,
    ctx: CtxDep,
    before: Annotated[int | None, Query(ge=1, le=DB_INT_MAX, description=(
        "Show the bags older than this key (the pager's 'older' link); none: the newest."))] = None,
) -> HTMLResponse:
    _engine, store, _auth, _batcher = ctx.require()
    unreviewed, older, waiting = await asyncio.to_thread(store.queue_bags, limit=QUEUE_LIMIT, before=before)
    reviewed = await asyncio.to_thread(store.list_scans, alarm=True, reviewed=True, limit=50, latest_review_first=True)
    shown = len(_group_bags(unreviewed))
    if not waiting:
        summary = "No flagged bags are waiting for review."
    elif not shown:
        summary = f"{waiting} flagged bag(s) are waiting for review, none older than this page: back to the newest."
    elif before is None and older is None:
        summary = f"{waiting} flagged bag(s) waiting for review."
    else:
        summary = (f"{waiting} flagged bag(s) waiting for review; {shown} {'newest' if before is None else 'older'} "
                   f"ones here{', older ones on the next page' if older is not None else ', the oldest'}.")
    body = _template("queue.html").substitute(unreviewed=_queue_rows(unreviewed, empty="No alarms waiting."),
                                              reviewed=_queue_rows(reviewed, empty="None yet."),
                                              summary=e(summary), pager=_queue_pager(before, older=older))
    return page("Alarm queue", body, principal=session.principal, csrf=session.csrf)


def _detections_table(record: ScanRecord) -> str:
    rows = [
        f'<tr class="{"alarm" if d.get("alarm") else ""}"><td>{e(d["class"])}</td><td>{float(d["score"]):.3f}</td>'
        f'<td>{", ".join(f"{float(v):.0f}" for v in d["box_xyxy"])}</td><td>{"yes" if d.get("alarm") else ""}</td></tr>'
        for d in record.result.get("detections", [])
    ]
    return "\n".join(rows) or '<tr><td colspan="4">No detections.</td></tr>'


def _verdict_targets(views: list[ScanRecord]) -> list[ScanRecord]:
    """The views a bag's verdict goes on: every view that alarmed (all views if none did)."""
    return [v for v in views if v.alarm] or views


def _bag_verdict(views: list[ScanRecord]) -> str:
    """The bag's verdict as the page shows it: that of its verdict targets, whichever view was opened."""
    verdicts = list(dict.fromkeys(v.verdict or "unreviewed" for v in _verdict_targets(views)))
    return verdicts[0] if len(verdicts) == 1 else "mixed: " + " / ".join(verdicts)


async def _bag_views(ctx: ServiceContext, scan_id: int) -> tuple[ScanRecord, list[ScanRecord]]:
    _engine, store, _auth, _batcher = ctx.require()
    record = await asyncio.to_thread(store.get_scan, scan_id)
    if record is None:
        raise UIPageError(status.HTTP_404_NOT_FOUND, "No such bag", f"There is no scan with id {scan_id}.")
    views = await asyncio.to_thread(store.bag_scans, record.station, record.bag_id)
    return record, views or [record]


@router.get("/ui/bags/{scan_id}", response_class=HTMLResponse, summary="A bag: its views, detections, verdicts",
            responses={**_PAGE_SESSION, 404: {"description": "No scan with this id (a page).", "content": _HTML}})
async def bag_page(scan_id: ScanIdPath, session: SessionDep, ctx: CtxDep) -> HTMLResponse:
    _engine, store, _auth, _batcher = ctx.require()
    record, views = await _bag_views(ctx, scan_id)
    parts = []
    seen = []  # each view and its latest review, as this page shows them (the form sends it back)
    for v in views:
        trail = await asyncio.to_thread(store.reviews, v.id)
        seen.append(f"{v.id}:{trail[-1].id if trail else 0}")
        trail_html = "".join(
            f"<li>{e(r.created_at.strftime('%Y-%m-%d %H:%M:%S'))} {e(r.user)}: <b>{e(r.verdict)}</b> {e(r.note)}</li>"
            for r in trail
        ) or "<li>not reviewed</li>"
        parts.append(_template("view.html").substitute(
            id=v.id, view=e(v.view), alarm="ALARM" if v.alarm else "clear", classes=_classes(v),
            detections=_detections_table(v), trail=trail_html, width=v.width, height=v.height,
        ))
    body = _template("bag.html").substitute(
        scan_id=record.id, bag_id=e(record.bag_id), station=e(record.station), lane=e(record.lane),
        verdict=e(_bag_verdict(views)), views="\n".join(parts),
        tdr=f' <a href="/v1/scans/{record.id}/tdr">DICOS TDR of the bag</a>' if alarmed_views(views) else "",
        csrf=e(session.csrf), seen=e(",".join(seen)),
    )
    return page(f"Bag {record.bag_id}", body, principal=session.principal, csrf=session.csrf)


@router.post("/ui/bags/{scan_id}/review", summary="Confirm or clear a bag (CSRF-protected form)",
             responses={303: {"description": "Recorded: back to the queue."}, **_FORM_SESSION,
                        404: {"description": "No scan with this id (a page).", "content": _HTML},
                        409: {"description": "The bag changed since its page was opened (a view came, or another "
                                             "verdict): nothing recorded (a page).", "content": _HTML}})
async def review_bag(
    scan_id: ScanIdPath,
    session: SessionDep,
    ctx: CtxDep,
    verdict: Annotated[str, Form(pattern="^(confirmed|cleared)$")],
    # A browser sends each line break of a textarea as CRLF, two characters where its maxlength counted one:
    # the field takes room for them, and the note is checked (2000) and stored with plain LF.
    note: Annotated[StoredText, Form(max_length=4000)] = "",
    csrf_token: Annotated[str, Form(max_length=128)] = "",  # checked by ui_session; declared for the form schema
    # Ids are 64-bit: at most 19 digits each (a longer number is no id, and one of over 4300 digits is more
    # than int() reads).
    seen: Annotated[str | None, Form(max_length=20_000, pattern=r"^\d{1,19}:\d{1,19}(,\d{1,19}:\d{1,19})*$")] = None,
) -> Response:
    _engine, store, _auth, _batcher = ctx.require()
    note = note.replace("\r\n", "\n")
    if len(note) > NOTE_MAX_CHARS:
        raise UIPageError(422, "Note too long", f"The note has {len(note)} characters; at most {NOTE_MAX_CHARS} are "
                                                "kept. Nothing was recorded: go back, shorten it and send it again.",
                          link=(f"/ui/bags/{scan_id}", "Back to the bag"))
    _record, views = await _bag_views(ctx, scan_id)
    # The verdict is on the bag: it goes on every view that alarmed (on all views if none did), so the
    # bag leaves the queue whichever view was opened; but only as the page showed the bag (`seen`: its views
    # and their latest reviews). A view that came since, or a colleague's verdict recorded since, would be
    # decided unseen: the supervisor is sent back to the bag instead.
    # The same form sent twice (a double click, a re-sent POST, copies reaching two service processes) gives
    # one verdict in the trail: the store checks and writes in one locked transaction (add_bag_review).
    shown = None if seen is None else {int(a): int(b) for a, b in (pair.split(":") for pair in seen.split(","))}
    back = (f"/ui/bags/{scan_id}", "Back to the bag")
    if shown is not None and set(shown) != {v.id for v in views}:
        raise UIPageError(status.HTTP_409_CONFLICT, "The bag has changed",
                          "A view of this bag arrived after the page was opened; nothing was recorded. "
                          "Look at the bag again before deciding.", link=back)
    targets = [v.id for v in _verdict_targets(views)]
    try:
        await asyncio.to_thread(store.add_bag_review, targets, user=session.principal.name, verdict=verdict,  # type: ignore[arg-type]
                                note=note, seen_reviews=shown)
    except ReviewConflictError:
        raise UIPageError(status.HTTP_409_CONFLICT, "The bag was reviewed meanwhile",
                          "Another verdict on this bag was recorded after the page was opened; nothing was recorded. "
                          "Look at the bag again before deciding.", link=back) from None
    return RedirectResponse("/ui/queue", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/ui/seizures", response_class=HTMLResponse, summary="Confirmed bags, with export links",
            responses=_PAGE_SESSION)
async def seizures_page(session: SessionDep, ctx: CtxDep) -> HTMLResponse:
    _engine, store, _auth, _batcher = ctx.require()
    items = await asyncio.to_thread(collect_seizures, store)
    rows = []
    for s in items:
        links = f'<a href="{e(s["tdr_url"])}">TDR</a>' if s["tdr_url"] else ""
        rows.append(
            f'<tr class="seizure"><td><a href="/ui/bags/{s["scan_ids"][0]}">{e(s["bag_id"])}</a></td>'
            f'<td>{e(s["station"])} / {e(s["lane"])}</td><td>{", ".join(e(c) for c in s["classes"])}</td>'
            f'<td>{e(s["confirmed_by"])}</td><td>{e(s["confirmed_at"].strftime("%Y-%m-%d %H:%M:%S"))}</td>'
            f'<td class="note">{e(s["note"])}</td><td>{links}</td></tr>'
        )
    body = _template("seizures.html").substitute(
        rows="\n".join(rows) or '<tr><td colspan="7">No seizures yet.</td></tr>', count=len(items)
    )
    return page("Seizures", body, principal=session.principal, csrf=session.csrf)


def mount(app: FastAPI) -> None:
    """Add the UI routes and static files to `app`."""
    app.include_router(router)
    app.add_exception_handler(UIPageError, error_page)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")

