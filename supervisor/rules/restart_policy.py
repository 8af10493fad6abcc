"""What to do after a rank fails: restart in place, give the job up, or give the pod back.

Pure functions over the job's failure history; no I/O, no clock (a failure
carries the time its pod saw it, and windows are measured back from the
newest). The failure's classification (supervisor/rules/classify.py) comes with it
and takes part: a class that calls for stopping stops, one that calls for a
new pod gets one.

Progress is job-wide. `Failure.step` is the number of optimizer steps the job
completed over all its generations when the rank failed (JobState.job_step),
never a per-generation counter (which restarts at 0 after every recovery and so
reads real progress as none). Why that count and not the committed snapshot
step: every script has it (the optimizer step hook, no API needed), it never
goes back, and it moves with every step, where a committed step moves only as
often as the script snapshots (a long interval would read as no progress). Its
cost: a script that reloads an old checkpoint and fails at the same place again
shows progress, so the crash-loop rule errs toward one more restart, which the
restart budget still bounds, and never toward ending a job that trains.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from supervisor.rules import classify

#: Where each rule's numbers are set (the sidecar's variable; train-launch's flag).
THRESHOLD_SETTING = "SUPERVISOR_CRASH_LOOP_THRESHOLD (train-launch --crash-loop-threshold)"
WINDOW_SETTING = "SUPERVISOR_CRASH_LOOP_WINDOW_S"
BUDGET_SETTING = "train-launch --max-restarts (PET_MAX_RESTARTS)"
# Default of SUPERVISOR_CRASH_LOOP_WINDOW_S: a loop without progress repeats within
# minutes (each try is a start and a failure); an hour also holds three hangs at the
# default hang threshold, and failures further apart are no loop whatever their steps
# (a script without optimizer steps never shows progress).
DEFAULT_CRASH_LOOP_WINDOW_S = 3600.0


@dataclass(frozen=True)
class Failure:
    """One rank failure, reduced to what the policy needs."""

    generation: int
    rank: int
    signature: str  # fingerprint of the error; "" when nothing is known
    step: int  # job-wide: optimizer steps the job completed over all generations
    failure_class: str = ""  # classify.FailureClass value; "" when not classified (a lost pod)
    action: Optional[classify.Action] = None  # what the classification calls for
    reason: str = ""  # the evidence behind the class
    time_s: float = 0.0  # unix seconds when its pod saw it; 0: unknown (in every window)
    # A survivor's re-entry failed before its first step: no cost, never a loop (job.py).
    reentry_failed: bool = False


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int
    # Failures of one rank with one signature and no job-wide progress that make a crash loop.
    crash_loop_threshold: int = 3
    # ... within this many seconds (newest failure back to the oldest counted).
    crash_loop_window_s: float = DEFAULT_CRASH_LOOP_WINDOW_S


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


def _within(newest: Failure, earlier: Failure, window_s: float) -> bool:
    if newest.time_s <= 0 or earlier.time_s <= 0:
        return True  # unknown times (an old peer's report) cannot leave the window
    return newest.time_s - earlier.time_s <= window_s


def crash_loop_repeats(history: Sequence[Failure], window_s: float = math.inf) -> list[Failure]:
    """The failures, newest last, that repeat the newest one with no job-wide progress.

    A repeat is a failure of the same rank with the same (known) signature, within
    `window_s` of the newest, in another generation, with no failure of any rank
    after it at a higher job step (progress in between breaks the run). Faults of
    different ranks are not one loop: kills of ranks 1, 0, 1 are three faults. A
    failure nothing is known of (signature "": a lost pod, whose processes are all
    new since) ends the run too.
    """
    if not history or not history[-1].signature or history[-1].reentry_failed:
        return []
    newest = history[-1]
    repeats = [newest]
    generations = {newest.generation}
    highest = newest.step  # the highest job step reached after the failure looked at
    for earlier in reversed(history[:-1]):
        if not earlier.signature or not _within(newest, earlier, window_s):
            break
        same = earlier.rank == newest.rank and earlier.signature == newest.signature
        if same and earlier.step >= highest and earlier.generation not in generations:
            repeats.append(earlier)
            generations.add(earlier.generation)
        highest = max(highest, earlier.step)
    return repeats[::-1]


def is_crash_loop(history: Sequence[Failure], threshold: int, window_s: float = math.inf) -> bool:
    """The newest failure and its repeats (crash_loop_repeats) number `threshold` or more."""
    return threshold >= 1 and len(crash_loop_repeats(history, window_s)) >= threshold


def decide(policy: RestartPolicy, history: Sequence[Failure], restart_count: int) -> Decision:
    """Decide on the newest failure (the last element of `history`).

    `restart_count` is the job-wide count of restarts already spent. The order:
    a class that calls for stopping is the most specific reason to stop; a crash
    loop beats a pod replacement (an error that repeats without progress is the
    script's: a new node would fail the same way; a fault with hardware evidence
    replaces its pod the first time, so it never gets to loop); a replacement
    needs no restart budget (the new pod's job goes on, or Kubernetes'
    backoffLimit/podFailurePolicy bound the replacements). Every reason names
    its rule, its numbers and the setting that moves it.
    """
    newest = history[-1]
    if newest.action is classify.Action.STOP_JOB:
        return Decision(Action.GIVE_UP_CLASSIFIED, f"rank {newest.rank}: {newest.reason}")
    window = policy.crash_loop_window_s
    repeats = crash_loop_repeats(history, window)
    if policy.crash_loop_threshold >= 1 and len(repeats) >= policy.crash_loop_threshold:
        span = newest.time_s - repeats[0].time_s if repeats[0].time_s > 0 else 0.0
        return Decision(
            Action.GIVE_UP_CRASH_LOOP,
            f"crash loop: rank {newest.rank} failed {len(repeats)} times with the same error "
            f"({newest.signature}) in {span:.0f}s without job-wide progress (job step "
            f"{newest.step}); the rule: {policy.crash_loop_threshold} such failures of one "
            f"rank within {window:g}s ({THRESHOLD_SETTING}, {WINDOW_SETTING})",
        )
    if newest.action is classify.Action.REPLACE_POD:
        why = f"{newest.failure_class} fault on rank {newest.rank}: {newest.reason}"
        return Decision(Action.REPLACE_POD, why)
    if restart_count >= policy.max_restarts:
        return Decision(
            Action.GIVE_UP_BUDGET,
            f"restart budget spent: {restart_count} of {policy.max_restarts} restarts used "
            f"({BUDGET_SETTING})",
        )
    return Decision(Action.RESTART, f"restart {restart_count + 1} of {policy.max_restarts}")
