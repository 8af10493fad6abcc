"""Snapshots from inside the frameworks' own checkpoint calls (launcher/worker/integrations/), end
to end:
a real train-launch job of 2 CPU ranks (gloo) with the real framework, rank 1 SIGKILLs itself
right after a step; every rank goes on from the job's committed step, losing at most that one
step, holding bitwise the state it had at that step before the kill."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs import REPO, job_env, max_step, pids_by_rank, read_events, train_launch

pytestmark = pytest.mark.slow

NPROC = 2
STEPS = 8
KILL_AT_STEP = 4
WORKLOADS = REPO / "tests" / "workloads"


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    directory = Path("/dev/shm") / f"ts-test-{uuid.uuid4().hex[:12]}"
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def run_killed(script: str, events: Path, shm: Path, *extra: str) -> list[dict[str, Any]]:
    flags = ["--standalone", "--nproc-per-node", str(NPROC), "--max-restarts", "3"]
    args = ["--steps", str(STEPS), "--events", str(events), "--kill-rank", "1",
            "--kill-at-step", str(KILL_AT_STEP), *extra]  # fmt: skip
    env = job_env(TRAIN_SUPERVISOR_SNAPSHOT_DIR=str(shm))
    job = train_launch(flags, args, env=env, script=WORKLOADS / script)
    assert job.wait(150) == 0, job.stderr
    return read_events(events)


def assert_resumed_losing_at_most_one_step(records: list[dict[str, Any]]) -> None:
    first = [e for e in records if e["gen"] == 0]
    reached = max(max_step(first, rank) for rank in range(NPROC))
    assert reached == KILL_AT_STEP, f"rank 1 was killed after step {KILL_AT_STEP}: {reached}"
    resumes = [e for e in records if e["event"] == "resumed" and e["gen"] > 0]
    assert sorted(e["rank"] for e in resumes) == list(range(NPROC)), resumes
    [step] = {e["from_step"] for e in resumes}
    assert step >= 1 and reached - step <= 1, f"reached {reached}, resumed from {step}"
    before = {(e["rank"], e["step"]): e["state"] for e in first if e["event"] == "step"}
    for resume in resumes:  # bitwise the state that rank had at that step before the kill
        assert resume["state"] == before[(resume["rank"], step)], resume
    done = {e["rank"]: e["step"] for e in records if e["event"] == "done"}
    assert done == dict.fromkeys(range(NPROC), STEPS)
    old, new = pids_by_rank(records, 0), pids_by_rank(records, 1)
    assert old[1] != new[1], "rank 1 was killed: a new process"


def test_dcp_save_and_load_through_the_snapshot_storage_of_an_fsdp2_job(
    tmp_path: Path, shm_dir: Path
) -> None:
    records = run_killed("dcp_snapshots.py", tmp_path / "events", shm_dir)
    assert_resumed_losing_at_most_one_step(records)


def test_a_lightning_trainer_resumes_from_the_snapshot_callback(
    tmp_path: Path, shm_dir: Path
) -> None:
    records = run_killed("lightning_snapshots.py", tmp_path / "events", shm_dir)
    assert_resumed_losing_at_most_one_step(records)


def test_a_hugging_face_trainer_resumes_from_the_snapshot_callback(
    tmp_path: Path, shm_dir: Path
) -> None:
    out = str(tmp_path / "out")
    records = run_killed("hf_snapshots.py", tmp_path / "events", shm_dir, "--output-dir", out)
    assert_resumed_losing_at_most_one_step(records)
