"""The failure classification table: every class, every evidence source, conflicting evidence."""

from __future__ import annotations

import signal

import pytest

from supervisor.rules.classify import (
    OOM_REPEATS_TO_STOP,
    POD_FAULTS_TO_REPLACE,
    Action,
    Evidence,
    FailureClass,
    GpuHealth,
    classify,
)

KILL = int(signal.SIGKILL)
HW, OOM, HUNG, NET, BUG, UNK = (
    FailureClass.HARDWARE, FailureClass.OUT_OF_MEMORY, FailureClass.HUNG,
    FailureClass.TRANSIENT, FailureClass.USER_BUG, FailureClass.UNKNOWN,
)  # fmt: skip
RESTART, KILL_RESTART, REPLACE, STOP = (
    Action.RESTART_IN_PLACE, Action.KILL_AND_RESTART, Action.REPLACE_POD, Action.STOP_JOB,
)  # fmt: skip

TABLE = [
    # (name, evidence, class, action, words the reason must hold)
    ("exit code only", Evidence(exit_code=3), UNK, RESTART, "exit code 3"),
    ("a kill not ours", Evidence(signum=KILL), NET, RESTART, "SIGKILL; sender unknown"),
    (
        "error file: user exception",
        Evidence(exit_code=1, exception_type="ValueError", message="bad batch"),
        BUG,
        RESTART,
        "ValueError: bad batch",
    ),
    (
        "error file: network exception",
        Evidence(exit_code=1, exception_type="DistBackendError", message="gloo"),
        NET,
        RESTART,
        "DistBackendError",
    ),
    (
        "output: NCCL error",
        Evidence(exit_code=1, output_tail="... NCCL error: unhandled"),
        NET,
        RESTART,
        "NCCL error",
    ),
    (
        "output: connection reset",
        Evidence(exit_code=1, output_tail="RuntimeError: Connection reset by peer"),
        NET,
        RESTART,
        "Connection reset",
    ),
    ("cgroup: kernel OOM kill", Evidence(signum=KILL, oom_kills=1), OOM, RESTART, "oom_kill +1"),
    (
        "error file: CUDA OOM",
        Evidence(exit_code=1, exception_type="OutOfMemoryError", message="CUDA out of memory"),
        OOM,
        RESTART,
        "OutOfMemoryError",
    ),
    (
        "output: CUDA OOM",
        Evidence(exit_code=1, output_tail="torch.OutOfMemoryError: CUDA out of memory."),
        OOM,
        RESTART,
        "OutOfMemoryError",
    ),
    (
        "supervisor: killed as hung",
        Evidence(signum=KILL, killed_as_hung=True),
        HUNG,
        KILL_RESTART,
        "hang threshold",
    ),
    (
        "probe: uncorrectable ECC",
        Evidence(signum=KILL, gpu=GpuHealth(True, ecc_uncorrectable=2)),
        HW,
        REPLACE,
        "2 uncorrectable ECC",
    ),
    (
        "probe: device lost",
        Evidence(exit_code=1, gpu=GpuHealth(True, lost=True)),
        HW,
        REPLACE,
        "stopped answering",
    ),
    (
        "output: Xid",
        Evidence(exit_code=1, output_tail="NVRM: Xid 79, GPU has fallen off the bus"),
        HW,
        REPLACE,
        "Xid 79",
    ),
    (
        "output: the kernel's NVRM Xid line",
        Evidence(exit_code=1, output_tail="NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python"),
        HW,
        REPLACE,
        "Xid (PCI:0000:3b:00): 79",
    ),
    (
        "output: illegal memory access",
        Evidence(exit_code=1, output_tail="CUDA error: an illegal memory access was encountered"),
        HW,
        REPLACE,
        "illegal memory access",
    ),
    # Conflicting evidence: the less recoverable cause wins.
    (
        "OOM kill beats the peer's connection reset in the output",
        Evidence(signum=KILL, oom_kills=1, output_tail="Connection reset by peer"),
        OOM,
        RESTART,
        "oom_kill",
    ),
    (
        "ECC beats the OOM exception",
        Evidence(exit_code=1, exception_type="OutOfMemoryError", gpu=GpuHealth(True, 1)),
        HW,
        REPLACE,
        "ECC",
    ),
    (
        "OOM beats the hang kill",
        Evidence(signum=KILL, killed_as_hung=True, oom_kills=2),
        OOM,
        RESTART,
        "oom_kill +2",
    ),
    (
        "hang beats the socket timeout it causes",
        Evidence(signum=KILL, killed_as_hung=True, output_tail="Socket Timeout"),
        HUNG,
        KILL_RESTART,
        "hang",
    ),
    (
        "network error beats the exception type it is wrapped in",
        Evidence(exit_code=1, exception_type="RuntimeError", message="NCCL error in: x.cpp"),
        NET,
        RESTART,
        "NCCL error",
    ),
    (
        "a healthy GPU is no evidence",
        Evidence(exit_code=1, gpu=GpuHealth(True)),
        UNK,
        RESTART,
        "exit code 1",
    ),
    # History.
    (
        "OOM again and again stops the job",
        Evidence(signum=KILL, oom_kills=1, same_class_before=OOM_REPEATS_TO_STOP - 1),
        OOM,
        STOP,
        f"{OOM_REPEATS_TO_STOP} times",
    ),
    (
        "unexplained faults again and again on one pod",
        Evidence(signum=KILL, pod_unexplained_before=POD_FAULTS_TO_REPLACE - 1),
        HW,
        REPLACE,
        f"{POD_FAULTS_TO_REPLACE} unexplained faults",
    ),
    (
        "a user bug is never blamed on the pod",
        Evidence(exit_code=1, exception_type="KeyError", pod_unexplained_before=10),
        BUG,
        RESTART,
        "KeyError",
    ),
]


@pytest.mark.parametrize(("evidence", "kind", "action", "words"),
                         [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])  # fmt: skip
def test_the_classification_table(
    evidence: Evidence, kind: FailureClass, action: Action, words: str
) -> None:
    got = classify(evidence)
    assert (got.kind, got.action) == (kind, action), got
    assert words.lower() in got.reason.lower(), got.reason


def test_every_class_and_action_is_in_the_table() -> None:
    kinds = {row[2] for row in TABLE}
    actions = {row[3] for row in TABLE}
    assert kinds == set(FailureClass) and actions == set(Action)


@pytest.mark.parametrize(
    ("evidence", "explained"),
    [
        (Evidence(signum=KILL), False),  # a kill nothing explains
        (Evidence(exit_code=3), False),
        (Evidence(signum=KILL, pod_unexplained_before=POD_FAULTS_TO_REPLACE - 1), False),
        (Evidence(signum=KILL, oom_kills=1), True),
        (Evidence(exit_code=1, exception_type="KeyError"), True),
        (Evidence(exit_code=1, output_tail="NCCL error"), True),
        (Evidence(signum=KILL, killed_as_hung=True), True),
    ],
)
def test_only_a_bare_exit_code_or_signal_is_unexplained(
    evidence: Evidence, explained: bool
) -> None:
    # What supervisor/rules/failure_evidence.py counts towards "faults on this pod".
    assert classify(evidence).explained is explained


def test_a_signal_death_never_claims_a_sender_it_cannot_know() -> None:
    """A rank that SIGKILLed itself was reported "killed by SIGKILL from outside": the exit
    status carries no sender, so the reason says what is known and nothing more."""
    for signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV):
        reason = classify(Evidence(signum=signum)).reason
        assert "outside" not in reason
        assert reason.startswith(f"killed by {signal.Signals(signum).name}; sender unknown")
