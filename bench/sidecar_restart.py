"""A sidecar SIGKILL under a running job: how long until its replacement serves the job again,
and what training lost meanwhile.

One pod: a `train-supervisor serve` sidecar and `train-launch` (2 ranks of toy DDP, a snapshot
every step through the worker API, a state hash per step). At a fixed step the sidecar is
SIGKILLed and a new one started at once (what the kubelet does for a native sidecar). Measured:
- the time from the SIGKILL until the new sidecar answers `status` with the job's state (the
  running generation, every rank's pid, the committed step);
- steps lost: steps whose state differs from an uninterrupted run's, or that ran twice;
- whether training paused: steps completed during the outage, the step rate around the fault
  and the longest gap between two steps, against the same job without the fault.
torchrun has no sidecar to lose: its figure is the step rate of the same job without a fault
(TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 and the malloc settings of bench/recovery.py).

    python bench/sidecar_restart.py     # writes bench/results/sidecar_restart.{json,md}
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from jobs import TOY_DDP, RunningJob, job_env, max_step, read_events, torchrun
from recovery import TORCHRUN_ENV, TORCHRUN_NOTE
from results_doc import publish

from supervisor.workers.ports import free_port
from train_supervisor.credentials import client_channel
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "sidecar-restart-bench-token-0123456789"
NPROC = 2


def script_args(args: argparse.Namespace, events: Path) -> list[str]:
    return ["--steps", str(args.steps), "--step-sleep", str(args.step_sleep), "--snapshot",
            "--trace-state", "--events", str(events)]  # fmt: skip


def start_sidecar(port: int) -> RunningJob:
    env = job_env(SUPERVISOR_NNODES="1", SUPERVISOR_PORT=str(port), SUPERVISOR_TOKEN=TOKEN,
                  SUPERVISOR_BIND="127.0.0.1")  # fmt: skip
    return RunningJob([sys.executable, "-m", "supervisor.cli", "serve"], env)


def start_launcher(port: int, shm: Path, args: argparse.Namespace, events: Path) -> RunningJob:
    argv = [sys.executable, "-m", "launcher.launch.main", "--nproc-per-node", str(NPROC),
            "--supervisor-address", f"127.0.0.1:{port}", str(TOY_DDP),
            *script_args(args, events)]  # fmt: skip
    env = job_env(SUPERVISOR_TOKEN=TOKEN, TRAIN_SUPERVISOR_SNAPSHOT_DIR=str(shm))
    return RunningJob(argv, env)


def status(stub: pb_grpc.StatusServiceStub) -> Optional[pb.JobStatus]:
    """GetStatus as `train-supervisor status` calls it; None while nothing answers."""
    try:
        reply: pb.JobStatus = stub.GetStatus(pb.GetStatusRequest(), timeout=2)
    except grpc.RpcError:
        return None
    return reply


def step_times(events: Path) -> list[float]:
    """When each step completed (rank 0's view: the job steps together)."""
    return [e["t"] for e in read_events(events) if e["event"] == "step" and e["rank"] == 0]


def rate(times: list[float], start: float, end: float) -> float:
    inside = [t for t in times if start <= t <= end]
    return (len(inside) - 1) / (inside[-1] - inside[0]) if len(inside) > 1 else 0.0


def longest_gap(times: list[float], start: float, end: float) -> float:
    inside = [t for t in times if start <= t <= end]
    return max((b - a for a, b in zip(inside, inside[1:])), default=0.0)


def states(events: Path) -> dict[tuple[int, int], str]:
    return {(e["rank"], e["step"]): e["state"] for e in read_events(events)
            if e["event"] == "step"}  # fmt: skip


def run_without_fault(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    events, port = work / "baseline", free_port()
    sidecar = start_sidecar(port)
    try:
        launcher = start_launcher(port, work / "shm-baseline", args, events)
        exit_code = launcher.wait(900)
    finally:
        sidecar.kill_tree()
    times = step_times(events)
    return {"exit_code": exit_code, "steps_per_s": rate(times, times[0], times[-1]),
            "longest_gap_s": longest_gap(times, times[0], times[-1]),
            "states": states(events)}  # fmt: skip


def run_torchrun(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    events = work / "torchrun"
    flags = ["--standalone", "--nproc-per-node", str(NPROC)]
    env = job_env(**TORCHRUN_ENV, TRAIN_SUPERVISOR_SNAPSHOT_DIR=str(work / "shm-torchrun"))
    # The worker API needs a supervisor: torchrun runs the job without --snapshot.
    plain = [a for a in script_args(args, events) if a != "--snapshot"]
    exit_code = torchrun(flags, plain, env).wait(900)
    times = step_times(events)
    return {"exit_code": exit_code, "steps_per_s": rate(times, times[0], times[-1])}


def run_with_fault(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    events, port = work / "fault", free_port()
    sidecar = start_sidecar(port)
    launcher: Optional[RunningJob] = None
    try:
        launcher = start_launcher(port, work / "shm-fault", args, events)
        launcher.wait_for(lambda: max_step(read_events(events), 0) >= args.kill_at_step, 600,
                          f"step {args.kill_at_step}")  # fmt: skip
        pids = {e["rank"]: e["pid"] for e in read_events(events) if e["event"] == "start"}
        killed_at = time.time()
        os.kill(sidecar.proc.pid, signal.SIGKILL)
        sidecar.wait(30)
        step_at_kill = max_step(read_events(events), 0)
        sidecar = start_sidecar(port)  # at once, as the kubelet restarts a native sidecar
        stub = pb_grpc.StatusServiceStub(client_channel(f"127.0.0.1:{port}", TOKEN))
        answered_at: Optional[float] = None
        while True:
            shown = status(stub)
            if shown is not None and answered_at is None:
                answered_at = time.time()
            ranks = {} if shown is None else {r.rank: r.pid for r in shown.ranks}
            running = shown is not None and shown.state == pb.JOB_STATE_RUNNING
            # The job's state: its ranks, its generation, and a committed step at least as
            # new as the one when the old sidecar died.
            if running and ranks == pids and shown.committed_step >= step_at_kill:
                break
            if launcher.proc.poll() is not None or time.time() - killed_at > 300:
                raise RuntimeError(f"the new sidecar never showed the job: {shown}")
            time.sleep(0.01)
        serving_at = time.time()
        step_at_serving = max_step(read_events(events), 0)
        exit_code = launcher.wait(900)
    finally:
        if launcher is not None:
            launcher.kill_tree()
        sidecar.kill_tree()
    times = step_times(events)
    records = read_events(events)
    return {
        "exit_code": exit_code,
        "seconds_to_serving": serving_at - killed_at,
        # Of which: until the new process answered at all (interpreter start, imports, bind).
        "seconds_to_first_answer": (answered_at or serving_at) - killed_at,
        "step_at_kill": step_at_kill,
        "steps_during_outage": step_at_serving - step_at_kill,
        "steps_per_s_during_outage": rate(times, killed_at, serving_at),
        "longest_gap_s": longest_gap(times, times[0], times[-1]),
        "generations": sorted({e["gen"] for e in records}),
        "pids_changed": sorted(
            {e["rank"] for e in records if e["event"] == "start" and pids[e["rank"]] != e["pid"]}
        ),
        "status_after": {
            "state": pb.JobState.Name(shown.state),
            "generation": shown.generation,
            "committed_step": shown.committed_step,
        },
        "states": states(events),
        # A restart would run steps again from the committed one: counted as lost.
        "steps_run_twice": len(steps := [(e["rank"], e["step"]) for e in records
                                         if e["event"] == "step"]) - len(set(steps)),
    }  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    fault, base, tr = report["fault"], report["baseline"], report["torchrun"]
    lost = report["steps_lost"]
    paused = "no" if fault["steps_during_outage"] > 0 else "yes"
    return "\n".join([
        "| sidecar SIGKILL, restarted at once (1 pod, 2 ranks) | figure |",
        "|---|---|",
        f"| SIGKILL to the new sidecar serving `status` with the job | "
        f"{fault['seconds_to_serving']:.2f} s (its process answering at all: "
        f"{fault['seconds_to_first_answer']:.2f} s) |",
        f"| steps lost (state differs from an uninterrupted run, or ran twice) | {lost} |",
        f"| training paused | {paused}: {fault['steps_during_outage']} steps during the outage, "
        f"{fault['steps_per_s_during_outage']:.1f} steps/s |",
        f"| step rate without the fault: train-launch / torchrun | {base['steps_per_s']:.1f} / "
        f"{tr['steps_per_s']:.1f} steps/s |",
        f"| longest gap between two steps: with the fault / without | "
        f"{fault['longest_gap_s']:.2f} s / {base['longest_gap_s']:.2f} s |",
        f"| worker pids changed, generations | {fault['pids_changed'] or 'none'}, "
        f"{fault['generations']} |",
        f"| the new sidecar's status | {fault['status_after']} |",
        "",
        f"Command: `{report['command']}`. {TORCHRUN_NOTE} torchrun has no sidecar; its figure is "
        "the same job's step rate without the worker API (it cannot save to memory).",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--step-sleep", type=float, default=0.05)
    parser.add_argument("--kill-at-step", type=int, default=40)
    parser.add_argument("--out", type=Path, default=RESULTS / "sidecar_restart")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sidecar-restart-"))
    shm = Path("/dev/shm") / f"sidecar-restart-{uuid.uuid4().hex[:8]}"
    try:
        os.environ["TRAIN_SUPERVISOR_SNAPSHOT_DIR"] = str(shm)
        baseline = run_without_fault(work, args)
        fault = run_with_fault(work, args)
        theirs = run_torchrun(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    expected, got = baseline.pop("states"), fault.pop("states")
    differ = sum(1 for key, state in got.items() if expected.get(key) != state)
    report = {
        "command": "python bench/sidecar_restart.py " + " ".join(sys.argv[1:]),
        "baseline": baseline,
        "fault": fault,
        "torchrun": theirs,
        # A restart would re-run steps under a new generation (see "generations").
        # (rank, step) pairs whose state differs from the uninterrupted run's, or ran twice.
        "steps_lost": differ + fault["steps_run_twice"],
        "steps_compared": len(got),
    }
    text = markdown(report)
    publish("sidecar_restart", args.out, RESULTS / "sidecar_restart", report, text)


if __name__ == "__main__":
    main()
