"""`GET /v1/scans/{id}/bag`: a bag's views and the decision fused over them, through any of its views."""

from __future__ import annotations

from edge_support import png_bytes, post_png, running_service

from vision.decide import DecisionPolicy


def _thresholds(svc, value: float) -> None:
    engine = svc.ctx.engine
    engine.policy = DecisionPolicy(class_names=engine.class_names, thresholds={c: value for c in engine.class_names})


def test_the_bag_route_fuses_every_view_stored_so_far(tmp_path):
    with running_service(tmp_path, tdr_dir=None) as svc:
        _thresholds(svc, 1e-6)  # everything alarms
        top = post_png(svc, png_bytes(31), "bag-route", view="top").json()
        _thresholds(svc, 1.0)  # nothing alarms
        side = post_png(svc, png_bytes(32), "bag-route", view="side").json()
        other = post_png(svc, png_bytes(33), "bag-route-other").json()
        assert top["alarm"] and not side["alarm"] and not other["alarm"]
        for scan_id in (top["id"], side["id"]):
            for who in ("station", "supervisor"):
                r = svc.client.get(f"/v1/scans/{scan_id}/bag", headers=svc.auth(who))
                assert r.status_code == 200, r.text
                bag = r.json()
                assert bag["bag_id"] == "bag-route" and bag["station"] == "st1" and bag["bag_views"] == 2
                assert [v["id"] for v in bag["views"]] == [top["id"], side["id"]]
                assert [v["alarm"] for v in bag["views"]] == [True, False]
                # The same verdict as the answer to the bag's last view, which covered both.
                assert (bag["bag_alarm"], bag["bag_alarm_classes"]) == (side["bag_alarm"], side["bag_alarm_classes"])
                assert bag["bag_alarm"] and bag["bag_alarm_classes"] == top["alarm_classes"]
        clear = svc.client.get(f"/v1/scans/{other['id']}/bag", headers=svc.auth("station")).json()
        assert clear["bag_views"] == 1 and not clear["bag_alarm"] and clear["bag_alarm_classes"] == []
        # Another station's key learns nothing of this station's bags.
        assert svc.client.get(f"/v1/scans/{top['id']}/bag", headers=svc.auth("station2")).status_code == 404
        assert svc.client.get("/v1/scans/987654/bag", headers=svc.auth("supervisor")).status_code == 404


def _rejected(svc, reason: str) -> float:
    return svc.ctx.metrics.registry.get_sample_value("xscreen_rejections_total", {"reason": reason}) or 0.0


def test_a_bag_over_its_view_limit_is_refused_and_its_views_still_answer(tmp_path):
    """A station sending one bag id for every bag would make each scan read and fuse all the others: past
    XSCREEN_MAX_VIEWS_PER_BAG views a new scan of the bag gets a clear 409, over HTTP and the stream; a
    re-send of a recorded view is still answered, and other bags are screened."""
    import json

    from edge_support import scan_fields

    with running_service(tmp_path, tdr_dir=None, max_views_per_bag=2) as svc:
        first = post_png(svc, png_bytes(41), "bag-full", view="top")
        post_png(svc, png_bytes(42), "bag-full", view="side")
        refused = post_png(svc, png_bytes(43), "bag-full", view="front")
        assert refused.status_code == 409 and "already holds 2 views" in refused.json()["detail"]
        assert _rejected(svc, "bag_full") == 1
        again = post_png(svc, png_bytes(41), "bag-full", view="top")
        assert again.status_code == 200 and again.json()["duplicate"] and again.json()["id"] == first.json()["id"]
        assert post_png(svc, png_bytes(44), "bag-other").status_code == 200
        assert svc.ctx.store.count_scans() == 3
        with svc.client.websocket_connect("/v1/stream", headers=svc.auth("station")) as ws:
            assert ws.receive_json()["type"] == "ready"
            ws.send_text(json.dumps({**scan_fields("bag-full"), "view": "back", "seq": 7}))
            ws.send_bytes(png_bytes(45))
            answer = ws.receive_json()
            assert (answer["type"], answer["seq"], answer["status"]) == ("error", 7, 409), answer
        assert _rejected(svc, "bag_full") == 2
