"""`xscreen admin ...`: register stations and users, rotate keys, disable principals.

Each command migrates the database first (so it works on a fresh one), and the commands that make a key
print it on their LAST line and nowhere else, so a script can take it with `tail -n 1`. Passwords are read
from stdin (`--password-stdin`), never from the command line, where `ps` and shell history would see them.
The database and data directory are those `xscreen serve` would use here: `--db`/`--data-dir`, else
XSCREEN_DB_URL/XSCREEN_DATA_DIR from the environment, else from `./.env`, else the defaults.
Only typer and `edge.defaults` are imported at load time (see `vision/cli.py`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from edge.defaults import DATA_DIR_ENV, DB_URL_ENV, DEFAULT_DATA_DIR, DEFAULT_DB_URL

if TYPE_CHECKING:
    from edge.auth import Auth

__all__ = ["register"]


class UserRole(str, Enum):
    """Roles a user (not a station) can have."""

    supervisor = "supervisor"
    admin = "admin"


class Kind(str, Enum):
    """Kinds of principal."""

    station = "station"
    user = "user"


# No typer defaults: a value missing from the command line and the environment comes from ./.env, as the
# service's settings take it (edge.settings), then from edge.defaults.
DbOption = Annotated[
    Optional[str],
    typer.Option("--db", envvar=DB_URL_ENV, show_default=False,
                 help=f"Database URL (sqlite:///... or postgresql+psycopg://...); default: {DB_URL_ENV} from "
                      f"./.env, else {DEFAULT_DB_URL}."),
]
DataDirOption = Annotated[
    Optional[Path],
    typer.Option("--data-dir", envvar=DATA_DIR_ENV, show_default=False,
                 help=f"Data directory of the service; default: {DATA_DIR_ENV} from ./.env, else {DEFAULT_DATA_DIR}."),
]


def _store_location(db: str | None, data_dir: Path | None) -> tuple[str, Path]:
    """`--db`/`--data-dir` (typer reads the environment for them), else what `serve` would take (.env, defaults)."""
    from edge.settings import StoreLocation

    found = StoreLocation()
    return db or found.db_url, data_dir or found.data_dir


@contextmanager
def _auth(db: str | None, data_dir: Path | None, *, read_only: bool = False) -> Iterator[Auth]:
    """The store's Auth, its schema migrated. read_only: for a command that only reads, a SQLite file that
    does not exist is an error (a mistyped path), not a new empty database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from edge.auth import Auth
    from edge.settings import sqlite_url_problem
    from edge.store import Store

    db, data_dir = _store_location(db, data_dir)
    try:
        problem = sqlite_url_problem(db)
        url = make_url(db)
    except ArgumentError as exc:
        _fail(f"cannot use the database URL: {exc}")
    if problem is not None:
        _fail(problem)
    if read_only and url.get_backend_name() == "sqlite" and not Path(url.database or "").expanduser().is_file():
        _fail(f"no database at {url.database}: nothing to read (xscreen serve or an admin command that adds makes it)")
    try:
        store = Store(db, data_dir)
    except (ArgumentError, ValueError) as exc:  # not a URL, or a database other than SQLite/PostgreSQL
        _fail(f"cannot use the database URL: {exc}")
    except OSError as exc:  # the SQLite file's or the data directory's folder cannot be made
        _fail(f"cannot open the database: {exc}")
    try:
        try:
            store.migrate()
        except (SQLAlchemyError, OSError) as exc:  # unreachable server, wrong password, unwritable file
            _fail(f"cannot open the database: {getattr(exc, 'orig', None) or exc}")
        yield Auth(store)
    finally:
        store.close()


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def _read_password_stdin() -> str:
    # One line, without its line ending: `printf '%s\n' "$PW" | xscreen admin add-user ...` is the usual
    # form, and a trailing newline in a password is never intended.
    return sys.stdin.readline().rstrip("\r\n")


def _check_station_name(name: str) -> None:
    """Refuse a name that no scan could carry: a station's scans name it in their `station` field, which
    the service checks against this rule (edge.ingest.field_problem)."""
    from edge.ingest import field_problem

    problem = field_problem("station", name)
    if problem is not None:
        _fail(f"bad station name {name!r}: {problem.replace('field ', 'its scans field ', 1)}")


def add_station(
    name: Annotated[str, typer.Argument(help="Station name, e.g. lane-3-scanner.")],
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Register a station; print its API key on the last line (shown once)."""
    _check_station_name(name)
    with _auth(db, data_dir) as auth:
        try:
            key = auth.add_station(name)
        except ValueError as exc:
            _fail(str(exc))
    typer.echo(f"Added station {name!r}. Its API key (shown once; only a hash is stored) is on the next line:")
    typer.echo(key)


def add_user(
    name: Annotated[str, typer.Argument(help="User name.")],
    role: Annotated[UserRole, typer.Option("--role", help="supervisor (reviews alarms) or admin.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read a login password for the review UI from stdin (one line).")
    ] = False,
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Register a supervisor or admin; print their API key (for Bearer use) on the last line."""
    password = _read_password_stdin() if password_stdin else None
    with _auth(db, data_dir) as auth:
        try:
            key = auth.add_user(name, role.value, password)
        except ValueError as exc:
            _fail(str(exc))
    login = "with a password" if password is not None else "without a password (API key only)"
    typer.echo(f"Added {role.value} {name!r} {login}. The API key (shown once) is on the next line:")
    typer.echo(key)


def set_password(
    name: Annotated[str, typer.Argument(help="User name.")],
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Set a user's password, read from stdin (one line)."""
    password = _read_password_stdin()
    with _auth(db, data_dir) as auth:
        try:
            auth.set_password(name, password)
        except (KeyError, ValueError) as exc:
            _fail(exc.args[0] if exc.args else str(exc))
    typer.echo(f"Password of {name!r} set.")


def rotate_key(
    name: Annotated[str, typer.Argument(help="Station or user name.")],
    kind: Annotated[Kind, typer.Option("--kind", help="station or user.")] = Kind.station,
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Replace a principal's API key (the old one stops working); print the new key on the last line."""
    with _auth(db, data_dir) as auth:
        try:
            key = auth.rotate_key(name, kind=kind.value)
        except KeyError as exc:
            _fail(exc.args[0] if exc.args else str(exc))
    typer.echo(f"New API key of {kind.value} {name!r} (shown once) is on the next line:")
    typer.echo(key)


def disable(
    name: Annotated[str, typer.Argument(help="Station or user name.")],
    kind: Annotated[Kind, typer.Option("--kind", help="station or user.")] = Kind.station,
    enable: Annotated[bool, typer.Option("--enable", help="Re-enable instead.")] = False,
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Disable a principal (key, password and sessions stop working), or re-enable it with --enable."""
    with _auth(db, data_dir) as auth:
        try:
            auth.set_disabled(name, kind=kind.value, disabled=not enable)
        except KeyError as exc:
            _fail(exc.args[0] if exc.args else str(exc))
    typer.echo(f"{kind.value} {name!r} {'enabled' if enable else 'disabled'}.")


def list_principals(
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """List stations and users with their roles (no secrets)."""
    with _auth(db, data_dir, read_only=True) as auth:
        for principal, disabled in auth.principals():
            state = "disabled" if disabled else "enabled"
            typer.echo(f"{principal.kind}\t{principal.name}\t{principal.role}\t{state}")


def register(app: typer.Typer) -> None:
    """Add the `admin` command group to the root `xscreen` app."""
    admin = typer.Typer(name="admin", help="Stations, users and their keys.", no_args_is_help=True)
    admin.command("add-station")(add_station)
    admin.command("add-user")(add_user)
    admin.command("set-password")(set_password)
    admin.command("rotate-key")(rotate_key)
    admin.command("disable")(disable)
    admin.command("list")(list_principals)
    app.add_typer(admin)
