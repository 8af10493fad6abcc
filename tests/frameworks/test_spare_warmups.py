"""A warm spare loads what the ranks' libraries loaded beyond imports before it takes a rank.

DeepSpeed ZeRO-1 on its CPU accelerator (tests/frameworks/scripts/deepspeed_zero1.py, no line
for train-launch) under train-launch with one warm spare: DeepSpeed JIT-loads its `fused_adam`
op (FusedAdam) in each rank, outside the import system. The spare must have it loaded (its
shared object mapped in the spare's process, seen from outside in /proc) while still idle;
then a rank is SIGKILLed and that spare takes it, and every rank steps again.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
from matrix import (
    FRAMEWORK_ENV,
    NPROC,
    SCRIPTS,
    Fault,
    RunningJob,
    complete,
    inject,
    job_env,
    read_log,
    train_launch,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
OP_LIBRARY = f"{os.sep}fused_adam.so"  # torch's extension cache: <dir>/fused_adam/fused_adam.so


def idle_spares(job: RunningJob, ranks: set[int]) -> list[int]:
    """The launcher's bootstrap processes that hold no rank."""
    processes = psutil.Process(job.proc.pid).children(recursive=True)
    found = []
    for process in processes:
        try:
            if "launcher.worker.bootstrap" in process.cmdline() and process.pid not in ranks:
                found.append(process.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def has_mapped(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


def rank_pids(out: Path) -> set[int]:
    return {line.pid for rank in range(NPROC) for line in read_log(out, rank)}


def test_the_spare_loads_deepspeeds_op_before_it_takes_a_rank(tmp_path: Path) -> None:
    # Steps enough that the job is still training once the spare is warm (it imports DeepSpeed
    # first: seconds on busy cores); the test ends the job once every rank stepped again.
    script_args = ["--out", str(tmp_path), "--steps", "100000", "--ckpt-every", "1000"]
    flags = ["--standalone", "--nproc-per-node", str(NPROC), "--max-restarts", "1"]
    flags += ["--warm-spares", "1"]
    job = train_launch(
        flags, script_args, job_env(**FRAMEWORK_ENV["deepspeed"]), SCRIPTS / "deepspeed_zero1.py"
    )
    try:
        job.wait_for(lambda: len(rank_pids(tmp_path)) == NPROC, 300, "both ranks to log")
        warm: list[int] = []

        def spare_warm() -> bool:
            warm[:] = [
                pid for pid in idle_spares(job, rank_pids(tmp_path)) if has_mapped(pid, OP_LIBRARY)
            ]
            return bool(warm)

        job.wait_for(spare_warm, 120, f"an idle spare with {OP_LIBRARY} loaded")
        for pid in rank_pids(tmp_path):
            assert has_mapped(pid, OP_LIBRARY), "the ranks loaded the op themselves"
        outcome = inject(job, tmp_path, Fault(signal.SIGKILL, 1, 1), 0.0)
        complete(job, tmp_path, outcome, 300)
        newest = read_log(tmp_path, 1)[-1]
        assert newest.pid in warm, f"rank 1 went to {newest.pid}, not the warm spare {warm}"
        assert outcome.survivors_kept_pid
    finally:
        job.kill_tree()
