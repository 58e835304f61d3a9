"""Access rules of every route (a route × role table), key handling, and the service staying healthy after
refusals."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher
from starlette.websockets import WebSocketDisconnect

from edge.ratelimit import RateLimiter
from edge.schemas import DB_INT_MAX
from edge_support import SUPERVISOR_PASSWORD, png_bytes, post_png, running_service, scan_fields
from pg_fixtures import pg_server  # noqa: F401 - fixture

ROLES = ("none", "wrong", "station", "station2", "supervisor", "admin")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with running_service(tmp_path_factory.mktemp("edge-sec")) as svc:
        body = post_png(svc, png_bytes(1), "bag-sec").json()
        assert body["alarm"], "the fixture needs an alarmed scan (thresholds are low)"
        svc.scan_id = body["id"]  # type: ignore[attr-defined]
        yield svc


# (method, path, expected status per role in ROLES order). {id} is st1's alarmed scan.
ACCESS_TABLE = [
    ("POST", "/v1/scans", (401, 401, 200, 403, 403, 403)),
    ("GET", "/v1/scans", (401, 401, 403, 403, 200, 200)),
    ("GET", "/v1/scans/{id}", (401, 401, 200, 404, 200, 200)),
    ("GET", "/v1/scans/{id}/bag", (401, 401, 200, 404, 200, 200)),
    ("GET", "/v1/scans/{id}/image", (401, 401, 403, 403, 200, 200)),
    ("GET", "/v1/scans/{id}/preview.png", (401, 401, 403, 403, 200, 200)),
    ("GET", "/v1/scans/{id}/reviews", (401, 401, 403, 403, 200, 200)),
    ("POST", "/v1/scans/{id}/reviews", (401, 401, 403, 403, 201, 201)),
    ("GET", "/v1/scans/{id}/tdr", (401, 401, 403, 403, 200, 200)),
    ("GET", "/v1/seizures", (401, 401, 403, 403, 200, 200)),
    ("GET", "/v1/me", (401, 401, 200, 200, 200, 200)),
    ("GET", "/metrics", (401, 401, 403, 403, 200, 200)),
    ("GET", "/healthz", (200, 200, 200, 200, 200, 200)),
    ("GET", "/readyz", (200, 200, 200, 200, 200, 200)),
    ("GET", "/openapi.json", (401, 401, 200, 200, 200, 200)),
    ("GET", "/docs", (401, 401, 200, 200, 200, 200)),
    ("GET", "/redoc", (401, 401, 200, 200, 200, 200)),
]


def _request(service, method: str, path: str, who: str):
    url = path.replace("{id}", str(service.scan_id))
    headers = service.auth(who)
    if method == "POST" and path == "/v1/scans":
        # Each role sends the fields of station st1; a fresh bag id so nothing is a duplicate.
        return service.client.post(url, files={"image": ("a.png", png_bytes(2), "image/png")},
                                   data=scan_fields(f"bag-table-{who}"), headers=headers)
    if method == "POST":
        return service.client.post(url, json={"verdict": "cleared", "note": f"by {who}"}, headers=headers)
    return service.client.get(url, headers=headers)


@pytest.mark.parametrize(("method", "path", "expected"), ACCESS_TABLE, ids=[f"{m} {p}" for m, p, _ in ACCESS_TABLE])
def test_access_table(service, method, path, expected):
    got = {who: _request(service, method, path, who) for who in ROLES}
    statuses = tuple(got[who].status_code for who in ROLES)
    assert statuses == expected, dict(zip(ROLES, statuses))
    for who, r in got.items():
        if r.status_code in (401, 403, 404):
            assert r.json()["detail"], (who, r.text)  # every refusal says why
        if r.status_code == 401:
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert service.client.get("/healthz").status_code == 200


def test_refusal_messages_are_specific(service):
    r = service.client.get(f"/v1/scans/{service.scan_id}/image", headers=service.auth("station"))
    assert "role 'station'" in r.json()["detail"] and "supervisor" in r.json()["detail"]
    assert "invalid API key" in service.client.get("/v1/scans", headers=service.auth("wrong")).json()["detail"]
    r = service.client.get("/v1/scans", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    assert "log in" in service.client.get("/v1/scans").json()["detail"]


def test_station_sees_its_records_without_reviews(service):
    service.client.post(f"/v1/scans/{service.scan_id}/reviews", json={"verdict": "confirmed"}, headers=service.auth("supervisor"))
    as_station = service.client.get(f"/v1/scans/{service.scan_id}", headers=service.auth("station")).json()
    assert as_station["reviewed"] is None and as_station["verdict"] is None
    as_sup = service.client.get(f"/v1/scans/{service.scan_id}", headers=service.auth("supervisor")).json()
    assert as_sup["reviewed"] is True and as_sup["verdict"] == "confirmed"


def test_disabled_and_rotated_keys_stop_working(tmp_path):
    with running_service(tmp_path) as svc:
        assert svc.client.get("/v1/me", headers=svc.auth("station2")).status_code == 200
        svc.ctx.auth.set_disabled("st2", kind="station")
        assert svc.client.get("/v1/me", headers=svc.auth("station2")).status_code == 401
        old = svc.keys["supervisor"]
        new = svc.ctx.auth.rotate_key("sup", kind="user")
        assert svc.client.get("/v1/me", headers={"Authorization": f"Bearer {old}"}).status_code == 401
        assert svc.client.get("/v1/me", headers={"Authorization": f"Bearer {new}"}).json()["name"] == "sup"


@pytest.mark.parametrize("who", ["supervisor", "wrong"])
def test_stream_refuses_non_station_keys_at_the_handshake(service, who):
    with pytest.raises(WebSocketDisconnect) as exc:
        with service.client.websocket_connect("/v1/stream", headers=service.auth(who)) as ws:
            ws.receive_json()
    assert exc.value.code == 1008
    assert service.client.get("/healthz").status_code == 200


def test_ui_pages_redirect_to_login_and_ignore_bearer_keys(service):
    r = service.client.get("/ui/queue", headers=service.auth("supervisor"), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    r = service.client.post(f"/ui/bags/{service.scan_id}/review", data={"verdict": "confirmed"},
                            headers=service.auth("admin"), follow_redirects=False)
    assert r.status_code == 401


def test_station_cannot_log_in_to_the_ui(service):
    login = service.client.get("/login")
    assert login.status_code == 200
    r = service.client.post("/login", data={"username": "st1", "password": "whatever-long", "csrf_token": _csrf(login.text)},
                            follow_redirects=False)
    assert r.status_code == 401


def _csrf(page: str) -> str:
    marker = 'name="csrf_token" value="'
    start = page.index(marker) + len(marker)
    return page[start : page.index('"', start)]


def _login(client, name: str = "sup", password: str = SUPERVISOR_PASSWORD):
    return client.post("/login", data={"username": name, "password": password,
                                       "csrf_token": _csrf(client.get("/login").text)}, follow_redirects=False)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# Ids and offsets past the database's 64-bit integers used to fail in the driver (a 500); at the edge of the
# range they are valid and merely absent.
@pytest.mark.parametrize(("who", "path", "expected"), [
    ("station", f"/v1/scans/{DB_INT_MAX + 1}", 422),
    ("supervisor", f"/v1/scans/{2**70}", 422),
    ("supervisor", f"/v1/scans/{2**70}/image", 422),
    ("supervisor", f"/v1/scans/{2**70}/preview.png", 422),
    ("supervisor", f"/v1/scans/{2**70}/reviews", 422),
    ("supervisor", f"/v1/scans/{2**70}/tdr", 422),
    ("supervisor", "/v1/scans/0", 422),
    ("supervisor", f"/v1/scans?offset={2**70}", 422),
    ("supervisor", f"/v1/scans/{DB_INT_MAX}", 404),
    ("supervisor", f"/v1/scans?offset={DB_INT_MAX}", 200),
])
def test_out_of_range_ids_and_offsets_are_refused(service, who, path, expected):
    r = service.client.get(path, headers=service.auth(who))
    assert r.status_code == expected, r.text


def test_out_of_range_id_of_a_review_is_refused(service):
    r = service.client.post(f"/v1/scans/{2**70}/reviews", json={"verdict": "cleared"},
                            headers=service.auth("supervisor"))
    assert r.status_code == 422 and "scan_id" in r.json()["detail"]


def test_out_of_range_ids_in_the_ui_are_refused(service):
    assert _login(service.client).status_code == 303
    try:
        # An id no scan can have is a page that does not exist (an HTML page, as the UI's other errors).
        r = service.client.get(f"/ui/bags/{2**70}")
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        assert service.client.get(f"/ui/bags/{DB_INT_MAX}").status_code == 404
        session = service.client.get(f"/ui/bags/{service.scan_id}")
        r = service.client.post(f"/ui/bags/{2**70}/review",
                                data={"verdict": "cleared", "csrf_token": _csrf(session.text)})
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    finally:
        service.client.cookies.clear()


@pytest.mark.parametrize("part_type", ["text/plain", "image/gif", "application/x-xscreen-dual-energy"])
def test_multipart_image_part_of_an_unlisted_type_is_415(service, part_type):
    r = service.client.post("/v1/scans", files={"image": ("scan.png", png_bytes(3), part_type)},
                            data=scan_fields("bag-part-type"), headers=service.auth("station"))
    assert r.status_code == 415 and repr(part_type) in r.json()["detail"], r.text
    # The same refusal as a raw body of that type.
    raw = service.client.post("/v1/scans", params=scan_fields("bag-part-type"), content=png_bytes(3),
                              headers={**service.auth("station"), "Content-Type": part_type})
    assert raw.status_code == 415 and raw.json()["detail"] == r.json()["detail"]


def test_chunked_body_over_the_limit_is_413_on_every_route(tmp_path):
    # FastAPI's own body parsing (JSON, forms) used to turn the limit's refusal into a 400, uncounted.
    with running_service(tmp_path, max_body_bytes=4096) as svc:
        def refused() -> float:
            sample = svc.ctx.metrics.registry.get_sample_value("xscreen_rejections_total", {"reason": "body_too_large"})
            return sample or 0.0

        requests = [
            ("/v1/scans/1/reviews", "application/json", svc.auth("supervisor")),
            ("/login", "application/x-www-form-urlencoded", {}),
            ("/v1/scans?" + "&".join(f"{k}={v}" for k, v in scan_fields("bag-chunked").items()), "image/png",
             svc.auth("station")),
        ]
        for count, (path, content_type, headers) in enumerate(requests, start=1):
            r = svc.client.post(path, content=iter([b"a" * 1000] * 10),
                                headers={**headers, "Content-Type": content_type})
            assert "content-length" not in r.request.headers
            assert r.status_code == 413 and "limit of 4,096 bytes" in r.json()["detail"], (path, r.text)
            assert refused() == count
        assert svc.client.get("/healthz").status_code == 200


def test_rate_limiter_forgets_full_buckets_and_stays_bounded():
    clock = _Clock()
    limiter = RateLimiter(rate_per_s=0.2, burst=10, max_keys=1000, clock=clock)
    for i in range(5000):
        assert limiter.acquire(f"made-up-{i}") == 0.0
    assert len(limiter._buckets) == 1000  # bounded: the least recently used made room
    assert "made-up-0" not in limiter._buckets
    assert limiter.acquire("made-up-4999", cost=9) == 0.0  # the most recently used keep their counts
    assert limiter.acquire("made-up-4999") > 0
    clock.t += 50.0  # burst / rate: every bucket is full again, and a full bucket is as good as none
    limiter.acquire("someone")
    assert list(limiter._buckets) == ["someone"]


def test_rate_limiter_keeps_buckets_that_are_not_full():
    clock = _Clock()
    limiter = RateLimiter(rate_per_s=0.2, burst=10, clock=clock)
    clock.t = 10.0
    for _ in range(10):
        limiter.acquire("guessed")
    clock.t = 50.0  # a sweep is due (burst / rate since the last); "guessed" has refilled 8 of 10
    limiter.acquire("other")
    assert "guessed" in limiter._buckets
    for _ in range(8):
        assert limiter.acquire("guessed") == 0.0
    assert limiter.acquire("guessed") > 0


def test_login_attempts_are_limited_per_address(tmp_path):
    with running_service(tmp_path) as svc:
        # A cheap hash for the made-up names (the dummy hash is made with the current hasher).
        svc.ctx.auth._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
        clock = _Clock()
        svc.ctx.login_address_limiter = RateLimiter(rate_per_s=1.0, burst=5, clock=clock)
        statuses = [_login(svc.client, f"made-up-{i}", "whatever1").status_code for i in range(6)]
        assert statuses == [401] * 5 + [429]  # each name had a full bucket; the address did not
        # Refused first, the made-up name got no bucket of its own (per address and name, or per name).
        assert not any(k.endswith("|made-up-5") for k in svc.ctx.login_limiter._buckets)
        assert any(k.endswith("|made-up-4") for k in svc.ctx.login_limiter._buckets)
        assert "made-up-5" not in svc.ctx.login_name_limiter._buckets and "made-up-4" in svc.ctx.login_name_limiter._buckets
        clock.t += 60.0
        assert _login(svc.client).status_code == 303


@pytest.fixture()
def pg_service(tmp_path, pg_server):  # noqa: F811 - pg_server is the imported fixture
    with running_service(tmp_path, db_url=pg_server.create_database()) as svc:
        svc.client._transport.raise_server_exceptions = False  # a DataError must show as the 500 it would be
        yield svc


def test_nul_in_login_fields_and_review_notes_is_refused_on_postgresql(pg_service):
    # PostgreSQL text cannot hold NUL: unchecked, psycopg refuses the query (a 500).
    svc = pg_service
    assert _login(svc.client, "sup\x00", "whatever-long").status_code == 401
    assert _login(svc.client, "sup", SUPERVISOR_PASSWORD + "\x00").status_code == 401
    scan_id = post_png(svc, png_bytes(4), "bag-nul").json()["id"]
    r = svc.client.post(f"/v1/scans/{scan_id}/reviews", json={"verdict": "cleared", "note": "a\x00b"},
                        headers=svc.auth("supervisor"))
    assert r.status_code == 422 and "NUL" in r.json()["detail"], r.text
    assert _login(svc.client).status_code == 303
    page = svc.client.get(f"/ui/bags/{scan_id}")
    r = svc.client.post(f"/ui/bags/{scan_id}/review", data={"verdict": "cleared", "note": "a\x00b",
                                                           "csrf_token": _csrf(page.text)}, follow_redirects=False)
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html") and "NUL" in r.text, r.text
    assert svc.client.get(f"/v1/scans/{scan_id}/reviews", headers=svc.auth("supervisor")).json() == []
