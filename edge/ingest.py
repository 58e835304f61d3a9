"""Screening one scan, shared by `POST /v1/scans` and `WS /v1/stream`.

    [duplicate (same station, bag, image sha256)? answer the stored result] ∥ micro-batcher: queued as
    it came, decoded + letterboxed in its model call's thread → (once decoded) store image ∥ model →
    vision.decide → store.record_scan (durable) (and read the bag's views, one transaction) → webhook
    outbox item, TDR file (alarms) → fuse the views → answer

The answer is sent only after `put_image` and `record_scan` returned, i.e. after the image file and the
record are on disk: a station that got an answer can forget the scan; one that did not re-sends it, and
the (station, bag_id, image sha256) key makes the re-send return the stored record (`duplicate: true`).
Side effects of an alarm are re-applied on a duplicate (the outbox dedupes, the bag's TDR file is rewritten),
so a crash between recording and enqueueing loses nothing once the station retries.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from edge.batcher import (
    BatchResult,
    BatcherStoppedError,
    DeadlineExceededError,
    MicroBatcher,
    Prepare,
    Prepared,
    QueueFullError,
    Ticket,
)
from edge.context import ServiceContext
from edge.formats import DicosError, UnsupportedMediaTypeError, Upload, decode_upload
from edge.logs import log_event
from edge.storage_faults import storage_failure
from edge.ratelimit import retry_after_header
from edge.store import OutboxEntry, ScanRecord, Store
from edge.tdr import alarmed_views, build_tdr, stored_dicos_images, write_tdr_file
from vision.decide import BagDecision, decide, fuse_views
from vision.decode import DecodeError, TooManyPixelsError
from vision.postprocess import Detections
from vision.preprocess import IncompatibleScanError, prepare

if TYPE_CHECKING:
    from inference.engine import Engine

_log = logging.getLogger("xscreen.edge.ingest")
_T = TypeVar("_T")

# Identifiers end up in file names, logs and a UI: printable, no separators that need escaping. Matched
# whole (`fullmatch`: with `match`, "$" would let a final newline through).
_FIELD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]*")
_FIELD_MAX = {"station": 128, "lane": 128, "bag_id": 128, "view": 64}


class IngestError(Exception):
    """A scan refused with an HTTP status and a message for the station. reason: the `xscreen_rejections`
    label the route counts it under (`count_refusal`); None where the refusal was counted where it was made
    (decoding, rate, deadline, queue) or is no refusal of the scan's (an internal error)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None, *,
                 reason: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.reason = reason


def count_refusal(ctx: ServiceContext, exc: IngestError) -> None:
    """Count a refusal that carries its reason (the routes call this for every IngestError they answer)."""
    if exc.reason is not None:
        ctx.metrics.rejections.labels(reason=exc.reason).inc()


@dataclass(frozen=True)
class ScanMeta:
    """Which scan this is: the station (must be the authenticated one), its lane, the bag and the view."""

    station: str
    lane: str
    bag_id: str
    view: str


def field_problem(name: str, value: str) -> str | None:
    """What is wrong with `value` as the identifying field `name` (station, lane, bag_id, view), or None."""
    if len(value) > _FIELD_MAX[name] or not _FIELD_RE.fullmatch(value):
        return (f"field '{name}' must be 1–{_FIELD_MAX[name]} characters of letters, digits and . _ : - "
                "(starting with a letter or digit)")
    return None


def validate_meta(fields: dict[str, Any], *, station_name: str) -> ScanMeta:
    """Check the identifying fields; `view` defaults to "0". 422 for missing/malformed, 403 for a station
    field that is not the authenticated station."""
    values: dict[str, str] = {}
    for name in ("station", "lane", "bag_id", "view"):
        raw = fields.get(name)
        if raw is None or raw == "":
            if name == "view":
                raw = "0"
            else:
                raise IngestError(422, f"field '{name}' is required (form field or query parameter)",
                                  reason="invalid_fields")
        if not isinstance(raw, str):  # a stream's JSON header may hold a number: 77 and "77" are not one bag id
            raise IngestError(422, f"field '{name}' must be a string", reason="invalid_fields")
        value = raw
        problem = field_problem(name, value)
        if problem is not None:
            raise IngestError(422, problem, reason="invalid_fields")
        values[name] = value
    if values["station"] != station_name:
        raise IngestError(403, f"field 'station' is {values['station']!r} but this key belongs to station {station_name!r}",
                          reason="wrong_station")
    return ScanMeta(**values)


def check_rate(ctx: ServiceContext, station: str) -> None:
    """429 with Retry-After when `station` is over its rate."""
    wait_s = ctx.limiter.acquire(station)
    if wait_s > 0:
        ctx.metrics.rejections.labels(reason="rate_limited").inc()
        raise IngestError(
            429, f"station {station!r} is over its rate limit ({ctx.settings.rate_limit_per_s:g} scans/s, "
                 f"burst {ctx.settings.rate_limit_burst})", {"Retry-After": retry_after_header(wait_s)},
        )


# -- stored result <-> decisions ------------------------------------------------------------------------


def result_document(
    detections: Detections, decision: BagDecision, *, class_names: tuple[str, ...], thresholds: np.ndarray,
    scan_info: dict[str, Any], timings: dict[str, float], model: dict[str, str],
) -> dict[str, Any]:
    """What `record_scan` stores as `result` (plain JSON): every detection with its alarm flag, the
    decision, the scan's properties and this screening's timings."""
    over = detections.scores.astype(np.float64) >= thresholds[detections.class_ids]
    dets = [
        {"class": class_names[int(c)], "class_id": int(c), "score": float(s),
         "box_xyxy": [float(v) for v in box], "alarm": bool(a)}
        for box, s, c, a in zip(detections.boxes_xyxy, detections.scores, detections.class_ids, over)
    ]
    return {
        "detections": dets,
        "decision": {
            "alarm": decision.alarm,
            "alarm_classes": list(decision.alarm_classes),
            "max_score_per_class": dict(decision.max_score_per_class),
            # The class order, kept apart: PostgreSQL's JSONB does not keep an object's key order.
            "class_names": list(decision.max_score_per_class),
            "suspicion": float(decision.suspicion),
        },
        "scan": scan_info,
        "timings": timings,
        "model": model,
    }


def decision_from_result(result: dict[str, Any]) -> BagDecision:
    """Rebuild a stored view's `BagDecision` (for `fuse_views` over a bag's views)."""
    d = result["decision"]
    alarmed = [x for x in result.get("detections", []) if x.get("alarm")]
    dets = Detections.from_arrays(
        np.array([x["box_xyxy"] for x in alarmed], np.float32).reshape(-1, 4),
        np.array([x["score"] for x in alarmed], np.float32),
        np.array([x["class_id"] for x in alarmed], np.int64),
    )
    scores = d["max_score_per_class"]
    order = d.get("class_names", list(scores))  # records stored before the order was kept: their key order
    return BagDecision(
        alarm=bool(d["alarm"]),
        alarm_classes=tuple(d["alarm_classes"]),
        alarm_detections=(dets,),
        max_score_per_class={k: float(scores[k]) for k in order},
        suspicion=float(d["suspicion"]),
    )


def fuse_bag(views: list[ScanRecord]) -> BagDecision:
    """The bag decision over all stored views of one bag, newest first for the class order (views screened
    under another class map fuse by class name: `fuse_views`)."""
    return fuse_views([decision_from_result(v.result) for v in reversed(views)])


# -- the pipeline ---------------------------------------------------------------------------------------


def scan_preparer(engine: Engine, *, max_pixels: int) -> Prepare:
    """The micro-batcher's `prepare` for uploads (run in the model call's thread): decode, letterbox to the
    model's input; `info` holds the scan's size, layout, depth and format. Refusals raise as the decoders
    raise them; `decode_refusal` maps one to HTTP where it becomes the answer."""

    def prepare_upload(upload: Upload) -> Prepared:
        scan = decode_upload(upload, max_pixels=max_pixels)
        tensor, params = prepare(scan.pixels, engine.spec)
        info = {"width": scan.width, "height": scan.height, "layout": scan.layout, "bit_depth": scan.bit_depth,
                "format": scan.format}
        return Prepared(tensor, params, info)

    return prepare_upload


#: What decoding may refuse a scan with, and the HTTP status and rejection reason of each (first match).
_DECODE_REFUSALS: tuple[tuple[type[Exception], int, str], ...] = (
    (TooManyPixelsError, 413, "too_many_pixels"),
    (UnsupportedMediaTypeError, 415, "media_type"),
    (DecodeError, 422, "undecodable"),
    (DicosError, 422, "undecodable"),
    (IncompatibleScanError, 422, "undecodable"),
)


def decode_refusal(ctx: ServiceContext, exc: BaseException) -> IngestError | None:
    """The HTTP refusal for a decoding error (counted as a rejection), or None for any other error."""
    for kind, status, reason in _DECODE_REFUSALS:
        if isinstance(exc, kind):
            ctx.metrics.rejections.labels(reason=reason).inc()
            return IngestError(status, str(exc))
    return None


def _digest_and_views(store: Store, meta: ScanMeta, upload: Upload) -> tuple[str, list[ScanRecord]]:
    """(the image's sha256, the bag's recorded views): what the re-send check needs, in one thread hop."""
    return upload.sha256, store.bag_scans(meta.station, meta.bag_id)


async def screen(ctx: ServiceContext, meta: ScanMeta, upload: Upload, *, started: float,
                 after: asyncio.Future[Any] | None = None) -> dict[str, Any]:
    """Screen one scan (see the module docstring); returns the `ScanResultOut` fields.

    started: `time.perf_counter()` when the request arrived (the deadline and total_ms count from it).
    after: an earlier view of the same bag (a stream's previous scan of it): this scan is recorded once that
    one is done, so the bag verdict of its answer covers it.
    Raises `IngestError` for every refusal.
    """
    engine, store, _auth, batcher = ctx.require()
    deadline = time.monotonic() + ctx.settings.request_deadline_s - (time.perf_counter() - started)

    # A re-send of a scan already recorded gets the stored result. The check (hashing the image, once for
    # the check and the image store, and a database read) runs in a thread while the scan waits in the
    # queue: re-sends are rare, every other scan is answered that much sooner, and the event loop hashes
    # nothing. A re-send's queued scan is withdrawn when the check answers, but a model call that took it
    # meanwhile (an idle lane's next call starts at once) runs for nothing: the price of not making every
    # scan wait for the check. A re-send is answered even when the queue is full.
    lookup = asyncio.ensure_future(asyncio.to_thread(_digest_and_views, store, meta, upload))
    ticket: Ticket | None = None
    not_queued: QueueFullError | BatcherStoppedError | None = None
    try:
        ticket = batcher.enqueue_scan(upload, deadline=deadline)
    except (QueueFullError, BatcherStoppedError) as exc:
        not_queued = exc
    try:
        # Within the request's deadline, as the model's answer is: a stalled database read must not hold a
        # station past it (the read itself runs on, shielded; it writes nothing).
        sha, views = await asyncio.wait_for(asyncio.shield(lookup), timeout=max(0.0, deadline - time.monotonic()))
    except BaseException as exc:
        if ticket is not None:
            ticket.cancel()
        if isinstance(exc, TimeoutError):
            ctx.metrics.rejections.labels(reason="deadline").inc()
            raise IngestError(504, f"the scan was not screened before the request deadline "
                                   f"({ctx.settings.request_deadline_s:g} s)") from None
        raise
    existing = [r for r in views if r.image_sha256 == sha]
    if existing:
        if ticket is not None:
            ticket.cancel()
        record = existing[0]
        # The image and the alarm's side effects are made durable again before the answer, within the
        # deadline as a new scan's writes are (a database another process holds the write lock of answers
        # 504, not a 500 when its busy timeout runs out).
        await _written(ctx, meta, _resend_effects(ctx, record, upload, sha), deadline,
                       failure="alarm side effects not written",
                       late=f"the scan is recorded (id {record.id}) but its image and its alarm's webhook and report "
                            f"were not written again before the request deadline "
                            f"({ctx.settings.request_deadline_s:g} s); they are still being written, and a re-send "
                            "is answered once they are")
        timings = {"decode_ms": 0.0, "queue_ms": 0.0, "inference_ms": 0.0}
        return _answer(record, views, timings, started=started, duplicate=True)
    if len(views) >= ctx.settings.max_views_per_bag:
        if ticket is not None:
            ticket.cancel()
        raise IngestError(409, f"bag {meta.bag_id!r} of station {meta.station!r} already holds {len(views)} views "
                               f"(at most {ctx.settings.max_views_per_bag}); is the station sending one bag id for "
                               "several bags?", reason="bag_full")
    if isinstance(not_queued, QueueFullError):
        raise _queue_full(ctx, not_queued.retry_after_s)
    if ticket is None:
        raise IngestError(503, str(not_queued), {"Retry-After": "5"})
    batch, image_written = await _screened(ctx, batcher, store, ticket, upload, sha)
    decision = decide(batch.detections, engine.class_names, engine.policy)
    scan_info = batch.info
    timings = {"decode_ms": batch.prepare_ms, "queue_ms": batch.queue_ms, "inference_ms": batch.inference_ms}
    model = {"name": engine.package.name, "version": engine.package.version, "sha256": engine.package.weights_sha256}
    result = result_document(
        batch.detections, decision, class_names=tuple(engine.class_names),
        thresholds=engine.policy.threshold_array(), scan_info=scan_info, timings=timings, model=model,
    )

    async def record_it() -> tuple[ScanRecord, bool, list[ScanRecord]]:
        await image_written  # the record only ever names an image already on disk
        if after is not None and not after.done():
            # An earlier view of this bag is recorded first (within this scan's deadline), so `views` holds it.
            await asyncio.wait({after}, timeout=max(0.0, deadline - time.monotonic()))
        record, created, views = await asyncio.to_thread(
            store.record_scan_in_bag,
            station=meta.station, lane=meta.lane, bag_id=meta.bag_id, view=meta.view, image_sha256=sha,
            media_type=upload.media_type, width=scan_info["width"], height=scan_info["height"], result=result,
            model_name=engine.package.name, model_version=engine.package.version, alarm=decision.alarm,
            alarm_classes=list(decision.alarm_classes), outbox=webhook_entry if ctx.settings.webhook_url else None,
        )
        if created:
            ctx.metrics.scans.labels(lane=record.lane, alarm=str(record.alarm).lower()).inc()
            for name in record.alarm_classes:
                ctx.metrics.alarms.labels(class_name=name, lane=record.lane).inc()
        await _after_record(ctx, record, enqueued=created)
        return record, created, views

    # The writes (image, then record): a re-send is answered from the record once it is written.
    record, created, views = await _written(
        ctx, meta, record_it(), deadline, failure="scan not recorded",
        late=f"the scan was screened but its record was not written before the request deadline "
             f"({ctx.settings.request_deadline_s:g} s); it is still being written, and a re-send of the same scan "
             "is answered from it")
    return _answer(record, views, timings, started=started, duplicate=not created)


async def _written(ctx: ServiceContext, meta: ScanMeta, writes: Coroutine[Any, Any, _T], deadline: float, *,
                   failure: str, late: str) -> _T:
    """Await a scan's durable writes within the request's deadline. They run to their end whatever happens
    to the request (the service awaits them before it stops; `failure` is logged if they fail with nobody
    waiting); a write held up (a database busy with another writer, a slow disk) answers 504 (`late`),
    unacknowledged, and one its storage refused answers that refusal (`_storage_refusal`)."""
    future = asyncio.ensure_future(writes)
    ctx.writes.add(future)
    future.add_done_callback(_write_finished(ctx, meta, failure))
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        ctx.metrics.rejections.labels(reason="deadline").inc()
        raise IngestError(504, late) from None
    except Exception as exc:
        refusal = _storage_refusal(ctx, exc)
        if refusal is None:
            raise
        raise refusal from exc


def _storage_refusal(ctx: ServiceContext, exc: BaseException) -> IngestError | None:
    """The refusal (counted) for a scan its storage failed (`edge.storage_faults`), or None."""
    failure = storage_failure(exc)
    if failure is None:
        return None
    ctx.metrics.rejections.labels(reason=failure.reason).inc()
    log_event(_log, "scan not stored", logging.WARNING, reason=failure.reason, error=repr(exc))
    return IngestError(failure.status, failure.detail, {"Retry-After": "30"})


async def _resend_effects(ctx: ServiceContext, record: ScanRecord, upload: Upload, sha: str) -> None:
    """What a re-send of a recorded scan makes durable again before its answer: the image (a file lost or
    damaged on disk is written anew from the bytes sent; one that is whole costs a read), then the alarm's
    side effects."""
    _engine, store, _auth, _batcher = ctx.require()
    await asyncio.to_thread(store.put_image, upload.data, suffix=upload.suffix, sha256=sha)
    await _after_record(ctx, record, enqueued=False)


def _write_finished(ctx: ServiceContext, meta: ScanMeta,
                    failure: str = "scan not recorded") -> Callable[[asyncio.Future[Any]], None]:
    """The done-callback of a scan's writes: forget them, and log a failure (as `failure`) nobody waits for
    any more (the request that did was answered at its deadline, or its client went away)."""

    def done(writing: asyncio.Future[Any]) -> None:
        ctx.writes.discard(writing)
        if not writing.cancelled() and writing.exception() is not None:
            log_event(_log, failure, logging.ERROR, station=meta.station, bag_id=meta.bag_id,
                      error=repr(writing.exception()))

    return done


async def _screened(
    ctx: ServiceContext, batcher: MicroBatcher, store: Store, ticket: Ticket, upload: Upload, sha: str
) -> tuple[BatchResult, asyncio.Future[Any]]:
    """The queued scan's model result, and its image's durable write (a future the caller awaits before it
    records the scan). The image is written once it is decoded, while its model call runs (both take
    milliseconds; in parallel the answer comes sooner); a scan that cannot be decoded is refused and written
    nowhere, nor is one that never runs (deadline, shutdown)."""
    result = asyncio.ensure_future(batcher.wait(ticket))
    put: asyncio.Future[Any] | None = None
    try:
        await asyncio.wait((ticket.prepared, result), return_when=asyncio.FIRST_COMPLETED)
        if ticket.prepared.done() and not ticket.prepared.cancelled() and ticket.prepared.result():
            put = asyncio.ensure_future(asyncio.to_thread(store.put_image, upload.data, suffix=upload.suffix,
                                                          sha256=sha))
        try:
            batch = await result
        except DeadlineExceededError as exc:
            ctx.metrics.rejections.labels(reason="deadline").inc()
            raise IngestError(504, f"{exc} ({ctx.settings.request_deadline_s:g} s)") from None
        except BatcherStoppedError as exc:
            raise IngestError(503, str(exc), {"Retry-After": "5"}) from None
        except Exception as exc:
            refusal = decode_refusal(ctx, exc)
            if refusal is None:
                raise
            raise refusal from None
    except BaseException:
        if not result.done():
            result.cancel()
        if put is not None:
            # The image write runs on even when screening failed: it must not be left half done, and the
            # file is content-addressed, so a later re-send finds it written.
            await put
        raise
    # A scan that ran was prepared first (the batcher signals it before the model call), so its write started.
    assert put is not None
    return batch, put


def webhook_payload(record: ScanRecord) -> dict[str, Any]:
    """What the webhook receiver gets for an alarm (ids let it dedupe at-least-once deliveries)."""
    return {
        "event": "alarm",
        "scan_id": record.id,
        "created_at": record.created_at.isoformat(),
        "station": record.station,
        "lane": record.lane,
        "bag_id": record.bag_id,
        "view": record.view,
        "alarm_classes": list(record.alarm_classes),
        "detections": [d for d in record.result.get("detections", []) if d.get("alarm")],
        "model": {"name": record.model_name, "version": record.model_version},
        "links": {"scan": f"/v1/scans/{record.id}", "image": f"/v1/scans/{record.id}/image",
                  "tdr": f"/v1/scans/{record.id}/tdr"},
    }


def webhook_entry(record: ScanRecord) -> OutboxEntry | None:
    """The webhook outbox item of a newly recorded scan: one per alarm, none for a clear scan."""
    if not record.alarm:
        return None
    return OutboxEntry("webhook", webhook_payload(record), dedupe_key=f"webhook:{record.id}")


def _queue_full(ctx: ServiceContext, retry_after_s: float) -> IngestError:
    ctx.metrics.rejections.labels(reason="queue_full").inc()
    return IngestError(503, f"the screening queue is full; retry in about {retry_after_s:.0f} s",
                       {"Retry-After": retry_after_header(retry_after_s)})


def package_thresholds(engine: Engine, views: Sequence[ScanRecord]) -> dict[str, float] | None:
    """The running package's thresholds if every alarmed view in `views` was screened by this very package,
    else None (a TDR must not claim thresholds of a model that did not raise the alarm)."""
    pkg = engine.package
    if any((v.model_name, v.model_version) != (pkg.name, pkg.version) for v in alarmed_views(views)):
        return None
    return dict(pkg.thresholds)


def bag_report(engine: Engine, store: Store, views: Sequence[ScanRecord]) -> bytes:
    """The DICOS TDR of a bag (`views`: its stored scans), with the running package's thresholds where they
    raised its alarms and the stored files of its DICOS views. Blocking: run it in a thread."""
    return build_tdr(views, thresholds=package_thresholds(engine, views), images=stored_dicos_images(store, views))


#: Times one scan's TDR writer reads its bag again after writing, when views keep arriving meanwhile.
_TDR_ROUNDS = 8


async def _after_record(ctx: ServiceContext, record: ScanRecord, *, enqueued: bool) -> None:
    """Durable side effects of an alarm: the webhook outbox item, unless the record's own transaction added
    it (`enqueued`: a scan recorded just now; a re-send of a scan recorded before the webhook was
    configured still gets one, before the answer), and, if configured, the bag's TDR file."""
    if not record.alarm:
        return
    _engine, store, _auth, _batcher = ctx.require()
    entry = webhook_entry(record) if ctx.settings.webhook_url and not enqueued else None
    if entry is not None:
        await asyncio.to_thread(store.enqueue, entry.kind, entry.payload, dedupe_key=entry.dedupe_key)
    if ctx.settings.tdr_dir is not None:
        try:
            await _write_bag_tdr(ctx, record, ctx.settings.tdr_dir)
        except Exception as exc:  # the report can be regenerated from the records: never fail the scan for it
            log_event(_log, "TDR file not written", logging.ERROR, scan_id=record.id, error=repr(exc))


async def _write_bag_tdr(ctx: ServiceContext, record: ScanRecord, tdr_dir: Path) -> None:
    """Write (or rewrite) the TDR file of `record`'s bag, covering its alarmed views. Views of one bag
    recorded at once (by this process or another sharing the folder) each rewrite the report, and the
    slower writer may hold fewer views: so each writer reads the bag again after writing, and writes once
    more if an alarmed view came meanwhile. The last report written then covers every alarmed view
    recorded before it."""
    engine, store, _auth, _batcher = ctx.require()
    written: list[tuple[int, str]] | None = None
    for _ in range(_TDR_ROUNDS):
        views = await asyncio.to_thread(store.bag_scans, record.station, record.bag_id)
        covered = [(v.id, v.image_sha256) for v in alarmed_views(views)]
        if covered == written:
            return
        report = await asyncio.to_thread(bag_report, engine, store, views)
        await asyncio.to_thread(write_tdr_file, views, tdr_dir, report)
        written = covered
    log_event(_log, "TDR file may not cover the bag's latest views", logging.WARNING, scan_id=record.id,
              bag_id=record.bag_id, rounds=_TDR_ROUNDS)


def _answer(
    record: ScanRecord, views: list[ScanRecord], timings: dict[str, float], *, started: float, duplicate: bool
) -> dict[str, Any]:
    """The answer to the station: this view's result and the decision fused over `views` (the bag's stored
    scans, read in the transaction that recorded or found this one)."""
    bag = fuse_bag(views) if views else decision_from_result(record.result)
    return {
        "id": record.id,
        "station": record.station,
        "lane": record.lane,
        "bag_id": record.bag_id,
        "view": record.view,
        "alarm": record.alarm,
        "alarm_classes": list(record.alarm_classes),
        "bag_alarm": bag.alarm,
        "bag_alarm_classes": list(bag.alarm_classes),
        "bag_views": max(1, len(views)),
        "detections": record.result.get("detections", []),
        "model": {"name": record.model_name, "version": record.model_version},
        "timings": {**timings, "total_ms": (time.perf_counter() - started) * 1000.0},
        "duplicate": duplicate,
    }
