"""Which of our job events Kubernetes hears about, and how they read there (pure).

A job event (supervisor/rules/job.py EventLog: a kind and a line) becomes zero
or more Kubernetes Events: a CamelCase reason, a message a person reads in
`kubectl describe pod` (rank, class, action, step), and a type (Warning for
what went wrong, Normal for what the supervisor did about it). Routine events
(generations starting, snapshots) stay in our own log and status.

A "failure" event reads best from its FailureRecord (the structured facts the
line was written from), which the caller finds with `failure_of`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from supervisor.rules.classify import FailureClass
from supervisor.rules.failure_evidence import FailureRecord
from supervisor.rules.job import JobEvent, signal_name
from supervisor.rules.restart_policy import Action

NORMAL, WARNING = "Normal", "Warning"
# events.k8s.io/v1 refuses a note over 1 KiB; core/v1 takes more, but `kubectl describe`
# shows one line per Event: the same bound here.
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class EventNote:
    """One Kubernetes Event, before aggregation: what, why, and how bad."""

    reason: str
    message: str
    type: str = WARNING


# Kinds whose line already says it all: (reason, type).
_PLAIN: dict[str, tuple[str, str]] = {
    "hang": ("RankHung", WARNING),
    "hang_suspected": ("HangSuspected", WARNING),
    "unwind_timeout": ("RankUnwindTimeout", WARNING),
    "leader_decision": ("RestartDecided", NORMAL),
    "leader_lost": ("LeaderLost", WARNING),
    "gave_up": ("JobGivenUp", WARNING),
    "replace_pod": ("PodReplaceRequested", WARNING),
    "finding_cleared": ("FindingCleared", NORMAL),
    "succeeded": ("JobSucceeded", NORMAL),
    "snapshot_problem": ("SnapshotProblem", WARNING),
    "persist_error": ("PersistFailed", WARNING),
}


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def failure_of(event: JobEvent, failures: Sequence[FailureRecord]) -> Optional[FailureRecord]:
    """The record a "failure" event was written from (supervisor/rules/job.py
    describe_failure starts the line with 'rank R pid P '); the newest that fits."""
    if event.kind != "failure":
        return None
    for record in reversed(failures):
        if event.message.startswith(f"rank {record.rank} pid {record.pid} "):
            return record
    return None


def _how(record: FailureRecord) -> str:
    if record.signal:
        return f"killed by {signal_name(record.signal)}"
    return f"exited with code {record.exit_code}"


def _failure_notes(record: FailureRecord) -> list[EventNote]:
    failure_class = record.failure_class or FailureClass.UNKNOWN.value
    action = record.action or "undecided"
    failed = EventNote(
        "RankFailed",
        f"rank {record.rank} (pid {record.pid}) {_how(record)} at step {record.step}, "
        f"generation {record.generation}; class {failure_class} ({record.reason}); "
        f"action: {action}",
        WARNING,
    )
    if record.action != Action.RESTART.value:
        return [failed]  # the verdict (give up, replace, the leader's) is an event of its own
    restarted = EventNote(
        "RankRestarted",
        f"rank {record.rank} restarted in place after failing at step {record.step}: a new "
        f"process for it, the other ranks re-enter generation {record.generation + 1}",
        NORMAL,
    )
    return [failed, restarted]


def _finding_reason(message: str) -> str:
    # anomaly.py Finding.summary(): 'pod N <kind> for W windows: ...'
    words = message.split(maxsplit=3)
    return "StragglerFound" if words[2:3] == ["straggler"] else "PodOutlierFound"


def notes_for(event: JobEvent, record: Optional[FailureRecord]) -> list[EventNote]:
    """The Kubernetes Events for one job event (`record`: its failure, if it is one)."""
    if event.kind == "failure":
        if record is None:
            return [EventNote("RankFailed", _clip(event.message), WARNING)]
        return [EventNote(n.reason, _clip(n.message), n.type) for n in _failure_notes(record)]
    if event.kind == "finding":
        return [EventNote(_finding_reason(event.message), _clip(event.message), WARNING)]
    plain = _PLAIN.get(event.kind)
    if plain is None:
        return []
    reason, kind = plain
    return [EventNote(reason, _clip(event.message), kind)]


@dataclass(frozen=True)
class NodeFault:
    """What the node's condition (and taint) say after a hardware verdict."""

    reason: str  # CamelCase, the condition's
    message: str


def node_fault_of(record: FailureRecord, node: str, gpu_index: int) -> Optional[NodeFault]:
    """A rank's hardware failure that sends the pod away blames the node; nothing else does.

    `gpu_index`: the rank's local rank, the device it used (torchrun's LOCAL_RANK convention).
    """
    if record.failure_class != FailureClass.HARDWARE.value:
        return None
    if record.action != Action.REPLACE_POD.value:
        return None
    detail = record.detail
    evidence = record.reason or detail.signature or "hardware fault"
    said = f"; the rank said: {detail.message}" if detail.message else ""
    message = (
        f"train-supervisor: GPU {gpu_index} of node {node} (rank {record.rank}) failed at step "
        f"{record.step}: {evidence}{said}"
    )
    return NodeFault("GpuHardwareFault", _clip(message))
