"""Units of the lane service without a model: the micro-batcher, the token bucket, upload formats, the
body limit's streaming check."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from edge.batcher import SHARE_FROM, DeadlineExceededError, MicroBatcher, Prepared, QueueFullError
from edge.formats import (
    DUAL_ENERGY_MEDIA_TYPE,
    UnsupportedMediaTypeError,
    decode_upload,
    pack_dual_energy,
    unpack_dual_energy,
    upload_from_bytes,
    upload_from_pair,
)
from edge.ratelimit import RateLimiter, retry_after_header
from edge_support import grey16_png, png_bytes
from vision.decode import NotAnImageError
from vision.letterbox import LetterboxParams
from vision.postprocess import Detections

PARAMS = LetterboxParams(scale=1.0, pad_x=0, pad_y=0, src_width=8, src_height=8, dst_width=8, dst_height=8)


def _recording_run(sizes: list[int], delay_s: float = 0.0):
    def run(batch: np.ndarray, params) -> list[Detections]:
        sizes.append(batch.shape[0])
        time.sleep(delay_s)
        # Echo each input's first value as its score, so results can be matched to inputs.
        return [Detections.from_arrays(np.zeros((1, 4)), [float(x[0, 0, 0]) / 255], [0]) for x in batch]

    return run


def _tensor(value: int) -> np.ndarray:
    return np.full((3, 8, 8), value, np.uint8)


def test_concurrent_scans_share_batches_and_get_their_own_answers():
    async def main() -> tuple[list[int], list[float]]:
        sizes: list[int] = []
        b = MicroBatcher(_recording_run(sizes), max_batch=4, max_wait_ms=50.0, queue_max=16)
        await b.start()
        try:
            deadline = time.monotonic() + 5
            results = await asyncio.gather(*(b.submit(_tensor(i), PARAMS, deadline=deadline) for i in range(6)))
        finally:
            await b.stop()
        return sizes, [float(r.detections.scores[0]) for r in results]

    sizes, scores = asyncio.run(main())
    assert sizes == [4, 2]
    assert scores == pytest.approx([i / 255 for i in range(6)])


def test_a_batch_with_the_machine_to_itself_takes_the_alone_call():
    async def main() -> tuple[list[int], list[int]]:
        shared: list[int] = []
        alone: list[int] = []
        b = MicroBatcher(_recording_run(shared, delay_s=0.2), max_batch=4, max_wait_ms=0.0, queue_max=16,
                         workers=2, run_batch_alone=_recording_run(alone, delay_s=0.2))
        await b.start()
        try:
            deadline = time.monotonic() + 5
            await b.submit(_tensor(1), PARAMS, deadline=deadline)  # alone: nothing else runs
            # Two at once: one batch, alone (fewer than SHARE_FROM waiting).
            await asyncio.gather(*(b.submit(_tensor(i), PARAMS, deadline=deadline) for i in (2, 3)))
            # Three at once: a backlog, shared out as parallel calls.
            await asyncio.gather(*(b.submit(_tensor(i), PARAMS, deadline=deadline) for i in (4, 5, 6)))
            await b.submit(_tensor(7), PARAMS, deadline=deadline)  # alone again
        finally:
            await b.stop()
        return shared, alone

    assert SHARE_FROM == 3
    shared, alone = asyncio.run(main())
    assert alone == [1, 2, 1]
    assert sorted(shared) == [1, 2]


def test_calls_alone_keep_one_thread_after_shared_calls_ran_in_parallel():
    """Once shared calls have run side by side (the pool has all its threads), calls alone still all run on
    one thread of their own, never on a pool thread (taking turns there doubled their tail at light load)."""
    import threading

    def thread_recording_run(idents: list[int], delay_s: float):
        def run(batch: np.ndarray, params) -> list[Detections]:
            idents.append(threading.get_ident())
            time.sleep(delay_s)
            return [Detections.from_arrays(np.zeros((1, 4)), [0.5], [0]) for _ in batch]

        return run

    async def main() -> tuple[list[int], list[int]]:
        shared: list[int] = []
        alone: list[int] = []
        b = MicroBatcher(thread_recording_run(shared, 0.1), max_batch=1, max_wait_ms=0.0, queue_max=16,
                         workers=2, run_batch_alone=thread_recording_run(alone, 0.0))
        await b.start()
        try:
            deadline = time.monotonic() + 5
            # A backlog queued before the workers run: shared out, two calls at a time on the pool's threads.
            tickets = [b.enqueue(_tensor(i), PARAMS, deadline=deadline) for i in range(6)]
            await asyncio.gather(*(b.wait(t) for t in tickets))
            for i in range(6):  # then one scan at a time: each a call alone
                await b.submit(_tensor(i), PARAMS, deadline=deadline)
        finally:
            await b.stop()
        return shared, alone

    shared, alone = asyncio.run(main())
    assert len(set(shared)) == 2  # both pool threads ran shared calls
    assert len(alone) == 6 and len(set(alone)) == 1
    assert alone[0] not in set(shared)


def _overlap_recording_run(sizes: list[int], peak: list[int], delay_s: float, running: list[int] | None = None):
    """A model call that records batch sizes and the most calls running at once (pass one `running` list
    to several such calls to count them together)."""
    import threading

    lock = threading.Lock()
    running = [0] if running is None else running

    def run(batch: np.ndarray, params) -> list[Detections]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            sizes.append(batch.shape[0])
        time.sleep(delay_s)
        with lock:
            running[0] -= 1
        return [Detections.from_arrays(np.zeros((1, 4)), [0.5], [0]) for _ in batch]

    return run


async def _one_then_more(b: MicroBatcher, more: list[int]) -> float:
    """Submit one scan, then, 0.1 s later (while its call runs), the scans `more`; seconds until all are answered."""
    deadline = time.monotonic() + 5
    start = time.monotonic()
    first = asyncio.create_task(b.submit(_tensor(1), PARAMS, deadline=deadline))
    await asyncio.sleep(0.1)
    await asyncio.gather(first, *(b.submit(_tensor(i), PARAMS, deadline=deadline) for i in more))
    return time.monotonic() - start


@pytest.mark.parametrize(("behind", "share_from", "alone_expected", "shared_expected", "peak_expected"), [
    (2, 3, [1, 2], [], 1),  # too few to share: one batch, alone again
    (3, 3, [1], [1, 2], 2),  # a backlog: shared out, the two calls run together
    (3, 100, [1, 3], [], 1),  # sharing turned off: one batch, alone
])
def test_scans_behind_a_call_alone_wait_for_it(behind, share_from, alone_expected, shared_expected, peak_expected):
    async def main() -> tuple[list[int], list[int], int, float]:
        shared: list[int] = []
        alone: list[int] = []
        peak, running = [0], [0]
        b = MicroBatcher(_overlap_recording_run(shared, peak, 0.3, running), max_batch=4, max_wait_ms=0.0,
                         queue_max=16, workers=2, run_batch_alone=_overlap_recording_run(alone, peak, 0.3, running),
                         share_from=share_from)
        await b.start()
        try:
            took = await _one_then_more(b, list(range(behind)))  # the first scan runs alone
            return alone, shared, peak[0], took
        finally:
            await b.stop()

    alone, shared, peak, took = asyncio.run(main())
    assert alone == alone_expected
    assert sorted(shared) == shared_expected
    assert peak == peak_expected  # never beside the call alone
    assert took > 0.55  # they started when the call alone ended (≈ 0.6 s in all; beside it: ≈ 0.4 s)


@pytest.mark.parametrize(("share_max", "shared_expected"), [
    (None, [2, 3]),  # no cap: the backlog split among the free workers
    (2, [1, 2, 2]),  # at most 2 a call: the third call takes what is left when a worker is free again
    (8, [2, 3]),  # a cap at max_batch changes nothing
])
def test_scans_queued_on_idle_cores_are_shared_among_the_workers(share_max, shared_expected):
    async def main() -> tuple[list[int], list[int], int]:
        shared: list[int] = []
        alone: list[int] = []
        peak, running = [0], [0]
        b = MicroBatcher(_overlap_recording_run(shared, peak, 0.2, running), max_batch=8, max_wait_ms=0.0,
                         queue_max=16, workers=2, run_batch_alone=_overlap_recording_run(alone, peak, 0.2, running),
                         share_max=share_max)
        await b.start()
        deadline = time.monotonic() + 5
        # Five scans queued before the workers first run (nothing here yields to them until `gather`).
        tasks = [b.enqueue(_tensor(i), PARAMS, deadline=deadline) for i in range(5)]
        try:
            await asyncio.gather(*(b.wait(t) for t in tasks))
            return alone, shared, peak[0]
        finally:
            await b.stop()

    alone, shared, peak = asyncio.run(main())
    assert alone == []
    assert sorted(shared) == shared_expected and peak == 2


@pytest.mark.parametrize(("share_max", "share_from", "expected_s"), [
    (None, 3, 2.0),  # calls of up to 8: 2 calls with the new scan
    (2, 3, 5.0),  # a backlog goes in calls of 2: 5 calls
    (2, 100, 2.0),  # sharing off: no backlog is shared out, calls of up to 8 again
])
def test_retry_after_counts_the_calls_that_drain_a_full_queue(share_max, share_from, expected_s):
    """A full queue of 8 behind a running call, one worker, calls measured at 1 s."""

    async def main() -> float:
        b = MicroBatcher(_recording_run([], delay_s=0.3), max_batch=8, max_wait_ms=0.0, queue_max=8,
                         share_max=share_max, share_from=share_from)
        await b.start()
        try:
            deadline = time.monotonic() + 5
            first = asyncio.create_task(b.submit(_tensor(0), PARAMS, deadline=deadline))
            await asyncio.sleep(0.05)  # the worker runs it
            tickets = [b.enqueue(_tensor(i), PARAMS, deadline=deadline) for i in range(8)]
            b._batch_s_avg = 1.0  # as if recent calls took 1 s each
            with pytest.raises(QueueFullError) as full:
                b.enqueue(_tensor(9), PARAMS, deadline=deadline)
            await asyncio.gather(first, *(b.wait(t) for t in tickets))
            return full.value.retry_after_s
        finally:
            await b.stop()

    assert asyncio.run(main()) == expected_s


def _per_scan_run(sizes: list[int], per_scan_s: float):
    def run(batch: np.ndarray, params) -> list[Detections]:
        sizes.append(batch.shape[0])
        time.sleep(per_scan_s * batch.shape[0])
        return [Detections.from_arrays(np.zeros((1, 4)), [0.5], [0]) for _ in batch]

    return run


@pytest.mark.parametrize(("lone_at_s", "runs_alone"), [(0.42, False), (0.65, True)])
def test_a_lone_scan_beside_a_shared_call_waits_only_when_that_call_ends_soon(lone_at_s, runs_alone):
    """Shared calls take 0.4 s per scan, a call alone 0.08: waiting for a shared call pays when it ends
    within 0.32 s. Three scans are shared out as calls of 2 (ends at 0.8 s) and 1 (ends at 0.4 s); a lone
    scan sent at 0.42 s (0.38 s left) runs beside at once, one sent at 0.65 s (0.15 s left) waits and then
    runs alone."""

    async def main() -> tuple[list[int], list[int]]:
        shared: list[int] = []
        alone: list[int] = []
        b = MicroBatcher(_per_scan_run(shared, 0.4), max_batch=4, max_wait_ms=0.0, queue_max=16, workers=2,
                         run_batch_alone=_per_scan_run(alone, 0.08))
        await b.start()
        try:
            deadline = time.monotonic() + 10
            await b.submit(_tensor(0), PARAMS, deadline=deadline)  # measures a call alone
            await asyncio.gather(*(b.submit(_tensor(i), PARAMS, deadline=deadline) for i in range(3)))  # shared
            assert (alone, sorted(shared)) == ([1], [1, 2])
            backlog = [asyncio.create_task(b.submit(_tensor(i), PARAMS, deadline=deadline)) for i in range(3)]
            await asyncio.sleep(lone_at_s)
            await b.submit(_tensor(9), PARAMS, deadline=deadline)
            await asyncio.gather(*backlog)
            return alone, shared
        finally:
            await b.stop()

    alone, shared = asyncio.run(main())
    assert (alone == [1, 1]) == runs_alone
    assert len(shared) == (4 if runs_alone else 5)


def test_a_full_batch_runs_beside_a_running_one():
    async def main() -> tuple[list[int], int, float]:
        sizes: list[int] = []
        peak = [0]
        b = MicroBatcher(_overlap_recording_run(sizes, peak, 0.3), max_batch=2, max_wait_ms=0.0,
                         queue_max=16, workers=2)
        await b.start()
        try:
            took = await _one_then_more(b, [2, 3])
            return sizes, peak[0], took
        finally:
            await b.stop()

    sizes, peak, took = asyncio.run(main())
    assert sizes == [1, 2] and peak == 2
    assert took < 0.55  # beside the first: ≈ 0.4 s


def test_stop_fails_every_scan_queued_held_or_running_with_batcher_stopped():
    """A scan a worker holds while it gathers company beside a full call is in no queue: `stop` must still
    fail it (503 to its station), not leave it to time out (504)."""
    from edge.batcher import BatcherStoppedError

    async def main() -> list[str]:
        b = MicroBatcher(_recording_run([], delay_s=0.5), max_batch=2, max_wait_ms=5000.0, queue_max=16, workers=2)
        await b.start()
        deadline = time.monotonic() + 30
        tickets = [b.enqueue(_tensor(i), PARAMS, deadline=deadline) for i in range(2)]  # one full call
        await asyncio.sleep(0.1)
        tickets.append(b.enqueue(_tensor(3), PARAMS, deadline=deadline))  # held, waiting for company
        await asyncio.sleep(0.1)
        tickets.append(b.enqueue(_tensor(4), PARAMS, deadline=deadline))  # queued behind it
        # At once: the held worker's wait for company has just been given scan 4, and a cancellation landing
        # then is lost in Python 3.11's wait_for; stop must end the workers even so.
        await asyncio.wait_for(b.stop(), timeout=5.0)
        outcomes = []
        for ticket in tickets:
            try:
                await asyncio.wait_for(b.wait(ticket), timeout=1.0)
                outcomes.append("answered")
            except BatcherStoppedError:
                outcomes.append("stopped")
            except DeadlineExceededError:
                outcomes.append("left pending")
        return outcomes

    outcomes = asyncio.run(main())
    assert outcomes[2] == "stopped"
    assert all(o in ("answered", "stopped") for o in outcomes), outcomes


@pytest.mark.parametrize("max_wait_ms", [30.0, 400.0])
def test_a_lone_scan_on_idle_cores_does_not_wait_for_company(max_wait_ms: float):
    async def main() -> float:
        b = MicroBatcher(_recording_run([]), max_batch=8, max_wait_ms=max_wait_ms, queue_max=8)
        await b.start()
        try:
            start = time.monotonic()
            await b.submit(_tensor(1), PARAMS, deadline=start + 5)
            return time.monotonic() - start
        finally:
            await b.stop()

    assert asyncio.run(main()) < 0.3  # never max_wait_ms: nothing else was running


def test_full_queue_refuses_at_once_and_expired_scans_are_not_run():
    async def main() -> tuple[list[int], list[object]]:
        sizes: list[int] = []
        b = MicroBatcher(_recording_run(sizes, delay_s=0.3), max_batch=1, max_wait_ms=0.0, queue_max=1)
        await b.start()
        try:
            now = time.monotonic()
            first = asyncio.create_task(b.submit(_tensor(1), PARAMS, deadline=now + 5))
            await asyncio.sleep(0.05)  # the worker took it: the queue is empty again
            second = asyncio.create_task(b.submit(_tensor(2), PARAMS, deadline=now + 0.1))
            await asyncio.sleep(0.01)
            with pytest.raises(QueueFullError) as full:
                await b.submit(_tensor(3), PARAMS, deadline=now + 5)
            assert full.value.retry_after_s >= 1
            outcomes = await asyncio.gather(first, second, return_exceptions=True)
            await asyncio.sleep(0.4)  # let the worker look at the expired scan
            return sizes, outcomes
        finally:
            await b.stop()

    sizes, (first, second) = asyncio.run(main())
    assert not isinstance(first, Exception)
    assert isinstance(second, DeadlineExceededError)
    assert sizes == [1]  # the expired scan never reached the model


def test_scans_are_prepared_in_their_model_calls_thread_and_one_that_fails_fails_alone():
    """`enqueue_scan`: the batcher's `prepare` runs in the thread of the scan's model call, just before it;
    a scan it refuses gets its error, the rest of the call runs; `prepared` says which were prepared."""
    threads: dict[str, set[str]] = {"prepare": set(), "run": set()}
    sizes: list[int] = []

    def prepare(value: object) -> Prepared:
        threads["prepare"].add(threading.current_thread().name)
        if value == "bad":
            raise ValueError("not a scan")
        assert isinstance(value, int)
        return Prepared(_tensor(value), PARAMS, info={"value": value})

    record = _recording_run(sizes, delay_s=0.05)

    def run(batch: np.ndarray, params) -> list[Detections]:
        threads["run"].add(threading.current_thread().name)
        return record(batch, params)

    async def main():
        b = MicroBatcher(run, max_batch=4, max_wait_ms=0.0, queue_max=16, prepare=prepare)
        await b.start()
        try:
            deadline = time.monotonic() + 5
            blocker = asyncio.create_task(b.submit(_tensor(9), PARAMS, deadline=deadline))  # prepared already
            await asyncio.sleep(0.01)  # the worker runs it; the next three queue behind it and share a call
            tickets = [b.enqueue_scan(v, deadline=deadline) for v in (3, "bad", 5)]
            outcomes = await asyncio.gather(*(b.wait(t) for t in tickets), return_exceptions=True)
            prepared = [t.prepared.result() for t in tickets]
            await blocker
            return outcomes, prepared
        finally:
            await b.stop()

    (good, bad, other), prepared = asyncio.run(main())
    assert isinstance(bad, ValueError) and "not a scan" in str(bad)
    assert float(good.detections.scores[0]) == pytest.approx(3 / 255) and good.info == {"value": 3}
    assert float(other.detections.scores[0]) == pytest.approx(5 / 255) and other.info == {"value": 5}
    assert good.batch_size == other.batch_size == 2 and sizes == [1, 2]
    assert prepared == [True, False, True]
    assert threads["prepare"] <= threads["run"] and all(n.startswith("xscreen-infer") for n in threads["run"])


def test_a_withdrawn_scan_is_neither_prepared_nor_run_and_scans_need_a_prepare_function():
    prepared_values: list[object] = []
    sizes: list[int] = []

    def prepare(value: object) -> Prepared:
        prepared_values.append(value)
        return Prepared(_tensor(int(value)), PARAMS)

    async def main():
        b = MicroBatcher(_recording_run(sizes, delay_s=0.2), max_batch=4, max_wait_ms=0.0, queue_max=16,
                         prepare=prepare)
        plain = MicroBatcher(_recording_run([]), max_batch=4, max_wait_ms=0.0, queue_max=16)
        await b.start()
        await plain.start()
        try:
            deadline = time.monotonic() + 5
            blocker = asyncio.create_task(b.submit(_tensor(9), PARAMS, deadline=deadline))
            await asyncio.sleep(0.01)
            withdrawn = b.enqueue_scan(1, deadline=deadline)
            kept = b.enqueue_scan(2, deadline=deadline)
            withdrawn.cancel()  # e.g. a re-send answered from the store
            result = await b.wait(kept)
            await blocker
            with pytest.raises(TypeError, match="prepare"):
                plain.enqueue_scan(1, deadline=deadline)
            return result
        finally:
            await b.stop()
            await plain.stop()

    result = asyncio.run(main())
    assert prepared_values == [2] and sizes == [1, 1]
    assert float(result.detections.scores[0]) == pytest.approx(2 / 255)


def test_a_failed_model_call_fails_its_scans_and_a_refused_scan_keeps_its_own_error():
    def prepare(value: object) -> Prepared:
        if value == "bad":
            raise ValueError("not a scan")
        return Prepared(_tensor(int(value)), PARAMS)

    def broken(batch: np.ndarray, params) -> list[Detections]:
        time.sleep(0.05)
        raise RuntimeError("the model failed")

    async def main():
        b = MicroBatcher(broken, max_batch=4, max_wait_ms=0.0, queue_max=16, prepare=prepare)
        await b.start()
        try:
            deadline = time.monotonic() + 5
            first = asyncio.create_task(b.submit(_tensor(9), PARAMS, deadline=deadline))
            await asyncio.sleep(0.01)  # the next two share a call behind it
            tickets = [b.enqueue_scan(v, deadline=deadline) for v in (1, "bad")]
            return await asyncio.gather(first, *(b.wait(t) for t in tickets), return_exceptions=True)
        finally:
            await b.stop()

    first, good, bad = asyncio.run(main())
    assert isinstance(first, RuntimeError) and isinstance(good, RuntimeError)
    assert isinstance(bad, ValueError) and "not a scan" in str(bad)


def test_token_bucket():
    now = [0.0]
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("a")
    assert wait == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0  # buckets are per key
    now[0] += 0.5
    assert limiter.acquire("a") == 0.0
    assert retry_after_header(0.2) == "1" and retry_after_header(2.1) == "3"


def test_upload_types_and_the_dual_energy_container():
    assert upload_from_bytes(png_bytes(1), None).media_type == "image/png"
    assert upload_from_bytes(png_bytes(1), "image/jpeg").media_type == "image/png"  # the bytes decide
    with pytest.raises(UnsupportedMediaTypeError):
        upload_from_bytes(png_bytes(1), "application/pdf")
    low, high = grey16_png(1), grey16_png(2)
    up = upload_from_pair(low, high)
    assert up.media_type == DUAL_ENERGY_MEDIA_TYPE
    assert upload_from_pair(low, high).sha256 == up.sha256  # deterministic: re-sends are duplicates
    assert unpack_dual_energy(pack_dual_energy(low, high)) == (low, high)
    scan = decode_upload(up, max_pixels=10**6)
    assert scan.layout == "dual_energy" and scan.pixels.shape == (48, 64, 2) and scan.pixels.dtype == np.uint16
    with pytest.raises(NotAnImageError):
        unpack_dual_energy(pack_dual_energy(low, high)[:-5])
