"""What to do after a rank fails: restart in place, or give the job up.

Pure functions over the job's failure history; no I/O, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Failure:
    """One rank failure, reduced to what the policy needs."""

    generation: int
    rank: int
    signature: str  # fingerprint of the error; "" when nothing is known
    step: int  # optimizer steps the rank completed in that generation


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int
    # Failures in a row with one signature and no step progress that make a crash loop.
    crash_loop_threshold: int = 3


class Action(enum.Enum):
    RESTART = "restart"
    GIVE_UP_BUDGET = "give_up_budget"
    GIVE_UP_CRASH_LOOP = "give_up_crash_loop"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


def is_crash_loop(history: Sequence[Failure], threshold: int) -> bool:
    """The last `threshold` failures share one error signature and never got further.

    Keyed on the signature, not the rank: when every rank hits the same bug the
    first to report it varies from generation to generation.
    """
    if threshold < 1 or len(history) < threshold:
        return False
    recent = history[-threshold:]
    first = recent[0]
    if not first.signature:
        return False
    same_error = all(f.signature == first.signature for f in recent)
    no_progress = all(f.step <= first.step for f in recent[1:])
    return same_error and no_progress


def decide(policy: RestartPolicy, history: Sequence[Failure], restart_count: int) -> Decision:
    """Decide on the newest failure (the last element of `history`).

    `restart_count` is the job-wide count of restarts already spent.
    """
    newest = history[-1]
    if is_crash_loop(history, policy.crash_loop_threshold):
        return Decision(
            Action.GIVE_UP_CRASH_LOOP,
            f"crash loop: rank {newest.rank} failed {policy.crash_loop_threshold} times in a row "
            f"with the same error at step {newest.step} without progress",
        )
    if restart_count >= policy.max_restarts:
        return Decision(
            Action.GIVE_UP_BUDGET,
            f"restart budget spent: {restart_count} of {policy.max_restarts} restarts used",
        )
    return Decision(Action.RESTART, f"restart {restart_count + 1} of {policy.max_restarts}")
