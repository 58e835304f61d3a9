"""Review: the lane service as its operator meets it, `xscreen serve` and `xscreen admin` on a lane box.

Start-up mistakes (model package, port, host, database, data and TDR folders, XSCREEN_* settings), SIGTERM
while the service starts, the admin commands' refusals and messages, and the keys they print used at once
against a running service. Each refusal should be a non-zero exit with one clear line naming the problem,
no traceback, and no database left half made; the tests that fail mark a fault, with what should happen.

Real `xscreen serve` / `xscreen admin` processes where the process itself is under test (tests/edge_process.py),
the CLI in-process (typer's runner, uvicorn.run replaced) where only the settings are.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from edge_model import tiny_package
from edge_process import child_env, new_server, server_processes, xscreen
from edge_support import free_port, png_bytes, post_png, running_service
from vision.cli import app as cli_app

SERVE_TIMEOUT_S = 60.0


# -- helpers -----------------------------------------------------------------------------------------------


@pytest.fixture()
def here(monkeypatch, tmp_path):
    """A working directory without .env and no XSCREEN_* variables in the environment."""
    for name in list(os.environ):
        if name.startswith("XSCREEN_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _invoke(*args: str, input: str | None = None):  # noqa: A002
    return CliRunner().invoke(cli_app, list(args), input=input)


def _serve_in_process(monkeypatch, *args: str) -> tuple[Any, dict[str, Any]]:
    """`xscreen serve ARGS` in this process with uvicorn.run recording its arguments instead of serving."""
    from edge.logs import configure_logging

    configure_logging()  # bound to this process's stderr, not to the runner's captured one
    started: dict[str, Any] = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.update(app=app, **kw))
    return _invoke("serve", "--model", str(tiny_package()), *args), started


def _serve_process(tmp: Path, *args: str, env: dict[str, str] | None = None,
                   timeout_s: float = SERVE_TIMEOUT_S) -> subprocess.CompletedProcess:
    """A real `xscreen serve ARGS` that is expected to end by itself (a refused start)."""
    return subprocess.run([sys.executable, "-m", "vision.cli", "serve", *args], cwd=tmp,
                          env=child_env({"XSCREEN_LOG_LEVEL": "INFO", **(env or {})}),
                          capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _error_lines(text: str) -> list[str]:
    """The lines from the first `error:` line on (the CLI's own report, after the JSON log lines)."""
    lines = text.strip().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("error:"):
            return lines[i:]
    return []


def _flip_middle_byte(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def _strip_metadata(src: Path, dst: Path) -> Path:
    import onnx

    proto = onnx.load(str(src))
    del proto.metadata_props[:]
    onnx.save(proto, str(dst))
    return dst


# -- serve: the model package ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, words", [
    ("not-onnx", "not a readable onnx model"),
    ("no-metadata", "not an xscreen model package"),
    ("checksum", "does not match"),
])
def test_serve_refuses_a_bad_model_package_with_an_error_line_and_no_database(tmp_path, kind, words):
    if kind == "not-onnx":
        model = tmp_path / "model.onnx"
        model.write_text("hello, I am not a model\n")
    elif kind == "no-metadata":
        model = _strip_metadata(tiny_package(), tmp_path / "model.onnx")
    else:
        model = _flip_middle_byte(tiny_package(), tmp_path / "model.onnx")
    db = tmp_path / "db" / "lane.db"
    proc = _serve_process(tmp_path, "--model", str(model), "--db", f"sqlite:///{db}", "--data-dir",
                          str(tmp_path / "data"), "--port", str(free_port()))
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = _error_lines(proc.stderr)
    assert errors and errors[0].startswith("error: the service did not start"), proc.stderr[-2000:]
    assert str(model) in errors[0] and words in errors[0].lower(), errors
    # The model loads first: a refused package leaves no database behind.
    assert not db.exists() and not (tmp_path / "data").exists()


def test_serve_reports_a_bad_model_package_without_a_traceback(tmp_path):
    # Fixed (failed on the code as reviewed): a package whose checksum does not match (an operator copied a damaged file) is an expected,
    # well-described refusal, yet `xscreen serve` logs it as "start-up failed" with the whole Python traceback
    # (the JSON log line's "exc" field, edge/app.py _start_in_background logs exc_info for every failure).
    # The operator gets a screenful of frames above the one line that matters. Expected: the known start-up
    # refusals (PackageError, database OperationalError, OSError of the data folder) logged with their
    # message only, the traceback kept for errors nobody anticipated.
    model = _flip_middle_byte(tiny_package(), tmp_path / "model.onnx")
    proc = _serve_process(tmp_path, "--model", str(model), "--db", f"sqlite:///{tmp_path}/lane.db", "--data-dir",
                          str(tmp_path / "data"), "--port", str(free_port()))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, _last_line(proc.stderr)


# -- serve: where it listens -------------------------------------------------------------------------------


def test_serve_on_a_port_in_use_exits_non_zero_naming_the_address(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _serve_process(tmp_path, "--model", str(tiny_package()), "--db", f"sqlite:///{tmp_path}/lane.db",
                              "--data-dir", str(tmp_path / "data"), "--host", "127.0.0.1", "--port", str(port))
    assert proc.returncode != 0
    assert "address already in use" in proc.stderr and str(port) in proc.stderr, proc.stderr[-2000:]


def test_serve_on_a_host_name_that_does_not_resolve_names_the_host(tmp_path):
    # Fixed (failed on the code as reviewed): `--host lane-box.invalid` (a typo, or a name DNS does not know) ends with exit 3 and only
    # uvicorn's `[Errno -2] Name or service not known`: the operator is not told which name failed, or that
    # it was the bind address (it reads like the database's or the webhook's host). Expected: a non-zero exit
    # with a line naming the address, e.g. "error: cannot listen on lane-box.invalid:PORT: name not known".
    # (uvicorn.run's own bind error; edge/cli.py serve_command neither checks --host nor catches it.)
    host = "lane-box.invalid"
    proc = _serve_process(tmp_path, "--model", str(tiny_package()), "--db", f"sqlite:///{tmp_path}/lane.db",
                          "--data-dir", str(tmp_path / "data"), "--host", host, "--port", str(free_port()))
    assert proc.returncode != 0
    assert host in proc.stderr, [line[-200:] for line in proc.stderr.splitlines() if "ERROR" in line]


def test_an_empty_xscreen_host_does_not_bind_every_interface(here, monkeypatch):
    # Fixed (failed on the code as reviewed): `XSCREEN_HOST=` (a blank line in a systemd unit or an .env template) is taken as host "", and
    # uvicorn binds "" as 0.0.0.0 and [::]: the lane service, documented to listen on 127.0.0.1 by default,
    # silently listens on every interface. Expected: an empty host refused ("error: invalid settings: host
    # ...", exit 2), or taken as unset (127.0.0.1). (edge/settings.py: `host: str` has no min_length.)
    monkeypatch.setenv("XSCREEN_HOST", "")
    result, started = _serve_in_process(monkeypatch, "--db", f"sqlite:///{here}/lane.db")
    if result.exit_code == 0:
        assert started.get("host"), f"serve would bind host {started.get('host')!r}: every interface"
    else:
        assert result.exit_code == 2 and "host" in result.output, result.output


# -- serve: database, data and TDR folders -----------------------------------------------------------------


def test_serve_reports_an_unreachable_postgresql_on_one_line_without_its_password(tmp_path):
    # Fixed (failed on the code as reviewed; message): the database error comes as SQLAlchemy's str(exc): "(psycopg.OperationalError)
    # connection failed: ... \n\tIs the server running ...\n(Background on this error at:
    # https://sqlalche.me/e/21/e3q8)" - three lines, a library's class name and a link to SQLAlchemy's docs.
    # `xscreen admin` reports the same failure as "error: cannot open the database: <the driver's message>"
    # (it uses exc.orig). Expected from serve: one line, e.g. "error: the service did not start: cannot open
    # the database: connection to server at 127.0.0.1, port 1 failed: Connection refused".
    # (edge/cli.py serve_command formats app.state.ctx.start_error as it is.)
    proc = _serve_process(tmp_path, "--model", str(tiny_package()), "--db",
                          "postgresql+psycopg://lane:s3cret@127.0.0.1:1/lane", "--data-dir", str(tmp_path / "data"),
                          "--port", str(free_port()))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "s3cret" not in proc.stderr
    errors = _error_lines(proc.stderr)
    assert errors and "connection refused" in errors[0].lower(), proc.stderr[-2000:]
    assert len(errors) == 1 and "sqlalche.me" not in proc.stderr.split("error:")[-1], errors


@pytest.mark.parametrize("command", ["serve", "admin"])
def test_a_sqlite_file_whose_folder_is_a_regular_file_is_named_clearly(here, command):
    # Fixed (failed on the code as reviewed; misleading message): `--db sqlite:///.../backup.tar/lane.db` (a path component that is a file)
    # is reported as "[Errno 17] File exists: '.../backup.tar'" by both commands: "file exists" reads as if
    # the database already existed, or as harmless. Expected: a line that says the database's folder is not a
    # directory, naming it (edge/db.py make_engine's Path(...).parent.mkdir(exist_ok=True) raises
    # FileExistsError for a non-directory, and the message is passed on as it is).
    (here / "backup.tar").write_text("not a folder")
    url = f"sqlite:///{here}/backup.tar/lane.db"
    if command == "serve":
        proc = _serve_process(here, "--model", str(tiny_package()), "--db", url, "--data-dir", str(here / "data"),
                              "--port", str(free_port()))
        assert proc.returncode == 2, proc.stderr[-2000:]
        line = _last_line(proc.stderr)
    else:
        result = _invoke("admin", "add-station", "lane-1", "--db", url, "--data-dir", str(here / "data"))
        assert result.exit_code == 1, result.output
        line = _last_line(result.output)
    assert line.startswith("error:"), line
    assert "not a directory" in line.lower() and "backup.tar" in line, line


def test_serve_refuses_an_in_memory_database(here, monkeypatch):
    # Fixed (failed on the code as reviewed): `--db sqlite://` (or sqlite:///:memory:) is accepted: the service starts on a database that
    # lives in its own memory, where `xscreen admin` can never add a station (so every scan gets 401), and
    # every record is lost at the next restart. Expected: "error: invalid settings: db_url: an in-memory
    # database ..." and exit 2 (edge/settings.py _openable_db_url checks only the backend's name).
    for url in ("sqlite://", "sqlite:///:memory:"):
        result, started = _serve_in_process(monkeypatch, "--db", url)
        assert result.exit_code == 2 and not started, (url, result.output)


def test_admin_refuses_an_in_memory_database_instead_of_printing_a_key_stored_nowhere(here):
    # Fixed (failed on the code as reviewed): `xscreen admin add-station lane-1 --db sqlite://` prints "Added station 'lane-1'" and a key, exit
    # 0 - but the database was the command's own memory, gone when it exits: the key works nowhere, and the
    # operator finds out when the station's scans get 401. Expected: exit 1 with "error: ... in-memory
    # database ..." and no key (edge/admin_cli.py _auth opens any sqlite URL).
    result = _invoke("admin", "add-station", "lane-1", "--db", "sqlite://")
    assert result.exit_code == 1, result.output
    assert "xs_st_" not in result.output


@pytest.mark.parametrize("name", ["XSCREEN_DATA_DIR", "XSCREEN_TDR_DIR"])
def test_an_empty_folder_setting_is_not_the_working_directory(here, monkeypatch, name):
    # Fixed (failed on the code as reviewed): `XSCREEN_DATA_DIR=` / `XSCREEN_TDR_DIR=` (blank in an .env template or a unit file) become
    # Path("") == Path("."): scan images (an `images/` tree) or every alarm's TDR are written into whatever
    # directory the service was started from (/ under systemd), silently. A blank TDR dir more likely meant
    # "no TDRs". Expected: the empty value refused ("error: invalid settings: data_dir: ...", exit 2), or, for
    # the optional tdr_dir, taken as unset. (edge/settings.py: Path fields without a non-empty check;
    # pydantic-settings passes "" on.)
    (here / ".env").write_text(f"{name}=\n")
    result, started = _serve_in_process(monkeypatch, "--db", f"sqlite:///{here}/lane.db")
    if result.exit_code == 0:
        settings = started["app"].state.ctx.settings
        value = getattr(settings, name[len("XSCREEN_"):].lower())
        assert value is None or str(value) not in ("", "."), f"{name}= became {value!r}: the working directory"
    else:
        assert result.exit_code == 2 and name[len("XSCREEN_"):].lower() in result.output, result.output


def test_a_tdr_folder_that_cannot_be_made_is_refused_at_start(tmp_path):
    # Fixed (failed on the code as reviewed): `--tdr-dir` naming a regular file (or a read-only place) is accepted; the service says ready
    # and answers every alarm 200, while each alarm's TDR file fails with only an ERROR log line ("TDR file
    # not written"): the lane's threat reports silently stop. Expected: start-up refuses it (as it refuses an
    # unusable data dir: "error: the service did not start: ... tdr ...", exit 2), or /readyz says not
    # ready. (edge/app.py _start never checks tdr_dir; edge/tdr.py makes it only when writing a report.)
    afile = tmp_path / "reports"
    afile.write_text("a file, not a folder")
    refused_at_start = False
    ready_status = None
    try:
        with running_service(tmp_path, tdr_dir=afile) as svc:
            ready_status = svc.client.get("/readyz").status_code
            answer = post_png(svc, png_bytes(5), "bag-tdr")
            assert answer.status_code == 200 and answer.json()["alarm"], answer.text  # an alarm whose TDR is lost
    except Exception as exc:  # noqa: BLE001 - a start-up refusal is what should happen
        refused_at_start = "reports" in str(exc) or "tdr" in str(exc).lower()
    assert refused_at_start or ready_status == 503, f"ready ({ready_status}) with an unusable TDR folder"


# -- serve: settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("env, field", [
    ({"XSCREEN_BATCH_MAX_SIZE": "-1"}, "batch_max_size"),
    ({"XSCREEN_QUEUE_MAX": "0"}, "queue_max"),
    ({"XSCREEN_REQUEST_DEADLINE_S": "ten"}, "request_deadline_s"),
    ({"XSCREEN_REQUEST_DEADLINE_S": "nan"}, "request_deadline_s"),
    ({"XSCREEN_PORT": "0"}, "port"),
    ({"XSCREEN_LOG_LEVEL": "verbose"}, "log_level"),
    ({"XSCREEN_QUEUE_MAX": "4", "XSCREEN_BATCH_MAX_SIZE": "8"}, "queue_max"),
])
def test_serve_refuses_out_of_range_settings_naming_them(here, monkeypatch, env, field):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    result, started = _serve_in_process(monkeypatch, "--db", f"sqlite:///{here}/lane.db")
    assert result.exit_code == 2 and not started, result.output
    assert "error: invalid settings" in result.output and field in result.output, result.output
    assert "Traceback" not in result.output and not (here / "lane.db").exists()


def test_a_misspelt_xscreen_variable_in_the_environment_is_not_silently_ignored(here, monkeypatch):
    # Fixed (failed on the code as reviewed; design, arguable): `XSCREEN_BATCH_MAX_SIZ=4` in .env is refused (tested in
    # test_review_edge_ops.py), but the same typo in the environment - where a systemd unit or a container
    # spec puts settings - is silently ignored and the default runs. edge/settings.py says the environment is
    # left alone because other commands read XSCREEN_* too, but those keys are already listed
    # (_OTHER_XSCREEN_KEYS: station_key, pg_bin). Expected: the same refusal as for .env (exit 2 naming the
    # key), or at least a warning line naming it.
    monkeypatch.setenv("XSCREEN_BATCH_MAX_SIZ", "4")
    result, started = _serve_in_process(monkeypatch, "--db", f"sqlite:///{here}/lane.db")
    assert "XSCREEN_BATCH_MAX_SIZ" in result.output.upper(), (result.exit_code, result.output)


def test_the_command_line_beats_the_environment_and_dotenv(here, monkeypatch):
    (here / ".env").write_text("XSCREEN_PORT=8111\nXSCREEN_DB_URL=sqlite:///from-dotenv.db\n")
    monkeypatch.setenv("XSCREEN_PORT", "8222")
    result, started = _serve_in_process(monkeypatch, "--port", "8333")
    assert result.exit_code == 0, result.output
    assert started["port"] == 8333
    assert started["app"].state.ctx.settings.db_url == "sqlite:///from-dotenv.db"


# -- serve: SIGTERM while starting -------------------------------------------------------------------------


def test_sigterm_while_the_service_starts_exits_non_zero_and_leaves_a_usable_database(tmp_path):
    """SIGTERM as soon as the port answers (the model still loading or the database being made): the process
    ends promptly with a failing status, and the next start on the same database is ready, with a key made
    before it working."""
    db_url, data_dir = f"sqlite:///{tmp_path}/lane.db", tmp_path / "data"
    server = new_server(tiny_package(), db_url, data_dir, tmp_path / "srv")
    server.launch()
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while time.monotonic() < deadline:
            assert server.proc is not None and server.proc.poll() is None, server.log_tail()
            try:
                if httpx.get(server.url + "/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.02)
        os.kill(server.proc.pid, signal.SIGTERM)
        rc = server.proc.wait(timeout=30)
    finally:
        server.kill()
    assert rc != 0, server.log_tail()
    key = xscreen(["admin", "add-station", "st1", "--db", db_url, "--data-dir", str(data_dir)],
                  workdir=tmp_path).strip().splitlines()[-1]
    server.restart(timeout_s=SERVE_TIMEOUT_S)
    try:
        with httpx.Client(base_url=server.url, timeout=20.0, headers={"Authorization": f"Bearer {key}"}) as c:
            r = c.post("/v1/scans", files={"image": ("s.png", png_bytes(1), "image/png")},
                       data={"station": "st1", "lane": "1", "bag_id": "after-term", "view": "top"})
            assert r.status_code == 200, r.text
    finally:
        server.stop()


# -- admin -------------------------------------------------------------------------------------------------


def test_admin_says_which_principal_does_not_exist_with_its_quotes(here):
    # Fixed (failed on the code as reviewed; message): `xscreen admin disable nobody` says "error: no station 'nobody" - the closing quote
    # is eaten, as in rotate-key and set-password ("no user 'lane-1"). edge/admin_cli.py strips "'\"" from
    # both ends of str(KeyError), which removes the repr's own quote too. Expected: "no station 'nobody'".
    db = f"sqlite:///{here}/lane.db"
    assert _invoke("admin", "add-station", "lane-1", "--db", db).exit_code == 0
    for args in (["disable", "nobody"], ["rotate-key", "nobody"], ["disable", "lane-1", "--kind", "user"]):
        result = _invoke("admin", *args, "--db", db)
        assert result.exit_code == 1, result.output
        name = args[1]
        assert f"'{name}'" in _last_line(result.output), result.output


def test_admin_refuses_user_names_with_control_characters(here):
    # Fixed (failed on the code as reviewed): user names may hold a newline or a tab (station names may not: edge.ingest's rule), and `admin
    # list`, whose output is one tab-separated line per principal, then prints a user "new\nline" as two
    # lines and "tab\tx" as an extra column: a script reading the list misreads it, and such a name cannot be
    # typed in the review UI's login form. Expected: exit 1, "error: bad name ...", as for a NUL
    # (edge/auth.py _check_name refuses only NUL and surrounding spaces).
    db = f"sqlite:///{here}/lane.db"
    for name in ("new\nline", "tab\tx", "esc\x1b[31m"):
        result = _invoke("admin", "add-user", name, "--role", "supervisor", "--db", db)
        assert result.exit_code == 1 and "bad name" in result.output, (name, result.output)
    listed = _invoke("admin", "list", "--db", db)
    for line in listed.output.splitlines():
        assert len(line.split("\t")) == 4, listed.output


def test_admin_list_of_a_database_that_does_not_exist_does_not_make_one(here):
    # Fixed (failed on the code as reviewed): `xscreen admin list --db sqlite:///lnae.db` (a typo, or the wrong working directory with the
    # default ./xscreen-data/xscreen.db) creates and migrates a new, empty database and prints nothing, exit 0:
    # "no principals" instead of "no such database". A read-only command should not make a database; expected
    # exit 1 with "error: no database at .../lnae.db". (edge/admin_cli.py _auth migrates for every command.)
    result = _invoke("admin", "list", "--db", f"sqlite:///{here}/lnae.db")
    assert not (here / "lnae.db").exists(), "`admin list` created a database"
    assert result.exit_code == 1, result.output


def test_admin_refusals_exit_1_and_leave_the_principals_as_they_were(here):
    db = f"sqlite:///{here}/lane.db"
    first = _invoke("admin", "add-user", "Zoë Ødegård-Ünal 3", "--role", "supervisor", "--db", db)
    assert first.exit_code == 0, first.output
    assert _last_line(first.output).startswith("xs_us_") and len(_last_line(first.output)) > 40
    checks = [
        (["add-user", "Zoë Ødegård-Ünal 3", "--role", "admin"], None, 1, "already exists"),
        (["add-user", "x" * 129, "--role", "supervisor"], None, 1, "bad name"),
        (["add-user", " padded", "--role", "supervisor"], None, 1, "bad name"),
        (["add-user", "pw-empty", "--role", "supervisor", "--password-stdin"], "\n", 1, "password must be"),
        (["add-user", "pw-short", "--role", "supervisor", "--password-stdin"], "1234567\n", 1, "password must be"),
        (["add-user", "pw-none", "--role", "supervisor", "--password-stdin"], "", 1, "password must be"),
        (["add-user", "role", "--role", "root"], None, 2, "root"),
        (["add-station", "lane 3"], None, 1, "bad station name"),
        (["set-password", "nobody"], "long enough password\n", 1, "nobody"),
    ]
    for args, stdin, code, words in checks:
        result = _invoke("admin", *args, "--db", db, input=stdin)
        assert result.exit_code == code and words in result.output, (args, result.exit_code, result.output)
        assert "Traceback" not in result.output and "xs_" not in result.output, result.output
    listed = _invoke("admin", "list", "--db", db)
    assert listed.exit_code == 0
    assert listed.output.splitlines() == ["user\tZoë Ødegård-Ünal 3\tsupervisor\tenabled"], listed.output


# -- keys against a running service ------------------------------------------------------------------------


def _key(out: str) -> str:
    return out.strip().splitlines()[-1].strip()


def test_printed_keys_work_at_once_and_disabling_or_rotating_takes_effect_at_once(tmp_path):
    db_url, data_dir = f"sqlite:///{tmp_path}/lane.db", tmp_path / "data"

    def admin(*args: str, stdin: str | None = None) -> str:
        return xscreen(["admin", *args, "--db", db_url, "--data-dir", str(data_dir)], workdir=tmp_path, stdin=stdin)

    server = new_server(tiny_package(), db_url, data_dir, tmp_path / "srv")
    with server_processes(server, timeout_s=SERVE_TIMEOUT_S):
        station = _key(admin("add-station", "lane-7.scanner"))
        supervisor = _key(admin("add-user", "Sam Supervisor", "--role", "supervisor", "--password-stdin",
                                stdin="a long enough password\n"))
        assert station.startswith("xs_st_") and supervisor.startswith("xs_us_")

        def post(key: str, bag: str) -> httpx.Response:
            return httpx.post(server.url + "/v1/scans", headers={"Authorization": f"Bearer {key}"}, timeout=20.0,
                              files={"image": ("s.png", png_bytes(hash(bag) % 1000), "image/png")},
                              data={"station": "lane-7.scanner", "lane": "1", "bag_id": bag, "view": "top"})

        def scans(key: str) -> httpx.Response:
            return httpx.get(server.url + "/v1/scans", headers={"Authorization": f"Bearer {key}"}, timeout=20.0)

        r = post(station, "bag-1")
        assert r.status_code == 200, r.text
        r = scans(supervisor)
        assert r.status_code == 200 and "bag-1" in r.text, r.text
        assert post(supervisor, "bag-x").status_code == 403  # a supervisor sends no scans

        admin("disable", "lane-7.scanner")
        assert post(station, "bag-2").status_code == 401
        assert "station\tlane-7.scanner\tstation\tdisabled" in admin("list")
        admin("disable", "lane-7.scanner", "--enable")
        assert post(station, "bag-3").status_code == 200

        new_station = _key(admin("rotate-key", "lane-7.scanner"))
        assert new_station != station and new_station.startswith("xs_st_")
        assert post(station, "bag-4").status_code == 401
        assert post(new_station, "bag-5").status_code == 200

        admin("disable", "Sam Supervisor", "--kind", "user")
        assert scans(supervisor).status_code == 401
        admin("disable", "Sam Supervisor", "--kind", "user", "--enable")
        assert scans(supervisor).status_code == 200
