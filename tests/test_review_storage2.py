"""Second review of durable storage and multi-process correctness (edge.store, edge.db, edge.images,
edge.outbox, edge.migrations). Each test asserts the behaviour the design promises; it failed on the code
as reviewed."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

import httpx
import pytest
from sqlalchemy import CheckConstraint, inspect, text

from edge import images as images_module
from edge.db import Base
from edge.images import ImageFiles
from edge.outbox import WebhookSender
from edge.store import Store
from pg_fixtures import db_url, pg_server  # noqa: F401 - fixtures
from test_store import Clock, scan_kwargs


@pytest.fixture
def clock() -> Clock:
    return Clock()


# -- outbox: a receiver's answer holding a NUL byte (PostgreSQL) -----------------------------------------


def test_a_webhook_error_body_with_a_nul_byte_is_recorded_as_a_failed_attempt_on_postgresql(
    pg_server, tmp_path: Path  # noqa: F811
):
    """A webhook receiver that answers an error whose body holds a NUL byte (a binary error page, a
    crashed proxy) made `outbox_failed` raise on PostgreSQL (text cannot hold NUL): the round stopped with
    a DataError, the failure and its backoff were never recorded, and every later item of the round stayed
    leased, undelivered, until the lease ran out (minutes). SQLite stored the same error text."""
    store = Store(pg_server.create_database(), tmp_path / "data")
    store.migrate()
    try:
        store.enqueue("webhook", {"scan_id": 1}, dedupe_key="webhook:1")
        store.enqueue("webhook", {"scan_id": 2}, dedupe_key="webhook:2")

        async def receiver(request: httpx.Request) -> httpx.Response:
            if request.headers["Idempotency-Key"] == "webhook:1":
                return httpx.Response(502, content=b"bad gateway\x00\x01 binary junk")
            return httpx.Response(200)

        async def one_round() -> int:
            async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as client:
                sender = WebhookSender(store, "http://receiver/hook", timeout_s=1.0, poll_s=1.0, client=client)
                return await sender.run_once(client)

        assert asyncio.run(one_round()) == 2
        first, second = store.outbox_items()
        assert first.status == "pending" and first.leased_by is None and "HTTP 502" in (first.last_error or "")
        assert second.status == "done"
    finally:
        store.close()


# -- outbox: a service stopping in the middle of a round ------------------------------------------------


def test_a_stopping_sender_gives_back_the_items_of_its_round_it_never_sent(tmp_path: Path, clock: Clock):
    """When the service stops (a restart, a deploy) while its webhook sender is in a round, the items it
    claimed but had not started to send stayed leased for the whole lease (60 s + 10 x the timeout) and
    were charged an attempt: every alarm webhook queued behind the one in flight was held back by minutes,
    and an item caught in ten restarts ended dead without ever being sent. They should be given back
    (`Store.outbox_release`: due at once, not counted), as the sender does for an item whose lease is
    nearly over."""
    store = Store(f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "data", clock=clock)
    store.migrate()
    for i in range(3):
        store.enqueue("webhook", {"scan_id": i}, dedupe_key=f"webhook:{i}")

    async def main() -> None:
        in_flight = asyncio.Event()

        async def receiver(request: httpx.Request) -> httpx.Response:
            in_flight.set()
            await asyncio.sleep(30)  # the first delivery is under way when the service stops
            return httpx.Response(200)

        async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as client:
            sender = WebhookSender(store, "http://receiver/hook", timeout_s=5.0, poll_s=1.0, client=client)
            task = asyncio.create_task(sender.run())
            await asyncio.wait_for(in_flight.wait(), 5)
            task.cancel()  # what the lifespan does on shutdown (edge.app._stop_background)
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    _first, *never_sent = store.outbox_items()
    assert [(i.leased_by, i.attempts) for i in never_sent] == [(None, 0), (None, 0)]
    assert [i.dedupe_key for i in store.claim_outbox(worker="other:1")] == ["webhook:1", "webhook:2"]
    store.close()


# -- images: a new directory inside one another writer has just made --------------------------------------


def test_an_image_in_a_directory_made_inside_a_not_yet_durable_one_fsyncs_up_to_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Two scans stored at once (two threads of one service, or two processes on one data directory):
    the first makes `images/ab` and, before it fsyncs `images`, the second finds `ab` there, makes
    `ab/cd`, writes its file and is acknowledged. Nothing made `ab`'s entry in `images` durable before the
    second scan's acknowledgement, so a power cut then loses an acknowledged image (its record names a file
    that is not on disk). A put that makes a directory cannot know whether the directories it found were
    made durable by their maker, so it must fsync every directory above the one it made, up to the root
    (the race already handled for the directory it makes itself is `FileExistsError`)."""
    root = tmp_path / "data" / "images"
    root.mkdir(parents=True)
    data = b"a scan stored while another writer makes its top directory"
    sha = hashlib.sha256(data).hexdigest()
    os.mkdir(root / sha[:2])  # the other writer's mkdir, its fsync of `root` not yet done
    fsynced: list[Path] = []
    real_fsync_dir = images_module._fsync_dir
    monkeypatch.setattr(images_module, "_fsync_dir", lambda path: (fsynced.append(Path(path)), real_fsync_dir(path))[1])

    assert ImageFiles(root).put(data, suffix="png") == sha
    assert root / sha[:2] in fsynced and root / sha[:2] / sha[2:4] in fsynced
    assert root in fsynced, "the top directory's entry in the root was never made durable"


# -- migrations: a database made by the earlier release of 0001_initial ---------------------------------


def _old_release_scripts(tmp_path: Path) -> Path:
    """The migration scripts as the first storage release (commit 1d13f51) shipped them: 0001_initial named
    its CHECK constraints without `op.f`, so the naming convention prefixed them a second time
    (`ck_reviews_ck_reviews_verdict`). The revision id is the same as today's."""
    import edge.migrations as migrations

    scripts = tmp_path / "old_migrations"
    (scripts / "versions").mkdir(parents=True)
    for name in ("env.py", "script.py.mako"):
        shutil.copy(Path(migrations.__file__).parent / name, scripts / name)
    source = (Path(migrations.__file__).parent / "versions" / "0001_initial.py").read_text()
    old = source.replace('name=op.f("ck_reviews_verdict")', 'name="ck_reviews_verdict"')
    old = old.replace('name=op.f("ck_outbox_status")', 'name="ck_outbox_status"')
    old = old.replace('name=op.f("ck_principals_kind_role")', 'name="ck_principals_kind_role"')
    assert old.count('name="ck_') == 3
    (scripts / "versions" / "0001_initial.py").write_text(old)
    return scripts


def test_a_database_made_by_the_first_release_gets_the_models_constraint_names(
    db_url: str, tmp_path: Path  # noqa: F811
):
    """0001_initial was edited in place after it shipped (its CHECK constraints were renamed), without a
    new revision: a lane box whose database the first release created stays at "0001_initial" with
    `ck_reviews_ck_reviews_verdict` & co. `migrate()` finds nothing to do, so its schema no longer matches
    the models, and any later revision that drops or alters those constraints by name fails on exactly
    those boxes. A new revision should rename them (keeping the data)."""
    from alembic import command
    from alembic.config import Config

    store = Store(db_url, tmp_path / "data")
    with store.engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(_old_release_scripts(tmp_path)))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    record, _ = store.record_scan(**scan_kwargs())

    store.migrate()
    with store.engine.connect() as connection:
        inspector = inspect(connection)
        checks = {(t, c["name"]) for t in ("reviews", "outbox", "principals")
                  for c in inspector.get_check_constraints(t)}
    expected = {(t.name, c.name) for t in Base.metadata.sorted_tables for c in t.constraints
                if isinstance(c, CheckConstraint)}
    assert checks == expected
    assert store.get_scan(record.id) == record
    if store.engine.dialect.name == "sqlite":
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError, match="ck_reviews_verdict"), store.engine.begin() as connection:  # enforced
        connection.execute(text("INSERT INTO reviews (scan_id, created_at, reviewer, verdict, note) "
                                "VALUES (:id, :at, 'sup', 'maybe', '')"), {"id": record.id, "at": record.created_at})
    store.close()


# -- SQLite URL with a home-relative path ----------------------------------------------------------------


def test_a_sqlite_url_under_the_home_directory_opens_the_file_whose_folder_was_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`XSCREEN_DB_URL=sqlite:///~/xscreen/lane.db`: `make_engine` made the folder `~/xscreen` (it expands
    `~`), but handed SQLite the path unexpanded, which SQLite takes relative to the working directory, so
    the service and `xscreen admin` failed with "unable to open database file". The folder made and the
    file opened must be the same."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    store = Store("sqlite:///~/xscreen/lane.db", tmp_path / "data")
    try:
        store.migrate()
        store.record_scan(**scan_kwargs())
        with store.engine.connect() as connection:
            files = [row[2] for row in connection.execute(text("PRAGMA database_list")) if row[1] == "main"]
        assert files == [str(home / "xscreen" / "lane.db")]
    finally:
        store.close()


# -- seizures: who confirmed a bag ----------------------------------------------------------------------


def test_a_seizure_names_the_bags_latest_confirmation_not_its_newest_views(tmp_path: Path, clock: Clock):
    """A bag with two views: the supervisor "alice" confirms the side view at 10:00, then "bob" confirms
    the top view (recorded first) at 11:00 with his note. The export (`GET /v1/seizures`, /ui/seizures)
    promises each bag's latest confirming review, but gave alice at 10:00 with her note: it took the latest
    review of the bag's newest confirmed view, whatever the reviews of its other views said."""
    from edge.seizures import collect_seizures

    store = Store(f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "data", clock=clock)
    store.migrate()
    top, _ = store.record_scan(**scan_kwargs(view="top", image_sha256="1" * 64))
    side, _ = store.record_scan(**scan_kwargs(view="side", image_sha256="2" * 64))
    store.add_review(side.id, user="alice", verdict="confirmed", note="ivory in the lining")
    clock.advance(3600)
    latest = store.add_review(top.id, user="bob", verdict="confirmed", note="ivory, and a second carving")

    (bag,) = collect_seizures(store)
    assert sorted(bag["scan_ids"]) == [top.id, side.id]
    assert (bag["confirmed_by"], bag["confirmed_at"], bag["note"]) == ("bob", latest.created_at, latest.note)
    store.close()

