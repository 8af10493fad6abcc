"""What the sidecars do once a job of two pods has finished and they keep running."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from jobs import wait_until
from pods import Pods

from train_supervisor import exit_codes

FOLLOWER = 1
# The follower's re-join backoff tops out at 2 s (+ the failed call): a loop shows within this.
REJOIN_PERIOD_S = 2.5


@pytest.fixture
def pods() -> Iterator[Pods]:
    job = Pods(2, nproc=1, warm_spares=0)
    yield job
    job.stop()


def test_the_follower_stops_joining_the_leader_once_the_job_is_over(pods: Pods) -> None:
    """It re-joined every 2.5 s for as long as it ran, each time with a warning."""
    pods.start_launchers(["--steps", "3"])
    for launcher in pods.launchers:
        assert launcher.wait(180) == exit_codes.SUCCEEDED, pods.logs()
    follower = pods.sidecars[FOLLOWER]
    wait_until(
        lambda: "the job is over: this pod no longer joins the leader" in follower.stderr,
        30,
        "the follower to stop joining",
    )
    rejoins = follower.stderr.count("re-joining")
    began = time.monotonic()
    # Absence over a window is what is asserted: three periods of the loop it replaced.
    while time.monotonic() - began < 3 * REJOIN_PERIOD_S:
        assert follower.proc.poll() is None, follower.stderr
        time.sleep(0.5)
    assert follower.stderr.count("re-joining") == rejoins, follower.stderr


def test_the_leaders_status_shows_every_pods_ranks_as_they_finished(pods: Pods) -> None:
    """The follower's ranks showed `healthy` at an older step: its last heartbeat before the
    end, not its "finished" report, was what the leader kept."""
    pods.start_launchers(["--steps", "30"])
    for launcher in pods.launchers:
        assert launcher.wait(180) == exit_codes.SUCCEEDED, pods.logs()
    ranks = pods.status(0)["ranks"]
    # JSON leaves out proto3 defaults (rank 0); int64 values are strings.
    assert [r.get("rank", 0) for r in ranks] == [0, 1], ranks
    assert {r.get("state") for r in ranks} == {"WORKER_STATE_SUCCEEDED"}, ranks
    assert {int(r.get("step", 0)) for r in ranks} == {30}, ranks
