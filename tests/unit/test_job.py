"""supervisor/rules/job.py: the pod's job state machine, driven event by event.

No clock and no processes: ports come from a counter, pids from another, and
`now` is passed explicitly. Helpers play the launcher and the bootstrap where a
test is about what happens after (spawn -> attach, abort -> unwound).
"""

from __future__ import annotations

import dataclasses
import itertools
import signal
from collections.abc import Iterator, Sequence

import pytest
from effects import (
    ERROR_DIR,
    aborts,
    exits,
    launcher_commands,
    make_spec,
    play_pod,
    shutdowns,
    starts,
    wire_spec,
)

from launcher.launch.args import parse_args
from launcher.launch.main import worker_spec
from supervisor.rules.effects import (
    Abort,
    Assigned,
    Effect,
    Exit,
    Kill,
    Shutdown,
    Spawn,
    ToLauncher,
    ToWorker,
)
from supervisor.rules.failure_evidence import FailureDetail
from supervisor.rules.job import JobState, Timings
from supervisor.rules.restart_policy import DEFAULT_CRASH_LOOP_WINDOW_S, RestartPolicy
from train_supervisor import exit_codes
from train_supervisor.v1 import supervisor_pb2 as pb

WS = pb.WorkerState
FIRST_PORT = 40000


# ------------------------------------------------------------ effect filters
def spawns(effects: Sequence[Effect]) -> list[Spawn]:
    return launcher_commands(effects, Spawn)


def kills(effects: Sequence[Effect]) -> list[Kill]:
    return launcher_commands(effects, Kill)


def assignments(effects: Sequence[Effect]) -> list[Assigned]:
    return launcher_commands(effects, Assigned)


def rank_spawns(effects: Sequence[Effect]) -> list[int]:
    return sorted(s.rank for s in spawns(effects) if not s.spare)


def spare_spawns(effects: Sequence[Effect]) -> int:
    return sum(1 for s in spawns(effects) if s.spare)


# ------------------------------------------------------------------ harness
class Sim:
    """One JobState plus the pod around it."""

    def __init__(
        self,
        *,
        nproc: int = 2,
        spares: int = 1,
        max_restarts: int = 3,
        bootstrapped: bool = True,
        threshold: int = 3,
        unwind_timeout: float = 10.0,
        crash_loop_window_s: float = DEFAULT_CRASH_LOOP_WINDOW_S,
    ) -> None:
        self.spec = make_spec(
            nproc=nproc, spares=spares, max_restarts=max_restarts, bootstrapped=bootstrapped
        )
        self.ports: Iterator[int] = itertools.count(FIRST_PORT)
        self.job = JobState(
            spec=self.spec,
            policy=RestartPolicy(max_restarts, threshold, crash_loop_window_s),
            allocate_port=self.ports.__next__,
            timings=Timings(unwind_timeout_s=unwind_timeout),
        )
        self._pids = itertools.count(1000)
        self.now = 100.0

    def new_pid(self) -> int:
        return next(self._pids)

    def pid(self, rank: int) -> int:
        pid = self.job.ranks[rank].pid
        assert pid, f"rank {rank} has no process"
        return pid

    def play(self, effects: list[Effect]) -> list[Effect]:
        """Run the launcher's and bootstrap's side until nothing is pending.

        Every SpawnWorker becomes a process: the launcher reports a rank's
        process started (as launcher/launch/main.py does before its exit can be seen;
        the service drops the report of a spare), then, with the bootstrap, the
        process attaches. Every AbortGeneration is answered with OUTCOME_UNWOUND.
        Returns the input effects and everything that followed.
        """
        return play_pod(self.job, effects, self.new_pid, self.now)

    def launch(self) -> list[Effect]:
        return self.play(self.job.attach_launcher())

    def step_all(self, step: int = 1) -> list[Effect]:
        """Every rank heartbeats `step` in its current generation, rank by rank."""
        effects: list[Effect] = []
        for rank, slot in sorted(self.job.ranks.items()):
            effects += self.job.heartbeat(self.pid(rank), slot.generation, step, 0.1, self.now)
        return effects

    def raise_and_exit(self, rank: int, detail: pb.FailureDetail, step: int) -> list[Effect]:
        """The rank's script raises at `step`; the settle window passes; the process exits 1."""
        pid = self.pid(rank)
        generation = self.job.ranks[rank].generation
        self.play(self.job.heartbeat(pid, generation, step, 0.1, self.now))
        verdict, effects = self.job.outcome(
            pid, generation, pb.OutcomeKind.OUTCOME_RAISED, detail, self.now
        )
        assert verdict is None and effects == []  # undecided until the settle window ends
        verdict, effects = self.job.settle(pid)
        assert verdict == pb.Verdict.VERDICT_EXIT_FAILED
        assert effects == []
        return self.play(self.job.process_exited(pid, 1, 0, "Traceback ...", self.now))


def boom(message: str = "bad batch") -> pb.FailureDetail:
    return FailureDetail(
        exception_type="ValueError",
        message=message,
        traceback=f"Traceback (most recent call last):\nValueError: {message}\n",
        signature=f"ValueError: {message} @ train.py:42",
    )


@pytest.fixture
def sim() -> Sim:
    return Sim()


# ---------------------------------------------------------------- the spec
def test_spec_helper_matches_the_launchers_worker_spec() -> None:
    argv = ["--nproc-per-node", "2", "--max-restarts", "3", "--rdzv-id", "job1", "-m", "train"]
    assert worker_spec(parse_args(argv, {}, 8), ERROR_DIR) == wire_spec()
    no_python = parse_args(
        [
            "--no-python",
            "--nproc-per-node",
            "2",
            "--rdzv-id",
            "job1",
            "--max-restarts",
            "3",
            "/bin/sh",
        ],
        {},
        8,
    )
    assert worker_spec(no_python, ERROR_DIR) == wire_spec(spares=0, bootstrapped=False)


# ------------------------------------------------------------------ startup
def test_attach_launcher_spawns_every_rank_and_the_warm_spares() -> None:
    sim = Sim(nproc=3, spares=2)
    effects = sim.job.attach_launcher()
    assert all(isinstance(e, ToLauncher) for e in effects)
    assert rank_spawns(effects) == [0, 1, 2]
    assert {(s.rank, s.local_rank) for s in spawns(effects) if not s.spare} == {
        (0, 0),
        (1, 1),
        (2, 2),
    }
    assert spare_spawns(effects) == 2
    assert all(s.rank == -1 for s in spawns(effects) if s.spare)
    # Bootstrapped workers get their env with StartGeneration, not at spawn.
    assert all(not s.env for s in spawns(effects))
    assert sim.job.state == pb.JobState.JOB_STATE_STARTING


def test_generation_starts_only_when_every_rank_attached(sim: Sim) -> None:
    sim.job.attach_launcher()
    assert sim.job.worker_attached(1000, -1, spare=True) == []
    assert sim.job.worker_attached(1001, 0, spare=False) == []
    assert not sim.job.started
    effects = sim.job.worker_attached(1002, 1, spare=False)
    assert sim.job.started
    assert sim.job.state == pb.JobState.JOB_STATE_RUNNING
    started = starts(effects)
    assert set(started) == {1001, 1002}  # the spare is not part of the generation
    for pid, rank in ((1001, 0), (1002, 1)):
        start = started[pid]
        assert start.generation == 0
        assert (start.rank, start.local_rank) == (rank, rank)
        env = dict(start.env)
        assert env["RANK"] == str(rank)
        assert env["LOCAL_RANK"] == str(rank)
        assert env["WORLD_SIZE"] == "2"
        assert env["LOCAL_WORLD_SIZE"] == "2"
        assert env["MASTER_ADDR"] == "127.0.0.1"
        assert env["MASTER_PORT"] == str(FIRST_PORT)
        assert env["TORCHELASTIC_RESTART_COUNT"] == "0"
        assert env["TORCHELASTIC_MAX_RESTARTS"] == "3"
        assert env["TORCHELASTIC_RUN_ID"] == "job1"
        assert env["OMP_NUM_THREADS"] == "1"
        assert env["TORCHELASTIC_ERROR_FILE"].startswith(ERROR_DIR)
    assert sim.job.spares.idle == [1000]


def test_second_node_holds_the_global_ranks_of_its_slice() -> None:
    spec = make_spec(nproc=2, spares=1)
    spec.nnodes, spec.node_rank = 2, 1
    job = JobState(
        spec=spec, policy=RestartPolicy(max_restarts=3), allocate_port=itertools.count(1).__next__
    )
    assert sorted(job.ranks) == [2, 3]
    assert rank_spawns(job.attach_launcher()) == [2, 3]
    job.worker_attached(70, 2, spare=False)
    started = starts(job.worker_attached(71, 3, spare=False))
    assert {pid: (s.rank, s.local_rank) for pid, s in started.items()} == {70: (2, 0), 71: (3, 1)}
    env = dict(started[71].env)
    assert (env["RANK"], env["LOCAL_RANK"], env["GROUP_RANK"]) == ("3", "1", "1")
    assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["GROUP_WORLD_SIZE"]) == ("4", "2", "2")


def test_launch_runs_generation_zero(sim: Sim) -> None:
    effects = sim.launch()
    assert len(starts(effects)) == 2
    assert len(sim.job.spares.idle) == 1
    assert sim.job.generation == 0 and sim.job.restart_count == 0
    assert all(s.state == WS.WORKER_STATE_HEALTHY for s in sim.job.ranks.values())


# ---------------------------------------------------------------- a SIGKILL
def test_sigkilled_rank_opens_the_next_generation(sim: Sim) -> None:
    sim.launch()
    survivor, victim, spare = sim.pid(0), sim.pid(1), sim.job.spares.idle[0]
    effects = sim.job.process_exited(victim, 0, signal.SIGKILL, "", sim.now)

    assert sim.job.generation == 1
    assert sim.job.restart_count == 1
    assert sim.job.master_port == FIRST_PORT + 1  # a fresh port: no stale TCPStore
    assert sim.job.state == pb.JobState.JOB_STATE_RESTARTING
    assert aborts(effects) == {survivor: Abort(generation=0, reason="a rank failed")}
    assert sim.job.ranks[0].state == WS.WORKER_STATE_UNWINDING
    # The idle spare takes the rank: no new process for rank 1, and no new
    # spare yet either (it is spawned once the new generation is stepping).
    assert [(a.pid, a.rank, a.local_rank) for a in assignments(effects)] == [(spare, 1, 1)]
    assert rank_spawns(effects) == []
    assert spare_spawns(effects) == 0
    assert sim.job.ranks[1].pid == spare
    assert sim.job.spares.idle == []
    assert starts(effects) == {}  # the survivor has not unwound yet

    record = sim.job.failures[-1]
    assert (record.generation, record.rank, record.pid, record.signal) == (0, 1, victim, 9)
    assert record.detail.signature == "SIGKILL"
    assert record.action == "restart"
    [failure] = [e.message for e in sim.job.events if e.kind == "failure"]
    assert (
        "looks like transient (killed by SIGKILL; sender unknown, not the supervisor, "
        "no OOM kill seen)" in failure
    )


def test_the_failure_event_names_the_class_the_output_points_at(sim: Sim) -> None:
    sim.launch()
    tail = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    sim.job.process_exited(sim.pid(1), 1, 0, tail, sim.now)
    [failure] = [e.message for e in sim.job.events if e.kind == "failure"]
    assert "looks like out_of_memory (output: 'OutOfMemoryError')" in failure


def test_without_a_spare_the_failed_rank_gets_a_new_process() -> None:
    sim = Sim(spares=0)
    sim.launch()
    effects = sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now)
    assert assignments(effects) == []
    assert [(s.rank, s.local_rank, s.spare) for s in spawns(effects)] == [(1, 1, False)]
    assert sim.job.ranks[1].spawning


def test_survivors_unwind_and_the_new_process_attaches_then_generation_one_starts() -> None:
    sim = Sim(spares=0)
    sim.launch()
    survivor = sim.pid(0)
    sim.job.heartbeat(survivor, 0, 40, 0.1, sim.now)
    sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now)

    verdict, effects = sim.job.outcome(survivor, 0, pb.OutcomeKind.OUTCOME_UNWOUND, None, sim.now)
    assert verdict == pb.Verdict.VERDICT_WAIT
    assert effects == []  # rank 1 has no process yet
    assert sim.job.ranks[0].state == WS.WORKER_STATE_INIT
    assert sim.job.ranks[0].pid == survivor  # in place: same process

    newcomer = sim.new_pid()
    effects = sim.job.worker_attached(newcomer, 1, spare=False)
    started = starts(effects)
    assert set(started) == {survivor, newcomer}
    assert {pid: s.rank for pid, s in started.items()} == {survivor: 0, newcomer: 1}
    for start in started.values():
        assert start.generation == 1
        assert start.env["MASTER_PORT"] == str(FIRST_PORT + 1)
        assert start.env["TORCHELASTIC_RESTART_COUNT"] == "1"
        assert start.env["RANK"] == str(start.rank)
    assert sim.job.ranks[1].process_starts == 2
    assert sim.job.ranks[0].process_starts == 1
    assert sim.job.state == pb.JobState.JOB_STATE_RUNNING


def test_new_process_first_then_unwound_survivor_also_starts_the_generation() -> None:
    sim = Sim(spares=0)
    sim.launch()
    survivor = sim.pid(0)
    sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now)
    assert sim.job.worker_attached(sim.new_pid(), 1, spare=False) == []
    _, effects = sim.job.outcome(survivor, 0, pb.OutcomeKind.OUTCOME_UNWOUND, None, sim.now)
    assert {s.generation for s in starts(effects).values()} == {1}
    assert len(starts(effects)) == 2


def test_promoted_spare_starts_with_the_survivor(sim: Sim) -> None:
    sim.launch()
    survivor, spare = sim.pid(0), sim.job.spares.idle[0]
    sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now)
    _, effects = sim.job.outcome(survivor, 0, pb.OutcomeKind.OUTCOME_UNWOUND, None, sim.now)
    started = starts(effects)
    assert {pid: (s.rank, s.generation) for pid, s in started.items()} == {
        survivor: (0, 1),
        spare: (1, 1),
    }


def test_raised_on_a_peers_death_is_an_echo_not_a_failure(sim: Sim) -> None:
    """A survivor whose collective errored because the peer died stays in place."""
    sim.launch()
    survivor = sim.pid(0)
    verdict, _ = sim.job.outcome(survivor, 0, pb.OutcomeKind.OUTCOME_RAISED, boom("gloo"), sim.now)
    assert verdict is None
    sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now)  # news of the death
    verdict, effects = sim.job.settle(survivor)
    assert verdict == pb.Verdict.VERDICT_WAIT
    assert set(starts(effects)) == {survivor, sim.pid(1)}
    assert len(sim.job.history) == 1
    assert sim.job.history[0].signature == "SIGKILL"


def test_a_stale_outcome_is_ignored(sim: Sim) -> None:
    sim.launch()
    survivor = sim.pid(0)
    sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    assert sim.job.ranks[0].generation == 1
    verdict, effects = sim.job.outcome(survivor, 0, pb.OutcomeKind.OUTCOME_RAISED, boom(), sim.now)
    assert (verdict, effects) == (pb.Verdict.VERDICT_WAIT, [])
    assert sim.job.ranks[0].state == WS.WORKER_STATE_HEALTHY


# ---------------------------------------------------------- unwind deadline
def test_survivor_that_does_not_unwind_is_killed_and_its_exit_is_collateral(sim: Sim) -> None:
    sim.launch()
    stuck = sim.pid(0)
    failed_at = sim.now
    sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", failed_at)
    assert sim.job.tick(failed_at + 9.999) == []

    effects = sim.job.tick(failed_at + 10.0)
    assert [(k.pid, k.signal) for k in kills(effects)] == [(stuck, signal.SIGKILL)]
    assert "unwind" in kills(effects)[0].reason
    assert sim.job.tick(failed_at + 20.0) == []  # killed once, not on every tick

    effects = sim.play(sim.job.process_exited(stuck, 0, signal.SIGKILL, "", failed_at + 10.1))
    assert len(sim.job.history) == 1  # no new failure
    assert len(sim.job.failures) == 1
    assert sim.job.restart_count == 1  # no extra restart counted
    assert sim.job.generation == 1
    assert rank_spawns(effects) == [0]  # rank 0 respawned (the spare went to rank 1)
    started = starts(effects)
    assert {s.rank for s in started.values()} == {0, 1}
    assert {s.generation for s in started.values()} == {1}
    assert stuck not in started
    assert sim.job.ranks[0].process_starts == 2


def test_unwound_survivor_is_not_killed(sim: Sim) -> None:
    sim.launch()
    sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now)
    sim.job.outcome(sim.pid(0), 0, pb.OutcomeKind.OUTCOME_UNWOUND, None, sim.now)
    assert sim.job.tick(sim.now + 60) == []


def test_unwind_timeout_comes_from_timings() -> None:
    sim = Sim(unwind_timeout=2.0)
    sim.launch()
    sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", 50.0)
    assert sim.job.tick(51.9) == []
    assert len(kills(sim.job.tick(52.0))) == 1


# ---------------------------------------------------------------- give up
def test_crash_loop_gives_up_with_a_report() -> None:
    sim = Sim(max_restarts=10, threshold=3)
    sim.launch()
    # Step 5, then no further (step 5 of each generation was "no progress" before issue 21;
    # it is 5 steps of progress each time now: see test_steps_in_every_generation_are_progress).
    for attempt, step in enumerate((5, 0)):
        effects = sim.raise_and_exit(1, boom(), step=step)
        assert shutdowns(effects) == [], f"gave up early on attempt {attempt}"
        assert sim.job.generation == attempt + 1
        assert sim.job.started
    survivor, spare_pids = sim.pid(0), list(sim.job.spares.idle)
    effects = sim.raise_and_exit(1, boom(), step=0)

    [shutdown] = shutdowns(effects)
    assert shutdown.exit_code == exit_codes.GAVE_UP
    assert "crash loop" in shutdown.report
    assert "rank: 1" in shutdown.report
    assert "step: 5" in shutdown.report
    assert "ValueError: bad batch" in shutdown.report
    assert "Traceback" in shutdown.report
    assert sim.job.restart_count == 2  # stopped with 8 restarts left
    assert sim.job.state == pb.JobState.JOB_STATE_FAILED
    assert sim.job.failures[-1].action == "give_up_crash_loop"
    assert set(exits(effects)) == {survivor, *spare_pids}
    assert isinstance(effects[-1], ToLauncher) and isinstance(effects[-1].command, Shutdown)


def test_give_up_report_names_the_step_of_the_outcome() -> None:
    """Heartbeats are coalesced: the outcome's step is the exact one."""
    sim = Sim(max_restarts=0)
    sim.launch()
    pid = sim.pid(1)
    sim.job.heartbeat(pid, 0, 3, 0.1, sim.now)
    verdict, _ = sim.job.outcome(pid, 0, pb.OutcomeKind.OUTCOME_RAISED, boom(), sim.now, step=7)
    assert verdict is None
    assert sim.job.ranks[1].step == 7
    sim.job.settle(pid)
    effects = sim.job.process_exited(pid, 1, 0, "Traceback ...", sim.now)
    [shutdown] = shutdowns(effects)
    assert "step: 7" in shutdown.report
    assert sim.job.failures[-1].step == 7
    assert sim.job.history[-1].step == 7


def test_outcome_step_never_lowers_the_heartbeat_step() -> None:
    sim = Sim(max_restarts=0)
    sim.launch()
    pid = sim.pid(1)
    sim.job.heartbeat(pid, 0, 12, 0.1, sim.now)
    sim.job.outcome(pid, 0, pb.OutcomeKind.OUTCOME_RAISED, boom(), sim.now, step=4)
    assert sim.job.ranks[1].step == 12
    sim.job.settle(pid)
    [shutdown] = shutdowns(sim.job.process_exited(pid, 1, 0, "", sim.now))
    assert "step: 12" in shutdown.report


def test_outcome_step_defaults_to_the_heartbeat_step() -> None:
    sim = Sim(max_restarts=0)
    sim.launch()
    pid = sim.pid(0)
    sim.job.heartbeat(pid, 0, 9, 0.1, sim.now)
    sim.job.outcome(pid, 0, pb.OutcomeKind.OUTCOME_RAISED, boom(), sim.now)
    sim.job.settle(pid)
    [shutdown] = shutdowns(sim.job.process_exited(pid, 1, 0, "", sim.now))
    assert "step: 9" in shutdown.report


def test_stale_outcome_does_not_move_the_step(sim: Sim) -> None:
    sim.launch()
    survivor = sim.pid(0)
    sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    sim.job.outcome(survivor, 0, pb.OutcomeKind.OUTCOME_RAISED, boom(), sim.now, step=99)
    assert sim.job.ranks[0].step == 0


def test_same_error_with_progress_keeps_restarting() -> None:
    sim = Sim(max_restarts=10, threshold=3)
    sim.launch()
    for step in (5, 6, 7, 8):
        assert shutdowns(sim.raise_and_exit(1, boom(), step=step)) == []
    assert sim.job.restart_count == 4


def test_different_errors_keep_restarting() -> None:
    sim = Sim(max_restarts=10, threshold=3)
    sim.launch()
    for message in ("a", "b", "a", "b"):
        assert shutdowns(sim.raise_and_exit(0, boom(message), step=5)) == []
    assert sim.job.restart_count == 4


def test_budget_exhausted_gives_up() -> None:
    sim = Sim(max_restarts=1)
    sim.launch()
    effects = sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    assert shutdowns(effects) == []
    assert sim.job.restart_count == 1
    # Another rank fails: the budget is job-wide, rank 0 finds it spent.
    effects = sim.job.process_exited(sim.pid(0), 1, 0, "", sim.now)
    [shutdown] = shutdowns(effects)
    assert shutdown.exit_code == exit_codes.GAVE_UP
    assert "budget" in shutdown.report
    assert "rank: 0" in shutdown.report
    assert "exit code 1" in shutdown.report
    assert sim.job.restart_count == 1
    assert sim.job.state == pb.JobState.JOB_STATE_FAILED
    assert sim.job.failures[-1].action == "give_up_budget"
    assert set(exits(effects)) == {sim.pid(1), *sim.job.spares.idle}


def test_zero_restarts_gives_up_on_the_first_failure() -> None:
    sim = Sim(max_restarts=0)
    sim.launch()
    effects = sim.job.process_exited(sim.pid(0), 0, signal.SIGSEGV, "", sim.now)
    [shutdown] = shutdowns(effects)
    assert shutdown.exit_code == exit_codes.GAVE_UP
    assert "SIGSEGV" in shutdown.report
    assert aborts(effects) == {}


def test_nothing_restarts_after_the_job_is_over() -> None:
    sim = Sim(max_restarts=0)
    sim.launch()
    survivor = sim.pid(1)
    sim.job.process_exited(sim.pid(0), 0, signal.SIGKILL, "", sim.now)
    assert sim.job.over
    assert sim.job.process_exited(survivor, 0, signal.SIGTERM, "", sim.now) == []
    assert sim.job.ranks[1].state == WS.WORKER_STATE_STOPPED
    assert len(sim.job.history) == 1
    late = sim.job.worker_attached(sim.new_pid(), -1, spare=True)
    assert [e.command for e in late if isinstance(e, ToWorker)] == [Exit(0)]


def test_stop_prevents_restarts(sim: Sim) -> None:
    sim.launch()
    assert sim.job.stop("SIGTERM") == []
    assert sim.job.state == pb.JobState.JOB_STATE_STOPPED
    assert sim.job.process_exited(sim.pid(0), 0, signal.SIGTERM, "", sim.now) == []
    assert sim.job.restart_count == 0 and sim.job.history == []


# ---------------------------------------------------------------- success
def test_all_ranks_finished_shuts_down_with_success(sim: Sim) -> None:
    sim.launch()
    pids = [sim.pid(0), sim.pid(1)]
    spare = sim.job.spares.idle[0]
    verdict, effects = sim.job.outcome(pids[0], 0, pb.OutcomeKind.OUTCOME_FINISHED, None, sim.now)
    assert verdict == pb.Verdict.VERDICT_WAIT
    assert effects == []  # rank 1 is still training
    verdict, effects = sim.job.outcome(pids[1], 0, pb.OutcomeKind.OUTCOME_FINISHED, None, sim.now)
    assert verdict == pb.Verdict.VERDICT_WAIT
    [shutdown] = shutdowns(effects)
    assert shutdown.exit_code == exit_codes.SUCCEEDED == 0
    assert {pid: e.exit_code for pid, e in exits(effects).items()} == {
        pids[0]: 0,
        pids[1]: 0,
        spare: 0,
    }
    assert sim.job.state == pb.JobState.JOB_STATE_SUCCEEDED
    # Their exits afterwards are not failures.
    for pid in (*pids, spare):
        assert sim.job.process_exited(pid, 0, 0, "", sim.now) == []
    assert sim.job.history == []


def test_finished_rank_is_aborted_and_rerun_when_a_peer_fails(sim: Sim) -> None:
    sim.launch()
    done = sim.pid(0)
    sim.job.outcome(done, 0, pb.OutcomeKind.OUTCOME_FINISHED, None, sim.now)
    effects = sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now)
    assert set(aborts(effects)) == {done}
    assert shutdowns(effects) == []


# --------------------------------------------------------------- spares
def test_spare_that_dies_is_replaced_up_to_a_limit(sim: Sim) -> None:
    sim.launch()
    for lost in range(1, 4):
        spare = sim.job.spares.idle[0]
        effects = sim.job.process_exited(spare, 1, 0, "ImportError", sim.now)
        assert sim.job.spares.failures == lost
        if lost < 3:
            assert spare_spawns(effects) == 1
            sim.play(effects)
        else:
            assert effects == []  # max_spare_failures: stop feeding a broken spare
    assert sim.job.spares.idle == []
    assert sim.job.history == []  # a spare is not a rank: no restart
    assert sim.job.restart_count == 0


def test_spare_that_dies_before_attaching_is_replaced() -> None:
    sim = Sim()
    effects = sim.job.attach_launcher()
    assert sim.job.spares.spawning == 1
    effects = sim.job.process_exited(4242, 1, 0, "", sim.now)  # unknown pid: the spare
    assert sim.job.spares.spawning == 1  # one lost, one new on the way
    assert spare_spawns(effects) == 1
    assert sim.job.spares.failures == 1


def test_promoted_spare_is_replaced_only_once_the_new_generation_steps(sim: Sim) -> None:
    sim.launch()
    survivor, spare = sim.pid(0), sim.job.spares.idle[0]
    sim.job.heartbeat(survivor, 0, 50, 0.1, sim.now)  # stepping in generation 0
    effects = sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    assert sim.job.started and sim.job.generation == 1
    assert sim.pid(1) == spare
    # Promotion, unwinding and the start of generation 1 spawn no spare: its
    # torch import would compete with the recovering ranks for CPU.
    assert spare_spawns(effects) == 0
    assert sim.job.spares.idle == [] and sim.job.spares.spawning == 0

    # Not while only some ranks have stepped in generation 1 ...
    assert sim.job.heartbeat(survivor, 1, 1, 0.1, sim.now) == []
    assert sim.job.heartbeat(survivor, 1, 2, 0.1, sim.now) == []
    # ... but with the heartbeat that makes every rank step > 0 in it.
    effects = sim.job.heartbeat(spare, 1, 1, 0.1, sim.now)
    assert spare_spawns(effects) == 1
    assert [s.rank for s in spawns(effects)] == [-1]
    assert sim.job.spares.spawning == 1
    # Once: later heartbeats find the pool back at its target.
    assert sim.step_all(step=3) == []
    sim.play(effects)
    assert len(sim.job.spares.idle) == 1 and sim.job.spares.spawning == 0
    assert sim.step_all(step=4) == []


def test_no_spare_is_spawned_before_the_new_generation_starts(sim: Sim) -> None:
    sim.launch()
    survivor = sim.pid(0)
    sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now)
    assert not sim.job.started  # the survivor has not unwound yet
    # Late heartbeats from the aborted generation, and a step 0 one, do not count.
    assert sim.job.heartbeat(survivor, 0, 60, 0.1, sim.now) == []
    assert sim.job.heartbeat(sim.pid(1), 1, 5, 0.1, sim.now) == []  # not started: no generation
    sim.job.outcome(survivor, 0, pb.OutcomeKind.OUTCOME_UNWOUND, None, sim.now)
    assert sim.job.started
    assert sim.step_all(step=0) == []
    assert spare_spawns(sim.step_all(step=1)) == 1


def test_steps_of_the_previous_generation_do_not_replenish(sim: Sim) -> None:
    """A survivor's step of the aborted generation is not progress of the new one."""
    sim.launch()
    survivor = sim.pid(0)
    sim.job.heartbeat(survivor, 0, 80, 0.1, sim.now)
    sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    assert sim.job.heartbeat(sim.pid(1), 1, 1, 0.1, sim.now) == []  # survivor: step 0 of gen 1
    assert spare_spawns(sim.job.heartbeat(survivor, 1, 1, 0.1, sim.now)) == 1


def test_a_second_failure_before_stepping_finds_no_spare() -> None:
    sim = Sim(max_restarts=10, threshold=5)
    sim.launch()
    sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    assert sim.job.spares.idle == []
    # The promoted rank dies again before generation 1 takes a step.
    effects = sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now)
    assert sim.job.generation == 2
    assert assignments(effects) == []
    assert rank_spawns(effects) == [1]  # a fresh process for the rank
    assert spare_spawns(effects) == 0  # and still no spare until generation 2 steps
    sim.play(effects)
    assert sim.job.started and sim.job.generation == 2
    assert spare_spawns(sim.step_all()) == 1


def test_stepping_in_the_first_generation_spawns_no_extra_spare(sim: Sim) -> None:
    sim.launch()
    assert len(sim.job.spares.idle) == 1
    assert sim.step_all(step=1) == []
    assert sim.step_all(step=2) == []


def test_stepping_spawns_no_spare_when_none_are_wanted() -> None:
    sim = Sim(spares=0)
    sim.launch()
    sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    assert sim.job.started and sim.job.generation == 1
    assert sim.step_all() == []


def test_spare_that_dies_while_ranks_step_is_replaced_at_once(sim: Sim) -> None:
    sim.launch()
    sim.step_all()
    effects = sim.job.process_exited(sim.job.spares.idle[0], 1, 0, "", sim.now)
    assert spare_spawns(effects) == 1
    assert sim.step_all(step=2) == []  # already on its way: not spawned twice


def test_broken_spares_are_not_replenished_after_recovery_either(sim: Sim) -> None:
    sim.launch()
    for _ in range(2):  # two spares die on their own and are replaced at once
        sim.play(sim.job.process_exited(sim.job.spares.idle[0], 1, 0, "ImportError", sim.now))
    spare = sim.job.spares.idle[0]
    sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    assert sim.pid(1) == spare
    assert sim.job.spares.failures == 2
    assert spare_spawns(sim.step_all()) == 1  # still under max_spare_failures
    # That spare dies before attaching: the third failure, and the last replaced.
    assert sim.job.process_exited(sim.new_pid(), 1, 0, "", sim.now) == []
    assert sim.job.spares.failures == 3
    assert sim.step_all(step=2) == []  # max_spare_failures reached: stop feeding


# ------------------------------------------------- death before AttachWorker
def test_rank_process_reported_started_holds_its_pid_until_it_attaches() -> None:
    sim = Sim(spares=0)
    sim.job.attach_launcher()
    assert sim.job.process_started(500, 0) == []
    slot = sim.job.ranks[0]
    assert (slot.pid, slot.spawning, slot.process_starts) == (500, True, 0)
    assert sim.job.worker_attached(500, 0, spare=False) == []
    assert (slot.pid, slot.spawning, slot.process_starts) == (500, False, 1)
    assert slot.state == WS.WORKER_STATE_INIT


def test_process_started_after_the_attach_changes_nothing() -> None:
    """AttachWorker can overtake the launcher's ProcessStarted report."""
    sim = Sim(spares=0)
    sim.job.attach_launcher()
    sim.job.worker_attached(500, 0, spare=False)
    assert sim.job.process_started(500, 0) == []
    slot = sim.job.ranks[0]
    assert (slot.pid, slot.spawning, slot.process_starts) == (500, False, 1)
    assert slot.state == WS.WORKER_STATE_INIT


def test_rank_dying_before_attach_is_a_failure_of_the_rank() -> None:
    sim = Sim(spares=0)
    sim.job.attach_launcher()
    sim.job.process_started(500, 0)
    sim.job.process_started(501, 1)
    sim.job.worker_attached(500, 0, spare=False)
    effects = sim.job.process_exited(501, 1, 0, "ModuleNotFoundError: No module named 'x'", sim.now)

    assert len(sim.job.history) == 1
    record = sim.job.failures[-1]
    assert (record.generation, record.rank, record.pid, record.exit_code) == (0, 1, 501, 1)
    assert record.step == 0
    assert record.action == "restart"
    assert sim.job.restart_count == 1 and sim.job.generation == 1
    assert aborts(effects) == {}  # rank 0 never started generation 0: nothing to abort
    assert rank_spawns(effects) == [1]  # a new process for the rank: no hang
    slot = sim.job.ranks[1]
    assert (slot.pid, slot.spawning) == (0, True)

    # The new process comes up and generation 1 starts with the waiting rank 0.
    started = starts(sim.play(effects))
    assert set(started) == {500, sim.pid(1)}
    assert {s.generation for s in started.values()} == {1}
    assert sim.job.state == pb.JobState.JOB_STATE_RUNNING


def test_rank_dying_before_attach_takes_an_idle_spare() -> None:
    sim = Sim(spares=1)
    sim.job.attach_launcher()
    sim.job.worker_attached(600, -1, spare=True)
    sim.job.process_started(500, 0)
    sim.job.worker_attached(500, 0, spare=False)
    sim.job.process_started(501, 1)
    effects = sim.job.process_exited(501, 0, signal.SIGSEGV, "", sim.now)
    assert sim.job.spares.failures == 0  # a rank's process, not a spare
    assert [(a.pid, a.rank) for a in assignments(effects)] == [(600, 1)]
    assert rank_spawns(effects) == [] and spare_spawns(effects) == 0
    assert {pid: s.generation for pid, s in starts(effects).items()} == {500: 1, 600: 1}
    assert sim.job.failures[-1].detail.signature == "SIGSEGV"


def test_rank_dying_before_attach_while_a_spare_is_starting_is_not_a_spare() -> None:
    sim = Sim(spares=1)
    sim.job.attach_launcher()
    assert sim.job.spares.spawning == 1
    sim.job.process_started(501, 1)
    sim.job.process_exited(501, 1, 0, "", sim.now)
    assert sim.job.spares.spawning == 1 and sim.job.spares.failures == 0
    assert len(sim.job.history) == 1 and sim.job.history[0].rank == 1


def test_rank_dying_before_attach_again_and_again_is_a_crash_loop() -> None:
    sim = Sim(spares=0, max_restarts=10, threshold=3)
    effects = sim.job.attach_launcher()
    sim.job.process_started(sim.new_pid(), 0)
    sim.job.worker_attached(sim.job.ranks[0].pid, 0, spare=False)
    for attempt in range(3):
        expected = [0, 1] if attempt == 0 else [1]
        assert rank_spawns(effects) == expected, f"attempt {attempt}: rank 1 not respawned"
        pid = sim.new_pid()
        sim.job.process_started(pid, 1)
        effects = sim.job.process_exited(pid, 1, 0, "ImportError", sim.now)
    [shutdown] = shutdowns(effects)
    assert shutdown.exit_code == exit_codes.GAVE_UP
    assert "crash loop" in shutdown.report
    assert "rank: 1" in shutdown.report
    assert "exit code 1" in shutdown.report
    assert sim.job.restart_count == 2
    assert sim.job.state == pb.JobState.JOB_STATE_FAILED
    assert not sim.job.ranks[1].spawning  # process_exited clears it
    assert rank_spawns(effects) == []


def test_rank_dying_before_attach_with_no_budget_gives_up() -> None:
    sim = Sim(spares=0, max_restarts=0)
    sim.job.attach_launcher()
    sim.job.process_started(500, 0)
    [shutdown] = shutdowns(sim.job.process_exited(500, 2, 0, "", sim.now))
    assert shutdown.exit_code == exit_codes.GAVE_UP
    assert "exit code 2" in shutdown.report
    assert sim.job.ranks[0].pid == 0 and not sim.job.ranks[0].spawning


def test_respawned_rank_dying_before_attach_during_recovery_does_not_hang() -> None:
    sim = Sim(spares=0)
    sim.launch()
    survivor = sim.pid(0)
    effects = sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now)
    sim.job.outcome(survivor, 0, pb.OutcomeKind.OUTCOME_UNWOUND, None, sim.now)
    assert rank_spawns(effects) == [1]
    newcomer = sim.new_pid()
    sim.job.process_started(newcomer, 1)
    effects = sim.job.process_exited(newcomer, 1, 0, "CUDA error", sim.now)
    assert len(sim.job.history) == 2
    assert sim.job.generation == 2 and sim.job.restart_count == 2
    assert aborts(effects) == {}  # the survivor waits in place, unwound already
    assert rank_spawns(effects) == [1]
    started = starts(sim.play(effects))
    assert survivor in started
    assert {s.generation for s in started.values()} == {2}


# ------------------------------------------------------------- --no-python
def test_no_python_spawns_ranks_with_their_env_and_no_spares() -> None:
    sim = Sim(bootstrapped=False, spares=0)
    effects = sim.job.attach_launcher()
    assert sim.job.started
    assert spare_spawns(effects) == 0
    by_rank = {s.rank: dict(s.env) for s in spawns(effects)}
    assert set(by_rank) == {0, 1}
    for rank, env in by_rank.items():
        assert env["RANK"] == str(rank)
        assert env["MASTER_PORT"] == str(FIRST_PORT)
        assert env["TORCHELASTIC_RESTART_COUNT"] == "0"


def test_no_python_failure_restarts_every_rank() -> None:
    sim = Sim(bootstrapped=False, spares=0)
    sim.launch()
    survivor = sim.pid(0)
    effects = sim.job.process_exited(sim.pid(1), 1, 0, "", sim.now)
    assert aborts(effects) == {}  # no bootstrap to abort: kill instead
    assert [(k.pid, k.signal) for k in kills(effects)] == [(survivor, signal.SIGTERM)]
    assert spawns(effects) == []  # not before the survivor is gone
    assert sim.job.restart_count == 1

    effects = sim.job.process_exited(survivor, 0, signal.SIGTERM, "", sim.now)
    assert len(sim.job.history) == 1  # the SIGTERM we sent is not a failure
    assert sim.job.restart_count == 1
    by_rank = {s.rank: dict(s.env) for s in spawns(effects)}
    assert set(by_rank) == {0, 1}
    for rank, env in by_rank.items():
        assert env["RANK"] == str(rank)
        assert env["MASTER_PORT"] == str(FIRST_PORT + 1)
        assert env["TORCHELASTIC_RESTART_COUNT"] == "1"


def test_no_python_survivor_ignoring_sigterm_gets_sigkill() -> None:
    sim = Sim(bootstrapped=False, spares=0)
    sim.launch()
    survivor = sim.pid(0)
    sim.job.process_exited(sim.pid(1), 1, 0, "", 10.0)
    effects = sim.job.tick(20.0)
    assert [(k.pid, k.signal) for k in kills(effects)] == [(survivor, signal.SIGKILL)]


def test_no_python_clean_exits_finish_the_job() -> None:
    sim = Sim(bootstrapped=False, spares=0)
    sim.launch()
    assert sim.job.process_exited(sim.pid(0), 0, 0, "", sim.now) == []
    [shutdown] = shutdowns(sim.job.process_exited(sim.pid(1), 0, 0, "", sim.now))
    assert shutdown.exit_code == exit_codes.SUCCEEDED
    assert sim.job.history == []


def test_no_python_survivor_exiting_cleanly_on_sigterm_still_restarts() -> None:
    """The exit 0 of a survivor we SIGTERMed is collateral, not a finished rank."""
    sim = Sim(bootstrapped=False, spares=0)
    sim.launch()
    survivor = sim.pid(0)
    sim.job.process_exited(sim.pid(1), 1, 0, "", sim.now)
    effects = sim.job.process_exited(survivor, 0, 0, "", sim.now)  # SIGTERM handler: exit(0)
    assert rank_spawns(effects) == [0, 1]
    assert {dict(s.env)["TORCHELASTIC_RESTART_COUNT"] for s in spawns(effects)} == {"1"}
    assert sim.job.ranks[0].state != WS.WORKER_STATE_SUCCEEDED
    assert len(sim.job.history) == 1
    assert shutdowns(effects) == []


# --------------------------------------------------------------- heartbeats
def test_heartbeat_updates_the_step_of_the_current_generation(sim: Sim) -> None:
    sim.launch()
    pid = sim.pid(0)
    sim.job.heartbeat(pid, 0, 12, 0.25, 123.0)
    slot = sim.job.ranks[0]
    assert (slot.step, slot.step_time_s, slot.last_heartbeat) == (12, 0.25, 123.0)


def test_heartbeat_of_another_generation_or_pid_is_ignored(sim: Sim) -> None:
    sim.launch()
    survivor = sim.pid(0)
    sim.job.heartbeat(survivor, 0, 30, 0.1, 1.0)
    sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    assert sim.job.ranks[0].generation == 1
    sim.job.heartbeat(survivor, 1, 2, 0.1, 2.0)
    sim.job.heartbeat(survivor, 0, 31, 0.1, 3.0)  # late, from the aborted generation
    sim.job.heartbeat(999_999, 1, 77, 0.1, 4.0)  # no such process
    slot = sim.job.ranks[0]
    assert (slot.step, slot.last_heartbeat) == (2, 2.0)
    assert all(s.step != 77 for s in sim.job.ranks.values())


def test_failure_records_the_step_of_the_failed_rank(sim: Sim) -> None:
    sim.launch()
    sim.job.heartbeat(sim.pid(1), 0, 17, 0.1, sim.now)
    sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now)
    assert sim.job.failures[-1].step == 17
    assert sim.job.history[-1].step == 17


def test_new_process_starts_counting_steps_from_zero(sim: Sim) -> None:
    sim.launch()
    sim.job.heartbeat(sim.pid(1), 0, 17, 0.1, sim.now)
    sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    slot = sim.job.ranks[1]
    assert (slot.step, slot.last_heartbeat) == (0, None)


def test_survivor_step_is_per_generation() -> None:
    sim = Sim()
    sim.launch()
    survivor = sim.pid(0)
    sim.job.heartbeat(survivor, 0, 50, 0.1, sim.now)
    sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    assert sim.job.ranks[0].generation == 1
    # The survivor dies in generation 1 before completing a step of it.
    sim.job.process_exited(survivor, 0, signal.SIGKILL, "", sim.now)
    assert sim.job.failures[-1].generation == 1
    assert sim.job.failures[-1].step == 0


def test_generation_start_resets_every_ranks_step_and_heartbeat(sim: Sim) -> None:
    sim.launch()
    sim.job.heartbeat(sim.pid(0), 0, 50, 0.3, sim.now)
    sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    assert sim.job.started and sim.job.generation == 1
    for slot in sim.job.ranks.values():
        assert (slot.step, slot.step_time_s, slot.last_heartbeat) == (0, 0.0, None)


def test_events_are_recorded(sim: Sim) -> None:
    sim.launch()
    sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    kinds = [e.kind for e in sim.job.events]
    for kind in (
        "launcher_attached",
        "generation_started",
        "failure",
        "spare_promoted",
        "generation_opened",
    ):
        assert kind in kinds
    assert kinds.index("failure") < kinds.index("generation_opened")
    assert kinds.count("generation_started") == 2


def test_spare_is_replenished_by_tick_when_no_rank_ever_heartbeats(sim: Sim) -> None:
    """A script without a torch optimizer sends no heartbeats; spares still come back."""
    sim.launch()
    spare = sim.job.spares.idle[0]
    sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    assert sim.job.started and sim.pid(1) == spare
    fallback = sim.job.timings.spare_replenish_fallback_s
    assert spare_spawns(sim.job.tick(sim.now)) == 0  # the generation is first seen running
    assert spare_spawns(sim.job.tick(sim.now + fallback - 1)) == 0
    assert spare_spawns(sim.job.tick(sim.now + fallback)) == 1
    assert spare_spawns(sim.job.tick(sim.now + fallback + 1)) == 0  # back at the target


def test_tick_fallback_never_replenishes_during_a_recovery(sim: Sim) -> None:
    sim.launch()
    fallback = sim.job.timings.spare_replenish_fallback_s
    sim.job.tick(sim.now)
    sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now)
    assert not sim.job.started  # the survivor is unwinding; the spare was promoted
    assert spare_spawns(sim.job.tick(sim.now + 10 * fallback)) == 0


# ------------------------------------------------- classified failures decide
def oom_kill(sim: Sim, rank: int) -> list[Effect]:
    """The kernel OOM killer takes `rank`: a SIGKILL, and its cgroup's oom_kill count rose."""
    effects = sim.job.process_exited(sim.pid(rank), 0, signal.SIGKILL, "", sim.now, oom_kills=1)
    return sim.play(effects)


def failure_events(sim: Sim) -> list[str]:
    return [e.message for e in sim.job.events if e.kind == "failure"]


def test_an_oom_kill_is_classified_from_the_cgroup_and_restarts_the_rank() -> None:
    sim = Sim(spares=0, max_restarts=5)
    sim.launch()
    victim = sim.pid(1)
    effects = oom_kill(sim, 1)
    assert shutdowns(effects) == [] and rank_spawns(effects) == [1]
    assert sim.job.generation == 1 and sim.job.restart_count == 1 and sim.job.started
    record = sim.job.failures[-1]
    assert (record.pid, record.failure_class, record.action) == (victim, "out_of_memory", "restart")
    assert record.reason == "the kernel OOM killer (memory cgroup oom_kill +1)"
    # One event per failure: who, how, the class with its evidence, and what follows.
    [event] = failure_events(sim)
    assert event.endswith(
        "looks like out_of_memory (the kernel OOM killer (memory cgroup oom_kill +1)) "
        "-> restart: restart 1 of 5"
    ), event


def test_the_third_oom_on_one_rank_gives_the_job_up_with_a_report() -> None:
    sim = Sim(spares=0, max_restarts=10)
    sim.launch()
    # Rank 0's OOM is not rank 1's: only repeats on one rank stop the job. (Steps
    # between them: three SIGKILLs at one step would be a crash loop first.)
    for step, rank in enumerate((1, 0, 1)):
        sim.step_all(step + 1)
        assert shutdowns(oom_kill(sim, rank)) == []
    survivor = sim.pid(0)
    sim.step_all(4)
    effects = oom_kill(sim, 1)
    [shutdown] = shutdowns(effects)
    assert shutdown.exit_code == exit_codes.GAVE_UP
    first_line = shutdown.report.splitlines()[0]
    assert first_line == (
        "job given up: rank 1: out of memory 3 times on this rank "
        "(last: the kernel OOM killer (memory cgroup oom_kill +1))"
    )
    assert "  rank: 1\n" in shutdown.report
    assert "  class: out_of_memory (out of memory 3 times" in shutdown.report
    assert sim.job.failures[-1].action == "give_up_classified"
    assert sim.job.restart_count == 3 and sim.job.state == pb.JobState.JOB_STATE_FAILED
    assert exits(effects) == {survivor: Exit(exit_code=0)}
    assert [e.message for e in sim.job.events if e.kind == "gave_up"] == [first_line]


def test_an_ecc_error_in_the_output_replaces_the_pod_without_a_restart() -> None:
    sim = Sim(spares=1, max_restarts=0)  # no budget: a hardware fault needs none
    sim.launch()
    survivor, spare = sim.pid(0), sim.job.spares.idle[0]
    tail = "RuntimeError: uncorrectable ECC error encountered\n"
    effects = sim.job.process_exited(sim.pid(1), 1, 0, tail, sim.now)
    [shutdown] = shutdowns(effects)
    assert shutdown.exit_code == exit_codes.REPLACE_POD == 4
    assert shutdown.report.startswith(
        "this pod must be replaced: hardware fault on rank 1: output: 'uncorrectable ECC'"
    ), shutdown.report
    assert "  class: hardware (output: 'uncorrectable ECC')" in shutdown.report
    assert set(exits(effects)) == {survivor, spare}
    assert aborts(effects) == {} and rank_spawns(effects) == []
    assert sim.job.restart_count == 0 and sim.job.state == pb.JobState.JOB_STATE_FAILED
    assert sim.job.failures[-1].action == "replace_pod"
    assert any(e.kind == "replace_pod" for e in sim.job.events)
    assert "-> replace_pod: hardware fault on rank 1" in failure_events(sim)[0]


def test_unexplained_kills_at_different_steps_replace_the_pod() -> None:
    # Three within the window replaced the pod before issue 21 (a lifetime count); the
    # default rate is four within an hour.
    sim = Sim(spares=0, max_restarts=10)
    sim.launch()
    for attempt, rank in enumerate((0, 1, 0, 1)):
        sim.step_all(attempt + 1)  # progress: no crash loop
        effects = sim.play(sim.job.process_exited(sim.pid(rank), 0, signal.SIGKILL, "", sim.now))
    [shutdown] = shutdowns(effects)
    assert shutdown.exit_code == exit_codes.REPLACE_POD
    assert "4 unexplained faults on this pod within 3600s" in shutdown.report
    assert "SUPERVISOR_POD_FAULT_LIMIT" in shutdown.report
    classes = [f.failure_class for f in sim.job.failures]
    assert classes == ["transient", "transient", "transient", "hardware"]


def kill_ranks_at_global_steps(sim: Sim, kills: Sequence[tuple[int, int]]) -> list[Effect]:
    """SIGKILL (rank, at the job's step) in turn; every rank steps in lockstep till then."""
    effects: list[Effect] = []
    for rank, global_step in kills:
        sim.step_all(global_step - sim.job.steps_before)
        assert sim.job.job_step() == global_step
        effects = sim.play(sim.job.process_exited(sim.pid(rank), 0, signal.SIGKILL, "", sim.now))
        sim.now += 15.0
    return effects


@pytest.mark.parametrize("third", [60, 75])
def test_kills_of_ranks_1_0_1_at_steps_30_45_then_60_or_75_restart(third: int) -> None:
    """Issue 21: with --max-restarts 3 this run gave up (crash loop: rank 1 ... at step 19
    without progress; with the third kill at 75, replace_pod). Three faults on two ranks with
    progress between them are three restarts."""
    sim = Sim(spares=1, max_restarts=3)
    sim.launch()
    effects = kill_ranks_at_global_steps(sim, [(1, 30), (0, 45), (1, third)])
    assert shutdowns(effects) == []
    assert (sim.job.restart_count, sim.job.started) == (3, True)
    assert [r.job_step for r in sim.job.failures] == [30, 45, third]
    assert [f.step for f in sim.job.history] == [30, 45, third]
    # The failure lines give the job's step, not the rank's count in its generation (0).
    assert f"at step {third} of the job (" in failure_events(sim)[-1]


def test_steps_in_every_generation_are_progress() -> None:
    """The same error on one rank at step 5 of each generation: the job trained 5 steps
    each time (job steps 5, 10, 15), no crash loop; was one before issue 21."""
    sim = Sim(max_restarts=10, threshold=3)
    sim.launch()
    for _ in range(3):
        effects = sim.raise_and_exit(1, boom(), step=5)
        assert shutdowns(effects) == []
    assert [f.step for f in sim.job.history] == [5, 10, 15]


def test_the_same_rank_and_error_without_job_progress_is_a_crash_loop() -> None:
    sim = Sim(spares=1, max_restarts=10)
    sim.launch()
    effects = kill_ranks_at_global_steps(sim, [(1, 30), (1, 30), (1, 30)])
    [shutdown] = shutdowns(effects)
    assert shutdown.exit_code == exit_codes.GAVE_UP
    assert "crash loop: rank 1 failed 3 times" in shutdown.report
    assert "SUPERVISOR_CRASH_LOOP_WINDOW_S" in shutdown.report


def test_no_crash_loop_outside_its_window() -> None:
    sim = Sim(spares=1, max_restarts=10, threshold=3, crash_loop_window_s=1)
    sim.launch()
    for _ in range(3):
        # Real failure times (time.time()) more than a second apart cannot be had without a
        # sleep: the history's times are the ones the policy reads, set them.
        effects = kill_ranks_at_global_steps(sim, [(1, 30)])
        sim.job.history[-1] = dataclasses.replace(
            sim.job.history[-1], time_s=1000.0 * len(sim.job.history)
        )
    assert shutdowns(effects) == []


def test_a_crash_loop_is_never_blamed_on_the_pod() -> None:
    # The same death at the same step: deterministic, the script's, not the node's.
    sim = Sim(spares=0, max_restarts=10)
    sim.launch()
    for _ in range(3):
        effects = sim.play(sim.job.process_exited(sim.pid(1), 0, signal.SIGKILL, "", sim.now))
    [shutdown] = shutdowns(effects)
    assert shutdown.exit_code == exit_codes.GAVE_UP
    assert "crash loop" in shutdown.report
