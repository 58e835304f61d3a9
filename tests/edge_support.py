"""Helpers shared by the edge service tests: a running app with keys for every role, test images, a
decompression-bomb PNG, and a loopback uvicorn server for browser and station tests."""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edge.app import create_app
from edge.settings import EdgeSettings
from edge_model import tiny_package

SUPERVISOR_PASSWORD = "correct horse battery"
ADMIN_PASSWORD = "staple admin battery"


@dataclass
class Service:
    """A started app (lifespan on), its TestClient and one API key per role."""

    app: FastAPI
    client: TestClient
    keys: dict[str, str]
    settings: EdgeSettings

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx

    def auth(self, who: str) -> dict[str, str]:
        """Headers for `who` ("station", "station2", "supervisor", "admin", "wrong", "none")."""
        if who == "none":
            return {}
        if who == "wrong":
            return {"Authorization": "Bearer xs_st_this-key-was-never-issued"}
        return {"Authorization": f"Bearer {self.keys[who]}"}


def make_settings(tmp: Path, **overrides: Any) -> EdgeSettings:
    values: dict[str, Any] = dict(
        model_path=tiny_package(), db_url=f"sqlite:///{tmp}/edge.db", data_dir=tmp / "data",
        session_cookie_secure=False, engine_threads=1, batch_max_wait_ms=2.0,
    )
    values.update(overrides)
    return EdgeSettings(_env_file=None, **values)  # type: ignore[call-arg]


def _add_principals(app: FastAPI) -> dict[str, str]:
    auth = app.state.ctx.auth
    return {
        "station": auth.add_station("st1"),
        "station2": auth.add_station("st2"),
        "supervisor": auth.add_user("sup", "supervisor", password=SUPERVISOR_PASSWORD),
        "admin": auth.add_user("adm", "admin", password=ADMIN_PASSWORD),
    }


@contextmanager
def running_service(tmp: Path, **overrides: Any) -> Iterator[Service]:
    """An app with the tiny model and a fresh SQLite store, with stations st1, st2, users sup and adm."""
    settings = make_settings(tmp, **overrides)
    app = create_app(settings)
    with TestClient(app) as client:
        yield Service(app=app, client=client, keys=_add_principals(app), settings=settings)


@dataclass
class ServedService:
    """An app served by uvicorn on loopback (for a browser or the station simulator)."""

    app: FastAPI
    url: str
    keys: dict[str, str]

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx


@contextmanager
def served_service(tmp: Path, **overrides: Any) -> Iterator[ServedService]:
    """As `running_service`, but served over real HTTP on 127.0.0.1 by uvicorn (its lifespan, not TestClient's)."""
    app = create_app(make_settings(tmp, **overrides))
    with uvicorn_server(app) as url:
        yield ServedService(app=app, url=url, keys=_add_principals(app))


def png_bytes(seed: int = 0, hw: tuple[int, int] = (96, 80)) -> bytes:
    """A random RGB PNG."""
    img = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def grey16_png(seed: int = 0, hw: tuple[int, int] = (48, 64)) -> bytes:
    img = np.random.default_rng(seed).integers(0, 65536, hw, dtype=np.uint16)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def jpeg_bytes(seed: int = 0) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header declares width×height 8-bit grey pixels but which holds only a few bytes of data
    (a decompression bomb's header: a decoder that trusted it would allocate width×height bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 2)  # two rows; the rest "would" follow
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def scan_fields(bag_id: str, *, station: str = "st1", lane: str = "1", view: str = "top") -> dict[str, str]:
    return {"station": station, "lane": lane, "bag_id": bag_id, "view": view}


def post_png(service: Service, data: bytes, bag_id: str, *, who: str = "station", view: str = "top",
             station: str = "st1", lane: str = "1") -> Any:
    """POST a scan as multipart (field `image`)."""
    return service.client.post(
        "/v1/scans", files={"image": ("scan.png", data, "image/png")},
        data=scan_fields(bag_id, station=station, lane=lane, view=view), headers=service.auth(who),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_server(app: FastAPI, *, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 (a free port) in a thread; yields the base URL; stops on exit."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)


def hidden_csrf(page: str) -> str:
    """The CSRF token a UI page's form carries."""
    marker = 'name="csrf_token" value="'
    start = page.index(marker) + len(marker)
    return page[start : page.index('"', start)]


def ui_login(client: Any, name: str = "sup", password: str = SUPERVISOR_PASSWORD) -> Any:
    """Log in through the login form (its CSRF token included), as a browser does; the response, unfollowed."""
    form = client.get("/login")
    return client.post("/login", data={"username": name, "password": password, "csrf_token": hidden_csrf(form.text)},
                       follow_redirects=False)


def stored_scan(store: Any, bag_id: str, *, alarm: bool = True, view: str = "top", station: str = "st1",
                lane: str = "1", classes: tuple[str, ...] = ("drug_package",), seed: str = "") -> Any:
    """A scan written straight into the store (no model run, no image file): alarmed with one box per
    class, or clear."""
    import hashlib

    sha = hashlib.sha256(f"{station}|{bag_id}|{view}|{seed}".encode()).hexdigest()
    detections = [{"class": c, "class_id": 0, "score": 0.9, "box_xyxy": [10.0, 20.0, 30.0, 60.0], "alarm": True}
                  for c in classes] if alarm else []
    record, _created = store.record_scan(
        station=station, lane=lane, bag_id=bag_id, view=view, image_sha256=sha, media_type="image/png", width=80,
        height=96, result={"detections": detections}, model_name="tiny-test", model_version="0.0.1", alarm=alarm,
        alarm_classes=list(classes) if alarm else [],
    )
    return record


#: Debian's chromium, which the browser tests drive through Playwright (make test installs it).
CHROMIUM = "/usr/bin/chromium"


def launch_chromium(playwright: Any) -> Any:
    """Headless chromium from `playwright.sync_api.sync_playwright()`, with the flags this closed network
    needs (no background connections, no sandbox as root)."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run"],
    )
