"""supervisor/rules/job.py, leader.py: a survivor that cannot re-enter gets a fresh
process, at no cost to the restart budget, and the job uses fresh processes from then on.

The worker side's contract: an OUTCOME_RAISED at step 0 of a generation from a process
that started an earlier one is a failed re-entry (megatron-core's "data parallel group is
already initialized", DeepSpeed's "Group ... is not registered", issue 20); so is an unwind
that fails or times out.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator

from effects import aborts, exits, from_leader, make_spec, play_pod, shutdowns, starts

from supervisor.rpc.effects_wire import report_to_wire
from supervisor.rpc.status_view import job_status
from supervisor.rules.effects import Abort, Effect, Kill, ToLauncher, ToLeader, ToWorker
from supervisor.rules.failure_evidence import FailureDetail
from supervisor.rules.job import JobState, Timings
from supervisor.rules.leader import Broadcast, LeaderState, OpenGeneration, PodView
from supervisor.rules.restart_policy import Failure, RestartPolicy
from train_supervisor import exit_codes
from train_supervisor.v1 import supervisor_pb2 as pb

MODES = pb.ReentryMode
ALREADY = FailureDetail(
    exception_type="AssertionError",
    message="data parallel group is already initialized",
    traceback="Traceback ...\nAssertionError: data parallel group is already initialized\n",
    signature="AssertionError: data parallel group is already initialized @ parallel_state.py:5",
)


class Pod:
    """One JobState and the processes around it: spawns attach, aborts unwind, exits exit."""

    def __init__(
        self, reentry: pb.ReentryMode = MODES.REENTRY_AUTO, nproc: int = 3, max_restarts: int = 3
    ) -> None:
        ports: Iterator[int] = itertools.count(30000)
        self.job = JobState(
            spec=make_spec(nproc=nproc, spares=1, max_restarts=max_restarts, reentry=reentry),
            policy=RestartPolicy(max_restarts=max_restarts),
            allocate_port=ports.__next__,
            timings=Timings(unwind_timeout_s=5.0),
        )
        self._pids = itertools.count(1000)
        self.now = 100.0
        self.exited: list[int] = []

    def play(self, effects: list[Effect]) -> list[Effect]:
        """As play_pod, and a worker told to exit does (its exit reaches the job)."""
        done = play_pod(self.job, effects, self._pids.__next__, self.now)
        for pid in exits(done):
            if self.job.slot_of(pid) is not None:
                self.exited.append(pid)
                done += self.play(self.job.process_exited(pid, 0, 0, "", self.now))
        return done

    def pid(self, rank: int) -> int:
        return self.job.ranks[rank].pid

    def pids(self) -> dict[int, int]:
        return {rank: slot.pid for rank, slot in self.job.ranks.items()}

    def step(self, count: int) -> None:
        for slot in self.job.ranks.values():
            self.job.heartbeat(slot.pid, slot.generation, count, 0.1, self.now)

    def kill(self, rank: int) -> list[Effect]:
        return self.play(self.job.process_exited(self.pid(rank), 0, signal.SIGKILL, "", self.now))

    def raise_at_start(self, rank: int, detail: pb.FailureDetail = ALREADY) -> list[Effect]:
        """The rank's script raises before its first step; the process exits 1."""
        pid, generation = self.pid(rank), self.job.ranks[rank].generation
        verdict, _ = self.job.outcome(pid, generation, pb.OutcomeKind.OUTCOME_RAISED, detail, 0)
        assert verdict is None
        verdict, _ = self.job.settle(pid)
        assert verdict == pb.Verdict.VERDICT_EXIT_FAILED
        return self.play(self.job.process_exited(pid, 1, 0, "Traceback ...", self.now))


def fallen_back(pod: Pod) -> list[str]:
    return [e.message for e in pod.job.events if e.kind == "reentry_fallback"]


def test_a_survivor_that_raises_before_its_first_step_gets_a_fresh_process_for_free() -> None:
    pod = Pod()
    pod.play(pod.job.attach_launcher())
    pod.step(30)
    first = pod.pids()
    pod.kill(1)  # restart 1: ranks 0 and 2 re-enter in place
    assert (pod.job.restart_count, pod.pid(0), pod.pid(2)) == (1, first[0], first[2])
    assert pod.job.ranks[0].reentered
    effects = pod.raise_at_start(0)  # rank 0's re-entry fails (module state of generation 0)
    # No restart spent, no failure recorded or classified, the crash-loop rule never sees it.
    assert pod.job.restart_count == 1 and shutdowns(effects) == []
    assert [f.rank for f in pod.job.failures] == [1] and len(pod.job.history) == 1
    # Said once, naming the error; in status too.
    [said] = fallen_back(pod)
    assert "rank 0 pid" in said and "data parallel group is already initialized" in said
    assert "no restart spent" in said
    status = job_status(pod.job, pod.now, "local")
    assert "data parallel group is already initialized" in status.fresh_processes
    # Generation 2 runs on fresh processes only: rank 2, the other survivor, was retired.
    assert pod.job.generation == 2 and pod.job.started
    assert first[2] in pod.exited and set(pod.pids().values()).isdisjoint(first.values())
    assert all(not slot.reentered for slot in pod.job.ranks.values())


def test_fresh_processes_stay_for_every_later_failure() -> None:
    pod = Pod(max_restarts=5)
    pod.play(pod.job.attach_launcher())
    pod.kill(1)
    pod.raise_at_start(0)
    pod.step(10)
    before = pod.pids()
    effects = pod.kill(2)  # an ordinary failure: a restart, and no survivor re-enters
    assert pod.job.restart_count == 2
    assert set(aborts(effects)) == {before[0], before[1]}  # they unwind first, then leave
    assert set(pod.exited) >= {before[0], before[1]}
    assert set(pod.pids().values()).isdisjoint(before.values())
    assert len(fallen_back(pod)) == 1  # said once


def test_the_same_error_in_a_fresh_process_is_an_ordinary_failure() -> None:
    """A genuine user bug: it fails in a fresh process too, which counts and classifies."""
    pod = Pod()
    pod.play(pod.job.attach_launcher())
    pod.kill(1)
    pod.raise_at_start(0)  # the fallback, free
    effects = pod.raise_at_start(0)  # now a fresh process raises the same
    assert pod.job.restart_count == 2 and shutdowns(effects) == []
    assert pod.job.failures[-1].failure_class == "user_bug"
    assert pod.job.history[-1].signature == ALREADY.signature


def test_a_user_bug_that_follows_the_fallback_is_still_a_crash_loop() -> None:
    pod = Pod(max_restarts=10)
    pod.play(pod.job.attach_launcher())
    pod.kill(1)
    pod.raise_at_start(0)
    for _ in range(2):
        assert shutdowns(pod.raise_at_start(0)) == []
    [shutdown] = shutdowns(pod.raise_at_start(0))
    assert shutdown.exit_code == exit_codes.GAVE_UP
    assert "crash loop: rank 0 failed 3 times" in shutdown.report


def test_a_fresh_process_raising_at_its_first_step_is_no_re_entry() -> None:
    """The process that took the killed rank never re-entered: its error is a failure."""
    pod = Pod()
    pod.play(pod.job.attach_launcher())
    pod.kill(1)
    assert not pod.job.ranks[1].reentered
    pod.raise_at_start(1)
    assert pod.job.restart_count == 2 and fallen_back(pod) == []
    assert pod.job.fresh_processes == ""


def test_an_error_after_the_first_step_is_no_re_entry_failure() -> None:
    pod = Pod()
    pod.play(pod.job.attach_launcher())
    pod.kill(1)
    pod.step(1)
    pid, generation = pod.pid(0), pod.job.generation
    pod.job.outcome(pid, generation, pb.OutcomeKind.OUTCOME_RAISED, ALREADY, 0)
    pod.job.settle(pid)
    pod.play(pod.job.process_exited(pid, 1, 0, "", pod.now))
    assert pod.job.restart_count == 2 and fallen_back(pod) == []


def test_a_peers_echo_before_the_first_step_is_no_re_entry_failure() -> None:
    """A re-entered rank whose collective lost its peer reports the peer's death."""
    pod = Pod()
    pod.play(pod.job.attach_launcher())
    pod.kill(1)
    echo = FailureDetail(
        exception_type="DistBackendError",
        message="Connection closed by peer",
        signature="DistBackendError: Connection closed by peer @ distributed_c10d.py:1",
    )
    pod.raise_at_start(0, echo)
    assert fallen_back(pod) == [] and pod.job.restart_count == 2


def test_reentry_always_never_falls_back() -> None:
    pod = Pod(reentry=MODES.REENTRY_ALWAYS)
    pod.play(pod.job.attach_launcher())
    pod.kill(1)
    pod.raise_at_start(0)
    assert pod.job.restart_count == 2 and fallen_back(pod) == []
    assert pod.job.failures[-1].failure_class == "user_bug"
    survivor = pod.pid(2)
    assert survivor not in pod.exited  # still re-entering in place


def test_reentry_never_gives_every_survivor_a_fresh_process() -> None:
    pod = Pod(reentry=MODES.REENTRY_NEVER)
    pod.play(pod.job.attach_launcher())
    assert "--reentry never" in job_status(pod.job, pod.now, "local").fresh_processes
    first = pod.pids()
    pod.kill(1)
    assert pod.job.restart_count == 1 and pod.job.started
    assert set(pod.exited) == {first[0], first[2]}
    assert set(pod.pids().values()).isdisjoint(first.values())


def test_an_unwind_timeout_switches_to_fresh_processes() -> None:
    pod = Pod()
    pod.play(pod.job.attach_launcher())
    stuck = pod.pid(0)
    effects = pod.job.process_exited(pod.pid(1), 0, signal.SIGKILL, "", pod.now)
    for pid in aborts(effects):  # rank 0 never answers its abort; rank 2 unwinds
        if pid != stuck:
            pod.play(pod.job.outcome(pid, 0, pb.OutcomeKind.OUTCOME_UNWOUND, None, pod.now)[1])
    pod.play([e for e in effects if not (isinstance(e, ToWorker) and isinstance(e.command, Abort))])
    killed = pod.job.tick(pod.now + 5.0)
    [kill] = [k.command for k in killed if isinstance(k, ToLauncher)]
    assert isinstance(kill, Kill) and kill.pid == stuck
    [said] = fallen_back(pod)
    assert "rank 0 did not unwind within 5.0s" in said
    assert pod.job.restart_count == 1  # the kill spends nothing
    pod.play(pod.job.process_exited(stuck, 0, signal.SIGKILL, "", pod.now + 5.0))
    assert pod.job.started and pod.pid(0) != stuck


def test_a_survivor_dying_while_it_unwinds_switches_to_fresh_processes() -> None:
    pod = Pod()
    pod.play(pod.job.attach_launcher())
    dying = pod.pid(0)
    effects = pod.job.process_exited(pod.pid(1), 0, signal.SIGKILL, "", pod.now)
    assert dying in aborts(effects)
    pod.play(pod.job.process_exited(dying, 0, signal.SIGSEGV, "", pod.now))
    [said] = fallen_back(pod)
    assert "died unwinding (signal SIGSEGV)" in said
    assert pod.job.restart_count == 1 and pod.job.failures[-1].rank == 1


def test_a_survivor_killed_from_outside_while_it_unwinds_is_a_second_fault_not_a_reentry() -> None:
    """Two ranks SIGKILLed at once: the second death may reach the pod after its abort went
    out. A SIGKILL the supervisor did not send and no OOM kill explains says nothing about
    re-entry: the rank gets a new process and survivors keep re-entering."""
    pod = Pod()
    pod.play(pod.job.attach_launcher())
    second = pod.pid(0)
    effects = pod.job.process_exited(pod.pid(1), 0, signal.SIGKILL, "", pod.now)
    assert second in aborts(effects)
    pod.play(pod.job.process_exited(second, 0, signal.SIGKILL, "", pod.now))
    assert fallen_back(pod) == []
    assert any("rank 0" in e.message and "killed from outside" in e.message for e in pod.job.events)
    assert pod.job.restart_count == 1  # the second death spends nothing


def test_a_survivor_the_oom_killer_took_while_it_unwinds_switches_to_fresh_processes() -> None:
    pod = Pod()
    pod.play(pod.job.attach_launcher())
    dying = pod.pid(0)
    pod.job.process_exited(pod.pid(1), 0, signal.SIGKILL, "", pod.now)
    pod.play(pod.job.process_exited(dying, 0, signal.SIGKILL, "", pod.now, oom_kills=1))
    [said] = fallen_back(pod)
    assert "died unwinding (signal SIGKILL)" in said


# ----------------------------------------------------------------- the leader
def make_leader(falls_back: bool = True, fresh: str = "") -> LeaderState:
    ports = itertools.count(40000)
    leader = LeaderState(2, 2, RestartPolicy(3), ports.__next__, "10.0.0.1", falls_back=falls_back)
    leader.fresh_processes = fresh
    for node in (0, 1):
        leader.join(node, 2, None, 0.0)
    for node in (0, 1):
        leader.pod_ready(node, 0)
    return leader


def only_open(effects: list[Broadcast]) -> OpenGeneration:
    [broadcast] = effects
    assert isinstance(broadcast.message, OpenGeneration)
    return broadcast.message


def test_the_leader_opens_a_free_generation_and_carries_fresh_processes() -> None:
    leader = make_leader()
    only_open(leader.failure(1, 0, Failure(0, 3, "SIGKILL", 30)))
    for node in (0, 1):
        leader.pod_ready(node, 1)
    failed = Failure(1, 2, ALREADY.signature, 30, reason="rank 2 ...", reentry_failed=True)
    message = only_open(leader.failure(1, 1, failed))
    assert (message.generation, message.restart_count) == (2, 1)  # no restart spent
    assert "re-entry failed on node 1" in message.fresh_processes
    assert [f.rank for f in leader.history] == [3]  # not a failure of the policy
    assert leader.pod_view(1).fresh_processes == message.fresh_processes


def test_a_pod_reported_unwind_failure_reaches_every_later_open() -> None:
    leader = make_leader()
    leader.reentry_failed(1, "rank 3 did not unwind within 10s")
    message = only_open(leader.failure(0, 0, Failure(0, 0, "SIGKILL", 5)))
    assert message.fresh_processes == "re-entry failed on node 1: rank 3 did not unwind within 10s"


def test_node_0s_reentry_always_reads_a_failed_re_entry_as_a_failure() -> None:
    leader = make_leader(falls_back=False)
    failed = Failure(0, 2, ALREADY.signature, 0, reentry_failed=True)
    message = only_open(leader.failure(1, 0, failed))
    assert message.restart_count == 1 and message.fresh_processes == ""
    assert leader.history[-1].rank == 2


def test_node_0s_reentry_never_is_in_every_open() -> None:
    leader = make_leader(fresh="node 0's train-launch --reentry never")
    message = only_open(leader.failure(0, 0, Failure(0, 0, "SIGKILL", 5)))
    assert message.fresh_processes == "node 0's train-launch --reentry never"


def test_a_rebuilt_leader_keeps_fresh_processes_from_the_views() -> None:
    ports = itertools.count(40000)
    leader = LeaderState(2, 2, RestartPolicy(3), ports.__next__, "10.0.0.1")
    leader.join(1, 2, PodView(3, 1, (), fresh_processes="re-entry failed on node 1: x"), 0.0)
    message = only_open(leader.join(0, 2, None, 0.0))
    assert message.fresh_processes == "re-entry failed on node 1: x"


def test_starts_after_the_fallback_go_to_fresh_processes_only() -> None:
    pod = Pod(nproc=2)
    effects = pod.play(pod.job.attach_launcher())
    first = set(starts(effects))
    pod.kill(1)
    effects = pod.raise_at_start(0)
    assert set(starts(effects)).isdisjoint(first)


# --------------------------------------------------------------- one pod of many
def leader_reports(effects: list[Effect]) -> list[pb.PodReport]:
    """As they go on the wire (supervisor/rpc/effects_wire.py)."""
    return [report_to_wire(e.report) for e in effects if isinstance(e, ToLeader)]


def coordinated_pod() -> tuple[Pod, JobState]:
    pod = Pod(nproc=2)
    ports: Iterator[int] = itertools.count(31000)
    job = JobState(
        leader_remote=True,
        spec=make_spec(nproc=2, spares=1, nnodes=2, node_rank=1),
        policy=RestartPolicy(max_restarts=3),
        allocate_port=ports.__next__,
        timings=Timings(unwind_timeout_s=5.0),
    )
    pod.job = job
    pod.play(job.attach_launcher())
    for generation in (0, 1):
        if generation:
            pod.kill(3)
        open_ = from_leader(pb.OpenGenerationMsg(generation=generation, restart_count=generation))
        pod.play(job.open_generation(open_, pod.now))
        start = from_leader(
            pb.StartGenerationMsg(
                generation=generation, restart_count=generation, master_addr="10.0.0.1"
            )
        )
        pod.play(job.start_generation(start))
    return pod, job


def test_a_pod_reports_a_failed_re_entry_and_follows_the_leaders_open() -> None:
    pod, job = coordinated_pod()
    assert job.ranks[2].reentered
    effects = pod.raise_at_start(2)
    failure = next(r.failure for r in leader_reports(effects) if r.HasField("failure"))
    assert failure.reentry_failed and failure.rank == 2
    assert "data parallel group is already initialized" in failure.reason
    assert job.restart_count == 1 and len(job.failures) == 1  # only rank 3's kill
    survivor = pod.pid(3)  # started generation 1 fresh; a survivor of its abort now
    open_ = from_leader(
        pb.OpenGenerationMsg(generation=2, restart_count=1, fresh_processes=failure.reason)
    )
    pod.play(job.open_generation(open_, pod.now))
    assert failure.reason in job.fresh_processes  # switched when it reported, said once
    assert survivor in pod.exited and pod.pid(3) != survivor
    assert any("survivors get fresh processes" in e.message for e in job.events)


def test_an_open_with_fresh_processes_retires_a_pods_survivors() -> None:
    """Another pod's re-entry failed: this pod's survivors leave too, job-wide."""
    pod, job = coordinated_pod()
    first = pod.pids()
    pod.kill(3)
    open_ = from_leader(
        pb.OpenGenerationMsg(generation=2, restart_count=2, fresh_processes="node 0: x")
    )
    pod.play(job.open_generation(open_, pod.now))
    assert first[2] in pod.exited and pod.pid(2) != first[2]
    assert [r.reentry_failed for r in leader_reports(pod.kill(2)) if r.reentry_failed] == []
