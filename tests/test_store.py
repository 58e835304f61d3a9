"""edge.store: images on disk, scans, reviews, the outbox and migrations, on SQLite and on PostgreSQL
(a throwaway server, see pg_fixtures.py), including two processes working on one database at once."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import CheckConstraint, inspect, text

from edge import images as images_module
from edge.images import ImageFiles
from edge.migrations import current_revision, head_revision
from edge.store import OUTBOX_MAX_BACKOFF_S, Store
from pg_fixtures import db_url, pg_server  # noqa: F401 - fixtures

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    """A settable clock for the store."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_url: str, tmp_path: Path, clock: Clock):  # noqa: F811 - db_url is the imported fixture
    store = Store(db_url, tmp_path / "data", clock=clock)
    store.migrate()
    yield store
    store.close()


def scan_kwargs(**overrides: object) -> dict:
    values = dict(
        station="lane-1", lane="1", bag_id="bag-0001", view="top", image_sha256="a" * 64, media_type="image/png",
        width=640, height=480, result={"detections": [{"cls": "ivory", "score": 0.91, "box_xyxy": [1, 2, 30, 40]}]},
        model_name="xs-det-s", model_version="1.0.0", alarm=True, alarm_classes=["ivory"],
    )
    values.update(overrides)
    return values


# -- images --------------------------------------------------------------------------------------------


def test_put_image_is_content_addressed_durable_and_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = Store(f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "data")
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    data = b"\x89PNG fake image bytes"
    sha = store.put_image(data, suffix=".PNG")

    assert sha == hashlib.sha256(data).hexdigest()
    path = tmp_path / "data" / "images" / sha[:2] / sha[2:4] / f"{sha}.png"
    assert path.read_bytes() == data
    # file, its directory, and the directories created above it
    assert len(fsyncs) >= 2
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert store.read_image(sha) == (data, "image/png")
    assert store.load_image(sha) == (data, path)

    fsyncs.clear()
    mtime_ns = path.stat().st_mtime_ns
    assert store.put_image(data, suffix="png") == sha  # same bytes again: nothing written...
    assert path.stat().st_mtime_ns == mtime_ns
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert len(fsyncs) == 1  # ...but its directory entry is made durable before we return

    other = store.put_image(b"other bytes", suffix="jpg")
    assert other != sha and store.read_image(other) == (b"other bytes", "image/jpeg")
    store.close()


def test_make_tree_makes_every_image_directory_durably_so_a_put_makes_none(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "data" / "images"
    fsynced: list[str] = []
    real_fsync_dir = images_module._fsync_dir
    monkeypatch.setattr(images_module, "_fsync_dir", lambda path: (fsynced.append(str(path)), real_fsync_dir(path))[1])
    files = ImageFiles(root)
    files.make_tree()
    tops = [p for p in root.iterdir() if p.is_dir()]
    assert len(tops) == 256 and all(len(list(t.iterdir())) == 256 for t in tops[:8])
    assert {str(t) for t in tops} <= set(fsynced) and str(root) in fsynced  # each new entry's parent
    files.make_tree()  # again: nothing to do, nothing fails

    fsynced.clear()
    data = b"a scan after the tree was made"
    sha = files.put(data, suffix="png")
    assert (root / sha[:2] / sha[2:4] / f"{sha}.png").read_bytes() == data
    assert fsynced == [str(root / sha[:2] / sha[2:4])]  # its own directory only: no directory made


def test_read_image_missing_or_malformed_is_keyerror_and_bad_suffix_is_refused(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "data")
    with pytest.raises(KeyError):
        store.read_image("0" * 64)
    with pytest.raises(KeyError):
        store.read_image("../../etc/passwd")
    for suffix in ("../x", "p/ng", "", "png\n"):
        with pytest.raises(ValueError):
            store.put_image(b"x", suffix=suffix)
    with pytest.raises(ValueError):
        store.put_image(b"", suffix="png")
    store.close()


def test_put_image_with_the_callers_digest_stores_under_it_and_refuses_a_malformed_one(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "data")
    data = b"scan bytes hashed by the caller"
    sha = hashlib.sha256(data).hexdigest()
    assert store.put_image(data, suffix="png", sha256=sha) == sha
    assert store.read_image(sha) == (data, "image/png")
    for bad in ("../" + sha[3:], sha.upper(), sha[:-1], "", sha + "\n"):
        with pytest.raises(ValueError, match="sha256"):
            store.put_image(b"other", suffix="png", sha256=bad)
    assert not list((tmp_path / "data" / "images").rglob("*.tmp"))
    store.close()


# -- migrations ----------------------------------------------------------------------------------------


def test_migrate_twice_is_a_noop_and_schema_matches_models(store: Store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from edge.db import Base

    record, _ = store.record_scan(**scan_kwargs())
    store.migrate()
    assert current_revision(store.engine) == head_revision()
    assert store.get_scan(record.id) == record
    with store.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
        # Autogenerate does not compare CHECK constraints: their names, as the models' convention makes them.
        inspector = inspect(connection)
        checks = {(t, c["name"]) for t in Base.metadata.tables for c in inspector.get_check_constraints(t)}
    assert diff == []
    expected = {(t.name, c.name) for t in Base.metadata.sorted_tables for c in t.constraints
                if isinstance(c, CheckConstraint)}
    assert checks == expected and len(expected) == 3


def test_sqlite_connection_settings(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'sub' / 'x.db'}", tmp_path)
    with store.engine.connect() as connection:
        pragmas = {name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                   for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")}
    assert pragmas == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 30000}
    store.close()


def test_switch_to_wal_retries_only_while_the_database_is_locked(monkeypatch: pytest.MonkeyPatch):
    """SQLite refuses a journal-mode change at once ("database is locked", no busy wait) while another
    connection opening the same new file holds its lock: the switch is retried until the busy timeout."""
    import sqlite3

    from edge import db

    class Cursor:
        def __init__(self, failures: int, message: str = "database is locked") -> None:
            self.failures, self.message, self.calls = failures, message, 0

        def execute(self, sql: str) -> None:
            assert sql == "PRAGMA journal_mode = WAL"
            self.calls += 1
            if self.calls <= self.failures:
                raise sqlite3.OperationalError(self.message)

    busy = Cursor(failures=3)
    db._switch_to_wal(busy)
    assert busy.calls == 4
    other = Cursor(failures=1, message="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        db._switch_to_wal(other)
    assert other.calls == 1  # any other error is not retried
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 50)
    stuck = Cursor(failures=10**9)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        db._switch_to_wal(stuck)
    assert 3 <= stuck.calls < 30


# -- scans ---------------------------------------------------------------------------------------------


def test_record_scan_is_idempotent(store: Store, clock: Clock):
    first, created = store.record_scan(**scan_kwargs())
    assert created and first.id > 0 and first.created_at == T0
    assert (first.reviewed, first.verdict, first.alarm_classes) == (False, None, ["ivory"])
    assert first.result == scan_kwargs()["result"]

    clock.advance(5)
    again, created_again = store.record_scan(**scan_kwargs(result={"different": True}, alarm=False))
    assert not created_again
    assert again == first  # the first write wins
    assert store.count_scans() == 1


def test_same_image_from_two_stations_or_bags_is_two_scans(store: Store):
    a, _ = store.record_scan(**scan_kwargs(station="lane-1"))
    b, created = store.record_scan(**scan_kwargs(station="lane-2"))
    c, created_c = store.record_scan(**scan_kwargs(station="lane-1", bag_id="bag-0002"))
    assert created and created_c and len({a.id, b.id, c.id}) == 3
    assert store.count_scans() == 3


def test_get_list_and_bag_scans(store: Store):
    ids = []
    for i in range(6):
        record, _ = store.record_scan(**scan_kwargs(bag_id=f"bag-{i // 2}", image_sha256=f"{i:064x}", alarm=i % 2 == 0,
                                                    alarm_classes=["ivory"] if i % 2 == 0 else []))
        ids.append(record.id)
    assert store.get_scan(ids[3]).image_sha256 == f"{3:064x}"
    assert store.get_scan(10_000) is None
    assert [s.id for s in store.list_scans()] == ids[::-1]
    assert [s.id for s in store.list_scans(limit=2, offset=1)] == ids[::-1][1:3]
    assert [s.id for s in store.list_scans(alarm=True)] == [ids[4], ids[2], ids[0]]
    assert [s.id for s in store.list_scans(alarm=False)] == [ids[5], ids[3], ids[1]]
    assert [s.id for s in store.bag_scans("lane-1", "bag-1")] == [ids[2], ids[3]]
    assert store.bag_scans("lane-2", "bag-1") == []

    store.add_review(ids[2], user="sup", verdict="confirmed")
    assert [s.id for s in store.list_scans(alarm=True, reviewed=False)] == [ids[4], ids[0]]
    assert [s.id for s in store.list_scans(reviewed=True)] == [ids[2]]


def test_record_scan_in_bag_returns_the_bags_views_from_the_same_transaction(store: Store):
    top, created, views = store.record_scan_in_bag(**scan_kwargs(view="top", image_sha256="a" * 64))
    assert created and views == [top]
    side, created, views = store.record_scan_in_bag(**scan_kwargs(view="side", image_sha256="b" * 64))
    assert created and views == [top, side]
    store.add_review(top.id, user="sup", verdict="cleared")
    # A re-send: the stored record, not created, and the views as they are now (the review included).
    again, created, views = store.record_scan_in_bag(**scan_kwargs(view="top", image_sha256="a" * 64, alarm=False))
    assert not created and again.id == top.id and again.verdict == "cleared"
    assert views == [store.get_scan(top.id), store.get_scan(side.id)] == store.bag_scans("lane-1", "bag-0001")
    # Another bag's views are its own.
    other, _, views = store.record_scan_in_bag(**scan_kwargs(bag_id="bag-0002"))
    assert views == [other]


def _screened(bag_id: str, view: str, sha: str, names: tuple[str, ...], scores: list[float], class_ids: list[int],
              version: str) -> dict:
    """`record_scan` arguments for a view screened by a model with class map `names` (its result as the
    service stores it)."""
    import numpy as np

    from edge.ingest import result_document
    from vision.decide import DecisionPolicy, decide
    from vision.postprocess import Detections

    policy = DecisionPolicy(class_names=names, default_threshold=0.5)
    dets = Detections.from_arrays(np.tile(np.array([[1, 2, 30, 40]], np.float32), (len(scores), 1)),
                                  np.array(scores, np.float32), np.array(class_ids, np.int64))
    decision = decide(dets, names, policy)
    result = result_document(dets, decision, class_names=names, thresholds=policy.threshold_array(), scan_info={},
                             timings={}, model={"name": "xs", "version": version})
    return scan_kwargs(bag_id=bag_id, view=view, image_sha256=sha, result=result, model_version=version,
                       alarm=decision.alarm, alarm_classes=list(decision.alarm_classes))


def test_a_bags_fused_decision_keeps_class_order_and_every_alarmed_view(store: Store):
    """On both backends (PostgreSQL's JSONB does not keep key order): the fused alarm classes come in the
    model's class order; and a view screened under another class map (a model update between views) still
    alarms the bag, re-sent or not."""
    from edge.ingest import fuse_bag

    names = ("drug_package", "cannabis", "cash_bundle", "tobacco", "medicine_pills", "ivory", "pangolin_scales")
    store.record_scan(**_screened("b1", "top", "c" * 64, names, [0.9, 0.8], [5, 0], "1"))
    bag = fuse_bag(store.bag_scans("lane-1", "b1"))
    assert bag.alarm_classes == ("drug_package", "ivory") and list(bag.max_score_per_class) == list(names)

    old = names[:3]
    store.record_scan(**_screened("b2", "top", "d" * 64, old, [0.9], [2], "1"))  # cash alarm, old model
    _, _, views = store.record_scan_in_bag(**_screened("b2", "side", "e" * 64, names, [0.2], [0], "2"))  # clear
    assert len(views) == 2
    bag = fuse_bag(views)
    assert bag.alarm and bag.alarm_classes == ("cash_bundle",)
    assert bag.max_score_per_class["cash_bundle"] == pytest.approx(0.9)


def test_views_of_one_bag_recorded_at_once_see_each_other(store: Store):
    """Two views of one bag recorded by two threads at the same moment: the one recorded second sees both
    (PostgreSQL: the bag's advisory lock; SQLite: BEGIN IMMEDIATE). Without the lock, on PostgreSQL both
    would insert, then each read only its own view (READ COMMITTED), and the clear view's answer would
    clear a bag that alarmed. The barrier holds each transaction after its INSERT until the other has
    inserted too, or for a second when the other cannot (it waits for the lock)."""
    import threading

    from sqlalchemy import event

    barrier = threading.Barrier(2, timeout=1.0)

    @event.listens_for(store.engine, "after_cursor_execute")
    def _after_insert(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("INSERT INTO SCANS"):
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass

    answers: dict[str, list] = {}

    def record(view: str, sha: str, alarm: bool) -> None:
        _record, _created, answers[view] = store.record_scan_in_bag(
            **scan_kwargs(view=view, image_sha256=sha, alarm=alarm, alarm_classes=["ivory"] if alarm else []))

    threads = [threading.Thread(target=record, args=("top", "a" * 64, True)),
               threading.Thread(target=record, args=("side", "b" * 64, False))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    event.remove(store.engine, "after_cursor_execute", _after_insert)
    assert sorted(len(views) for views in answers.values()) == [1, 2]


def test_an_outbox_item_is_added_in_the_transaction_that_records_its_scan(store: Store):
    """`record_scan_in_bag(outbox=...)`: the item is added with the new scan, atomically (if adding it
    fails, the scan is not recorded either), and not again for a re-send."""
    from edge.store import OutboxEntry

    def entry(record):  # noqa: ANN001, ANN202
        return OutboxEntry("webhook", {"scan_id": record.id}, dedupe_key=f"webhook:{record.id}")

    def failing(record):  # noqa: ANN001, ANN202
        raise RuntimeError("the outbox could not be written")

    with pytest.raises(RuntimeError):
        store.record_scan_in_bag(**scan_kwargs(), outbox=failing)
    assert store.count_scans() == 0 and store.outbox_items() == []
    record, created, _ = store.record_scan_in_bag(**scan_kwargs(), outbox=entry)
    assert created
    assert [(i.dedupe_key, i.payload) for i in store.outbox_items()] == [(f"webhook:{record.id}", {"scan_id": record.id})]
    _, created, _ = store.record_scan_in_bag(**scan_kwargs(), outbox=failing)  # a re-send: not called
    assert not created and len(store.outbox_items()) == 1
    _, _, _ = store.record_scan_in_bag(**scan_kwargs(image_sha256="f" * 64, alarm=False, alarm_classes=[]),
                                       outbox=lambda record: None)
    assert store.count_scans() == 2 and len(store.outbox_items()) == 1


def test_record_scan_validates_fields_the_same_on_both_backends(store: Store):
    with pytest.raises(ValueError):
        store.record_scan(**scan_kwargs(station=""))
    with pytest.raises(ValueError):
        store.record_scan(**scan_kwargs(bag_id="x" * 129))
    with pytest.raises(ValueError):
        store.record_scan(**scan_kwargs(width=0))
    with pytest.raises(ValueError):
        store.record_scan(**scan_kwargs(image_sha256="../../etc/passwd"))
    with pytest.raises(ValueError):  # NaN is not JSON
        store.record_scan(**scan_kwargs(result={"score": float("nan")}))
    assert store.count_scans() == 0


# -- reviews -------------------------------------------------------------------------------------------


def test_reviews_latest_verdict_wins_and_trail_is_kept(store: Store, clock: Clock):
    scan, _ = store.record_scan(**scan_kwargs())
    first = store.add_review(scan.id, user="alice", verdict="confirmed", note="tusk section under clothes")
    clock.advance(60)
    second = store.add_review(scan.id, user="bob", verdict="cleared")
    assert (first.user, first.verdict, first.scan_id) == ("alice", "confirmed", scan.id)
    assert first.note == "tusk section under clothes"
    assert second.created_at == T0 + timedelta(seconds=60)
    assert store.reviews(scan.id) == [first, second]
    got = store.get_scan(scan.id)
    assert got.reviewed and got.verdict == "cleared"

    with pytest.raises(KeyError):
        store.add_review(9999, user="alice", verdict="confirmed")
    with pytest.raises(ValueError):
        store.add_review(scan.id, user="alice", verdict="maybe")  # type: ignore[arg-type]
    assert len(store.reviews(scan.id)) == 2


def test_reviewed_scans_can_be_listed_most_recently_reviewed_first(store: Store):
    ids = [store.record_scan(**scan_kwargs(bag_id=f"bag-{i}", image_sha256=f"{i:064x}"))[0].id for i in range(4)]
    for i in (2, 0, 3):
        store.add_review(ids[i], user="alice", verdict="cleared")
    store.add_review(ids[2], user="bob", verdict="confirmed")  # reviewed again: most recent
    assert [s.id for s in store.list_scans(reviewed=True, latest_review_first=True)] == [ids[2], ids[3], ids[0]]
    assert [s.id for s in store.list_scans(latest_review_first=True)] == [ids[2], ids[3], ids[0], ids[1]]
    assert [s.id for s in store.list_scans(reviewed=True)] == [ids[3], ids[2], ids[0]]  # by scan, newest first
    assert [s.id for s in store.list_scans(reviewed=True, latest_review_first=True, limit=1, offset=1)] == [ids[3]]


def test_a_repeated_review_is_recorded_once_and_a_different_one_is_kept(store: Store):
    scan, _ = store.record_scan(**scan_kwargs())
    first, added = store.add_review_once(scan.id, user="alice", verdict="confirmed", note="tusks")
    assert added
    assert store.add_review_once(scan.id, user="alice", verdict="confirmed", note="tusks") == (first, False)
    _, added = store.add_review_once(scan.id, user="alice", verdict="cleared", note="tusks")
    assert added
    _, added = store.add_review_once(scan.id, user="alice", verdict="confirmed", note="tusks")  # changed back
    assert added
    assert [r.verdict for r in store.reviews(scan.id)] == ["confirmed", "cleared", "confirmed"]
    with pytest.raises(KeyError):
        store.add_review_once(9999, user="alice", verdict="confirmed")


def test_a_review_sent_to_two_service_processes_at_once_is_recorded_once(db_url: str, tmp_path: Path):  # noqa: F811
    """Two stores (two connection pools, as two processes have) record the same verdict on the same scans at
    the same moment: each scan ends with one review."""
    stores = [Store(db_url, tmp_path / "data") for _ in range(2)]
    stores[0].migrate()
    ids = [stores[0].record_scan(**scan_kwargs(bag_id=f"bag-{i}", image_sha256=f"{i:064x}"))[0].id for i in range(15)]
    barrier = threading.Barrier(2)
    added: list[bool] = []

    def submit(store: Store) -> None:
        for scan_id in ids:
            barrier.wait()
            added.append(store.add_review_once(scan_id, user="sup", verdict="confirmed", note="")[1])

    threads = [threading.Thread(target=submit, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    check = Store(db_url, tmp_path / "data")
    assert [len(check.reviews(i)) for i in ids] == [1] * len(ids)
    assert sum(added) == len(ids)
    check.close()


# -- outbox --------------------------------------------------------------------------------------------


def test_enqueue_dedupes_and_claim_leases(store: Store, clock: Clock):
    assert store.enqueue("webhook", {"scan_id": 1}, dedupe_key="webhook:1")
    assert not store.enqueue("webhook", {"scan_id": 1, "again": True}, dedupe_key="webhook:1")
    assert store.enqueue("webhook", {"scan_id": 2}, dedupe_key="webhook:2")
    assert [i.payload for i in store.outbox_items()] == [{"scan_id": 1}, {"scan_id": 2}]

    claimed = store.claim_outbox(worker="w1", limit=1, lease_s=30)
    assert [i.dedupe_key for i in claimed] == ["webhook:1"]
    assert claimed[0].leased_by == "w1" and claimed[0].next_attempt_at == T0 + timedelta(seconds=30)
    assert [i.dedupe_key for i in store.claim_outbox(worker="w2")] == ["webhook:2"]
    assert store.claim_outbox(worker="w2") == []  # both leased

    clock.advance(31)  # w1 died: its lease ran out, the item is due again
    assert [i.dedupe_key for i in store.claim_outbox(worker="w2")] == ["webhook:1", "webhook:2"]
    store.outbox_done(claimed[0].id)
    done = store.outbox_items(status="done")
    assert [i.id for i in done] == [claimed[0].id] and done[0].done_at == clock.now
    clock.advance(3600)
    assert [i.dedupe_key for i in store.claim_outbox(worker="w3")] == ["webhook:2"]  # done is never due
    assert not store.enqueue("webhook", {}, dedupe_key="webhook:1")  # a delivered key stays taken
    with pytest.raises(KeyError):
        store.outbox_done(12345)


def test_outbox_backoff_and_dead_letter(db_url: str, tmp_path: Path, clock: Clock):  # noqa: F811
    store = Store(db_url, tmp_path, clock=clock, outbox_max_attempts=4)
    store.migrate()
    store.enqueue("webhook", {"scan_id": 7}, dedupe_key="webhook:7")
    for attempt in range(1, 4):
        (item,) = store.claim_outbox(worker="w")
        store.outbox_failed(item.id, f"HTTP 503 #{attempt}")
        (item,) = store.outbox_items()
        delay_s = (item.next_attempt_at - clock.now).total_seconds()
        assert item.status == "pending" and item.attempts == attempt and item.last_error == f"HTTP 503 #{attempt}"
        assert 0.8 * 2**attempt - 1e-3 <= delay_s <= 2**attempt + 1e-3  # 2, 4, 8 s less jitter
        assert store.claim_outbox(worker="w") == []  # not due before the delay
        clock.advance(delay_s)
    (item,) = store.claim_outbox(worker="w")
    store.outbox_failed(item.id, "HTTP 503 #4")
    (item,) = store.outbox_items()
    assert item.status == "dead" and item.attempts == 4
    clock.advance(10 * OUTBOX_MAX_BACKOFF_S)
    assert store.claim_outbox(worker="w") == []
    store.outbox_failed(item.id, "late report")  # not pending any more: ignored
    assert store.outbox_items()[0].attempts == 4
    store.close()


def test_a_failure_reported_after_the_lease_ran_out_leaves_the_new_holders_lease(store: Store, clock: Clock):
    """Worker A's lease runs out, B claims the item; A's late failure report (given its claim) is dropped,
    so the item stays B's until B's lease ends and no third worker gets it meanwhile."""
    store.enqueue("webhook", {"scan_id": 1}, dedupe_key="webhook:1")
    (a,) = store.claim_outbox(worker="A", lease_s=30)
    clock.advance(31)
    (b,) = store.claim_outbox(worker="B", lease_s=30)
    assert b.id == a.id
    assert store.outbox_failed(a.id, "A: read timeout", claim=a) is False
    (item,) = store.outbox_items()
    assert (item.attempts, item.leased_by, item.next_attempt_at) == (2, "B", b.next_attempt_at)  # two claims
    clock.advance(5)
    assert store.claim_outbox(worker="C", lease_s=30) == []
    # The same worker's report of an earlier round is stale too, once it has claimed the item again.
    clock.advance(26)
    (a2,) = store.claim_outbox(worker="A", lease_s=30)
    assert store.outbox_failed(a.id, "A: the first round's late report", claim=a) is False
    assert store.outbox_failed(a2.id, "HTTP 503", claim=a2) is True
    (item,) = store.outbox_items()
    assert item.attempts == 3 and item.leased_by is None and item.last_error == "HTTP 503"


def test_an_item_whose_claims_all_run_out_unreported_ends_dead(db_url: str, tmp_path: Path, clock: Clock):  # noqa: F811
    """A delivery that stops its worker each time (nothing reported, the lease runs out) is not retried
    forever: every claim counts as an attempt, and after the last one it is marked dead."""
    store = Store(db_url, tmp_path, clock=clock, outbox_max_attempts=3)
    store.migrate()
    store.enqueue("webhook", {"scan_id": 9}, dedupe_key="webhook:9")
    for attempt in range(1, 4):
        (item,) = store.claim_outbox(worker=f"w{attempt}", lease_s=30)
        assert item.attempts == attempt
        clock.advance(31)  # the worker died mid-delivery
    assert store.claim_outbox(worker="w4", lease_s=30) == []
    (item,) = store.outbox_items()
    assert item.status == "dead" and item.attempts == 3 and item.leased_by is None
    assert "no outcome was reported" in (item.last_error or "")
    store.close()


def test_a_released_claim_is_due_at_once_and_not_counted(store: Store, clock: Clock):
    store.enqueue("webhook", {"scan_id": 1}, dedupe_key="webhook:1")
    (a,) = store.claim_outbox(worker="A", lease_s=30)
    assert store.outbox_release(a.id, claim=a) is True
    (item,) = store.outbox_items()
    assert (item.attempts, item.leased_by, item.next_attempt_at) == (0, None, clock.now)
    (b,) = store.claim_outbox(worker="B", lease_s=30)  # due again without waiting for A's lease
    assert store.outbox_release(a.id, claim=a) is False  # A's claim is over: B's lease stays
    assert store.outbox_items()[0].leased_by == "B" and store.claim_outbox(worker="C") == []
    store.outbox_done(b.id)
    assert store.outbox_release(b.id, claim=b) is False  # delivered: nothing to give back
    with pytest.raises(KeyError):
        store.outbox_release(12345, claim=b)


def test_postgres_outbox_leases_follow_the_database_clock(db_url: str, tmp_path: Path,  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch):
    """Two hosts an hour apart share the outbox: the lease one grants is not over for the other, because
    both read the time from PostgreSQL, and an item is due at once whichever host added it."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serves one host, whose clock is the store's")
    import edge.store as store_module

    real_now = datetime.now(timezone.utc)
    skew = {"behind": timedelta(hours=-1), "ahead": timedelta(hours=1)}
    monkeypatch.setattr(store_module, "_utc_now", lambda: datetime.now(timezone.utc) + skew["now"])
    skew["now"] = skew["ahead"]
    store = Store(db_url, tmp_path)
    store.migrate()
    store.enqueue("webhook", {"scan_id": 1}, dedupe_key="webhook:1")  # added by the host an hour ahead
    skew["now"] = skew["behind"]
    (claimed,) = store.claim_outbox(worker="behind", lease_s=30)  # due for the host an hour behind too
    lease_left_s = (claimed.next_attempt_at - real_now).total_seconds()
    assert 25 <= lease_left_s <= 60, lease_left_s  # 30 s from the database's now, not the host's
    skew["now"] = skew["ahead"]
    assert store.claim_outbox(worker="ahead", lease_s=30) == []  # the lease is not over for anyone
    assert store.outbox_failed(claimed.id, "HTTP 503", claim=claimed) is True
    (item,) = store.outbox_items()
    retry_in_s = (item.next_attempt_at - datetime.now(timezone.utc)).total_seconds()
    assert 0 < retry_in_s <= 2.5, retry_in_s  # backoff of 2 s less jitter, from the database's now
    store.close()


def test_outbox_backoff_is_capped(db_url: str, tmp_path: Path, clock: Clock):  # noqa: F811
    store = Store(db_url, tmp_path, clock=clock, outbox_max_attempts=20)
    store.migrate()
    store.enqueue("webhook", {}, dedupe_key="k")
    delays_s = []
    for _ in range(10):
        (item,) = store.claim_outbox(worker="w", lease_s=1)
        store.outbox_failed(item.id, "down")
        (item,) = store.outbox_items()
        delays_s.append((item.next_attempt_at - clock.now).total_seconds())
        clock.now = item.next_attempt_at
    assert item.attempts == 10 and item.status == "pending"
    # 2**9 = 512 s and 2**10 = 1024 s without the cap
    assert all(0.8 * OUTBOX_MAX_BACKOFF_S - 1e-3 <= d <= OUTBOX_MAX_BACKOFF_S + 1e-3 for d in delays_s[8:]), delays_s
    store.close()


def test_default_dead_letter_after_ten_failures(store: Store, clock: Clock):
    store.enqueue("export", {"scan_id": 1}, dedupe_key="export:1")
    for attempt in range(1, 11):
        (item,) = store.claim_outbox(worker="w")
        store.outbox_failed(item.id, "refused")
        (item,) = store.outbox_items()
        assert item.status == ("dead" if attempt == 10 else "pending")
        clock.now = max(clock.now, item.next_attempt_at)
    assert store.claim_outbox(worker="w") == [] and store.outbox_items(status="dead") == [item]


def test_skip_locked_claims_pass_over_rows_another_transaction_holds(store: Store):
    if store.engine.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite claims are serialised by BEGIN IMMEDIATE")
    for i in range(3):
        store.enqueue("webhook", {"i": i}, dedupe_key=f"k{i}")
    first_id = store.outbox_items()[0].id
    with store.engine.connect() as other:
        with other.begin():  # another worker is in the middle of claiming the first item
            other.execute(text("SELECT id FROM outbox WHERE id = :id FOR UPDATE"), {"id": first_id})
            claimed = store.claim_outbox(worker="w", limit=10)  # must neither block nor take it
            assert [i.payload["i"] for i in claimed] == [1, 2]
    assert [i.payload["i"] for i in store.claim_outbox(worker="w")] == [0]


# -- two processes at once -----------------------------------------------------------------------------

N_SCANS = 40
N_ITEMS = 60


def _worker(db_url: str, data_dir: str, name: str, barrier, results) -> None:  # noqa: F811 - a plain argument
    """One service process: migrate, record the same scans, enqueue the same items, drain the outbox."""
    try:
        store = Store(db_url, Path(data_dir))
        barrier.wait()
        store.migrate()  # both at once on an empty database
        barrier.wait()
        recorded = []
        for i in range(N_SCANS):
            record, created = store.record_scan(**scan_kwargs(bag_id=f"bag-{i}", image_sha256=f"{i:064x}"))
            recorded.append((i, record.id, created))
        enqueued = sum(store.enqueue("webhook", {"i": i}, dedupe_key=f"webhook:{i}") for i in range(N_ITEMS))
        barrier.wait()
        claimed: list[int] = []
        while batch := store.claim_outbox(worker=name, limit=3):
            for item in batch:
                store.outbox_done(item.id)
                claimed.append(item.id)
        store.close()
        results.put((name, recorded, enqueued, claimed, None))
    except Exception as exc:  # noqa: BLE001 - report to the parent instead of dying silently
        barrier.abort()
        results.put((name, [], 0, [], repr(exc)))


@pytest.mark.slow  # spawns two interpreters: a few seconds
def test_two_processes_share_one_database(db_url: str, tmp_path: Path):  # noqa: F811
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2, timeout=120)
    results = context.Queue()
    processes = [context.Process(target=_worker, args=(db_url, str(tmp_path), name, barrier, results))
                 for name in ("p1", "p2")]
    for process in processes:
        process.start()
    outcomes = {}
    for _ in processes:
        name, recorded, enqueued, claimed, error = results.get(timeout=180)
        outcomes[name] = (recorded, enqueued, claimed, error)
    for process in processes:
        process.join(timeout=30)
    assert all(error is None for *_, error in outcomes.values()), outcomes

    store = Store(db_url, tmp_path)
    assert store.count_scans() == N_SCANS
    (rec1, enq1, claim1, _), (rec2, enq2, claim2, _) = outcomes.values()
    for (i, id1, created1), (_, id2, created2) in zip(rec1, rec2):
        assert id1 == id2, f"scan {i} got two ids"
        assert created1 != created2, f"scan {i}: exactly one process creates it"
    assert enq1 + enq2 == N_ITEMS
    assert not set(claim1) & set(claim2), "an outbox item was claimed by both processes"
    items = store.outbox_items()
    assert sorted(claim1 + claim2) == [i.id for i in items] and len(items) == N_ITEMS
    assert all(i.status == "done" for i in items)
    store.close()
