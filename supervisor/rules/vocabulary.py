"""The words the rules share with the wire: a worker's and the job's state, how a script
ended and what its worker is told then, and whether survivors re-enter.

The proto's enums (proto/train_supervisor/v1/supervisor.proto), as Python enums of the same
names and numbers (tests/unit/test_rules_boundary.py checks), so that the rules import no
protobuf; the adapters in supervisor/rpc/ map them to and from the wire.
"""

from __future__ import annotations

import enum


class WorkerState(enum.IntEnum):
    WORKER_STATE_UNKNOWN = 0
    WORKER_STATE_INIT = 1  # process attached, waiting for a generation
    WORKER_STATE_HEALTHY = 2  # running the script in the current generation
    WORKER_STATE_UNWINDING = 3  # told to abort its generation, not back yet
    WORKER_STATE_SUCCEEDED = 4  # script returned in the current generation
    WORKER_STATE_FAILED = 5  # process died, replacement pending
    WORKER_STATE_STOPPED = 6  # job over


class JobPhase(enum.IntEnum):
    """The proto's JobState (the name JobState is the rules' state machine's)."""

    JOB_STATE_UNKNOWN = 0
    JOB_STATE_STARTING = 1
    JOB_STATE_RUNNING = 2
    JOB_STATE_RESTARTING = 3
    JOB_STATE_SUCCEEDED = 4
    JOB_STATE_FAILED = 5
    JOB_STATE_STOPPED = 6


class ReentryMode(enum.IntEnum):
    """What a surviving rank does when a generation is aborted (train-launch --reentry)."""

    REENTRY_AUTO = 0  # re-enter; the first failed re-entry switches to fresh processes
    REENTRY_ALWAYS = 1  # re-enter, never fall back: a failed re-entry is a failure
    REENTRY_NEVER = 2  # survivors always get a fresh process (torchrun's way)


class OutcomeKind(enum.IntEnum):
    OUTCOME_UNSPECIFIED = 0
    OUTCOME_FINISHED = 1  # the script returned (or exited 0)
    OUTCOME_RAISED = 2  # the script raised and no abort was asked for
    OUTCOME_UNWOUND = 3  # the script was unwound after an abort


class Verdict(enum.IntEnum):
    VERDICT_UNSPECIFIED = 0
    VERDICT_WAIT = 1  # stay, wait for the next command
    VERDICT_EXIT_FAILED = 2  # this rank is the failure: exit non-zero
