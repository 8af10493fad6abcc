"""supervisor/detect/hang_watch.py over a real job state and real processes, `now` passed
explicitly."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
from effects import launcher_commands, make_spec, play_pod

from supervisor.detect.hang_watch import HangWatch
from supervisor.rules.classify import HUNG_SIGNATURE
from supervisor.rules.effects import Effect, Kill
from supervisor.rules.hang import HangSettings
from supervisor.rules.job import JobState
from supervisor.rules.restart_policy import RestartPolicy

SETTINGS = HangSettings(floor_s=3.0, factor=5.0, startup_s=60.0)
START = 100.0
NO_SUCH_PID = 2**22 + 1000  # above any pid_max: psutil finds no such process


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Real idle processes standing in for rank 0, rank 1 and the spare."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) for _ in range(3)
    ]
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def wait_until_stopped(pid: int) -> None:
    """SIGSTOP is delivered asynchronously: wait for the kernel to show the process stopped."""
    deadline = time.monotonic() + 10
    while psutil.Process(pid).status() != psutil.STATUS_STOPPED:
        assert time.monotonic() < deadline, f"pid {pid} never showed as stopped"
        time.sleep(0.01)


def look(watch: HangWatch, job: JobState, now: float) -> list[Effect]:
    """One tick's look, applied as the core applies it (supervisor/rpc/service.py)."""
    return [effect for found in watch.check(job, now) for effect in job.hang_found(found)]


def started_job(pids: list[int]) -> JobState:
    job = JobState(
        spec=make_spec(nproc=2, spares=1),
        policy=RestartPolicy(max_restarts=3, crash_loop_threshold=3),
        allocate_port=itertools.count(40000).__next__,
    )
    play_pod(job, job.attach_launcher(), iter(pids).__next__, START)
    assert job.started
    return job


def test_a_generation_that_never_steps_is_watched_against_the_startup_allowance(
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """A re-entry stuck before its first step (in init_process_group, say) sends no heartbeat
    at all: it must still be found once the startup allowance is over, stopped rank first."""
    job = started_job([p.pid for p in processes])
    stuck = job.ranks[1].pid
    processes[[p.pid for p in processes].index(stuck)].send_signal(signal.SIGSTOP)
    wait_until_stopped(stuck)
    watch = HangWatch(SETTINGS)
    assert look(watch, job, START) == []  # first seen: the allowance starts now
    assert look(watch, job, START + SETTINGS.startup_s - 1) == []
    effects = look(watch, job, START + SETTINGS.startup_s + 1)
    assert [(c.pid, c.signal) for c in launcher_commands(effects, Kill)] == [
        (stuck, signal.SIGKILL)
    ]
    assert job.events.by_kind["hang"] == 1


def test_a_reentry_stuck_before_its_first_step_falls_back_to_fresh_processes() -> None:
    """Rank 1 is killed; the survivor re-enters and it and the replacement wait forever in
    the new generation's init (as the HF Trainer's gloo group did): nothing stands out, so
    the re-entered survivor is the culprit, and its rank gets a fresh process with no
    restart spent, as for any failed re-entry."""
    pids = itertools.count(NO_SUCH_PID)
    job = started_job([next(pids) for _ in range(3)])
    for slot in job.ranks.values():
        job.heartbeat(slot.pid, slot.generation, 5, 0.1, START + 1)
    killed, survivor = job.ranks[1].pid, job.ranks[0].pid
    play_pod(
        job, job.process_exited(killed, 0, signal.SIGKILL, "", START + 2), pids.__next__, START + 2
    )
    assert job.generation == 1 and job.ranks[0].pid == survivor and job.restart_count == 1
    watch = HangWatch(SETTINGS)
    assert look(watch, job, START + 3) == []
    effects = look(watch, job, START + 4 + SETTINGS.startup_s)
    assert [c.pid for c in launcher_commands(effects, Kill)] == [survivor]
    play_pod(
        job,
        job.process_exited(survivor, 0, signal.SIGKILL, "", START + 70),
        pids.__next__,
        START + 70,
    )
    assert job.fresh_processes and job.restart_count == 1
    assert job.events.by_kind["reentry_fallback"] == 1


def test_the_watch_only_reads_the_job_and_the_job_applies_what_it_found(
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """The watch hands its finding over; the job is unchanged until it applies it (the event,
    the rank's hung evidence, the kill)."""
    job = started_job([p.pid for p in processes])
    stuck = job.ranks[1].pid
    processes[[p.pid for p in processes].index(stuck)].send_signal(signal.SIGSTOP)
    wait_until_stopped(stuck)
    watch = HangWatch(SETTINGS)
    assert watch.check(job, START) == []
    events = len(job.events)
    [found] = watch.check(job, START + SETTINGS.startup_s + 1)
    assert found.culprit is not None and (found.culprit.rank, found.pid) == (1, stuck)
    assert len(job.events) == events and job.ranks[1].evidence is None, "the watch wrote"
    effects = job.hang_found(found)
    assert [c.pid for c in launcher_commands(effects, Kill)] == [stuck]
    assert job.events.by_kind["hang"] == 1
    evidence = job.ranks[1].evidence
    assert evidence is not None and evidence.signature == HUNG_SIGNATURE
