"""Review of the lane service's operations side as operators meet it: Prometheus label values a client or a
station cannot multiply, 413s counted under their route, readiness and access of the ops routes, and the
admin and serve commands with a bad database URL, a `.env` file, and station names the service would
refuse."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from edge.metrics import EdgeMetrics
from edge.settings import EdgeSettings
from edge_model import tiny_package
from edge_support import png_bytes, post_png, running_service, scan_fields
from vision.cli import app as cli_app


def _label_values(metrics: EdgeMetrics, metric: str, label: str) -> set[str]:
    return {s.labels[label] for m in metrics.registry.collect() if m.name == metric for s in m.samples
            if s.name == f"{metric}_total"}


def _invoke(*args: str, input: str | None = None):  # noqa: A002
    return CliRunner().invoke(cli_app, list(args), input=input)


def _clean_failure(result, code: int) -> None:
    """A refusal as a message and an exit code, not a traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "error" in result.output and "Traceback" not in result.output, result.output


@pytest.fixture()
def no_xscreen_env(monkeypatch, tmp_path):
    """A working directory without .env and no XSCREEN_* database variables."""
    for name in ("XSCREEN_DB_URL", "XSCREEN_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- metrics -----------------------------------------------------------------------------------------------


def test_made_up_http_methods_share_one_method_label(tmp_path):
    # Any token is a valid HTTP method on the wire, and no authentication runs before the 405: each new one
    # would add a counter and a 12-bucket histogram series.
    with running_service(tmp_path) as svc:
        for method in ("FOO1", "BAR2", "PROPFIND"):
            assert svc.client.request(method, "/healthz").status_code == 405
        assert svc.client.get("/healthz").status_code == 200
        methods = _label_values(svc.ctx.metrics, "xscreen_http_requests", "method")
        assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods
        value = svc.ctx.metrics.registry.get_sample_value
        assert value("xscreen_http_requests_total", {"route": "/healthz", "method": "other", "status": "405"}) == 3


def test_413s_count_once_and_unrouted_paths_share_one_label(tmp_path):
    with running_service(tmp_path, max_body_bytes=4096) as svc:
        r = post_png(svc, png_bytes(1, hw=(200, 200)), "bag-big")  # Content-Length over the limit
        assert r.status_code == 413
        value = svc.ctx.metrics.registry.get_sample_value
        assert value("xscreen_rejections_total", {"reason": "body_too_large"}) == 1
        assert sum(s.value for m in svc.ctx.metrics.registry.collect() if m.name == "xscreen_http_requests"
                   for s in m.samples if s.name.endswith("_total") and s.labels["status"] == "413") == 1
        # Paths no route takes stay one label, whatever their ids.
        for path in ("/nope/1", "/nope/2"):
            assert svc.client.get(path).status_code == 404
        assert value("xscreen_http_requests_total", {"route": "unmatched", "method": "GET", "status": "404"}) == 2


def test_a_413_refused_before_routing_counts_under_its_route(tmp_path):
    with running_service(tmp_path, max_body_bytes=4096) as svc:
        assert post_png(svc, png_bytes(1, hw=(200, 200)), "bag-big").status_code == 413
        value = svc.ctx.metrics.registry.get_sample_value
        assert value("xscreen_http_requests_total", {"route": "/v1/scans", "method": "POST", "status": "413"}) == 1


def test_lane_label_values_are_bounded_and_agree_between_metrics():
    metrics = EdgeMetrics(batch_max_size=2, max_lanes=3)
    for i in range(10):
        metrics.scans.labels(lane=f"lane-{i}", alarm="true").inc()
        metrics.alarms.labels(class_name="cash_bundle", lane=f"lane-{i}").inc()
    metrics.scans.labels(lane="lane-0", alarm="false").inc()  # a lane seen before keeps its own label
    scans_lanes = _label_values(metrics, "xscreen_scans", "lane")
    assert scans_lanes == _label_values(metrics, "xscreen_alarms", "lane") == {"lane-0", "lane-1", "lane-2", "_other"}
    value = metrics.registry.get_sample_value
    assert value("xscreen_scans_total", {"lane": "_other", "alarm": "true"}) == 7
    assert value("xscreen_alarms_total", {"lane": "_other", "class_name": "cash_bundle"}) == 7
    assert value("xscreen_scans_total", {"lane": "lane-0", "alarm": "false"}) == 1


def test_a_station_inventing_lanes_cannot_grow_the_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr("edge.metrics.MAX_LANE_LABELS", 2)
    with running_service(tmp_path) as svc:
        for i in range(4):
            assert post_png(svc, png_bytes(40 + i), f"bag-lane-{i}", lane=f"made-up-{i}").status_code == 200
        assert _label_values(svc.ctx.metrics, "xscreen_scans", "lane") == {"made-up-0", "made-up-1", "_other"}
        text = svc.client.get("/metrics", headers=svc.auth("supervisor")).text
        assert 'lane="_other"' in text


def test_ops_routes_access_and_readiness_over_the_lifecycle(tmp_path):
    with running_service(tmp_path) as svc:
        c = svc.client
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").json() == {"status": "ready", "model_loaded": True, "database": True, "batcher": True,
                                         "storage": True, "storage_problem": None}
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=svc.auth("station")).status_code == 403
        r = c.get("/metrics", headers=svc.auth("admin"))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    r = c.get("/readyz")  # the lifespan has shut down: not ready any more
    assert r.status_code == 503 and r.json()["model_loaded"] is False


# -- settings and `xscreen serve` --------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["foo://bar", "not a url", "mysql://u:pw@host/db"])
def test_settings_refuse_a_database_url_the_store_cannot_open(url):
    with pytest.raises(ValidationError, match="db_url"):
        EdgeSettings(_env_file=None, model_path="m.onnx", db_url=url)
    assert EdgeSettings(_env_file=None, model_path="m.onnx", db_url="postgresql+psycopg://u:p@h/db").db_url


@pytest.mark.parametrize("url", ["localhost:9000/hook", "ftp://host/x", "http://"])
def test_settings_refuse_a_webhook_url_that_can_never_be_delivered_to(url):
    with pytest.raises(ValidationError, match="webhook_url"):
        EdgeSettings(_env_file=None, model_path="m.onnx", webhook_url=url)
    assert EdgeSettings(_env_file=None, model_path="m.onnx", webhook_url="https://soc.example/hook").webhook_url


def _no_uvicorn(monkeypatch) -> None:
    def refuse(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("serve started the server despite bad settings")

    monkeypatch.setattr("uvicorn.run", refuse)


def test_serve_reports_a_misspelt_dotenv_key_as_a_message(no_xscreen_env, monkeypatch):
    _no_uvicorn(monkeypatch)
    (no_xscreen_env / ".env").write_text("XSCREEN_BATCH_MAX_SIZ=4\n")
    result = _invoke("serve", "--model", str(tiny_package()))
    _clean_failure(result, 2)
    assert "XSCREEN_BATCH_MAX_SIZ" in result.output.upper()


@pytest.mark.parametrize("url", ["foo://bar", "mysql://u:s3cret@db.example/lane"])
def test_serve_refuses_a_bad_database_url_before_starting(no_xscreen_env, monkeypatch, url):
    _no_uvicorn(monkeypatch)
    result = _invoke("serve", "--model", str(tiny_package()), "--db", url)
    _clean_failure(result, 2)
    assert "db_url" in result.output and "s3cret" not in result.output


# -- `xscreen admin` ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["foo://bar", "not a url", "postgresql+psycopg://u:s3cret@127.0.0.1:1/db"])
def test_admin_reports_a_database_it_cannot_open_as_a_message(no_xscreen_env, url):
    result = _invoke("admin", "add-station", "lane-1", "--db", url)
    _clean_failure(result, 1)
    assert "s3cret" not in result.output


def test_admin_reports_a_sqlite_file_it_cannot_create_as_a_message(no_xscreen_env):
    (no_xscreen_env / "a-file").write_text("")
    result = _invoke("admin", "add-station", "lane-1", "--db", f"sqlite:///{no_xscreen_env}/a-file/sub/x.db")
    _clean_failure(result, 1)


def _station_works(db_url: str, data_dir, key: str) -> bool:
    from edge.auth import Auth
    from edge.store import Store

    store = Store(db_url, data_dir)
    try:
        store.migrate()
        return Auth(store).principal_for_key(key) is not None
    finally:
        store.close()


def test_admin_uses_the_database_of_dotenv_as_serve_does(no_xscreen_env, monkeypatch):
    tmp = no_xscreen_env
    dotenv_db = f"sqlite:///{tmp}/from-dotenv.db"
    (tmp / ".env").write_text(f"XSCREEN_DB_URL={dotenv_db}\nXSCREEN_DATA_DIR={tmp}/lane-data\n")
    served = EdgeSettings(model_path="m.onnx")  # what `xscreen serve` would open here
    assert served.db_url == dotenv_db
    result = _invoke("admin", "add-station", "lane-1")
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert _station_works(served.db_url, served.data_dir, key)
    # The environment beats .env, and --db beats both (the same order as serve's settings).
    env_db = f"sqlite:///{tmp}/from-env.db"
    monkeypatch.setenv("XSCREEN_DB_URL", env_db)
    key = _invoke("admin", "add-station", "lane-2").output.strip().splitlines()[-1]
    assert _station_works(env_db, tmp / "x", key)
    flag_db = f"sqlite:///{tmp}/from-flag.db"
    key = _invoke("admin", "add-station", "lane-3", "--db", flag_db).output.strip().splitlines()[-1]
    assert _station_works(flag_db, tmp / "x", key)


@pytest.mark.parametrize("name", ["lane 3", "lane/3", "läne-3", "_lane", "x" * 129])
def test_admin_refuses_a_station_name_the_service_would_refuse_in_every_scan(no_xscreen_env, name):
    db = f"sqlite:///{no_xscreen_env}/a.db"
    result = _invoke("admin", "add-station", name, "--db", db)
    _clean_failure(result, 1)
    assert "station" in result.output
    listed = _invoke("admin", "list", "--db", db)
    if (no_xscreen_env / "a.db").exists():
        assert listed.exit_code == 0 and "station" not in listed.output
    else:  # refused before the database was made: listing a database that is not there makes none
        assert listed.exit_code == 1 and "no database" in listed.output and not (no_xscreen_env / "a.db").exists()


def test_admin_prints_the_key_last_and_refuses_duplicates_and_bad_roles(no_xscreen_env):
    db = f"sqlite:///{no_xscreen_env}/a.db"
    first = _invoke("admin", "add-station", "lane-3.scanner:1", "--db", db)
    assert first.exit_code == 0, first.output
    key = first.output.strip().splitlines()[-1]
    assert key.startswith("xs_st_") and _station_works(db, no_xscreen_env / "d", key)
    _clean_failure(_invoke("admin", "add-station", "lane-3.scanner:1", "--db", db), 1)
    assert _invoke("admin", "add-user", "bob", "--role", "root", "--db", db).exit_code == 2
    user = _invoke("admin", "add-user", "bob", "--role", "supervisor", "--db", db)
    assert user.exit_code == 0 and user.output.strip().splitlines()[-1].startswith("xs_")


def test_the_station_name_rule_is_the_ingest_rule():
    # What the admin command lets through, a scan's `station` field passes (edge.ingest.validate_meta).
    from edge.ingest import validate_meta

    meta = validate_meta(scan_fields("bag-1", station="lane-3.scanner:1"), station_name="lane-3.scanner:1")
    assert meta.station == "lane-3.scanner:1"


# -- logs --------------------------------------------------------------------------------------------------


def test_log_lines_are_one_json_object_each_for_odd_messages_and_exceptions():
    import json
    import logging

    from edge.logs import JsonFormatter

    try:
        raise RuntimeError("échec\n\"quoted\" \x00 {braces}")
    except RuntimeError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord("xscreen.edge.app", logging.ERROR, __file__, 1, "100%% sure: %s", ("名前\nnext",),
                               exc_info)
    record.fields = {"path": "/ui/bags/é", "latency_ms": 1.5, "obj": object()}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["msg"] == "100% sure: 名前\nnext" and doc["path"] == "/ui/bags/é" and "échec" in doc["exc"]


def test_the_access_log_holds_no_credentials(tmp_path, caplog):
    import logging

    from edge.logs import ACCESS_LOGGER

    with running_service(tmp_path) as svc:
        key = svc.keys["supervisor"]
        with caplog.at_level(logging.INFO, logger="xscreen"):
            svc.client.get("/metrics", headers={"Authorization": f"Bearer {key}", "Cookie": "xscreen_session=tok123"})
            svc.client.get("/v1/me", headers={"Authorization": "Bearer xs_us_wrong-key-456"})
        lines = [r for r in caplog.records if r.name == ACCESS_LOGGER]
        assert len(lines) == 2 and lines[0].fields["principal"] == "user:sup"
        text = caplog.text + repr([r.__dict__ for r in caplog.records])
        for secret in (key, "tok123", "wrong-key-456"):
            assert secret not in text


def test_every_refusal_of_a_scan_counts_under_its_reason(tmp_path):
    import json

    with running_service(tmp_path) as svc:
        value = svc.ctx.metrics.registry.get_sample_value

        def rejected(reason: str) -> float:
            return value("xscreen_rejections_total", {"reason": reason}) or 0.0

        auth = svc.auth("station")
        assert svc.client.post("/v1/scans", params=scan_fields("bag-1"), content=png_bytes(1), headers=auth).status_code == 415
        assert svc.client.post("/v1/scans", params=scan_fields("bag-2"), content=png_bytes(1),
                               headers={**auth, "Content-Type": "text/plain"}).status_code == 415
        assert rejected("media_type") == 2
        r = svc.client.post("/v1/scans", params={"station": "st1", "lane": "1"}, content=png_bytes(1),
                            headers={**auth, "Content-Type": "image/png"})
        assert r.status_code == 422
        r = svc.client.post("/v1/scans", data=scan_fields("bag-3"), files={"other": ("x.png", png_bytes(1), "image/png")},
                            headers=auth)
        assert r.status_code == 422
        assert rejected("invalid_fields") == 2
        assert post_png(svc, png_bytes(1), "bag-4", station="st2").status_code == 403
        assert rejected("wrong_station") == 1
        with svc.client.websocket_connect("/v1/stream", headers=auth) as ws:
            assert ws.receive_json()["type"] == "ready"
            ws.send_text(json.dumps({**scan_fields("bag-5"), "seq": 0, "content_type": "text/plain"}))
            ws.send_bytes(png_bytes(1))
            ws.send_bytes(png_bytes(1))  # no header before it
            answers = [ws.receive_json() for _ in range(2)]
        assert [a["status"] for a in answers] == [415, 400]
        assert rejected("media_type") == 3 and rejected("bad_frame") == 1
        # A scan screened is no refusal.
        assert post_png(svc, png_bytes(1), "bag-6").status_code == 200
        assert sum(rejected(r) for r in ("media_type", "invalid_fields", "wrong_station", "bad_frame")) == 7
