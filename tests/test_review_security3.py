"""Security review, third pass: an outsider on the lane network, a compromised station PC and a supervisor's
browser, against what tests/test_edge_security.py, test_review_security2.py, test_auth.py and test_api_fuzz.py
do not cover: stream slots, login lockout, session and CSRF binding, response headers of images and the API
pages, rate limits on read routes, and decoder bombs that are not about pixel counts.

Tests whose docstring starts with "FAULT" fail on the code they were written against; the others pin
behaviour that held (each asserts something that could break)."""

from __future__ import annotations

import json
import logging
import statistics
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from edge import routes_stream
from edge.ratelimit import RateLimiter
from edge_support import (ADMIN_PASSWORD, SUPERVISOR_PASSWORD, _chunk, hidden_csrf, png_bytes, post_png,
                          running_service, scan_fields)
from vision.decode import DecodeError, decode

REPO = Path(__file__).resolve().parents[1]
LANE_BUDGET = 32_000_000
# Cheap enough for many logins, still argon2id: the timing test compares like with like (see the fixture).
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=4096, parallelism=1)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with running_service(tmp_path_factory.mktemp("edge-sec3"), max_streams=2) as svc:
        auth = svc.ctx.auth
        auth._hasher = FAST_HASHER
        auth._dummy_hash_value = None
        auth.prepare_logins()  # the unknown-name hash with the same parameters as the users' hashes below
        auth.set_password("sup", SUPERVISOR_PASSWORD)
        auth.set_password("adm", ADMIN_PASSWORD)
        body = post_png(svc, png_bytes(1), "bag-sec3").json()
        assert body["alarm"], "the fixture needs an alarmed scan"
        svc.scan_id = body["id"]  # type: ignore[attr-defined]
        yield svc


def _browser(service, address: str = "testclient") -> TestClient:
    """A separate browser (its own cookie jar) at `address`."""
    return TestClient(service.app, client=(address, 50000))


def _session_cookie(response) -> str | None:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith("xscreen_session="):
            return header.split(";", 1)[0].split("=", 1)[1].strip('"')
    return None


# -- stream slots -------------------------------------------------------------------------------------------


def test_unauthenticated_websockets_cannot_use_up_the_stations_stream_slots(service):
    """Fixed (this failed on the code as reviewed; availability, medium-high). Anyone who reaches the port opens XSCREEN_MAX_STREAMS WebSockets to
    /v1/stream and sends nothing: each holds a stream slot for AUTH_TIMEOUT_S (10 s) before it has shown a
    key, and reconnecting keeps them held, so every real station's stream is refused with 1013 "the lane box
    has N streams open" — with no key at all. (A single compromised station can do the same with its valid
    key: there is no per-station cap.) Cause: `stream()` in edge/routes_stream.py counts `ctx.streams` before
    `_authenticate`. Correct: only authenticated streams hold slots (a handshake with a valid Bearer key is
    never refused for sockets still waiting for their key message), or pre-auth sockets get a separate, small,
    short-lived allowance, and each station has its own cap."""
    client = service.client
    with client.websocket_connect("/v1/stream"), client.websocket_connect("/v1/stream"):
        try:
            with client.websocket_connect("/v1/stream", headers=service.auth("station")) as ws:
                hello = ws.receive_json()
        except WebSocketDisconnect as exc:
            pytest.fail(f"a station with a valid key was refused ({exc.code}: {exc.reason}) while two sockets "
                        "that never sent a key held every stream slot")
    assert hello == {"type": "ready", "station": "st1"}


def test_a_socket_that_never_sends_its_key_is_closed_after_the_auth_timeout(service, monkeypatch):
    monkeypatch.setattr(routes_stream, "AUTH_TIMEOUT_S", 0.3)
    started = time.monotonic()
    with service.client.websocket_connect("/v1/stream") as ws:
        answer = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert answer["status"] == 401 and closed.value.code == 1008
    assert time.monotonic() - started < 5
    assert service.ctx.streams == 0


def test_stream_keys_with_a_trailing_newline_or_of_a_user_are_refused(service):
    for key in (service.keys["station"] + "\n", " " + service.keys["station"], service.keys["supervisor"]):
        with service.client.websocket_connect("/v1/stream") as ws:
            ws.send_text(json.dumps({"key": key}))
            answer = ws.receive_json()
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
        assert answer["type"] == "error" and answer["status"] == 401 and closed.value.code == 1008, key


# -- a station against another station ----------------------------------------------------------------------


def test_a_resend_with_another_stations_bag_id_and_image_reveals_nothing_of_it(service):
    """st2 re-sends st1's exact image under st1's bag id (learned, say, from a label): it gets a new record of
    its own (no duplicate answer, no st1 view in the bag, a different id), and cannot name st1 as station."""
    original = service.client.get(f"/v1/scans/{service.scan_id}", headers=service.auth("supervisor")).json()
    r = post_png(service, png_bytes(1), original["bag_id"], who="station2", station="st2")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["duplicate"] is False and body["bag_views"] == 1 and body["id"] != service.scan_id
    assert body["station"] == "st2"
    bag = service.client.get(f"/v1/scans/{body['id']}/bag", headers=service.auth("station2")).json()
    assert [v["id"] for v in bag["views"]] == [body["id"]]
    r = post_png(service, png_bytes(1), original["bag_id"], who="station2", station="st1")
    assert r.status_code == 403
    with service.client.websocket_connect("/v1/stream", headers=service.auth("station2")) as ws:
        assert ws.receive_json()["station"] == "st2"
        ws.send_text(json.dumps({**scan_fields(original["bag_id"], station="st1"), "seq": 7}))
        ws.send_bytes(png_bytes(1))
        answer = ws.receive_json()
    assert answer["status"] == 403 and answer["seq"] == 7 and "id" not in answer


def test_station_read_routes_are_rate_limited_too(service):
    """Fixed (this failed on the code as reviewed; resource abuse / enumeration, low-medium). The issue asks for a request rate limit per station,
    but only scans (POST /v1/scans, stream scans) spend the station's bucket (`check_rate` in edge/ingest.py).
    A compromised station PC can call GET /v1/scans/{id}, /v1/scans/{id}/bag, /v1/me or /openapi.json as fast
    as it likes (each a database transaction in the thread pool), e.g. walking every scan id: here 30 bag
    look-ups right after its whole burst was spent all answer. Correct: every authenticated request of a
    station spends from its bucket (or a read bucket of its own), and over it gets 429 with Retry-After."""
    saved = service.ctx.read_limiter  # (a station's reads have a bucket of their own beside its scans')
    service.ctx.read_limiter = RateLimiter(rate_per_s=0.1, burst=5)
    try:
        statuses = [service.client.get(f"/v1/scans/{i}/bag", headers=service.auth("station2")).status_code
                    for i in range(1, 31)]
    finally:
        service.ctx.read_limiter = saved
    assert 429 in statuses, f"30 reads by one station with a burst of 5 were all answered: {sorted(set(statuses))}"


# -- login, sessions, CSRF ------------------------------------------------------------------------------------


def _login_as(client: TestClient, name: str, password: str):
    page = client.get("/login")
    return client.post("/login", data={"username": name, "password": password, "csrf_token": hidden_csrf(page.text)},
                       follow_redirects=False)


def test_an_outsider_cannot_lock_a_supervisor_out_by_guessing_their_name(service):
    """Fixed (this failed on the code as reviewed; availability, medium). The per-name login bucket (10 attempts, then one per 5 s) is spent by
    anyone's attempts with that name, from any address, and it is checked before the password: an outsider
    who knows a supervisor's user name sends ten wrong passwords, then one every five seconds (well inside
    the per-address allowance of one a second, so one address locks out five users), and the supervisor's
    own login with the right password gets 429 "Too many attempts" for as long as the outsider cares to.
    Cause: `login` in edge/ui.py, `ctx.login_limiter.acquire(username)`. Correct: guessing is bounded without
    handing outsiders a lockout — e.g. the name bucket keyed by (name, address) plus a much larger global
    per-name budget, or failures counted only (and a success from another address not blocked)."""
    saved = service.ctx.login_limiter, service.ctx.login_address_limiter
    service.ctx.login_limiter = RateLimiter(rate_per_s=0.2, burst=10)
    service.ctx.login_address_limiter = RateLimiter(rate_per_s=1.0, burst=60)
    try:
        outsider = _browser(service, "203.0.113.66")
        guesses = [_login_as(outsider, "sup", f"guess-number-{i}").status_code for i in range(10)]
        assert guesses == [401] * 10
        supervisor = _browser(service, "192.0.2.10")
        r = _login_as(supervisor, "sup", SUPERVISOR_PASSWORD)
    finally:
        service.ctx.login_limiter, service.ctx.login_address_limiter = saved
    assert r.status_code == 303, (f"the supervisor's correct password from their own desk got {r.status_code} "
                                  "after an outsider's ten guesses at their name")


def test_unknown_name_and_wrong_password_take_the_same_time(service):
    """Medians over 20 tries each (argon2id with the same parameters for the users and the unknown-name
    hash): a prober cannot tell a real user name from a made-up one."""
    saved = service.ctx.login_limiter, service.ctx.login_address_limiter
    service.ctx.login_limiter = RateLimiter(rate_per_s=1000, burst=10_000)
    service.ctx.login_address_limiter = RateLimiter(rate_per_s=1000, burst=10_000)
    client = _browser(service, "198.51.100.7")
    token = [hidden_csrf(client.get("/login").text)]

    def attempt(name: str) -> float:
        started = time.perf_counter()
        r = client.post("/login", data={"username": name, "password": "not-the-password", "csrf_token": token[0]},
                        follow_redirects=False)
        elapsed = time.perf_counter() - started
        assert r.status_code == 401, r.status_code
        token[0] = hidden_csrf(r.text)  # each answer brings a new login form token
        return elapsed

    try:
        for _ in range(3):
            attempt("sup"), attempt("nobody-here")
        known, unknown = [], []
        for i in range(20):
            known.append(attempt("sup"))
            unknown.append(attempt(f"nobody-{i}"))
    finally:
        service.ctx.login_limiter, service.ctx.login_address_limiter = saved
    k, u = statistics.median(known), statistics.median(unknown)
    assert abs(k - u) < max(0.004, 0.25 * min(k, u)), f"wrong password {k * 1000:.1f} ms, unknown name {u * 1000:.1f} ms"


def test_login_issues_a_fresh_session_token_whatever_cookie_the_browser_brought(service):
    """Session fixation: a planted cookie (made up, or the attacker's own live session) is never adopted."""
    attacker = _browser(service)
    planted = _session_cookie(_login_as(attacker, "sup", SUPERVISOR_PASSWORD))
    assert planted
    for cookie in ("attacker-chosen-token", planted):
        victim = TestClient(service.app, cookies={"xscreen_session": cookie})
        r = _login_as(victim, "adm", ADMIN_PASSWORD)
        issued = _session_cookie(r)
        assert r.status_code == 303 and issued and issued != cookie
    # The attacker's own session still names the attacker, not the victim who logged in over it.
    assert attacker.get("/v1/me").json()["name"] == "sup"


def test_csrf_tokens_are_bound_to_their_session_and_logout_ends_only_that_session(service):
    a, b = _browser(service), _browser(service)
    assert _login_as(a, "sup", SUPERVISOR_PASSWORD).status_code == 303
    assert _login_as(b, "sup", SUPERVISOR_PASSWORD).status_code == 303
    token_a = hidden_csrf(a.get("/ui/queue").text)
    token_b = hidden_csrf(b.get("/ui/queue").text)
    assert token_a != token_b
    # A's token with B's cookie: refused on the verdict form, the cookie API and logout.
    r = b.post(f"/ui/bags/{service.scan_id}/review", data={"verdict": "cleared", "csrf_token": token_a},
               follow_redirects=False)
    assert r.status_code == 403
    r = b.post(f"/v1/scans/{service.scan_id}/reviews", json={"verdict": "cleared"}, headers={"X-CSRF-Token": token_a})
    assert r.status_code == 403
    assert b.post("/logout", data={"csrf_token": token_a}, follow_redirects=False).status_code == 403
    assert b.get("/ui/queue", follow_redirects=False).status_code == 200
    # Logging out A leaves B's session alone (it is another login of the same user).
    assert a.post("/logout", data={"csrf_token": token_a}, follow_redirects=False).status_code == 303
    assert a.get("/ui/queue", follow_redirects=False).status_code == 303
    assert b.get("/ui/queue", follow_redirects=False).status_code == 200
    # A password reset ends every session of the user.
    service.ctx.auth.set_password("sup", SUPERVISOR_PASSWORD)
    assert b.get("/ui/queue", follow_redirects=False).status_code == 303
    assert service.ctx.store.reviews(service.scan_id) == []


def test_login_form_token_must_match_this_browsers_login_cookie(service):
    """Login CSRF: a token taken from another browser's login page (the attacker's) is refused."""
    attacker, victim = _browser(service), _browser(service)
    stolen = hidden_csrf(attacker.get("/login").text)
    victim.get("/login")  # the victim has a login cookie of its own
    r = victim.post("/login", data={"username": "sup", "password": SUPERVISOR_PASSWORD, "csrf_token": stolen},
                    follow_redirects=False)
    assert r.status_code == 403 and _session_cookie(r) is None
    fresh = _browser(service)  # no login cookie at all (a cross-site form post)
    r = fresh.post("/login", data={"username": "sup", "password": SUPERVISOR_PASSWORD, "csrf_token": stolen},
                   follow_redirects=False)
    assert r.status_code == 403 and _session_cookie(r) is None


def test_redirects_stay_on_the_service_whatever_the_host_or_next_parameter(service):
    client = _browser(service)
    page = client.get("/login")
    r = client.post("/login?next=https://evil.example/&redirect=//evil.example",
                    data={"username": "sup", "password": SUPERVISOR_PASSWORD, "csrf_token": hidden_csrf(page.text)},
                    headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/queue"
    for path in ("/", "/ui/queue"):
        r = _browser(service).get(path, headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
                                  follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/") and "evil" not in r.headers["location"]


# -- keys ---------------------------------------------------------------------------------------------------


def test_bearer_parsing_edge_cases(service):
    key = service.keys["station"]
    accepted = [f"bearer {key}", f"BEARER {key}", f"Bearer   {key}", f"  Bearer {key}  "]
    refused = [f"Bearer {key} extra", f"Bearer\t{key}", f"Token {key}", f"Bearer {key}x", f"Bearer {key[:-1]}",
               f"Basic {key}", "Bearer", "Bearer ", f"{key}"]
    for header in accepted:
        assert service.client.get("/v1/me", headers={"Authorization": header}).status_code == 200, header
    for header in refused:
        assert service.client.get("/v1/me", headers={"Authorization": header}).status_code == 401, header
    # Keys are taken from the Authorization header only, never from the URL.
    for query in ("access_token", "key", "api_key", "token"):
        assert service.client.get(f"/v1/me?{query}={key}").status_code == 401, query
        assert service.client.get(f"/v1/scans?{query}={service.keys['admin']}").status_code == 401, query


def test_two_authorization_headers_are_refused_not_resolved_to_the_first(service):
    """Fixed (this failed on the code as reviewed; low). A request with two Authorization headers is authenticated by the first and the second is
    ignored (Starlette's `headers.get`): a station key first and an admin key second is the station, and a
    proxy or audit log in front that reads the last one names another principal than the service acted as.
    Authorization is no list header (RFC 9110: a sender must not repeat it), so the request is malformed.
    Cause: `authenticate` in edge/deps.py reads `request.headers.get("authorization")`. Correct: 400 (or 401)
    when the header appears more than once."""
    request = service.client.build_request("GET", "/v1/me", headers=[
        ("Authorization", f"Bearer {service.keys['station']}"), ("Authorization", f"Bearer {service.keys['admin']}")])
    r = service.client.send(request)
    assert r.status_code in (400, 401), f"two Authorization headers: {r.status_code} {r.text}"


def test_keys_and_session_tokens_appear_in_no_log_line_metric_or_error(service, caplog):
    secrets = list(service.keys.values())
    client = _browser(service)
    with caplog.at_level(logging.DEBUG):
        answers = [
            service.client.get(f"/v1/me?key={service.keys['station']}"),
            service.client.get("/v1/scans", headers={"Authorization": f"Bearer {service.keys['station']}"}),
            service.client.get("/v1/scans", headers={"Authorization": f"Bearer {service.keys['station']}zz"}),
            service.client.post("/v1/scans", params=scan_fields("bag-log"), content=b"not an image",
                                headers={**service.auth("station"), "Content-Type": "image/png"}),
        ]
        with service.client.websocket_connect("/v1/stream") as ws:
            ws.send_text(json.dumps({"key": service.keys["station2"] + "x"}))
            ws.receive_json()
        r = _login_as(client, "sup", SUPERVISOR_PASSWORD)
        secrets.append(_session_cookie(r))
        client.get("/ui/queue")
        metrics = service.client.get("/metrics", headers=service.auth("admin")).text
    # The service's own loggers (the test client's httpx logs the URL it was asked for, query and all).
    logged = "\n".join(f"{rec.getMessage()} {getattr(rec, 'fields', '')}" for rec in caplog.records
                       if rec.name.startswith(("xscreen", "uvicorn")))
    assert logged, "expected access-log lines"
    for secret in secrets:
        stem = secret[:-1]  # a key with a character added or removed is still the key
        assert stem not in logged and stem not in metrics
        for a in answers:
            assert stem not in a.text, a.text
    assert SUPERVISOR_PASSWORD not in logged


# -- headers and content ------------------------------------------------------------------------------------


def test_every_ui_page_and_ui_error_page_carries_the_security_headers(service):
    client = _browser(service)
    pages = [client.get("/login")]
    _login_as(client, "sup", SUPERVISOR_PASSWORD)
    pages += [client.get("/ui/queue"), client.get(f"/ui/bags/{service.scan_id}"), client.get("/ui/seizures"),
              client.get("/ui/bags/999999"), client.get("/ui/queue?before=abc"),
              client.post(f"/ui/bags/{service.scan_id}/review", data={"verdict": "cleared", "csrf_token": "forged"})]
    for r in pages:
        assert r.headers["content-type"].startswith("text/html"), r.url
        csp = r.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp, r.url
        assert r.headers.get("x-frame-options") == "DENY", r.url
        assert r.headers.get("x-content-type-options") == "nosniff", r.url
        assert r.headers.get("referrer-policy") == "no-referrer", r.url
        assert "no-store" in r.headers.get("cache-control", ""), r.url


def test_image_and_preview_responses_forbid_content_sniffing(service):
    """Fixed (this failed on the code as reviewed; low-medium). GET /v1/scans/{id}/image serves the station's own bytes `inline`, and neither it nor
    preview.png sends `X-Content-Type-Options: nosniff` (only the HTML pages do, edge/ui.py). What a station
    uploads is stored as sent whenever it decodes: a PNG with an HTML tEXt chunk, a TIFF, or a DICOS file
    whose 128-byte preamble is free text (the classic DICOM/HTML polyglot, served application/dicom inline).
    Without nosniff a browser that sniffs may render such a file as a page in the service's origin, next to
    the supervisor's session. Cause: the Response headers in `get_image` / `get_preview`
    (edge/routes_scans.py). Correct: nosniff on every response (a middleware), and the original file as
    `attachment` (the UI shows only previews), or a sandboxing CSP on it."""
    for path in (f"/v1/scans/{service.scan_id}/image", f"/v1/scans/{service.scan_id}/preview.png"):
        r = service.client.get(path, headers=service.auth("supervisor"))
        assert r.status_code == 200
        assert r.headers.get("x-content-type-options") == "nosniff", f"{path}: {dict(r.headers)}"


def test_api_answers_with_scan_data_are_not_stored_by_the_browser(service):
    """Fixed (this failed on the code as reviewed; low). The review UI's session cookie also opens the JSON API and the images in the browser. The
    HTML pages say `Cache-Control: no-store`, but the JSON answers (scan lists, the seizure export, review
    trails) say nothing and the images and previews say `private, max-age=3600`: on a shared review desk, the
    next person at the browser reopens /v1/scans/{id}/image from history for an hour after the supervisor
    logged out, without any session, and the JSON may be kept on disk. Correct: `no-store` on every answer
    that carries scan data or images (the thumbnails may use `private, no-cache` with a validator at most)."""
    client = _browser(service)
    _login_as(client, "sup", SUPERVISOR_PASSWORD)
    paths = ["/v1/scans", f"/v1/scans/{service.scan_id}", f"/v1/scans/{service.scan_id}/reviews", "/v1/seizures",
             f"/v1/scans/{service.scan_id}/image", f"/v1/scans/{service.scan_id}/preview.png"]
    kept = {}
    for path in paths:
        r = client.get(path)
        assert r.status_code == 200, (path, r.status_code)
        if "no-store" not in r.headers.get("cache-control", ""):
            kept[path] = r.headers.get("cache-control")
    assert not kept, f"answers with scan data that a browser may keep: {kept}"


def test_the_api_docs_page_loads_no_third_party_script_and_cannot_be_framed(service):
    """Fixed (this failed on the code as reviewed; medium-low). /docs is an HTML page on the UI's origin (open to any role, and to a supervisor's
    browser through the session cookie) that loads Swagger UI's JavaScript from cdn.jsdelivr.net, with no CSP,
    no X-Frame-Options and no nosniff. Whoever controls that CDN path (or the network of a lane box that
    reaches it) runs script in the origin that holds supervisors' sessions: it reads every page's CSRF token
    and records verdicts. On an offline lane box the page does not work at all. Cause: `swagger_page` /
    `redoc_page` in edge/routes_ops.py use FastAPI's default CDN URLs. Correct: serve the assets locally
    (e.g. swagger_js_url under /ui/static), and send the UI's security headers with these pages."""
    for path in ("/docs", "/redoc"):
        r = service.client.get(path, headers=service.auth("station"))
        assert r.status_code == 200
        offsite = [s for s in ("https://", "http://", "//cdn") if f'src="{s}' in r.text or f"src='{s}" in r.text]
        assert not offsite, f"{path} loads script from another origin"
        assert "frame-ancestors" in r.headers.get("content-security-policy", "") or r.headers.get("x-frame-options")


@pytest.mark.parametrize(("name", "data", "content_type"), [
    ("html-as-png", b"<!doctype html><script>alert(document.cookie)</script>", "image/png"),
    ("svg-as-png", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "image/png"),
    ("svg-declared", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "image/svg+xml"),
    ("html-octet", b"<html><body onload=alert(1)>", "application/octet-stream"),
    ("dicom-preamble-html", b"<html><script>alert(1)</script>".ljust(128, b" ") + b"DICM" + b"\0" * 64, "image/png"),
])
def test_an_upload_that_is_really_html_or_svg_is_refused_and_never_stored(service, name, data, content_type):
    before = service.client.get("/v1/scans", headers=service.auth("admin")).json()["total"]
    r = service.client.post("/v1/scans", files={"image": ("scan.png", data, content_type)},
                            data=scan_fields(f"bag-{name}"), headers=service.auth("station"))
    assert r.status_code in (415, 422), (name, r.status_code, r.text)
    assert service.client.get("/v1/scans", headers=service.auth("admin")).json()["total"] == before


# -- resource abuse by an authenticated station --------------------------------------------------------------


def test_deep_json_many_parts_and_huge_fields_are_refused_cheaply(service):
    client = service.client
    started = time.perf_counter()
    deep = '{"verdict": "cleared", "note": ' + "[" * 200_000 + "]" * 200_000 + "}"
    r = client.post(f"/v1/scans/{service.scan_id}/reviews", content=deep,
                    headers={**service.auth("supervisor"), "Content-Type": "application/json"})
    assert r.status_code in (400, 422), r.text
    parts = [("image", ("a.png", png_bytes(5), "image/png"))] + [(f"f{i}", (None, "x")) for i in range(3000)]
    r = client.post("/v1/scans", files=parts, headers=service.auth("station"))
    assert r.status_code == 400 and "fields" in r.json()["detail"]
    r = client.post("/v1/scans", files={"image": ("a.png", png_bytes(5), "image/png")},
                    data={**scan_fields("bag-huge-field"), "lane": "x" * 3_000_000}, headers=service.auth("station"))
    assert r.status_code in (400, 413, 422)
    r = client.post(f"/v1/scans/{service.scan_id}/reviews", json={"verdict": "cleared", "note": "n" * 3_000_000},
                    headers=service.auth("supervisor"))
    assert r.status_code == 422
    assert service.ctx.store.reviews(service.scan_id) == []
    assert time.perf_counter() - started < 10


def _many_chunk_png(n_chunks: int) -> bytes:
    """A valid 64×64 grey PNG with `n_chunks` empty private ancillary chunks before its image data (12 bytes
    each): every decoder must skip them, and may."""
    w = h = 64
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _chunk(b"abCd", b"") * n_chunks + _chunk(b"IDAT", zlib.compress(b"\0" * ((w + 1) * h)))
            + _chunk(b"IEND", b""))


def test_a_png_of_hundreds_of_thousands_of_empty_chunks_costs_no_more_than_a_real_png_of_its_size():
    """Fixed (this failed on the code as reviewed; CPU exhaustion by a station, medium). A 4.8 MB PNG of 400,000 empty ancillary chunks and a 64×64
    image took ~1.6 s of a model worker (measured 1.6 s here; a real 4.8 MB PNG: 18 ms): Pillow's PNG reader
    walks every chunk in Python (CRC, dispatch), and `decode` opens the file with Pillow twice (the header,
    then `_png_with_pillow`). A body at the 64 MB limit holds 5.6 M chunks: ~20 s per request, and the lane
    has two model workers, so a handful of such scans from one station stalls screening for every lane —
    within its rate limit. Correct: refuse PNGs with an absurd number of chunks before Pillow sees them (e.g.
    count chunks in `_png_has_end`, which already walks them; real scans have a handful), or cap the bytes
    before IDAT."""
    real = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (1150, 1400, 3), dtype=np.uint8))[1]
    real_bytes = real.tobytes()
    started = time.perf_counter()
    decode(real_bytes, max_pixels=LANE_BUDGET)
    real_s = time.perf_counter() - started
    bomb = _many_chunk_png(400_000)
    assert abs(len(bomb) - len(real_bytes)) < 200_000
    started = time.perf_counter()
    try:
        decode(bomb, max_pixels=LANE_BUDGET)
    except DecodeError:
        pass
    bomb_s = time.perf_counter() - started
    assert bomb_s < max(0.3, 5 * real_s), f"a {len(bomb):,}-byte PNG took {bomb_s:.2f} s (a real one: {real_s:.3f} s)"


def _tiled_tiff(width: int, height: int, tile: int, data_bytes: int = 1024) -> bytes:
    """A little-endian 8-bit grey TIFF of width×height whose one tile is declared tile×tile (TileWidth,
    TileLength) and holds `data_bytes` zeros (uncompressed)."""
    tags = {256: (4, width), 257: (4, height), 258: (3, 8), 259: (3, 1), 262: (3, 1), 277: (3, 1),
            322: (4, tile), 323: (4, tile), 324: (4, 0), 325: (4, data_bytes)}
    data_offset = 8 + 2 + 12 * len(tags) + 4
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for tag, (kind, value) in sorted(tags.items()):
        value = data_offset if tag == 324 else value
        out += struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == 3 else struct.pack("<HHII", tag, kind, 1, value)
    return out + b"\0\0\0\0" + b"\0" * data_bytes


_MEASURE = textwrap.dedent("""
    import resource, sys
    from vision.decode import DecodeError, decode
    warm_len = int(sys.argv[1])
    raw = sys.stdin.buffer.read()
    for data in (raw[:warm_len], None, raw[warm_len:]):
        if data is None:  # libraries loaded and warmed up: measure from here
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            continue
        try:
            decode(data, max_pixels=32_000_000)
        except DecodeError:
            pass
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
""")


def _decode_peak_growth_mb(data: bytes, warm_up: bytes) -> int:
    """Peak memory (MiB) a fresh process gains decoding `data`, after decoding `warm_up` (libraries loaded)."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(len(warm_up))], input=warm_up + data,
                          capture_output=True, cwd=REPO, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return int(done.stdout.split()[-1])


def test_a_tiny_tiff_with_huge_declared_tiles_makes_the_decoder_allocate_nothing_like_a_gigabyte():
    """Fixed (this failed on the code as reviewed; memory exhaustion by a station, medium). A 1.2 KB TIFF of 16×16 pixels (far under the pixel budget,
    which only looks at the image size) declares one 16000×16000 tile. OpenCV's TIFF reader allocates a buffer
    for a whole tile as declared (RGBA, up to its own 1 GB cap) before it finds the tile data missing: the
    decoding process's peak memory rises by ~1 GB for a 1.2 KB request (measured 980 MB), in each of the two
    model workers at once, on a lane box sized for the 32 MP budget (~100 MB per decoded scan). Correct: read
    TileWidth/TileLength and RowsPerStrip from the header (`_header_size` already reads the TIFF's tags) and
    refuse tiles or strips larger than the image (or than the budget) before OpenCV is called."""
    ok_tiff = _tiled_tiff(16, 16, 32, data_bytes=32 * 32)
    assert decode(ok_tiff, max_pixels=LANE_BUDGET).width == 16  # the format itself is fine
    growth = _decode_peak_growth_mb(_tiled_tiff(16, 16, 16000), ok_tiff)
    assert growth < 200, f"decoding a {len(_tiled_tiff(16, 16, 16000)):,}-byte 16×16 TIFF raised peak memory by {growth} MB"
