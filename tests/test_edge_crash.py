"""Crash and multi-process tests of the lane service, with real `xscreen serve` processes.

1. Kill -9 under load (SQLite and PostgreSQL): every scan the service acknowledged survives the crash (record
   and image bytes), and re-sending every scan, acknowledged or not, is idempotent (acknowledged ones get
   their id back with `duplicate: true`; no scan is stored twice).
2. Two service processes on one PostgreSQL database and one data directory: both take scans concurrently,
   the same scan sent to both at once becomes one record, ids are unique, and each alarm has exactly one
   webhook outbox item (the webhook points at a closed loopback port, so items stay pending).

Slow (each starts service processes, several seconds each); the PostgreSQL cases skip without server
binaries (see pg_fixtures).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edge_model import tiny_package
from edge_process import add_admin, add_station, check_shared_store, new_server, server_processes
from edge_support import free_port, png_bytes
from pg_fixtures import db_url, pg_server  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

SENDER_THREADS = 3
MAX_SCANS_PER_THREAD = 150  # bounds the load even if the kill never comes
ACKS_BEFORE_KILL = 24  # kill once this many scans were acknowledged (mid-load: senders are still sending)
LOAD_TIMEOUT_S = 90.0
REQUEST_TIMEOUT_S = 15.0


@dataclass
class Attempt:
    """One scan a sender tried to deliver, and what (if anything) acknowledged it."""

    bag_id: str
    data: bytes
    scan_id: int | None = None
    error: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _post(client: httpx.Client, data: bytes, bag_id: str, station: str = "st1") -> httpx.Response:
    return client.post("/v1/scans", files={"image": ("scan.png", data, "image/png")},
                       data={"station": station, "lane": "1", "bag_id": bag_id, "view": "top"})


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=REQUEST_TIMEOUT_S)


def _scan_image(k: int) -> bytes:
    # Small, distinct PNGs: the test is about durability, not the model.
    return png_bytes(seed=10_000 + k, hw=(40, 56))


def _send_until_stopped(url: str, key: str, worker: int, stop: threading.Event, out: list[Attempt],
                        lock: threading.Lock) -> None:
    """Send distinct scans one after another until `stop` (or the bound); record each attempt's outcome."""
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    with _client(url, key) as client:
        for i in range(MAX_SCANS_PER_THREAD):
            if stop.is_set() or time.monotonic() > deadline:
                return
            attempt = Attempt(bag_id=f"bag-{worker}-{i}", data=_scan_image(worker * 1000 + i))
            with lock:
                out.append(attempt)
            try:
                r = _post(client, attempt.data, attempt.bag_id)
            except httpx.HTTPError as exc:  # the server died under the request, or is gone
                attempt.error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.05)
                continue
            if r.status_code == 200 and isinstance(r.json().get("id"), int):
                attempt.scan_id = r.json()["id"]
            else:
                attempt.error = f"HTTP {r.status_code}: {r.text[:200]}"


def _total_scans(client: httpx.Client) -> int:
    r = client.get("/v1/scans", params={"limit": 1})
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def test_acknowledged_scans_survive_kill_9_and_resends_are_idempotent(db_url: str, tmp_path: Path):  # noqa: F811
    data_dir, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    station_key = add_station("st1", db_url=db_url, data_dir=data_dir, workdir=work)
    admin_key = add_admin("adm", db_url=db_url, data_dir=data_dir, workdir=work)
    server = new_server(tiny_package(), db_url, data_dir, work)

    with server_processes(server):
        attempts: list[Attempt] = []
        lock, stop = threading.Lock(), threading.Event()
        threads = [threading.Thread(target=_send_until_stopped, args=(server.url, station_key, w, stop, attempts, lock),
                                    name=f"sender-{w}", daemon=True) for w in range(SENDER_THREADS)]
        try:
            for t in threads:
                t.start()
            deadline = time.monotonic() + LOAD_TIMEOUT_S
            while time.monotonic() < deadline:
                with lock:
                    acked = sum(a.scan_id is not None for a in attempts)
                if acked >= ACKS_BEFORE_KILL or not any(t.is_alive() for t in threads):
                    break
                time.sleep(0.01)
            server.kill()  # mid-load: each sender has a request in flight or about to be
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=REQUEST_TIMEOUT_S + 5)
        assert not any(t.is_alive() for t in threads), "a sender thread did not stop"

        acknowledged = [a for a in attempts if a.scan_id is not None]
        unacknowledged = [a for a in attempts if a.scan_id is None]
        assert len(acknowledged) >= ACKS_BEFORE_KILL, f"only {len(acknowledged)} scans acknowledged before the kill"
        assert len({a.scan_id for a in acknowledged}) == len(acknowledged), "two scans got the same id"

        server.restart()
        with _client(server.url, admin_key) as admin, _client(server.url, station_key) as station:
            # Every acknowledged scan is stored, with the very bytes that were sent.
            for a in acknowledged:
                r = admin.get(f"/v1/scans/{a.scan_id}")
                assert r.status_code == 200, (a.bag_id, r.status_code, r.text)
                record = r.json()
                assert (record["bag_id"], record["station"], record["image_sha256"]) == (a.bag_id, "st1", a.sha256)
                image = admin.get(f"/v1/scans/{a.scan_id}/image")
                assert image.status_code == 200, image.text
                assert hashlib.sha256(image.content).hexdigest() == a.sha256, f"image of {a.bag_id} differs"

            stored_before = _total_scans(admin)
            assert len(acknowledged) <= stored_before <= len(attempts)

            # Re-send everything: acknowledged scans answer their id as duplicates; the others are stored
            # now (or were stored just before the kill and answer as duplicates) — each exactly once.
            for a in acknowledged:
                r = _post(station, a.data, a.bag_id)
                assert r.status_code == 200, r.text
                assert (r.json()["id"], r.json()["duplicate"]) == (a.scan_id, True), a.bag_id
            resent_ids: dict[str, int] = {}
            stored_unacknowledged = 0  # recorded before the kill, but the answer never arrived
            for a in unacknowledged:
                r = _post(station, a.data, a.bag_id)
                assert r.status_code == 200, r.text
                resent_ids[a.bag_id] = r.json()["id"]
                stored_unacknowledged += bool(r.json()["duplicate"])
                again = _post(station, a.data, a.bag_id)  # and a second re-send changes nothing
                assert (again.json()["id"], again.json()["duplicate"]) == (resent_ids[a.bag_id], True)

            print(f"{len(attempts)} sent, {len(acknowledged)} acknowledged before the kill; of the "
                  f"{len(unacknowledged)} others, {stored_unacknowledged} had been stored")
            all_ids = [a.scan_id for a in acknowledged] + list(resent_ids.values())
            assert len(set(all_ids)) == len(attempts), "a scan has two ids, or two scans share one"
            assert _total_scans(admin) == len(attempts), "a re-send stored a second row"


# ------------------------------------------------------------------------------ two processes, one database

UNIQUE_PER_THREAD = 12
SHARED_SCANS = 12


def test_two_service_processes_share_one_postgresql_database(pg_server, tmp_path: Path):  # noqa: F811
    url = pg_server.create_database()
    data_dir = tmp_path / "data"
    hook = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there: outbox items stay pending
    env = {"XSCREEN_WEBHOOK_URL": hook, "XSCREEN_OUTBOX_POLL_S": "0.2"}
    a = new_server(tiny_package(), url, data_dir, tmp_path / "a", name="a", env=env)
    b = new_server(tiny_package(), url, data_dir, tmp_path / "b", name="b", env=env)

    # Both start at once on an empty database: their migrations race too.
    with server_processes(a, b):
        station_key = add_station("st1", db_url=url, data_dir=data_dir, workdir=tmp_path)
        errors: list[str] = []
        unique: dict[str, tuple[bytes, int]] = {}  # bag → (image, id)
        shared: dict[str, dict[str, dict]] = {f"shared-{i}": {} for i in range(SHARED_SCANS)}  # bag → server → body
        lock = threading.Lock()
        barrier = threading.Barrier(2, timeout=REQUEST_TIMEOUT_S * 2)

        def send_unique(server_url: str, worker: int) -> None:
            with _client(server_url, station_key) as client:
                for i in range(UNIQUE_PER_THREAD):
                    bag, data = f"u-{worker}-{i}", _scan_image(worker * 1000 + i)
                    try:
                        r = _post(client, data, bag)
                    except httpx.HTTPError as exc:
                        errors.append(f"{bag}: {exc!r}")
                        continue
                    with lock:
                        if r.status_code != 200:
                            errors.append(f"{bag}: HTTP {r.status_code} {r.text[:200]}")
                        else:
                            unique[bag] = (data, r.json()["id"])

        def send_shared(server_url: str, name: str) -> None:
            # The same (station, bag, image) goes to both servers at the same moment.
            with _client(server_url, station_key) as client:
                for i, bag in enumerate(shared):
                    try:
                        barrier.wait()
                        r = _post(client, _scan_image(900_000 + i), bag)
                    except (httpx.HTTPError, threading.BrokenBarrierError) as exc:
                        errors.append(f"{bag}@{name}: {exc!r}")
                        barrier.abort()
                        return
                    with lock:
                        if r.status_code != 200:
                            errors.append(f"{bag}@{name}: HTTP {r.status_code} {r.text[:200]}")
                        else:
                            shared[bag][name] = r.json()

        threads = [threading.Thread(target=send_unique, args=(s.url, w), daemon=True)
                   for w, s in enumerate((a, b, a, b))]
        threads += [threading.Thread(target=send_shared, args=(s.url, s.name), daemon=True) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=LOAD_TIMEOUT_S)
        assert not any(t.is_alive() for t in threads), "a sender thread did not finish"
        assert errors == []

        assert len(unique) == 4 * UNIQUE_PER_THREAD
        for bag, answers in shared.items():
            assert set(answers) == {"a", "b"}, bag
            assert answers["a"]["id"] == answers["b"]["id"], f"{bag} got two ids"
            assert sorted([answers["a"]["duplicate"], answers["b"]["duplicate"]]) == [False, True], bag
        ids = [scan_id for _data, scan_id in unique.values()] + [v["a"]["id"] for v in shared.values()]
        assert len(set(ids)) == len(ids) == 4 * UNIQUE_PER_THREAD + SHARED_SCANS

        check_shared_store(url, data_dir, unique, len(ids))
