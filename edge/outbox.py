"""The webhook sender: delivers the outbox's "webhook" items (one per alarm) at least once.

A background task claims due items from the store (a lease, so several service processes never send the
same item at once), POSTs each payload as JSON to the configured URL with a timeout, and marks it done on
a 2xx answer or failed otherwise; the store schedules retries with exponential backoff and gives up
after a fixed number of attempts, each claim counting as one (`edge.store`). The `Idempotency-Key` header (`webhook:<scan id>`) lets
the receiver drop the duplicates that at-least-once delivery implies.

A round's items are delivered one after another, each POST cut off after the timeout as a whole (httpx's
timeout bounds each phase of a request, not the request), and the round's lease covers them all
(`lease_s`). The time left on a lease is judged on this process's monotonic clock from before the claim
(so never longer than the lease the database granted, whatever the host's wall clock says). An item whose
lease no longer leaves a delivery's time (the database or the host stalled) is not sent but given back
(`Store.outbox_release`: due again at once, its claim not counted as an attempt). A failure reported
after the lease ran out is dropped (`Store.outbox_failed(claim=...)`), so it cannot cut short the lease
of the worker that holds the item by then.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

import httpx

from edge.logs import log_event
from edge.metrics import EdgeMetrics
from edge.store import OutboxItem, Store

_log = logging.getLogger("xscreen.edge.outbox")

#: Items claimed per round, and how long a claim is held beyond the deliveries' own time (`lease_s`)
#: before another worker may take the item.
CLAIM_LIMIT = 10
LEASE_S = 60.0


def worker_name() -> str:
    """This process's name in outbox leases (host:pid), for inspection."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


class WebhookSender:
    """Delivers webhook outbox items to `url`; run `run()` as a task, cancel it to stop."""

    def __init__(self, store: Store, url: str, *, timeout_s: float, poll_s: float, metrics: EdgeMetrics | None = None,
                 client: httpx.AsyncClient | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.url = url
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.metrics = metrics
        self.worker = worker_name()
        self._client = client
        self._monotonic = monotonic

    @property
    def lease_s(self) -> float:
        """How long a round's claim is held: every item's delivery at its longest, and `LEASE_S` to spare."""
        return LEASE_S + CLAIM_LIMIT * self.timeout_s

    async def deliver(self, client: httpx.AsyncClient, item: OutboxItem) -> None:
        """POST one item (at most `timeout_s` in all) and record the outcome in the store."""
        try:
            response = await asyncio.wait_for(
                client.post(self.url, json=item.payload, headers={"Idempotency-Key": item.dedupe_key,
                                                                  "X-Xscreen-Attempt": str(item.attempts)}),
                self.timeout_s,
            )
            ok = 200 <= response.status_code < 300
            error = None if ok else f"HTTP {response.status_code}: {response.text[:500]}"
        except asyncio.TimeoutError:
            ok, error = False, f"no answer within {self.timeout_s:g} s"
        except Exception as exc:  # transport errors, and any other (a malformed URL): a failed attempt, retried later
            ok, error = False, f"{type(exc).__name__}: {exc}"
        if ok:
            await asyncio.to_thread(self.store.outbox_done, item.id)
        else:
            await asyncio.to_thread(self.store.outbox_failed, item.id, error or "failed", claim=item)
            log_event(_log, "webhook delivery failed", logging.WARNING, outbox_id=item.id, attempt=item.attempts,
                      error=error)
        if self.metrics is not None:
            self.metrics.outbox.labels(result="ok" if ok else "failed").inc()

    async def run_once(self, client: httpx.AsyncClient) -> int:
        """Claim and deliver one round of due webhook items; returns how many were claimed."""
        lease_ends = self._monotonic() + self.lease_s  # at the latest: the claim is made after this
        items = await asyncio.to_thread(self.store.claim_outbox, worker=self.worker, limit=CLAIM_LIMIT,
                                        lease_s=self.lease_s)
        index = -1
        try:
            for index, item in enumerate(items):
                await self._handle(client, item, lease_ends)
        except asyncio.CancelledError:
            # The service is stopping: the items of this round not yet begun go back, due at once and not
            # counted, for the next process (or this one restarted) to send at once instead of after the lease.
            # The one in flight keeps its lease and its counted attempt (its POST may have arrived).
            for item in items[index + 1 :]:
                try:
                    await asyncio.to_thread(self.store.outbox_release, item.id, claim=item)
                except Exception as exc:  # noqa: BLE001 - best effort while stopping; the lease still ends
                    log_event(_log, "outbox item not given back", logging.WARNING, outbox_id=item.id, error=repr(exc))
            raise
        return len(items)

    async def _handle(self, client: httpx.AsyncClient, item: OutboxItem, lease_ends: float) -> None:
        if item.kind != "webhook":
            # Not ours: give it back at once (counts as an attempt, so a stray kind cannot loop forever).
            await asyncio.to_thread(self.store.outbox_failed, item.id, f"no sender for kind {item.kind!r}",
                                    claim=item)
            return
        # Send only while the lease outlasts a whole delivery (with a second to record it); otherwise
        # give the item back, rather than risk sending it beside its next holder.
        if self._monotonic() + self.timeout_s + 1.0 > lease_ends:
            await asyncio.to_thread(self.store.outbox_release, item.id, claim=item)
            log_event(_log, "webhook delivery left for a later round", logging.WARNING, outbox_id=item.id,
                      reason="lease nearly over")
            return
        await self.deliver(client, item)

    async def run(self) -> None:
        """Deliver until cancelled; sleeps `poll_s` whenever nothing was due. Errors are logged, not fatal."""
        client = self._client or httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        try:
            while True:
                try:
                    claimed = await self.run_once(client)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # e.g. the database briefly unreachable: try again later
                    log_event(_log, "outbox round failed", logging.ERROR, error=repr(exc))
                    claimed = 0
                if claimed < CLAIM_LIMIT:
                    await asyncio.sleep(self.poll_s)
        finally:
            if self._client is None:
                await client.aclose()
