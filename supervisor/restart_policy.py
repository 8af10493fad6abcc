"""What to do after a rank fails: restart in place, give the job up, or give the pod back.

Pure functions over the job's failure history; no I/O, no clock. The failure's
classification (supervisor/classify.py) comes with it and takes part: a class
that calls for stopping stops, one that calls for a new pod gets one.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from supervisor import classify


@dataclass(frozen=True)
class Failure:
    """One rank failure, reduced to what the policy needs."""

    generation: int
    rank: int
    signature: str  # fingerprint of the error; "" when nothing is known
    step: int  # optimizer steps the rank completed in that generation
    failure_class: str = ""  # classify.FailureClass value; "" when not classified (a lost pod)
    action: Optional[classify.Action] = None  # what the classification calls for
    reason: str = ""  # the evidence behind the class


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int
    # Failures in a row with one signature and no step progress that make a crash loop.
    crash_loop_threshold: int = 3


class Action(enum.Enum):
    RESTART = "restart"
    GIVE_UP_BUDGET = "give_up_budget"
    GIVE_UP_CRASH_LOOP = "give_up_crash_loop"
    GIVE_UP_CLASSIFIED = "give_up_classified"  # the class says stop (out of memory again and again)
    REPLACE_POD = "replace_pod"  # the class says this pod's hardware is at fault


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

    `restart_count` is the job-wide count of restarts already spent. The order:
    a class that calls for stopping is the most specific reason to stop; a crash
    loop beats a pod replacement (an error that repeats at the same step is the
    script's: a new node would fail the same way; a fault with hardware evidence
    replaces its pod the first time, so it never gets to loop); a replacement
    needs no restart budget (the new pod's job goes on, or Kubernetes'
    backoffLimit/podFailurePolicy bound the replacements).
    """
    newest = history[-1]
    if newest.action is classify.Action.STOP_JOB:
        return Decision(Action.GIVE_UP_CLASSIFIED, f"rank {newest.rank}: {newest.reason}")
    if is_crash_loop(history, policy.crash_loop_threshold):
        return Decision(
            Action.GIVE_UP_CRASH_LOOP,
            f"crash loop: rank {newest.rank} failed {policy.crash_loop_threshold} times in a row "
            f"with the same error at step {newest.step} without progress",
        )
    if newest.action is classify.Action.REPLACE_POD:
        why = f"{newest.failure_class} fault on rank {newest.rank}: {newest.reason}"
        return Decision(Action.REPLACE_POD, why)
    if restart_count >= policy.max_restarts:
        return Decision(
            Action.GIVE_UP_BUDGET,
            f"restart budget spent: {restart_count} of {policy.max_restarts} restarts used",
        )
    return Decision(Action.RESTART, f"restart {restart_count + 1} of {policy.max_restarts}")
