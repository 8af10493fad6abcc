"""GetStatus latency of the embedded supervisor while a 4-rank DDP job trains.

Two loads: training that leaves CPU headroom (as on GPU nodes, where ranks
mostly wait for the device) and training that saturates every core (CPU DDP
here). For scale, the same client also calls grpc.health.v1 Check on the
same server and on a bare gRPC server in its own process: the floor that the
machine's scheduler sets under that load.

    python bench/status_latency.py      # writes bench/results/status_latency.{json,md}
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from jobs import job_env, max_step, read_events, train_launch
from results_doc import quote_in_doc, write_results

from supervisor.workers.ports import free_port
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

RESULTS = Path(__file__).resolve().parent / "results"
BARE_SERVER = """
import sys, threading
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(2))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
server.add_insecure_port(sys.argv[1])
server.start()
sys.stdin.read()  # until the benchmark closes our stdin
"""
LOADS = {
    "cpu_headroom": ["--hidden", "64", "--step-sleep", "0.05"],
    "cpu_saturated": ["--hidden", "2048", "--layers", "4"],
}


def latency_ms(call: Callable[[], object], calls: int, interval_s: float) -> dict[str, float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
        time.sleep(interval_s)  # a poller's pace, not a race guard
    samples.sort()
    return {
        "p50": statistics.median(samples),
        "p99": samples[int(len(samples) * 0.99) - 1],
        "max": samples[-1],
    }


def measure_load(
    name: str, script_args: list[str], calls: int, interval_s: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as work:
        events = Path(work) / "events"
        job = train_launch(
            ["--standalone", "--nproc-per-node", "4", "--warm-spares", "1"],
            ["--steps", "1000000", "--events", str(events), *script_args],
        )
        bare_address = f"127.0.0.1:{free_port()}"
        bare = subprocess.Popen(
            [sys.executable, "-c", BARE_SERVER, bare_address], stdin=subprocess.PIPE, env=job_env()
        )
        try:
            channel = grpc.insecure_channel(job.supervisor_address())
            job.wait_for(
                lambda: all(max_step(read_events(events), r) > 3 for r in range(4)),
                300,
                "every rank to train",
            )
            status = pb_grpc.StatusServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            bare_health = health_pb2_grpc.HealthStub(grpc.insecure_channel(bare_address))
            check = health_pb2.HealthCheckRequest()
            result = {
                "status": latency_ms(
                    lambda: status.GetStatus(pb.GetStatusRequest(), timeout=5), calls, interval_s
                ),
                "health_same_server": latency_ms(
                    lambda: health.Check(check, timeout=5), calls, interval_s
                ),
                "health_bare_server": latency_ms(
                    lambda: bare_health.Check(check, timeout=5, wait_for_ready=True),
                    calls,
                    interval_s,
                ),
            }
            load = os.getloadavg()[0]
        finally:
            job.kill_tree()
            assert bare.stdin is not None
            bare.stdin.close()
            bare.wait(30)
    print(f"{name}: {result}", flush=True)
    return {"load_avg_1m": load, **result}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"GetStatus latency, 4-rank DDP training under train-launch --standalone "
        f"({report['machine']}, {report['calls']} calls per probe, one every "
        f"{report['interval_ms']:.0f} ms), measured {report['date']}.",
        "",
        "| load | GetStatus p50 / p99 (ms) | health, same server | health, bare server (floor) |",
        "|---|---|---|---|",
    ]
    for load in LOADS:
        r = report[load]
        cells = [
            f"{r[k]['p50']:.2f} / {r[k]['p99']:.2f}"
            for k in ("status", "health_same_server", "health_bare_server")
        ]
        lines.append(
            f"| {load} (load avg {r['load_avg_1m']:.1f}) | **{cells[0]}** | "
            f"{cells[1]} | {cells[2]} |"
        )
    lines += ["", "Reproduce: `python bench/status_latency.py`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--interval-ms", type=float, default=20)
    p.add_argument("--out", default=str(RESULTS / "status_latency"))
    args = p.parse_args()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores",
        "calls": args.calls,
        "interval_ms": args.interval_ms,
    }
    for name, script_args in LOADS.items():
        report[name] = measure_load(name, script_args, args.calls, args.interval_ms / 1000)
    write_results(Path(args.out), report, markdown(report))
    quote_in_doc("status_latency", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
