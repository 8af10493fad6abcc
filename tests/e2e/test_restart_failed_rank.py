"""4-rank DDP under train-launch: a dead rank gets a new process, nobody else does."""

from __future__ import annotations

import os
import re
import signal
from datetime import datetime, timezone
from pathlib import Path

import pytest
from jobs import RunningJob, job_env, max_step, pids_by_rank, read_events, train_launch

from train_supervisor import exit_codes

pytestmark = pytest.mark.slow

STEPS = 30
GENERATION_1_STARTED = re.compile(r"^(\S+)Z \S+ INFO generation_started: generation 1,", re.M)
CKPT_EVERY = 5


def script_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--steps",
        str(STEPS),
        "--ckpt-every",
        str(CKPT_EVERY),
        "--step-sleep",
        "0.05",
        "--events",
        str(tmp_path / "events"),
        "--ckpt-dir",
        str(tmp_path / "ckpt"),
        *extra,
    ]


def launch_args(spares: int) -> list[str]:
    return [
        "--standalone",
        "--nproc-per-node",
        "4",
        "--max-restarts",
        "3",
        "--warm-spares",
        str(spares),
    ]


def kill_rank_after_checkpoint(
    job: RunningJob, tmp_path: Path, rank: int
) -> tuple[dict[int, int], int]:
    """SIGKILL `rank` once a checkpoint exists; returns (gen-0 pids, newest checkpoint step)."""
    events_dir = tmp_path / "events"
    job.wait_for(
        lambda: max_step(read_events(events_dir), rank) >= CKPT_EVERY + 2,
        120,
        f"rank {rank} to pass step {CKPT_EVERY + 2}",
    )
    events = read_events(events_dir)
    before = pids_by_rank(events, generation=0)
    checkpoints = [e["step"] for e in events if e["event"] == "checkpoint"]
    os.kill(before[rank], signal.SIGKILL)
    return before, max(checkpoints)


def assert_resumed_in_place(
    tmp_path: Path, before: dict[int, int], victim: int, checkpoint: int
) -> dict[int, int]:
    events = read_events(tmp_path / "events")
    after = pids_by_rank(events, generation=1)
    assert sorted(after) == [0, 1, 2, 3]
    for rank in (0, 1, 2, 3):
        if rank == victim:
            assert after[rank] != before[rank], "the killed rank needs a new process"
        else:
            assert after[rank] == before[rank], f"survivor rank {rank} must keep its PID"
    resumed = {
        e["rank"]: e["from_step"] for e in events if e["event"] == "resumed" and e["gen"] == 1
    }
    # The script's own resume logic: every rank reloaded the newest checkpoint
    # (at least the one that existed at the kill) and finished the run.
    assert len(set(resumed.values())) == 1 and min(resumed.values()) >= checkpoint, resumed
    done = {e["rank"]: e["step"] for e in events if e["event"] == "done"}
    assert done == dict.fromkeys(range(4), STEPS)
    assert {e["gen"] for e in events if e["event"] == "done"} == {1}
    return after


def test_sigkill_gives_a_new_process_only_to_the_failed_rank(tmp_path: Path) -> None:
    job = train_launch(launch_args(spares=0), script_args(tmp_path))
    before, checkpoint = kill_rank_after_checkpoint(job, tmp_path, rank=2)
    assert job.wait(240) == 0, job.stderr
    after = assert_resumed_in_place(tmp_path, before, victim=2, checkpoint=checkpoint)
    assert after[2] not in before.values()


def test_warm_spare_takes_the_failed_rank(tmp_path: Path) -> None:
    job = train_launch(launch_args(spares=1), script_args(tmp_path))
    job.wait_for(
        lambda: len(pids_by_rank(read_events(tmp_path / "events"), 0)) == 4,
        120,
        "all ranks to start",
    )
    ranks = set(pids_by_rank(read_events(tmp_path / "events"), 0).values())
    # The launcher's only other child is the idle spare, waiting with torch imported.
    spares = {p.pid for p in job.children() if p.pid not in ranks and p.ppid() == job.proc.pid}
    assert len(spares) == 1, spares
    before, checkpoint = kill_rank_after_checkpoint(job, tmp_path, rank=1)
    assert job.wait(240) == 0, job.stderr
    after = assert_resumed_in_place(tmp_path, before, victim=1, checkpoint=checkpoint)
    assert after[1] == spares.pop(), "the warm spare's PID must become rank 1's"


def importers(marker: Path) -> list[int]:
    return [int(line) for line in marker.read_text().split()] if marker.exists() else []


def test_a_warm_spare_imports_what_the_ranks_imported_before_it_takes_a_rank(
    tmp_path: Path,
) -> None:
    """Else the new rank imports the script's modules (and DDP's torch._dynamo) while every
    survivor waits for it at the first collective."""
    marker, events = tmp_path / "imported_by", tmp_path / "events"
    job = train_launch(
        ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "--warm-spares", "1"],
        ["--steps", "150", "--step-sleep", "0.05", "--events", str(events), "--import-marker"],
        job_env(IMPORT_MARKER=str(marker)),
    )
    job.wait_for(lambda: len(pids_by_rank(read_events(events), 0)) == 2, 120, "both ranks")
    before = pids_by_rank(read_events(events), 0)

    def spares() -> list[int]:
        children = [p for p in job.children() if p.ppid() == job.proc.pid]
        return [p.pid for p in children if p.pid not in before.values()]

    job.wait_for(lambda: len(spares()) == 1, 60, "the warm spare")
    [spare] = spares()
    job.wait_for(lambda: spare in importers(marker), 60, "the idle spare to import the module")
    os.kill(before[1], signal.SIGKILL)
    assert job.wait(120) == 0, job.stderr
    assert pids_by_rank(read_events(events), 1)[1] == spare
    # Imported once per process: the spare's import served it as rank 1. (The spare started
    # after the recovery may have imported it as well.)
    imported = importers(marker)
    assert len(imported) == len(set(imported)), imported
    assert {before[0], before[1], spare} <= set(imported), imported


def test_a_warm_spare_imports_the_scripts_modules_before_any_rank_steps(tmp_path: Path) -> None:
    """A script imports most of what it needs (transformers, megatron-core, DeepSpeed) before
    its first step; a spare told of it only at the first step was still importing it when a
    rank failed a few steps later. Rank 0 imports the script's module and then takes its time
    before its process group, so no rank steps while the spare must learn of the module."""
    marker, events = tmp_path / "imported_by", tmp_path / "events"
    job = train_launch(
        ["--standalone", "--nproc-per-node", "2", "--max-restarts", "0", "--warm-spares", "1"],
        ["--steps", "5", "--events", str(events), "--import-marker", "--late-store-s", "90"],
        job_env(IMPORT_MARKER=str(marker)),
    )
    try:
        job.wait_for(lambda: len(pids_by_rank(read_events(events), 0)) == 2, 120, "both ranks")
        ranks = set(pids_by_rank(read_events(events), 0).values())

        def spare_imported() -> bool:
            children = {p.pid for p in job.children() if p.ppid() == job.proc.pid}
            return bool((children - ranks) & set(importers(marker)))

        job.wait_for(spare_imported, 60, "the idle spare to import the script's module")
        stepped = [max_step(read_events(events), rank) for rank in (0, 1)]
        assert stepped == [0, 0], f"no rank may have stepped yet: {stepped}"
    finally:
        job.kill_tree()


def test_the_dead_generations_cycles_are_freed_before_a_survivor_reenters(tmp_path: Path) -> None:
    """The unwind's full collection frees them, though what outlives a generation is frozen
    out of that collection (gc.freeze) to keep it short."""
    events = tmp_path / "events"
    rank_1_dies = ["--kill-self-rank", "1", "--kill-self-at-step", "3"]
    job = train_launch(
        ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "--warm-spares", "0"],
        ["--steps", "6", "--events", str(events), "--cyclic-garbage", *rank_1_dies],
    )
    assert job.wait(120) == 0, job.stderr
    records = read_events(events)
    assert pids_by_rank(records, 0)[0] == pids_by_rank(records, 1)[0], "rank 0 re-entered"
    # (Generation 1's cycle is freed too, when its script ends.)
    [freed] = [
        e["t"] for e in records if e["event"] == "cycle_freed" and e["rank"] == 0 and e["gen"] == 0
    ]
    [reentered] = [
        e["t"] for e in records if e["event"] == "start" and e["gen"] == 1 and e["rank"] == 0
    ]
    assert freed < reentered, "generation 0's cycle must be gone before generation 1 begins"


def test_the_next_generation_starts_while_a_survivor_collects_the_dead_ones_garbage(
    tmp_path: Path,
) -> None:
    """A survivor reports itself out of the generation before its full collection, which walks
    everything the script made (imports included): the next generation forms meanwhile. Rank 0
    holds two million small cycles, a collection of about a second."""
    events = tmp_path / "events"
    rank_1_dies = ["--kill-self-rank", "1", "--kill-self-at-step", "3"]
    garbage = ["--cyclic-garbage", "--garbage-cycles", "2000000"]
    job = train_launch(
        ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "--warm-spares", "1"],
        ["--steps", "6", "--events", str(events), *garbage, *rank_1_dies],
    )
    assert job.wait(180) == 0, job.stderr
    records = read_events(events)
    assert pids_by_rank(records, 0)[0] == pids_by_rank(records, 1)[0], "rank 0 re-entered"
    [freed] = [
        e["t"] for e in records if e["event"] == "cycle_freed" and e["rank"] == 0 and e["gen"] == 0
    ]
    [started] = [
        datetime.fromisoformat(m.group(1)).replace(tzinfo=timezone.utc).timestamp()
        for m in re.finditer(
            r"^(\S+)Z \S+ INFO generation_started: generation 1,", job.stderr, re.M
        )
    ]
    assert started < freed, "generation 1 must start while rank 0 still collects generation 0"


def test_a_rank_that_cannot_unwind_is_killed_and_respawned(tmp_path: Path) -> None:
    # Rank 3 sleeps in C at step 8, where no exception can reach it; rank 1 dies at step 10.
    job = train_launch(
        [*launch_args(spares=0), "--unwind-timeout", "2"],
        script_args(tmp_path, "--hang-rank", "3", "--hang-at-step", "8"),
    )
    events_dir = tmp_path / "events"
    job.wait_for(
        lambda: any(e["event"] == "hanging" for e in read_events(events_dir)), 120, "rank 3 to hang"
    )
    before = pids_by_rank(read_events(events_dir), generation=0)
    os.kill(before[1], signal.SIGKILL)
    job.wait_for(
        lambda: len(pids_by_rank(read_events(events_dir), 1)) == 4, 120, "generation 1 to start"
    )
    after = pids_by_rank(read_events(events_dir), generation=1)
    assert after[0] == before[0] and after[2] == before[2]
    assert after[1] != before[1] and after[3] != before[3]
    assert "did not unwind within 2.0s" in job.stderr
    # Generation 1 hangs again (same flags); the test has shown what it needs.
    job.kill_tree()


def test_repeated_value_error_stops_the_job_as_a_crash_loop(tmp_path: Path) -> None:
    job = train_launch(
        [
            "--standalone",
            "--nproc-per-node",
            "4",
            "--max-restarts",
            "10",
            "--warm-spares",
            "0",
            "--crash-loop-threshold",
            "3",
            "--failure-settle",
            "0.5",
        ],
        [
            "--steps",
            "20",
            "--events",
            str(tmp_path / "events"),
            "--raise-at-step",
            "5",
            "--raise-rank",
            "1",
            # Resumed from its step-5 checkpoint, the script fails at once, again and again:
            # no progress. (Started over from step 0 it trains 5 steps per generation, which
            # the job-wide step counts as progress since issue 21: the budget ends that.)
            "--ckpt-dir",
            str(tmp_path / "ckpt"),
            "--ckpt-every",
            "5",
        ],
    )
    assert job.wait(240) == exit_codes.GAVE_UP, job.stderr
    report = job.stderr
    assert "crash loop" in report and "budget" not in report
    assert "rank: 1" in report
    assert "step: 5" in report
    assert "ValueError: bad batch at step 5" in report
    events = read_events(tmp_path / "events")
    generations = {e["gen"] for e in events if e["event"] == "start"}
    assert generations == {0, 1, 2}, "three failures, two restarts of ten, then the rule fires"
