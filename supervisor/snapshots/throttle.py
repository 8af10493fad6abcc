"""Bandwidth caps for replication and persistence: a pure pacing rule and a thin pacer."""

from __future__ import annotations

import time
from collections.abc import Callable


def pacing_delay(sent_bytes: int, elapsed_s: float, rate_bytes_per_s: float) -> float:
    """Seconds to wait so that `sent_bytes` since the start do not exceed the rate; 0: no cap."""
    if rate_bytes_per_s <= 0:
        return 0.0
    return max(0.0, sent_bytes / rate_bytes_per_s - elapsed_s)


class Throttle:
    """Paces one transfer: call `pace(n)` after sending each n bytes.

    Pacing over the whole transfer (not per chunk) lets a slow chunk be made up
    by the next ones, so the average stays at the cap and never above it.
    """

    def __init__(
        self,
        rate_bytes_per_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate_bytes_per_s
        self.clock, self.sleep = clock, sleep
        self.started = clock()
        self.sent = 0

    def pace(self, nbytes: int) -> None:
        self.sent += nbytes
        delay = pacing_delay(self.sent, self.clock() - self.started, self.rate)
        if delay > 0:
            self.sleep(delay)

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.started
