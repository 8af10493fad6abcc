"""train-launch without --standalone: it attaches to the pod's train-supervisor sidecar."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from jobs import REPO, TOY_DDP, RunningJob, job_env, max_step, pids_by_rank, read_events

from supervisor.workers.ports import free_port
from train_supervisor import exit_codes

TOKEN = "sidecar-test-token-0123456789"


def start_sidecar(port: int) -> RunningJob:
    env = job_env(
        SUPERVISOR_NNODES="1",
        SUPERVISOR_PORT=str(port),
        SUPERVISOR_TOKEN=TOKEN,
        SUPERVISOR_BIND="127.0.0.1",
    )
    return RunningJob([sys.executable, "-m", "supervisor.cli", "serve"], env)


def launch(port: int, script_args: list[str], *flags: str) -> RunningJob:
    argv = [
        sys.executable,
        "-m",
        "launcher.launch.main",
        "--supervisor-address",
        f"127.0.0.1:{port}",
        "--nproc-per-node",
        "2",
        "--warm-spares",
        "1",
        "--max-restarts",
        "2",
        *flags,
        str(TOY_DDP),
        *script_args,
    ]
    return RunningJob(argv, job_env(SUPERVISOR_TOKEN=TOKEN))


def test_no_sidecar_is_one_clear_error(tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "train.py"
    script.write_text(f"open({str(tmp_path / 'started')!r}, 'w').close()\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launcher.launch.main",
            "--supervisor-address",
            f"127.0.0.1:{port}",
            "--supervisor-wait",
            "1",
            str(script),
        ],
        cwd=REPO,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == exit_codes.USAGE_ERROR
    errors = [line for line in done.stderr.splitlines() if line.startswith("train-launch:")]
    assert len(errors) == 1 and f"no supervisor answered at 127.0.0.1:{port} within 1s" in errors[0]
    assert not (tmp_path / "started").exists()


@pytest.mark.slow
def test_launcher_waits_for_a_late_sidecar_then_recovers_a_killed_rank(tmp_path: Path) -> None:
    port = free_port()
    events = tmp_path / "events"
    job = launch(
        port,
        [
            "--steps",
            "30",
            "--step-sleep",
            "0.05",
            "--ckpt-every",
            "5",
            "--events",
            str(events),
            "--ckpt-dir",
            str(tmp_path / "ckpt"),
        ],
    )
    # The launcher is up first and backs off; the sidecar arrives later.
    job.wait_for(lambda: "waiting up to" in job.stderr, 60, "the launcher to wait for the sidecar")
    sidecar = start_sidecar(port)
    try:
        job.wait_for(lambda: max_step(read_events(events), 1) >= 7, 120, "rank 1 to step")
        before = pids_by_rank(read_events(events), 0)
        os.kill(before[1], signal.SIGKILL)
        assert job.wait(180) == 0, job.stderr + sidecar.stderr
        after = pids_by_rank(read_events(events), 1)
        assert after[0] == before[0] and after[1] != before[1]
    finally:
        sidecar.proc.send_signal(signal.SIGTERM)
        assert sidecar.wait(30) == 0, sidecar.stderr
