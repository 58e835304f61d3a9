"""Review of the supervisors' pages and the station simulator, as their users meet them: error pages of the
review UI (no such bag, session expired mid-review, CSRF), the verdict a bag page shows, double submits,
queue pagination, the seizures export past its page size, escaping of stored names, and the simulator
against a service that is starting, refuses its key, or asks to retry later."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from edge import ui
from edge.seizures import collect_seizures
from edge.station import StationConfig, StationError, run_station
from edge_support import hidden_csrf, png_bytes, post_png, running_service, ui_login, uvicorn_server
from edge_support import stored_scan as _record


@pytest.fixture()
def service(tmp_path):
    with running_service(tmp_path) as svc:
        yield svc


# -- review UI: error pages ------------------------------------------------------------------------------


def test_a_bag_that_does_not_exist_gets_an_html_404_page(service):
    ui_login(service.client)
    r = service.client.get("/ui/bags/987654")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    assert "987654" in r.text and 'href="/ui/queue"' in r.text
    assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")


def test_a_verdict_on_a_scan_that_does_not_exist_is_an_html_404_and_records_nothing(service):
    scan_id = post_png(service, png_bytes(1), "bag-real").json()["id"]
    ui_login(service.client)
    token = hidden_csrf(service.client.get(f"/ui/bags/{scan_id}").text)
    r = service.client.post("/ui/bags/987654/review", data={"verdict": "confirmed", "csrf_token": token},
                            follow_redirects=False)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert service.ctx.store.list_scans(reviewed=True) == []


def test_session_expired_mid_review_gets_a_login_page_not_json(service):
    scan_id = post_png(service, png_bytes(2), "bag-expire").json()["id"]
    ui_login(service.client)
    token = hidden_csrf(service.client.get(f"/ui/bags/{scan_id}").text)
    # The session ends (expiry, or a logout in another tab) while the supervisor types the note.
    service.ctx.auth.end_session(service.client.cookies.get(service.settings.session_cookie_name))
    form = {"verdict": "confirmed", "note": "bricks", "csrf_token": token}
    r = service.client.post(f"/ui/bags/{scan_id}/review", data=form, follow_redirects=False)
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
    assert 'href="/login"' in r.text and "not recorded" in r.text
    assert service.ctx.store.reviews(scan_id) == []


def test_a_wrong_csrf_token_gets_an_html_page_that_says_nothing_was_recorded(service):
    scan_id = post_png(service, png_bytes(3), "bag-csrf-page").json()["id"]
    ui_login(service.client)
    r = service.client.post(f"/ui/bags/{scan_id}/review", data={"verdict": "confirmed", "csrf_token": "forged"},
                            follow_redirects=False)
    assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
    assert "CSRF" in r.text and f'href="/ui/bags/{scan_id}"' in r.text
    assert service.ctx.store.reviews(scan_id) == []


# -- review UI: verdicts ---------------------------------------------------------------------------------


def test_the_bag_verdict_shows_on_every_view_of_the_bag(service):
    store = service.ctx.store
    top = _record(store, "bag-two-views", alarm=True, view="top")
    side = _record(store, "bag-two-views", alarm=False, view="side")
    ui_login(service.client)
    page = service.client.get(f"/ui/bags/{top.id}").text
    form = {"verdict": "confirmed", "csrf_token": hidden_csrf(page)}
    r = service.client.post(f"/ui/bags/{top.id}/review", data=form, follow_redirects=False)
    assert r.status_code == 303
    # Opened from its clear side view (a link to any scan of the bag), the bag is still the confirmed one.
    side_page = service.client.get(f"/ui/bags/{side.id}").text
    assert '<b id="verdict">confirmed</b>' in side_page


def test_a_double_submitted_verdict_is_recorded_once(service):
    scan_id = post_png(service, png_bytes(4), "bag-double").json()["id"]
    ui_login(service.client)
    token = hidden_csrf(service.client.get(f"/ui/bags/{scan_id}").text)
    form = {"verdict": "confirmed", "note": "bricks in the lining", "csrf_token": token}
    for _ in range(2):  # a double click on "Confirm"
        assert service.client.post(f"/ui/bags/{scan_id}/review", data=form, follow_redirects=False).status_code == 303
    assert [r.verdict for r in service.ctx.store.reviews(scan_id)] == ["confirmed"]
    # A different verdict afterwards is a real change of mind and is kept in the trail.
    service.client.post(f"/ui/bags/{scan_id}/review", data={**form, "verdict": "cleared"}, follow_redirects=False)
    assert [r.verdict for r in service.ctx.store.reviews(scan_id)] == ["confirmed", "cleared"]


def test_the_queue_pages_past_its_limit_and_does_not_understate_the_count(service, monkeypatch):
    monkeypatch.setattr(ui, "QUEUE_LIMIT", 3)
    store = service.ctx.store
    for i in range(5):
        _record(store, f"bag-q{i}", alarm=True)
    ui_login(service.client)
    first = service.client.get("/ui/queue").text
    unreviewed = first.split('id="reviewed"')[0]
    assert "bag-q4" in unreviewed and "bag-q0" not in unreviewed  # newest first
    assert "5 flagged bag(s) waiting for review; 3 newest ones here, older ones on the next page" in first
    older = re.search(r'href="(/ui/queue\?before=\d+)" rel="next"', first)
    assert older is not None, first
    second = service.client.get(older.group(1)).text
    assert "bag-q0" in second.split('id="reviewed"')[0] and "bag-q1" in second.split('id="reviewed"')[0]
    assert "bag-q4" not in second.split('id="reviewed"')[0]
    assert 'href="/ui/queue" rel="first"' in second and 'rel="next"' not in second
    assert "2 older ones here, the oldest" in second


def test_stored_names_and_notes_are_escaped_on_every_page(service):
    store = service.ctx.store
    evil = '"><img src=x onerror=alert(1)>'
    rec = _record(store, "bag-evil", alarm=True, lane=evil, view=evil, classes=(evil,))
    store.add_review(rec.id, user="sup", verdict="confirmed", note=evil)
    ui_login(service.client)
    for url in ("/ui/queue", f"/ui/bags/{rec.id}", "/ui/seizures"):
        page = service.client.get(url).text
        assert "<img src=x" not in page, url
        assert "&lt;img src=x onerror=alert(1)&gt;" in page, url


# -- seizures ---------------------------------------------------------------------------------------------


def test_seizures_are_all_exported_however_many_bags_were_cleared_since(service):
    store = service.ctx.store
    confirmed = [_record(store, f"bag-seized-{i}", alarm=True) for i in range(3)]
    for r in confirmed:
        store.add_review(r.id, user="sup", verdict="confirmed", note="")
    for i in range(4):  # later false alarms, cleared
        r = _record(store, f"bag-cleared-{i}", alarm=True)
        store.add_review(r.id, user="sup", verdict="cleared", note="")
    items = collect_seizures(store, page_size=2)
    assert sorted(s["bag_id"] for s in items) == [f"bag-seized-{i}" for i in range(3)]
    assert all(s["confirmed_by"] == "sup" for s in items)


# -- station simulator -------------------------------------------------------------------------------------


def _fake_service(*, me: list[tuple[int, dict[str, str]]] | None = None,
                  scans: list[tuple[int, dict[str, str]]] | None = None) -> FastAPI:
    """A stand-in lane service whose /v1/me and /v1/scans answer the scripted (status, headers) in turn
    (then 200); it counts the calls."""
    app = FastAPI()
    app.state.calls = {"me": 0, "scans": 0}
    me_script, scan_script = list(me or []), list(scans or [])

    @app.get("/v1/me")
    async def who(request: Request) -> Any:
        app.state.calls["me"] += 1
        if me_script:
            status, headers = me_script.pop(0)
            return PlainTextResponse("not now", status_code=status, headers=headers)
        return {"kind": "station", "name": "st1", "role": "station"}

    @app.post("/v1/scans")
    async def scan(request: Request) -> Any:
        app.state.calls["scans"] += 1
        if scan_script:
            status, headers = scan_script.pop(0)
            return JSONResponse({"detail": "busy"}, status_code=status, headers=headers)
        return {"id": app.state.calls["scans"], "alarm": False, "duplicate": False}

    return app


def _source(k: int) -> tuple[bytes, str, str]:
    return png_bytes(k), "image/png", f"bag{k}"


def _cfg(url: str, **overrides: Any) -> StationConfig:
    values: dict[str, Any] = dict(url=url, key="xs_st_test", lanes=1, rate=1000.0, bags=2, live=False, max_retries=2)
    values.update(overrides)
    return StationConfig(**values)


def test_the_simulator_honours_retry_after_given_as_an_http_date():
    # RFC 9110: Retry-After is delay-seconds or an HTTP-date; a date in the past means "now".
    app = _fake_service(scans=[(503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})])
    with uvicorn_server(app) as url:
        summary = run_station(_cfg(url), source=_source)
    assert (summary.sent, summary.errors, summary.retries) == (2, 0, 1), summary.error_samples


def test_the_simulator_waits_for_a_starting_service_instead_of_blaming_the_key():
    app = _fake_service(me=[(503, {"Retry-After": "0"})])
    with uvicorn_server(app) as url:
        summary = run_station(_cfg(url), source=_source)
    assert (summary.sent, summary.errors) == (2, 0)
    assert app.state.calls["me"] == 2


def test_the_simulator_says_which_refusal_stopped_it():
    app = _fake_service(me=[(401, {})] + [(503, {"Retry-After": "0"})] * 3 + [(200, {})])
    with uvicorn_server(app) as url:
        with pytest.raises(StationError, match="refused the key"):
            run_station(_cfg(url), source=_source)
        with pytest.raises(StationError, match="unavailable") as info:  # 503 after every retry: not the key
            run_station(_cfg(url), source=_source)
        assert "key" not in str(info.value)
        with pytest.raises(StationError, match="did not answer JSON"):  # --url is some other web server
            run_station(_cfg(url), source=_source)
    assert app.state.calls["scans"] == 0


@pytest.mark.parametrize(("field", "value"), [("lanes", 0), ("rate", 0.0), ("rate", math.nan),
                                              ("bags", -1), ("max_retries", -1), ("timeout_s", 0.0)])
def test_the_simulator_names_the_setting_it_refuses(field, value):
    # Checked before any connection: the URL is never reached.
    with pytest.raises(StationError, match=f"^{field} must be") as info:
        run_station(_cfg("http://127.0.0.1:9", **{field: value}), source=_source)
    assert str(value) in str(info.value)


# -- TDR ---------------------------------------------------------------------------------------------------


def test_the_tdr_of_an_alarmed_view_has_its_boxes_in_image_coordinates_and_its_class_names(service):
    from edge.tdr import read_tdr

    rec = _record(service.ctx.store, "bag-tdr", alarm=True, classes=("ivory", "medicine_pills"))
    clear = _record(service.ctx.store, "bag-tdr", alarm=False, view="side")
    r = service.client.get(f"/v1/scans/{rec.id}/tdr", headers=service.auth("supervisor"))
    assert r.status_code == 200
    tdr = read_tdr(r.content)
    assert tdr["OOIID"] == "bag-tdr" and tdr["InstanceNumber"] == rec.id
    ptos = tdr["PTOs"]
    assert [p["Assessment"]["description"] for p in ptos] == ["ivory", "medicine_pills"]
    for p in ptos:  # box_xyxy [10, 20, 30, 60]: x from 10, 20 wide; y from 20, 40 high
        assert (p["Base"]["x"], p["Base"]["y"], p["Extent"]["x"], p["Extent"]["y"]) == (10.0, 20.0, 20.0, 40.0)
        assert p["Assessment"]["probability"] == pytest.approx(0.9)
    # The report is the bag's: its clear view leads to the same one; a bag with no alarmed view has none.
    same = service.client.get(f"/v1/scans/{clear.id}/tdr", headers=service.auth("supervisor"))
    assert same.status_code == 200
    assert [p["Assessment"]["description"] for p in read_tdr(same.content)["PTOs"]] == ["ivory", "medicine_pills"]
    clear_bag = _record(service.ctx.store, "bag-tdr-clear", alarm=False)
    refused = service.client.get(f"/v1/scans/{clear_bag.id}/tdr", headers=service.auth("supervisor"))
    assert refused.status_code == 409 and "alarmed" in refused.json()["detail"]


def test_the_simulator_waits_at_most_a_minute_on_one_retry_after():
    from email.utils import format_datetime
    from datetime import datetime, timedelta, timezone

    from edge.station import MAX_RETRY_AFTER_S, parse_retry_after

    assert parse_retry_after("86400") == MAX_RETRY_AFTER_S
    assert parse_retry_after(format_datetime(datetime.now(timezone.utc) + timedelta(days=1), usegmt=True)) == MAX_RETRY_AFTER_S
    assert parse_retry_after("2.5") == 2.5 and parse_retry_after(2.5) == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") == 1.0 and parse_retry_after(None) == 1.0 and parse_retry_after("inf") == 1.0


@pytest.mark.parametrize("path", ["/ui/bags/abc", "/ui/bags/99999999999999999999999"])
def test_a_bag_id_that_is_no_scan_id_gets_an_html_404_page(service, path):
    ui_login(service.client)
    r = service.client.get(path)
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert 'href="/ui/queue"' in r.text and "There is no page at" in r.text


def test_a_form_field_the_route_cannot_read_gets_an_html_page_back_to_the_bag(service):
    scan_id = post_png(service, png_bytes(5), "bag-badform").json()["id"]
    ui_login(service.client)
    token = hidden_csrf(service.client.get(f"/ui/bags/{scan_id}").text)
    r = service.client.post(f"/ui/bags/{scan_id}/review", data={"verdict": "maybe", "csrf_token": token},
                            follow_redirects=False)
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html")
    assert f'href="/ui/bags/{scan_id}"' in r.text and "verdict" in r.text
    assert service.ctx.store.reviews(scan_id) == []
    # The API keeps its JSON answers.
    api = service.client.get("/v1/scans/abc", headers={"Authorization": f"Bearer {service.keys['supervisor']}"})
    assert api.status_code == 422 and api.headers["content-type"].startswith("application/json")


def test_recently_reviewed_bags_are_listed_in_the_order_they_were_reviewed(service):
    store = service.ctx.store
    old = _record(store, "bag-old", alarm=True)
    new = _record(store, "bag-new", alarm=True)
    store.add_review(new.id, user="sup", verdict="cleared")
    store.add_review(old.id, user="sup", verdict="confirmed")  # the older scan, reviewed last
    ui_login(service.client)
    page = service.client.get("/ui/queue").text
    reviewed = page[page.index('id="reviewed"'):]
    assert reviewed.index("bag-old") < reviewed.index("bag-new")
