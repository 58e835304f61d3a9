"""The station simulator: N lanes sending bags to a lane service at R bags/s in total.

    xscreen station --url http://127.0.0.1:8000 --key xs_st_... --lanes 4 --rate 8 --source synth --bags 200

Each lane posts its bags to `POST /v1/scans`, or with `--stream` keeps one WebSocket to `WS /v1/stream` and
sends them over it (a JSON header and the image as a binary frame; the key on the handshake, once; lighter
for the lane box: docs/lane_bench.md). Bags come from the physics synthesiser (`--source synth`, needs the
`synth` extra: xraydb, spekpy; it is imported only then) or from a folder of scans (PNG, JPEG, TIFF, DICOS
.dcs), cycled. Bag k is due at t0 + k/R whatever lane sends it, so the offered load is R bags/s as long as
the service keeps up; a lane that is refused with 429/503 waits the Retry-After and tries again (at most
`max_retries` times), as a real station would. A bag whose request fails in transport (connection refused
or dropped, timeout) counts as an error; a lane whose stream broke opens a new one for its next bag.
Prints a live summary (rich) and returns the final one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

_SUFFIX_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".tif": "image/tiff",
                 ".tiff": "image/tiff", ".dcs": "application/dicom"}


#: What the service takes in a bag id (edge.ingest: letters, digits and . _ : -, at most 128 characters).
_BAG_ID_MAX = 128
_NOT_BAG_ID_CHARS = re.compile(r"[^A-Za-z0-9._:\-]")


class StationError(RuntimeError):
    """The simulator cannot run (bad source, service unreachable, key refused)."""


@dataclass(frozen=True)
class StationConfig:
    """url: service base URL; key: a station API key; station: its name (None: asked from /v1/me);
    lanes: concurrent senders; rate: bags/s over all lanes; source: "synth" or a folder; bags: total;
    live: show the rich live table; stream: send over WS /v1/stream (a WebSocket per lane), not POST."""

    url: str
    key: str
    station: str | None = None
    lanes: int = 2
    rate: float = 2.0
    source: str = "synth"
    bags: int = 20
    view: str = "top"
    timeout_s: float = 30.0
    max_retries: int = 3
    seed: int = 0
    synth_size_px: int = 512
    live: bool = True
    stream: bool = False


@dataclass
class StationSummary:
    """What happened: answered scans, alarms, errors (after retries), retries, latencies (ms)."""

    sent: int = 0
    alarms: int = 0
    errors: int = 0
    retries: int = 0
    duplicates: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: The offered interval between bags (1/rate): the figure's time runs from the first send to the last
    #: answer, which holds one interval fewer than bags (`bags_per_s`).
    interval_s: float = 0.0

    def _pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0

    @property
    def latency_ms_p50(self) -> float:
        return self._pct(50)

    @property
    def latency_ms_p95(self) -> float:
        return self._pct(95)

    def as_dict(self) -> dict[str, float | int]:
        return {"sent": self.sent, "alarms": self.alarms, "errors": self.errors, "retries": self.retries,
                "duplicates": self.duplicates, "latency_ms_p50": round(self.latency_ms_p50, 1),
                "latency_ms_p95": round(self.latency_ms_p95, 1), "elapsed_s": round(self.elapsed_s, 2),
                "bags_per_s": self.bags_per_s}

    def shortfall(self, offered_per_s: float) -> str | None:
        """A sentence when the run answered bags at under 90 % of the offered rate (the source could not
        make them fast enough, or the service answer them), else None."""
        got = self.bags_per_s
        if self.sent + self.errors < 2 or got >= 0.9 * offered_per_s:
            return None
        return (f"offered {offered_per_s:g} bags/s, answered {got:g}: the bags' source (the synthesiser makes "
                "each bag in its lane) or the service did not keep up")

    @property
    def bags_per_s(self) -> float:
        """Answered bags per second: B bags take B − 1 intervals from the first send, plus one for the first."""
        span = self.elapsed_s + self.interval_s
        return round(self.sent / span, 2) if span > 0 else 0.0


@dataclass(frozen=True)
class Pair:
    """A raw dual-energy scan: its low- and high-energy grey images (sent as form parts `low` and `high`)."""

    low: bytes
    high: bytes


#: bag index → (file bytes, or a dual-energy Pair; content type; name)
BagSource = Callable[[int], tuple["bytes | Pair", str, str]]


def _folder_scans(folder: Path) -> list[tuple[Path, ...]]:
    """The scans of a folder and its subfolders, in path order (a dataset as it ships keeps its images in a
    subfolder beside its annotations, which are skipped): one file each, or a `<stem>_low`/`<stem>_high`
    pair (as `xscreen predict` reads them) as one scan. Hidden files and folders (".name", such as the
    "._name.png" a Mac leaves beside every file it copies) are no scans."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _SUFFIX_TYPES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    paths = set(files)
    scans: list[tuple[Path, ...]] = []
    for p in files:
        stem = p.stem
        if stem.endswith("_low") and stem != "_low" and p.with_name(f"{stem[:-4]}_high{p.suffix}") in paths:
            scans.append((p, p.with_name(f"{stem[:-4]}_high{p.suffix}")))
        elif not (stem.endswith("_high") and p.with_name(f"{stem[:-5]}_low{p.suffix}") in paths):
            scans.append((p,))
    return scans


def folder_source(folder: Path) -> BagSource:
    """Scans of a folder, cycled in name order (a `_low`/`_high` pair is one dual-energy scan). A file gone
    or unreadable meanwhile raises OSError naming it, for that bag."""
    scans = _folder_scans(folder)
    if not scans:
        raise StationError(f"{folder} holds no scans ({', '.join(sorted(_SUFFIX_TYPES))}), in its subfolders neither")

    def get(k: int) -> tuple[bytes | Pair, str, str]:
        paths = scans[k % len(scans)]
        if len(paths) == 2:
            return Pair(paths[0].read_bytes(), paths[1].read_bytes()), _SUFFIX_TYPES[paths[0].suffix.lower()], \
                paths[0].stem[:-4]
        return paths[0].read_bytes(), _SUFFIX_TYPES[paths[0].suffix.lower()], paths[0].stem

    return get


def synth_source(*, seed: int, size_px: int) -> BagSource:
    """Synthetic bags (false-colour PNG) from datasets.synth; StationError if its dependencies are missing."""
    import importlib.util

    # (xraydb and spekpy are imported only once a scanner is built: look for them now, not at the first bag.)
    missing = [m for m in ("xraydb", "spekpy") if importlib.util.find_spec(m) is None]
    try:
        if missing:
            raise ImportError(name=missing[0])
        from datasets.synth.pipeline import SynthConfig, make_bag
    except ImportError as exc:
        raise StationError(
            f"--source synth needs the synthesiser's dependencies ({exc.name or exc}); install the synth extra "
            "(pip install 'xscreen[synth]') or pass --source DIR with a folder of scans"
        ) from exc
    from vision.decode import encode_png

    config = SynthConfig(bags=1_000_000, seed=seed, size_px=size_px)

    def get(k: int) -> tuple[bytes, str, str]:
        bag = make_bag(config, k)
        return encode_png(bag.image), "image/png", bag.stem

    return get


def bag_id_for(run_id: str, k: int, name: str) -> str:
    """The bag id of bag k of a run: `<run_id>-<k:06d>-<name>`, the name's characters outside the service's
    id rule (a space, a bracket, a non-ASCII letter: "scan (2)é" → "scan__2__") replaced by "_", cut to
    128 characters. The run id and k keep it unique and start it with a letter or digit."""
    return _NOT_BAG_ID_CHARS.sub("_", f"{run_id}-{k:06d}-{name}")[:_BAG_ID_MAX]


#: The longest a lane waits on one Retry-After: a service that asks for an hour (a misconfigured proxy, a
#: date in the wrong zone) must not silence a simulated lane for that long; the lane asks again instead.
MAX_RETRY_AFTER_S = 60.0


def parse_retry_after(value: str | float | None, *, default_s: float = 1.0, max_s: float = MAX_RETRY_AFTER_S) -> float:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110 §10.2.3; a date
    in the past: 0), at most `max_s`. `default_s` when absent or unreadable."""
    if value is None:
        return default_s
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        pass
    else:
        return min(max(0.0, seconds), max_s) if math.isfinite(seconds) else default_s
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return default_s
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return min(max(0.0, (when - datetime.now(timezone.utc)).total_seconds()), max_s)


async def _who_am_i(client: httpx.AsyncClient, *, max_retries: int) -> str:
    """The station name of the key, from `GET /v1/me`; a service that is starting (503) or busy (429) is
    asked again after its Retry-After, at most `max_retries` times. StationError says what stopped it."""
    for attempt in range(max_retries + 1):
        try:
            r = await client.get("/v1/me")
        except httpx.HTTPError as exc:
            raise StationError(f"cannot reach the service: {exc}") from exc
        if r.status_code in (429, 503) and attempt < max_retries:
            await asyncio.sleep(parse_retry_after(r.headers.get("Retry-After")))
            continue
        break
    if r.status_code in (401, 403):
        raise StationError(f"the service refused the key ({r.status_code}: {r.text[:200]})")
    if r.status_code in (429, 503):
        raise StationError(f"the service is unavailable after {max_retries} retries ({r.status_code}: {r.text[:200]})")
    if r.status_code != 200:
        raise StationError(f"unexpected answer from {r.url} ({r.status_code}: {r.text[:200]}); "
                           "is --url a lane service?")
    try:
        me = r.json()
    except ValueError:
        me = None
    if not isinstance(me, dict):
        raise StationError(f"{r.url} did not answer JSON ({r.text[:200]!r}); is --url a lane service?")
    if me.get("role") != "station":
        raise StationError(f"the key belongs to {me.get('kind')} {me.get('name')!r} (role {me.get('role')}), not a station")
    return str(me["name"])


#: What a failed delivery raises, by transport (counted as an error, not retried).
_TRANSPORT_ERRORS = (httpx.HTTPError, OSError, TimeoutError, WebSocketException)

#: One attempt to deliver a scan: (HTTP status, the answer's JSON or the refusal's text, seconds to wait
#: before a retry when refused with 429/503).
SendOnce = Callable[[], Awaitable[tuple[int, Any, float]]]


def _post_once(client: httpx.AsyncClient, fields: dict[str, str], bag_id: str, data: bytes | Pair,
               content_type: str) -> SendOnce:
    if isinstance(data, Pair):
        files = {"low": (f"{bag_id}_low", data.low, content_type), "high": (f"{bag_id}_high", data.high, content_type)}
    else:
        files = {"image": (bag_id, data, content_type)}

    async def send() -> tuple[int, Any, float]:
        r = await client.post("/v1/scans", files=files, data=fields)
        body: Any = r.text
        if r.status_code == 200:
            try:
                body = r.json()
            except ValueError:
                pass  # not a scan result: counted as an error by _send_bag
        return r.status_code, body, parse_retry_after(r.headers.get("Retry-After"))

    return send


async def open_stream(url: str, key: str, *, timeout_s: float) -> ClientConnection:
    """A WebSocket to the service at `url` (http[s]://host:port) on `WS /v1/stream`, authenticated with the
    station `key` on the handshake and past the service's `ready` message. No permessage-deflate: scans are
    compressed already (the service refuses it anyway). ConnectionError if the stream refuses the key."""
    ws = await connect("ws" + url.removeprefix("http") + "/v1/stream", additional_headers={"Authorization": f"Bearer {key}"},
                       compression=None, max_size=None, open_timeout=timeout_s)
    ready = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    if ready.get("type") != "ready":
        await ws.close()
        raise ConnectionError(f"the stream refused the station: {ready}")
    return ws


class _LaneStream:
    """A lane's WebSocket to `WS /v1/stream`, opened on first use and again after it broke. One scan is in
    flight at a time, so each answer is the last scan's."""

    def __init__(self, url: str, key: str, timeout_s: float) -> None:
        self.url, self.key, self.timeout_s = url, key, timeout_s
        self.ws: ClientConnection | None = None

    async def _open(self) -> ClientConnection:
        if self.ws is None:
            self.ws = await open_stream(self.url, self.key, timeout_s=self.timeout_s)
        return self.ws

    def send_once(self, fields: dict[str, str], data: bytes, content_type: str) -> SendOnce:
        async def send() -> tuple[int, Any, float]:
            try:
                ws = await self._open()
                await ws.send(json.dumps({**fields, "seq": fields["bag_id"], "content_type": content_type}))
                await ws.send(data)
                answer = json.loads(await asyncio.wait_for(ws.recv(), self.timeout_s))
            except BaseException:
                await self.close()  # the next bag opens a new stream
                raise
            if answer.get("type") == "result":
                return 200, answer, 0.0
            return int(answer.get("status", 0)), answer.get("detail", ""), parse_retry_after(answer.get("retry_after_s"))

        return send

    async def close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            await ws.close()


async def _send_bag(send_once: SendOnce, cfg: StationConfig, summary: StationSummary, *, label: str = "") -> None:
    """Deliver one scan, retrying 429/503 after the wait the service asked for; count the outcome. Its
    latency runs from its first send to its answer, the waits it was told to make included (what the
    lane waited for its verdict). label: which scan it is, for the error samples."""
    start = time.perf_counter()
    said = f"{label}: " if label else ""
    for attempt in range(cfg.max_retries + 1):
        try:
            status, body, retry_after_s = await send_once()
        except _TRANSPORT_ERRORS as exc:
            summary.errors += 1
            summary.error_samples = (summary.error_samples + [f"{said}{type(exc).__name__}: {exc}"])[-5:]
            return
        if status in (429, 503) and attempt < cfg.max_retries:
            summary.retries += 1
            await asyncio.sleep(retry_after_s)
            continue
        if status == 200 and not isinstance(body, dict):
            status, body = 0, f"the answer is not a scan result: {body!r}"
        if status != 200:
            summary.errors += 1
            summary.error_samples = (summary.error_samples + [f"{said}{status}: {str(body)[:200]}"])[-5:]
            return
        summary.sent += 1
        summary.latencies_ms.append((time.perf_counter() - start) * 1000.0)
        summary.alarms += int(bool(body.get("alarm")))
        summary.duplicates += int(bool(body.get("duplicate")))
        return


def _table(summary: StationSummary, cfg: StationConfig):  # -> rich.table.Table
    from rich.table import Table

    table = Table(title=f"xscreen station → {cfg.url}  ({cfg.lanes} lanes, {cfg.rate:g} bags/s)",
                  caption="streaming over WS /v1/stream" if cfg.stream else "posting to POST /v1/scans")
    for name in ("sent", "alarms", "errors", "retries", "p50 ms", "p95 ms", "bags/s"):
        table.add_column(name, justify="right")
    d = summary.as_dict()
    table.add_row(str(d["sent"]), str(d["alarms"]), str(d["errors"]), str(d["retries"]), f"{d['latency_ms_p50']:.1f}",
                  f"{d['latency_ms_p95']:.1f}", f"{d['bags_per_s']:.2f}")
    return table


def check_config(cfg: StationConfig) -> None:
    """StationError naming the first setting of `cfg` out of range (NaN included), with its value."""
    checks = [
        ("lanes", cfg.lanes, cfg.lanes >= 1, "≥ 1"),
        ("rate", cfg.rate, cfg.rate > 0, "> 0 bags/s"),
        ("bags", cfg.bags, cfg.bags >= 0, "≥ 0"),
        ("max_retries", cfg.max_retries, cfg.max_retries >= 0, "≥ 0"),
        ("timeout_s", cfg.timeout_s, cfg.timeout_s > 0, "> 0 s"),
    ]
    for name, value, ok, rule in checks:
        if not ok:  # a NaN compares False: refused too
            raise StationError(f"{name} must be {rule}, got {value}")


async def run_station_async(cfg: StationConfig, source: BagSource | None = None,
                            summary: StationSummary | None = None) -> StationSummary:
    """Run the simulator until `cfg.bags` bags are answered or failed (see the module docstring).
    summary: filled in as bags are answered (the caller's, so that a run stopped half way, Ctrl-C, still
    has its figures); a new one by default. Cancelled, the run cancels and awaits every lane first."""
    check_config(cfg)
    if source is None:
        source = synth_source(seed=cfg.seed, size_px=cfg.synth_size_px) if cfg.source == "synth" else folder_source(Path(cfg.source))
    summary = summary if summary is not None else StationSummary()
    summary.interval_s = 1.0 / cfg.rate
    run_id = uuid.uuid4().hex[:8]  # bag ids unique per run, so a second run is not answered as duplicates
    counter = itertools.count()
    headers = {"Authorization": f"Bearer {cfg.key}"}
    async with httpx.AsyncClient(base_url=cfg.url, headers=headers, timeout=cfg.timeout_s) as client:
        station = cfg.station or await _who_am_i(client, max_retries=cfg.max_retries)
        t0 = time.monotonic()

        async def lane_worker(lane: int) -> None:
            stream = _LaneStream(cfg.url, cfg.key, cfg.timeout_s) if cfg.stream else None
            try:
                while (k := next(counter)) < cfg.bags:
                    due = t0 + k / cfg.rate
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    try:
                        data, content_type, name = await asyncio.to_thread(source, k)
                    except OSError as exc:  # a scan file gone or unreadable: that bag's error, the run goes on
                        summary.errors += 1
                        summary.error_samples = (summary.error_samples + [f"bag {k}: {exc}"])[-5:]
                        continue
                    bag_id = bag_id_for(run_id, k, name)
                    fields = {"station": station, "lane": f"lane-{lane}", "bag_id": bag_id, "view": cfg.view}
                    # (Dual-energy pairs go over HTTP even when streaming: the stream takes one image a scan.)
                    send = (stream.send_once(fields, data, content_type) if stream is not None and isinstance(data, bytes)
                            else _post_once(client, fields, bag_id, data, content_type))
                    await _send_bag(send, cfg, summary, label=f"{name} (bag {k}, {bag_id})")
            finally:
                if stream is not None:
                    await stream.close()

        workers = [asyncio.create_task(lane_worker(i + 1)) for i in range(cfg.lanes)]
        try:
            if cfg.live:
                from rich.live import Live

                with Live(_table(summary, cfg), refresh_per_second=4) as live:
                    try:
                        while not all(w.done() for w in workers):
                            summary.elapsed_s = time.monotonic() - t0
                            live.update(_table(summary, cfg))
                            await asyncio.wait(workers, timeout=0.25)
                    finally:  # the table's last state stays on screen, stopped or not
                        summary.elapsed_s = time.monotonic() - t0
                        live.update(_table(summary, cfg))
            await asyncio.gather(*workers)
        finally:
            # Stopped (Ctrl-C cancels the run): no lane goes on sending on a client about to close.
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            summary.elapsed_s = time.monotonic() - t0
    return summary


def run_station(cfg: StationConfig, source: BagSource | None = None,
                summary: StationSummary | None = None) -> StationSummary:
    """Blocking `run_station_async`; Ctrl-C raises KeyboardInterrupt once every lane has stopped, `summary`
    (if given) holding the figures so far."""
    return asyncio.run(run_station_async(cfg, source, summary))
