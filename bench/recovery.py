"""Recovery after one SIGKILL: train-launch against torchrun, side by side in one run.

Both launch the same plain DDP script (tests/workloads/toy_ddp.py: 4 ranks,
~200 MB of model + Adam state, checkpoint to local disk every 10 steps, resume
from the newest). At a fixed step one rank is SIGKILLed. Measured: time from
the kill until every rank has completed a step again, which PIDs changed,
steps lost, and where the time went. torchrun runs with
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, without which torch 2.13 + gloo does not
recover, and with the malloc settings train-launch gives its workers. While
train-launch trains, GetStatus is called in a loop for its latency.

    python bench/recovery.py            # writes bench/results/recovery.{json,md}
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from jobs import (
    RunningJob,
    job_env,
    max_step,
    pids_by_rank,
    read_events,
    torchrun,
    train_launch,
)
from results_doc import quote_in_doc, write_results

from launcher.launch.processes import GLIBC_TUNABLES_ENV, REUSE_FREED_TUNABLES
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

RESULTS = Path(__file__).resolve().parent / "results"
NPROC = 4
# Without the first, torch 2.13 + gloo does not recover; the second gives torchrun's workers
# the malloc train-launch gives its own (--reuse-freed-memory), so both run the same allocator.
TORCHRUN_ENV = {
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    GLIBC_TUNABLES_ENV: REUSE_FREED_TUNABLES,
}
TORCHRUN_NOTE = (
    "torchrun ran with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (without it torch 2.13 + gloo does "
    "not recover) and with the malloc settings train-launch gives its workers "
    f"(--reuse-freed-memory: {GLIBC_TUNABLES_ENV}={REUSE_FREED_TUNABLES}), so both run the "
    "same allocator."
)
RESTORED = re.compile(r"from shm in ([0-9.]+)s")


class StatusProbe:
    """Polls GetStatus while the job runs, for the job's events (and the call latency)."""

    # Slow enough to cost the job nothing: events carry their own timestamps.
    # Latency under load is bench/status_latency.py's subject.
    def __init__(self, address: str, interval_s: float = 0.25) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.StatusServiceStub(self.channel)
        self.interval_s = interval_s
        self.latencies_ms: list[float] = []
        self.events: dict[tuple[float, str], pb.JobEvent] = {}
        self.spare_pids: set[int] = set()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            started = time.perf_counter()
            try:
                status = self.stub.GetStatus(pb.GetStatusRequest(), timeout=2)
            except grpc.RpcError:
                break  # the job is over
            self.latencies_ms.append((time.perf_counter() - started) * 1000)
            for event in status.recent_events:
                self.events[(event.time_unix, event.kind)] = event
            self.spare_pids.update(status.spare_pids)
            self.stopped.wait(self.interval_s)

    def restore_seconds(self, after: float) -> list[float]:
        """How long each rank's snapshot load took, from the supervisor's events."""
        found = (RESTORED.search(e.message) for (t, k), e in self.events.items()
                 if k == "snapshot_restored" and t >= after)  # fmt: skip
        return [float(m.group(1)) for m in found if m is not None]

    def first_event(self, kind: str, after: float) -> Optional[float]:
        times = [t for (t, k) in self.events if k == kind and t >= after]
        return min(times) if times else None

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.channel.close()


def script_args(work: Path, args: argparse.Namespace) -> list[str]:
    return [
        "--steps",
        str(args.steps),
        "--hidden",
        str(args.hidden),
        "--layers",
        str(args.layers),
        "--ckpt-every",
        str(args.ckpt_every),
        "--events",
        str(work / "events"),
        "--ckpt-dir",
        str(work / "ckpt"),
    ]


def kill_at_step(
    job: RunningJob, events_dir: Path, rank: int, step: int
) -> tuple[float, dict[int, int]]:
    job.wait_for(
        lambda: max_step(read_events(events_dir), rank) >= step,
        600,
        f"rank {rank} to reach step {step}",
    )
    before = pids_by_rank(read_events(events_dir), generation=0)
    kill_t = time.time()
    os.kill(before[rank], signal.SIGKILL)
    return kill_t, before


def after_kill(events: list[dict[str, Any]], kill_t: float, event: str) -> list[float]:
    """Per rank, the first time `event` happened after the kill."""
    firsts: dict[int, float] = {}
    for e in events:
        if e["event"] == event and e["t"] > kill_t and e["rank"] not in firsts:
            firsts[e["rank"]] = e["t"]
    return list(firsts.values())


def measure(
    events: list[dict[str, Any]], kill_t: float, before: dict[int, int], world: int = NPROC
) -> dict[str, Any]:
    first_steps = after_kill(events, kill_t, "step")
    assert len(first_steps) == world, "every rank must step again after the kill"
    # Each rank's newest (re-)start, not a generation's: torchrun agents of
    # different nodes need not agree on TORCHELASTIC_RESTART_COUNT.
    after = {e["rank"]: e["pid"] for e in events if e["event"] == "start" and e["t"] > kill_t}
    reached = max(e["step"] for e in events if e["event"] == "step" and e["t"] <= kill_t)
    resumed = min(e["from_step"] for e in events if e["event"] == "resumed" and e["t"] > kill_t)
    done = [e for e in events if e["event"] == "done"]
    steady = [e["t"] for e in events if e["event"] == "step" and e["rank"] == 0 and e["t"] < kill_t]
    return {
        "steady_step_s": statistics.median(b - a for a, b in zip(steady, steady[1:])),
        "recovery_s": max(first_steps) - kill_t,
        "ranks_with_new_pid": sorted(r for r in before if before[r] != after.get(r)),
        "new_pids": len(set(after.values()) - set(before.values())),
        "step_at_kill": reached,
        "resumed_from_step": resumed,
        "steps_lost": reached - resumed,
        "finished": len(done) == world,
        "script_restarted_at_s": max(after_kill(events, kill_t, "start")) - kill_t,
        "pg_ready_at_s": max(after_kill(events, kill_t, "pg_ready")) - kill_t,
        "model_ready_at_s": max(after_kill(events, kill_t, "model_ready")) - kill_t,
        "checkpoint_loaded_at_s": max(after_kill(events, kill_t, "resumed")) - kill_t,
    }


def probe_breakdown(
    result: dict[str, Any],
    probe: StatusProbe,
    kill_t: float,
    failure_event: str = "failure",
    detect: str = "detect",
) -> Optional[dict[str, Optional[float]]]:
    """Where train-launch's recovery time went: the supervisor's events, then the worker's."""
    detected = probe.first_event(failure_event, kill_t)
    started = probe.first_event("generation_started", kill_t)
    spare = probe.first_event("spare_promoted", kill_t)
    if detected is None or started is None:
        return None
    return {
        detect: detected - kill_t,
        "unwind_and_spare_handover": started - detected,
        "spare_promoted_after_detect": None if spare is None else spare - detected,
        "script_reentry_and_pg_init": result["pg_ready_at_s"] - (started - kill_t),
        **script_phases(result),
    }


def script_phases(result: dict[str, Any]) -> dict[str, float]:
    """The script's own part of a recovery (cheaper where its imports are warm already)."""
    return {
        # Building the model and DDP, which broadcasts rank 0's parameters.
        "model_and_ddp_build": result["model_ready_at_s"] - result["pg_ready_at_s"],
        "checkpoint_load": result["checkpoint_loaded_at_s"] - result["model_ready_at_s"],
        "first_step": result["recovery_s"] - result["checkpoint_loaded_at_s"],
    }


def events_breakdown(result: dict[str, Any], first_phase: str) -> dict[str, float]:
    """Where the recovery time went, from the workers' events alone."""
    return {
        first_phase: result["script_restarted_at_s"],
        "pg_init": result["pg_ready_at_s"] - result["script_restarted_at_s"],
        **script_phases(result),
    }


def run_train_launch(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    # --snapshot (bench/recovery_snapshots.py): the script saves every step with
    # the worker API, into an arena of this run's own in /dev/shm.
    snapshot = getattr(args, "snapshot", False)
    shm = Path("/dev/shm") / f"ts-bench-{work.name}"
    env = job_env(TRAIN_SUPERVISOR_SNAPSHOT_DIR=str(shm)) if snapshot else None
    try:
        return _run_train_launch(work, args, ["--snapshot"] if snapshot else [], env)
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def _run_train_launch(
    work: Path, args: argparse.Namespace, extra: list[str], env: Optional[dict[str, str]]
) -> dict[str, Any]:
    job = train_launch(
        [
            "--standalone",
            "--nproc-per-node",
            str(NPROC),
            "--max-restarts",
            "3",
            "--warm-spares",
            str(args.warm_spares),
        ],
        [*script_args(work, args), *extra],
        env,
    )
    probe = StatusProbe(job.supervisor_address())
    events_dir = work / "events"
    job.wait_for(lambda: len(pids_by_rank(read_events(events_dir), 0)) == NPROC, 600, "ranks")
    kill_t, before = kill_at_step(job, events_dir, args.victim, args.kill_at_step)
    spare_rss = [
        psutil.Process(p).memory_info().rss for p in probe.spare_pids if psutil.pid_exists(p)
    ]
    rank_rss = [psutil.Process(p).memory_info().rss for r, p in before.items() if r != args.victim]
    exit_code = job.wait(900)
    probe.close()
    result = measure(read_events(events_dir), kill_t, before)
    breakdown = probe_breakdown(result, probe, kill_t)
    if breakdown is not None:
        result["breakdown_s"] = breakdown
    restores = probe.restore_seconds(kill_t)
    if restores:  # the worker API's load(), inside "checkpoint_load"
        result["snapshot_restore_s"] = max(restores)
    latencies = sorted(probe.latencies_ms)
    result.update(
        {
            "exit_code": exit_code,
            "status_calls": len(latencies),
            "status_p50_ms": statistics.median(latencies) if latencies else None,
            "status_p99_ms": latencies[int(len(latencies) * 0.99) - 1] if latencies else None,
            "warm_spare_rss_mb": round(max(spare_rss) / 2**20) if spare_rss else None,
            "rank_rss_mb": round(max(rank_rss) / 2**20) if rank_rss else None,
        }
    )
    return result


def run_torchrun(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = job_env(**TORCHRUN_ENV)
    job = torchrun(
        ["--standalone", "--nproc-per-node", str(NPROC), "--max-restarts", "3"],
        script_args(work, args),
        env,
    )
    events_dir = work / "events"
    kill_t, before = kill_at_step(job, events_dir, args.victim, args.kill_at_step)
    exit_code = job.wait(900)
    result = measure(read_events(events_dir), kill_t, before)
    result["breakdown_s"] = events_breakdown(result, "detect_kill_all_respawn_and_import")
    result["exit_code"] = exit_code
    return result


def comparison_rows(report: dict[str, Any]) -> list[str]:
    """The train-launch | torchrun table, median runs and every run."""
    ours, theirs = report["train_launch"], report["torchrun"]
    return [
        "| | train-launch | torchrun |",
        "|---|---|---|",
        f"| kill → every rank stepped again (median of {report['config']['repeat']}) | "
        f"**{ours['recovery_s']:.2f} s** | {theirs['recovery_s']:.2f} s |",
        f"| every run (s) | {ours['all_recovery_s']} | {theirs['all_recovery_s']} |",
        f"| ratio | **{report['ratio']:.2f}×** | 1 |",
        f"| ranks with a new PID | {ours['ranks_with_new_pid']} | {theirs['ranks_with_new_pid']} |",
        f"| steps lost (reached → resumed from) | {ours['steps_lost']} "
        f"({ours['step_at_kill']} → {ours['resumed_from_step']}) | {theirs['steps_lost']} "
        f"({theirs['step_at_kill']} → {theirs['resumed_from_step']}) |",
        f"| exit code | {ours['exit_code']} | {theirs['exit_code']} |",
    ]


def breakdown_lines(report: dict[str, Any]) -> list[str]:
    ours, theirs = report["train_launch"], report["torchrun"]
    return [
        "train-launch breakdown (s): "
        + ", ".join(
            f"{k} {v:.2f}" for k, v in ours.get("breakdown_s", {}).items() if v is not None
        ),
        "",
        "torchrun breakdown (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in theirs["breakdown_s"].items()),
        "",
    ]


def markdown(report: dict[str, Any]) -> str:
    ours = report["train_launch"]
    cfg = report["config"]
    lines = [
        f"Recovery after SIGKILL of rank {cfg['victim']} at step {cfg['kill_at_step']} "
        f"({NPROC} ranks, {cfg['state_mb']} MB model + Adam state, checkpoint every "
        f"{cfg['ckpt_every']} steps, CPU + gloo, {report['machine']}), measured {report['date']}.",
        "",
        *comparison_rows(report),
        "",
        *breakdown_lines(report),
        f"Warm spare RSS {ours['warm_spare_rss_mb']} MB "
        f"(a training rank: {ours['rank_rss_mb']} MB).",
        "",
        f"{TORCHRUN_NOTE} Reproduce: `python bench/recovery.py`.",
    ]
    return "\n".join(lines) + "\n"


Run = Callable[[Path, argparse.Namespace], dict[str, Any]]


def parser(description: str, victim: int, out: Path) -> argparse.ArgumentParser:
    """The workload and repetition flags both recovery benchmarks take."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--kill-at-step", type=int, default=15)
    p.add_argument("--victim", type=int, default=victim)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--ckpt-every", type=int, default=10)
    p.add_argument("--warm-spares", type=int, default=1)
    p.add_argument(
        "--repeat", "--repeats", type=int, default=3, help="runs of each; the median is reported"
    )
    p.add_argument("--out", default=str(out))
    return p


def compare(args: argparse.Namespace, ours: Run, theirs: Run) -> dict[str, Any]:
    """Run both `args.repeat` times, alternating; the report holds each one's median run."""
    params = args.layers * (args.hidden * args.hidden + args.hidden)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores",
        "config": {**vars(args), "state_mb": round(params * 4 * 3 / 1e6)},
    }
    runs: dict[str, list[dict[str, Any]]] = {"train_launch": [], "torchrun": []}
    for _ in range(args.repeat):  # interleaved, so that drift in the machine hits both
        with tempfile.TemporaryDirectory() as mine, tempfile.TemporaryDirectory() as other:
            runs["train_launch"].append(ours(Path(mine), args))
            runs["torchrun"].append(theirs(Path(other), args))
    for name, results in runs.items():
        by_recovery = sorted(results, key=lambda r: r["recovery_s"])
        report[name] = by_recovery[len(by_recovery) // 2]  # the median run, whole
        report[name]["all_recovery_s"] = [round(r["recovery_s"], 2) for r in results]
    report["ratio"] = report["train_launch"]["recovery_s"] / report["torchrun"]["recovery_s"]
    return report


def main() -> None:
    args = parser(__doc__.splitlines()[0], victim=2, out=RESULTS / "recovery").parse_args()
    report = compare(args, run_train_launch, run_torchrun)
    write_results(Path(args.out), report, markdown(report))
    quote_in_doc("recovery", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
