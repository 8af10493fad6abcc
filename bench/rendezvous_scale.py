"""Rendezvous at scale: N simulated followers against the real leader, over gRPC on loopback.

The leader (LeaderHub + LeaderState behind the real server, token auth on)
runs in its own process; the followers are lightweight asyncio clients in
this one: each opens a Join stream, answers OpenGeneration(0) with "ready" and
waits for StartGeneration(0). Measured per N: time from the first Join to the
last follower holding StartGeneration; then heartbeats the leader handles per
second (beats on the followers' Heartbeats streams); the leader's RSS.

    python bench/rendezvous_scale.py     # writes bench/results/rendezvous_scale.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import quote_in_doc, write_results

from supervisor.rpc.peers import LeaderHub, PeerServicer
from supervisor.rpc.server import start_server
from supervisor.rpc.service import Supervisor, SupervisorSettings
from supervisor.rules.leader import LeaderTimings
from train_supervisor.credentials import TOKEN_METADATA_KEY, bearer
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "rendezvous-bench-token-0123456789"
METADATA = ((TOKEN_METADATA_KEY, bearer(TOKEN)),)
FOLLOWERS_PER_CHANNEL = 50  # HTTP/2 connections, as separate pods would have


async def serve_leader(nnodes: int) -> None:
    """The leader process: node 0's hub, with node 0's own pod ready at once."""
    sup = Supervisor(SupervisorSettings())
    hub = LeaderHub(sup, nnodes, "127.0.0.1", LeaderTimings(heartbeat_timeout_s=120))
    _server, port = await start_server(sup, "127.0.0.1:0", token=TOKEN, peers=PeerServicer(hub))
    spec = pb.WorkerSpec(run_id="bench", nnodes=nnodes, node_rank=0, nproc_per_node=1)
    hub.launcher_attached(spec)
    print(port, flush=True)
    while True:  # node 0's pod: ready for generation 0 as soon as it is open
        await asyncio.sleep(0.01)
        if hub.leader is not None and hub.leader.phase.value == "open":
            hub.report(pb.PodReport(ready=0))
            break
    await asyncio.Event().wait()


def channels(address: str, count: int) -> list[grpc.aio.Channel]:
    # A local subchannel pool: one TCP connection per channel, not one shared.
    options = [("grpc.use_local_subchannel_pool", 1)]
    return [grpc.aio.insecure_channel(address, options=options) for _ in range(count)]


async def follower(stub: pb_grpc.PeerServiceStub, node: int, started: list[float]) -> None:
    join = pb.JoinRequest(run_id="bench", node_rank=node, nproc=1, incarnation=node)
    async for message in stub.Join(join, metadata=METADATA):
        if message.HasField("open"):
            ready = pb.PodReport(node_rank=node, incarnation=node, ready=message.open.generation)
            await stub.Report(ready, metadata=METADATA)
        elif message.HasField("start"):
            started.append(time.perf_counter())
            return


async def heartbeats(stubs: list[pb_grpc.PeerServiceStub], nnodes: int, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def beat_forever(node: int) -> None:
        # As a follower does: one Heartbeats stream, beats written back to back.
        nonlocal done
        call = stubs[node % len(stubs)].Heartbeats(metadata=METADATA)
        beat = pb.PodReport(node_rank=node, incarnation=node, heartbeat=True)
        while time.perf_counter() < deadline:
            await call.write(beat)
            done += 1
        await call.done_writing()
        reply = await call
        assert not reply.rejoin, f"the leader does not count node {node}"

    began = time.perf_counter()
    await asyncio.gather(*(beat_forever(node) for node in range(1, nnodes)))
    return done / (time.perf_counter() - began)


async def measure(nnodes: int, heartbeat_s: float) -> dict[str, Any]:
    leader = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(nnodes)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert leader.stdout is not None
        address = f"127.0.0.1:{leader.stdout.readline().strip()}"
        chans = channels(address, max(1, (nnodes - 1) // FOLLOWERS_PER_CHANNEL + 1))
        stubs = [pb_grpc.PeerServiceStub(c) for c in chans]
        started: list[float] = []
        began = time.perf_counter()
        tasks = [follower(stubs[n % len(stubs)], n, started) for n in range(1, nnodes)]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
        formed_s = max(started) - began
        rss_formed = psutil.Process(leader.pid).memory_info().rss
        rate = await heartbeats(stubs, nnodes, heartbeat_s)
        for channel in chans:
            await channel.close(None)
        return {
            "pods": nnodes,
            "form_s": formed_s,
            "heartbeats_per_s": rate,
            "leader_rss_mb": rss_formed / 2**20,
        }
    finally:
        leader.kill()
        leader.wait()


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Rendezvous of N pods against the real leader over gRPC on loopback (token auth on; "
        f"followers simulated as asyncio clients in one process; {report['machine']}), "
        f"measured {report['date']}.",
        "",
        "| pods | join → every pod holds StartGeneration | leader heartbeats/s | leader RSS |",
        "|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['pods']} | {r['form_s']:.2f} s | {r['heartbeats_per_s']:,.0f} | "
            f"{r['leader_rss_mb']:.0f} MB |"
        )
    first, last = report["runs"][0], report["runs"][-1]
    if last["pods"] > first["pods"]:
        extra = last["pods"] - first["pods"]
        form_ms = 1000 * (last["form_s"] - first["form_s"]) / extra
        rss_kb = 1024 * (last["leader_rss_mb"] - first["leader_rss_mb"]) / extra
        kept = last["heartbeats_per_s"] / first["heartbeats_per_s"]
        lines += [
            "",
            f"Growth from {first['pods']} to {last['pods']} pods: forming costs "
            f"{form_ms:.2f} ms and {rss_kb:.0f} KB of leader memory per extra pod (linear); "
            f"heartbeat throughput stays at {kept:.0%} of its {first['pods']}-pod rate. "
            "Targets: 1,000 pods form in ≤ 5 s "
            f"({'met' if last['pods'] >= 1000 and last['form_s'] <= 5 else 'not met'}), "
            f"≥ 5,000 heartbeats/s ({'met' if last['heartbeats_per_s'] >= 5000 else 'not met'}).",
        ]
    lines += ["", "Reproduce: `python bench/rendezvous_scale.py`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pods", default="100,500,1000")
    p.add_argument("--heartbeat-seconds", type=float, default=5.0)
    p.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(RESULTS / "rendezvous_scale"))
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve_leader(args.serve))
        return
    runs = [asyncio.run(measure(int(n), args.heartbeat_seconds)) for n in args.pods.split(",")]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores",
        "runs": runs,
    }
    write_results(Path(args.out), report, markdown(report))
    quote_in_doc("rendezvous_scale", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
