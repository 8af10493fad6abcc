"""train-supervisor: `serve` (the pod's sidecar supervisor) and `status`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn, Optional

import grpc
from google.protobuf import json_format

from supervisor.app import App
from supervisor.detect.gpu_probe import default_probes, report_to_dict
from supervisor.events_cli import add_events_command, run_events
from supervisor.outputs.kube.reporter import KubeReporter, reporter_for
from supervisor.outputs.logs import use_log_format
from supervisor.outputs.metrics import MetricsPortError
from supervisor.settings.env_values import ConfigError
from supervisor.settings.serve import (
    SidecarConfig,
    join_host_port,
    parse_config,
    read_token_file,
    unknown_variables,
)
from supervisor.settings.variables import DEFAULT_PORT, VARIABLES
from train_supervisor import exit_codes
from train_supervisor.credentials import TOKEN_ENV, client_channel
from train_supervisor.termination import record_ending
from train_supervisor.text_log import log_text_to_stderr
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

log = logging.getLogger("train_supervisor")
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
# In-flight calls get this long to finish on SIGTERM; open streams are cut after it.
STOP_GRACE_S = 2.0


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
        f"{'HB_AGE_S':>8} {'STARTS':>6} {'SAVED':>6} {'COMMIT':>6} {'REPL':>6} {'PERSIST':>7} "
        f"{'MB':>8} {'SAVE_S':>7} {'RESTORED':>10}",
    ]
    for r in status.ranks:
        age = "-" if r.heartbeat_age_s < 0 else f"{r.heartbeat_age_s:.1f}"
        lines.append(
            f"{r.rank:>4} {r.node_rank:>4} {r.pid:>8} "
            f"{_enum_name(pb.WorkerState, r.state, 'WORKER_STATE_'):<10} {r.step:>8} "
            f"{r.step_time_s:>8.3f} {age:>8} {r.process_starts:>6} {_step(r.saved_step):>6} "
            f"{_step(r.committed_step):>6} {_step(r.replicated_step):>6} "
            f"{_step(r.persisted_step):>7} {r.snapshot_bytes / 1e6:>8.1f} "
            f"{r.save_blocking_s:>7.3f} {_restored(r):>10}"
        )
    if status.committed_step >= 0:
        lines.append(
            f"snapshots: step {status.committed_step} committed, "
            f"{_step(status.replicated_step)} replicated, {_step(status.persisted_step)} persisted"
        )
    for error in status.offload_errors:
        lines.append(f"offload error: {error}")
    if status.fresh_processes:
        lines.append(f"survivors get fresh processes: {status.fresh_processes}")
    if status.persist_failures:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(status.persist_failures.items()))
        lines.append(f"persist failures on this pod: {counts}")
    if status.spare_pids:
        lines.append(f"warm spares: {', '.join(str(p) for p in status.spare_pids)}")
    if status.HasField("last_failure"):
        f = status.last_failure
        what = f.detail.exception_type or f.detail.signature
        lines.append(
            f"last failure: rank {f.rank} pid {f.pid} generation {f.generation} "
            f"step {f.job_step} of the job ({f.step} in its generation): "
            f"{what} {f.detail.message} ({f.failure_class or 'unclassified'}) -> {f.action}"
        )
    return "\n".join(lines)


def _step(step: int) -> str:
    return "-" if step < 0 else str(step)


def _restored(rank: pb.RankStatus) -> str:
    return f"{rank.restored_step}@{rank.restored_from}" if rank.restored_from else "-"


def fail(message: str) -> NoReturn:
    print(f"train-supervisor: error: {message}", file=sys.stderr)
    sys.exit(exit_codes.USAGE_ERROR)


# ------------------------------------------------------------------ status
def fetch_status(
    address: str,
    timeout: float,
    token: Optional[str] = None,
    tls_ca: Optional[bytes] = None,
    server_name: Optional[str] = None,
) -> pb.JobStatus:
    with client_channel(address, token, tls_ca, server_name) as channel:
        stub = pb_grpc.StatusServiceStub(channel)
        status: pb.JobStatus = stub.GetStatus(pb.GetStatusRequest(), timeout=timeout)
        return status


def _read_token(path: str) -> str:
    try:
        return read_token_file(path)
    except (OSError, UnicodeDecodeError) as err:
        fail(f"token file {path!r}: cannot read ({getattr(err, 'strerror', None) or err})")


def _status_token(args: argparse.Namespace, env: Mapping[str, str]) -> Optional[str]:
    """--token, --token-file, $SUPERVISOR_TOKEN, $SUPERVISOR_TOKEN_FILE: the first one set."""
    if args.token:
        return str(args.token)
    if args.token_file:
        return _read_token(args.token_file)
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV]
    if env.get("SUPERVISOR_TOKEN_FILE"):
        return _read_token(env["SUPERVISOR_TOKEN_FILE"])
    return None


def _client_credentials(args: argparse.Namespace) -> tuple[Optional[str], Optional[bytes]]:
    """(token, TLS CA) for `status` and `events`."""
    token = _status_token(args, os.environ)
    ca_path = args.tls_ca or os.environ.get("SUPERVISOR_TLS_CA")
    tls_ca = None
    if ca_path:
        try:
            with open(ca_path, "rb") as handle:
                tls_ca = handle.read()
        except OSError as err:
            fail(f"CA file {ca_path!r}: cannot read ({err.strerror})")
    elif args.server_name:
        fail("--server-name needs --tls-ca (or SUPERVISOR_TLS_CA): it names a TLS certificate")
    return token, tls_ca


def _status(args: argparse.Namespace) -> None:
    token, tls_ca = _client_credentials(args)
    try:
        status = fetch_status(args.address, args.timeout, token, tls_ca, args.server_name)
    except grpc.RpcError as err:
        code, details = err.code(), err.details()
        print(f"train-supervisor: {args.address}: {code.name}: {details}", file=sys.stderr)
        sys.exit(1)
    if args.json:
        print(json.dumps(json_format.MessageToDict(status), indent=2))
    else:
        print(render_table(status))


# ------------------------------------------------------------------- serve
async def _serve(config: SidecarConfig, kube: Optional[KubeReporter]) -> None:
    """Serve until SIGTERM/SIGINT; OSError when the address cannot be bound."""
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(signum: signal.Signals) -> None:
        if not stopped.done():
            stopped.set_result(signum)

    # Installed before binding, so that a signal during startup is a clean stop too.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    app = await App.start(config, kube)
    log.info(
        "serving on %s (token %s, TLS %s)",
        join_host_port(config.bind, app.port),
        "required" if config.token else "off: loopback only",
        f"on; plaintext on 127.0.0.1:{app.port} for this pod"
        if config.loopback_plaintext
        else ("on" if config.tls else "off"),
    )
    received = await stopped
    log.info("%s: stopping", received.name)
    # The job is marked stopped (status, events) before the server drains.
    app.sup.stop(f"train-supervisor stopped by {received.name}")
    ended = await app.finish()  # the newest committed step to the durable directory
    if ended is not None:  # the pod's containers stop: say why, if the job failed
        record_ending(ended.exit_code, ended.report, config.termination_log, log)
    await app.close(STOP_GRACE_S)


def _serve_command(args: argparse.Namespace) -> None:
    overrides = {
        v.name: str(getattr(args, _dest(v.flag)))
        for v in VARIABLES
        if v.flag and getattr(args, _dest(v.flag)) is not None
    }
    try:
        config = parse_config(os.environ, overrides)
        kube = reporter_for(config.kube)  # None: SUPERVISOR_KUBE_* off
    except ConfigError as err:
        fail(str(err))
    use_log_format(config.outputs.log_format)
    for name in unknown_variables(os.environ):
        log.warning("ignoring %s: no train-supervisor setting has that name", name)
    try:
        asyncio.run(_serve(config, kube))
    except MetricsPortError as err:
        fail(str(err))
    except OSError as err:
        fail(f"SUPERVISOR_BIND/SUPERVISOR_PORT: {err}")


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _probe() -> None:
    """Each probe's reading: devices and their health, or why the accelerator is absent."""
    reports = []
    for probe in default_probes():
        reports.append(report_to_dict(probe.read()))
        probe.close()
    print(json.dumps(reports, indent=2))


def build_parser(env: Optional[Mapping[str, str]] = None) -> argparse.ArgumentParser:
    """`env` (default os.environ) sets the client's default address; docs pass {}."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="train-supervisor")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run this pod's supervisor (the sidecar)",
        description="Settings come from SUPERVISOR_* variables; a flag overrides its variable.",
    )
    for variable in VARIABLES:
        if variable.flag:
            default = f" (default {variable.default})" if variable.default else ""
            serve.add_argument(variable.flag, help=f"{variable.help}{default} [${variable.name}]")
    status_cmd = commands.add_parser("status", help="show the job's ranks, steps and failures")
    commands.add_parser("probe", help="print what the accelerator health probes read (JSON)")
    default_address = DEFAULT_ADDRESS
    if env.get("SUPERVISOR_PORT", "").isdigit():  # inside the sidecar's container
        default_address = f"127.0.0.1:{env['SUPERVISOR_PORT']}"
    status_cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for client in (status_cmd, add_events_command(commands)):
        client.add_argument(
            "--address",
            default=default_address,
            help="supervisor host:port (127.0.0.1:$SUPERVISOR_PORT where that is set)",
        )
        client.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
        client.add_argument("--token", help=f"job token (default ${TOKEN_ENV})")
        client.add_argument(
            "--token-file", help="file holding the job token (default $SUPERVISOR_TOKEN_FILE)"
        )
        client.add_argument(
            "--tls-ca",
            help="PEM CA of the supervisor's certificate: use TLS (default $SUPERVISOR_TLS_CA)",
        )
        client.add_argument("--server-name", help="name the TLS certificate must carry")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    log_text_to_stderr("train-supervisor")
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        _serve_command(args)
    elif args.command == "probe":
        _probe()
    elif args.command == "events":
        code = run_events(args, *_client_credentials(args))
        logging.shutdown()
        sys.exit(code)
    else:
        _status(args)
    logging.shutdown()


if __name__ == "__main__":
    main()
