"""Issue 21's three-kill run: Lightning Trainer ddp, 2 ranks, --max-restarts 3.

Ranks 1, 0, 1 SIGKILLed at global steps 30, 45, 60 (and, in a variant, 75) gave up
before: "crash loop: rank 1 failed 3 times in a row with the same error at step 19
without progress" (the policy read a per-generation step counter and keyed on the
error only), and with the third kill at 75 "replace_pod: 3 unexplained faults on this
pod" (a lifetime count). torchrun finishes the same run; so must we.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from jobs import REPO, RunningJob, read_events, train_launch

pytestmark = pytest.mark.slow

LIGHTNING_DDP = REPO / "tests" / "workloads" / "lightning_ddp.py"
STEPS = 90
FAILURE_LINE = re.compile(r"rank (\d+) pid \d+ signal SIGKILL at step (\d+) of the job")


def kill_at(job: RunningJob, events_dir: Path, rank: int, step: int, generation: int) -> None:
    """SIGKILL `rank` once it passed Lightning's global `step` in `generation` or later."""

    def reached() -> list[dict[str, int]]:
        return [
            e
            for e in read_events(events_dir)
            if e["event"] == "step"
            and e["rank"] == rank
            and e["gen"] >= generation
            and e["step"] >= step
        ]

    job.wait_for(lambda: bool(reached()), 240, f"rank {rank} at global step {step}")
    os.kill(reached()[-1]["pid"], signal.SIGKILL)


@pytest.mark.parametrize("third", [60, 75])
def test_kills_of_ranks_1_0_1_finish_the_lightning_run(tmp_path: Path, third: int) -> None:
    events = tmp_path / "events"
    job = train_launch(
        ["--standalone", "--nproc-per-node", "2", "--max-restarts", "3"],
        [
            "--steps",
            str(STEPS),
            "--step-sleep",
            "0.1",
            "--ckpt-dir",
            str(tmp_path / "ckpt"),
            "--events",
            str(events),
        ],
        script=LIGHTNING_DDP,
    )
    try:
        for generation, (rank, step) in enumerate(((1, 30), (0, 45), (1, third))):
            kill_at(job, events, rank, step, generation)
        assert job.wait(300) == 0, job.stderr
    finally:
        job.kill_tree()
    done = {e["rank"]: (e["step"], e["gen"]) for e in read_events(events) if e["event"] == "done"}
    assert done == {0: (STEPS, 3), 1: (STEPS, 3)}  # three restarts, the whole budget
    assert "crash loop" not in job.stderr and "replace_pod" not in job.stderr
    # The failure lines give the job's step, which only grows (not 0 after a recovery).
    failures = [(int(r), int(s)) for r, s in FAILURE_LINE.findall(job.stderr)]
    assert [rank for rank, _ in failures] == [1, 0, 1], job.stderr
    job_steps = [step for _, step in failures]
    assert job_steps == sorted(job_steps) and job_steps[0] >= 25, job_steps
