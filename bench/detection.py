"""Detection evaluation: injected faults, repeated; precision, recall, culprit accuracy, latency.

Scenarios (real processes, faults injected for real; toy_ddp.py with gloo):
  hang_sigstop   4 ranks, SIGSTOP rank 2                       -> hung, rank 2
  hang_sleep     4 ranks, rank 2 sleeps in Python (--hang-rank) -> hung, rank 2 (stacks)
  straggler      3 pods x 1 rank, pod 2's data 0.15 s late/step -> straggler, pod 2
  oom            2 ranks in a memory cgroup, rank 1 allocates   -> out_of_memory, rank 1
  user_bug       2 ranks, rank 1 raises ValueError              -> user_bug, rank 1
  transient      2 ranks, SIGKILL rank 1 from outside           -> transient, rank 1
  lost_peer      2 pods x 1 rank, pod 1 killed whole            -> lost_peer, pod 1
  clean          3 pods x 1 rank, --clean-minutes, all detectors on: nothing may be found;
                 the sidecars' own CPU share and RSS are measured here
  slow_steps     2 ranks with 20 s steps: no hang may be reported (the threshold adapts)
  torchrun       torchrun, 4 ranks, SIGSTOP rank 2: what it notices within --torchrun-watch-s

Detections come from the supervisors' JSON logs (SUPERVISOR_LOG_FORMAT=json); scoring is
bench/detection_score.py. Default settings everywhere except where a scenario says.

    python bench/detection.py  # ~25 min; writes bench/results/detection.{json,md}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from detection_score import CLASSES, Injected, Run, detections_from, score
from jobs import (
    RunningJob,
    job_env,
    max_step,
    pids_by_rank,
    read_events,
    torchrun,
    train_launch,
    wait_until,
)
from pods import Pods
from results_doc import publish

from supervisor.workers.ports import free_port

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "detection"
JSON_LOGS = {"SUPERVISOR_LOG_FORMAT": "json"}
STEPPING = ["--step-sleep", "0.05"]
MEMORY_HOG = Path(__file__).resolve().parents[1] / "tests" / "workloads" / "memory_hog.py"


def events_in(logs: str) -> list[tuple[float, str, str]]:
    """(time, kind, message) of the job events in JSON log lines."""
    found = []
    for line in logs.splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        kind = entry.get("kind")
        if not kind:
            continue
        stamp = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
        message = entry["message"].removeprefix(f"{kind}: ")
        found.append((stamp, kind, message))
    return found


def standalone(nproc: int, script: list[str], env: Optional[dict[str, str]] = None) -> RunningJob:
    flags = ["--standalone", "--nproc-per-node", str(nproc), "--max-restarts", "3"]
    return train_launch(flags, script, env=job_env(**JSON_LOGS, **(env or {})))


def finish(job: RunningJob, timeout: float) -> None:
    try:
        job.wait(timeout)
    except AssertionError:
        job.kill_tree()


def first_event(events: Path, kind: str, timeout: float, job: RunningJob) -> dict[str, Any]:
    job.wait_for(lambda: any(e["event"] == kind for e in read_events(events)), timeout, kind)
    return next(e for e in read_events(events) if e["event"] == kind)


def status_or_error(pods: Pods) -> dict[str, Any]:
    try:
        return pods.status(0)
    except subprocess.CalledProcessError as err:
        return {"status_error": f"exit {err.returncode}: {err.stderr.strip()}"}


# ------------------------------------------------------------------ scenarios
def signal_rank(work: Path, nproc: int, rank: int, signum: int, expected: str, name: str) -> Run:
    """A signal from outside to one rank of a stepping standalone job."""
    events = work / "events"
    job = standalone(nproc, ["--steps", "300", *STEPPING, "--events", str(events)])
    job.wait_for(lambda: max_step(read_events(events), rank) >= 10, 180, f"rank {rank} to step")
    os.kill(pids_by_rank(read_events(events), 0)[rank], signum)
    injected = Injected(expected, rank, time.time())
    finish(job, 120)
    return Run(name, injected, detections_from(events_in(job.stderr)))


def hang_sigstop(work: Path) -> Run:
    return signal_rank(work, 4, 2, signal.SIGSTOP, "hung", "hang_sigstop")


def transient(work: Path) -> Run:
    return signal_rank(work, 2, 1, signal.SIGKILL, "transient", "transient")


def hang_sleep(work: Path) -> Run:
    events = work / "events"
    script = ["--steps", "300", *STEPPING, "--events", str(events), "--hang-rank", "2",
              "--hang-at-step", "20"]  # fmt: skip
    job = standalone(4, script)
    hanging = first_event(events, "hanging", 180, job)
    finish(job, 120)
    injected = Injected("hung", 2, hanging["t"])
    return Run("hang_sleep", injected, detections_from(events_in(job.stderr)))


def straggler(work: Path) -> Run:
    events = work / "events"
    # compute_s needs the opt-in forward timing (--time-forward on).
    launcher_env = {**JSON_LOGS, "PET_TIME_FORWARD": "on"}
    pods = Pods(nnodes=3, nproc=1, warm_spares=0, sidecar_env=JSON_LOGS, launcher_env=launcher_env)
    try:
        pods.start_launchers(["--steps", "100000", "--step-sleep", "0.1", "--events", str(events),
                              "--slow-rank", "2", "--slow-from-step", "60", "--slow-extra-s",
                              "0.15"])  # fmt: skip
        slow = first_event(events, "slow", 180, pods.launchers[0])
        finding = '"kind": "finding"'  # the leader's event, in its JSON log
        wait_until(lambda: finding in pods.sidecars[0].stderr, 90, "a finding")
    except AssertionError:
        pass  # scored as a miss
    finally:
        pods.stop()
    injected = Injected("straggler", 2, slow["t"])
    return Run("straggler", injected, detections_from(events_in(pods.logs())))


def oom(work: Path) -> Run:
    from cgroups import memory_cgroup  # tests/e2e/cgroups.py: needs root

    pid_dir = work / "pids"
    pid_dir.mkdir()
    script = ["--pid-dir", str(pid_dir), "--hog-rank", "1", "--idle-s", "60"]
    flags = ["--standalone", "--nproc-per-node", "2", "--max-restarts", "3", "--warm-spares", "0"]
    # Room for the launcher and an idle rank (torch imported): the hog is the one to go.
    with memory_cgroup(512 << 20) as group:
        prefix = group.command([])
        job = train_launch(flags, script, job_env(**JSON_LOGS), script=MEMORY_HOG, prefix=prefix)
        job.wait_for((pid_dir / "gen0_rank1").exists, 120, "rank 1 to start")
        injected = Injected("out_of_memory", 1, (pid_dir / "gen0_rank1").stat().st_mtime)
        with contextlib.suppress(AssertionError):  # no failure in time: scored as a miss
            wait_until(lambda: "looks like" in job.stderr, 60, "the failure")
        job.kill_tree()
        finish(job, 30)
    return Run("oom", injected, detections_from(events_in(job.stderr)))


def user_bug(work: Path) -> Run:
    events = work / "events"
    script = ["--steps", "300", *STEPPING, "--events", str(events), "--raise-rank", "1",
              "--raise-at-step", "20"]  # fmt: skip
    job = standalone(2, script)
    job.wait_for(lambda: max_step(read_events(events), 1) >= 20, 180, "step 20")
    injected = Injected("user_bug", 1, time.time())
    wait_until(lambda: "looks like" in job.stderr, 60, "the failure")
    job.kill_tree()
    finish(job, 30)
    return Run("user_bug", injected, detections_from(events_in(job.stderr)))


def lost_peer(work: Path) -> Run:
    events = work / "events"
    pods = Pods(nnodes=2, nproc=1, warm_spares=0, sidecar_env=JSON_LOGS, launcher_env=JSON_LOGS)
    try:
        pods.start_launchers(["--steps", "100000", *STEPPING, "--events", str(events)])
        pods.launchers[0].wait_for(lambda: max_step(read_events(events), 1) >= 10, 180, "steps")
        pods.launchers[1].kill_tree()
        pods.sidecars[1].kill_tree()
        injected = Injected("lost_peer", 1, time.time())
        wait_until(lambda: "node 1 lost" in pods.sidecars[0].stderr, 60, "the loss")
    except AssertionError:
        pass
    finally:
        pods.stop()
    return Run("lost_peer", injected, detections_from(events_in(pods.logs())))


def clean(work: Path, minutes: float) -> Run:
    """Nothing injected; the sidecars' own cost is measured over the steady part."""
    events = work / "events"
    pods = Pods(nnodes=3, nproc=1, warm_spares=0, sidecar_env=JSON_LOGS, launcher_env=JSON_LOGS)
    notes: dict[str, Any] = {}
    try:
        pods.start_launchers(
            ["--steps", "10000000", "--step-sleep", "0.1", "--events", str(events)]
        )
        pods.launchers[0].wait_for(lambda: max_step(read_events(events), 2) >= 20, 180, "steps")
        sidecars = [psutil.Process(s.proc.pid) for s in pods.sidecars]
        cpu_before = [sum(p.cpu_times()[:2]) for p in sidecars]
        started, rss_max = time.monotonic(), 0
        while time.monotonic() - started < minutes * 60:
            rss_max = max(rss_max, *(p.memory_info().rss for p in sidecars))
            for launcher in pods.launchers:
                assert launcher.proc.poll() is None, pods.logs()
            time.sleep(5)
        elapsed = time.monotonic() - started
        shares = [(sum(p.cpu_times()[:2]) - b) / elapsed for p, b in zip(sidecars, cpu_before)]
        notes = {
            "minutes": elapsed / 60,
            "steps": max_step(read_events(events), 0),
            "sidecar_cpu_share_max": max(shares),
            "sidecar_cpu_share_mean": sum(shares) / len(shares),
            "sidecar_rss_max_bytes": rss_max,
            "findings_at_end": status_or_error(pods).get("findings", []),
        }
    finally:
        pods.stop()
    return Run("clean", None, detections_from(events_in(pods.logs())), notes)


def slow_steps(work: Path) -> Run:
    """20-second steps: the hang threshold adapts (5 x median), nothing is flagged."""
    events = work / "events"
    job = standalone(2, ["--steps", "4", "--step-sleep", "20", "--events", str(events)])
    code = job.wait(300)
    found = detections_from(events_in(job.stderr))
    suspected = [m for _, kind, m in events_in(job.stderr) if kind.startswith("hang")]
    return Run("slow_steps", None, found, {"exit_code": code, "hang_events": suspected})


def torchrun_sigstop(work: Path, watch_s: float) -> dict[str, Any]:
    """torchrun has no hang detection: a stopped rank stalls the job until the collective
    timeout (gloo's default: 30 min). Watched for `watch_s`."""
    events = work / "events"
    port = free_port()
    args = ["--nproc-per-node", "4", "--max-restarts", "3", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}"]  # fmt: skip
    job = torchrun(args, ["--steps", "300", *STEPPING, "--events", str(events)],
                   env=job_env(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1"))  # fmt: skip
    try:
        job.wait_for(lambda: max_step(read_events(events), 2) >= 10, 180, "rank 2 to step")
        victim = pids_by_rank(read_events(events), 0)[2]
        os.kill(victim, signal.SIGSTOP)
        stopped = time.monotonic()
        steps_at_stop = max(max_step(read_events(events), r) for r in range(4))
        time.sleep(watch_s)  # the measurement: does anything happen in this time?
        steps_after = max(max_step(read_events(events), r) for r in range(4))
        noticed = job.proc.poll() is not None or "Traceback" in job.stderr
        return {
            "watched_s": time.monotonic() - stopped,
            "noticed": noticed,
            "steps_during_watch": steps_after - steps_at_stop,
        }
    finally:
        job.kill_tree()


SCENARIOS: dict[str, Callable[[Path], Run]] = {
    "hang_sigstop": hang_sigstop,
    "hang_sleep": hang_sleep,
    "straggler": straggler,
    "oom": oom,
    "user_bug": user_bug,
    "transient": transient,
    "lost_peer": lost_peer,
}


def table(runs: list[Run]) -> list[str]:
    scores = score(runs)
    lines = [
        "| class | runs injected | precision | recall | culprit accuracy | latency median / max |",
        "|---|---|---|---|---|---|",
    ]
    for kind in CLASSES:
        s = scores[kind].summary()
        injected = sum(1 for r in runs if r.injected and r.injected.kind == kind)

        def fmt(value: Optional[float], unit: str = "") -> str:
            return "–" if value is None else f"{value:.2f}{unit}"

        latency = f"{fmt(s['latency_median_s'], ' s')} / {fmt(s['latency_max_s'], ' s')}"
        lines.append(
            f"| {kind} | {injected} | {fmt(s['precision'])} | {fmt(s['recall'])} | "
            f"{fmt(s['culprit_accuracy'])} | {latency} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clean-minutes", type=float, default=10.0)
    parser.add_argument("--torchrun-watch-s", type=float, default=60.0)
    parser.add_argument("--only", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            for name in args.only:
                work = Path(root) / f"{name}-{repeat}"
                work.mkdir()
                started = time.monotonic()
                run = SCENARIOS[name](work)
                run.notes["wall_s"] = time.monotonic() - started
                runs.append(run)
                print(f"{name} #{repeat}: {[(d.kind, d.culprit) for d in run.detections]}",
                      flush=True)  # fmt: skip
        extra: list[Run] = []
        if args.clean_minutes > 0:
            (Path(root) / "clean").mkdir()
            extra.append(clean(Path(root) / "clean", args.clean_minutes))
            (Path(root) / "slow").mkdir()
            extra.append(slow_steps(Path(root) / "slow"))
        torch_watch: dict[str, Any] = {}
        if args.torchrun_watch_s > 0:
            (Path(root) / "torchrun").mkdir()
            torch_watch = torchrun_sigstop(Path(root) / "torchrun", args.torchrun_watch_s)
    everything = runs + extra
    report = {
        "scores": {k: v.summary() for k, v in score(everything).items()},
        "runs": [
            {
                "scenario": r.scenario,
                "injected": r.injected and vars(r.injected),
                "detections": [vars(d) for d in r.detections],
                "notes": r.notes,
            }
            for r in everything
        ],
        "torchrun_sigstop": torch_watch,
    }
    text = "\n".join(render(everything, extra, torch_watch, args)) + "\n"
    publish("detection", args.out, DEFAULT_OUT, report, text)


def render(
    runs: list[Run], extra: list[Run], torch_watch: dict[str, Any], args: argparse.Namespace
) -> list[str]:
    lines = [f"Detection over {args.repeats} repeats of each injected scenario "
             "(`python bench/detection.py`), default settings:", "", *table(runs), ""]  # fmt: skip
    for run in extra:
        found = [d.message for d in run.detections]
        if run.scenario == "clean":
            n = run.notes
            lines.append(
                f"- clean run, 3 pods x 1 rank, {n.get('minutes', 0):.1f} min, "
                f"{n.get('steps', 0)} steps: **{len(found)} findings** {found or ''}; "
                f"each sidecar: CPU {100 * n.get('sidecar_cpu_share_max', 0):.2f} % of a core "
                f"(max; mean {100 * n.get('sidecar_cpu_share_mean', 0):.2f} %), "
                f"RSS {n.get('sidecar_rss_max_bytes', 0) / 1e6:.0f} MB max"
            )
        else:
            hangs = run.notes.get("hang_events", [])
            lines.append(
                f"- 20-second steps, 2 ranks, 4 steps: exit {run.notes.get('exit_code')}, "
                f"**{len(hangs)} hang events**, {len(found)} detections"
            )
    if torch_watch:
        lines.append(
            f"- torchrun, same SIGSTOP of rank 2: noticed within {torch_watch['watched_s']:.0f} s: "
            f"**{torch_watch['noticed']}** ({torch_watch['steps_during_watch']} steps meanwhile; "
            "it waits for the collective timeout, 30 min for gloo by default)"
        )
    return lines


if __name__ == "__main__":
    main()
