"""In-memory snapshots end to end: a real job saves every step through the worker API."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs import REPO, RunningJob, job_env, max_step, pids_by_rank, read_events, train_launch
from pods import Pods

from train_supervisor.arena import HEADER_SIZE

pytestmark = pytest.mark.slow

NPROC = 2
STEPS = 16


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """Where the test's jobs keep snapshots, in /dev/shm (a launcher removes its own on success)."""
    directory = Path("/dev/shm") / f"ts-test-{uuid.uuid4().hex[:12]}"
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def start(events: Path, shm: Path, *extra: str) -> RunningJob:
    flags = ["--standalone", "--nproc-per-node", str(NPROC), "--max-restarts", "3"]
    script = ["--steps", str(STEPS), "--snapshot", "--events", str(events), *extra]
    return train_launch(flags, script, env=job_env(TRAIN_SUPERVISOR_SNAPSHOT_DIR=str(shm)))


def snapshot_status(address: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "status", "--json", "--address", address],
        cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    status: dict[str, Any] = json.loads(done.stdout)
    return status


def final_params(events: Path) -> set[str]:
    return {e["params_sha256"] for e in read_events(events) if e["event"] == "done"}


def test_a_killed_rank_restores_from_shared_memory_losing_at_most_one_step(
    tmp_path: Path, shm_dir: Path
) -> None:
    reference = start(tmp_path / "reference", shm_dir / "reference")
    assert reference.wait(180) == 0, reference.stderr
    [uninterrupted] = final_params(tmp_path / "reference")

    events = tmp_path / "events"
    job = start(events, shm_dir / "job", "--kill-self-rank", "1", "--kill-self-at-step", "8")
    assert job.wait(180) == 0, job.stderr
    records = read_events(events)
    before, after = pids_by_rank(records, 0), pids_by_rank(records, 1)
    assert {r: before[r] == after[r] for r in range(NPROC)} == {0: True, 1: False}
    reached = max(max_step([e for e in records if e["gen"] == 0], r) for r in range(NPROC))
    resumed = {e["rank"]: e["from_step"] for e in records if e["event"] == "resumed" and e["gen"]}
    assert len(set(resumed.values())) == 1, f"every rank restores the same step: {resumed}"
    assert reached - resumed[0] <= 1, f"reached {reached}, resumed from {resumed[0]}"
    assert "rank 1 restored step" in job.stderr and "from shm" in job.stderr
    # Bitwise the same training as without the failure (same seed, same data order).
    assert final_params(events) == {uninterrupted}
    assert not (shm_dir / "job").exists(), "the launcher frees the snapshots' memory on success"


def test_a_corrupt_snapshot_is_never_loaded_and_the_job_falls_back(
    tmp_path: Path, shm_dir: Path
) -> None:
    events = tmp_path / "events"
    job = start(events, shm_dir, "--step-sleep", "0.1")
    job.wait_for(lambda: max_step(read_events(events), 1) >= 6, 120, "rank 1 to step")
    # Status shows the snapshots: per rank the newest saved step and the save's blocking time.
    status = snapshot_status(job.supervisor_address())
    assert int(status["committedStep"]) >= 5, status
    for rank in status["ranks"]:
        assert int(rank["savedStep"]) >= int(status["committedStep"]), rank
        assert int(rank["snapshotBytes"]) > 0 and "saveBlockingS" in rank, rank
        assert rank["restoredFrom"] == "none" and rank["restoredStep"] == "-1", rank
    pids = pids_by_rank(read_events(events), 0)
    for pid in pids.values():  # no write in flight while the bytes are flipped
        os.kill(pid, signal.SIGSTOP)
    for slot in (0, 1):  # whichever holds the committed step
        path = shm_dir / f"rank-1.slot{slot}"
        with open(path, "r+b") as handle:
            handle.seek(HEADER_SIZE + 8)  # in the manifest: covered by the data checksum
            byte = handle.read(1)
            handle.seek(HEADER_SIZE + 8)
            handle.write(bytes([byte[0] ^ 0xFF]))
    os.kill(pids[1], signal.SIGKILL)
    os.kill(pids[0], signal.SIGCONT)
    assert job.wait(180) == 0, job.stderr
    assert "snapshot_problem: rank 1:" in job.stderr and "checksum" in job.stderr, job.stderr
    assert "snapshot_fallback" in job.stderr
    records = read_events(events)
    resumed = {e["rank"]: e["from_step"] for e in records if e["event"] == "resumed" and e["gen"]}
    assert resumed == {0: 0, 1: 0}, "no rank loaded the corrupt step: every rank started over"
    done = {e["rank"]: e["step"] for e in records if e["event"] == "done"}
    assert done == dict.fromkeys(range(NPROC), STEPS)


def test_two_pods_commit_job_wide_and_a_killed_rank_restores_from_shared_memory(
    tmp_path: Path, shm_dir: Path
) -> None:
    """2 pods of 2 ranks: the leader commits a step once both pods hold it on every rank.

    Compared bitwise with an uninterrupted run: the state every rank restores
    equals that run's state at the same step. (Final parameters of 4 DDP ranks
    are not compared: DDP re-buckets gradients after its first iteration, so
    the first step after any restart, ours or torchrun's, sums in another order.)
    """
    script = ["--steps", str(STEPS), "--snapshot", "--trace-state"]
    reference_events = tmp_path / "reference"
    reference = train_launch(
        ["--standalone", "--nproc-per-node", "4", "--max-restarts", "0"],
        [*script, "--events", str(reference_events)],
        env=job_env(TRAIN_SUPERVISOR_SNAPSHOT_DIR=str(shm_dir / "reference")),
    )
    assert reference.wait(180) == 0, reference.stderr
    expected = {(e["rank"], e["step"]): e["state"] for e in read_events(reference_events)
                if e["event"] == "step"}  # fmt: skip

    events = tmp_path / "events"
    pods = Pods(nnodes=2, launcher_env={"TRAIN_SUPERVISOR_SNAPSHOT_DIR": str(shm_dir / "pods")})
    try:
        pods.start_launchers(
            [*script, "--events", str(events), "--kill-self-rank", "3", "--kill-self-at-step", "8"]
        )
        for launcher in pods.launchers:
            assert launcher.wait(240) == 0, pods.logs()
    finally:
        pods.stop()
    records = read_events(events)
    before, after = pids_by_rank(records, 0), pids_by_rank(records, 1)
    assert {r for r in range(4) if before[r] != after[r]} == {3}
    reached = max(max_step([e for e in records if e["gen"] == 0], r) for r in range(4))
    resumes = [e for e in records if e["event"] == "resumed" and e["gen"]]
    assert sorted(e["rank"] for e in resumes) == [0, 1, 2, 3]
    [step] = {e["from_step"] for e in resumes}
    assert reached - step <= 1, f"reached {reached}, resumed from {step}"
    for resume in resumes:  # bitwise the state the uninterrupted run had at that step
        assert resume["state"] == expected[(resume["rank"], step)], resume
    assert "rank 3 restored step" in pods.logs()
    done = {e["rank"]: e["step"] for e in records if e["event"] == "done"}
    assert done == dict.fromkeys(range(4), STEPS)


def test_the_readme_example_runs(tmp_path: Path, shm_dir: Path) -> None:
    readme = (REPO / "README.md").read_text()
    example = re.search(r"```python\n(import torch.*?)```", readme, re.S)
    assert example is not None, "the README's worker API example"
    script = tmp_path / "example.py"
    script.write_text(example.group(1))
    flags = ["--standalone", "--nproc-per-node", str(NPROC), "--max-restarts", "1"]
    job = RunningJob(
        [
            sys.executable,
            "-m",
            "launcher.launch.main",
            "--supervisor-port",
            "0",
            *flags,
            str(script),
        ],
        job_env(TRAIN_SUPERVISOR_SNAPSHOT_DIR=str(shm_dir)),
    )
    assert job.wait(180) == 0, job.stderr
    assert "rank 0 restored nothing" in job.stderr
