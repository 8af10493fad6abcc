"""Recovery after one SIGKILL on pod 1 of 2 pods x 2 ranks: train-launch against torchrun c10d.

The workload and measurements are bench/recovery.py's (tests/workloads/toy_ddp.py,
~200 MB of model + Adam state, checkpoint every 10 steps), on 4 ranks of DDP
with gloo over loopback, side by side in one run:

- train-launch: per pod a `train-supervisor serve` sidecar (node 0's is the
  leader) and `train-launch --nnodes 2 --node-rank i --nproc-per-node 2`.
- torchrun: two agents, `--nnodes 2 --node-rank i --nproc-per-node 2
  --rdzv-backend c10d`, node 0 hosting the rendezvous store, with
  TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (without it torch 2.13 + gloo does not
  recover) and the malloc settings train-launch gives its workers.

One rank of pod 1 (torchrun: of the agent started with --node-rank 1) is
SIGKILLed at a fixed step. Measured: time from the kill until every rank has
completed a step again, which PIDs changed, steps lost. Target: train-launch
<= 0.4 x torchrun.

With --snapshot the script under train-launch also saves every step with the worker API
(each pod's arenas in its own directory of /dev/shm, the sidecars' defaults: the committed
step replicated into the other pod's memory) and restores from shared memory; torchrun
reloads its disk checkpoint. Targets then (P3): <= 0.2 x torchrun, <= 2 s, <= 1 step lost.

    python bench/recovery_multi_pod.py  # writes bench/results/recovery_multi_pod.{json,md}
    python bench/recovery_multi_pod.py --snapshot   # .../recovery_multi_pod_snapshots.*
"""

from __future__ import annotations

import argparse
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from jobs import RunningJob, job_env, pids_by_rank, read_events, torchrun
from pods import Pods
from recovery import (
    TORCHRUN_ENV,
    TORCHRUN_NOTE,
    StatusProbe,
    breakdown_lines,
    compare,
    comparison_rows,
    events_breakdown,
    kill_at_step,
    measure,
    parser,
    probe_breakdown,
    script_args,
)
from recovery_snapshots import snapshot_targets
from results_doc import publish

from supervisor.workers.ports import free_port

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "recovery_multi_pod"
SNAPSHOT_OUT = RESULTS / "recovery_multi_pod_snapshots"
NNODES, NPROC_PER_NODE = 2, 2
WORLD = NNODES * NPROC_PER_NODE
TARGET_RATIO = 0.4


def wait_for_world(job: RunningJob, events_dir: Path) -> dict[int, int]:
    job.wait_for(lambda: len(pids_by_rank(read_events(events_dir), 0)) == WORLD, 600, "every rank")
    return pids_by_rank(read_events(events_dir), 0)


def run_train_launch(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    if args.victim // NPROC_PER_NODE != 1:
        raise SystemExit(f"--victim {args.victim} is not on pod 1 (ranks 2 and 3)")
    events_dir = work / "events"
    shm = Path("/dev/shm") / f"ts-bench-{work.name}" if args.snapshot else None
    pods = Pods(NNODES, nproc=NPROC_PER_NODE, warm_spares=args.warm_spares, snapshot_root=shm)
    try:
        pods.start_launchers([*script_args(work, args), *(["--snapshot"] if shm else [])])
        wait_for_world(pods.launchers[1], events_dir)
        # Once the sidecars answer (the probe stops at the first failed call): the
        # leader's events split the time (status on any pod is the leader's view).
        probe = StatusProbe(f"127.0.0.1:{pods.ports[0]}")
        kill_t, before = kill_at_step(pods.launchers[1], events_dir, args.victim, args.kill_at_step)
        exit_codes = [launcher.wait(900) for launcher in pods.launchers]
        probe.close()
    finally:
        pods.stop()
        if shm is not None:
            shutil.rmtree(shm, ignore_errors=True)
    result = measure(read_events(events_dir), kill_t, before, world=WORLD)
    # The failure is recorded on pod 1; the leader records its decision.
    breakdown = probe_breakdown(
        result, probe, kill_t, "leader_decision", "detect_and_leader_decision"
    )
    result["breakdown_s"] = breakdown or events_breakdown(result, "detect_unwind_and_reenter")
    result["killed_rank"] = args.victim
    result["exit_code"] = exit_codes
    return result


def torchrun_args(node: int, endpoint: str, run_id: str) -> list[str]:
    return [
        "--nnodes", str(NNODES), "--node-rank", str(node),
        "--nproc-per-node", str(NPROC_PER_NODE), "--max-restarts", "3",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
        # Node 0 hosts the rendezvous store, as on real nodes (both would match loopback).
        "--rdzv-conf", f"is_host={int(node == 0)}",
    ]  # fmt: skip


def victim_on_node(agent: RunningJob, pids: dict[int, int], local_rank: int) -> int:
    """The global rank c10d gave this agent's `local_rank`: the order of nodes is not fixed."""
    children = {child.pid for child in agent.children()}
    ranks = sorted(rank for rank, pid in pids.items() if pid in children)
    assert len(ranks) == NPROC_PER_NODE, f"agent's ranks {ranks} of {pids}"
    return ranks[local_rank]


def start_torchrun_agents(work: Path, args: argparse.Namespace) -> list[RunningJob]:
    """One torchrun agent per node, c10d rendezvous on node 0, the toy as the script."""
    endpoint, run_id = f"127.0.0.1:{free_port()}", f"bench-{uuid.uuid4().hex[:8]}"
    env = job_env(**TORCHRUN_ENV)
    return [
        torchrun(torchrun_args(node, endpoint, run_id), script_args(work, args), env)
        for node in range(NNODES)
    ]


def run_torchrun(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    events_dir = work / "events"
    agents = start_torchrun_agents(work, args)
    try:
        pids = wait_for_world(agents[1], events_dir)
        victim = victim_on_node(agents[1], pids, args.victim % NPROC_PER_NODE)
        kill_t, before = kill_at_step(agents[1], events_dir, victim, args.kill_at_step)
        exit_codes = [agent.wait(900) for agent in agents]
    finally:
        for agent in agents:
            agent.kill_tree()
    result = measure(read_events(events_dir), kill_t, before, world=WORLD)
    result["breakdown_s"] = events_breakdown(result, "detect_kill_all_rendezvous_and_respawn")
    result["killed_rank"] = victim
    result["exit_code"] = exit_codes
    return result


def targets(report: dict[str, Any]) -> dict[str, bool]:
    if report["config"]["snapshot"]:
        return snapshot_targets(report)
    return {f"≤ {TARGET_RATIO}× torchrun": report["ratio"] <= TARGET_RATIO}


def markdown(report: dict[str, Any]) -> str:
    ours, theirs, cfg = report["train_launch"], report["torchrun"], report["config"]
    verdict = "; ".join(
        f"{name}: {'met' if ok else '**not met**'}" for name, ok in targets(report).items()
    )
    saving = (
        "train-launch saves every step to shared memory (each pod's own, the committed step "
        "replicated into the other pod's), torchrun reloads the disk checkpoint written every "
        f"{cfg['ckpt_every']} steps"
        if cfg["snapshot"]
        else f"checkpoint every {cfg['ckpt_every']} steps"
    )
    command = "python bench/recovery_multi_pod.py" + (" --snapshot" if cfg["snapshot"] else "")
    lines = [
        f"Recovery after SIGKILL of one rank on pod 1 at step {cfg['kill_at_step']} "
        f"({NNODES} pods × {NPROC_PER_NODE} ranks on one machine, 4-rank DDP with gloo over "
        f"loopback, {cfg['state_mb']} MB model + Adam state per rank, {saving}, "
        f"{report['machine']}), measured {report['date']}.",
        "",
        *comparison_rows(report),
        f"| rank killed (on pod 1) | {ours['killed_rank']} | {theirs['killed_rank']} |",
        "",
        f"Targets for train-launch: {verdict} (median ratio {report['ratio']:.2f}×). Exit codes "
        "are per pod / node.",
        "",
        *breakdown_lines(report),
        "train-launch: per pod `train-supervisor serve` (node 0's is the leader) and "
        f"`train-launch --nnodes {NNODES} --node-rank i --nproc-per-node {NPROC_PER_NODE} "
        f"--max-restarts 3 --warm-spares {cfg['warm_spares']}`. torchrun: two agents, "
        f"`torchrun --nnodes {NNODES} --node-rank i --nproc-per-node {NPROC_PER_NODE} "
        "--max-restarts 3 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT` (node 0 with "
        f"`--rdzv-conf is_host=1`). {TORCHRUN_NOTE} c10d orders nodes by its own rule, so "
        "torchrun's killed rank is the one on the agent started with --node-rank 1. "
        f"Reproduce: `{command}`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = parser(__doc__.splitlines()[0], victim=3, out=DEFAULT_OUT)
    p.add_argument("--snapshot", action="store_true", help="the worker API saves every step")
    args = p.parse_args()
    default_out = SNAPSHOT_OUT if args.snapshot else DEFAULT_OUT
    if args.snapshot and args.out == str(DEFAULT_OUT):
        args.out = str(SNAPSHOT_OUT)
    report = compare(args, run_train_launch, run_torchrun)
    report["targets_met"] = targets(report)
    report["torchrun_env"] = TORCHRUN_ENV
    publish(default_out.name, Path(args.out), default_out, report, markdown(report))


if __name__ == "__main__":
    main()
