"""Request rate limits: a token bucket per key (a station name, a login name, a client address).

A key may spend `burst` tokens at once, then `rate_per_s` tokens per second on average. Some keys are
chosen by the client (the user name typed on the unauthenticated login form), so the buckets must not
grow with what clients send: a bucket that has refilled completely behaves exactly like a missing one, so
such buckets are dropped (in a sweep at most once per refill time, which makes the sweep's cost amortised
over that time's calls), and past `max_keys` the least recently used bucket, the one nearest to full, is
dropped to make room.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets: `acquire(key)` → 0.0 when allowed, else the seconds until one token is available."""

    def __init__(self, *, rate_per_s: float, burst: int, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate_per_s must be > 0, burst ≥ 1 and max_keys ≥ 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        # Least recently used first (a bucket is re-inserted on each use), so eviction takes the first.
        self._buckets: dict[str, _Bucket] = {}
        # A bucket untouched for this long is full: a sweep this often finds every bucket idle since the last.
        self._refill_s = burst / rate_per_s
        self._swept = clock()
        # Auth dependencies run in the thread pool and WebSocket handlers in the event loop: one lock.
        self._lock = threading.Lock()

    def acquire(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens from `key`'s bucket. Returns 0.0 if taken, else the wait in seconds (nothing taken)."""
        now = self._clock()
        with self._lock:
            if now - self._swept >= self._refill_s:
                self._forget_full(now)
            b = self._buckets.pop(key, None)
            if b is None:
                if len(self._buckets) >= self.max_keys:
                    del self._buckets[next(iter(self._buckets))]
                b = _Bucket(tokens=float(self.burst), updated=now)
            self._buckets[key] = b
            b.tokens = min(float(self.burst), b.tokens + (now - b.updated) * self.rate_per_s)
            b.updated = now
            if b.tokens >= cost:
                b.tokens -= cost
                return 0.0
            return (cost - b.tokens) / self.rate_per_s

    def _forget_full(self, now: float) -> None:
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * self.rate_per_s >= self.burst]
        for k in full:
            del self._buckets[k]
        self._swept = now


def retry_after_header(wait_s: float) -> str:
    """Retry-After takes whole seconds; round up so a client that obeys it is not refused again."""
    return str(max(1, math.ceil(wait_s)))
