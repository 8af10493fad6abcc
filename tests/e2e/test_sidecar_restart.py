"""Our own parts fail too: a sidecar killed (and restarted) or a launcher killed mid-run.

Real `train-supervisor serve` sidecars and `train-launch` launchers, real SIGKILL, toy DDP
with in-memory snapshots. A sidecar restart is a non-event: no worker process changes, no
generation opens, every step's state equals an uninterrupted run's bitwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs import REPO, TOY_DDP, RunningJob, job_env, max_step, pids_by_rank, read_events, wait_until
from pods import TOKEN, Pods

from supervisor.workers.ports import free_port
from train_supervisor import exit_codes

pytestmark = pytest.mark.slow

STEPS = 40
SCRIPT = ["--steps", str(STEPS), "--snapshot", "--trace-state", "--step-sleep", "0.1"]


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    directory = Path("/dev/shm") / f"ts-ride-{uuid.uuid4().hex[:12]}"
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


class Pod:
    """One pod: a `train-supervisor serve` sidecar and a `train-launch` on its port."""

    def __init__(self, shm: Path, events: Path, *launcher_flags: str) -> None:
        self.port = free_port()
        self.shm, self.events, self.flags = shm, events, launcher_flags
        self.sidecar = self.start_sidecar()
        self.launcher = self.start_launcher()

    def start_sidecar(self) -> RunningJob:
        env = job_env(
            SUPERVISOR_NNODES="1",
            SUPERVISOR_PORT=str(self.port),
            SUPERVISOR_TOKEN=TOKEN,
            SUPERVISOR_BIND="127.0.0.1",
        )
        return RunningJob([sys.executable, "-m", "supervisor.cli", "serve"], env)

    def start_launcher(self) -> RunningJob:
        argv = [
            sys.executable, "-m", "launcher.launch.main", "--nproc-per-node", "2",
            "--warm-spares", "1", "--max-restarts", "3",
            "--supervisor-address", f"127.0.0.1:{self.port}", *self.flags,
            str(TOY_DDP), *SCRIPT, "--events", str(self.events),
        ]  # fmt: skip
        env = job_env(SUPERVISOR_TOKEN=TOKEN, TRAIN_SUPERVISOR_SNAPSHOT_DIR=str(self.shm))
        return RunningJob(argv, env)

    def status(self) -> dict[str, Any]:
        return status(self.port)

    def logs(self) -> str:
        return self.sidecar.stderr + self.launcher.stderr

    def stop(self) -> None:
        self.launcher.kill_tree()
        self.sidecar.kill_tree()


def status(port: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "status", "--json",
         "--address", f"127.0.0.1:{port}"],
        cwd=REPO, env=job_env(SUPERVISOR_TOKEN=TOKEN), capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    if done.returncode != 0:
        return {}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def reference_states(tmp_path: Path, shm: Path, nproc: int) -> dict[tuple[int, int], str]:
    """Each (rank, step)'s state hash in an uninterrupted run of the same job."""
    events = tmp_path / "reference"
    argv = [sys.executable, "-m", "launcher.launch.main", "--standalone", "--nproc-per-node",
            str(nproc), str(TOY_DDP), *SCRIPT, "--events", str(events)]  # fmt: skip
    job = RunningJob(argv, job_env(TRAIN_SUPERVISOR_SNAPSHOT_DIR=str(shm / "reference")))
    assert job.wait(240) == 0, job.stderr
    return states(events)


def states(events: Path) -> dict[tuple[int, int], str]:
    return {(e["rank"], e["step"]): e["state"] for e in read_events(events)
            if e["event"] == "step"}  # fmt: skip


def sigkill(job: RunningJob) -> None:
    os.kill(job.proc.pid, signal.SIGKILL)
    job.wait(30)


def no_raw_grpc_text(log: str) -> None:
    assert "_MultiThreadedRendezvous" not in log and "_InactiveRpcError" not in log, log


def test_a_killed_sidecar_is_restarted_and_the_job_never_notices(
    tmp_path: Path, shm_dir: Path
) -> None:
    expected = reference_states(tmp_path, shm_dir, 2)
    events = tmp_path / "events"
    pod = Pod(shm_dir / "job", events)
    try:
        pod.launcher.wait_for(lambda: max_step(read_events(events), 1) >= 8, 180, "step 8")
        before = pids_by_rank(read_events(events), 0)
        sigkill(pod.sidecar)
        killed_at_step = max_step(read_events(events), 1)
        # The workers train on without it: the collectives do not need the sidecar.
        pod.launcher.wait_for(
            lambda: max_step(read_events(events), 1) >= killed_at_step + 3, 60, "steps meanwhile"
        )
        pod.sidecar = pod.start_sidecar()

        def rebuilt() -> bool:
            shown = pod.status()
            ranks = {r.get("rank", 0): r.get("pid") for r in shown.get("ranks", [])}
            # (A short job may have finished already, under the new sidecar's eyes.)
            state = shown.get("state")
            committed = int(shown.get("committedStep", "-1")) >= killed_at_step
            live = state in ("JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED")
            return ranks == before and live and committed

        try:
            # Not launcher.wait_for: the job may end while the new sidecar starts, and the
            # sidecar, which outlives it, still shows the ranks it rebuilt.
            wait_until(rebuilt, 60, "the new sidecar to show the running ranks")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{pod.status()}\n{pod.logs()}") from None
        shown = pod.status()
        assert shown.get("generation", "0") == "0", shown
        assert int(shown.get("committedStep", "-1")) >= killed_at_step, shown
        assert pod.launcher.wait(180) == 0, pod.logs()
    finally:
        pod.stop()
    records = read_events(events)
    assert pids_by_rank(records, 0) == before and {e["gen"] for e in records} == {0}
    assert [e["rank"] for e in records if e["event"] == "resumed"] in ([0, 1], [1, 0])
    assert states(events) == expected, "every step's state as in the uninterrupted run"
    assert "resumed: generation 0 runs on" in pod.sidecar.stderr, pod.sidecar.stderr
    no_raw_grpc_text(pod.logs())


def test_a_sidecar_away_past_the_grace_stops_the_launcher_with_its_own_code(
    tmp_path: Path, shm_dir: Path
) -> None:
    events = tmp_path / "events"
    pod = Pod(shm_dir / "job", events, "--supervisor-grace", "3")
    try:
        pod.launcher.wait_for(lambda: max_step(read_events(events), 1) >= 3, 180, "step 3")
        workers = [p.pid for p in pod.launcher.children()]
        sigkill(pod.sidecar)
        assert pod.launcher.wait(60) == exit_codes.SUPERVISOR_LOST, pod.launcher.stderr
    finally:
        pod.stop()

    def ending_lines() -> list[str]:
        return [
            line for line in pod.launcher.stderr.splitlines() if line.startswith("train-launch:")
        ]

    wait_until(lambda: bool(ending_lines()), 30, "the launcher's last line")
    ending = ending_lines()
    assert ending and "did not come back within --supervisor-grace 3s" in ending[-1], pod.logs()
    assert "UNAVAILABLE" in ending[-1], ending
    no_raw_grpc_text(pod.launcher.stderr)
    wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in workers), 30, "workers gone")


def test_a_killed_launcher_comes_back_and_its_ranks_restore_from_memory(
    tmp_path: Path, shm_dir: Path
) -> None:
    expected = reference_states(tmp_path, shm_dir, 2)
    events = tmp_path / "events"
    pod = Pod(shm_dir / "job", events)
    try:
        pod.launcher.wait_for(lambda: max_step(read_events(events), 1) >= 8, 180, "step 8")
        before = pids_by_rank(read_events(events), 0)
        reached = max(max_step(read_events(events), r) for r in (0, 1))
        sigkill(pod.launcher)  # its workers die with it (PDEATHSIG)
        pod.launcher = pod.start_launcher()  # the trainer container restarts
        assert pod.launcher.wait(180) == 0, pod.logs()
        shown = pod.status()
    finally:
        pod.stop()
    records = read_events(events)
    after = pids_by_rank(records, 1)
    assert all(after[r] != before[r] for r in (0, 1))
    resumed = {e["rank"]: e["from_step"] for e in records if e["event"] == "resumed" and e["gen"]}
    assert sorted(resumed) == [0, 1] and len(set(resumed.values())) == 1, resumed
    [step] = set(resumed.values())
    assert reached - step <= 2, f"reached {reached} before the kill, resumed from {step}"
    resumes = [e for e in records if e["event"] == "resumed" and e["gen"]]
    assert all(e["state"] == expected[(e["rank"], step)] for e in resumes), "restored bitwise"
    assert "restored step" in pod.sidecar.stderr and "from shm" in pod.sidecar.stderr
    # The failure is the launcher's ranks', said so.
    failure = shown.get("lastFailure", {})
    assert failure.get("rank", 0) in (0, 1) and "launcher" in pod.sidecar.stderr, shown
    assert "launcher_lost" in pod.sidecar.stderr
    no_raw_grpc_text(pod.logs())


def kill_a_sidecar_at_step_8(pods: Pods, events: Path, node: int) -> dict[int, int]:
    """Two pods train; once at step 8, pod `node`'s sidecar is SIGKILLed. The ranks' pids then."""
    pods.start_launchers([*SCRIPT, "--events", str(events)])
    pods.launchers[0].wait_for(lambda: max_step(read_events(events), 3) >= 8, 180, "step 8")
    before = pids_by_rank(read_events(events), 0)
    sigkill(pods.sidecars[node])
    return before


@pytest.mark.parametrize("node", [pytest.param(1, id="follower"), pytest.param(0, id="leader")])
def test_a_killed_sidecar_of_two_pods_is_restarted_and_the_job_never_notices(
    node: int, tmp_path: Path, shm_dir: Path
) -> None:
    expected = reference_states(tmp_path, shm_dir, 4)
    events = tmp_path / "events"
    pods = Pods(nnodes=2, snapshot_root=shm_dir / "pods")
    try:
        before = kill_a_sidecar_at_step_8(pods, events, node)
        first = pods.launchers[0]
        killed_at_step = max_step(read_events(events), 3)
        first.wait_for(
            lambda: max_step(read_events(events), 3) >= killed_at_step + 3, 60, "steps meanwhile"
        )
        pods.sidecars[node] = pods.start_sidecar(node)

        shown: dict[str, Any] = {}

        def rebuilt() -> bool:
            shown.update(status(pods.ports[node]))
            ranks = {r.get("rank", 0): r.get("pid") for r in shown.get("ranks", [])}
            running = shown.get("state") in ("JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED")
            return ranks == before and running

        # The job may end while the new sidecar starts: it still shows the ranks it rebuilt.
        try:
            wait_until(rebuilt, 60, "the new sidecar to show the job's ranks")
        except AssertionError as failed:
            raise AssertionError(
                f"{failed}: {before} expected, shown {shown}\n{pods.logs()}"
            ) from None
        for launcher in pods.launchers:
            assert launcher.wait(240) == 0, pods.logs()
    finally:
        pods.stop()
    records = read_events(events)
    assert pids_by_rank(records, 0) == before and {e["gen"] for e in records} == {0}, pods.logs()
    assert states(events) == expected, "every step's state as in the uninterrupted run"
    no_raw_grpc_text(pods.logs())


def test_a_leader_sidecar_back_after_every_rank_finished_shows_every_pods_ranks(
    tmp_path: Path, shm_dir: Path
) -> None:
    """The leader's sidecar comes back only once every rank of both pods has finished: the
    follower's join ends the job at once, and no heartbeat follows that would carry its ranks
    (they come with the join)."""
    events = tmp_path / "events"
    pods = Pods(nnodes=2, snapshot_root=shm_dir / "pods")
    try:
        before = kill_a_sidecar_at_step_8(pods, events, 0)
        first = pods.launchers[0]

        def all_finished() -> bool:
            records = read_events(events)
            return all(max_step(records, rank) >= STEPS for rank in range(4))

        first.wait_for(all_finished, 120, "every rank's last step with the leader away")
        pods.sidecars[0] = pods.start_sidecar(0)
        for launcher in pods.launchers:
            assert launcher.wait(120) == 0, pods.logs()
        shown = status(pods.ports[0])
    finally:
        pods.stop()
    assert shown.get("state") == "JOB_STATE_SUCCEEDED", shown
    ranks = {r.get("rank", 0): r.get("pid") for r in shown.get("ranks", [])}
    assert ranks == before, f"{before} expected, shown {shown}"
    assert {r["state"] for r in shown["ranks"]} == {"WORKER_STATE_SUCCEEDED"}, shown
