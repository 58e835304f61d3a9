"""Durable storage of the lane service: scans, reviews, the outbox, and the image files.

`Store` is the one door to the database (`edge.db`) and the image directory (`edge.images`). Every method
is a complete transaction: when it returns, what it wrote is committed (on SQLite with `synchronous=FULL`,
on disk), so the service may acknowledge a station as soon as `record_scan` returns.

Several service processes may share one PostgreSQL database and one data directory:
- ids come from database sequences;
- `record_scan` and `enqueue` are idempotent through unique constraints (`INSERT ... ON CONFLICT DO
  NOTHING`, then read the row that won), so a re-send or a race never makes a second row;
- `record_scan_in_bag` takes a transaction-scoped advisory lock on the bag (PostgreSQL), so views of one
  bag recorded at once by two processes see each other: the second waits for the first to commit (on
  SQLite, `BEGIN IMMEDIATE` serialises every write anyway);
- `claim_outbox` leases rows with `FOR UPDATE SKIP LOCKED` (PostgreSQL) or inside `BEGIN IMMEDIATE`
  (SQLite), so two workers never hold the same item;
- the outbox's times (when an item is due, when a lease ends) are read from PostgreSQL's clock, the one
  clock every process sharing the database agrees on, so a host whose clock is behind cannot take an item
  whose lease has not run out (SQLite, one host: the host's clock; a `clock` given for tests: that one).
The outbox delivers at least once: a worker that dies after delivering but before `outbox_done` leaves the
item to be delivered again when its lease runs out, so receivers should dedupe on the payload's ids. Each
claim counts as an attempt, so an item whose delivery stops its worker every time (nothing is reported)
ends dead after `outbox_max_attempts` claims like one that fails, instead of being retried forever.
"""

from __future__ import annotations

import errno
import json
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, bindparam, exists, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from edge.db import OutboxRow, Review, Scan, make_engine, make_sessionmaker, writing
from edge.images import ImageFiles, is_sha256_hex
from edge.storage_faults import DatabaseFileGoneError, storage_problem

__all__ = [
    "OUTBOX_MAX_ATTEMPTS", "OUTBOX_MAX_BACKOFF_S", "OutboxEntry", "OutboxItem", "ReviewRecord", "ScanRecord", "Store",
    "Verdict",
]

Verdict = Literal["confirmed", "cleared"]
OutboxStatus = Literal["pending", "done", "dead"]

#: Deliveries tried before an outbox item is marked dead (kept for inspection, never retried).
OUTBOX_MAX_ATTEMPTS = 10
#: Ceiling of the retry delay: 2, 4, 8, ... seconds, at most five minutes.
OUTBOX_MAX_BACKOFF_S = 300.0
# Jitter takes up to this fraction off each delay, so items that failed together (receiver down) do not
# all retry in the same second when it comes back.
_BACKOFF_JITTER = 0.2
# Longest stored error text: enough for a traceback's last lines, not a whole HTML error page.
_MAX_ERROR_CHARS = 2000
# Column widths of edge.db, checked here so that SQLite (which ignores VARCHAR lengths) and PostgreSQL
# (which raises) behave the same: a ValueError before anything is written.
_MAX_LEN = {"station": 128, "lane": 128, "bag_id": 128, "view": 64, "media_type": 128, "model_name": 128,
            "model_version": 64, "user": 128, "kind": 64, "dedupe_key": 256, "worker": 128}


class ReviewConflictError(RuntimeError):
    """A verdict from a page that did not show the bag's latest reviews (`Store.add_bag_review`)."""


@dataclass(frozen=True)
class ScanRecord:
    """One stored scan. `result` is the model output as the service stored it (JSON-able dict);
    `verdict` is the latest review's verdict, None while unreviewed."""

    id: int
    created_at: datetime
    station: str
    lane: str
    bag_id: str
    view: str
    image_sha256: str
    media_type: str
    width: int
    height: int
    result: dict[str, Any]
    model_name: str
    model_version: str
    alarm: bool
    alarm_classes: list[str]
    reviewed: bool
    verdict: Verdict | None


@dataclass(frozen=True)
class ReviewRecord:
    """One supervisor verdict on a scan."""

    id: int
    scan_id: int
    created_at: datetime
    user: str
    verdict: Verdict
    note: str


@dataclass(frozen=True)
class OutboxEntry:
    """An outbox item to add: what it is (`kind`), what to send, and the key that makes adding it idempotent."""

    kind: str
    payload: dict[str, Any]
    dedupe_key: str


@dataclass(frozen=True)
class OutboxItem:
    """One outbox entry. While leased, `next_attempt_at` is the lease's end and `leased_by` the worker."""

    id: int
    kind: str
    payload: dict[str, Any]
    dedupe_key: str
    status: OutboxStatus
    attempts: int
    next_attempt_at: datetime
    leased_by: str | None
    last_error: str | None
    created_at: datetime
    done_at: datetime | None


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _check_text(**fields: str) -> None:
    for name, value in fields.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if len(value) > _MAX_LEN[name]:
            raise ValueError(f"{name} is longer than {_MAX_LEN[name]} characters")


def _outbox_item(row: Any) -> OutboxItem:
    return OutboxItem(
        id=row.id, kind=row.kind, payload=row.payload, dedupe_key=row.dedupe_key, status=row.status,
        attempts=row.attempts, next_attempt_at=row.next_attempt_at, leased_by=row.leased_by,
        last_error=row.last_error, created_at=row.created_at, done_at=row.done_at,
    )


def _review_record(row: Review) -> ReviewRecord:
    return ReviewRecord(id=row.id, scan_id=row.scan_id, created_at=row.created_at, user=row.reviewer,
                        verdict=row.verdict, note=row.note)  # type: ignore[arg-type]


# The latest verdict of the scan in the enclosing query, computed rather than copied onto the scan row, so
# it can never disagree with the review trail.
_LATEST_VERDICT = (
    select(Review.verdict).where(Review.scan_id == Scan.id).order_by(Review.id.desc()).limit(1)
    .correlate(Scan).scalar_subquery().label("verdict")
)
_HAS_REVIEW = exists().where(Review.scan_id == Scan.id)
_LAST_REVIEW_ID = select(func.max(Review.id)).where(Review.scan_id == Scan.id).correlate(Scan).scalar_subquery()


#: A scan's columns and its verdict, as Core rows (no ORM objects: the ingest path reads and writes scans
#: once per request, and Core rows are the cheaper way).
_SCAN_ROWS = select(*Scan.__table__.columns, _LATEST_VERDICT)
_BAG_SCANS = _SCAN_ROWS.where(Scan.station == bindparam("station"), Scan.bag_id == bindparam("bag_id")).order_by(Scan.id)
#: PostgreSQL: a lock on one bag (station, bag id) until the transaction ends. The key is hashed to the
#: 64-bit lock space; a collision only makes two bags wait for each other.
_BAG_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:bag, 0))")


def _file_id(path: Path | None) -> tuple[int, int] | None:
    """(device, inode) of `path`, or None if there is none."""
    try:
        found = path.stat() if path is not None else None
    except OSError:
        return None
    return (found.st_dev, found.st_ino) if found is not None else None


def _scan_record(row: Any) -> ScanRecord:
    """A `_SCAN_ROWS` row as a record."""
    scan = row._mapping
    return ScanRecord(
        id=scan["id"], created_at=scan["created_at"], station=scan["station"], lane=scan["lane"],
        bag_id=scan["bag_id"], view=scan["view"], image_sha256=scan["image_sha256"], media_type=scan["media_type"],
        width=scan["width"], height=scan["height"], result=scan["result"], model_name=scan["model_name"],
        model_version=scan["model_version"], alarm=scan["alarm"], alarm_classes=list(scan["alarm_classes"]),
        reviewed=scan["verdict"] is not None, verdict=scan["verdict"],
    )


class Store:
    """Scans, reviews, outbox and images of one lane service (see the module docstring).

    `clock` (returns aware UTC datetimes) exists so tests can move time (without it: the host's clock, and
    for the outbox on PostgreSQL the database's); `outbox_max_attempts` is how many deliveries started
    (claims) make an outbox item dead once the last of them failed or was abandoned. Nothing touches the database until a method is called;
    call `migrate()` once at start-up.
    """

    def __init__(
        self,
        db_url: str,
        data_dir: Path,
        *,
        clock: Callable[[], datetime] | None = None,
        outbox_max_attempts: int = OUTBOX_MAX_ATTEMPTS,
    ) -> None:
        if outbox_max_attempts < 1:
            raise ValueError("outbox_max_attempts must be at least 1")
        self.data_dir = Path(data_dir)
        self.images = ImageFiles(self.data_dir / "images")
        self.engine: Engine = make_engine(db_url)
        self.outbox_max_attempts = outbox_max_attempts
        self._clock = clock
        #: Outbox times from PostgreSQL's clock (module docstring), unless a test clock is given.
        self._db_clock = clock is None and self.engine.dialect.name == "postgresql"
        self._read_sessions = make_sessionmaker(self.engine)
        self._write_sessions = make_sessionmaker(self.engine, write=True)
        self._insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        self._write_engine = writing(self.engine)
        self._database_file_id: tuple[int, int] | None = None
        self._insert_scan = (self._insert(Scan).on_conflict_do_nothing(index_elements=["station", "bag_id", "image_sha256"])
                             .returning(Scan.id))

    # -- lifecycle ---------------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest revision (idempotent; safe from several processes).
        From here on the SQLite file is the store's (`check_database_file`)."""
        from edge.migrations import upgrade_to_head

        upgrade_to_head(self.engine)
        self._database_file_id = _file_id(self.database_file)

    @property
    def database_file(self) -> Path | None:
        """The SQLite file (None for PostgreSQL or an in-memory database)."""
        name = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not name or name == ":memory:" or name.startswith("file:"):
            return None
        return Path(name)

    def check_database_file(self) -> None:
        """Raise DatabaseFileGoneError if the SQLite file at the store's path is not the one it opened
        (removed or replaced while the service ran): a commit through the open connection would not be
        there at the next start. One stat; nothing to check before `migrate` or on PostgreSQL."""
        if self._database_file_id is not None and _file_id(self.database_file) != self._database_file_id:
            raise DatabaseFileGoneError(errno.ENOENT, f"the database file {self.database_file} was removed or "
                                                      "replaced while the service ran")

    def storage_problem(self, *, min_free_bytes: int) -> str | None:
        """What keeps the store from taking scans now, in words (for /readyz), or None."""
        try:
            self.check_database_file()
        except DatabaseFileGoneError as exc:
            return exc.strerror
        return storage_problem(self.images.root, self.database_file, min_free_bytes=min_free_bytes)

    def close(self) -> None:
        """Close all pooled connections."""
        self.engine.dispose()

    def ping(self) -> bool:
        """True when the database answers (for health checks)."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - any failure means "not healthy"
            return False

    def now(self) -> datetime:
        """The store's clock (aware UTC): the one given, else the host's."""
        return self._clock() if self._clock is not None else _utc_now()

    def _outbox_now(self, session: Session) -> datetime:
        """Now for the outbox's due times and leases, inside `session`'s transaction (module docstring)."""
        if self._db_clock:
            return session.execute(select(func.clock_timestamp())).scalar_one()
        return self.now()

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Session]:
        """A session inside one transaction, committed on normal exit and rolled back on error. `write`
        must be True for any transaction that writes (on SQLite it then takes the write lock up front)."""
        factory = self._write_sessions if write else self._read_sessions
        with factory() as session, session.begin():
            yield session

    # -- images ------------------------------------------------------------------------------------------

    def put_image(self, data: bytes, *, suffix: str, sha256: str | None = None) -> str:
        """Store image bytes durably, content-addressed; return their sha256 hex (idempotent). sha256: their
        digest when the caller has it (`ImageFiles.put`)."""
        return self.images.put(data, suffix=suffix, sha256=sha256)

    def read_image(self, sha256: str) -> tuple[bytes, str]:
        """(bytes, media type) of a stored image, checked against its sha256; KeyError if absent,
        DamagedImageError if its bytes are not the image any more."""
        return self.images.read(sha256)

    def load_image(self, sha256: str) -> tuple[bytes, Path]:
        """(bytes, path) of a stored image, checked against its sha256 (`ImageFiles.load`)."""
        return self.images.load(sha256)

    # -- scans -------------------------------------------------------------------------------------------

    def record_scan(
        self, *, station: str, lane: str, bag_id: str, view: str, image_sha256: str, media_type: str,
        width: int, height: int, result: dict, model_name: str, model_version: str, alarm: bool,
        alarm_classes: list[str],
    ) -> tuple[ScanRecord, bool]:
        """Store one screened scan; return (record, created). Idempotent on (station, bag_id,
        image_sha256): a re-send returns the stored record (the first write wins) and created=False.
        Committed when it returns."""
        record, created, _views = self.record_scan_in_bag(
            station=station, lane=lane, bag_id=bag_id, view=view, image_sha256=image_sha256,
            media_type=media_type, width=width, height=height, result=result, model_name=model_name,
            model_version=model_version, alarm=alarm, alarm_classes=alarm_classes,
        )
        return record, created

    def record_scan_in_bag(
        self, *, station: str, lane: str, bag_id: str, view: str, image_sha256: str, media_type: str,
        width: int, height: int, result: dict, model_name: str, model_version: str, alarm: bool,
        alarm_classes: list[str], outbox: Callable[[ScanRecord], OutboxEntry | None] | None = None,
    ) -> tuple[ScanRecord, bool, list[ScanRecord]]:
        """`record_scan`, and in the same transaction every scan of the bag (its views, oldest first, this
        one included): (record, created, views) — what the service needs to answer a station.

        outbox: called with the new record when this call creates it; the outbox item it returns (if any)
        is added in the same transaction (as `enqueue`: nothing if its dedupe key exists), so a recorded
        scan never lacks its notification, whatever fails after the commit.

        Core statements built once (`__init__`), no ORM objects: this runs once per scan, and the lean path
        takes about half the time of the ORM one (`python bench/idle_memory.py`, docs/lane_bench.md)."""
        _check_text(station=station, lane=lane, bag_id=bag_id, view=view, media_type=media_type,
                    model_name=model_name, model_version=model_version)
        if not is_sha256_hex(image_sha256):
            raise ValueError(f"image_sha256 must be 64 lowercase hex digits, got {image_sha256!r}")
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        values = dict(
            created_at=self.now(), station=station, lane=lane, bag_id=bag_id, view=view,
            image_sha256=image_sha256, media_type=media_type, width=int(width), height=int(height),
            result=_json_roundtrip(result), model_name=model_name, model_version=model_version,
            alarm=bool(alarm), alarm_classes=[str(c) for c in alarm_classes],
        )
        # ON CONFLICT DO NOTHING rather than catching IntegrityError: on PostgreSQL a failed INSERT aborts
        # the transaction, and a concurrent insert of the same key is waited for, then skipped.
        with self._write_engine.begin() as connection:
            if self.engine.dialect.name == "postgresql":
                connection.execute(_BAG_LOCK, {"bag": f"{len(station)}:{station}:{bag_id}"})
            created = connection.execute(self._insert_scan, values).scalar_one_or_none() is not None
            views = [_scan_record(row) for row in connection.execute(_BAG_SCANS, {"station": station, "bag_id": bag_id})]
            record = next(v for v in views if v.image_sha256 == image_sha256)
            entry = outbox(record) if created and outbox is not None else None
            if entry is not None:
                connection.execute(self._outbox_insert(entry))
        self.check_database_file()  # committed, but to the file a restart opens?
        return record, created, views

    def get_scan(self, scan_id: int) -> ScanRecord | None:
        """The scan with this id, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(_SCAN_ROWS.where(Scan.id == scan_id)).one_or_none()
            return None if row is None else _scan_record(row)

    def bag_scans(self, station: str, bag_id: str) -> list[ScanRecord]:
        """All scans (views, re-screenings) of one bag at one station, oldest first."""
        with self.engine.connect() as connection:
            return [_scan_record(row) for row in connection.execute(_BAG_SCANS, {"station": station, "bag_id": bag_id})]

    def list_scans(
        self, *, alarm: bool | None = None, reviewed: bool | None = None, limit: int = 50, offset: int = 0,
        latest_review_first: bool = False,
    ) -> list[ScanRecord]:
        """Scans newest first, optionally only alarms / non-alarms and reviewed / unreviewed ones.
        latest_review_first: the most recently reviewed first (a bag scanned last week and reviewed a minute
        ago heads the list), unreviewed scans last."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be non-negative")
        query = _SCAN_ROWS
        if alarm is not None:
            query = query.where(Scan.alarm == alarm)
        if reviewed is not None:
            query = query.where(_HAS_REVIEW if reviewed else ~_HAS_REVIEW)
        if latest_review_first:
            query = query.order_by(_LAST_REVIEW_ID.desc().nulls_last())
        query = query.order_by(Scan.id.desc()).limit(limit).offset(offset)
        with self.engine.connect() as connection:
            return [_scan_record(row) for row in connection.execute(query)]

    def queue_bags(self, *, limit: int, before: int | None = None) -> tuple[list[ScanRecord], int | None, int]:
        """A page of the review queue: the bags with alarmed views not yet reviewed, keyed by their newest
        such view's id, newest first; at most `limit` bags whose key is under `before`, with every such view
        (bag by bag, each bag's oldest view first). Returns (views, the next page's `before` or None when
        no older bag waits, how many bags wait in all). Keyed rather than offset, so that bags arriving or
        decided between two page loads neither repeat a bag nor skip one, and a bag is never split."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        waiting = Scan.alarm.is_(True) & ~_HAS_REVIEW
        key = func.max(Scan.id).label("key")
        bags = select(Scan.station, Scan.bag_id, key).where(waiting).group_by(Scan.station, Scan.bag_id)
        total = select(func.count()).select_from(bags.subquery())
        if before is not None:
            bags = bags.having(func.max(Scan.id) < before)
        bags = bags.order_by(key.desc()).limit(limit + 1)
        with self.engine.connect() as connection:
            found = connection.execute(bags).all()
            waiting_bags = int(connection.execute(total).scalar_one())
            page = found[:limit]
            rows = connection.execute(
                _SCAN_ROWS.where(waiting, tuple_(Scan.station, Scan.bag_id).in_([(b.station, b.bag_id) for b in page]))
                .order_by(Scan.id)
            ).all() if page else []
        by_bag: dict[tuple[str, str], list[ScanRecord]] = {}
        for row in rows:
            record = _scan_record(row)
            by_bag.setdefault((record.station, record.bag_id), []).append(record)
        views = [v for b in page for v in by_bag.get((b.station, b.bag_id), [])]
        return views, (int(page[-1].key) if len(found) > limit else None), waiting_bags

    def count_scans(self) -> int:
        """Number of stored scans."""
        with self.transaction(write=False) as session:
            return int(session.execute(select(func.count()).select_from(Scan)).scalar_one())

    # -- reviews -----------------------------------------------------------------------------------------

    def add_review(self, scan_id: int, *, user: str, verdict: Verdict, note: str = "") -> ReviewRecord:
        """Record a verdict on a scan; it becomes the scan's verdict. KeyError if the scan does not exist."""
        return self.add_bag_review([scan_id], user=user, verdict=verdict, note=note, once=False)[0][0]

    def add_review_once(self, scan_id: int, *, user: str, verdict: Verdict, note: str = "") -> tuple[ReviewRecord, bool]:
        """`add_review`, unless the scan's latest review is this one already (same user, verdict and note):
        a form sent twice (a double click, a re-sent POST, two service processes each given one copy) is one
        verdict in the trail. Returns (the review, whether it was added)."""
        reviews, added = self.add_bag_review([scan_id], user=user, verdict=verdict, note=note)
        return reviews[0], added

    def add_bag_review(self, scan_ids: Sequence[int], *, user: str, verdict: Verdict, note: str = "",
                       seen_reviews: Mapping[int, int] | None = None, once: bool = True
                       ) -> tuple[list[ReviewRecord], bool]:
        """One verdict on several views of a bag, in one transaction holding their rows' locks (in id order;
        PostgreSQL's row locks, SQLite's write transaction), so that copies arriving at once are told apart.

        once: nothing is written when every view's latest review is this very verdict (same user, verdict and
        note: the form sent twice). seen_reviews: scan id → the id of its latest review when the page was
        shown (0: none); if the store holds another one now (a colleague's verdict came in between),
        `ReviewConflictError` and nothing is written: a page that did not show it must not overturn it.
        Returns (each view's review, in id order: the new one, or the one already there; whether they were
        added). KeyError for an id that is no scan."""
        _check_text(user=user)
        if verdict not in ("confirmed", "cleared"):
            raise ValueError(f"verdict must be 'confirmed' or 'cleared', got {verdict!r}")
        ids = sorted(set(int(i) for i in scan_ids))
        with self.transaction(write=True) as session:
            found = session.execute(select(Scan.id).where(Scan.id.in_(ids)).order_by(Scan.id).with_for_update()).scalars()
            missing = sorted(set(ids) - set(found))
            if missing:
                raise KeyError(missing[0])
            last = {
                i: session.execute(
                    select(Review).where(Review.scan_id == i).order_by(Review.id.desc()).limit(1)
                ).scalar_one_or_none()
                for i in ids
            }
            if once and all(r is not None and (r.reviewer, r.verdict, r.note) == (user, verdict, note)
                            for r in last.values()):
                return [_review_record(last[i]) for i in ids], False
            if seen_reviews is not None:
                changed = [i for i in ids if (last[i].id if last[i] is not None else 0) != seen_reviews.get(i, 0)]
                if changed:
                    raise ReviewConflictError(f"scans {changed} were reviewed since the page was shown")
            now = self.now()
            added = [Review(scan_id=i, created_at=now, reviewer=user, verdict=verdict, note=note) for i in ids]
            session.add_all(added)
            session.flush()
            return [_review_record(r) for r in added], True

    def reviews(self, scan_id: int) -> list[ReviewRecord]:
        """All reviews of a scan, oldest first."""
        with self.transaction(write=False) as session:
            rows = session.execute(select(Review).where(Review.scan_id == scan_id).order_by(Review.id)).scalars()
            return [_review_record(row) for row in rows]

    # -- outbox ------------------------------------------------------------------------------------------

    def _outbox_insert(self, entry: OutboxEntry) -> Any:
        """The statement adding `entry`, due now, unless its dedupe key exists (returns its id if added)."""
        _check_text(kind=entry.kind, dedupe_key=entry.dedupe_key)
        now = self.now()
        due = func.clock_timestamp() if self._db_clock else now  # due at once by the outbox's clock
        return (
            self._insert(OutboxRow)
            .values(kind=entry.kind, payload=_json_roundtrip(entry.payload), dedupe_key=entry.dedupe_key,
                    status="pending", attempts=0, next_attempt_at=due, created_at=now)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(OutboxRow.id)
        )

    def enqueue(self, kind: str, payload: dict, *, dedupe_key: str) -> bool:
        """Add a durable outbox item, due now. Returns False (and adds nothing) if an item with this
        `dedupe_key` already exists, whatever its state."""
        statement = self._outbox_insert(OutboxEntry(kind, payload, dedupe_key))
        # A read first: a re-sent alarm finds its item there, and takes no write lock (on SQLite another
        # process, or an operator's shell, may hold it for long).
        with self.transaction(write=False) as session:
            if session.execute(select(OutboxRow.id).where(OutboxRow.dedupe_key == dedupe_key)).first() is not None:
                return False
        with self.transaction(write=True) as session:
            return session.execute(statement).scalar_one_or_none() is not None

    def claim_outbox(self, *, worker: str, limit: int = 10, lease_s: float = 30) -> list[OutboxItem]:
        """Lease up to `limit` due items (pending, `next_attempt_at <= now`), oldest due first, to `worker`
        for `lease_s` seconds, each claim counting as an attempt (`attempts` += 1). Two workers never get the
        same item; an item whose lease runs out without `outbox_done`/`outbox_failed`/`outbox_release` is
        due again, and one that was claimed `outbox_max_attempts` times so is marked dead instead."""
        _check_text(worker=worker)
        if limit <= 0:
            return []
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        table = OutboxRow.__table__
        postgres = self.engine.dialect.name == "postgresql"
        with self.transaction(write=True) as session:
            now = self._outbox_now(session)
            due_now = (table.c.status == "pending", table.c.next_attempt_at <= now)
            # Items whose every claim ran out unreported (the sending process stopped each time): dead.
            abandoned = select(table.c.id).where(*due_now, table.c.attempts >= self.outbox_max_attempts)
            if postgres:
                abandoned = abandoned.with_for_update(skip_locked=True)
            session.execute(
                update(table).where(table.c.id.in_(abandoned.scalar_subquery()))
                .values(status="dead", leased_by=None,
                        last_error="abandoned: no outcome was reported for its last delivery (the sender stopped?)")
            )
            due = (
                select(table.c.id)
                .where(*due_now, table.c.attempts < self.outbox_max_attempts)
                .order_by(table.c.next_attempt_at, table.c.id)
                .limit(limit)
            )
            lease = {"next_attempt_at": now + timedelta(seconds=lease_s), "leased_by": worker,
                     "attempts": table.c.attempts + 1}
            if postgres:
                # A CTE with FOR UPDATE is evaluated exactly once; SKIP LOCKED passes over rows another worker
                # is claiming right now instead of waiting for them (and then re-checks the WHERE on rows that
                # changed, so an item just leased elsewhere is no longer due).
                due_cte = due.with_for_update(skip_locked=True).cte("due")
                statement = update(table).where(table.c.id == due_cte.c.id).values(**lease)
            else:
                # BEGIN IMMEDIATE (write transaction) already excludes every other writer on SQLite.
                statement = update(table).where(table.c.id.in_(due.scalar_subquery())).values(**lease)
            rows = session.execute(statement.returning(*table.c)).all()
        # RETURNING order is unspecified.
        return sorted((_outbox_item(row) for row in rows), key=lambda item: item.id)

    def _held_row(self, session: Session, item_id: int, claim: OutboxItem | None) -> OutboxRow | None:
        """The pending item `item_id`, locked, or None when it is no longer pending or (given `claim`) no
        longer held under that claim. KeyError if there is no such item."""
        row = session.execute(select(OutboxRow).where(OutboxRow.id == item_id).with_for_update()).scalar_one_or_none()
        if row is None:
            raise KeyError(item_id)
        if row.status != "pending":
            return None
        if claim is not None and (row.leased_by, row.next_attempt_at) != (claim.leased_by, claim.next_attempt_at):
            return None
        return row

    def outbox_done(self, item_id: int) -> None:
        """Mark an item delivered (final). KeyError if there is no such item."""
        table = OutboxRow.__table__
        statement = (update(table).where(table.c.id == item_id)
                     .values(status="done", done_at=self.now(), leased_by=None).returning(table.c.id))
        with self.transaction(write=True) as session:
            if session.execute(statement).scalar_one_or_none() is None:
                raise KeyError(item_id)

    def outbox_failed(self, item_id: int, error: str, *, claim: OutboxItem | None = None) -> bool:
        """Record a failed delivery: retry after min(2**attempts, 300) s (less up to 20 % jitter), or mark the
        item dead once it has had `outbox_max_attempts` attempts. The claim counted the attempt; a failure of
        an item not leased (a delivery made without a claim) counts one here. Returns whether it was recorded.

        Ignored (False) for an item that is no longer pending (e.g. a slower worker reporting after another
        one delivered it) and, given the `claim` (the item as `claim_outbox` returned it), for an item whose
        lease is no longer that claim's: the lease ran out and another worker (or this one, in a later
        round) holds the item now, and a late report must not cut that lease short.
        KeyError if there is no such item."""
        with self.transaction(write=True) as session:
            row = self._held_row(session, item_id, claim)
            if row is None:
                return False
            if row.leased_by is None:
                row.attempts += 1
            # (A receiver's answer may hold NUL, which PostgreSQL text refuses: the failure must still be recorded.)
            row.last_error = str(error).replace("\x00", "\\x00")[:_MAX_ERROR_CHARS]
            row.leased_by = None
            if row.attempts >= self.outbox_max_attempts:
                row.status = "dead"
            else:
                delay_s = min(2.0**row.attempts, OUTBOX_MAX_BACKOFF_S) * (1 - _BACKOFF_JITTER * random.random())
                row.next_attempt_at = self._outbox_now(session) + timedelta(seconds=delay_s)
            return True

    def outbox_release(self, item_id: int, *, claim: OutboxItem) -> bool:
        """Give back a claimed item that was not sent: its claim no longer counts as an attempt and it is due
        again at once. Ignored (False) unless the item is still held under `claim` (see `outbox_failed`).
        KeyError if there is no such item."""
        with self.transaction(write=True) as session:
            row = self._held_row(session, item_id, claim)
            if row is None:
                return False
            row.attempts = max(row.attempts - 1, 0)
            row.leased_by = None
            row.next_attempt_at = self._outbox_now(session)
            return True

    def outbox_items(self, *, status: OutboxStatus | None = None) -> list[OutboxItem]:
        """All outbox items (or those with `status`), by id; for tests and inspection."""
        query = select(OutboxRow).order_by(OutboxRow.id)
        if status is not None:
            query = query.where(OutboxRow.status == status)
        with self.transaction(write=False) as session:
            return [_outbox_item(row) for row in session.execute(query).scalars()]


def _json_roundtrip(value: Any) -> Any:
    """`value` as it will read back from the database: fails early (TypeError) on what JSON cannot hold,
    and makes SQLite and PostgreSQL return the same thing (tuples become lists, keys become strings)."""
    return json.loads(json.dumps(value, allow_nan=False))
