"""Time from a rank's failure (its SIGKILL) to its Kubernetes Event being accepted.

A real `train-supervisor serve` with SUPERVISOR_KUBE_EVENTS=on posts to a
loopback stand-in of the API server (tests/kube_api.py: real HTTP, every body
checked against the kubernetes client's models, answered 201 at once); a real
`train-launch` runs the toy DDP job (2 ranks, gloo) and rank 1 is SIGKILLed
once it steps. Per trial: SIGKILL -> the supervisor's "failure" job event (its
JSON log line: detection and classification) -> the RankFailed POST arriving
-> its 201 sent (accepted); and the RankRestarted Event after it. torchrun
posts no Events, so there is no torchrun column: the comparable figure for a
torchrun job is the time until someone reads the pod's log.

    python bench/kube_events.py             # writes bench/results/kube_events.{json,md}
    python bench/kube_events.py --trials 2 --out /tmp/kube_events
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from jobs import TOY_DDP, RunningJob, job_env, max_step, pids_by_rank, read_events  # noqa: E402
from kube_api import FakeKubeApi  # noqa: E402
from results_doc import publish  # noqa: E402

from supervisor.workers.ports import free_port  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "kube-events-bench-token-0123456789"


def _log_time(sidecar: RunningJob, kind: str) -> float:
    for line in sidecar.stderr_lines:
        if line.startswith("{") and f'"kind": "{kind}"' in line:
            stamp = json.loads(line)["time"].replace("Z", "+00:00")
            return datetime.datetime.fromisoformat(stamp).timestamp()
    raise AssertionError(f"no {kind} job event in the sidecar's log")


def _post(api: FakeKubeApi, reason: str) -> Any:
    return next(
        r for r in api.requests if r.method == "POST" and (r.body or {}).get("reason") == reason
    )


def trial(work: Path) -> dict[str, float]:
    api = FakeKubeApi().start()
    token = work / "sa-token"
    token.write_text(api.token)
    port = free_port()
    env = job_env(
        SUPERVISOR_PORT=str(port),
        SUPERVISOR_TOKEN=TOKEN,
        SUPERVISOR_BIND="127.0.0.1",
        SUPERVISOR_LOG_FORMAT="json",
        SUPERVISOR_KUBE_EVENTS="on",
        SUPERVISOR_KUBE_API=api.url,
        SUPERVISOR_KUBE_TOKEN_FILE=str(token),
        POD_NAME="bench-0",
        POD_NAMESPACE="bench",
        POD_UID="uid-bench",
    )
    sidecar = RunningJob([sys.executable, "-m", "supervisor.cli", "serve"], env)
    events = work / "events"
    argv = [
        sys.executable, "-m", "launcher.launch.main", "--supervisor-address", f"127.0.0.1:{port}",
        "--nproc-per-node", "2", "--max-restarts", "2", str(TOY_DDP),
        "--steps", "25", "--step-sleep", "0.05", "--events", str(events),
    ]  # fmt: skip
    job = RunningJob(argv, job_env(SUPERVISOR_TOKEN=TOKEN))
    try:
        job.wait_for(lambda: max_step(read_events(events), 1) >= 5, 180, "rank 1 to step")
        victim = pids_by_rank(read_events(events), 0)[1]
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        api.wait_for(
            lambda a: any(e.get("reason") == "RankRestarted" for e in a.events.values()),
            60,
            "RankFailed and RankRestarted",
        )
        failed, restarted = _post(api, "RankFailed"), _post(api, "RankRestarted")
        assert job.wait(180) == 0, job.stderr
    finally:
        sidecar.proc.send_signal(signal.SIGTERM)
        sidecar.wait(30)
        api.close()
    assert api.problems == [], api.problems
    recorded_at = _log_time(sidecar, "failure")
    return {
        "kill_to_job_event_ms": (recorded_at - killed_at) * 1000,
        "job_event_to_post_ms": (failed.at - recorded_at) * 1000,
        "post_to_accepted_ms": (failed.answered_at - failed.at) * 1000,
        "kill_to_accepted_ms": (failed.answered_at - killed_at) * 1000,
        "kill_to_restarted_accepted_ms": (restarted.answered_at - killed_at) * 1000,
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def markdown(report: dict[str, Any]) -> str:
    rows = [
        (
            "SIGKILL -> the supervisor's failure event (log time, ms precision)",
            "kill_to_job_event_ms",
        ),
        ("failure event -> RankFailed POST at the API server", "job_event_to_post_ms"),
        (
            "POST -> 201 (the stand-in checks the body with the client's models)",
            "post_to_accepted_ms",
        ),
        ("**SIGKILL -> RankFailed Event accepted (201)**", "kill_to_accepted_ms"),
        ("SIGKILL -> RankRestarted Event accepted (201)", "kill_to_restarted_accepted_ms"),
    ]
    lines = [
        "| interval | median ms | min ms | max ms |",
        "|---|---|---|---|",
    ]
    for label, key in rows:
        s = report["summary"][key]
        lines.append(f"| {label} | {s['median']:.1f} | {s['min']:.1f} | {s['max']:.1f} |")
    return (
        f"Kubernetes Events: {report['trials']} trials, 2-rank toy DDP job (gloo), rank 1 "
        "SIGKILLed; API server: tests/kube_api.py on loopback (answers at once; a real one "
        f"adds its own latency). {report['machine']}. torchrun posts no Events.\n\n"
        + "\n".join(lines)
        + "\n\nCommand: `python bench/kube_events.py`\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS / "kube_events"))
    args = p.parse_args()
    runs = []
    for index in range(args.trials):
        with tempfile.TemporaryDirectory() as work:
            runs.append(trial(Path(work)))
        print(f"trial {index + 1}: {runs[-1]}", flush=True)
    report = {
        "trials": args.trials,
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}",
        "runs": runs,
        "summary": {key: summary([r[key] for r in runs]) for key in runs[0]},
    }
    text = markdown(report)
    publish("kube_events", Path(args.out), RESULTS / "kube_events", report, text)


if __name__ == "__main__":
    main()
