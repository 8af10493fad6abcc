"""From what a pod knows of a rank's death to supervisor/rules/classify.py's Evidence, and back.

The history rules of the classification need memory: how often this rank
failed with the same class (out of memory again and again stops the job) and
when faults nothing explained happened on this pod (many within a window: its
hardware, classify.PodFaultRule). FailureMemory keeps exactly that. Pure: no
I/O, no clock (callers pass `now`).
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field

from supervisor.rules import restart_policy
from supervisor.rules.classify import (
    HUNG_SIGNATURE,
    Classification,
    Evidence,
    FailureClass,
    GpuHealth,
    PodFaultRule,
    classify,
    peer_error,
)


@dataclass
class FailureDetail:
    """What a rank's script raised (its worker reports it), or why the supervisor killed it."""

    exception_type: str = ""
    message: str = ""
    traceback: str = ""
    # Stable fingerprint of the error (type + message + innermost frame), used by the
    # crash-loop rule.
    signature: str = ""


@dataclass
class FailureRecord:
    """What is known of one rank's death (supervisor/rules/job.py:failure_record); the class
    and reason once judged, the action once decided."""

    generation: int = 0
    rank: int = 0
    pid: int = 0
    exit_code: int = 0
    signal: int = 0
    detail: FailureDetail = field(default_factory=FailureDetail)
    step: int = 0  # the rank's steps in `generation`
    action: str = ""
    time_unix: float = 0.0
    failure_class: str = ""  # supervisor/rules/classify.py: hardware, out_of_memory, hung, ...
    reason: str = ""  # the evidence that decided the class
    job_step: int = 0  # the job's steps over all its generations when the rank failed


NO_GPU = GpuHealth()  # frozen: what a pod without a GPU probe knows
DEFAULT_POD_FAULT_RULE = PodFaultRule()  # frozen


def evidence_of(
    record: FailureRecord,
    output_tail: str,
    oom_kills: int,
    same_class_before: int = 0,
    pod_unexplained_before: int = 0,
    gpu: GpuHealth = NO_GPU,
    pod_fault_rule: PodFaultRule = DEFAULT_POD_FAULT_RULE,
) -> Evidence:
    """Everything known of one death: the record (exit, error file), the output, the cgroup."""
    detail = record.detail
    return Evidence(
        exit_code=record.exit_code,
        signum=record.signal,
        exception_type=detail.exception_type,
        message=detail.message,
        output_tail=output_tail,
        oom_kills=oom_kills,
        killed_as_hung=detail.signature == HUNG_SIGNATURE,
        gpu=gpu,
        same_class_before=same_class_before,
        pod_unexplained_before=pod_unexplained_before,
        pod_fault_rule=pod_fault_rule,
    )


@dataclass
class FailureMemory:
    """This pod's earlier classified failures, as the history rules count them."""

    by_rank: dict[int, collections.Counter[FailureClass]] = field(default_factory=dict)
    pod_fault_rule: PodFaultRule = DEFAULT_POD_FAULT_RULE
    unexplained_at: list[float] = field(default_factory=list)  # `now` of each, in the window

    @property
    def unexplained(self) -> int:
        """Unexplained faults still in the window (as of the last judged failure)."""
        return len(self.unexplained_at)

    def judge(
        self,
        record: FailureRecord,
        output_tail: str,
        oom_kills: int,
        gpu: GpuHealth = NO_GPU,
        now: float = 0.0,
    ) -> Classification:
        """Classify the failure in `record` (seen at `now`, monotonic seconds), store its
        class and reason there, remember it."""
        # The class decides which earlier failures count: find it first without history.
        kind = classify(evidence_of(record, output_tail, oom_kills, gpu=gpu)).kind
        seen = self.by_rank.setdefault(record.rank, collections.Counter())
        window = self.pod_fault_rule.window_s
        self.unexplained_at = [t for t in self.unexplained_at if now - t <= window]
        evidence = evidence_of(
            record,
            output_tail,
            oom_kills,
            seen[kind],
            len(self.unexplained_at),
            gpu,
            self.pod_fault_rule,
        )
        found = classify(evidence)
        seen[found.kind] += 1
        if not found.explained:
            self.unexplained_at.append(now)
        record.failure_class, record.reason = found.kind.value, found.reason
        return found


def policy_failure(record: FailureRecord, found: Classification) -> restart_policy.Failure:
    """The failure as the restart policy (and the leader) sees it: where, what, which class."""
    return restart_policy.Failure(
        record.generation,
        record.rank,
        record.detail.signature,
        record.job_step,
        failure_class=found.kind.value,
        action=found.action,
        reason=found.reason,
        time_s=record.time_unix,
    )


def peer_echo(detail: FailureDetail | None) -> bool:
    """A raised error that says a collective lost a peer, not what went wrong in the rank."""
    return detail is not None and peer_error(detail.exception_type, detail.message)


class Settled(enum.Enum):
    """What a rank's raised error is once its settle window is over."""

    THE_FAILURE = "the failure"
    ECHO_WAITS = "a peer's echo: wait in place for the next generation"
    UNDECIDED = "only echoes so far: one more window"


def settle_raised(
    own: FailureDetail | None, raised: list[FailureDetail | None], final: bool
) -> Settled:
    """A peer's error is not the failure while another rank raised one of its own; with
    none yet, a second window (`final` False). Which rank's exit comes first must not
    decide the blame. `raised`: every local rank's raised error, this one's included."""
    if not peer_echo(own):
        return Settled.THE_FAILURE
    if any(detail is not None and not peer_echo(detail) for detail in raised):
        return Settled.ECHO_WAITS
    return Settled.THE_FAILURE if final else Settled.UNDECIDED
