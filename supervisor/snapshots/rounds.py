"""When to copy a committed step out of the ranks' arenas: pure rules, no I/O, no clock.

A round takes one committed step, stages every local rank's copy in the
sidecar's own shared memory, streams it to the next pod (the replica) and,
when persistence is due, writes it to the durable directory. One round runs
at a time, job-wide (in a job of several pods the leader starts each round
and it ends when every pod reported): the staged copies and the replicas keep
two steps each, so the step of the last complete round stays whole everywhere
while the next one is written, and it is always restorable after losing a pod.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from supervisor.snapshots.persist_policy import persist_due
from train_supervisor.steps import NO_STEP

# After a failed persist (a full or read-only disk), try again this much later
# rather than on every step.
PERSIST_RETRY_S = 5.0
# A round whose end never came (a report lost with its pod's stream) is given up after
# this long, so that replication does not stop for good.
ROUND_LIMIT_S = 1800.0


@dataclass(frozen=True)
class OffloadRound:
    step: int
    replicate: bool
    persist: bool


@dataclass
class OffloadRounds:
    replicate: bool  # there is a next pod and replication is on
    persist: bool  # a durable directory is configured
    every_steps: int = 0
    every_s: float = 0.0
    in_flight: Optional[OffloadRound] = None
    started_at: float = -math.inf
    last_round: int = NO_STEP  # step of the newest round that ended, well or not
    replicated: int = NO_STEP  # newest step every pod's replica holds
    persisted: int = NO_STEP  # newest step every pod persisted
    persisted_at: float = -math.inf
    persist_failed_at: float = -math.inf
    errors: dict[str, str] = field(default_factory=dict)  # "replica"/"persist" -> last problem

    def next_round(self, committed: int, now: float) -> Optional[OffloadRound]:
        """The round to start now for `committed`, if any (then it is in flight)."""
        if self.in_flight is not None and now - self.started_at > ROUND_LIMIT_S:
            self.errors["round"] = f"the round of step {self.in_flight.step} never ended"
            self.in_flight = None
        if self.in_flight is not None or committed == NO_STEP or committed <= self.last_round:
            return None
        persist = (
            self.persist
            and now - self.persist_failed_at >= PERSIST_RETRY_S
            and persist_due(
                committed, self.persisted, self.persisted_at, now, self.every_steps, self.every_s
            )
        )
        if not (self.replicate or persist):
            return None
        self.in_flight, self.started_at = OffloadRound(committed, self.replicate, persist), now
        return self.in_flight

    def finished(self, step: int, replica_error: str, persist_error: str, now: float) -> bool:
        """The round of `step` ended ("" errors: that part went well). False: not in flight."""
        current = self.in_flight
        if current is None or current.step != step:
            return False
        self.in_flight, self.last_round = None, step
        self.errors.pop("round", None)
        self.note_errors(current, replica_error, persist_error)
        if current.replicate and not replica_error:
            self.replicated = step
        if current.persist:
            if persist_error:
                self.persist_failed_at = now
            else:
                self.persisted, self.persisted_at = step, now
        return True

    def note_errors(self, rnd: OffloadRound, replica_error: str, persist_error: str) -> None:
        """What went wrong in the parts `rnd` ran; a part that went well clears its error."""
        for part, ran, error in (
            ("replica", rnd.replicate, replica_error),
            ("persist", rnd.persist, persist_error),
        ):
            if error:
                self.errors[part] = error
            elif ran:
                self.errors.pop(part, None)

    def abandon(self) -> None:
        """A pod was lost or a generation ended mid-round: its result will not come."""
        self.in_flight = None

    def restart_from(self, step: int) -> None:
        """A generation restores `step`: later steps are void, their copies with them."""
        self.in_flight = None
        self.last_round = min(self.last_round, step)
        if self.replicated > step:
            self.replicated = NO_STEP  # which older steps a peer still holds is not known here
        if self.persisted > step:
            self.persisted = NO_STEP
