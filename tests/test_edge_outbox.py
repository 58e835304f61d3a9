"""The webhook sender (edge.outbox) against a mock receiver: a round's lease covers its slowest deliveries,
each delivery is cut off at the timeout as a whole, and any error of a delivery is a failed attempt."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from edge.outbox import CLAIM_LIMIT, WebhookSender
from edge.store import Store
from test_store import Clock  # the store tests' settable clock (starts at their T0)

@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock):
    store = Store(f"sqlite:///{tmp_path / 'x.db'}", tmp_path, clock=clock)
    store.migrate()
    yield store
    store.close()


def _run_round(store: Store, handler, *, timeout_s: float, url: str = "http://receiver/hook",
               monotonic=time.monotonic) -> int:
    async def main() -> int:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            sender = WebhookSender(store, url, timeout_s=timeout_s, poll_s=1.0, client=client, monotonic=monotonic)
            return await sender.run_once(client)

    return asyncio.run(main())


def test_a_round_of_slow_deliveries_keeps_its_items_from_other_workers(store: Store, clock: Clock):
    for i in range(CLAIM_LIMIT):
        store.enqueue("webhook", {"scan_id": i}, dedupe_key=f"webhook:{i}")
    taken_elsewhere: list[int] = []

    async def receiver(request: httpx.Request) -> httpx.Response:
        clock.now += timedelta(seconds=9)  # each answer takes 9 s of the 10 s timeout
        taken_elsewhere.extend(i.payload["scan_id"] for i in store.claim_outbox(worker="other:1", lease_s=60))
        return httpx.Response(200)

    assert _run_round(store, receiver, timeout_s=10.0) == CLAIM_LIMIT
    assert taken_elsewhere == []
    assert len(store.outbox_items(status="done")) == CLAIM_LIMIT


def test_an_item_whose_lease_would_end_mid_delivery_is_left_for_a_later_round(store: Store, clock: Clock):
    store.enqueue("webhook", {"scan_id": 1}, dedupe_key="webhook:1")
    store.enqueue("webhook", {"scan_id": 2}, dedupe_key="webhook:2")
    sent: list[int] = []
    stalled = {"s": 0.0}

    async def receiver(request: httpx.Request) -> httpx.Response:
        sent.append(int(request.headers["Idempotency-Key"].split(":")[1]))
        stalled["s"] += 3600.0  # the host stalled for an hour: both leases are over when this answers
        return httpx.Response(200)

    # Only the sender's own monotonic clock moves: the lease's end is judged on it, not on the wall clock.
    assert _run_round(store, receiver, timeout_s=5.0, monotonic=lambda: time.monotonic() + stalled["s"]) == 2
    assert sent == [1]
    (done,) = store.outbox_items(status="done")
    (left,) = store.outbox_items(status="pending")
    # Given back: not counted as an attempt, and due at once rather than when the lease would have ended.
    assert (done.dedupe_key, left.dedupe_key, left.attempts, left.leased_by) == ("webhook:1", "webhook:2", 0, None)
    assert [i.dedupe_key for i in store.claim_outbox(worker="other:1")] == ["webhook:2"]


def test_each_delivery_tells_the_receiver_its_attempt_number(store: Store, clock: Clock):
    store.enqueue("webhook", {"scan_id": 1}, dedupe_key="webhook:1")
    seen: list[str] = []

    async def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["X-Xscreen-Attempt"])
        return httpx.Response(503 if len(seen) == 1 else 200)

    _run_round(store, receiver, timeout_s=1.0)
    clock.now = store.outbox_items()[0].next_attempt_at  # the backoff is over
    _run_round(store, receiver, timeout_s=1.0)
    assert seen == ["1", "2"] and store.outbox_items()[0].status == "done"


def test_a_delivery_is_cut_off_at_the_timeout_as_a_whole(store: Store):
    store.enqueue("webhook", {"scan_id": 1}, dedupe_key="webhook:1")

    async def trickling_receiver(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5.0)  # no single phase times out in a mock; the whole request must
        return httpx.Response(200)

    t0 = time.monotonic()
    _run_round(store, trickling_receiver, timeout_s=0.2)
    assert time.monotonic() - t0 < 3.0
    (item,) = store.outbox_items()
    assert item.status == "pending" and item.attempts == 1 and "within 0.2 s" in (item.last_error or "")


def test_any_delivery_error_is_a_failed_attempt_not_a_stuck_item(store: Store):
    store.enqueue("webhook", {"scan_id": 1}, dedupe_key="webhook:1")

    async def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("the receiver's library blew up")

    _run_round(store, broken, timeout_s=1.0)
    (item,) = store.outbox_items()
    assert item.status == "pending" and item.attempts == 1 and "RuntimeError" in (item.last_error or "")
    assert item.leased_by is None
