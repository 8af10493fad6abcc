"""A generation that fails while it forms: the survivor re-enters the next one in place.

Rank 1 is SIGKILLed; its replacement fails at start-up while the survivor (rank 0) waits for it
inside `init_process_group`. Before the unwind reset torch's group-name counter, the survivor
named its next default group "1" and waited, with the fresh rank 1, in ProcessGroupGloo's
construction for store keys that never came (both ranks, until the 30-minute store timeout).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from jobs import REPO, job_env, train_launch

pytestmark = pytest.mark.slow

WORKLOAD = REPO / "tests" / "workloads" / "fails_while_forming.py"
STEPS = 30


def steps(out: Path, rank: int) -> list[tuple[int, int, int]]:
    """(pid, generation, step) of each step the rank logged."""
    path = out / f"rank{rank}.log"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        _, pid, gen, _, step = line.split()
        rows.append((int(pid[4:]), int(gen[4:]), int(step)))
    return rows


@pytest.mark.timeout(400)
def test_the_survivor_re_enters_after_a_generation_that_failed_while_it_formed(
    tmp_path: Path,
) -> None:
    job = train_launch(
        ["--standalone", "--nproc-per-node", "2", "--max-restarts", "3"],
        [str(tmp_path)],
        env=job_env(OMP_NUM_THREADS="1"),
        script=WORKLOAD,
    )
    job.wait_for(lambda: len(steps(tmp_path, 1)) >= 5, 200, "rank 1 at step 5")
    os.kill(steps(tmp_path, 1)[-1][0], signal.SIGKILL)

    # Far below the hang detection's start-up allowance (300 s), which would end a stuck
    # generation by giving the survivor a fresh process.
    assert job.wait(120) == 0, job.stderr
    survivor = steps(tmp_path, 0)
    assert {pid for pid, _, _ in survivor} == {survivor[0][0]}, "rank 0 must keep its process"
    assert [step for _, gen, step in survivor if gen == 2] == list(range(1, STEPS + 1))
    assert "survivors get fresh processes" not in job.stderr
