"""edge.auth and `xscreen admin`: keys stored only as hashes, roles, argon2id passwords, sessions with
expiry, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import typer
from argon2 import PasswordHasher
from sqlalchemy import select
from typer.testing import CliRunner

from edge.auth import Auth, Principal
from edge.db import AuthSession, PrincipalRow
from edge.store import Store
from pg_fixtures import db_url, pg_server  # noqa: F401 - fixtures

PASSWORD = "correct horse battery staple"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_url: str, tmp_path: Path, clock: Clock):  # noqa: F811 - db_url is the imported fixture
    store = Store(db_url, tmp_path, clock=clock)
    store.migrate()
    yield store
    store.close()


# argon2id with a small cost: the defaults take about 0.5 s per hash, and these tests hash dozens of times.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def auth(store: Store) -> Auth:
    return Auth(store, password_hasher=FAST_HASHER)


def stored_rows(store: Store) -> list[PrincipalRow]:
    with store.transaction(write=False) as session:
        return list(session.execute(select(PrincipalRow).order_by(PrincipalRow.id)).scalars())


def test_station_key_is_stored_only_as_its_hash(auth: Auth, store: Store):
    key = auth.add_station("lane-1")
    assert key.startswith("xs_st_") and len(key) > 40
    (row,) = stored_rows(store)
    assert row.key_hash != key and key not in row.key_hash
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert row.password_hash is None
    assert auth.principal_for_key(key) == Principal(name="lane-1", role="station", kind="station")
    assert auth.add_station("lane-2") != key


def test_wrong_or_malformed_keys_are_refused(auth: Auth):
    key = auth.add_station("lane-1")
    for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), key + "x", "", "xs_st_", "Bearer " + key,
                  "xs_us_" + key[len("xs_st_"):], "x" * 10_000):
        assert auth.principal_for_key(wrong) is None, wrong


def test_names_are_unique_per_kind(auth: Auth):
    auth.add_station("lane-1")
    with pytest.raises(ValueError):
        auth.add_station("lane-1")
    auth.add_user("lane-1", "supervisor")  # a user may share a station's name: separate namespaces
    with pytest.raises(ValueError):
        auth.add_user("lane-1", "admin")
    for bad in ("", " padded ", "x" * 129):
        with pytest.raises(ValueError):
            auth.add_station(bad)


def test_user_roles(auth: Auth):
    sup_key = auth.add_user("sam", "supervisor")
    admin_key = auth.add_user("ada", "admin")
    assert sup_key.startswith("xs_us_") and admin_key.startswith("xs_us_")
    assert auth.principal_for_key(sup_key) == Principal(name="sam", role="supervisor", kind="user")
    assert auth.principal_for_key(admin_key) == Principal(name="ada", role="admin", kind="user")
    with pytest.raises(ValueError):
        auth.add_user("eve", "station")
    with pytest.raises(ValueError):
        auth.add_user("eve", "root")  # type: ignore[arg-type]


def test_password_is_argon2id_and_verifies(auth: Auth, store: Store):
    auth.add_user("sam", "supervisor", password=PASSWORD)
    (row,) = stored_rows(store)
    assert row.password_hash.startswith("$argon2id$") and PASSWORD not in row.password_hash
    assert auth.verify_password("sam", PASSWORD) == Principal(name="sam", role="supervisor", kind="user")
    assert auth.verify_password("sam", PASSWORD + "!") is None
    assert auth.verify_password("nobody", PASSWORD) is None

    auth.set_password("sam", "a new long password")
    assert auth.verify_password("sam", PASSWORD) is None
    assert auth.verify_password("sam", "a new long password") is not None
    with pytest.raises(KeyError):
        auth.set_password("nobody", "a new long password")
    with pytest.raises(ValueError):
        auth.set_password("sam", "short")


def test_users_without_password_and_stations_cannot_log_in(auth: Auth):
    auth.add_user("keyonly", "admin")
    auth.add_station("lane-1")
    assert auth.verify_password("keyonly", PASSWORD) is None
    assert auth.verify_password("lane-1", PASSWORD) is None


def test_sessions_expire_and_end(auth: Auth, store: Store, clock: Clock):
    auth.add_user("sam", "supervisor", password=PASSWORD)
    sam = auth.verify_password("sam", PASSWORD)
    token, csrf = auth.create_session(sam, ttl_s=60)
    assert token != csrf and len(token) > 40 and len(csrf) > 40
    assert auth.session_principal(token) == (sam, csrf)
    with store.transaction(write=False) as session:
        (stored,) = session.execute(select(AuthSession)).scalars()
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest() != token

    clock.now += timedelta(seconds=59)
    assert auth.session_principal(token) is not None
    clock.now += timedelta(seconds=1)
    assert auth.session_principal(token) is None  # expired at exactly ttl

    expired_now, _ = auth.create_session(sam, ttl_s=0)
    assert auth.session_principal(expired_now) is None

    token2, _ = auth.create_session(sam)
    assert auth.session_principal(token2) is not None
    auth.end_session(token2)
    assert auth.session_principal(token2) is None
    auth.end_session(token2)  # ending twice is harmless
    assert auth.session_principal("not-a-token") is None
    assert auth.session_principal("") is None


def test_set_password_ends_the_users_sessions(auth: Auth):
    # A password is reset because someone else may know it, and may be logged in with it.
    auth.add_user("sam", "supervisor", password=PASSWORD)
    auth.add_user("kim", "supervisor", password=PASSWORD)
    sam, kim = auth.verify_password("sam", PASSWORD), auth.verify_password("kim", PASSWORD)
    stolen, _ = auth.create_session(sam)
    others, _ = auth.create_session(kim)
    auth.set_password("sam", "a new long password")
    assert auth.session_principal(stolen) is None
    assert auth.session_principal(others) is not None
    assert auth.session_principal(auth.create_session(sam)[0]) is not None


def test_names_with_nul_are_refused_and_match_no_one(auth: Auth):
    # PostgreSQL text cannot hold NUL: a query with one fails in the driver instead of finding no one.
    auth.add_user("sam", "supervisor", password=PASSWORD)
    assert auth.verify_password("sam\x00", PASSWORD) is None
    assert auth.verify_password("\x00", PASSWORD) is None
    with pytest.raises(ValueError, match="no control characters"):
        auth.add_user("kim\x00", "supervisor", password=PASSWORD)
    with pytest.raises(ValueError, match="no control characters"):
        auth.add_station("lane\x001")


def test_disabled_principals_and_rotated_keys_stop_working(auth: Auth):
    key = auth.add_user("sam", "supervisor", password=PASSWORD)
    sam = auth.principal_for_key(key)
    token, _ = auth.create_session(sam)
    auth.set_disabled("sam", kind="user")
    assert auth.principal_for_key(key) is None
    assert auth.verify_password("sam", PASSWORD) is None
    assert auth.session_principal(token) is None
    auth.set_disabled("sam", kind="user", disabled=False)
    assert auth.principal_for_key(key) == sam

    new_key = auth.rotate_key("sam", kind="user")
    assert auth.principal_for_key(key) is None and auth.principal_for_key(new_key) == sam
    assert [p for p, _ in auth.principals()] == [sam]


# -- xscreen admin ---------------------------------------------------------------------------------------


@pytest.fixture
def admin_cli():
    """A root app with only the admin commands."""
    from edge.admin_cli import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """root"""

    register(app)
    runner = CliRunner()
    return lambda *args, input=None: runner.invoke(app, ["admin", *map(str, args)], input=input)


def test_admin_cli_prints_a_working_key_on_its_last_line(admin_cli, db_url: str, tmp_path: Path):  # noqa: F811
    # The CLI hashes with the production defaults; this one test pays for that (about 1 s per backend).
    result = admin_cli("add-station", "lane-7", "--db", db_url, "--data-dir", tmp_path)
    assert result.exit_code == 0, result.output
    *before, key = result.output.strip().splitlines()
    assert key.startswith("xs_st_") and not any(key in line for line in before)

    result = admin_cli("add-user", "sam", "--role", "supervisor", "--password-stdin", "--db", db_url,
                       "--data-dir", tmp_path, input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    user_key = result.output.strip().splitlines()[-1]
    assert user_key.startswith("xs_us_") and PASSWORD not in result.output

    store = Store(db_url, tmp_path)
    auth = Auth(store)
    assert auth.principal_for_key(key) == Principal(name="lane-7", role="station", kind="station")
    assert auth.principal_for_key(user_key) == Principal(name="sam", role="supervisor", kind="user")
    assert auth.verify_password("sam", PASSWORD) == auth.principal_for_key(user_key)

    again = admin_cli("add-station", "lane-7", "--db", db_url, "--data-dir", tmp_path)
    assert again.exit_code != 0 and "already exists" in again.output
    bad_role = admin_cli("add-user", "eve", "--role", "station", "--db", db_url)
    assert bad_role.exit_code != 0

    listed = admin_cli("list", "--db", db_url, "--data-dir", tmp_path)
    assert listed.exit_code == 0 and "lane-7" in listed.output and "xs_" not in listed.output
    store.close()


def test_admin_cli_defaults_and_registration(monkeypatch: pytest.MonkeyPatch, admin_cli, tmp_path: Path):
    from edge import db
    from vision.cli import _COMMAND_MODULES

    assert "edge.admin_cli" in _COMMAND_MODULES
    assert db.DEFAULT_DB_URL == "sqlite:///./xscreen-data/xscreen.db"
    # --db falls back to $XSCREEN_DB_URL
    monkeypatch.setenv("XSCREEN_DB_URL", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.setenv("XSCREEN_DATA_DIR", str(tmp_path))
    result = admin_cli("add-user", "ada", "--role", "admin")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "env.db").is_file()


def test_password_hash_is_upgraded_on_login_when_parameters_rise(store: Store):
    Auth(store, password_hasher=FAST_HASHER).add_user("sam", "supervisor", password=PASSWORD)
    stronger = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    assert Auth(store, password_hasher=stronger).verify_password("sam", PASSWORD) is not None
    (row,) = stored_rows(store)
    assert not stronger.check_needs_rehash(row.password_hash)
    assert Auth(store, password_hasher=FAST_HASHER).verify_password("sam", PASSWORD) is not None
