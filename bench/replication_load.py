"""Replication under load: a 2-pod job saving every step, its rounds and what they cost training.

2 pods x 2 ranks of the recovery benches' toy on one machine (4-rank DDP with gloo), no fault.
train-launch saves every step with the worker API and each pod's supervisor replicates the
committed step into the other pod's memory, one round at a time. Measured: the rounds that
completed and those that failed (and why), how far the replicated step trailed the committed
one, the training loop's wait for its saves, and the step time, beside the same job under
train-launch without snapshots and under torchrun, in the same run.

    python bench/replication_load.py      # results: bench/results/, docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from jobs import RunningJob, read_events
from pods import Pods
from recovery import RESULTS, TORCHRUN_ENV, TORCHRUN_NOTE, script_args
from recovery_multi_pod import NNODES, NPROC_PER_NODE, start_torchrun_agents
from results_doc import publish

from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

DEFAULT_OUT = RESULTS / "replication_load"
WARMUP_STEPS = 5  # the first steps build buckets and fault memory in: not the steady state
STORED = re.compile(r"stored the replica of rank (\d+) step (\d+)")
FAILED = re.compile(r"replica_error: (.*)")
WHY = {  # a failed round's message -> what it means
    "being overwritten": "its rank was already saving over the step",
    "was overwritten": "its rank saved over the step before it was pinned",
    "checksum": "the copy was torn (checksum)",
    "is not in": "the step was gone before staging reached its rank",
}


class OffloadProbe:
    """Polls every pod's GetStatus: the committed and replicated steps, each rank's save wait."""

    def __init__(self, ports: list[int], interval_s: float = 0.25) -> None:
        self.channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for port in ports]
        self.interval_s = interval_s
        self.lags: list[int] = []  # committed - replicated, once something is replicated
        self.unreplicated_samples = 0  # committed, nothing replicated yet
        self.blocking: dict[tuple[int, int], float] = {}  # (rank, saved step) -> its wait
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        stubs = [pb_grpc.StatusServiceStub(channel) for channel in self.channels]
        while not self.stopped.wait(self.interval_s):
            for node, stub in enumerate(stubs):
                try:
                    status = stub.GetStatus(pb.GetStatusRequest(), timeout=2)
                except grpc.RpcError:
                    continue  # not up yet, or over
                if node == 0 and status.committed_step >= 0:  # the leader's view
                    if status.replicated_step >= 0:
                        self.lags.append(status.committed_step - status.replicated_step)
                    else:
                        self.unreplicated_samples += 1
                for rank in status.ranks:
                    if rank.saved_step >= 0:
                        self.blocking[(rank.rank, rank.saved_step)] = rank.save_blocking_s

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        for channel in self.channels:
            channel.close()


def step_times(events: list[dict[str, Any]]) -> list[float]:
    """Rank 0's step-to-step times after the warm-up."""
    ends = [e["t"] for e in events if e["event"] == "step" and e["rank"] == 0]
    return [b - a for a, b in list(zip(ends, ends[1:]))[WARMUP_STEPS:]]


def rounds_seen(sidecars: list[RunningJob]) -> dict[str, Any]:
    """Completed rounds (a step every rank of a pod stored on the next pod) and failed ones."""
    stored: dict[int, set[int]] = {}  # step -> ranks whose replica was stored
    reasons: Counter[str] = Counter()
    for sidecar in sidecars:
        for line in list(sidecar.stderr_lines):
            if match := STORED.search(line):
                stored.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
            elif match := FAILED.search(line):
                text = match.group(1)
                reasons[next((w for key, w in WHY.items() if key in text), text[:120])] += 1
    world = NNODES * NPROC_PER_NODE
    return {
        "completed": sum(1 for ranks in stored.values() if len(ranks) == world),
        "failed_reports": sum(reasons.values()),
        "failed_why": dict(reasons),
    }


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_s": round(statistics.median(ordered), 3),
        "p90_s": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
        "max_s": round(ordered[-1], 3),
    }


def run_train_launch(
    work: Path, args: argparse.Namespace, snapshot: bool, replicate: bool = True
) -> dict[str, Any]:
    shm = Path("/dev/shm") / f"ts-bench-{work.name}" if snapshot else None
    sidecar_env = {} if replicate else {"SUPERVISOR_REPLICATE": "0"}
    pods = Pods(
        NNODES, NPROC_PER_NODE, args.warm_spares, snapshot_root=shm, sidecar_env=sidecar_env
    )
    probe = OffloadProbe(pods.ports)
    try:
        pods.start_launchers([*script_args(work, args), *(["--snapshot"] if snapshot else [])])
        exit_codes = [launcher.wait(900) for launcher in pods.launchers]
    finally:
        probe.close()
        pods.stop()
        if shm is not None:
            shutil.rmtree(shm, ignore_errors=True)
    result: dict[str, Any] = {
        "exit_code": exit_codes,
        "step": summary(step_times(read_events(work / "events"))),
    }
    waits = sorted(probe.blocking.values())
    if waits:
        result["save_blocking"] = {**summary(waits), "saves_seen": len(waits)}
    if snapshot and replicate:
        result["rounds"] = rounds_seen(pods.sidecars)
        result["lag_steps"] = {
            "median": statistics.median(probe.lags) if probe.lags else None,
            "max": max(probe.lags, default=None),
            "samples": len(probe.lags),
            "samples_with_nothing_replicated": probe.unreplicated_samples,
        }
    return result


def run_torchrun(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    agents = start_torchrun_agents(work, args)
    try:
        exit_codes = [agent.wait(900) for agent in agents]
    finally:
        for agent in agents:
            agent.kill_tree()
    return {"exit_code": exit_codes, "step": summary(step_times(read_events(work / "events")))}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    params = args.layers * (args.hidden * args.hidden + args.hidden)
    runs: dict[str, Callable[[Path], dict[str, Any]]] = {
        "snapshots": lambda work: run_train_launch(work, args, snapshot=True),
        "snapshots_no_replica": lambda work: run_train_launch(work, args, True, replicate=False),
        "no_snapshots": lambda work: run_train_launch(work, args, snapshot=False),
        "torchrun": lambda work: run_torchrun(work, args),
    }
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores",
        "config": {**vars(args), "state_mb": round(params * 4 * 3 / 1e6)},
        "torchrun_env": TORCHRUN_ENV,
    }
    for name, run in runs.items():
        with tempfile.TemporaryDirectory() as work:
            report[name] = run(Path(work))
    return report


def markdown(report: dict[str, Any]) -> str:
    cfg, ours = report["config"], report["snapshots"]
    rounds, lag, wait = ours["rounds"], ours["lag_steps"], ours["save_blocking"]
    why = "; ".join(f"{n} × {w}" for w, n in rounds["failed_why"].items()) or "none"
    runs = {
        "snapshots": "train-launch, saving every step, replicating",
        "snapshots_no_replica": "train-launch, saving every step, no replication",
        "no_snapshots": "train-launch, no snapshots",
        "torchrun": "torchrun",
    }
    lines = [
        f"Replication under load: {NNODES} pods × {NPROC_PER_NODE} ranks on one machine (4-rank "
        f"DDP with gloo over loopback, {cfg['state_mb']} MB model + Adam state per rank, "
        f"{cfg['steps']} steps, no fault, {report['machine']}), measured {report['date']}.",
        "",
        "| run | step time: median | p90 | max | the loop's wait for a save: p90 | exit codes |",
        "|---|---|---|---|---|---|",
    ]
    for key, name in runs.items():
        step, saves = report[key]["step"], report[key].get("save_blocking", {})
        waited = f"{saves['p90_s']:.3f} s" if saves else ""
        lines.append(
            f"| {name} | {step['median_s']:.3f} s | {step['p90_s']:.3f} s | {step['max_s']:.3f} s "
            f"| {waited} | {report[key]['exit_code']} |"
        )
    lines += [
        "",
        f"- Replication rounds completed (every rank's step stored on the other pod): "
        f"**{rounds['completed']}**; failed pod reports: **{rounds['failed_reports']}** ({why}).",
        f"- Committed minus replicated step, sampled every 0.25 s on the leader: median "
        f"{lag['median']}, max {lag['max']} ({lag['samples']} samples; "
        f"{lag['samples_with_nothing_replicated']} more before the first replica).",
        f"- The training loop's wait for a save while replicating (status `save_blocking_s`, "
        f"{wait.get('saves_seen')} saves seen): median {wait.get('median_s')} s, p90 "
        f"{wait.get('p90_s')} s, max {wait.get('max_s')} s (a writer waiting for staging to "
        "unpin its slot is part of it).",
        f"- Step times are rank 0's, after {WARMUP_STEPS} warm-up steps; in every run rank 0 "
        f"also torch.saves the toy's own checkpoint every {cfg['ckpt_every']} steps. 4 ranks "
        "and 2 sidecars share the cores: every copy the workers and sidecars make (a save "
        "copies and checksums each rank's state; a round stages and streams the pod's) competes "
        "with training.",
        f"- {TORCHRUN_NOTE} Reproduce: `python bench/replication_load.py`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--ckpt-every", type=int, default=10)
    p.add_argument("--warm-spares", type=int, default=1)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args()
    report = measure(args)
    publish(DEFAULT_OUT.name, Path(args.out), DEFAULT_OUT, report, markdown(report))


if __name__ == "__main__":
    main()
