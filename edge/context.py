"""The running service's shared objects, made in the app's lifespan and reached through `app.state.ctx`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.batcher import MicroBatcher
from edge.intake import IntakeBudget
from edge.metrics import EdgeMetrics
from edge.ratelimit import RateLimiter
from edge.settings import EdgeSettings

if TYPE_CHECKING:  # only for annotations: importing these here would load them at app import time
    from edge.auth import Auth
    from edge.store import Store
    from inference.engine import Engine


@dataclass
class ServiceContext:
    """Everything a request handler needs. `engine`, `store`, `auth` and `batcher` are None until the
    lifespan has made them (`ready` turns True then)."""

    settings: EdgeSettings
    metrics: EdgeMetrics
    #: Scans per station (token bucket per station name).
    limiter: RateLimiter
    #: A station's other requests (reads) per station, a bucket apart at the same rate.
    read_limiter: RateLimiter
    #: Password attempts per user name and client address on the login form (argon2 makes each slow; this
    #: caps how many): an outsider guessing at a name spends their own bucket, not the user's.
    login_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(rate_per_s=0.2, burst=10))
    #: Password attempts per user name from all addresses together: guesses spread over many addresses are
    #: bounded too, with room enough that one address's guessing does not lock the user out.
    login_name_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(rate_per_s=1.0, burst=200))
    #: Password attempts per client address, checked first: a flood of made-up names, each with a fresh
    #: per-name bucket, is held to one guess a second. The burst leaves room for several supervisors
    #: behind one address (an office NAT) mistyping at once.
    login_address_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(rate_per_s=1.0, burst=60))
    #: Scan bytes received and not yet answered, service-wide (edge/intake.py; made from the settings).
    intake: IntakeBudget | None = None
    #: Open, authenticated `WS /v1/stream` connections (at most XSCREEN_MAX_STREAMS), and by station.
    streams: int = 0
    station_streams: dict[str, int] = field(default_factory=dict)
    engine: Engine | None = None
    store: Store | None = None
    auth: Auth | None = None
    batcher: MicroBatcher | None = None
    #: Bounds how many review previews are rendered at once, hence the memory their decoded pixels hold
    #: (scans being screened are decoded in their model calls' threads, bounded by the model workers).
    decode_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    ready: bool = False
    #: Why a start-up run in the background failed (`edge.app.create_app(start_in_background=True)`).
    start_error: BaseException | None = None
    background: list[asyncio.Task[None]] = field(default_factory=list)
    #: Scans' record writes still running (one whose station stopped waiting at its deadline included): the
    #: service awaits them before it stops.
    writes: set[asyncio.Future[Any]] = field(default_factory=set)

    def require(self) -> tuple[Engine, Store, Auth, MicroBatcher]:
        """The started components; raises RuntimeError while the service is still starting or stopping."""
        if self.engine is None or self.store is None or self.auth is None or self.batcher is None:
            raise RuntimeError("the service is not ready")
        return self.engine, self.store, self.auth, self.batcher
