"""Refused calls are logged at a bounded rate: a flood of hostile calls cannot fill the log.

The rate is a `TokenBucket` (supervisor/rules/token_bucket.py); `RefusalLog` is the thin
logging adapter that the server's call gate and the servicers share.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from supervisor.rules.token_bucket import TokenBucket

log = logging.getLogger("train_supervisor")


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
