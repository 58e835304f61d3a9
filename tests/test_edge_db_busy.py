"""The lane service while another process holds the SQLite write lock (another service process on the same
file, `xscreen admin`, a backup, an operator's sqlite3 shell): answers come within the request deadline or
as a clear 503, never as a 500 when SQLite's busy timeout runs out, and nothing accepted is lost."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import edge.db
from edge_support import hidden_csrf, png_bytes, post_png, running_service, ui_login

#: Nobody listens here: the webhook's outbox items stay pending.
UNREACHABLE_HOOK = "http://127.0.0.1:9/hook"


@contextmanager
def write_lock_held(db_file: Path) -> Iterator[None]:
    """Hold `db_file`'s write lock (BEGIN IMMEDIATE on a connection of this thread's own) until the block ends."""
    holder = sqlite3.connect(str(db_file), timeout=30, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


def _outbox_keys(db_file: Path) -> list[str]:
    with sqlite3.connect(str(db_file)) as db:
        return [row[0] for row in db.execute("SELECT dedupe_key FROM outbox ORDER BY id")]


def test_a_resent_alarm_is_answered_from_its_record_without_the_write_lock(tmp_path: Path) -> None:
    with running_service(tmp_path, webhook_url=UNREACHABLE_HOOK, request_deadline_s=1.0) as svc:
        first = post_png(svc, png_bytes(1), "bag-1")
        assert first.status_code == 200 and first.json()["alarm"], first.text  # the tiny model alarms
        assert _outbox_keys(tmp_path / "edge.db") == [f"webhook:{first.json()['id']}"]
        with write_lock_held(tmp_path / "edge.db"):
            t0 = time.monotonic()
            again = post_png(svc, png_bytes(1), "bag-1")
            took_s = time.monotonic() - t0
        assert again.status_code == 200 and again.json()["duplicate"] is True, again.text
        assert again.json()["id"] == first.json()["id"]
        assert took_s < 1.0, f"the re-send waited {took_s:.2f} s for a write lock it does not need"
        assert _outbox_keys(tmp_path / "edge.db") == [f"webhook:{first.json()['id']}"]


def test_a_resent_alarm_whose_webhook_item_must_be_written_answers_504_at_the_deadline_then_writes_it(
        tmp_path: Path) -> None:
    db_file = tmp_path / "edge.db"
    with running_service(tmp_path, webhook_url=UNREACHABLE_HOOK, request_deadline_s=1.0) as svc:
        first = post_png(svc, png_bytes(2), "bag-2")
        scan_id = first.json()["id"]
        with sqlite3.connect(str(db_file)) as db:  # as for a scan recorded before the webhook was configured
            db.execute("DELETE FROM outbox")
        outcome: dict[str, object] = {}
        with write_lock_held(db_file):
            t0 = time.monotonic()
            r = post_png(svc, png_bytes(2), "bag-2")
            outcome.update(status=r.status_code, text=r.text, took_s=time.monotonic() - t0)
        assert outcome["status"] == 504, outcome["text"]
        assert f"id {scan_id}" in str(outcome["text"]) and "re-send" in str(outcome["text"])
        assert float(outcome["took_s"]) < 2.5, outcome  # the deadline (1 s), not SQLite's busy timeout (30 s)
        # The write went on once the lock was free: the item is there, and a re-send is answered.
        deadline = time.monotonic() + 10
        while _outbox_keys(db_file) != [f"webhook:{scan_id}"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _outbox_keys(db_file) == [f"webhook:{scan_id}"]
        again = post_png(svc, png_bytes(2), "bag-2")
        assert again.status_code == 200 and again.json()["id"] == scan_id and again.json()["duplicate"], again.text
        assert _outbox_keys(db_file) == [f"webhook:{scan_id}"]


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite's busy timeout is 30 s; a quarter of a second keeps the test short (the same code path).
    monkeypatch.setattr(edge.db, "SQLITE_BUSY_TIMEOUT_MS", 250)


def test_a_write_that_waits_out_the_busy_timeout_is_503_with_retry_after_and_writes_nothing(
        tmp_path: Path, short_busy_timeout: None) -> None:
    with running_service(tmp_path) as svc:
        scan_id = post_png(svc, png_bytes(3), "bag-3").json()["id"]
        url = f"/v1/scans/{scan_id}/reviews"
        with write_lock_held(tmp_path / "edge.db"):
            r = svc.client.post(url, json={"verdict": "confirmed", "note": "seen"}, headers=svc.auth("supervisor"))
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "5"
        assert "database is busy" in r.json()["detail"] and "write lock" in r.json()["detail"]
        assert svc.client.get(url, headers=svc.auth("supervisor")).json() == []  # nothing recorded
        assert svc.client.get("/readyz").status_code == 200
        retried = svc.client.post(url, json={"verdict": "confirmed", "note": "seen"}, headers=svc.auth("supervisor"))
        assert retried.status_code in (200, 201), retried.text
        assert [x["verdict"] for x in svc.client.get(url, headers=svc.auth("supervisor")).json()] == ["confirmed"]


def test_the_review_form_while_the_database_stays_locked_is_a_503_page(tmp_path: Path,
                                                                       short_busy_timeout: None) -> None:
    with running_service(tmp_path) as svc:
        scan_id = post_png(svc, png_bytes(4), "bag-4").json()["id"]
        ui_login(svc.client)
        page = svc.client.get(f"/ui/bags/{scan_id}")
        csrf = hidden_csrf(page.text)
        with write_lock_held(tmp_path / "edge.db"):
            r = svc.client.post(f"/ui/bags/{scan_id}/review", data={"verdict": "cleared", "csrf_token": csrf},
                                follow_redirects=False)
        assert r.status_code == 503, r.text[:300]
        assert r.headers["content-type"].startswith("text/html")
        assert "Database busy" in r.text and "retry later" in r.text


def test_other_database_errors_stay_internal_errors(tmp_path: Path) -> None:
    # The busy handler takes every OperationalError: any other is answered (and logged) as a 500, as before.
    with running_service(tmp_path) as svc:
        scan_id = post_png(svc, png_bytes(5), "bag-5").json()["id"]
        with sqlite3.connect(str(tmp_path / "edge.db")) as db:
            db.execute("DROP TABLE reviews")
        r = svc.client.get(f"/v1/scans/{scan_id}/reviews", headers=svc.auth("supervisor"))
        assert r.status_code == 500, r.text
        assert "internal error" in r.json()["detail"]


def test_a_lock_held_by_another_thread_briefly_only_delays_the_review(tmp_path: Path) -> None:
    # Contention shorter than the busy timeout is waited out: the write goes through once the lock is free.
    with running_service(tmp_path) as svc:
        scan_id = post_png(svc, png_bytes(6), "bag-6").json()["id"]
        held = threading.Event()

        def hold() -> None:
            with write_lock_held(tmp_path / "edge.db"):
                held.set()
                time.sleep(0.5)

        holder = threading.Thread(target=hold)
        holder.start()
        assert held.wait(5)
        r = svc.client.post(f"/v1/scans/{scan_id}/reviews", json={"verdict": "cleared"}, headers=svc.auth("supervisor"))
        holder.join(5)
        assert r.status_code in (200, 201), r.text
