"""Why a rank failed, and what to do about it: a pure rule from evidence to a class and an action.

Evidence comes from several places, gathered by adapters: the exit code and
signal, the torchelastic error file (`@record`: exception type and message),
the memory cgroup's oom_kill count (v2 `memory.events`, v1 `memory.oom_control`:
a kernel OOM kill is a SIGKILL like any other without it; launcher/launch/oom.py), the
tail of the worker's output, the GPU probe, whether the supervisor itself
killed the rank as hung, and what happened before (same class on this rank,
faults on this pod: supervisor/rules/failure_evidence.py).

When evidence conflicts the more specific, less recoverable cause wins:
hardware over OOM over hang over network over a user's exception, because
restarting on a sick GPU only fails again, and an OOM kill also shows up as
"Connection reset" on the rank's peers.
"""

from __future__ import annotations

import enum
import re
import signal
from dataclasses import dataclass, field

HUNG_SIGNATURE = "hung"  # the failure signature of a rank the supervisor killed as hung


class FailureClass(enum.Enum):
    HARDWARE = "hardware"  # ECC uncorrectable, lost device, Xid, repeated faults on one pod
    OUT_OF_MEMORY = "out_of_memory"  # kernel OOM kill, CUDA out of memory, MemoryError
    HUNG = "hung"  # no step for longer than the hang threshold; the supervisor killed it
    TRANSIENT = "transient"  # NCCL/gloo/socket errors, a kill not ours
    USER_BUG = "user_bug"  # an exception in the training script
    UNKNOWN = "unknown"  # a non-zero exit with nothing else to go on


class Action(enum.Enum):
    RESTART_IN_PLACE = "restart the rank in place"
    KILL_AND_RESTART = "kill the rank, then restart it in place"
    REPLACE_POD = "exit the pod with the replace-this-pod code"
    STOP_JOB = "stop the job with a report"


@dataclass(frozen=True)
class GpuHealth:
    """What the accelerator probe says about this rank's device (absent: no GPU)."""

    present: bool = False
    ecc_uncorrectable: int = 0  # volatile uncorrectable ECC errors since the last reset
    lost: bool = False  # the device stopped answering


# Repeats after which restarting is pointless: stop (OOM) or give the pod back (hardware).
OOM_REPEATS_TO_STOP = 3
# Defaults of SUPERVISOR_POD_FAULT_LIMIT / _WINDOW_S (PodFaultRule). A host sees an
# unexplained death rarely (Llama 3's 54 days on 16k GPUs: a few hundred interruptions
# over ~2k hosts, months between two on one host): four on one pod within an hour is
# no chance. Three were too few: an operator's or a chaos test's kills, or OOM kills the
# cgroup did not see, come in small bursts, and a single-pod job replaced is a job ended.
POD_FAULTS_TO_REPLACE = 4
POD_FAULT_WINDOW_S = 3600.0
POD_FAULT_SETTINGS = "SUPERVISOR_POD_FAULT_LIMIT, SUPERVISOR_POD_FAULT_WINDOW_S"


@dataclass(frozen=True)
class PodFaultRule:
    """Unexplained faults on one pod at this rate point at its hardware: a rate, not a
    lifetime count (a long job collects a few by chance)."""

    limit: int = POD_FAULTS_TO_REPLACE  # 0: never
    window_s: float = POD_FAULT_WINDOW_S


@dataclass(frozen=True)
class Evidence:
    exit_code: int = 0
    signum: int = 0  # 0: the process exited by itself
    exception_type: str = ""  # from the torchelastic error file
    message: str = ""
    output_tail: str = ""
    oom_kills: int = 0  # increase of the memory cgroup's oom_kill count while the rank ran
    killed_as_hung: bool = False
    gpu: GpuHealth = field(default_factory=GpuHealth)
    same_class_before: int = 0  # earlier failures of the class this one gets, on this rank
    # Earlier transient/unknown faults on this pod within pod_fault_rule's window.
    pod_unexplained_before: int = 0
    pod_fault_rule: PodFaultRule = field(default_factory=PodFaultRule)


@dataclass(frozen=True)
class Classification:
    kind: FailureClass
    action: Action
    reason: str  # the evidence that decided it, for the event and the report
    # False: nothing but an exit code or a signal; repeats of those on one pod point at it.
    explained: bool = True


# Output lines that name a cause; the first match of the strongest class decides.
_HARDWARE_LINES = re.compile(
    r"uncorrectable ECC|ECC error|Xid (?:\(PCI:[0-9a-fA-F:.]+\): )?\d+|GPU has fallen off the bus|"
    r"CUDA error: (?:an illegal memory access|unspecified launch failure|uncorrectable ECC)",
    re.IGNORECASE,
)
_OOM_LINES = re.compile(r"CUDA out of memory|OutOfMemoryError|MemoryError|Cannot allocate memory")
_NETWORK_LINES = re.compile(
    r"NCCL error|ncclSystemError|ncclRemoteError|Connection reset by peer|Connection refused|"
    r"Socket Timeout|timed out|Gloo.*(?:closed|reset|timeout)|Broken pipe|ProcessGroupNCCL",
    re.IGNORECASE,
)
_OOM_EXCEPTIONS = ("OutOfMemoryError", "MemoryError")
_NETWORK_EXCEPTIONS = (
    "DistBackendError",
    "DistNetworkError",
    "ConnectionResetError",
    "TimeoutError",
)


def _first(pattern: re.Pattern[str], text: str) -> str:
    found = pattern.search(text)
    return found.group(0) if found else ""


def classify(e: Evidence) -> Classification:
    text = f"{e.exception_type}: {e.message}\n{e.output_tail}"
    hardware = _hardware(e, text)
    if hardware:
        return Classification(FailureClass.HARDWARE, Action.REPLACE_POD, hardware)
    oom = _oom(e, text)
    if oom:
        if e.same_class_before + 1 >= OOM_REPEATS_TO_STOP:
            why = f"out of memory {e.same_class_before + 1} times on this rank (last: {oom})"
            return Classification(FailureClass.OUT_OF_MEMORY, Action.STOP_JOB, why)
        return Classification(FailureClass.OUT_OF_MEMORY, Action.RESTART_IN_PLACE, oom)
    if e.killed_as_hung:
        return Classification(
            FailureClass.HUNG, Action.KILL_AND_RESTART, "no step within the hang threshold"
        )
    network = _network(e, text)
    if network:
        return Classification(FailureClass.TRANSIENT, Action.RESTART_IN_PLACE, network)
    if e.exception_type:
        # The crash-loop rule (supervisor/rules/restart_policy.py) stops a repeat without progress.
        return Classification(
            FailureClass.USER_BUG, Action.RESTART_IN_PLACE, f"{e.exception_type}: {e.message}"
        )
    if e.signum:
        name = signal.Signals(e.signum).name if e.signum in signal.valid_signals() else e.signum
        # A signal's sender is not in the exit status: a rank may have killed itself. Our
        # own kills never get here (collateral, or killed_as_hung), nor OOM kills (above).
        why = f"killed by {name}; sender unknown, not the supervisor, no OOM kill seen"
        return _unexplained(e, FailureClass.TRANSIENT, why)
    return _unexplained(e, FailureClass.UNKNOWN, f"exit code {e.exit_code}, no other evidence")


def _unexplained(e: Evidence, kind: FailureClass, why: str) -> Classification:
    """Faults nothing explains, often on one pod (PodFaultRule), point at its hardware."""
    count, rule = e.pod_unexplained_before + 1, e.pod_fault_rule
    if rule.limit >= 1 and count >= rule.limit:
        why = (
            f"{why}; {count} unexplained faults on this pod within {rule.window_s:g}s "
            f"(the suspect-hardware rule: {rule.limit} within {rule.window_s:g}s; "
            f"{POD_FAULT_SETTINGS})"
        )
        return Classification(FailureClass.HARDWARE, Action.REPLACE_POD, why, explained=False)
    return Classification(kind, Action.RESTART_IN_PLACE, why, explained=False)


def _hardware(e: Evidence, text: str) -> str:
    gpu = e.gpu
    if gpu.present and gpu.lost:
        return "the GPU stopped answering (probe)"
    if gpu.present and gpu.ecc_uncorrectable > 0:
        return f"{gpu.ecc_uncorrectable} uncorrectable ECC errors (probe)"
    line = _first(_HARDWARE_LINES, text)
    return f"output: {line!r}" if line else ""


def _oom(e: Evidence, text: str) -> str:
    if e.oom_kills > 0:
        return f"the kernel OOM killer (memory cgroup oom_kill +{e.oom_kills})"
    if e.exception_type in _OOM_EXCEPTIONS:
        return f"{e.exception_type}: {e.message}"
    line = _first(_OOM_LINES, text)
    return f"output: {line!r}" if line else ""


def peer_error(exception_type: str, message: str) -> bool:
    """The exception says a collective's peer failed (connection closed, reset, timed out)
    rather than what went wrong in this rank itself."""
    evidence = Evidence(exception_type=exception_type, message=message)
    return _network(evidence, f"{exception_type}: {message}") != ""  # classify's own test


def _network(e: Evidence, text: str) -> str:
    if e.exception_type in _NETWORK_EXCEPTIONS:
        return f"{e.exception_type}: {e.message}"
    line = _first(_NETWORK_LINES, text)
    return f"output: {line!r}" if line else ""
