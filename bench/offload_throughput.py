"""Offload throughput: staging, replication and persistence of snapshots against their caps.

One pod of --ranks ranks holds --gb GB of state (random float32 tensors of ~64 MiB) in real
arenas under /dev/shm. Offloader.run_round, capped as SUPERVISOR_*_MAX_MBPS would, stages
(memcpy + CRC-32C), replicates to a replica server in another process (loopback gRPC, token) and
persists to local disk (torch.save format, fsynced), uncapped, at 400 and at 100 MB/s; torch.save
of the same state is the baseline. Then the /dev/shm a pod uses per GB of state.

    python bench/offload_throughput.py   # results: bench/results/, docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch
from results_doc import publish
from snapshot_stall import busy_cpu_s, machine

from launcher.worker.snapshot_payload import write_state
from supervisor.settings.snapshots import OffloadConfig, parse_offload
from supervisor.snapshots.durable import DurableStore
from supervisor.snapshots.offload import REPLICAS, STAGED, Offloader, RoundResult
from supervisor.snapshots.rounds import OffloadRound
from train_supervisor.arena import RankArena
from train_supervisor.credentials import client_channel
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "offload_throughput"
RUN = "bench-offload"
GB, MB = 1e9, 1e6
TENSOR_BYTES = 1 << 26  # ~64 MiB per tensor
CAPS_MBPS = (0, 400, 100)  # 0: no cap
TOLERANCE = 0.10  # a cap counts as met when achieved is within ±10% of it
ROWS = {  # measured key -> table label
    "staging": "staging: memcpy + CRC-32C of the committed step into the staged arena",
    "replication": "replication to the next pod (own process, loopback gRPC, token)",
    "persistence": "persistence to local disk (torch.save format, fsynced)",
    "torch_save": "baseline: torch.save of the same state, a file per rank, fsynced",
    "torch_save_no_fsync": "baseline: the same torch.save, no fsync",
}
# The next pod's supervisor, in its own process as in production: its CRC and copy of every
# chunk do not share our interpreter. Prints its port; stops when stdin closes.
SERVER = """
import asyncio, os, sys
from pathlib import Path
from supervisor.snapshots.replica import ReplicaServicer
from supervisor.rpc.server import start_server
from supervisor.rpc.service import Supervisor, SupervisorSettings

async def main():
    job = (sys.argv[1], Path(sys.argv[2]))
    server, port = await start_server(
        Supervisor(SupervisorSettings()), "127.0.0.1:0", token=os.environ["BENCH_TOKEN"],
        replicas=ReplicaServicer(lambda: job))
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(None)

asyncio.run(main())
"""


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=1.0, help="state of the pod, GB (1e9 B)")
    p.add_argument("--ranks", type=int, default=2, help="ranks of the pod")
    p.add_argument("--repeat", type=int, default=3, help="of each timed measurement")
    p.add_argument("--durable-dir", default=None, help="parent of the durable temp dir (/tmp)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p.parse_args()


def make_states(gb: float, ranks: int) -> list[dict[str, torch.Tensor]]:
    per_rank = int(gb * GB / ranks)
    count = max(1, round(per_rank / TENSOR_BYTES))
    gen = torch.Generator().manual_seed(0)
    numel = per_rank // 4 // count
    return [{f"t{i}": torch.rand(numel, generator=gen) for i in range(count)} for _ in range(ranks)]


def own_cpu_s(server_pid: int) -> float:
    """CPU seconds of this process and of the replica server (before it exits)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    fields = Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()
    server_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return me.ru_utime + me.ru_stime + server_s


class Pod:
    """One pod: its ranks' arenas, and rounds as the offload driver runs them."""

    def __init__(
        self, shm: Path, disk: Path, states: list[dict[str, torch.Tensor]], port: int, token: str
    ) -> None:
        self.directory, self.replicas = shm / "pod", shm / "next-pod" / REPLICAS
        self.durable = disk / "durable"  # local disk, not /dev/shm
        self.states, self.ranks = states, list(range(len(states)))
        self.channel = client_channel(f"127.0.0.1:{port}", token)
        self.step, self.kept = 0, -1
        stub = pb_grpc.ReplicaServiceStub(self.channel)
        # One Offloader for every round, as the sidecar has: it keeps its arenas mapped.
        self.offloader = Offloader(
            RUN, 0, self.ranks, self.directory, OffloadConfig(), lambda: stub
        )

    def commit(self) -> int:
        """What the workers do: each rank writes the next step into its own arena (untimed)."""
        self.step += 1
        for rank, state in zip(self.ranks, self.states):
            with RankArena(self.directory, rank) as arena:
                write_state(arena, self.step % 2, self.step, 0, state)
        return self.step

    def round(self, replicate: bool, persist: bool, cap: int = 0) -> RoundResult:
        env = {"SUPERVISOR_DURABLE_DIR": str(self.durable), "SUPERVISOR_PERSIST_EVERY_STEPS": "1"}
        env[f"SUPERVISOR_{'REPLICA' if replicate else 'PERSIST'}_MAX_MBPS"] = str(cap)
        pod, config = self.offloader, parse_offload(env)
        pod.config = config
        pod.durable = DurableStore(self.durable, RUN, 0, config.persist_bytes_per_s)
        assert pod.peer is not None  # the stores take their caps when made: set this round's
        pod.peer.bytes_per_s = config.replica_bytes_per_s
        pod.kept = self.kept  # the driver keeps the last finished round's staged copy whole
        step = self.commit()
        if persist:
            os.sync()  # start from clean page cache: earlier writes are not ours to pay for
        result = pod.run_round(OffloadRound(step, replicate, persist), generation=0)
        if result.stage_error or result.replica_error or result.persist_error:
            sys.exit(f"offload_throughput: round {step} failed: {result}")
        self.kept = step
        return result


def torch_save_s(states: list[dict[str, torch.Tensor]], directory: Path, fsync: bool) -> float:
    """torch.save of every rank's state, one file each, as a torchrun job checkpoints."""
    os.sync()
    began = time.perf_counter()
    for rank, state in enumerate(states):
        with open(directory / f"rank-{rank}.pt", "wb") as f:
            torch.save(state, f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    took = time.perf_counter() - began
    os.sync()  # untimed: the next measurement starts clean
    for rank in range(len(states)):
        (directory / f"rank-{rank}.pt").unlink()
    return took


def verify_persisted(pod: Pod) -> str:
    """torch.load the last persisted step's rank-0 file; it must equal the state bitwise."""
    path = DurableStore(pod.durable, RUN, 0).step_dir(pod.step) / "rank-0.pt"
    loaded = torch.load(path, weights_only=True)
    want = pod.states[0]
    same = loaded.keys() == want.keys() and all(  # bitwise: compare the bits as int32
        loaded[k].dtype == t.dtype and torch.equal(loaded[k].view(torch.int32), t.view(torch.int32))
        for k, t in want.items()
    )
    if not same:
        raise SystemExit(f"offload_throughput: {path} does not torch.load to the state bitwise")
    return str(path.relative_to(pod.durable))


def shm_bytes(directory: Path) -> dict[str, int]:
    """Bytes the slot files in `directory` hold in /dev/shm (allocated blocks), and the count."""
    files = list(directory.glob("rank-*.slot*"))
    return {"bytes": sum(p.stat().st_blocks * 512 for p in files), "files": len(files)}


def rate(nbytes: int, seconds: list[float], cap: int) -> dict[str, Any]:
    median = statistics.median(seconds)
    mbps = nbytes / median / MB
    return {"cap_mbps": cap, "all_s": seconds, "median_s": median, "mbps": mbps,
            "ratio": mbps / cap if cap else None}  # fmt: skip


def measure(pod: Pod, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    # Two rounds fill both staged slots here and both replica slots on the server: fresh
    # slots pay for page allocation, so these are reported apart, not in the medians.
    first = [pod.round(replicate=True, persist=False) for _ in range(2)]
    own, staged = pod.directory, pod.directory / STAGED
    memory = {
        k: shm_bytes(d) for k, d in (("own", own), ("staged", staged), ("replicas", pod.replicas))
    }
    stage_s: list[float] = []
    pinned_s: list[float] = []  # per round: the longest a rank's slot stayed pinned
    size = first[0].bytes
    results: dict[str, Any] = {"replication": [], "persistence": []}
    saves: dict[bool, list[float]] = {True: [], False: []}
    for kind in results:
        for cap in CAPS_MBPS:
            replicate = kind == "replication"
            runs = []
            for _ in range(args.repeat):
                runs.append(pod.round(replicate, not replicate, cap))
                if not replicate and cap == 0:  # the baseline right after, on the same disk:
                    for sync in saves:  # the VM's disk speed drifts between minutes
                        saves[sync].append(torch_save_s(pod.states, scratch, sync))
            stage_s += [r.stage_s for r in runs]
            pinned_s += [r.pinned_s for r in runs]
            took = [r.replica_s if replicate else r.persist_s for r in runs]
            results[kind].append(rate(size, took, cap))
    baseline = {
        key: [rate(size, saves[sync], 0)]
        for key, sync in (("torch_save", True), ("torch_save_no_fsync", False))
    }
    return {
        "bytes": size,
        "state_bytes": sum(t.nbytes for s in pod.states for t in s.values()),
        "tensors_per_rank": len(pod.states[0]),
        "first_rounds": [{"stage_s": r.stage_s, "replica_s": r.replica_s} for r in first],
        "staging": [rate(size, stage_s, 0)],
        "pinned_s": {"median": statistics.median(pinned_s), "max": max(pinned_s)},
        **results,
        **baseline,
        "shm": memory,
        "verified": verify_persisted(pod),
    }


def table_row(key: str, r: dict[str, Any]) -> str:
    capped = key in ("replication", "persistence")
    cap = f"{r['cap_mbps']} MB/s" if r["cap_mbps"] else "none" if capped else ""
    ratio = f"{r['ratio']:.2f}" if r["ratio"] else ""
    return f"| {ROWS[key]} | {cap} | {r['median_s']:.3f} s | {r['mbps']:.0f} MB/s | {ratio} |"


def cap_finding(kind: str, r: dict[str, Any], uncapped: float) -> str:
    cap, ratio = r["cap_mbps"], r["ratio"]
    met = "within" if abs(ratio - 1) <= TOLERANCE else "NOT within"
    text = f"{kind} capped at {cap} MB/s: {ratio:.2f} of the cap, {met} ±{TOLERANCE:.0%}"
    if uncapped < cap * (1 - TOLERANCE):  # the path itself is slower: the cap cannot be reached
        text += f" (uncapped it does {uncapped:.0f} MB/s: this cap does not bind)"
    return text + "."


def markdown(report: dict[str, Any]) -> str:
    m, cfg, load = report["measured"], report["config"], report["load"]
    state, fsync, no_fsync = m["state_bytes"], m["torch_save"][0], m["torch_save_no_fsync"][0]
    lines = [
        "| measurement | cap | time (median) | throughput | achieved / cap |",
        "|---|---|---|---|---|",
        *(table_row(key, r) for key in ROWS for r in m[key]),
    ]
    total = sum(v["bytes"] for v in m["shm"].values()) / state
    lines.append(f"| /dev/shm of one pod per GB of state | | | **{total:.2f} GB** | |")
    per = ", ".join(
        f"{k} {v['bytes'] / state:.2f} GB ({v['files']} slot files)" for k, v in m["shm"].items()
    )
    findings = [
        cap_finding(kind, r, m[kind][0]["mbps"])
        for kind in ("replication", "persistence")
        for r in m[kind]
        if r["cap_mbps"]
    ]
    persist, first = m["persistence"][0]["median_s"], m["first_rounds"][0]
    slow = m["persistence"][-1]  # the lowest cap
    over = slow["median_s"] - m["bytes"] / (slow["cap_mbps"] * MB)
    runs = "; ".join(f"{r['cap_mbps'] or 'uncapped'}: {[round(x, 2) for x in r['all_s']]}"
                     for r in m["replication"])  # fmt: skip
    pinned = m["pinned_s"]
    findings += [
        f"Staging pinned a rank's slot (a rank saving every step would wait that long for it to "
        f"save again) at most {pinned['median']:.3f} s per round (median over rounds; max "
        f"{pinned['max']:.3f} s): the copies, one rank after another; their checksums come "
        "after the unpin, every rank's at once.",
        f"Every replication round (s), by cap: {runs}.",
        f"Persistence at {slow['cap_mbps']} MB/s took {over:.2f} s longer than size / cap: "
        "writes are paced and synced to disk every 64 MB; each file's last sync, the manifest, "
        "the rename and the pruning of older steps come on top.",
        f"Uncapped persistence takes {persist / fsync['median_s']:.2f}× the time of "
        f"torch.save + fsync, {persist / no_fsync['median_s']:.2f}× that of torch.save "
        "alone (which leaves the data in the page cache).",
        f"/dev/shm per GB of state, st_blocks of the slot files after two rounds: {per}; "
        f"{total:.2f} GB in all (replicas: what the next pod holds for this one, as much as "
        "this pod holds for the previous one).",
        f"The first rounds, into fresh slots: staging {first['stage_s']:.2f} s, replication "
        f"{first['replica_s']:.2f} s (page allocation; not in the medians).",
        f"The last persisted file, {m['verified']}, torch.loads (weights_only) to the rank's "
        "state bitwise.",
        f"Load average (1 min) {load['before'][0]:.2f} before the run, {load['after'][0]:.2f} "
        f"after; other processes used {report['others_cpu_share']:.0%} of the machine's CPU "
        "during it.",
    ]
    head = (
        f"Offload throughput for {state / GB:.2f} GB of state ({cfg['ranks']} ranks × "
        f"{m['tensors_per_rank']} random float32 tensors), one pod, {report['machine']}, "
        f"measured {report['date']}. Medians of {cfg['repeat']} rounds of Offloader.run_round; "
        "caps set as SUPERVISOR_REPLICA_MAX_MBPS / SUPERVISOR_PERSIST_MAX_MBPS would."
    )
    tail = "Reproduce: `python bench/offload_throughput.py`."
    return "\n".join([head, "", *lines, "", *(f"- {f}" for f in findings), "", tail]) + "\n"


def main() -> None:
    args = parse()
    cores, load_before = os.cpu_count() or 1, os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="ts-bench-offload-", dir="/dev/shm"))
    disk = Path(tempfile.mkdtemp(prefix="ts-bench-offload-", dir=args.durable_dir))
    token = secrets.token_hex(16)
    env = dict(os.environ, BENCH_TOKEN=token)  # not in argv, where ps shows it
    argv = [sys.executable, "-c", SERVER, RUN, str(root / "next-pod" / REPLICAS)]  # Pod.replicas
    server: Optional[subprocess.Popen[str]] = None
    pod: Optional[Pod] = None
    try:
        states = make_states(args.gb, args.ranks)
        server = subprocess.Popen(
            argv, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.strip().isdigit():
            sys.exit(f"offload_throughput: the replica server did not start ({line!r})")
        port = int(line)
        (busy, _), own, began = busy_cpu_s(), own_cpu_s(server.pid), time.monotonic()
        pod = Pod(root, disk, states, port, token)
        measured = measure(pod, args, disk)
        wall = time.monotonic() - began
        others = busy_cpu_s()[0] - busy - (own_cpu_s(server.pid) - own)
    finally:
        if pod is not None:
            pod.channel.close()
        if server is not None:
            server.communicate(timeout=30)  # closes stdin: the server stops
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        # Other work on the machine skews every figure: how much of it there was.
        "load": {"before": load_before, "after": os.getloadavg()},
        "others_cpu_share": others / (wall * cores),
        "config": vars(args),
        "measured": measured,
    }
    text = markdown(report)
    publish("offload_throughput", Path(args.out), DEFAULT_OUT, report, text)


if __name__ == "__main__":
    main()
