"""Hang detection end to end: the hung rank is named, killed and replaced; the job goes on.

A SIGSTOPped rank is told apart by its process state; a rank sleeping in
Python, which looks like its peers waiting in their collective (asleep, no
CPU), by its py-spy stack.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from jobs import job_env, max_step, pids_by_rank, read_events, train_launch, wait_until

pytestmark = pytest.mark.slow

NPROC = 4


def test_a_stopped_rank_is_named_and_the_job_runs_again(tmp_path: Path) -> None:
    events = tmp_path / "events"
    flags = ["--standalone", "--nproc-per-node", str(NPROC), "--max-restarts", "3"]
    script = ["--steps", "400", "--step-sleep", "0.02", "--events", str(events)]
    job = train_launch(flags, script, env=job_env())
    job.wait_for(lambda: max_step(read_events(events), 2) >= 10, 120, "rank 2 to step")
    victim = pids_by_rank(read_events(events), 0)[2]
    os.kill(victim, signal.SIGSTOP)
    stopped_at = time.monotonic()
    job.wait_for(lambda: "is hung" in job.stderr, 60, "the hang event")
    print(f"SIGSTOP -> hang event: {time.monotonic() - stopped_at:.1f}s")

    def stepping_again() -> bool:
        records = read_events(events)
        return all(max_step([e for e in records if e["gen"] == 1], r) > 0 for r in range(NPROC))

    wait_until(stepping_again, 120, "every rank stepping in generation 1")
    print(f"SIGSTOP -> every rank stepping again: {time.monotonic() - stopped_at:.1f}s")
    assert job.wait(240) == 0, job.stderr
    assert f"rank 2 (pid {victim}) is hung: its process is stopped" in job.stderr, job.stderr
    assert "looks like hung" in job.stderr, "the failure is classified as a hang"
    after = pids_by_rank(read_events(events), 1)
    before = pids_by_rank(read_events(events), 0)
    assert {r for r in range(NPROC) if before[r] != after[r]} == {2}, "only rank 2 is new"


def test_a_rank_sleeping_in_python_is_named_by_its_stack(tmp_path: Path) -> None:
    events = tmp_path / "events"
    flags = ["--standalone", "--nproc-per-node", str(NPROC), "--max-restarts", "3"]
    script = ["--steps", "20", "--step-sleep", "0.02", "--events", str(events)]
    script += ["--hang-rank", "2", "--hang-at-step", "8", "--hang-once"]
    job = train_launch(flags, script, env=job_env(SUPERVISOR_HANG_FLOOR_S="3"))
    job.wait_for(
        lambda: any(e["event"] == "hanging" for e in read_events(events)), 120, "rank 2 to hang"
    )
    hung_at = time.monotonic()
    job.wait_for(lambda: "is hung" in job.stderr, 60, "the hang event")
    print(f"sleep -> hang event: {time.monotonic() - hung_at:.1f}s (floor 3 s)")
    assert job.wait(120) == 0, job.stderr
    before = pids_by_rank(read_events(events), 0)
    [hang] = [line for line in job.stderr.splitlines() if "is hung" in line]
    # Process state and CPU could not tell: the stacks did.
    assert f"rank 2 (pid {before[2]}) is hung: its stack (main (toy_ddp.py)) differs" in hang
    assert "stacks: 3 ranks (0, 1, 3) in _engine_run_backward (graph.py)" in hang, hang
    assert "rank 2 in main (toy_ddp.py)" in hang, hang
    after = pids_by_rank(read_events(events), 1)
    assert {r for r in range(NPROC) if before[r] != after[r]} == {2}, "only rank 2 is new"
