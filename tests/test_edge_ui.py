"""The review UI: password login, session cookie flags, CSRF on every POST, queue → bag → confirm →
seizures, escaping; and the same flow in a real browser (Debian's chromium via playwright, slow)."""

from __future__ import annotations

import os
import shutil

import pytest

from edge_support import (
    SUPERVISOR_PASSWORD,
    hidden_csrf,
    png_bytes,
    post_png,
    running_service,
    served_service,
    ui_login,
)
from edge_support import CHROMIUM, launch_chromium





@pytest.fixture()
def service(tmp_path):
    with running_service(tmp_path) as svc:
        yield svc


def test_login_sets_a_strict_httponly_session_cookie(service):
    r = ui_login(service.client)
    assert r.status_code == 303 and r.headers["location"] == "/ui/queue"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("xscreen_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    page = service.client.get("/ui/queue")
    assert page.status_code == 200 and "Alarm queue" in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_secure_flag_follows_the_setting(tmp_path):
    with running_service(tmp_path, session_cookie_secure=True) as svc:
        svc.client.base_url = "https://testserver"  # Secure cookies travel over HTTPS only
        r = ui_login(svc.client)
        cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("xscreen_session="))
        assert "Secure" in cookie


def test_wrong_password_and_missing_login_token_are_refused(service):
    r = ui_login(service.client, password="not the password")
    assert r.status_code == 401 and "Wrong name or password" in r.text
    assert not any(c.startswith("xscreen_session=") for c in r.headers.get_list("set-cookie"))
    service.client.cookies.clear()
    r = service.client.post("/login", data={"username": "sup", "password": SUPERVISOR_PASSWORD, "csrf_token": "x"},
                            follow_redirects=False)
    assert r.status_code == 403
    assert service.client.get("/ui/queue", follow_redirects=False).status_code == 303


def test_csrf_is_required_on_every_ui_and_cookie_post(service):
    scan_id = post_png(service, png_bytes(1), "bag-csrf").json()["id"]
    ui_login(service.client)
    bag = service.client.get(f"/ui/bags/{scan_id}")
    token = hidden_csrf(bag.text)
    url = f"/ui/bags/{scan_id}/review"
    r = service.client.post(url, data={"verdict": "confirmed"}, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.text and r.headers["content-type"].startswith("text/html")
    r = service.client.post(url, data={"verdict": "confirmed", "csrf_token": "forged"}, follow_redirects=False)
    assert r.status_code == 403
    assert service.ctx.store.reviews(scan_id) == []
    # The JSON API with the session cookie needs the token as a header.
    api = f"/v1/scans/{scan_id}/reviews"
    assert service.client.post(api, json={"verdict": "cleared"}).status_code == 403
    r = service.client.post(api, json={"verdict": "cleared"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 201 and r.json()["user"] == "sup"
    r = service.client.post(url, data={"verdict": "confirmed", "note": "bricks", "csrf_token": token},
                            follow_redirects=False)
    assert r.status_code == 303
    assert service.ctx.store.get_scan(scan_id).verdict == "confirmed"
    # Logout needs the token too, and ends the session.
    assert service.client.post("/logout", follow_redirects=False).status_code == 403
    assert service.client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    assert service.client.get("/ui/queue", follow_redirects=False).status_code == 303


def test_queue_bag_confirm_seizures_flow_and_escaping(service):
    views = [post_png(service, png_bytes(10 + i), "bag-flow", view=v).json()["id"] for i, v in enumerate(("top", "side"))]
    other = post_png(service, png_bytes(20), "bag-other").json()["id"]
    ui_login(service.client)
    queue = service.client.get("/ui/queue").text
    assert "bag-flow" in queue and "bag-other" in queue
    assert f"/v1/scans/{views[0]}/preview.png" in queue and f"/v1/scans/{views[1]}/preview.png" in queue
    bag = service.client.get(f"/ui/bags/{views[1]}").text
    assert "View top" in bag and "View side" in bag and "DICOS TDR" in bag
    preview = service.client.get(f"/v1/scans/{views[0]}/preview.png?max_side=64")
    assert preview.status_code == 200 and preview.content[:8] == b"\x89PNG\r\n\x1a\n"
    note = "<script>alert(1)</script> found"
    service.client.post(f"/ui/bags/{views[1]}/review",
                        data={"verdict": "confirmed", "note": note, "csrf_token": hidden_csrf(bag)})
    # The verdict is on the bag: every alarmed view got it, and the bag left the unreviewed queue.
    assert [service.ctx.store.get_scan(i).verdict for i in views] == ["confirmed", "confirmed"]
    queue = service.client.get("/ui/queue").text
    unreviewed = queue.split('id="reviewed"')[0]
    assert "bag-flow" not in unreviewed and "bag-other" in unreviewed
    seizures = service.client.get("/ui/seizures").text
    assert "bag-flow" in seizures and "bag-other" not in seizures
    assert "<script>alert(1)</script>" not in seizures and "&lt;script&gt;" in seizures
    export = service.client.get("/v1/seizures?download=true")
    assert export.headers["content-disposition"].startswith("attachment")
    (item,) = export.json()["seizures"]
    assert item["bag_id"] == "bag-flow" and sorted(item["scan_ids"]) == sorted(views)
    assert item["confirmed_by"] == "sup" and item["note"] == note
    assert item["tdr_url"] in [f"/v1/scans/{i}/tdr" for i in views]  # the bag's one report
    assert other not in item["scan_ids"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"Debian's chromium is not installed at {CHROMIUM}")
def test_browser_login_confirm_and_seizure(tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    with served_service(tmp_path) as svc:
        import httpx

        r = httpx.post(f"{svc.url}/v1/scans", files={"image": ("a.png", png_bytes(1), "image/png")},
                       data={"station": "st1", "lane": "2", "bag_id": "bag-browser", "view": "top"},
                       headers={"Authorization": f"Bearer {svc.keys['station']}"}, timeout=30)
        assert r.status_code == 200 and r.json()["alarm"]
        scan_id = r.json()["id"]
        with playwright_api.sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                page = browser.new_page()
                page.set_default_timeout(15_000)
                page.goto(f"{svc.url}/login")
                page.fill("input[name=username]", "sup")
                page.fill("input[name=password]", SUPERVISOR_PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url(f"{svc.url}/ui/queue")
                row = page.locator("#unreviewed tr.bag", has_text="bag-browser")
                assert row.count() == 1
                # The thumbnail (server-drawn boxes) really loaded in the browser.
                thumb = row.locator("img.thumb").first
                thumb.wait_for()
                assert page.evaluate("img => img.complete && img.naturalWidth > 0", thumb.element_handle())
                row.locator("a", has_text="bag-browser").click()
                page.wait_for_url(f"{svc.url}/ui/bags/{scan_id}")
                page.fill("textarea[name=note]", "confirmed in browser")
                page.click("button.confirm")
                page.wait_for_url(f"{svc.url}/ui/queue")
                assert page.locator("#unreviewed tr.bag", has_text="bag-browser").count() == 0
                page.click("a[href='/ui/seizures']")
                page.wait_for_url(f"{svc.url}/ui/seizures")
                seizure = page.locator("tr.seizure", has_text="bag-browser")
                assert seizure.count() == 1
                assert "confirmed in browser" in seizure.inner_text()
            finally:
                browser.close()
        assert svc.ctx.store.get_scan(scan_id).verdict == "confirmed"
    assert shutil.which("chromium") or os.path.exists(CHROMIUM)
