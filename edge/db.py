"""SQL schema of the lane service, and the engine and session factories.

Two backends, chosen by URL:
- `sqlite:///path.db`: one lane box. WAL journal (readers never block the writer), `synchronous=FULL` (a
  commit is on disk before we acknowledge a scan), foreign keys on, a busy timeout so that several
  processes on the box wait for the write lock instead of failing. Write transactions start with
  `BEGIN IMMEDIATE` (see `make_engine`).
- `postgresql+psycopg://...`: several service processes, possibly on several hosts, share one database.

The ORM classes below are the schema's single description: `edge/migrations` creates it, and a test checks
that the migrations and these classes agree. `edge.store.Store` is the only code that reads and writes
these tables; callers get plain frozen dataclasses, never ORM objects.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from edge.defaults import DATA_DIR_ENV, DB_URL_ENV, DEFAULT_DATA_DIR, DEFAULT_DB_URL

__all__ = [
    "DATA_DIR_ENV",
    "DB_URL_ENV",
    "DEFAULT_DATA_DIR",
    "DEFAULT_DB_URL",
    "SQLITE_BUSY_TIMEOUT_MS",
    "SQLITE_WRITE_OPTION",
    "AuthSession",
    "Base",
    "OutboxRow",
    "PrincipalRow",
    "Review",
    "Scan",
    "make_engine",
    "make_sessionmaker",
    "writing",
]

#: How long a SQLite connection waits for another process's write lock before failing. Scans arrive every
#: few seconds per lane; a writer holds the lock for milliseconds, so 30 s only matters on a stalled disk.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Execution option that makes a SQLite transaction start with BEGIN IMMEDIATE (see `make_engine`).
SQLITE_WRITE_OPTION = "xscreen_sqlite_write"

# Row ids: 64-bit sequences on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the rowid alias.
_ID = BigInteger().with_variant(Integer(), "sqlite")
# JSONB on PostgreSQL (compact, indexable); JSON text elsewhere.
_JSON = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    PostgreSQL stores `timestamptz`; SQLite has no time type, so we store naive UTC text in one fixed
    format, which keeps `<=` comparisons (outbox due times, session expiry) correct as string comparisons.
    Naive datetimes are refused: a local time silently stored as UTC is the kind of bug that moves an
    outbox retry by hours.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware UTC time")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base; constraint names are fixed so that migrations can refer to them."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Scan(Base):
    """One view of one bag, as screened by one model. Unique per (station, bag_id, image_sha256) so that a
    station re-sending after a lost response does not create a second scan."""

    __tablename__ = "scans"
    __table_args__ = (
        UniqueConstraint("station", "bag_id", "image_sha256"),
        # The review queue lists alarms newest first.
        Index(None, "alarm", "id"),
        Index(None, "created_at"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    station: Mapped[str] = mapped_column(String(128), nullable=False)
    lane: Mapped[str] = mapped_column(String(128), nullable=False)
    bag_id: Mapped[str] = mapped_column(String(128), nullable=False)
    view: Mapped[str] = mapped_column(String(64), nullable=False)
    image_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    media_type: Mapped[str] = mapped_column(String(128), nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    result: Mapped[dict[str, Any]] = mapped_column(_JSON, nullable=False)
    model_name: Mapped[str] = mapped_column(String(128), nullable=False)
    model_version: Mapped[str] = mapped_column(String(64), nullable=False)
    alarm: Mapped[bool] = mapped_column(Boolean, nullable=False)
    alarm_classes: Mapped[list[str]] = mapped_column(_JSON, nullable=False)


class Review(Base):
    """A supervisor's verdict on a scan. A scan may be reviewed more than once; the latest (highest id)
    verdict is the scan's verdict, and the earlier ones stay as the audit trail."""

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint("verdict IN ('confirmed', 'cleared')", name="verdict"),
        Index(None, "scan_id", "id"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    scan_id: Mapped[int] = mapped_column(_ID, ForeignKey("scans.id", ondelete="CASCADE"), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    # "user" is a reserved word in PostgreSQL; the column is "reviewer", the record field is `user`.
    reviewer: Mapped[str] = mapped_column(String(128), nullable=False)
    verdict: Mapped[str] = mapped_column(String(16), nullable=False)
    note: Mapped[str] = mapped_column(Text, nullable=False, server_default="")


class OutboxRow(Base):
    """A durable side effect (webhook, export) to be delivered at least once.

    `next_attempt_at` doubles as the lease: a claim moves it `lease_s` into the future, so an item whose
    worker died becomes due again by itself, with no separate lease-expiry sweep.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'done', 'dead')", name="status"),
        Index(None, "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(_JSON, nullable=False)
    dedupe_key: Mapped[str] = mapped_column(String(256), nullable=False, unique=True)
    status: Mapped[str] = mapped_column(String(8), nullable=False, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    leased_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PrincipalRow(Base):
    """A station (API key only) or a user (API key, optionally a password). Only hashes are stored."""

    __tablename__ = "principals"
    __table_args__ = (
        UniqueConstraint("kind", "name"),
        CheckConstraint(
            "(kind = 'station' AND role = 'station') OR (kind = 'user' AND role IN ('supervisor', 'admin'))",
            name="kind_role",
        ),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    # sha256 hex of the API key: keys are 256-bit random, so a fast hash is enough (no dictionary to
    # attack), and it lets us find the row by the hash with a unique index.
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    # argon2id PHC string, or NULL for principals that cannot log in with a password.
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class AuthSession(Base):
    """A browser login session. The token is stored hashed; the CSRF token is stored as is (it is worthless
    without the session token, and the review UI must be able to read it back)."""

    __tablename__ = "auth_sessions"
    __table_args__ = (Index(None, "expires_at"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    csrf_token: Mapped[str] = mapped_column(String(128), nullable=False)
    principal_id: Mapped[int] = mapped_column(
        _ID, ForeignKey("principals.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


def _switch_to_wal(cursor: Any) -> None:
    """`PRAGMA journal_mode = WAL`, retried while another connection holds the lock it needs.

    SQLite answers "database is locked" at once for a journal-mode change, without consulting the busy
    handler: two processes opening a new database file at the same moment (two service workers starting
    together) would otherwise fail one of them about one time in four. Once a file is in WAL mode (the
    mode is stored in the file) the pragma changes nothing and takes no lock."""
    import sqlite3
    import time

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.002
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.1)


def make_engine(db_url: str) -> Engine:
    """Build the engine for `db_url` (`sqlite:///path.db` or `postgresql+psycopg://...`).

    SQLite: every connection gets WAL, `synchronous=FULL`, foreign keys and a busy timeout. We take over
    transaction control from the sqlite3 module (which would defer BEGIN until the first write, then fail
    with "database is locked" without waiting if another process wrote in between) and emit BEGIN
    ourselves: `BEGIN IMMEDIATE` when the connection carries the `SQLITE_WRITE_OPTION` execution option, so
    a write transaction takes the write lock up front and waits for it under the busy timeout.
    The parent directory of a SQLite file is created if missing.
    """
    url = make_url(db_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        # pre_ping: a lane box outlives database restarts; a dead pooled connection is replaced, not raised.
        return create_engine(url, pool_pre_ping=True)
    if backend != "sqlite":
        shown = url.render_as_string(hide_password=True)
        raise ValueError(f"unsupported database URL {shown!r}: use sqlite or postgresql")

    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        # `~` expanded for SQLite too (it would open ./~/…, not the folder made here).
        url = url.set(database=str(Path(url.database).expanduser()))
        folder = Path(url.database).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise NotADirectoryError(f"the database's folder {folder} is not a directory (a file is in its way)") from None
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # autocommit at the driver: we emit BEGIN in _sqlite_on_begin
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_on_begin(connection: Any) -> None:
        write = connection.get_execution_options().get(SQLITE_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def writing(engine: Engine) -> Engine:
    """`engine` for write transactions: on SQLite they start with `BEGIN IMMEDIATE` (see `make_engine`);
    no effect on PostgreSQL."""
    return engine.execution_options(**{SQLITE_WRITE_OPTION: True})


def make_sessionmaker(engine: Engine, *, write: bool = False) -> sessionmaker[Session]:
    """Session factory bound to `engine`. `write=True` binds it to `writing(engine)`. Objects stay readable
    after commit (`expire_on_commit=False`)."""
    return sessionmaker(bind=writing(engine) if write else engine, expire_on_commit=False)
