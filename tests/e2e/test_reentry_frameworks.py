"""A bare Accelerate loop under train-launch: one rank SIGKILLed, the survivor re-enters.

Before the library resets (launcher/library_resets.py) Accelerate's state singletons made
the survivor's re-entry fail and the job spend its only restart on it.
"""

from __future__ import annotations

import collections
import os
import signal
from pathlib import Path

import pytest
from jobs import REPO, job_env, max_step, pids_by_rank, read_events, train_launch

pytestmark = pytest.mark.slow

ACCELERATE_LOOP = REPO / "tests" / "workloads" / "accelerate_loop.py"
STEPS = 30
VICTIM, SURVIVOR = 1, 0


@pytest.mark.timeout(400)
def test_accelerate_survivor_keeps_its_pid_atexit_runs_and_logs_once(tmp_path: Path) -> None:
    job = train_launch(
        ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1"],
        ["--steps", str(STEPS), "--out", str(tmp_path)],
        env=job_env(OMP_NUM_THREADS="1"),
        script=ACCELERATE_LOOP,
    )
    events_dir = tmp_path / "events"
    job.wait_for(lambda: max_step(read_events(events_dir), VICTIM) >= 8, 200, "step 8")
    before = pids_by_rank(read_events(events_dir), generation=0)
    os.kill(before[VICTIM], signal.SIGKILL)

    assert job.wait(300) == 0, job.stderr
    events = read_events(events_dir)
    after = pids_by_rank(events, generation=1)
    assert after[SURVIVOR] == before[SURVIVOR], "the survivor must re-enter in place"
    assert after[VICTIM] != before[VICTIM]
    assert {e["rank"] for e in events if e["event"] == "done" and e["gen"] == 1} == {0, 1}
    assert max_step(events, SURVIVOR) == STEPS
    ran_atexit = {(e["rank"], e["pid"]) for e in events if e["event"] == "atexit"}
    assert {(SURVIVOR, after[SURVIVOR]), (VICTIM, after[VICTIM])} <= ran_atexit

    lines = (tmp_path / f"rank_{SURVIVOR}.log").read_text().splitlines()
    duplicated = [line for line, n in collections.Counter(lines).items() if n > 1]
    assert not duplicated, duplicated
    assert any(line.startswith("generation 1 ") for line in lines)
