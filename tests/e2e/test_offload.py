"""Copies outside the ranks' memory, end to end: the durable directory and the peer replica."""

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

import pytest
from jobs import RunningJob, job_env, max_step, pids_by_rank, read_events, train_launch, wait_until
from mounts import remount, tmpfs
from pods import Pods
from test_snapshots import snapshot_status

from train_supervisor.arena import HEADER_SIZE

pytestmark = pytest.mark.slow

NPROC = 2

# Run with `python -I` from an empty directory: nothing of ours can be imported.
PLAIN_TORCH_LOAD = r"""
import ctypes, hashlib, json, sys
import torch

def raw(t):
    t = t.detach().contiguous()
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())

out = {}
for path in sys.argv[1:]:
    state = torch.load(path)  # weights_only=True: plain tensors and containers only
    digest = hashlib.sha256()
    for t in [*state["model"].values(), *(v for s in state["optim"]["state"].values()
                                          for v in s.values())]:
        digest.update(raw(t))
    out[path] = digest.hexdigest()
ours = [m for m in sys.modules if m.split(".")[0] in ("train_supervisor", "supervisor", "launcher")]
assert not ours, ours
print(json.dumps(out))
"""


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    directory = Path("/dev/shm") / f"ts-test-{uuid.uuid4().hex[:12]}"
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def durable_steps(durable: Path, node: int = 0) -> dict[int, Path]:
    """Complete persisted steps of pod `node` (any run id)."""
    return {
        int(d.name.split("-")[1]): d
        for d in durable.glob(f"*/node-{node}/step-*")
        if d.is_dir() and ".tmp" not in d.name
    }


def plain_torch_load(paths: list[Path], cwd: Path) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_TORCH_LOAD, *map(str, paths)],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    loaded: dict[str, str] = json.loads(done.stdout)
    return loaded


def traced_states(events: Path) -> dict[tuple[int, int], str]:
    return {(e["rank"], e["step"]): e["state"] for e in read_events(events)
            if e["event"] == "step" and e["gen"] == 0}  # fmt: skip


def start(events: Path, shm: Path, durable: Path, *extra: str, **env: str) -> RunningJob:
    flags = ["--standalone", "--nproc-per-node", str(NPROC), "--max-restarts", "3"]
    script = ["--snapshot", "--trace-state", "--events", str(events), *extra]
    settings = {"TRAIN_SUPERVISOR_SNAPSHOT_DIR": str(shm), "SUPERVISOR_DURABLE_DIR": str(durable)}
    return train_launch(flags, script, env=job_env(**settings, **env))


def test_persisted_steps_load_with_plain_torch_load_bitwise(tmp_path: Path, shm_dir: Path) -> None:
    durable, events = tmp_path / "durable", tmp_path / "events"
    job = start(
        events, shm_dir, durable, "--steps", "16",
        SUPERVISOR_PERSIST_EVERY_STEPS="4", SUPERVISOR_PERSIST_KEEP="2",
    )  # fmt: skip
    assert job.wait(180) == 0, job.stderr
    steps = durable_steps(durable)
    assert len(steps) == 2, f"the newest 2 are kept: {sorted(steps)}"
    expected = traced_states(events)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    for step, directory in steps.items():
        manifest = json.loads((directory / "MANIFEST.json").read_text())
        assert manifest["step"] == step and len(manifest["ranks"]) == NPROC
        files = [directory / f"rank-{rank}.pt" for rank in range(NPROC)]
        loaded = plain_torch_load(files, cwd=empty)
        for rank, path in enumerate(files):
            assert loaded[str(path)] == expected[(rank, step)], f"rank {rank} step {step}"
    assert "persisted: step" in job.stderr


def test_a_full_or_read_only_durable_directory_never_stops_training(
    tmp_path: Path, shm_dir: Path
) -> None:
    durable, events = tmp_path / "durable", tmp_path / "events"
    with tmpfs(durable, "size=64k,ro"):
        job = start(
            events, shm_dir, durable, "--steps", "400", "--step-sleep", "0.05",
            SUPERVISOR_PERSIST_EVERY_STEPS="5",
        )  # fmt: skip
        address = job.supervisor_address()

        def errors() -> str:
            return " ".join(snapshot_status(address).get("offloadErrors", []))

        wait_until(lambda: "Read-only" in errors(), 60, "a read-only error in status")
        remount(durable, "rw,size=16k")  # writable, but too small for one step
        wait_until(lambda: "No space" in errors(), 60, "a full-disk error in status")
        status = snapshot_status(address)
        assert int(status["committedStep"]) > 10, "training and commits go on meanwhile"
        assert int(status["persistedStep"]) == -1, status
        assert not durable_steps(durable), "nothing partial is left behind"
        remount(durable, "size=64m")  # space is back
        wait_until(lambda: int(snapshot_status(address)["persistedStep"]) > 0, 60, "a persist")
        assert errors() == "", "the error clears once persistence works again"
        job.wait_for(lambda: durable_steps(durable) != {}, 30, "a step on disk")
        assert job.wait(240) == 0, job.stderr
    assert "persist_error" in job.stderr and "Read-only file system" in job.stderr
    done = {e["rank"]: e["step"] for e in read_events(events) if e["event"] == "done"}
    assert done == dict.fromkeys(range(NPROC), 400)


def test_a_corrupt_memory_copy_falls_back_to_the_durable_copy(
    tmp_path: Path, shm_dir: Path
) -> None:
    durable, events = tmp_path / "durable", tmp_path / "events"
    job = start(
        events, shm_dir, durable, "--steps", "40", "--step-sleep", "0.1",
        SUPERVISOR_PERSIST_EVERY_STEPS="3",
    )  # fmt: skip
    job.wait_for(lambda: len(durable_steps(durable)) >= 2, 120, "two persisted steps")
    pids = pids_by_rank(read_events(events), 0)
    for pid in pids.values():  # no write in flight while the bytes are flipped
        os.kill(pid, signal.SIGSTOP)
    for where in (shm_dir, shm_dir / "staged"):  # every copy in rank 1's memory
        for slot in (0, 1):
            path = where / f"rank-1.slot{slot}"
            if path.exists():
                with open(path, "r+b") as handle:
                    handle.seek(HEADER_SIZE + 8)
                    byte = handle.read(1)
                    handle.seek(HEADER_SIZE + 8)
                    handle.write(bytes([byte[0] ^ 0xFF]))
    persisted = max(durable_steps(durable))
    os.kill(pids[1], signal.SIGKILL)
    os.kill(pids[0], signal.SIGCONT)
    assert job.wait(180) == 0, job.stderr
    assert "checksum" in job.stderr and "snapshot_problem" in job.stderr
    records = read_events(events)
    resumed = {e["rank"]: e["from_step"] for e in records if e["event"] == "resumed" and e["gen"]}
    assert set(resumed.values()) == {persisted}, (resumed, persisted)
    expected = traced_states(events)
    for e in records:
        if e["event"] == "resumed" and e["gen"]:
            assert e["state"] == expected[(e["rank"], persisted)], "bitwise the persisted state"
    assert "from durable" in job.stderr


def test_a_replaced_pod_with_empty_memory_restores_from_the_peer_replica(
    tmp_path: Path, shm_dir: Path
) -> None:
    events = tmp_path / "events"
    script = ["--steps", "60", "--step-sleep", "0.05", "--snapshot", "--trace-state"]
    durable = tmp_path / "durable"
    pods = Pods(
        nnodes=2,
        snapshot_root=shm_dir,
        # A durable copy exists (the first committed step), but the replica is newer.
        sidecar_env={"SUPERVISOR_DURABLE_DIR": str(durable), "SUPERVISOR_PERSIST_EVERY_S": "3600"},
    )
    try:
        pods.start_launchers([*script, "--events", str(events)])
        wait_until(lambda: max_step(read_events(events), 3) >= 12, 120, "rank 3 to step")
        status = pods.status(0)
        assert int(status["replicatedStep"]) >= 1, status
        # Rounds are job-wide: every rank shows the leader's step, a follower's lag or not.
        assert {r["replicatedStep"] for r in status["ranks"]} == {status["replicatedStep"]}, status
        pods.replace_pod(1, wipe_memory=True)
        for launcher in pods.launchers:
            assert launcher.wait(240) == 0, pods.logs()
        # The trainer containers are done; Kubernetes now stops the sidecars: each persists
        # its pod's newest committed step first.
        for sidecar in pods.sidecars:
            sidecar.proc.send_signal(signal.SIGTERM)
        for sidecar in pods.sidecars:
            assert sidecar.wait(60) == 0, pods.logs()
    finally:
        pods.stop()
    flushed = [max(durable_steps(durable, node)) for node in (0, 1)]
    assert flushed[0] == flushed[1] >= 59, f"the last committed step on both pods: {flushed}"
    records = read_events(events)
    resumes = [e for e in records if e["event"] == "resumed" and e["gen"]]
    [step] = {e["from_step"] for e in resumes}
    assert step > 1, "the replica's step, newer than the durable one"
    expected = traced_states(events)
    for resume in resumes:  # bitwise what the ranks had at that step
        assert resume["state"] == expected[(resume["rank"], step)], resume
    logs = pods.logs()
    assert "rank 2 restored step" in logs and "from peer" in logs, logs
    assert "from durable" not in logs


def test_sigterm_persists_the_newest_committed_step_before_exit(
    tmp_path: Path, shm_dir: Path
) -> None:
    durable, events = tmp_path / "durable", tmp_path / "events"
    job = start(
        events, shm_dir, durable, "--steps", "400", "--step-sleep", "0.05",
        SUPERVISOR_PERSIST_EVERY_S="3600",  # rounds persist only the first committed step
    )  # fmt: skip
    address = job.supervisor_address()
    wait_until(lambda: int(snapshot_status(address)["committedStep"]) >= 20, 120, "step 20")
    before = int(snapshot_status(address)["committedStep"])
    os.kill(job.proc.pid, signal.SIGTERM)
    assert job.wait(120) == 143, job.stderr
    newest = max(durable_steps(durable))
    assert newest >= before, f"committed {before} before SIGTERM; persisted {newest}"
    assert "flushed at shutdown" in job.stderr
    files = [durable_steps(durable)[newest] / f"rank-{rank}.pt" for rank in range(NPROC)]
    loaded = plain_torch_load(files, cwd=tmp_path)
    expected = traced_states(events)
    assert [loaded[str(f)] for f in files] == [expected[(r, newest)] for r in range(NPROC)]
