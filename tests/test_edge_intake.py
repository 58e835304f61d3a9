"""The service-wide intake budget (edge/intake.py) and the stream cap: what bounds the scan bytes the
service holds, whatever the number of connections (the flood itself, with RSS measured, is in
tests/test_review_memory_bound.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.websockets import WebSocketDisconnect

from edge.intake import IntakeBudget
from edge.settings import EdgeSettings
from edge_support import png_bytes, post_png, running_service, scan_fields


def test_the_budget_takes_what_fits_and_one_oversized_scan_only_alone() -> None:
    budget = IntakeBudget(100)
    assert budget.try_reserve(60) and budget.try_reserve(40)
    assert not budget.try_reserve(1)
    budget.release(40)
    assert not budget.try_reserve(41) and budget.try_reserve(40)
    budget.release(100)
    assert budget.try_reserve(150)  # larger than the budget: taken when nothing else is held
    assert not budget.try_reserve(1)
    budget.release(150)
    with pytest.raises(RuntimeError):
        budget.release(1)
    with pytest.raises(ValueError):
        IntakeBudget(0)


def test_the_default_budget_is_what_the_batcher_holds_in_scans_of_the_largest_size(tmp_path: Path) -> None:
    s = EdgeSettings(_env_file=None, model_path=tmp_path / "m.onnx", queue_max=10, batch_max_size=4,
                     batch_workers=2, max_body_bytes=1 << 20)  # type: ignore[call-arg]
    assert s.intake_budget_bytes == (10 + 2 * (4 + 1)) << 20
    assert EdgeSettings(_env_file=None, model_path=tmp_path / "m.onnx",  # type: ignore[call-arg]
                        intake_max_bytes=12345).intake_budget_bytes == 12345


def _rejections(svc, reason: str) -> float:
    text = svc.client.get("/metrics", headers=svc.auth("supervisor")).text
    line = next((ln for ln in text.splitlines() if ln.startswith(f'xscreen_rejections_total{{reason="{reason}"}}')), None)
    return float(line.split()[-1]) if line else 0.0


def test_a_scan_the_budget_cannot_take_gets_503_and_answered_scans_give_their_bytes_back(tmp_path: Path) -> None:
    with running_service(tmp_path, intake_max_bytes=1 << 20) as svc:
        intake = svc.ctx.intake
        assert intake.try_reserve(1 << 20)  # as if other stations' scans held it all
        # (That the body is not read when refused: tests/test_review_memory_bound.py measures it.)
        body = png_bytes(1)
        r = svc.client.post("/v1/scans", params=scan_fields("bag-full"), content=body,
                            headers={**svc.auth("station"), "Content-Type": "image/png"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "as many scans as it can take" in r.json()["detail"]
        assert _rejections(svc, "intake_full") == 1
        intake.release(1 << 20)
        for k in range(3):
            assert post_png(svc, png_bytes(10 + k), f"bag-{k}").status_code == 200
        assert intake.used == 0  # every answered scan gave its bytes back
        assert svc.client.get("/v1/scans", params={"limit": 10}, headers=svc.auth("supervisor")).json()["total"] == 3


def test_a_stream_scan_the_budget_cannot_take_is_answered_503_and_the_stream_goes_on(tmp_path: Path) -> None:
    with running_service(tmp_path, intake_max_bytes=1 << 20) as svc:
        intake = svc.ctx.intake
        with svc.client.websocket_connect("/v1/stream", headers=svc.auth("station")) as ws:
            assert ws.receive_json()["type"] == "ready"
            assert intake.try_reserve(1 << 20)
            ws.send_json({**scan_fields("bag-s0"), "seq": 0})
            ws.send_bytes(png_bytes(20))
            refused = ws.receive_json()
            assert (refused["type"], refused["seq"], refused["status"]) == ("error", 0, 503), refused
            assert refused["retry_after_s"] == 1.0
            intake.release(1 << 20)
            ws.send_json({**scan_fields("bag-s1"), "seq": 1})
            ws.send_bytes(png_bytes(21))
            answer = ws.receive_json()
            assert (answer["type"], answer["seq"]) == ("result", 1), answer
        assert intake.used == 0


def test_streams_over_the_cap_are_closed_with_1013(tmp_path: Path) -> None:
    with running_service(tmp_path, max_streams=1) as svc:
        with svc.client.websocket_connect("/v1/stream", headers=svc.auth("station")) as first:
            assert first.receive_json()["type"] == "ready"
            with svc.client.websocket_connect("/v1/stream", headers=svc.auth("station")) as second:
                with pytest.raises(WebSocketDisconnect) as closed:
                    second.receive_json()
            assert closed.value.code == 1013 and "streams open" in closed.value.reason
        assert svc.ctx.streams == 0
        with svc.client.websocket_connect("/v1/stream", headers=svc.auth("station")) as again:  # room again
            assert again.receive_json()["type"] == "ready"
