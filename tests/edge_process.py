"""Real `xscreen serve` processes for the crash and multi-process tests: start one on a free loopback port,
wait until it is ready, SIGKILL or stop it; and `xscreen admin` to make keys.

Each child runs `python -m vision.cli ...` with this interpreter, in a working directory of the test's own
(so a developer's `.env` is never read) and with the caller's XSCREEN_* variables removed, so the service is
configured only by what the test passes. Server output goes to a log file, not a pipe: a pipe nobody reads
fills up and blocks the server.

    with ServerProcess.start(model=pkg, db_url=url, data_dir=d, workdir=tmp) as server:
        httpx.get(server.url + "/readyz")
        server.kill()                  # SIGKILL, as a power cut or the OOM killer would
        server.restart()               # same port, db and data dir
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from edge_support import free_port

REPO = Path(__file__).resolve().parents[1]

#: Settings every test server gets: one engine thread (the box is shared with other tests), no rate limit
#: in the way of a load test (it has tests of its own), quiet logs.
BASE_ENV = {
    "XSCREEN_ENGINE_THREADS": "1",
    "XSCREEN_RATE_LIMIT_PER_S": "100000",
    "XSCREEN_RATE_LIMIT_BURST": "100000",
    "XSCREEN_LOG_LEVEL": "WARNING",
    "XSCREEN_BATCH_MAX_WAIT_MS": "2",
}


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without XSCREEN_* variables, plus BASE_ENV and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XSCREEN_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(BASE_ENV)
    env.update(extra or {})
    return env


def xscreen(args: list[str], *, workdir: Path, stdin: str | None = None, timeout_s: float = 120.0) -> str:
    """Run `xscreen ARGS` (as `python -m vision.cli`); return stdout; raise with stderr on failure."""
    proc = subprocess.run([sys.executable, "-m", "vision.cli", *args], cwd=workdir, env=child_env(), input=stdin,
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"xscreen {' '.join(args[:3])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def add_station(name: str, *, db_url: str, data_dir: Path, workdir: Path) -> str:
    """Register a station with `xscreen admin add-station`; its key (the last line printed)."""
    out = xscreen(["admin", "add-station", name, "--db", db_url, "--data-dir", str(data_dir)], workdir=workdir)
    return out.strip().splitlines()[-1].strip()


def add_admin(name: str, *, db_url: str, data_dir: Path, workdir: Path) -> str:
    """Register an admin (API key only) with `xscreen admin add-user`; the key."""
    out = xscreen(["admin", "add-user", name, "--role", "admin", "--db", db_url, "--data-dir", str(data_dir)],
                  workdir=workdir)
    return out.strip().splitlines()[-1].strip()


@dataclass
class ServerProcess:
    """One `xscreen serve` child process on 127.0.0.1:`port`."""

    model: Path
    db_url: str
    data_dir: Path
    workdir: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    name: str = "server"
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def launch(self) -> None:
        """Start the process (returns at once; see `wait_ready`)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} is already running")
        self.starts += 1
        args = [sys.executable, "-m", "vision.cli", "serve", "--model", str(self.model), "--db", self.db_url,
                "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args]
        with self.log_path.open("a") as log:
            log.write(f"\n--- start {self.starts} ---\n")
            log.flush()
            self.proc = subprocess.Popen(args, cwd=self.workdir, env=child_env(self.env), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Poll /readyz until 200; RuntimeError (with the log) if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.get("/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready within {timeout_s:g} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (no lifespan exit, no flush), as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (graceful), then SIGKILL if it has not exited within `timeout_s`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def restart(self, timeout_s: float = 120.0) -> None:
        """Start again on the same port, database and data dir; wait until ready."""
        self.launch()
        self.wait_ready(timeout_s)


@contextmanager
def server_processes(*servers: ServerProcess, timeout_s: float = 120.0) -> Iterator[tuple[ServerProcess, ...]]:
    """Launch all `servers` at once (they start concurrently, migrations included), wait until each is ready;
    stop every one on exit, also when starting or the test failed."""
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready(timeout_s)
        yield servers
    finally:
        for server in servers:
            server.stop()


def new_server(model: Path, db_url: str, data_dir: Path, workdir: Path, *, name: str = "server",
               env: dict[str, str] | None = None, extra_args: list[str] | None = None) -> ServerProcess:
    """A ServerProcess (not started) on a free loopback port."""
    workdir.mkdir(parents=True, exist_ok=True)
    return ServerProcess(model=model, db_url=db_url, data_dir=data_dir, workdir=workdir, port=free_port(),
                         env=dict(env or {}), extra_args=list(extra_args or []), name=name)


def check_shared_store(db_url: str, data_dir: Path, unique: dict, scans: int) -> None:
    """What several processes on one database and data dir must leave: `scans` records (none twice), each
    scan of `unique` ({key: (image bytes, id)}) stored with its image, and exactly one pending webhook outbox
    item per alarmed scan (the webhook URL points at a closed port)."""
    import hashlib

    from edge.store import Store

    store = Store(db_url, data_dir)
    try:
        assert store.count_scans() == scans, "a scan was stored twice (or one is missing)"
        for data, scan_id in unique.values():
            record = store.get_scan(scan_id)
            assert record is not None and record.image_sha256 == hashlib.sha256(data).hexdigest()
            assert store.read_image(record.image_sha256)[0] == data
        alarmed = {r.id for r in store.list_scans(alarm=True, limit=1000)}
        assert alarmed, "no scan alarmed (the tiny model's thresholds are 0.01): the outbox check is empty"
        items = store.outbox_items()
        keys = [item.dedupe_key for item in items]
        assert len(keys) == len(set(keys)), "duplicate outbox items"
        assert sorted(item.payload["scan_id"] for item in items) == sorted(alarmed), \
            "outbox items are not exactly one per alarmed scan"
        assert all(item.status == "pending" for item in items), "an item to a closed port was delivered?"
    finally:
        store.close()
