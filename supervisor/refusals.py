"""Refused calls are logged at a bounded rate: a flood of hostile calls cannot fill the log.

`TokenBucket` is the pure rule (callers pass `now`); `RefusalLog` is the thin
logging adapter that the server's call gate and the servicers share.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("train_supervisor")

# A few lines a second at most, with a burst for a short genuine incident.
LINES_PER_S = 1.0
BURST_LINES = 10


@dataclass
class TokenBucket:
    """`rate` admissions a second on average, `burst` at once; counts what it turns away."""

    rate: float = LINES_PER_S
    burst: int = BURST_LINES
    tokens: float = field(init=False)
    last: float = field(default=float("-inf"), init=False)
    suppressed: int = field(default=0, init=False)  # turned away since the last admission

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, not {self.rate}, {self.burst}")
        self.tokens = float(self.burst)

    def admit(self, now: float) -> tuple[bool, int]:
        """(admitted, how many were turned away before this one and not yet told)."""
        if self.last != float("-inf"):
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            self.suppressed += 1
            return False, 0
        self.tokens -= 1.0
        told, self.suppressed = self.suppressed, 0
        return True, told


class RefusalLog:
    """Logs refusals (one line each, no traceback) and unexpected errors, within one budget."""

    def __init__(
        self, bucket: TokenBucket | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.bucket = bucket if bucket is not None else TokenBucket()
        self.clock = clock
        self.refused = 0  # every refusal, logged or not (for tests and status)

    def refusal(self, method: str, peer: str, code: str, reason: str) -> None:
        self.refused += 1
        admitted, suppressed = self.bucket.admit(self.clock())
        if admitted:
            log.warning(
                "refused %s from %s: %s (%s)%s", method, peer, reason, code, _more(suppressed)
            )

    def error(self, method: str, peer: str, err: BaseException) -> None:
        """A servicer raised: a bug, logged with its traceback, within the same budget."""
        admitted, suppressed = self.bucket.admit(self.clock())
        if admitted:
            log.error("%s from %s failed%s", method, peer, _more(suppressed), exc_info=err)


def _more(suppressed: int) -> str:
    return f" ({suppressed} refusals suppressed before this one)" if suppressed else ""
