"""train-launch: parse torchrun's command line, run the supervisor, execute its commands."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Optional

import grpc

from launcher.launch.args import LaunchConfig, UsageError, parse_args
from launcher.launch.processes import WorkerProcesses
from launcher.launch.sidecar import SupervisorUnreachable, wait_for_supervisor
from launcher.worker.warm_imports import MANIFEST_NAME
from supervisor.detect.process_table import pid_namespace
from train_supervisor import exit_codes
from train_supervisor.credentials import TOKEN_ENV, client_channel
from train_supervisor.rpc_errors import describe_rpc_error, is_transient
from train_supervisor.termination import record_ending
from train_supervisor.text_log import log_text_to_stderr
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

log = logging.getLogger("train_launch")
# Where the reason of a GAVE_UP / REPLACE_POD ending goes (train_supervisor/termination.py).
TERMINATION_LOG_ENV = "TRAIN_LAUNCH_TERMINATION_LOG"
REENTRY_MODE = {
    "auto": pb.ReentryMode.REENTRY_AUTO,
    "always": pb.ReentryMode.REENTRY_ALWAYS,
    "never": pb.ReentryMode.REENTRY_NEVER,
}


@dataclass
class RunResult:
    """How the job ended for this pod (torchelastic's name)."""

    exit_code: int
    report: str = ""


def worker_spec(config: LaunchConfig, error_dir: str) -> pb.WorkerSpec:
    return pb.WorkerSpec(
        run_id=config.run_id,
        role=config.role,
        nnodes=config.nnodes,
        node_rank=config.node_rank,
        nproc_per_node=config.nproc_per_node,
        max_restarts=config.max_restarts,
        master_addr=config.master_addr,
        bootstrapped=not config.no_python,
        warm_spares=config.warm_spares,
        error_file_dir=error_dir,
        base_env=config.base_env,
        snapshot_dir=config.snapshot_dir,
        reentry=REENTRY_MODE[config.reentry],
    )


class Launcher:
    """Executes the supervisor's commands on this pod's processes."""

    def __init__(
        self, config: LaunchConfig, address: str, token: Optional[str], error_dir: str
    ) -> None:
        self.config = config
        self.error_dir = error_dir
        self.channel = client_channel(address, token)
        self.stub = pb_grpc.LauncherServiceStub(self.channel)
        # Private to this launcher: what local rank 0 has imported, for the warm spares.
        warm = config.warm_spares > 0 and config.spare_imports == "workers"
        self.imports_dir = tempfile.mkdtemp(prefix="train-launch-imports-") if warm else ""
        manifest = os.path.join(self.imports_dir, MANIFEST_NAME) if warm else ""
        self.procs = WorkerProcesses(
            config, address, token, self._report_started, self._report_exit, manifest
        )
        self.done = threading.Event()
        self.result: Optional[RunResult] = None
        self.stopping = False
        self.address = address
        # While the supervisor is away (its sidecar restarts) the workers train on; the
        # exits it could not be told of wait here, with the rank each process held.
        self.attached = threading.Event()
        self.unreported: list[tuple[int, pb.ProcessExit]] = []
        self.unreported_lock = threading.Lock()

    def _report_started(self, pid: int, rank: int, spare: bool) -> None:
        started = pb.ProcessStarted(pid=pid, rank=rank, spare=spare)
        try:
            self.stub.ReportProcessStarted(started, timeout=30)
        except grpc.RpcError as err:  # a supervisor attached again learns it from the re-attach
            log.error("could not report start of pid %d: %s", pid, describe_rpc_error(err))

    def _report_exit(
        self, pid: int, exit_code: int, signum: int, tail: str, oom_kills: int
    ) -> None:
        if self.stopping:
            return
        exit_report = pb.ProcessExit(
            pid=pid, exit_code=exit_code, signal=signum, output_tail=tail, oom_kills=oom_kills
        )
        if self.attached.is_set():
            try:
                self.stub.ReportProcessExit(exit_report, timeout=30)
                return
            except grpc.RpcError as err:
                log.warning("could not report exit of pid %d: %s", pid, describe_rpc_error(err))
        with self.unreported_lock:  # told once attached again (_attached)
            self.unreported.append((self.procs.rank_of(pid), exit_report))

    def _execute(self, command: pb.LauncherCommand) -> None:
        kind = command.WhichOneof("command")
        if kind == "spawn":
            spawn = command.spawn
            self.procs.spawn(spawn.rank, spawn.local_rank, dict(spawn.env), spawn.spare)
        elif kind == "kill":
            log.warning("killing pid %d: %s", command.kill.pid, command.kill.reason)
            self.procs.kill(command.kill.pid, command.kill.signal)
        elif kind == "assigned":
            self.procs.assign(
                command.assigned.pid, command.assigned.rank, command.assigned.local_rank
            )
        elif kind == "shutdown":
            self.result = RunResult(command.shutdown.exit_code, command.shutdown.report)
            self.done.set()

    def _follow(self) -> None:
        """Execute the supervisor's commands; when it goes away (its sidecar restarts), the
        workers train on and this attaches again, for up to --supervisor-grace seconds."""
        request = pb.AttachLauncherRequest(
            spec=worker_spec(self.config, self.error_dir),
            launcher_pid=os.getpid(),
            pid_namespace=pid_namespace(),  # lets the supervisor check worker pids
        )
        lost_at: Optional[float] = None
        while not self.done.is_set():
            try:
                stream = self.stub.AttachLauncher(request)
                stream.initial_metadata()  # sent once the supervisor took us
                if not stream.done():
                    self._attached(lost_at)
                    lost_at = None
                for command in stream:
                    self._execute(command)
                    if self.done.is_set():
                        return
                why = "its command stream ended"
            except grpc.RpcError as err:
                why = describe_rpc_error(err)
                if not is_transient(err) or (lost_at is None and not self.attached.is_set()):
                    self._stop_following(exit_codes.GAVE_UP, f"the supervisor refused: {why}")
                    return
            if self.done.is_set() or self.stopping:
                return
            self.attached.clear()
            if lost_at is None:
                lost_at = time.monotonic()
                log.warning(
                    "lost the supervisor at %s (%s); the workers train on, attaching again "
                    "for up to %gs", self.address, why, self.config.supervisor_grace,
                )  # fmt: skip
            left = self.config.supervisor_grace - (time.monotonic() - lost_at)
            try:
                wait_for_supervisor(self.channel, self.address, max(left, 0.0), quiet=True)
            except SupervisorUnreachable:
                report = (
                    f"lost the supervisor at {self.address} ({why}) and it did not come back "
                    f"within --supervisor-grace {self.config.supervisor_grace:g}s"
                )
                self._stop_following(exit_codes.SUPERVISOR_LOST, report)
                return
            request = self._reattach_request(request)

    def _attached(self, lost_at: Optional[float]) -> None:
        """Attached (again): tell the supervisor the exits it missed."""
        self.attached.set()
        if lost_at is not None:
            log.info("attached to the supervisor again after %.1fs", time.monotonic() - lost_at)
        with self.unreported_lock:
            missed, self.unreported = self.unreported, []
        for _, exit_report in missed:
            try:
                self.stub.ReportProcessExit(exit_report, timeout=30)
            except grpc.RpcError as err:
                log.warning("could not report exit of pid %d: %s", exit_report.pid,
                            describe_rpc_error(err))  # fmt: skip

    def _reattach_request(self, first: pb.AttachLauncherRequest) -> pb.AttachLauncherRequest:
        """Every process this launcher runs, and those whose exit is still to be told."""
        request = pb.AttachLauncherRequest(spec=first.spec, launcher_pid=first.launcher_pid)
        request.reattach = True
        with self.unreported_lock:
            exited = [(rank, report.pid) for rank, report in self.unreported]
        running = [(rank, pid) for pid, rank in self.procs.ranks()]
        for rank, pid in running + exited:
            request.processes.add(pid=pid, rank=rank)
        return request

    def _stop_following(self, exit_code: int, report: str) -> None:
        if not self.done.is_set():
            self.result = RunResult(exit_code, report)
        self.done.set()

    def run(self) -> RunResult:
        threading.Thread(target=self._follow, name="launcher-commands", daemon=True).start()
        self.done.wait()
        result = self.result or RunResult(exit_codes.GAVE_UP, "no result")
        self.stopping = True
        if result.exit_code == exit_codes.SUPERVISOR_LOST:  # nobody told the workers to go
            self.procs.terminate_all(self.config.term_timeout)
        # Workers were told to exit; give them a moment, then make sure.
        if not self.procs.wait_all(self.config.term_timeout):
            self.procs.terminate_all(grace=5.0)
        if self.imports_dir:
            shutil.rmtree(self.imports_dir, ignore_errors=True)
        return result

    def terminate(self, signum: int) -> None:
        """SIGTERM/SIGINT: forward to the workers with a grace period, then stop."""
        self.stopping = True
        self.result = RunResult(exit_codes.TERMINATED, f"stopped by {signal.Signals(signum).name}")
        self.procs.terminate_all(self.config.term_timeout)
        self.done.set()


def _run(launcher: Launcher, on_stop: Optional[Callable[[str], None]] = None) -> RunResult:
    """Run until the supervisor ends the job, or SIGTERM/SIGINT stops it here."""

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        if on_stop is not None:
            on_stop(f"signal {signum}")
        threading.Thread(target=launcher.terminate, args=(signum,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return launcher.run()


def _error_dir(config: LaunchConfig) -> str:
    return config.log_dir or tempfile.mkdtemp(prefix=f"train-launch-{config.run_id}-")


def _serve_standalone(config: LaunchConfig) -> RunResult:
    import supervisor

    if not getattr(supervisor, "IS_TRAIN_SUPERVISOR", False):
        where = getattr(supervisor, "__file__", None) or "?"
        return RunResult(
            exit_codes.USAGE_ERROR,
            f"error: the 'supervisor' package imported from {where} is not train-supervisor's "
            "(supervisord uses the same name); see 'supervisord' in the README",
        )
    from supervisor.app import EmbeddedSupervisor, standalone_config
    from supervisor.outputs.logs import use_log_format
    from supervisor.outputs.metrics import MetricsPortError
    from supervisor.settings.env_values import ConfigError

    # A fresh token per run: other local users cannot drive this job's workers.
    token = secrets.token_urlsafe(24)
    try:
        sidecar = standalone_config(
            os.environ,
            port=config.supervisor_port,
            token=token,
            crash_loop_threshold=config.crash_loop_threshold,
            unwind_timeout_s=config.unwind_timeout,
            failure_settle_s=config.failure_settle,
            tick_s=config.monitor_interval,
        )
    except ConfigError as err:
        return RunResult(exit_codes.USAGE_ERROR, f"error: {err}")
    use_log_format(sidecar.outputs.log_format)
    embedded = EmbeddedSupervisor(sidecar)
    try:
        address = embedded.start()
    except MetricsPortError as err:
        return RunResult(exit_codes.USAGE_ERROR, f"error: {err}")
    except OSError as err:
        return RunResult(exit_codes.USAGE_ERROR, f"--supervisor-port: {err}")
    launcher = Launcher(config, address, token, _error_dir(config))
    log.info(
        "supervisor on %s; %d workers, %d warm spares",
        address,
        config.nproc_per_node,
        config.warm_spares,
    )
    try:
        return _run(launcher, embedded.stop_job)
    finally:
        embedded.close()


def _attach_sidecar(config: LaunchConfig) -> RunResult:
    """The pod's train-supervisor sidecar runs the job; we run its processes."""
    address = config.supervisor_address
    token = os.environ.get(TOKEN_ENV) or None
    channel = client_channel(address, token)
    try:
        wait_for_supervisor(channel, address, config.supervisor_wait)
    except SupervisorUnreachable as err:
        return RunResult(exit_codes.USAGE_ERROR, f"error: {err}")
    finally:
        channel.close()
    log.info(
        "supervisor on %s; %d workers, %d warm spares",
        address,
        config.nproc_per_node,
        config.warm_spares,
    )
    return _run(Launcher(config, address, token, _error_dir(config)))


def main(argv: Optional[Sequence[str]] = None) -> None:
    log_text_to_stderr("train-launch")
    try:
        config = parse_args(
            sys.argv[1:] if argv is None else argv, os.environ, os.cpu_count() or 1, _gpu_count()
        )
    except UsageError as err:
        print(f"train-launch: error: {err}", file=sys.stderr)
        sys.exit(exit_codes.USAGE_ERROR)
    result = _serve_standalone(config) if config.standalone else _attach_sidecar(config)
    if result.exit_code != exit_codes.SUCCEEDED and result.report:
        print(f"train-launch: {result.report}", file=sys.stderr)
    termination_log = os.environ.get(TERMINATION_LOG_ENV) or None
    record_ending(result.exit_code, result.report, termination_log, log)
    logging.shutdown()
    sys.exit(result.exit_code)


def _gpu_count() -> int:
    """CUDA devices, read only when --nproc-per-node asks for gpu/auto."""
    wanted = {"gpu", "auto"}
    argv = sys.argv[1:]
    asked = any(a in wanted for a in argv) or os.environ.get("PET_NPROC_PER_NODE") in wanted
    if not asked:
        return 0
    try:
        import torch
    except ImportError:
        return 0
    count: int = torch.cuda.device_count()
    return count


if __name__ == "__main__":
    main()
