"""A full durable disk under a job of two pods: loud, self-healing, and restorable after.

Pod 1's part of the durable directory is a tiny tmpfs (a real ENOSPC); pod 0's is not.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs import read_events, wait_until
from mounts import remount, tmpfs
from pods import Pods

from supervisor.snapshots.durable import DurableStore
from train_supervisor import exit_codes

pytestmark = pytest.mark.slow

RUN_ID = "none"  # train-launch's run id without --rdzv-id: the durable directory's <run_id>
STEPS = 240
SCRIPT = ["--steps", str(STEPS), "--step-sleep", "0.05", "--snapshot", "--trace-state"]
SIDECAR = {"SUPERVISOR_PERSIST_EVERY_STEPS": "5", "SUPERVISOR_PERSIST_KEEP": "3"}


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    directory = Path("/dev/shm") / f"ts-test-{uuid.uuid4().hex[:12]}"
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def two_pods(durable: Path, shm: Path) -> Pods:
    return Pods(
        2, nproc=1, warm_spares=0,
        launcher_env={"TRAIN_SUPERVISOR_SNAPSHOT_DIR": str(shm)},
        sidecar_env={"SUPERVISOR_DURABLE_DIR": str(durable), **SIDECAR},
    )  # fmt: skip


def test_a_full_disk_on_one_pod_is_loud_leaves_no_partial_step_and_restores_the_newest_whole(
    tmp_path: Path, shm_dir: Path
) -> None:
    durable, events = tmp_path / "durable", tmp_path / "events"
    stores = [DurableStore(durable, RUN_ID, node) for node in (0, 1)]
    with tmpfs(stores[1].directory, "size=8k"):  # too small for one rank's file
        pods = two_pods(durable, shm_dir / "first")
        try:
            pods.start_launchers([*SCRIPT, "--events", str(events)])
            leader, follower = pods.sidecars
            wait_until(
                lambda: (
                    "WARNING persist_error:" in follower.stderr and "(ENOSPC)" in follower.stderr
                ),
                90,
                "a WARNING for the full disk on pod 1",
            )
            # Pod 0 wrote its part of the step; with pod 1's missing it is dropped again.
            wait_until(lambda: "persist_dropped" in leader.stderr, 60, "pod 0 to drop its part")
            wait_until(lambda: stores[0].steps() == [], 30, "no partial step on pod 0")
            status = pods.status(0)
            errors = " ".join(status.get("offloadErrors", []))
            assert "node 1" in errors and "No space left" in errors, status
            assert int(status["persistedStep"]) == -1, status
            assert int(status["committedStep"]) > 0, "training and commits go on meanwhile"
            remount(stores[1].directory, "size=64m")  # space is back
            wait_until(
                lambda: len(set(stores[0].steps()) & set(stores[1].steps())) >= 2,
                90,
                "two steps complete on both pods",
            )
            for launcher in pods.launchers:
                assert launcher.wait(240) == exit_codes.SUCCEEDED, pods.logs()
        finally:
            pods.stop()
        common = sorted(set(stores[0].steps()) & set(stores[1].steps()))
        newest = common[-1]
        for store in stores:  # retention kept no incomplete step older than a complete one
            assert [s for s in store.steps() if s < newest and s not in common] == [], (
                stores[0].steps(), stores[1].steps(),
            )  # fmt: skip
        traced = {(e["rank"], e["step"]): e["state"] for e in read_events(events)
                  if e["event"] == "step"}  # fmt: skip

        # Pod 1's part of the newest step is half-written (a disk that failed under it):
        # a new job with empty memory restores the newest step whole on both pods.
        cut = stores[1].step_dir(newest) / "rank-1.pt"
        cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
        resumed_events = tmp_path / "resumed"
        pods = two_pods(durable, shm_dir / "second")
        try:
            pods.start_launchers([*SCRIPT, "--events", str(resumed_events)])
            for launcher in pods.launchers:
                assert launcher.wait(240) == exit_codes.SUCCEEDED, pods.logs()
        finally:
            pods.stop()
    resumes = [e for e in read_events(resumed_events) if e["event"] == "resumed"]
    assert sorted(e["rank"] for e in resumes) == [0, 1]
    [step] = {e["from_step"] for e in resumes}
    assert step == common[-2], f"resumed from {step}; complete on both pods: {common}"
    for resume in resumes:  # bitwise the state the first run had at that step
        assert resume["state"] == traced[(resume["rank"], step)], resume
