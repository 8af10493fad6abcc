"""The failure class decides, end to end, with real faults and no torch.

A real kernel OOM kill inside a memory cgroup of our own, a worker that reports
a GPU fallen off the bus, and a SIGKILL from outside: each is classified from
its evidence (the cgroup's oom_kill count, the output, nothing) and handled
by its class: restart in place, stop the job (GAVE_UP), or give the pod back
(REPLACE_POD), with the reason in the Kubernetes termination message.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from cgroups import MemoryCgroup, NoMemoryCgroup
from cgroups import memory_cgroup as make_memory_cgroup
from jobs import REPO, RunningJob, job_env, train_launch, wait_until

from train_supervisor import exit_codes

pytestmark = pytest.mark.slow

MEMORY_HOG = REPO / "tests" / "workloads" / "memory_hog.py"
LIMIT_BYTES = 512 << 20  # the launcher and an idle worker (torch imported) take ~250 MB
OOM_EVENT = "looks like out_of_memory (the kernel OOM killer (memory cgroup oom_kill +1))"


def launch(
    tmp_path: Path, *script_args: str, prefix: tuple[str, ...] = (), max_restarts: int = 5
) -> RunningJob:
    """train-launch --standalone, 2 ranks, no spare (its torch import would not fit the limit)."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir(exist_ok=True)
    flags = ["--standalone", "--nproc-per-node", "2", "--max-restarts", str(max_restarts),
             "--warm-spares", "0", "--failure-settle", "0.2"]  # fmt: skip
    env = job_env(TRAIN_LAUNCH_TERMINATION_LOG=str(tmp_path / "termination-log"))
    script = ["--pid-dir", str(pid_dir), *script_args]
    return train_launch(flags, script, env, script=MEMORY_HOG, prefix=prefix)


def pid_of(tmp_path: Path, generation: int, rank: int) -> int:
    path = tmp_path / "pids" / f"gen{generation}_rank{rank}"
    wait_until(path.exists, 30, f"rank {rank} of generation {generation} to start")
    return int(path.read_text())


@pytest.fixture
def memory_cgroup() -> Iterator[MemoryCgroup]:
    try:
        with make_memory_cgroup(LIMIT_BYTES) as cgroup:
            yield cgroup
    except NoMemoryCgroup as why:
        pytest.skip(str(why))


# --------------------------------------------------------------------- tests
def test_a_kernel_oom_kill_is_restarted_twice_then_stops_the_job(
    tmp_path: Path, memory_cgroup: MemoryCgroup
) -> None:
    enter = tuple(memory_cgroup.command([]))
    job = launch(tmp_path, "--hog-rank", "1", prefix=enter)
    assert job.wait(60) == exit_codes.GAVE_UP, job.stderr
    assert memory_cgroup.kills() == 3  # the kernel's own count: three real OOM kills
    log = job.stderr
    # Restarted in place twice: rank 0 kept its process through every generation.
    assert log.count(f"{OOM_EVENT} -> restart: restart") == 2, log
    third = "out of memory 3 times on this rank (last: the kernel OOM killer (memory cgroup"
    assert f"looks like out_of_memory ({third} oom_kill +1))) -> give_up_classified" in log
    assert "from outside" not in log  # not taken for a kill from outside
    assert pid_of(tmp_path, 2, 0) == pid_of(tmp_path, 0, 0)
    assert len({pid_of(tmp_path, g, 1) for g in range(3)}) == 3
    report = "job given up: rank 1: out of memory 3 times on this rank"
    assert f"train-launch: {report}" in log
    message = (tmp_path / "termination-log").read_text()
    assert message.startswith(report) and "class: out_of_memory" in message, message
    assert "termination message written to" in log


def test_a_gpu_fallen_off_the_bus_gives_the_pod_back(tmp_path: Path) -> None:
    job = launch(tmp_path, "--xid-rank", "1")
    assert job.wait(60) == exit_codes.REPLACE_POD, job.stderr
    log = job.stderr
    evidence = "output: 'Xid (PCI:0000:3b:00): 79'"
    assert f"looks like hardware ({evidence}) -> replace_pod" in log, log
    assert f"replace_pod: this pod must be replaced: hardware fault on rank 1: {evidence}" in log
    message = (tmp_path / "termination-log").read_text()
    assert message.startswith(f"this pod must be replaced: hardware fault on rank 1: {evidence}")
    assert "class: hardware" in message


def test_a_sigkill_from_outside_is_transient_and_restarted_in_place(tmp_path: Path) -> None:
    job = launch(tmp_path, "--idle-s", "2")
    survivor, victim = pid_of(tmp_path, 0, 0), pid_of(tmp_path, 0, 1)
    os.kill(victim, signal.SIGKILL)
    assert job.wait(60) == exit_codes.SUCCEEDED, job.stderr
    transient = (
        "looks like transient (killed by SIGKILL; sender unknown, not the supervisor, "
        "no OOM kill seen) -> restart: restart 1 of 5"
    )
    assert transient in job.stderr
    assert pid_of(tmp_path, 1, 0) == survivor and pid_of(tmp_path, 1, 1) != victim
    assert not (tmp_path / "termination-log").exists()  # a success leaves no message
