"""The micro-batcher: scans from every lane share model calls.

A scan waits in one bounded queue, either prepared (C×H×W at the model's input size, plus its
`LetterboxParams`: `enqueue`) or as it came (`enqueue_scan`), to be decoded and letterboxed by the
batcher's `prepare` in the model call's own thread, just before the call. A worker takes the first waiting
scan and the scans queued behind it, up to `max_batch`, and runs them as one batch in a worker thread (ONNX
Runtime releases the GIL, so the event loop keeps accepting requests meanwhile). Preparing a scan in the
thread of its model call, rather than in a thread of its own beforehand, spares each scan a hand-off
between threads and the model calls the preemptions by decoding threads: PNG stations streaming at
saturation, about 2.5 points more of the engine's throughput, JPEG posted about one less
(docs/lane_bench.md). A scan that cannot be prepared fails alone; the rest of its call runs. With several workers sharing the CPU cores, the
service gives each model call a share of them (`run_batch`, e.g. one thread) and has a second call on
every core for a batch that has the machine to itself (`run_batch_alone`). Which runs, and when:
- on idle cores with nothing else waiting, a batch runs alone at once (idle cores would only stay idle,
  and one call on every core answers a lone scan soonest);
- behind a call alone, scans wait for it to end (two calls on the same cores slow each other down);
- from `share_from` scans waiting (a backlog; default `SHARE_FROM`), they are shared out among the free
  workers and run as parallel calls with a core each: on a loaded 2-core box two one-thread calls do more
  than one two-thread call, which stalls whenever a request thread takes one of its cores (8 JPEG
  stations in bench/service_load.py, four runs each way alternating in one hour: 73–80 % of the engine's
  batched throughput at saturation against 54–65 % with every batch alone; the price is latency just
  below saturation, where bursts get shared out to slower one-core calls: half-load p95 50–70 ms against
  47–54 ms, one run of the other rule aside at 222 ms; `share_from` above `queue_max` turns sharing off;
  sharing only under sustained load was tried and gave throughput away without a clear latency gain:
  docs/lane_bench.md);
- a call taken from a backlog takes at most `share_max` scans (the service's default: 2; the others wait
  for the next free worker): on CPU cores a call's time per scan often grows with its batch once the
  activations outgrow the caches (two one-thread calls side by side, s model at 512 px: 25.3, 25.4, 26.3
  and 29.3 ms of core time per scan at batches of 1, 2, 4 and 8; in the development machine's slow phases
  the order turns around; docs/lane_bench.md: with the cap, 8 JPEG stations' half-load p95 fell by about
  3 ms; a GPU lane wants it at `max_batch`);
- a lone scan beside calls that share the cores waits for one of them only if it should end before a
  shared call would gain over a call alone (both times measured as the service runs);
- beside a full batch (heavy load) a batch waits up to `max_wait_ms` after its first scan arrived for
  company, then runs beside it.

Threads: a call alone always runs in one thread of its own, shared calls in a pool of `workers` threads.
Calls alone never overlap, so one thread serves them all. Taking turns among the pool's threads, as calls
alone did once load had started every thread of the pool, doubled their tail at light load (a saturation
phase, then half load: the model call's p95 31–34 ms against 16–17, the service's 43–47 against 21–22;
docs/lane_bench.md), most likely because each call then found its thread's memory gone cold.

Back-pressure and memory: the queue holds at most `queue_max` scans, so a full queue refuses new scans
at once (`QueueFullError` → 503 with Retry-After) instead of letting latency and memory grow. What it
holds is bounded by that count: a prepared input is C×H×W (768 KB at 3×512×512); a scan queued as it came
is its file's bytes, at most the service's body limit each, and a few hundred kB to a few MB as lanes
send them (the service's `max_body_bytes` and `queue_max` set the worst case together). A scan whose request deadline has passed by the time its batch forms
is dropped unrun, so an overloaded lane spends no model time on answers nobody waits for.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.logs import log_event
from edge.metrics import EdgeMetrics
from vision.letterbox import LetterboxParams
from vision.postprocess import Detections

_log = logging.getLogger("xscreen.edge.batcher")

#: Default `share_from`: from this many scans waiting (the one a worker takes included) they are shared out
#: among the free workers as parallel calls; fewer go into one batch (two at once are answered about as
#: soon either way, and one batch on idle cores runs alone, with every core).
SHARE_FROM = 3

#: Signature of the model call: B×C×H×W batch and B letterbox parameter sets → B detections (scan pixels).
RunBatch = Callable[[np.ndarray, Sequence[LetterboxParams]], list[Detections]]


class QueueFullError(RuntimeError):
    """The batch queue is full; `retry_after_s` estimates when there will be room."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"the screening queue is full; retry in about {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class DeadlineExceededError(TimeoutError):
    """The scan was not screened before its request deadline."""


class BatcherStoppedError(RuntimeError):
    """The service is shutting down."""


@dataclass(frozen=True)
class Prepared:
    """A scan ready for the model: its C×H×W input, its letterbox parameters, and whatever else the
    caller wants back with the result (`info`, e.g. the scan's size)."""

    tensor: np.ndarray
    params: LetterboxParams
    info: Any = None


#: Prepares one scan queued with `enqueue_scan`, in the model call's thread: the scan → `Prepared`. What it
#: raises fails that scan alone (its `wait` raises it).
Prepare = Callable[[Any], Prepared]


@dataclass(frozen=True)
class BatchResult:
    """One scan's detections, how long it waited, was prepared and ran, and the `info` of its `Prepared`."""

    detections: Detections
    queue_ms: float
    inference_ms: float
    batch_size: int
    prepare_ms: float = 0.0
    info: Any = None


@dataclass(eq=False)
class _Item:
    scan: Any  # a `Prepared`, or what `prepare` takes
    deadline: float  # time.monotonic()
    enqueued: float
    future: asyncio.Future[BatchResult] = field(repr=False)
    # Resolves True once the scan is prepared and its model call starts, False if preparing it failed.
    prepared: asyncio.Future[bool] = field(repr=False)
    result: Prepared | BaseException | None = field(default=None, repr=False)  # set in the call's thread
    prepare_s: float = 0.0


@dataclass(frozen=True)
class _Call:
    """A running model call: on every core or a share of them, with `max_batch` scans or fewer, and when
    it should end (time.monotonic(), from the measured time per scan)."""

    alone: bool
    full: bool
    expected_end: float


def _signal_prepared(items: list[_Item]) -> None:
    for it in items:
        if not it.prepared.done():
            it.prepared.set_result(isinstance(it.result, Prepared))


def _moving_average(average: float | None, value: float) -> float:
    return value if average is None else 0.8 * average + 0.2 * value


@dataclass(frozen=True)
class Ticket:
    """A queued scan, to `wait` for."""

    item: _Item

    @property
    def prepared(self) -> asyncio.Future[bool]:
        """Resolves True once the scan is prepared and its model call starts, False if preparing it failed;
        never, if the scan is not run (deadline passed, service stopping): wait for it beside `wait`."""
        return self.item.prepared

    def cancel(self) -> None:
        """Withdraw the scan (its answer is no longer wanted): it is not run if its call has not started."""
        self.item.future.cancel()
        self.item.prepared.cancel()


class MicroBatcher:
    """Batches scans for `run_batch` (see module docstring). Start with `start()`, stop with `stop()`."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch: int,
        max_wait_ms: float,
        queue_max: int,
        workers: int = 1,
        metrics: EdgeMetrics | None = None,
        run_batch_alone: RunBatch | None = None,
        share_from: int = SHARE_FROM,
        share_max: int | None = None,
        prepare: Prepare | None = None,
    ) -> None:
        if max_batch < 1 or queue_max < 1 or workers < 1:
            raise ValueError("max_batch, queue_max and workers must be ≥ 1")
        if share_from < 2:
            raise ValueError("share_from must be ≥ 2")
        if share_max is not None and share_max < 1:
            raise ValueError("share_max must be ≥ 1")
        #: Scans waiting from which they are shared out among parallel calls (see `SHARE_FROM`); a value
        #: above `queue_max` never shares a backlog out (every batch runs alone, one after another).
        self.share_from = share_from
        #: At most this many scans in a call taken from a backlog (None: `max_batch`).
        self.share_max = max_batch if share_max is None else min(share_max, max_batch)
        #: The model call; public so that tests can wrap it (e.g. with a slow stub).
        self.run_batch = run_batch
        #: The model call for a batch that starts while no other runs (e.g. one using every core), or None.
        #: With several workers sharing the cores, each call gets a share of them; a batch that has the
        #: machine to itself, as at light load, is answered sooner by a call that uses all of it.
        self.run_batch_alone = run_batch_alone
        #: Prepares scans queued with `enqueue_scan` (None: only prepared scans are taken).
        self.prepare = prepare
        self._running: dict[int, _Call] = {}  # the model calls now running, by worker
        self._held = 0  # scans that workers took from the queue and hold while they wait
        self._batch_ended = asyncio.Event()  # set (and replaced) whenever a model call ends
        self._arrived = asyncio.Event()  # set (and replaced) whenever a scan is queued
        self._turn_taken = asyncio.Event()  # set (and replaced) whenever a worker stops holding a scan
        # Moving averages of a call's time per scan (preparing included) alone and sharing the cores.
        self._scan_s_alone: float | None = None
        self._scan_s_shared: float | None = None
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_max = queue_max
        self.workers = workers
        self.metrics = metrics
        self._queue: asyncio.Queue[_Item] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None  # shared calls
        self._alone_executor: ThreadPoolExecutor | None = None  # calls alone: one thread, always the same
        # Moving average of one batch's run time, for Retry-After estimates.
        self._batch_s_avg = 0.05

    @property
    def depth(self) -> int:
        """Scans waiting (not yet taken into a batch)."""
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not all(t.done() for t in self._tasks)

    async def start(self) -> None:
        """Create the queue and the worker tasks (in the running event loop)."""
        self._queue = asyncio.Queue(maxsize=self.queue_max)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="xscreen-infer")
        if self.run_batch_alone is not None:
            self._alone_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xscreen-infer-alone")
        self._tasks = [asyncio.create_task(self._worker(i), name=f"batcher-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        """Cancel the workers; scans still queued, or taken by a worker and not yet answered, fail with
        `BatcherStoppedError`."""
        tasks, pending = self._tasks, list(self._tasks)
        while pending:
            # Cancelled again until it ends: a cancellation that lands just as an awaited `wait_for`
            # completes is lost (Python 3.11's wait_for then returns the result), and the worker would go on.
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=0.05)
            pending = [t for t in pending if not t.done()]
        for t in tasks:
            if not t.cancelled() and t.exception() is not None:
                log_event(_log, "batch worker failed", logging.ERROR, error=repr(t.exception()))
        self._tasks = []
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(BatcherStoppedError("the service is shutting down"))
        for executor in (self._executor, self._alone_executor):
            if executor is not None:  # (waited for off the loop: a model call may still be running)
                await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        self._executor = self._alone_executor = None

    def retry_after_s(self) -> float:
        """A Retry-After estimate: time to drain the queue at the recent batch rate (≥ 1 s). A backlog
        (from `share_from` waiting) is drained by calls of at most `share_max` scans."""
        waiting = self.depth + 1
        batches = math.ceil(waiting / self._call_limit(waiting)) / self.workers
        return max(1.0, math.ceil(batches * self._batch_s_avg))

    def _call_limit(self, waiting: int) -> int:
        """The most scans one call takes while `waiting` scans wait: `share_max` from a backlog (shared out
        among parallel calls), else `max_batch`."""
        return self.share_max if waiting >= self.share_from else self.max_batch

    def enqueue(self, tensor: np.ndarray, params: LetterboxParams, *, deadline: float) -> Ticket:
        """Queue one prepared scan (C×H×W at the model's input size) without waiting.

        deadline: `time.monotonic()` by which the answer is needed. Raises `QueueFullError` at once when
        the queue is full, `BatcherStoppedError` when the workers are not running.
        """
        return self._put(Prepared(tensor, params), deadline)

    def enqueue_scan(self, scan: Any, *, deadline: float) -> Ticket:
        """Queue a scan as it came, to be prepared by `prepare` in its model call's thread; otherwise as
        `enqueue`. What `prepare` raises, `wait` raises."""
        if self.prepare is None:
            raise TypeError("this batcher has no prepare function: queue prepared scans with enqueue")
        return self._put(scan, deadline)

    def _put(self, scan: Any, deadline: float) -> Ticket:
        if self._queue is None or not self.running:
            raise BatcherStoppedError("the screening worker is not running")
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        item = _Item(scan=scan, deadline=deadline, enqueued=now, future=loop.create_future(),
                     prepared=loop.create_future())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise QueueFullError(self.retry_after_s()) from None
        self._arrived.set()
        self._arrived = asyncio.Event()
        self._update_depth()
        return Ticket(item)

    async def wait(self, ticket: Ticket) -> BatchResult:
        """The queued scan's result; `DeadlineExceededError` when its deadline passes first."""
        item = ticket.item
        try:
            # On timeout (or if the caller is cancelled: client gone) wait_for cancels the future; the
            # worker sees it done and neither runs the scan nor sets a result nobody would read.
            return await asyncio.wait_for(item.future, timeout=max(0.0, item.deadline - time.monotonic()))
        except TimeoutError:
            raise DeadlineExceededError("the scan was not screened before the request deadline") from None

    async def submit(self, tensor: np.ndarray, params: LetterboxParams, *, deadline: float) -> BatchResult:
        """`enqueue` and `wait` in one call."""
        return await self.wait(self.enqueue(tensor, params, deadline=deadline))

    def _update_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.depth)

    @property
    def _running_batches(self) -> int:
        return len(self._running)

    @property
    def _sharing(self) -> bool:
        """Whether a backlog is ever shared out among parallel calls (`share_from` above `queue_max`: never,
        when there is a call on every core to run each batch alone instead)."""
        return self.run_batch_alone is None or self.share_from <= self.queue_max

    @property
    def _running_full(self) -> bool:
        return any(c.full for c in self._running.values())

    @property
    def _running_alone(self) -> bool:
        return any(c.alone for c in self._running.values())

    async def _collect(self) -> list[_Item]:
        """The next batch (see the module docstring): the first waiting scan and, up to `max_batch`, its
        share of those waiting with it."""
        assert self._queue is not None
        while self._held:  # a worker that holds scans (they came first) takes its share before this one
            await self._turn_taken.wait()
        first = await self._queue.get()
        self._held += 1  # taken from the queue but not running yet: counts as waiting in the decisions below
        try:
            await self._wait_for_a_turn(first)
        except asyncio.CancelledError:
            if not first.future.done():
                first.future.set_exception(BatcherStoppedError("the service is shutting down"))
            raise
        finally:
            self._held -= 1
            self._turn_taken.set()
            self._turn_taken = asyncio.Event()
        waiting = 1 + self._held + self._queue.qsize()
        free_workers = max(1, self.workers - self._running_batches) if waiting >= self.share_from else 1
        share = min(self._call_limit(waiting), math.ceil(waiting / free_workers))
        items = [first]
        until = first.enqueued + self.max_wait_s
        while len(items) < share and not self._queue.empty():  # (scans held by others are not queued)
            items.append(self._queue.get_nowait())
        # Heavy load: company comes soon, for a call that will run beside the full one (and so shares).
        try:
            while len(items) < self.share_max and self._running_full:
                try:
                    items.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = until - time.monotonic()
                if left <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), timeout=left))
                except TimeoutError:
                    break
        except asyncio.CancelledError:  # stopped while gathering: the scans taken are in no queue any more
            for it in items:
                if not it.future.done():
                    it.future.set_exception(BatcherStoppedError("the service is shutting down"))
            raise
        self._update_depth()
        return items

    async def _wait_for_a_turn(self, first: _Item) -> None:
        """Wait while a call runs alone; and a lone scan (nothing else waiting) beside calls that share the
        cores waits for one of them when it should end before a shared call would gain over a call alone."""
        assert self._queue is not None
        waited_until: float | None = None
        while True:
            if self._running_alone or (self._running_batches and not self._sharing):
                await self._batch_ended.wait()  # (sharing off: every call runs alone, one after another)
                continue
            if not self._running_batches or self._held + self._queue.qsize() >= self.share_from:
                return  # idle cores, or a backlog to share out
            gain = self._shared_gain_s()
            now = time.monotonic()
            if waited_until is None:
                waited_until = now + gain
            soonest = min((c.expected_end for c in self._running.values() if not c.alone), default=now)
            if gain <= 0 or soonest - now >= gain or now >= waited_until:
                return  # run beside the others
            ended = asyncio.ensure_future(self._batch_ended.wait())
            arrived = asyncio.ensure_future(self._arrived.wait())
            try:
                await asyncio.wait((ended, arrived), timeout=waited_until - now, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended.cancel()
                arrived.cancel()

    def _shared_gain_s(self) -> float:
        """How much longer one scan takes in a call sharing the cores than in a call alone (0 until both
        were measured, or without a call alone)."""
        if self.run_batch_alone is None or self._scan_s_alone is None or self._scan_s_shared is None:
            return 0.0
        return max(0.0, self._scan_s_shared - self._scan_s_alone)

    def _prepare_and_run(
        self, loop: asyncio.AbstractEventLoop, run: RunBatch, items: list[_Item]
    ) -> tuple[list[_Item], list[Detections], float]:
        """In the model call's thread: prepare the call's scans (one that fails is left out, its error kept
        in its `result`), tell the loop which are prepared, then run the model on them. Returns the scans
        run, their detections and the model's seconds."""
        ran: list[_Item] = []
        ready: list[Prepared] = []  # their inputs, in the same order
        for it in items:
            if it.future.done():  # withdrawn meanwhile (a re-send answered from the store)
                continue
            if isinstance(it.scan, Prepared):
                it.result = it.scan
            else:
                assert self.prepare is not None
                t0 = time.perf_counter()
                try:
                    it.result = self.prepare(it.scan)
                except Exception as exc:  # noqa: BLE001 - the scan's own refusal, raised by its wait
                    it.result = exc
                it.prepare_s = time.perf_counter() - t0
            if isinstance(it.result, Prepared):
                ran.append(it)
                ready.append(it.result)
        try:
            loop.call_soon_threadsafe(_signal_prepared, items)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass
        if not ran:
            return ran, [], 0.0
        t0 = time.perf_counter()
        batch = ready[0].tensor[None] if len(ready) == 1 else np.stack([p.tensor for p in ready])
        dets = run(batch, [p.params for p in ready])
        return ran, dets, time.perf_counter() - t0

    async def _worker(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            now = time.monotonic()
            live = [it for it in items if not it.future.done() and it.deadline > now]
            for it in items:
                if it not in live and not it.future.done():
                    it.future.set_exception(DeadlineExceededError("the request deadline passed while the scan was queued"))
            if not live:
                continue
            start = time.monotonic()
            # The whole machine only for a batch that starts on idle cores with nothing queued behind it
            # (anything queued would start beside it at once and share the cores).
            # (Sharing off: every call that starts on idle cores runs alone, whatever waits behind it.)
            alone = (self.run_batch_alone is not None and self._running_batches == 0
                     and (not self._sharing or (self._queue.empty() and not self._held)))
            run, executor = (self.run_batch_alone, self._alone_executor) if alone else (self.run_batch, self._executor)
            per_scan_s = self._scan_s_alone if alone else self._scan_s_shared
            self._running[index] = _Call(alone=alone, full=len(live) >= self.max_batch,
                                         expected_end=start + len(live) * (per_scan_s or 0.0))
            try:
                ran, dets, model_s = await loop.run_in_executor(executor, self._prepare_and_run, loop, run, live)
                if len(dets) != len(ran):
                    raise RuntimeError(f"the model returned {len(dets)} results for {len(ran)} scans")
            except asyncio.CancelledError:
                for it in live:
                    if not it.future.done():
                        it.future.set_exception(BatcherStoppedError("the service is shutting down"))
                raise
            except Exception as exc:  # one bad batch must not kill the worker; its scans get the error
                log_event(_log, "batch failed", logging.ERROR, error=repr(exc), batch_size=len(live), worker=index)
                for it in live:  # (a scan that could not be prepared keeps its own error)
                    if not it.future.done():
                        it.future.set_exception(it.result if isinstance(it.result, BaseException) else exc)
                continue
            finally:
                del self._running[index]
                # Wake the workers gathering behind this batch (waiters hold the event they saw).
                self._batch_ended.set()
                self._batch_ended = asyncio.Event()
            run_s = time.monotonic() - start
            self._batch_s_avg = _moving_average(self._batch_s_avg, run_s)
            if alone:
                self._scan_s_alone = _moving_average(self._scan_s_alone, run_s / len(live))
            else:
                self._scan_s_shared = _moving_average(self._scan_s_shared, run_s / len(live))
            for it in live:  # scans that could not be prepared fail alone
                if isinstance(it.result, BaseException) and not it.future.done():
                    it.future.set_exception(it.result)
            if not ran:
                continue
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(ran))
                self.metrics.inference_latency.observe(model_s)
            for it, d in zip(ran, dets):
                if not it.future.done():
                    assert isinstance(it.result, Prepared)
                    it.future.set_result(
                        BatchResult(
                            detections=d,
                            queue_ms=(start - it.enqueued) * 1000.0,
                            inference_ms=model_s * 1000.0,
                            batch_size=len(ran),
                            prepare_ms=it.prepare_s * 1000.0,
                            info=it.result.info,
                        )
                    )
