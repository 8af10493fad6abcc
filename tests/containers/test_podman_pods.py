"""The pods of k8s/indexed-job.yaml in real containers, under podman, with images built here.

The sidecar image is the repository's Dockerfile, unchanged; the trainer image is the CPU torch,
the project and tests/workloads/toy_ddp.py (tools/containers/). Each pod of the Indexed Job is
converted to a Pod for `podman kube play` (every substitution printed: run with -s to see them)
and the faults are real: a SIGKILL from inside a pod, the sidecar container killed and started
again, a pod removed and created again for the same index.

Needs podman, buildah, runc and mmdebstrap (apt-get install -y podman buildah runc mmdebstrap)
and root. Without them the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "containers"))
from images import TIMINGS_ENV, BuildTimes, build_all
from podman_pods import PodmanJob

INSTALL = "apt-get install -y podman buildah runc mmdebstrap"
SCRIPT = ["--step-sleep", "0.05", "--snapshot"]

# The first test builds the images (minutes on a loaded 2-CPU machine): past the 240 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def missing() -> str:
    absent = [
        tool for tool in ("podman", "buildah", "runc", "mmdebstrap") if not shutil.which(tool)
    ]
    if absent:
        return f"{', '.join(absent)} not installed: {INSTALL}"
    if os.geteuid() != 0:
        return "the podman tests run as root (tmpfs mounts, kube play --ip on a bridge network)"
    return ""


@pytest.fixture(scope="session")
def images() -> BuildTimes:
    why = missing()
    if why and os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the container tests: {why}")
    if why:
        pytest.skip(why)
    times = BuildTimes()
    build_all(times)
    if os.environ.get(TIMINGS_ENV):
        builds = {**times.seconds, "base_cached": times.cached.get("base", False)}
        Path(os.environ[TIMINGS_ENV]).write_text(json.dumps(builds))
    return times


@pytest.fixture
def job(images: BuildTimes, tmp_path: Path) -> Iterator[Callable[..., PodmanJob]]:
    made: list[PodmanJob] = []

    def make(steps: int, **sidecar_env: str) -> PodmanJob:
        podman_job = PodmanJob(tmp_path, [*SCRIPT, "--steps", str(steps)], sidecar_env=sidecar_env)
        made.append(podman_job)
        podman_job.start()
        return podman_job

    yield make
    for podman_job in made:
        podman_job.stop()


def max_step(records: list[dict[str, Any]], rank: int) -> int:
    return max(
        (e["step"] for e in records if e["event"] == "step" and e["rank"] == rank), default=0
    )


def done_steps(records: list[dict[str, Any]]) -> dict[int, int]:
    return {e["rank"]: e["step"] for e in records if e["event"] == "done"}


def pids(shown: dict[str, Any]) -> dict[int, int]:
    return {r.get("rank", 0): r["pid"] for r in shown["ranks"]}


def own_ranks(shown: dict[str, Any], node: int) -> list[dict[str, Any]]:
    return [r for r in shown["ranks"] if r.get("nodeRank", 0) == node]


def finish(job: PodmanJob, timeout: float = 240) -> None:
    for index in range(job.nnodes):
        code = job.wait_trainer(index, timeout)
        assert code == 0, f"pod {index}'s trainer exited {code}\n{job.all_logs()}"


def test_a_clean_two_pod_run_succeeds(job: Any) -> None:
    pods: PodmanJob = job(30)
    finish(pods)
    shown = pods.status(0)
    assert shown["state"] == "JOB_STATE_SUCCEEDED", shown
    assert shown.get("generation", "0") == "0" and shown.get("restartCount", 0) == 0, shown
    assert int(shown["committedStep"]) == 30, shown
    assert done_steps(pods.read_events()) == {0: 30, 1: 30, 2: 30, 3: 30}


def test_a_rank_sigkilled_inside_a_pod_is_restarted_in_place(job: Any) -> None:
    pods: PodmanJob = job(100)
    pods.wait_until(lambda: max_step(pods.read_events(), 2) >= 5, 180, "rank 2 at step 5")
    before = pids(pods.status(1))
    pods.kill_rank(1, before[2])  # from inside pod 1: the pid as its namespace numbers it
    finish(pods)
    leader, follower = pods.status(0), pods.status(1)
    assert leader["state"] == "JOB_STATE_SUCCEEDED", leader
    assert int(leader.get("generation", "0")) == 1 and leader.get("restartCount") == 1, leader
    after = pids(follower)
    assert after[2] != before[2], "rank 2 got a new process"
    assert after[3] == before[3], "the pod's other rank stayed in its process"
    [rank2] = [r for r in own_ranks(follower, 1) if r["rank"] == 2]
    assert rank2["processStarts"] == 2, follower
    assert done_steps(pods.read_events()) == {0: 100, 1: 100, 2: 100, 3: 100}


def test_the_leader_sidecar_killed_and_restarted_the_trainer_rides_through(job: Any) -> None:
    pods: PodmanJob = job(300)
    pods.wait_until(lambda: max_step(pods.read_events(), 0) >= 5, 180, "rank 0 at step 5")
    before = pids(pods.status(0))
    pods.kill_sidecar(0)
    killed_at = max_step(pods.read_events(), 0)
    # The workers train on without it: the collectives do not need the sidecar.
    pods.wait_until(lambda: max_step(pods.read_events(), 0) >= killed_at + 3, 60, "steps")
    pods.restart_sidecar(0)

    def rebuilt() -> bool:
        shown = pods.try_status(0)
        live = shown.get("state") in ("JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED")
        return live and {r: p for r, p in pids(shown).items() if r < 2} == {
            0: before[0],
            1: before[1],
        }

    pods.wait_until(rebuilt, 120, "the new leader sidecar to show the running ranks")
    finish(pods)
    records = pods.read_events()
    assert {e["gen"] for e in records} == {0}, "no restart"
    assert done_steps(records) == {0: 300, 1: 300, 2: 300, 3: 300}
    started = {(e["rank"], e["pid"]) for e in records if e["event"] == "start"}
    assert len(started) == 4, f"every rank kept its process: {started}"
    assert "resumed: generation 0 runs on" in pods.logs(0, "supervisor")


def test_a_removed_pod_is_created_again_and_rejoins_from_the_peer_replica(job: Any) -> None:
    pods: PodmanJob = job(150)
    pods.wait_until(lambda: max_step(pods.read_events(), 2) >= 10, 180, "rank 2 at step 10")
    before = pids(pods.status(0))
    removed_at = time.monotonic()
    pods.remove(1)  # SIGKILL to every process of the pod, then gone with its /dev/shm
    pods.play(1)  # the Job controller's replacement: the same index, an empty /dev/shm
    finish(pods, timeout=300)
    recovered_s = time.monotonic() - removed_at
    leader = pods.status(0)
    assert leader["state"] == "JOB_STATE_SUCCEEDED", leader
    assert int(leader.get("generation", "0")) >= 1, leader
    assert {r: p for r, p in pids(leader).items() if r < 2} == {0: before[0], 1: before[1]}, (
        "the leader pod's ranks waited in place"
    )
    records = pods.read_events()
    assert done_steps(records) == {0: 150, 1: 150, 2: 150, 3: 150}
    resumes = {e["rank"]: e["from_step"] for e in records if e["event"] == "resumed" and e["gen"]}
    assert resumes.get(2, 0) > 1 and resumes.get(3, 0) > 1, f"from memory: {resumes}"
    logs = pods.logs(1, "supervisor")
    assert "rank 2 restored step" in logs and "from peer" in logs, logs
    print(f"pod removed to job finished: {recovered_s:.1f} s")
