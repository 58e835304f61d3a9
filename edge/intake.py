"""The service-wide budget of scan bytes received and not yet answered, over HTTP and the stream together.

Without it every connection could hold a body of up to XSCREEN_MAX_BODY_BYTES while it waited for a queue
that then refused it, so memory grew with the number of connections, not with the settings. A request
reserves its body's declared length (XSCREEN_MAX_BODY_BYTES when it declares none) before a byte of it is
read, and a stream scan its frame's size as it arrives; both give it back when the scan is answered. A scan
the budget cannot take is answered 503 with Retry-After at once, its body unread (HTTP) or dropped (stream).

The default budget is what the micro-batcher can hold (XSCREEN_QUEUE_MAX waiting, and a batch being screened
and one being prepared per model worker) in scans of the largest size: a lane that sends smaller scans has
that many more in flight within the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IntakeBudget:
    """Bytes of scans held by the service (read or being read, queued, in a model call, being stored),
    reserved and released from the event loop's thread only (no lock)."""

    max_bytes: int
    used: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError("the intake budget must be at least one byte")

    def try_reserve(self, nbytes: int) -> bool:
        """Reserve `nbytes` if they fit (a scan larger than the whole budget fits only when nothing else is
        held, so the largest scan the settings allow is never refused for good)."""
        if nbytes < 0:
            raise ValueError("cannot reserve a negative size")
        if self.used and self.used + nbytes > self.max_bytes:
            return False
        self.used += nbytes
        return True

    def release(self, nbytes: int) -> None:
        self.used -= nbytes
        if self.used < 0:
            raise RuntimeError("released more intake bytes than were reserved")
