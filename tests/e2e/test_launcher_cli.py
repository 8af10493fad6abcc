"""train-launch as a torchrun drop-in: environment, bad input, SIGTERM, status."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from jobs import (
    REPO,
    TOY_DDP,
    RunningJob,
    job_env,
    max_step,
    pids_by_rank,
    read_events,
    torchrun,
    train_launch,
)

from train_supervisor import exit_codes

# Differ by design: ports and run ids are fresh per run; the error file lives
# in our own per-generation directory; workers host their own store; the
# snapshot API (launcher/worker/snapshot.py) finds the supervisor from three more.
EXPECTED_DIFFERENCES = {
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_ERROR_FILE",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TRAIN_SUPERVISOR_ADDRESS",
    "TRAIN_SUPERVISOR_TOKEN",
    "TRAIN_SUPERVISOR_GENERATION",
}


def dumped_envs(directory: Path) -> dict[int, dict[str, str]]:
    return {rank: json.loads((directory / f"rank_{rank}.json").read_text()) for rank in (0, 1)}


@pytest.mark.slow
def test_worker_environment_matches_torchrun(tmp_path: Path) -> None:
    reference = torchrun(
        ["--standalone", "--nproc-per-node", "2"], ["--dump-env", str(tmp_path / "torchrun")]
    )
    assert reference.wait(120) == 0, reference.stderr
    ours = train_launch(
        ["--standalone", "--nproc-per-node", "2", "--warm-spares", "0"],
        ["--dump-env", str(tmp_path / "ours")],
    )
    assert ours.wait(120) == 0, ours.stderr
    theirs_by_rank, ours_by_rank = (
        dumped_envs(tmp_path / "torchrun"),
        dumped_envs(tmp_path / "ours"),
    )
    for rank in (0, 1):
        theirs, mine = theirs_by_rank[rank], ours_by_rank[rank]
        different = {k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k)}
        assert different == EXPECTED_DIFFERENCES, (rank, different)
        assert mine["RANK"] == mine["LOCAL_RANK"] == mine["ROLE_RANK"] == str(rank)
        assert mine["WORLD_SIZE"] == mine["LOCAL_WORLD_SIZE"] == mine["ROLE_WORLD_SIZE"] == "2"
        assert mine["OMP_NUM_THREADS"] == "1" and mine["TORCHELASTIC_RESTART_COUNT"] == "0"
        assert mine["TORCHELASTIC_ERROR_FILE"].endswith(f"gen_0/rank_{rank}/error.json")
    assert ours_by_rank[0]["MASTER_PORT"] == ours_by_rank[1]["MASTER_PORT"]


BAD_INPUTS = {
    "unknown flag": (["--frobnicate", "{script}"], "unrecognized arguments: --frobnicate"),
    "zero workers": (["--nproc-per-node", "0", "{script}"], "--nproc-per-node must be >= 1"),
    "missing script": (["{missing}"], "training script not found"),
    "not python": (["{shell}"], "pass --no-python"),
    "unsupported torchrun flag": (["--rdzv-backend", "c10d", "{script}"], "--rdzv-backend"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_one_clear_error_and_starts_nothing(case: str, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    script = tmp_path / "train.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    shell = tmp_path / "train.sh"
    shell.write_text(f"#!/bin/sh\ntouch {marker}\n")
    shell.chmod(0o755)
    flags, expected = BAD_INPUTS[case]
    argv = [a.format(script=script, missing=tmp_path / "nope.py", shell=shell) for a in flags]
    done = subprocess.run(
        [sys.executable, "-m", "launcher.launch.main", "--standalone", *argv],
        cwd=REPO,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == exit_codes.USAGE_ERROR
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train-launch: error:"), done.stderr
    assert expected in lines[0]
    assert not marker.exists()


# A tracker's flush at exit (an upload, a file sync) that takes a while: the launcher must let
# it finish. It writes once it is done, so a worker killed while flushing leaves no record.
SLOW_EXIT_HOOK = """
import atexit, os, sys, time
import torch.distributed as dist

def flush():
    time.sleep(1.0)  # the flush's work
    with open(os.path.join(sys.argv[1], f"flushed_{os.environ['RANK']}"), "w") as f:
        f.write(str(os.getpid()))

atexit.register(flush)
dist.init_process_group("gloo")
dist.barrier()
"""


@pytest.mark.slow
def test_a_clean_finish_lets_every_worker_finish_its_exit_hooks(tmp_path: Path) -> None:
    """Workers forked by a thread that ends with the job died with it (PR_SET_PDEATHSIG is
    per thread), SIGKILLed within milliseconds while their exit hooks still ran."""
    script = tmp_path / "train.py"
    script.write_text(SLOW_EXIT_HOOK)
    job = train_launch(["--standalone", "--nproc-per-node", "2"], [str(tmp_path)], script=script)
    assert job.wait(120) == 0, job.stderr
    assert sorted(p.name for p in tmp_path.glob("flushed_*")) == ["flushed_0", "flushed_1"]


@pytest.mark.slow
def test_sigterm_stops_every_worker_and_exits_with_the_documented_code(tmp_path: Path) -> None:
    events = tmp_path / "events"
    job = train_launch(
        ["--standalone", "--nproc-per-node", "4", "--warm-spares", "1", "--term-timeout", "5"],
        ["--steps", "100000", "--step-sleep", "0.02", "--events", str(events)],
    )
    job.wait_for(
        lambda: all(max_step(read_events(events), r) > 0 for r in range(4)),
        120,
        "every rank to step",
    )
    workers = job.children()
    assert len(workers) == 5, "4 ranks and 1 spare"
    os.kill(job.proc.pid, signal.SIGTERM)
    assert job.wait(60) == exit_codes.TERMINATED == 143
    survivors = [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    assert survivors == []


@pytest.mark.slow
def test_status_shows_every_rank_with_steps_advancing(tmp_path: Path) -> None:
    events = tmp_path / "events"
    job = train_launch(
        ["--standalone", "--nproc-per-node", "4", "--warm-spares", "0"],
        ["--steps", "100000", "--step-sleep", "0.02", "--events", str(events)],
    )
    address = job.supervisor_address()
    job.wait_for(
        lambda: all(max_step(read_events(events), r) > 0 for r in range(4)),
        120,
        "every rank to step",
    )

    def status() -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "supervisor.cli", "status", "--address", address, "--json"],
            cwd=REPO,
            env=job_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        parsed: dict[str, Any] = json.loads(done.stdout)
        return parsed

    def steps(snapshot: dict[str, Any]) -> dict[int, int]:
        ranks = snapshot["ranks"]
        assert isinstance(ranks, list)
        return {r.get("rank", 0): int(r.get("step", 0)) for r in ranks}

    first = status()
    pids = pids_by_rank(read_events(events), 0)
    assert {r.get("rank", 0): r["pid"] for r in first["ranks"]} == pids
    job.wait_for(
        lambda: all(s > steps(first)[r] for r, s in steps(status()).items()),
        60,
        "every rank's step to advance in status",
    )
    table = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "status", "--address", address],
        cwd=REPO,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for pid in pids.values():
        assert f" {pid} " in table
    assert "state running" in table
    job.kill_tree()


def test_a_foreign_supervisor_package_is_named_in_one_line(tmp_path: Path) -> None:
    """supervisord's import name is also `supervisor`: say so instead of a traceback."""
    foreign = tmp_path / "site" / "supervisor"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text("# supervisord\n")
    script = tmp_path / "train.py"
    script.write_text("pass\n")
    env = job_env(PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(REPO)]))
    done = subprocess.run(
        [sys.executable, "-m", "launcher.launch.main", "--standalone", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == exit_codes.USAGE_ERROR
    assert f"imported from {foreign / '__init__.py'} is not train-supervisor's" in done.stderr


def test_preimported_modules_are_loaded_and_frozen_before_the_script_starts(
    tmp_path: Path,
) -> None:
    """Frozen, they are out of the collection that ends a failed generation (launcher/bootstrap)."""
    seen: dict[str, dict[str, Any]] = {}
    for preimport in ("torch._dynamo", "none"):
        out = tmp_path / preimport
        out.mkdir()
        job = train_launch(
            ["--standalone", "--nproc-per-node", "1", "--preimport", preimport],
            [str(out)],
            script=REPO / "tests" / "workloads" / "report_start.py",
        )
        assert job.wait(120) == 0, job.stderr
        seen[preimport] = json.loads((out / "rank_0.json").read_text())
    assert seen["torch._dynamo"]["dynamo"] and not seen["none"]["dynamo"]
    # torch._dynamo and sympy are over 100k objects.
    assert seen["torch._dynamo"]["frozen"] > seen["none"]["frozen"] + 50_000, seen


@pytest.mark.slow
def test_workers_keep_freed_memory_for_reuse_unless_turned_off_or_the_user_tuned_malloc(
    tmp_path: Path,
) -> None:
    """--reuse-freed-memory: what a failed generation frees, the re-entered script reuses."""
    seen: dict[str, dict[str, Any]] = {}
    runs = {
        "default": ([], {}),
        "off": (["--reuse-freed-memory", "off"], {}),
        # The user's own setting wins (glibc's default threshold, spelled out).
        "user": ([], {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}),
    }
    quick = ["--standalone", "--nproc-per-node", "1", "--warm-spares", "0", "--preimport", "none"]
    for name, (flags, extra_env) in runs.items():
        out = tmp_path / name
        out.mkdir()
        job = train_launch(
            [*quick, *flags],
            [str(out)],
            job_env(**extra_env),
            script=REPO / "tests" / "workloads" / "report_malloc.py",
        )
        assert job.wait(120) == 0, job.stderr
        seen[name] = json.loads((out / "rank_0.json").read_text())
    # Served from the heap and kept there; the script's environment is torchrun's.
    assert seen["default"] == {"tunables": None, "mmapped": False, "kept_after_free": True}
    assert seen["off"] == {"tunables": None, "mmapped": True, "kept_after_free": False}
    assert seen["user"] == {
        "tunables": "glibc.malloc.mmap_threshold=131072",
        "mmapped": True,
        "kept_after_free": False,
    }


TORCHRUN_C10D_PORT = 29400
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[train-launch\] [A-Z]+ ")


def test_standalone_next_to_a_held_29400_logs_timed_lines_and_no_invented_kill_sender() -> None:
    """Three small faults of one standalone run: the embedded supervisor had the fixed port
    29400 (torchrun's c10d default; a run failed to start next to a process holding it);
    text lines had no time; a rank that SIGKILLed itself was reported killed "from outside"."""
    with contextlib.ExitStack() as stack:
        holder = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        with contextlib.suppress(OSError):  # already held by someone else: as good
            holder.bind(("127.0.0.1", TORCHRUN_C10D_PORT))
            holder.listen()
        launch = [
            "--standalone",
            "--nproc-per-node",
            "2",
            "--warm-spares",
            "0",
            "--max-restarts",
            "2",
        ]
        script = ["--steps", "8", "--kill-self-rank", "1", "--kill-self-at-step", "3"]
        job = RunningJob(
            [sys.executable, "-m", "launcher.launch.main", *launch, str(TOY_DDP), *script]
        )
        assert job.wait(180) == exit_codes.SUCCEEDED, job.stderr
    assert not job.supervisor_address().endswith(f":{TORCHRUN_C10D_PORT}")
    ours = [line for line in job.stderr_lines if "[train-launch]" in line]
    assert ours and all(TEXT_LINE.match(line) for line in ours), ours
    assert "killed by SIGKILL; sender unknown" in job.stderr
    assert "from outside" not in job.stderr
