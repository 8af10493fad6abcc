"""A survivor whose re-entry fails gets a fresh process at no cost (issue 20, item 2).

The script's setup calls a library that refuses a second initialization in one process
(as megatron-core 0.16 does), so rank 0's re-entry after rank 1's SIGKILL raises before
its first step. Before: classified user_bug, a restart spent per try, and with
--max-restarts 1 the job failed where torchrun finishes. Now: the job switches to fresh
processes for survivors, says so once, and finishes within a budget of one restart.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from jobs import REPO, max_step, pids_by_rank, read_events, train_launch
from pods import Pods

pytestmark = pytest.mark.slow

INIT_ONCE_DDP = REPO / "tests" / "workloads" / "init_once_ddp.py"
STEPS = 40


def test_a_failed_re_entry_falls_back_to_fresh_processes_without_a_restart(
    tmp_path: Path,
) -> None:
    events = tmp_path / "events"
    job = train_launch(
        ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1"],
        ["--steps", str(STEPS), "--events", str(events)],
        script=INIT_ONCE_DDP,
    )
    try:
        job.wait_for(lambda: max_step(read_events(events), 1) >= 10, 120, "rank 1 at step 10")
        first = pids_by_rank(read_events(events), 0)
        os.kill(first[1], signal.SIGKILL)
        assert job.wait(240) == 0, job.stderr
    finally:
        job.kill_tree()
    log = read_events(events)
    done = {e["rank"]: e["gen"] for e in log if e["event"] == "done"}
    # Generation 1: rank 0 re-entered in place and raised; generation 2 (no restart spent,
    # or a budget of 1 would have ended the job) runs on fresh processes only.
    assert done == {0: 2, 1: 2}, log
    assert pids_by_rank(log, 1)[0] == first[0]  # it did try to re-enter in place
    last = pids_by_rank(log, 2)
    assert set(last.values()).isdisjoint(first.values())
    said = [line for line in job.stderr.splitlines() if "survivors get fresh processes" in line]
    assert len(said) == 1, job.stderr
    assert "data parallel group is already initialized" in said[0]
    assert "user_bug" not in job.stderr  # never classified as the script's bug


def test_reentry_never_gives_every_rank_a_fresh_process(tmp_path: Path) -> None:
    """torchrun's way on request: after a kill every rank runs in a new process; the job
    keeps its other properties (one restart spent, the script resumes from its checkpoint)."""
    events = tmp_path / "events"
    job = train_launch(
        ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "--reentry", "never"],
        [
            "--steps",
            "30",
            "--step-sleep",
            "0.05",
            "--ckpt-dir",
            str(tmp_path / "ckpt"),
            "--ckpt-every",
            "5",
            "--events",
            str(events),
        ],
    )
    try:
        job.wait_for(lambda: max_step(read_events(events), 1) >= 8, 120, "rank 1 at step 8")
        first = pids_by_rank(read_events(events), 0)
        os.kill(first[1], signal.SIGKILL)
        assert job.wait(240) == 0, job.stderr
    finally:
        job.kill_tree()
    log = read_events(events)
    assert {e["rank"]: e["gen"] for e in log if e["event"] == "done"} == {0: 1, 1: 1}
    assert set(pids_by_rank(log, 1).values()).isdisjoint(first.values())
    assert "survivors get fresh processes: train-launch --reentry never" in job.stderr


def test_the_leader_carries_the_fallback_to_every_pod(tmp_path: Path) -> None:
    """Two pods, one rank each: rank 1 (pod 1) is killed, rank 0 (pod 0) fails to re-enter;
    the leader opens a generation at no cost whose Open tells pod 1 to replace its survivor."""
    events = tmp_path / "events"
    pods = Pods(nnodes=2, nproc=1)
    try:
        pods.start_launchers(["--steps", str(STEPS), "--events", str(events)], INIT_ONCE_DDP)
        first_job = pods.launchers[0]
        first_job.wait_for(lambda: max_step(read_events(events), 1) >= 10, 180, "rank 1 to step")
        first = pids_by_rank(read_events(events), 0)
        os.kill(first[1], signal.SIGKILL)
        for launcher in pods.launchers:
            assert launcher.wait(240) == 0, pods.logs()
        log = read_events(events)
        assert {e["rank"]: e["gen"] for e in log if e["event"] == "done"} == {0: 2, 1: 2}
        second, last = pids_by_rank(log, 1), pids_by_rank(log, 2)
        assert second[0] == first[0]  # rank 0 tried to re-enter in place
        assert last[1] != second[1], "pod 1's survivor must get a fresh process too"
        assert last[0] != first[0]
        for node in (0, 1):
            status = pods.status(node)
            assert status.get("restartCount") == 1, status  # the fallback spent nothing
            assert "already initialized" in status.get("freshProcesses", ""), status
    finally:
        pods.stop()
