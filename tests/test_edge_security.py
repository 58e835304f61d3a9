"""Access rules of every route (a route × role table), key handling, and the service staying healthy after
refusals."""

from __future__ import annotations

import pytest
from starlette.websockets import WebSocketDisconnect

from edge_support import png_bytes, post_png, running_service, scan_fields

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
