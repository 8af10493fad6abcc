"""Warm spares: idle interpreters with torch imported, waiting to take a failed rank.

Pure bookkeeping. When to replenish is the job's decision (after recovery, so
that a new spare's torch import never competes with the ranks for CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SparePool:
    target: int  # spares wanted (--warm-spares)
    max_failures: int = 3  # spares that died on their own before we stop replacing them
    idle: list[int] = field(default_factory=list)  # pids, oldest first
    spawning: int = 0  # asked for, not attached yet
    failures: int = 0

    def deficit(self) -> int:
        """How many spares to spawn now to be back at the target."""
        if self.failures >= self.max_failures:
            return 0
        return max(0, self.target - len(self.idle) - self.spawning)

    def spawned(self, count: int = 1) -> None:
        self.spawning += count

    def attached(self, pid: int) -> None:
        self.spawning = max(0, self.spawning - 1)
        self.idle.append(pid)

    def take(self) -> Optional[int]:
        """The spare to promote, if any: the oldest, the one surely done importing."""
        return self.idle.pop(0) if self.idle else None

    def exited(self, pid: int, holds_rank: bool) -> bool:
        """A process exited; True if it was a spare (idle, or one still starting)."""
        if pid in self.idle:
            self.idle.remove(pid)
        elif self.spawning and not holds_rank:
            self.spawning -= 1  # a spare that died before attaching
        else:
            return False
        self.failures += 1
        return True
