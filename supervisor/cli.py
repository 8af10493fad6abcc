"""train-supervisor: `status` today; `serve` (the sidecar) arrives with multi-pod support."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Optional

import grpc
from google.protobuf import json_format

from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "127.0.0.1:29400"


def _enum_name(enum: object, value: int, prefix: str) -> str:
    name: str = enum.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix).lower()


def render_table(status: pb.JobStatus) -> str:
    job_state = _enum_name(pb.JobState, status.state, "JOB_STATE_")
    lines = [
        f"job {status.run_id or '-'}  state {job_state}  generation {status.generation}  "
        f"restarts {status.restart_count}/{status.max_restarts}  world {status.world_size}  "
        f"leader {status.leader}",
        f"{'RANK':>4} {'NODE':>4} {'PID':>8} {'STATE':<10} {'STEP':>8} {'STEP_S':>8} "
        f"{'HB_AGE_S':>8} {'STARTS':>6}",
    ]
    for r in status.ranks:
        age = "-" if r.heartbeat_age_s < 0 else f"{r.heartbeat_age_s:.1f}"
        lines.append(
            f"{r.rank:>4} {r.node_rank:>4} {r.pid:>8} "
            f"{_enum_name(pb.WorkerState, r.state, 'WORKER_STATE_'):<10} {r.step:>8} "
            f"{r.step_time_s:>8.3f} {age:>8} {r.process_starts:>6}"
        )
    if status.spare_pids:
        lines.append(f"warm spares: {', '.join(str(p) for p in status.spare_pids)}")
    if status.HasField("last_failure"):
        f = status.last_failure
        what = f.detail.exception_type or f.detail.signature
        lines.append(
            f"last failure: rank {f.rank} pid {f.pid} generation {f.generation} step {f.step}: "
            f"{what} {f.detail.message} -> {f.action}"
        )
    return "\n".join(lines)


def fetch_status(address: str, timeout: float) -> pb.JobStatus:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.StatusServiceStub(channel)
        status: pb.JobStatus = stub.GetStatus(pb.GetStatusRequest(), timeout=timeout)
        return status


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="train-supervisor")
    commands = parser.add_subparsers(dest="command", required=True)
    status_cmd = commands.add_parser("status", help="show the job's ranks, steps and failures")
    status_cmd.add_argument("--address", default=DEFAULT_ADDRESS, help="supervisor host:port")
    status_cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status_cmd.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
    args = parser.parse_args(argv)
    try:
        status = fetch_status(args.address, args.timeout)
    except grpc.RpcError as err:
        print(f"train-supervisor: cannot reach {args.address}: {err.code().name}", file=sys.stderr)
        sys.exit(1)
    if args.json:
        print(json.dumps(json_format.MessageToDict(status), indent=2))
    else:
        print(render_table(status))


if __name__ == "__main__":
    main()
