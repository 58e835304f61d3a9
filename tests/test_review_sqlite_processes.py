"""Review: several `xscreen serve` processes (and the admin CLI) on ONE SQLite file and ONE data directory.

A lane box operator runs two service processes on the default SQLite store as naturally as on PostgreSQL:
two ports, a restart of one while the other runs, `xscreen admin add-station --db sqlite:///...` while the
service runs. The issue's promises must hold there too: every acknowledged scan is durable, a re-send of the
same (station, bag id, image) is idempotent (whichever process gets it, and when both get it at once), ids
are unique, a bag's answer fuses every view recorded before it, each alarm has exactly one webhook outbox
item, and write-lock contention is never a 500 ("database is locked").

Real processes (tests/edge_process.py), small images and a few seconds of load per test.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from edge_model import tiny_package
from edge_process import add_admin, add_station, check_shared_store, new_server, server_processes, xscreen
from edge_support import free_port, png_bytes

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT_S = 20.0
THREAD_TIMEOUT_S = 60.0
#: Statuses a station may be given under contention: it re-sends after them (Retry-After / deadline).
RETRYABLE = (503, 504)
MAX_TRIES = 6


def _image(k: int) -> bytes:
    return png_bytes(seed=20_000 + k, hw=(40, 56))


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=REQUEST_TIMEOUT_S)


def _post(client: httpx.Client, data: bytes, bag: str, *, view: str = "top", station: str = "st1") -> httpx.Response:
    return client.post("/v1/scans", files={"image": ("scan.png", data, "image/png")},
                       data={"station": station, "lane": "1", "bag_id": bag, "view": view})


class Outcomes:
    """What the sender threads saw: errors (anything but 200 or a retryable 503/504, or a transport error),
    the retryable answers, and each successful answer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.retryable: list[str] = []

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)

    def send(self, client: httpx.Client, data: bytes, bag: str, *, view: str = "top", station: str = "st1",
             where: str = "") -> dict | None:
        """POST the scan, re-sending (as a station does) after 503/504; the 200 answer's body, or None."""
        for _ in range(MAX_TRIES):
            try:
                r = _post(client, data, bag, view=view, station=station)
            except httpx.HTTPError as exc:
                self.error(f"{bag}/{view}@{where}: {exc!r}")
                return None
            if r.status_code == 200:
                return r.json()
            if r.status_code in RETRYABLE:
                with self.lock:
                    self.retryable.append(f"{bag}/{view}@{where}: {r.status_code} {r.text[:120]}")
                time.sleep(0.2)
                continue
            self.error(f"{bag}/{view}@{where}: HTTP {r.status_code} {r.text[:300]}")
            return None
        self.error(f"{bag}/{view}@{where}: still refused after {MAX_TRIES} tries")
        return None


def _run_threads(targets: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=THREAD_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "a sender thread did not finish"


def _no_lock_errors_logged(*servers) -> None:
    for server in servers:
        log = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
        assert "database is locked" not in log, f"{server.name} logged a lock error:\n{server.log_tail()}"
        assert "Traceback" not in log, f"{server.name} logged a traceback:\n{server.log_tail()}"


def _sqlite(tmp_path: Path) -> tuple[str, Path]:
    return f"sqlite:///{tmp_path / 'lane.db'}", tmp_path / "data"


def _hook_env() -> dict[str, str]:
    # Nothing listens on this port: webhook items are claimed, fail, and stay pending (never delivered).
    return {"XSCREEN_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/hook", "XSCREEN_OUTBOX_POLL_S": "0.1"}


# -- 1. two processes on one fresh SQLite file: migrations race, then concurrent load ------------------------

UNIQUE_PER_THREAD = 8
SHARED_SCANS = 8
SPLIT_BAGS = 8


def test_two_processes_on_one_fresh_sqlite_file_keep_ids_idempotency_bag_fusion_and_the_outbox(tmp_path: Path):
    url, data_dir = _sqlite(tmp_path)
    env = _hook_env()
    a = new_server(tiny_package(), url, data_dir, tmp_path / "a", name="a", env=env)
    b = new_server(tiny_package(), url, data_dir, tmp_path / "b", name="b", env=env)

    # Both start at once on a file that does not exist yet, and the admin CLI with them: all three create it,
    # switch it to WAL and migrate at the same moment.
    with ExitStack() as stack:
        for server in (a, b):
            stack.callback(server.stop)
            server.launch()
        key = add_station("st1", db_url=url, data_dir=data_dir, workdir=tmp_path)
        for server in (a, b):
            server.wait_ready(90)
        out = Outcomes()
        unique: dict[str, tuple[bytes, int]] = {}
        shared: dict[str, dict[str, dict]] = {f"shared-{i}": {} for i in range(SHARED_SCANS)}
        split: dict[str, dict[str, dict]] = {f"split-{i}": {} for i in range(SPLIT_BAGS)}
        same_barrier = threading.Barrier(2, timeout=THREAD_TIMEOUT_S)
        split_barrier = threading.Barrier(2, timeout=THREAD_TIMEOUT_S)

        def send_unique(server, worker: int) -> Callable[[], None]:
            def run() -> None:
                with _client(server.url, key) as client:
                    for i in range(UNIQUE_PER_THREAD):
                        bag, data = f"u-{worker}-{i}", _image(worker * 1000 + i)
                        body = out.send(client, data, bag, where=server.name)
                        if body is not None:
                            with out.lock:
                                unique[bag] = (data, body["id"])
            return run

        def send_same(server) -> Callable[[], None]:
            # The SAME (station, bag, image) goes to both processes at the same moment.
            def run() -> None:
                with _client(server.url, key) as client:
                    for i, bag in enumerate(shared):
                        try:
                            same_barrier.wait()
                        except threading.BrokenBarrierError:
                            out.error(f"{bag}@{server.name}: barrier broken")
                            return
                        body = out.send(client, _image(900_000 + i), bag, where=server.name)
                        if body is not None:
                            with out.lock:
                                shared[bag][server.name] = body
            return run

        def send_split(server, view: str, offset: int) -> Callable[[], None]:
            # Two different views of one bag, one to each process, at the same moment.
            def run() -> None:
                with _client(server.url, key) as client:
                    for i, bag in enumerate(split):
                        try:
                            split_barrier.wait()
                        except threading.BrokenBarrierError:
                            out.error(f"{bag}@{server.name}: barrier broken")
                            return
                        body = out.send(client, _image(800_000 + 2 * i + offset), bag, view=view, where=server.name)
                        if body is not None:
                            with out.lock:
                                split[bag][view] = body
            return run

        _run_threads([send_unique(s, w) for w, s in enumerate((a, b, a, b))]
                     + [send_same(a), send_same(b)]
                     + [send_split(a, "top", 0), send_split(b, "side", 1)])

        assert out.errors == [], "5xx other than 503/504, or transport errors, under two-process SQLite load"
        assert len(unique) == 4 * UNIQUE_PER_THREAD

        for bag, answers in shared.items():
            assert set(answers) == {"a", "b"}, bag
            assert answers["a"]["id"] == answers["b"]["id"], f"{bag}: a re-sent scan got two ids"
            # One of them recorded it; the other found it (unless a 504/retry made both answers duplicates).
            assert False in (answers["a"]["duplicate"], answers["b"]["duplicate"]) or out.retryable, bag

        for bag, answers in split.items():
            assert set(answers) == {"top", "side"}, bag
            # Whichever view was recorded second must answer with both views fused.
            assert max(answers["top"]["bag_views"], answers["side"]["bag_views"]) == 2, \
                f"{bag}: neither answer covers both views: {[(v, x['bag_views']) for v, x in answers.items()]}"
            later = max(answers.values(), key=lambda x: x["bag_views"])
            union = set(answers["top"]["alarm_classes"]) | set(answers["side"]["alarm_classes"])
            assert set(later["bag_alarm_classes"]) == union, bag
            assert later["bag_alarm"] == bool(union), bag

        ids = ([scan_id for _d, scan_id in unique.values()] + [v["a"]["id"] for v in shared.values()]
               + [v[view]["id"] for v in split.values() for view in ("top", "side")])
        assert len(set(ids)) == len(ids), "two scans got the same id"

        check_shared_store(url, data_dir, unique, len(ids))
        _no_lock_errors_logged(a, b)


# -- 2. the admin CLI while the service takes scans on the same SQLite file ---------------------------------


def test_admin_cli_adds_stations_and_users_while_the_service_writes_to_the_same_sqlite_file(tmp_path: Path):
    url, data_dir = _sqlite(tmp_path)
    a = new_server(tiny_package(), url, data_dir, tmp_path / "a", name="a", env=_hook_env())
    with server_processes(a, timeout_s=90):
        key = add_station("st1", db_url=url, data_dir=data_dir, workdir=tmp_path)
        out = Outcomes()
        stop = threading.Event()
        sent = [0]

        def load() -> None:
            with _client(a.url, key) as client:
                for i in range(200):
                    if stop.is_set():
                        return
                    if out.send(client, _image(50_000 + i), f"adm-{i}", where="a") is not None:
                        sent[0] += 1

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        try:
            time.sleep(0.5)
            new_keys = {}
            for n in range(2):
                new_keys[f"st-new{n}"] = add_station(f"st-new{n}", db_url=url, data_dir=data_dir, workdir=tmp_path)
            admin_key = add_admin("boss", db_url=url, data_dir=data_dir, workdir=tmp_path)
            xscreen(["admin", "add-user", "sup2", "--role", "supervisor", "--db", url, "--data-dir", str(data_dir)],
                    workdir=tmp_path)
            listed = xscreen(["admin", "list", "--db", url, "--data-dir", str(data_dir)], workdir=tmp_path)
        finally:
            stop.set()
            loader.join(timeout=THREAD_TIMEOUT_S)
        assert not loader.is_alive()
        assert out.errors == []
        assert sent[0] > 0, "no scan was accepted during the admin commands"
        assert "st-new0" in listed and "sup2" in listed and "boss" in listed

        # The running service knows the new principals at once (keys are looked up per request).
        for name, new_key in new_keys.items():
            with _client(a.url, new_key) as client:
                body = out.send(client, _image(60_000 + len(name)), "adm-new", station=name, where="a")
            assert body is not None and body["station"] == name, out.errors
        with _client(a.url, admin_key) as client:
            r = client.get("/v1/scans", params={"limit": 5})
            assert r.status_code == 200, r.text
        _no_lock_errors_logged(a)


# -- 3. a second process starting (and one restarting) against a DB another process created and writes -------


def test_a_second_process_starts_and_one_is_killed_and_restarts_while_another_writes_the_same_sqlite_file(
    tmp_path: Path,
):
    from edge.store import Store

    url, data_dir = _sqlite(tmp_path)
    env = _hook_env()
    a = new_server(tiny_package(), url, data_dir, tmp_path / "a", name="a", env=env)
    b = new_server(tiny_package(), url, data_dir, tmp_path / "b", name="b", env=env)
    out = Outcomes()
    acked: dict[str, tuple[bytes, int]] = {}

    def load(server, prefix: str, stop: threading.Event, *, strict: bool = True) -> threading.Thread:
        def run() -> None:
            with _client(server.url, key) as client:
                for i in range(300):
                    if stop.is_set():
                        return
                    data = _image(sum(map(ord, prefix)) * 1000 + i)
                    if strict:
                        body = out.send(client, data, f"{prefix}-{i}", where=server.name)
                    else:  # the server is killed under this load: transport errors are expected
                        try:
                            r = _post(client, data, f"{prefix}-{i}")
                        except httpx.HTTPError:
                            return
                        body = r.json() if r.status_code == 200 else None
                    if body is not None:
                        with out.lock:
                            acked[f"{prefix}-{i}"] = (data, body["id"])
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    with server_processes(a, timeout_s=90):
        key = add_station("st1", db_url=url, data_dir=data_dir, workdir=tmp_path)
        stop_a, stop_b = threading.Event(), threading.Event()
        load_a = load(a, "ra", stop_a)
        try:
            time.sleep(0.5)
            # b starts (its migration finds nothing to do) against the file a made, while a writes.
            b.launch()
            b.wait_ready(90)
            load_b = load(b, "rb", stop_b, strict=False)
            time.sleep(1.0)
            b.kill()  # SIGKILL, maybe inside a write transaction: a must carry on
            stop_b.set()
            load_b.join(THREAD_TIMEOUT_S)
            time.sleep(0.5)
            b.restart(90)
            with _client(b.url, key) as client:
                # A re-send to the restarted b of a scan a recorded: same id, duplicate.
                with out.lock:
                    bag = next(k for k in acked if k.startswith("ra-"))
                body = out.send(client, acked[bag][0], bag, where="b")
                assert body is not None and body["id"] == acked[bag][1] and body["duplicate"] is True
            stop_b.clear()
            load_b = load(b, "rc", stop_b)
            time.sleep(1.0)
        finally:
            stop_a.set()
            stop_b.set()
            load_a.join(THREAD_TIMEOUT_S)
            b.stop()
        load_b.join(THREAD_TIMEOUT_S)
        assert out.errors == []
        assert any(k.startswith("rb-") for k in acked) and any(k.startswith("rc-") for k in acked)

    store = Store(url, data_dir)
    try:
        ids = [scan_id for _d, scan_id in acked.values()]
        assert len(ids) == len(set(ids)), "two scans got one id"
        for data, scan_id in acked.values():  # every acknowledged scan (b's before the kill too) is there
            record = store.get_scan(scan_id)
            assert record is not None and record.image_sha256 == hashlib.sha256(data).hexdigest()
            assert store.read_image(record.image_sha256)[0] == data
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
    finally:
        store.close()
    _no_lock_errors_logged(a, b)


# -- 4. the write lock held by another process: answers stay within the request deadline --------------------

DEADLINE_S = 2.0
LOCK_HELD_S = 6.0


def test_a_resent_alarm_is_answered_within_the_deadline_while_another_process_holds_the_write_lock(tmp_path: Path):
    """Another process on the same SQLite file holding the write lock (another
    service's writes, the admin CLI, a backup, an operator's sqlite3 shell: here, this test) is the contention
    the service answers with 504 at the request deadline for a NEW scan (ingest.screen: "a write held up (a
    database busy with another writer ...) answers 504") and that holds here. A RE-SENT scan of an alarm (the
    station lost the first answer) does not: with a webhook configured, `screen` awaits
    `_after_record(ctx, record, enqueued=False)` -> `store.enqueue` (a BEGIN IMMEDIATE write, even though the
    item exists) outside any deadline (edge/ingest.py, the `existing` branch of `screen`). So the re-send hangs
    as long as the lock is held, past the deadline, and after SQLITE_BUSY_TIMEOUT_MS (30 s) it becomes a 500
    "database is locked". It should be answered within the deadline: either from the record (the item can be
    enqueued in the background, or only when missing, read first) or with a clear 504/503."""
    import sqlite3

    url, data_dir = _sqlite(tmp_path)
    env = {**_hook_env(), "XSCREEN_REQUEST_DEADLINE_S": str(DEADLINE_S)}
    a = new_server(tiny_package(), url, data_dir, tmp_path / "a", name="a", env=env)
    with server_processes(a, timeout_s=90):
        key = add_station("st1", db_url=url, data_dir=data_dir, workdir=tmp_path)
        first, fresh = _image(70_001), _image(70_002)
        with _client(a.url, key) as client:
            r = _post(client, first, "locked-1")
            assert r.status_code == 200 and r.json()["alarm"], r.text  # the tiny model alarms (thresholds 0.01)
            first_id = r.json()["id"]

            locked, release = threading.Event(), threading.Event()

            def hold_write_lock() -> None:
                # The write lock, as another process's long write would hold it, for LOCK_HELD_S at most.
                holder = sqlite3.connect(str(tmp_path / "lane.db"), timeout=30, isolation_level=None)
                try:
                    holder.execute("BEGIN IMMEDIATE")
                    locked.set()
                    release.wait(LOCK_HELD_S)
                    holder.execute("ROLLBACK")
                finally:
                    holder.close()

            holding = threading.Thread(target=hold_write_lock, daemon=True)
            holding.start()
            assert locked.wait(10)
            try:
                t0 = time.monotonic()
                r_new = _post(client, fresh, "locked-2")
                new_s = time.monotonic() - t0
                t0 = time.monotonic()
                r_dup = _post(client, first, "locked-1")
                dup_s = time.monotonic() - t0
            finally:
                release.set()
                holding.join(10)

            # A new scan: refused at the deadline, unacknowledged, and still written once the lock is free.
            assert r_new.status_code == 504, r_new.text
            assert new_s < DEADLINE_S + 1.5, f"new scan answered after {new_s:.1f} s"
            for _ in range(20):
                r = _post(client, fresh, "locked-2")
                if r.status_code == 200:
                    break
                time.sleep(0.2)
            # The re-send may be recorded before the unacknowledged first attempt's write (which then finds
            # it): either way one record, which every later re-send names.
            assert r.status_code == 200, r.text
            again = _post(client, fresh, "locked-2")
            assert again.status_code == 200 and again.json()["duplicate"] is True, again.text
            assert again.json()["id"] == r.json()["id"] and again.json()["bag_views"] == 1, again.text

            # A re-send of a recorded scan: must not wait for the lock past the deadline, nor become a 500.
            assert r_dup.status_code in (200, 503, 504), f"{r_dup.status_code} {r_dup.text[:200]}"
            assert dup_s < DEADLINE_S + 1.5, (
                f"the re-sent scan was answered after {dup_s:.1f} s (deadline {DEADLINE_S:g} s): it waited for the "
                "write lock to enqueue an outbox item that already exists")
            if r_dup.status_code == 200:
                assert r_dup.json()["id"] == first_id and r_dup.json()["duplicate"] is True
