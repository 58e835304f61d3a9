"""The lane service's API with the tiny model package: ingest, answers equal to Engine.predict, bad input,
back-pressure, deadlines, rate limits, multi-view fusion, idempotency, the WebSocket stream, metrics,
TDRs, the webhook outbox, the station simulator, settings and logs. Torch never loads in the service
process (checked in a subprocess)."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from edge.app import create_app
from edge.formats import write_dicos_dx
from edge.logs import ACCESS_LOGGER, JsonFormatter
from edge.settings import EdgeSettings
from edge.tdr import read_tdr
from edge_model import tiny_package
from edge_support import (
    bomb_png,
    grey16_png,
    jpeg_bytes,
    make_settings,
    png_bytes,
    post_png,
    running_service,
    scan_fields,
    served_service,
)
from inference.engine import Engine
from vision.decide import DecisionPolicy
from vision.decode import decode
from vision.package import PackageError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with running_service(tmp_path_factory.mktemp("edge-api"), tdr_dir=None) as svc:
        yield svc


def test_service_modules_and_a_running_app_do_not_load_torch(tmp_path):
    # A subprocess: other test modules of this session may have imported torch already.
    code = (
        "import sys\n"
        "sys.path.insert(0, 'tests')\n"
        "import edge.app, edge.station, edge.cli, edge.ui, edge.tdr, edge.routes_stream\n"
        "from pathlib import Path\n"
        "from edge_support import running_service, png_bytes, post_png\n"
        f"with running_service(Path({str(tmp_path)!r}), model_path=Path({str(tiny_package())!r})) as svc:\n"
        "    assert post_png(svc, png_bytes(1), 'bag-torch').status_code == 200\n"
        "sys.exit(3 if 'torch' in sys.modules else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_create_app_is_cheap_and_readyz_waits_for_the_lifespan(tmp_path):
    # A missing model file is only noticed by the lifespan: create_app loads nothing.
    app = create_app(make_settings(tmp_path, model_path=tmp_path / "missing.onnx"))
    client = TestClient(app)  # no `with`: the lifespan does not run
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["model_loaded"] is False
    assert client.post("/v1/scans", content=b"x", headers={"Content-Type": "image/png",
                                                           "Authorization": "Bearer xs_st_x"}).status_code == 503
    with pytest.raises(PackageError):
        with TestClient(app):
            pass


def test_a_changed_model_package_is_refused_at_startup(tmp_path):
    bad = tmp_path / "changed.onnx"
    data = bytearray(tiny_package().read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of the graph: the checksum no longer matches
    bad.write_bytes(bytes(data))
    with pytest.raises(PackageError):
        with TestClient(create_app(make_settings(tmp_path, model_path=bad))):
            pass


def test_settings_from_environment_and_unknown_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("XSCREEN_MODEL_PATH", str(tmp_path / "m.onnx"))
    monkeypatch.setenv("XSCREEN_BATCH_MAX_SIZE", "4")
    monkeypatch.setenv("XSCREEN_RATE_LIMIT_PER_S", "2.5")
    settings = EdgeSettings(_env_file=None)
    assert (settings.batch_max_size, settings.rate_limit_per_s) == (4, 2.5)
    env = tmp_path / ".env"
    env.write_text("XSCREEN_MODEL_PATH=m.onnx\nOTHER_TOOL_SETTING=1\nXSCREEN_STATION_KEY=xs_st_k\n")
    assert EdgeSettings(_env_file=env).batch_max_size == 4  # other tools' keys in .env are left alone
    env.write_text("XSCREEN_MODEL_PATH=m.onnx\nXSCREEN_BATCH_MAX_SIZ=4\n")
    with pytest.raises(ValueError, match="xscreen_batch_max_siz"):
        EdgeSettings(_env_file=env)
    with pytest.raises(ValidationError, match="unknown settings"):
        EdgeSettings(_env_file=None, model_path="m.onnx", batch_max_siz=4)
    with pytest.raises(ValidationError):
        EdgeSettings(_env_file=None, batch_max_size=16, queue_max=8)


@pytest.mark.parametrize(("cores", "workers", "threads", "want"), [
    (2, None, None, (2, 1)),  # a 2-core lane box: two one-thread model calls
    (8, None, None, (2, 4)),
    (1, None, None, (1, 1)),
    (8, 1, None, (1, 8)),
    (2, None, 2, (2, 2)),  # explicit settings win
])
def test_model_workers_and_threads_follow_the_cores(monkeypatch, cores, workers, threads, want):
    monkeypatch.setattr("edge.settings.usable_cores", lambda: cores)
    settings = EdgeSettings(_env_file=None, model_path="m.onnx", batch_workers=workers, engine_threads=threads)
    assert (settings.model_workers, settings.model_threads) == want
    assert settings.engine_spin == "run"
    assert settings.batch_share_max == 2


def test_an_all_core_session_for_batches_alone_only_with_the_default_threads(tmp_path, monkeypatch):
    from edge.app import _start_engine, _start_engine_alone

    monkeypatch.setattr("edge.settings.usable_cores", lambda: 4)
    monkeypatch.setattr("edge.app.usable_cores", lambda: 4)
    defaults = make_settings(tmp_path, engine_threads=None)  # 2 model calls of 2 threads on 4 cores
    engine = _start_engine(defaults)
    alone = _start_engine_alone(defaults, engine)
    assert alone is not None and alone.package.weights_sha256 == engine.package.weights_sha256
    assert alone.session.get_session_options().intra_op_num_threads == 4
    assert engine.session.get_session_options().intra_op_num_threads == 2
    assert _start_engine_alone(make_settings(tmp_path, engine_threads=1), engine) is None  # chosen threads win
    assert _start_engine_alone(make_settings(tmp_path, engine_threads=None, batch_workers=1), engine) is None
    # A service started with the default threads answers through both sessions alike.
    with running_service(tmp_path / "svc", engine_threads=None, batch_share_max=3) as svc:
        assert svc.ctx.batcher.run_batch_alone is not None
        assert svc.ctx.batcher.share_max == 3  # the setting reaches the batcher
        r = post_png(svc, png_bytes(5), "bag-alone")
        assert r.status_code == 200, r.text


def test_one_json_access_log_line_per_request(service, caplog):
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        r = post_png(service, png_bytes(77), "bag-log", lane="3")
    (record,) = [rec for rec in caplog.records if rec.name == ACCESS_LOGGER]
    line = json.loads(JsonFormatter().format(record))
    assert line["route"] == "/v1/scans" and line["status"] == 200 and line["station"] == "st1"
    assert line["request_id"] == r.headers["x-request-id"] and line["latency_ms"] > 0


def test_answer_equals_engine_predict_on_the_same_bytes(service):
    data = png_bytes(seed=11)
    r = post_png(service, data, "bag-predict")
    assert r.status_code == 200, r.text
    body = r.json()
    engine = Engine(service.settings.model_path, threads=1)
    expected = engine.predict([decode(data).pixels])[0]
    assert body["alarm"] == expected.decision.alarm
    assert body["alarm_classes"] == list(expected.decision.alarm_classes)
    assert len(body["detections"]) == len(expected.detections)
    for got, box, score, cid in zip(body["detections"], expected.detections.boxes_xyxy,
                                    expected.detections.scores, expected.detections.class_ids):
        assert got["class"] == engine.class_names[int(cid)]
        assert got["score"] == pytest.approx(float(score), abs=1e-5)
        assert got["box_xyxy"] == pytest.approx([float(v) for v in box], abs=1e-3)
    assert body["model"] == {"name": "tiny-test", "version": "0.0.1"}
    assert set(body["timings"]) == {"decode_ms", "queue_ms", "inference_ms", "total_ms"}
    assert body["timings"]["total_ms"] >= body["timings"]["inference_ms"] > 0
    assert body["duplicate"] is False


def test_raw_body_with_query_fields_and_jpeg(service):
    r = service.client.post("/v1/scans", params=scan_fields("bag-raw"), content=jpeg_bytes(3),
                            headers={**service.auth("station"), "Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    rec = service.client.get(f"/v1/scans/{r.json()['id']}", headers=service.auth("supervisor")).json()
    assert rec["media_type"] == "image/jpeg" and rec["width"] == 80 and rec["height"] == 96


def test_idempotent_resend_returns_the_same_record(service):
    data = png_bytes(seed=21)
    first = post_png(service, data, "bag-idem").json()
    count = service.ctx.store.count_scans()
    again = post_png(service, data, "bag-idem")
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert again.json()["duplicate"] is True
    assert again.json()["detections"] == first["detections"]
    assert service.ctx.store.count_scans() == count
    # The same image as another bag is another scan.
    other = post_png(service, data, "bag-idem-2").json()
    assert other["id"] != first["id"] and other["duplicate"] is False


def test_each_scan_is_hashed_once_and_not_on_the_event_loop(service, monkeypatch):
    import asyncio
    import hashlib

    data = png_bytes(seed=24)
    calls: list[bool] = []  # per hash of the scan's bytes: was it on the event loop?
    real_sha256 = hashlib.sha256

    def counting_sha256(value=b"", *args, **kwargs):
        if bytes(value) == data:
            try:
                asyncio.get_running_loop()
                calls.append(True)
            except RuntimeError:
                calls.append(False)
        return real_sha256(value, *args, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counting_sha256)
    r = post_png(service, data, "bag-hash-once")
    assert r.status_code == 200, r.text
    assert calls == [False]
    rec = service.client.get(f"/v1/scans/{r.json()['id']}", headers=service.auth("supervisor")).json()
    assert rec["image_sha256"] == real_sha256(data).hexdigest()
    image = service.client.get(f"/v1/scans/{r.json()['id']}/image", headers=service.auth("supervisor"))
    assert image.status_code == 200 and image.content == data


def test_a_resend_is_answered_from_the_store_while_the_queue_is_full(service, monkeypatch):
    from edge.batcher import MicroBatcher, QueueFullError

    data = png_bytes(seed=22)
    first = post_png(service, data, "bag-full").json()

    def full(self, scan, *, deadline):
        raise QueueFullError(3.0)

    monkeypatch.setattr(MicroBatcher, "enqueue_scan", full)
    again = post_png(service, data, "bag-full")
    assert again.status_code == 200 and again.json()["duplicate"] is True and again.json()["id"] == first["id"]
    refused = post_png(service, png_bytes(seed=23), "bag-full")  # a new image of the same bag needs the model
    assert refused.status_code == 503 and "queue is full" in refused.json()["detail"]
    monkeypatch.undo()
    assert post_png(service, png_bytes(seed=23), "bag-full").json()["bag_views"] == 2


def test_a_decode_refusal_counts_only_when_it_is_the_answer_and_its_image_is_not_stored(service, monkeypatch):
    import hashlib

    from vision.decode import DecodeError

    def undecodable() -> float:
        return service.ctx.metrics.registry.get_sample_value("xscreen_rejections_total", {"reason": "undecodable"}) or 0.0

    data = png_bytes(seed=24)
    first = post_png(service, data, "bag-refusal").json()
    before = undecodable()

    def refuse(upload):
        raise DecodeError("this decoder refuses everything")

    monkeypatch.setattr(service.ctx.batcher, "prepare", refuse)
    # A re-send is answered from the store; a decode that ran beside the lookup refuses nobody.
    again = post_png(service, data, "bag-refusal")
    assert again.status_code == 200 and again.json()["id"] == first["id"] and again.json()["duplicate"] is True
    assert undecodable() == before
    data = png_bytes(seed=25)
    refused = post_png(service, data, "bag-refusal")
    assert refused.status_code == 422 and "refuses everything" in refused.json()["detail"]
    assert undecodable() == before + 1
    with pytest.raises(KeyError):  # a refused scan leaves no image file behind
        service.ctx.store.images.find(hashlib.sha256(data).hexdigest())


def test_multi_view_fusion(service):
    engine = service.ctx.engine
    original = engine.policy
    try:
        # View 1 under thresholds nothing reaches (scores < 1): clear.
        engine.policy = DecisionPolicy(class_names=engine.class_names, thresholds={c: 1.0 for c in engine.class_names})
        v1 = post_png(service, png_bytes(31), "bag-fuse", view="top").json()
        assert v1["alarm"] is False and v1["bag_alarm"] is False and v1["bag_views"] == 1
        # View 2 under low thresholds: alarms, and so does the bag.
        engine.policy = original
        v2 = post_png(service, png_bytes(32), "bag-fuse", view="side").json()
        assert v2["alarm"] is True
        assert v2["bag_alarm"] is True and v2["bag_views"] == 2
        assert v2["bag_alarm_classes"] == v2["alarm_classes"]
        # Another bag id is not fused in.
        v3 = post_png(service, png_bytes(33), "bag-fuse-other", view="top").json()
        assert v3["bag_views"] == 1
    finally:
        engine.policy = original


def test_grey16_and_dicos_dx_inputs(service, tmp_path):
    r = post_png(service, grey16_png(5), "bag-grey16")
    assert r.status_code == 200, r.text
    pixels = np.random.default_rng(7).integers(0, 65535, (40, 56), dtype=np.uint16)
    write_dicos_dx(pixels, tmp_path / "scan.dcs")
    data = (tmp_path / "scan.dcs").read_bytes()
    r = service.client.post("/v1/scans", params=scan_fields("bag-dicos"), content=data,
                            headers={**service.auth("station"), "Content-Type": "application/dicom"})
    assert r.status_code == 200, r.text
    rec = service.client.get(f"/v1/scans/{r.json()['id']}", headers=service.auth("supervisor")).json()
    assert (rec["media_type"], rec["width"], rec["height"]) == ("application/dicom", 56, 40)
    expected = Engine(service.settings.model_path, threads=1).predict([pixels])[0]
    assert [d["score"] for d in r.json()["detections"]] == pytest.approx(expected.detections.scores.tolist(), abs=1e-5)


def test_dual_energy_pair_is_refused_by_an_rgb_model_with_a_clear_message(service):
    low, high = grey16_png(1), grey16_png(2)
    r = service.client.post("/v1/scans", files={"low": ("low.png", low, "image/png"), "high": ("high.png", high, "image/png")},
                            data=scan_fields("bag-de"), headers=service.auth("station"))
    assert r.status_code == 422
    assert "dual-energy" in r.json()["detail"]


@pytest.mark.parametrize(
    ("content", "content_type", "status", "phrase"),
    [
        (b"", "image/png", 422, "empty"),
        (jpeg_bytes(1)[:400], "image/jpeg", 422, "truncated"),
        (b"hello", "text/plain", 415, "unsupported content type"),
        (bomb_png(), "image/png", 413, "pixels"),
        (b"\x00" * 128 + b"DICM" + b"\x01\x02garbage" * 20, "application/dicom", 422, "DICOS"),
        (b"not an image at all", "image/png", 422, "not an image"),
    ],
    ids=["empty", "truncated-jpeg", "wrong-content-type", "bomb-20000x20000", "malformed-dicos", "garbage"],
)
def test_bad_input_is_a_clear_4xx_and_the_service_stays_healthy(service, content, content_type, status, phrase):
    r = service.client.post("/v1/scans", params=scan_fields("bag-bad"), content=content,
                            headers={**service.auth("station"), "Content-Type": content_type})
    assert r.status_code == status, r.text
    assert phrase.lower() in r.json()["detail"].lower()
    assert service.client.get("/healthz").status_code == 200
    assert service.client.get("/readyz").status_code == 200


def test_missing_fields_and_station_mismatch(service):
    r = service.client.post("/v1/scans", files={"image": ("a.png", png_bytes(1), "image/png")},
                            data={"station": "st1", "lane": "1"}, headers=service.auth("station"))
    assert r.status_code == 422 and "bag_id" in r.json()["detail"]
    r = post_png(service, png_bytes(1), "bag-x", station="st2")
    assert r.status_code == 403 and "st1" in r.json()["detail"]
    r = service.client.post("/v1/scans", files={"other": ("a.png", png_bytes(1), "image/png")},
                            data=scan_fields("bag-x"), headers=service.auth("station"))
    assert r.status_code == 422 and "image" in r.json()["detail"]
    # Identifiers are matched whole: a final newline (which "$" alone lets through) is refused in every field.
    for name, value in (("bag_id", "bag-x\n"), ("lane", "1\n"), ("view", "top\n")):
        fields = {**scan_fields("bag-x"), "view": "top", name: value}
        r = service.client.post("/v1/scans", params=fields, content=png_bytes(1),
                                headers={**service.auth("station"), "Content-Type": "image/png"})
        assert r.status_code == 422 and name in r.json()["detail"], (name, r.text)


def test_body_size_limit(tmp_path):
    with running_service(tmp_path, max_body_bytes=4096) as svc:
        r = post_png(svc, png_bytes(1, hw=(200, 200)), "bag-big")
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        # Without a Content-Length (chunked), the body is counted as it streams in.
        r = svc.client.post("/v1/scans", params=scan_fields("bag-chunked"), content=iter([b"\x00" * 1000] * 10),
                            headers={**svc.auth("station"), "Content-Type": "image/png"})
        assert "content-length" not in r.request.headers
        assert r.status_code == 413
        assert svc.client.get("/healthz").status_code == 200


def test_queue_full_gives_503_with_retry_after(tmp_path):
    with running_service(tmp_path, queue_max=1, batch_max_size=1, batch_max_wait_ms=0.0) as svc:
        run = svc.ctx.batcher.run_batch

        def slow(batch, params):
            time.sleep(0.6)
            return run(batch, params)

        svc.ctx.batcher.run_batch = slow
        with ThreadPoolExecutor(max_workers=5) as pool:
            futures = [pool.submit(post_png, svc, png_bytes(100 + i), f"bag-bp-{i}") for i in range(5)]
            responses = [f.result(timeout=60) for f in futures]
        codes = sorted(r.status_code for r in responses)
        assert 503 in codes, codes
        assert set(codes) <= {200, 503}
        refused = next(r for r in responses if r.status_code == 503)
        assert int(refused.headers["Retry-After"]) >= 1
        assert "queue is full" in refused.json()["detail"]
        assert svc.client.get("/healthz").status_code == 200


def test_deadline_gives_504(tmp_path):
    with running_service(tmp_path, request_deadline_s=0.3) as svc:
        run = svc.ctx.batcher.run_batch

        def slow(batch, params):
            time.sleep(0.8)
            return run(batch, params)

        svc.ctx.batcher.run_batch = slow
        r = post_png(svc, png_bytes(1), "bag-late")
        assert r.status_code == 504 and "deadline" in r.json()["detail"]
        # Nothing was recorded for the abandoned scan.
        assert svc.ctx.store.count_scans() == 0
        svc.ctx.batcher.run_batch = run
        # The deadline holds before the model too: a re-send check held up in a slow database read.
        store = svc.ctx.store
        read = store.bag_scans

        def slow_read(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            time.sleep(1.0)
            return read(*args, **kwargs)

        store.bag_scans = slow_read
        t0 = time.monotonic()
        r = post_png(svc, png_bytes(2), "bag-slow-read")
        assert r.status_code == 504 and "deadline" in r.json()["detail"]
        assert time.monotonic() - t0 < 0.9
        store.bag_scans = read
        time.sleep(1.0)  # the shielded read finishes
        assert svc.ctx.store.count_scans() == 0


def test_rate_limit_gives_429_with_retry_after(tmp_path):
    with running_service(tmp_path, rate_limit_per_s=0.01, rate_limit_burst=2) as svc:
        codes = [post_png(svc, png_bytes(i), f"bag-rl-{i}").status_code for i in range(3)]
        assert codes == [200, 200, 429]
        r = post_png(svc, png_bytes(9), "bag-rl-9")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        # Per station: another station is not limited by st1's bucket.
        assert post_png(svc, png_bytes(8), "bag-rl-8", who="station2", station="st2").status_code == 200


def test_stream_answers_in_order(service):
    headers = service.auth("station")
    with service.client.websocket_connect("/v1/stream", headers=headers) as ws:
        assert ws.receive_json() == {"type": "ready", "station": "st1"}
        for i in range(5):
            ws.send_text(json.dumps({**scan_fields(f"bag-ws-{i}"), "seq": i}))
            ws.send_bytes(png_bytes(200 + i))
        # One as base64 in the header, one broken, then one more.
        ws.send_text(json.dumps({**scan_fields("bag-ws-b64"), "seq": 5, "image_b64": base64.b64encode(png_bytes(205)).decode()}))
        ws.send_text(json.dumps({**scan_fields("bag-ws-bad"), "seq": 6}))
        ws.send_bytes(b"not an image")
        ws.send_text(json.dumps({**scan_fields("bag-ws-7"), "seq": 7}))
        ws.send_bytes(png_bytes(207))
        answers = [ws.receive_json() for _ in range(8)]
    assert [a["seq"] for a in answers] == list(range(8))
    assert [a["type"] for a in answers] == ["result"] * 6 + ["error", "result"]
    assert answers[6]["status"] == 422
    assert [a["bag_id"] for a in answers if a["type"] == "result"] == [f"bag-ws-{i}" for i in range(5)] + ["bag-ws-b64", "bag-ws-7"]


def test_stream_scans_count_in_the_request_metrics(service):
    def sample(name: str, **labels: str) -> float:
        return service.ctx.metrics.registry.get_sample_value(name, {"route": "/v1/stream", "method": "SCAN", **labels}) or 0.0

    keys = (("xscreen_http_requests_total", {"status": "200"}), ("xscreen_http_requests_total", {"status": "422"}),
            ("xscreen_http_request_latency_seconds_count", {}), ("xscreen_http_request_latency_seconds_sum", {}))
    before = [sample(name, **labels) for name, labels in keys]  # the service is shared with other tests
    with service.client.websocket_connect("/v1/stream", headers=service.auth("station")) as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_text(json.dumps({**scan_fields("bag-ws-metrics-0"), "seq": 0}))
        ws.send_bytes(png_bytes(210))
        ws.send_text(json.dumps({**scan_fields("bag-ws-metrics-1"), "seq": 1}))
        ws.send_bytes(b"not an image")
        assert [ws.receive_json()["type"] for _ in range(2)] == ["result", "error"]
    ok, refused, count, seconds = (sample(name, **labels) - b for (name, labels), b in zip(keys, before))
    assert (ok, refused, count) == (1, 1, 2)
    assert seconds > 0


def test_stream_key_in_first_message_and_refusals(service):
    with service.client.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"key": service.keys["station"]}))
        assert ws.receive_json()["type"] == "ready"
    with service.client.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"key": service.keys["supervisor"]}))
        msg = ws.receive_json()
        assert msg["type"] == "error" and msg["status"] == 401


def test_metrics_exposed(service):
    post_png(service, png_bytes(300), "bag-metrics", lane="7")
    text = service.client.get("/metrics", headers=service.auth("supervisor")).text
    assert 'xscreen_http_requests_total{method="POST",route="/v1/scans",status="200"}' in text
    assert "xscreen_http_request_latency_seconds_bucket" in text
    assert "xscreen_batch_size_bucket" in text and "xscreen_queue_depth" in text
    assert 'xscreen_alarms_total{class_name="drug_package",lane="7"}' in text
    assert 'xscreen_model_info{' in text and 'name="tiny-test"' in text


def test_openapi_documents_every_route(service):
    doc = service.client.get("/openapi.json", headers=service.auth("station")).json()
    paths = doc["paths"]
    for path in ["/v1/scans", "/v1/scans/{scan_id}", "/v1/scans/{scan_id}/image", "/v1/scans/{scan_id}/tdr",
                 "/v1/scans/{scan_id}/reviews", "/v1/seizures", "/healthz", "/readyz", "/metrics", "/login"]:
        assert path in paths, path
        for op in paths[path].values():
            assert op.get("tags") and op.get("summary"), (path, op)
    assert "multipart/form-data" in paths["/v1/scans"]["post"]["requestBody"]["content"]
    assert "413" in paths["/v1/scans"]["post"]["responses"]


def test_tdr_is_a_dicos_report_of_the_alarmed_detections(service):
    body = post_png(service, png_bytes(400), "bag-tdr").json()
    assert body["alarm"]
    r = service.client.get(f"/v1/scans/{body['id']}/tdr", headers=service.auth("supervisor"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    report = read_tdr(r.content)
    alarmed = [d for d in body["detections"] if d["alarm"]]
    assert report["OOIID"] == "bag-tdr"
    assert len(report["PTOs"]) == len(alarmed)
    first = report["PTOs"][0]
    assert first["Assessment"]["description"] == alarmed[0]["class"]
    assert first["Assessment"]["probability"] == pytest.approx(alarmed[0]["score"], abs=1e-6)
    assert first["Base"]["x"] == pytest.approx(alarmed[0]["box_xyxy"][0], abs=1e-3)
    assert first["Base"]["y"] == pytest.approx(alarmed[0]["box_xyxy"][1], abs=1e-3)


def test_tdr_file_written_and_409_for_a_clear_scan(tmp_path):
    with running_service(tmp_path, tdr_dir=tmp_path / "tdr") as svc:
        from edge.tdr import tdr_file_name

        scan_id = post_png(svc, png_bytes(1), "bag-tdr-file").json()["id"]
        report = tmp_path / "tdr" / tdr_file_name([svc.ctx.store.get_scan(scan_id)])
        assert report.is_file() and report.name.startswith(f"bag-{scan_id:09d}-")
        # The same report written at once by several threads (re-sends): each write lands whole, and no
        # temporary file is left behind.
        from concurrent.futures import ThreadPoolExecutor

        from edge.tdr import build_tdr, write_tdr_file

        record = svc.ctx.store.get_scan(scan_id)
        with ThreadPoolExecutor(4) as pool:
            paths = list(pool.map(lambda _: write_tdr_file([record], tmp_path / "tdr", build_tdr([record])), range(8)))
        assert set(paths) == {report} and sorted(p.name for p in (tmp_path / "tdr").iterdir()) == [report.name]
        r = svc.client.get(f"/v1/scans/{scan_id}/tdr", headers=svc.auth("admin"))
        assert r.status_code == 200 and report.read_bytes()[128:132] == r.content[128:132] == b"DICM"
        engine = svc.ctx.engine
        engine.policy = DecisionPolicy(class_names=engine.class_names, thresholds={c: 1.0 for c in engine.class_names})
        clear_id = post_png(svc, png_bytes(2), "bag-clear").json()["id"]
        r = svc.client.get(f"/v1/scans/{clear_id}/tdr", headers=svc.auth("admin"))
        assert r.status_code == 409 and "alarmed" in r.json()["detail"]


def test_tdr_files_of_nodes_with_databases_of_their_own_share_a_folder(tmp_path):
    """Two edge nodes, each with its own database (both number their scans from 1), write their TDRs into
    one shared folder: neither report replaces the other."""
    shared = tmp_path / "tdr"
    for node, seed in (("a", 11), ("b", 12)):
        with running_service(tmp_path / node, tdr_dir=shared) as svc:
            engine = svc.ctx.engine
            engine.policy = DecisionPolicy(class_names=engine.class_names,
                                           thresholds={c: 1e-6 for c in engine.class_names})
            r = post_png(svc, png_bytes(seed), f"bag-{node}")
            assert r.status_code == 200 and r.json()["alarm"] and r.json()["id"] == 1, r.text
    names = sorted(p.name for p in shared.iterdir())
    assert len(names) == 2 and all(n.startswith("bag-000000001-") for n in names), names


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict, dict]] = []  # noqa: RUF012 - one list shared by the handler instances

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        _Receiver.received.append((json.loads(self.rfile.read(length)), dict(self.headers)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_webhook_is_delivered_from_the_outbox(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        with running_service(tmp_path, webhook_url=url, outbox_poll_s=0.05) as svc:
            body = post_png(svc, png_bytes(1), "bag-hook").json()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not _Receiver.received:
                time.sleep(0.05)
            assert _Receiver.received, "no webhook arrived"
            payload, headers = _Receiver.received[0]
            assert payload["event"] == "alarm" and payload["scan_id"] == body["id"] and payload["bag_id"] == "bag-hook"
            assert headers["Idempotency-Key"] == f"webhook:{body['id']}"
            while time.monotonic() < deadline and svc.ctx.store.outbox_items(status="done") == []:
                time.sleep(0.05)
            assert [i.dedupe_key for i in svc.ctx.store.outbox_items(status="done")] == [f"webhook:{body['id']}"]
    finally:
        server.shutdown()
        server.server_close()


def _scan_folder(tmp_path: Path, count: int, seed: int) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(count):
        (folder / f"s{i}.png").write_bytes(png_bytes(seed + i))
    return folder


@pytest.mark.parametrize("stream", [False, True], ids=["post", "stream"])
def test_station_simulator_streams_a_folder(tmp_path, stream):
    from edge.station import StationConfig, run_station

    folder = _scan_folder(tmp_path, 3, seed=500)
    with served_service(tmp_path / "svc") as svc:
        start = time.monotonic()
        summary = run_station(StationConfig(url=svc.url, key=svc.keys["station"], lanes=2, rate=20.0,
                                            source=str(folder), bags=6, live=False, stream=stream))
        # 6 bags at 20 bags/s are offered over 0.25 s: the simulator paces, it does not burst.
        assert time.monotonic() - start >= 0.25
        assert summary.sent == 6 and summary.errors == 0
        assert summary.alarms == 6
        assert summary.latency_ms_p50 > 0
        assert svc.ctx.store.count_scans() == 6
        lanes = {r.lane for r in svc.ctx.store.list_scans(limit=10)}
        assert lanes == {"lane-1", "lane-2"}


@pytest.mark.parametrize("stream", [False, True], ids=["post", "stream"])
def test_station_simulator_waits_out_429_and_retries(tmp_path, stream):
    from edge.station import StationConfig, run_station

    folder = _scan_folder(tmp_path, 4, seed=520)
    # One scan at once, five a second: four lanes sending together are refused with 429 and Retry-After.
    with served_service(tmp_path / "svc", rate_limit_per_s=5.0, rate_limit_burst=1) as svc:
        start = time.monotonic()
        summary = run_station(StationConfig(url=svc.url, key=svc.keys["station"], lanes=4, rate=1000.0,
                                            source=str(folder), bags=4, live=False, stream=stream))
        assert summary.retries >= 1
        assert time.monotonic() - start >= 1.0  # Retry-After is whole seconds: the lanes waited it out
        assert (summary.sent, summary.errors) == (4, 0), summary.error_samples
        assert svc.ctx.store.count_scans() == 4


def test_station_stream_lane_counts_a_broken_stream_and_opens_a_new_one(tmp_path):
    import asyncio

    from edge.station import StationConfig, StationSummary, _LaneStream, _send_bag

    cfg = StationConfig(url="", key="", live=False)
    with served_service(tmp_path / "svc") as svc:

        async def scenario() -> tuple[StationSummary, list[int]]:
            lane, summary, streams = _LaneStream(svc.url, svc.keys["station"], 30.0), StationSummary(), []
            for i in range(3):
                fields = {"station": "st1", "lane": "lane-1", "bag_id": f"bag-broken-{i}", "view": "top"}
                await _send_bag(lane.send_once(fields, png_bytes(540 + i), "image/png"), cfg, summary)
                streams.append(id(lane.ws) if lane.ws is not None else 0)
                if i == 0:
                    await lane.ws.close()  # the stream breaks between bags
            await lane.close()
            return summary, streams

        summary, streams = asyncio.run(scenario())
        assert (summary.sent, summary.errors) == (2, 1)
        assert "ConnectionClosed" in summary.error_samples[0]
        assert streams[1] == 0 and streams[2] not in (0, streams[0])  # dropped, then a new stream
        assert [r.bag_id for r in svc.ctx.store.list_scans(limit=10)] == ["bag-broken-2", "bag-broken-0"]
