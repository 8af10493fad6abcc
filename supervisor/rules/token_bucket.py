"""A token bucket: a pure rate rule (callers pass `now`), shared by the refusal log
(supervisor/rpc/refusals.py) and the Kubernetes Event correlator
(supervisor/outputs/kube/correlator.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

# The defaults are the refusal log's: a few lines a second at most, with a burst for a
# short genuine incident.
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
            self.tokens = min(
                float(self.burst), self.tokens + max(0.0, now - self.last) * self.rate
            )
        self.last = now
        if self.tokens < 1.0:
            self.suppressed += 1
            return False, 0
        self.tokens -= 1.0
        told, self.suppressed = self.suppressed, 0
        return True, told
