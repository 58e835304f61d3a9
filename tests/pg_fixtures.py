"""Database fixtures for the storage tests: a throwaway PostgreSQL server, and `db_url`, parametrised over
SQLite and PostgreSQL.

Import the fixtures into a test module (`from pg_fixtures import db_url, pg_server  # noqa: F401`); they
live here rather than in conftest.py so that other test modules' conftest needs cannot collide with them.

The server: `initdb` into a fresh temporary directory, `pg_ctl start` on a free localhost port with its
unix socket in that directory, trust authentication, fsync off (a test cluster need not survive a power
cut; this makes each test's CREATE DATABASE take milliseconds). PostgreSQL refuses to run as root, so when
the tests run as root the server runs as the `postgres` user (or `nobody`), which owns the directory.
Tests skip, saying why, when no server binaries are found: on Debian `apt-get install postgresql`
(binaries in /usr/lib/postgresql/<version>/bin; `.ci/system-deps.sh` does this), or set XSCREEN_PG_BIN.
Each test gets its own database, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["PgServer", "db_url", "find_pg_bin", "pg_server"]

_PG_USER = "xscreen"  # superuser name inside the test cluster


def find_pg_bin() -> Path | None:
    """Directory holding initdb and pg_ctl: $XSCREEN_PG_BIN, the newest /usr/lib/postgresql/*/bin, or PATH."""
    candidates: list[Path] = []
    if os.environ.get("XSCREEN_PG_BIN"):
        candidates.append(Path(os.environ["XSCREEN_PG_BIN"]))
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    candidates.extend(reversed(versions))
    if shutil.which("pg_ctl"):
        candidates.append(Path(shutil.which("pg_ctl")).parent)  # type: ignore[arg-type]
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class PgServer:
    """A running throwaway PostgreSQL server."""

    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        """SQLAlchemy URL of `database` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """Create a fresh, empty database; return its SQLAlchemy URL."""
        import psycopg

        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _run_as(user: pwd.struct_passwd | None) -> dict:
    """subprocess keyword arguments that run a command as `user` (None: as ourselves)."""
    if user is None:
        return {}
    env = {**os.environ, "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "env": env}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """Start a PostgreSQL server for the session (skip if none is installed); stop and delete it at the end."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql; or set XSCREEN_PG_BIN)")
    runner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            try:
                runner = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        else:
            pytest.skip("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as")
    base = Path(tempfile.mkdtemp(prefix="xscreen-pg-"))
    if runner is not None:
        os.chown(base, runner.pw_uid, runner.pw_gid)
    data, log = base / "data", base / "server.log"
    as_runner = _run_as(runner)
    started = False
    try:
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", _PG_USER, "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, **as_runner,
        )
        for _ in range(3):  # the free port may be taken between probing and binding: try another
            port = _free_port()
            options = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            proc = subprocess.run(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"],
                capture_output=True, text=True, **as_runner,
            )
            if proc.returncode == 0:
                started = True
                break
        if not started:
            server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"PostgreSQL did not start:\n{proc.stdout}\n{proc.stderr}\n{server_log}")
        yield PgServer(host="127.0.0.1", port=port, user=_PG_USER)
    finally:
        if started:
            subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, **as_runner)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a fresh, empty database: a SQLite file in tmp_path, or a new database on the test server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'xscreen.db'}"
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_database()
