"""The seizure export (`GET /v1/seizures`): each bag's confirmed views with links to their files, oldest
first, and a time window on when bags were confirmed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from edge_support import png_bytes, post_png, running_service


def test_each_seizure_lists_its_confirmed_views_with_working_links(tmp_path: Path) -> None:
    with running_service(tmp_path) as svc:
        sup = svc.auth("supervisor")
        top = post_png(svc, png_bytes(1), "bag-a", view="top").json()
        side = post_png(svc, png_bytes(2), "bag-a", view="side").json()
        for scan in (top, side):
            assert svc.client.post(f"/v1/scans/{scan['id']}/reviews", json={"verdict": "confirmed"},
                                   headers=sup).status_code == 201
        (item,) = svc.client.get("/v1/seizures", headers=sup).json()["seizures"]
        assert item["scan_ids"] == [top["id"], side["id"]]
        assert [(v["id"], v["view"]) for v in item["views"]] == [(top["id"], "top"), (side["id"], "side")]
        for v in item["views"]:
            assert v["alarm"] is True and v["alarm_classes"]
            image = svc.client.get(v["image_url"], headers=sup)
            assert image.status_code == 200 and image.content == png_bytes(1 if v["id"] == top["id"] else 2)
            preview = svc.client.get(v["preview_url"], headers=sup)
            assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"


def test_the_export_takes_a_window_on_the_confirmation_time(tmp_path: Path) -> None:
    with running_service(tmp_path) as svc:
        sup = svc.auth("supervisor")
        store = svc.ctx.store
        start = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
        times = iter([start, start + timedelta(hours=1), start + timedelta(hours=2)])
        ids = []
        for k in range(3):
            scan = post_png(svc, png_bytes(10 + k), f"bag-{k}").json()
            when = next(times)
            store._clock = lambda when=when: when  # the review's time
            store.add_review(scan["id"], user="sup", verdict="confirmed")
            ids.append(scan["id"])
        store._clock = None

        def bags(**window: str) -> list[str]:
            r = svc.client.get("/v1/seizures", params=window, headers=sup)
            assert r.status_code == 200, r.text
            return sorted(s["bag_id"] for s in r.json()["seizures"])

        assert bags() == ["bag-0", "bag-1", "bag-2"]
        assert bags(since="2026-03-01T13:00:00Z") == ["bag-1", "bag-2"]  # at `since`: in
        assert bags(until="2026-03-01T13:00:00Z") == ["bag-0"]  # at `until`: out
        assert bags(since="2026-03-01T12:30:00", until="2026-03-01T14:00:00") == ["bag-1"]  # naive: UTC
        assert bags(since="2026-03-01T15:00:00+01:00") == ["bag-2"]  # 14:00 UTC
        assert svc.client.get("/v1/seizures", params={"since": "yesterday"}, headers=sup).status_code == 422
