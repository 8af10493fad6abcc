"""`python -m launcher.worker.bootstrap script.py args...`: one worker process.

Attaches to the supervisor, runs the user's script with the environment of
each generation, and when a generation is aborted unwinds the script and runs
it again in place (same PID, imports kept) with the next generation's env.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import json
import os
import queue
import runpy
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Optional, TypeVar

import grpc

from launcher.launch.processes import (
    ENV_OWN_TUNABLES,
    ENV_PARENT_PID,
    ENV_RANK,
    ENV_SUPERVISOR,
    ENV_TIME_FORWARD,
    ENV_TOKEN,
    GLIBC_TUNABLES_ENV,
    SCRIPT_ADDRESS_ENV,
    SCRIPT_ENDED_GENERATION_ENV,
    SCRIPT_GENERATION_ENV,
    SCRIPT_TOKEN_ENV,
)
from launcher.worker import launch_state
from launcher.worker.heartbeat import StepCounter, install_optimizer_hook
from launcher.worker.library_resets import reset_libraries
from launcher.worker.store_wait import store_endpoint, wait_until_listening
from launcher.worker.unwind import (
    Connection,
    GenerationAborted,
    MainThreadInterrupter,
    ProcessGroupKeeper,
    abort_communicators,
    destroy_process_groups,
    process_group_initialized,
    sever_generation_connections,
    tcp_connections,
)
from launcher.worker.warm_imports import (
    MANIFEST_ENV,
    PREIMPORT_ENV,
    ManifestWriter,
    list_imports_forever,
    preimport,
    start_warming,
)
from train_supervisor.credentials import client_channel
from train_supervisor.rpc_errors import describe_rpc_error, is_transient
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

PR_SET_PDEATHSIG = 1
RPC_TIMEOUT_S = 30.0
# Attaching again to a restarted supervisor: back off from 50 ms to 1 s.
RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 1.0
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    module: bool
    name: str
    args: list[str]


def parse_target(argv: list[str]) -> Target:
    if argv and argv[0] == "-m":
        return Target(True, argv[1], argv[2:])
    return Target(False, argv[0], argv[1:])


def die_with_parent(parent_pid: int) -> None:
    """A worker must not outlive its launcher, even one killed with SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the launcher died before prctl took effect
        os._exit(1)


def failure_detail(exc: BaseException) -> pb.FailureDetail:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    name = type(exc).__name__
    message = str(exc)
    return pb.FailureDetail(
        exception_type=name,
        message=message,
        traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:],
        signature=f"{name}: {message[:200]} @ {where}",
    )


def write_error_file(detail: pb.FailureDetail) -> None:
    """torchelastic's error file format, unless the script's @record wrote one."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = {
        "message": {
            "message": f"{detail.exception_type}: {detail.message}",
            "extraInfo": {"py_callstack": detail.traceback, "timestamp": str(int(time.time()))},
        }
    }
    with open(path, "w") as handle:
        json.dump(body, handle)


class Worker:
    def __init__(
        self,
        address: str,
        token: Optional[str],
        rank: int,
        target: Target,
        imports_manifest: str = "",
        time_forward: bool = False,
    ) -> None:
        self.pid = os.getpid()
        self.time_forward = time_forward
        self.rank = rank
        self.target = target
        self.channel = client_channel(address, token)
        self.stub = pb_grpc.WorkerServiceStub(self.channel)
        self.commands: queue.Queue[Optional[pb.WorkerCommand]] = queue.Queue()
        self.interrupter = MainThreadInterrupter()
        self.supervisor_port = int(address.rpartition(":")[2])
        self.connections_before: set[Connection] = set()
        self.generation = -1
        self.runs = 0  # generations this process ran the script in
        self.launch = launch_state.capture()
        self.aborted_generation = -1
        self.unwound = False  # the supervisor knows this generation is over for us
        if imports_manifest:
            threading.Thread(
                target=list_imports_forever,
                args=(ManifestWriter(imports_manifest), sys.modules, self._lists_imports),
                name="list-imports",
                daemon=True,
            ).start()
        self.steps = StepCounter(self._send_heartbeat)
        self.groups = ProcessGroupKeeper()
        self.attached = threading.Event()  # the command stream is open: calls may go
        self.reported = (-1, pb.OutcomeKind.OUTCOME_UNSPECIFIED)  # last outcome sent
        self.refused = ""  # why the supervisor refused this worker, if it did
        self.warming: Optional[threading.Event] = None  # set: a spare stops warming up
        if imports_manifest and rank < 0:
            self.warming = start_warming(imports_manifest, target.name if target.module else "")

    def _lists_imports(self) -> bool:
        """Local rank 0 lists its modules for the spares, from its first generation's start."""
        return self.generation >= 0 and os.environ.get("LOCAL_RANK") == "0"

    def _send_heartbeat(self, generation: int, step: int, step_time: float, compute: float) -> None:
        self.stub.Heartbeat(
            pb.HeartbeatRequest(
                pid=self.pid,
                rank=self.rank,
                generation=generation,
                step=step,
                step_time_s=step_time,
                compute_s=compute,
            ),
            timeout=5,
        )

    def _control(self) -> None:
        """The command stream. When the supervisor goes away (its sidecar restarts) the
        script trains on and this attaches again with backoff, saying where it stands; the
        launcher decides when waiting is over (it stops, and this process with it)."""
        request = pb.AttachWorkerRequest(pid=self.pid, rank=self.rank, spare=self.rank < 0)
        delay = RECONNECT_MIN_S
        while True:
            try:
                stream = self.stub.AttachWorker(request)
                stream.initial_metadata()  # sent once the supervisor took us
                if not stream.done():
                    self.attached.set()
                    delay = RECONNECT_MIN_S
                self._follow(stream)
            except grpc.RpcError as err:
                if not is_transient(err):
                    self.refused = describe_rpc_error(err)
                    self.commands.put(None)
                    return
            self.attached.clear()
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
            request = self._reattach_request()

    def _follow(self, stream: Iterable[pb.WorkerCommand]) -> None:
        for command in stream:
            if command.HasField("abort"):
                self._on_abort(command.abort.generation)
            else:
                self.commands.put(command)

    def _reattach_request(self) -> pb.AttachWorkerRequest:
        """Where this process stands, for a new supervisor to rebuild the pod's job."""
        WS = pb.WorkerState
        generation, kind = self.reported
        if self.generation < 0:
            state = WS.WORKER_STATE_INIT
        elif generation == self.generation and kind == pb.OutcomeKind.OUTCOME_FINISHED:
            state = WS.WORKER_STATE_SUCCEEDED
        elif self.unwound or self.aborted_generation >= self.generation:
            state = WS.WORKER_STATE_INIT
        else:
            state = WS.WORKER_STATE_HEALTHY  # its script runs (or its outcome is on its way)
        return pb.AttachWorkerRequest(
            pid=self.pid,
            rank=self.rank,
            spare=self.rank < 0,
            reattach=True,
            generation=self.generation,
            state=state,
            step=self.steps.step(),
            master_addr=os.environ.get("MASTER_ADDR", ""),
            master_port=int(os.environ.get("MASTER_PORT", "0") or 0),
            restart_count=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0),
        )

    def _call(self, call: Callable[[], T]) -> T:
        """A unary call that outlives a supervisor restart: sent once attached (again)."""
        delay = RECONNECT_MIN_S
        while True:
            self.attached.wait()
            try:
                return call()
            except grpc.RpcError as err:
                if not is_transient(err):
                    raise
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _on_abort(self, generation: int) -> None:
        self.aborted_generation = max(self.aborted_generation, generation)
        if generation == self.generation:
            abort_communicators()
            if self.interrupter.interrupt():
                sever_generation_connections(self.connections_before, self.supervisor_port)
                return
        # Not running that generation's script (finished, or between steps of
        # our own): the main loop confirms with an "unwound" report.
        self.commands.put(pb.WorkerCommand(abort=pb.AbortGeneration(generation=generation)))

    def run(self) -> int:
        threading.Thread(target=self._control, name="control", daemon=True).start()
        install_optimizer_hook(self.steps, self.groups.on_step, time_forward=self.time_forward)
        while True:
            command = self.commands.get()
            if (command is None or command.HasField("exit")) and self.warming is not None:
                # A spare's library load in flight holds torch's extension-cache lock file; cut
                # off by the exit, it would stay and hold every later load of that op.
                self.warming.set()
            if command is None:
                print(f"train-launch: the supervisor refused this worker ({self.refused}); "
                      "exiting", file=sys.stderr)  # fmt: skip
                return 1
            if command.HasField("exit"):
                return command.exit.exit_code
            if command.HasField("abort"):
                if command.abort.generation == self.generation and not self.unwound:
                    self._report(pb.OutcomeKind.OUTCOME_UNWOUND)
                continue
            verdict = self._run_generation(command.start)
            if verdict == pb.Verdict.VERDICT_EXIT_FAILED:
                return 1

    def _report(
        self, kind: pb.OutcomeKind, failure: Optional[pb.FailureDetail] = None
    ) -> pb.Verdict:
        if kind != pb.OutcomeKind.OUTCOME_FINISHED:
            # Before the report: once every rank reported, a restore may write this rank's
            # arena, and a save of this generation still queued must not land over it.
            os.environ[SCRIPT_ENDED_GENERATION_ENV] = str(self.generation)
        outcome = pb.WorkerOutcome(
            pid=self.pid,
            rank=self.rank,
            generation=self.generation,
            kind=kind,
            failure=failure,
            step=self.steps.step(),
        )
        self.reported = (self.generation, kind)
        reply = self._call(lambda: self.stub.ReportOutcome(outcome, timeout=RPC_TIMEOUT_S))
        verdict: pb.Verdict = reply.verdict
        self.unwound = kind == pb.OutcomeKind.OUTCOME_UNWOUND or (
            kind == pb.OutcomeKind.OUTCOME_RAISED and verdict == pb.Verdict.VERDICT_WAIT
        )
        return verdict

    def _run_generation(self, start: pb.StartGeneration) -> pb.Verdict:
        self.rank = start.rank
        self.generation = start.generation
        self.unwound = False
        if self.warming is not None:
            self.warming.set()  # the script imports what it needs itself
        if self.runs > 0:
            # Again, and the process group: a generation that finished was never unwound (and
            # most scripts leave their group to the process's end).
            self._reset_libraries()
            if process_group_initialized():
                destroy_process_groups()
            # The marker of the generation we left is about this process, not the script's.
            launch_state.restore(self.launch, start.env, carried=(SCRIPT_ENDED_GENERATION_ENV,))
        else:
            os.environ.update(start.env)
        self.runs += 1
        os.environ[SCRIPT_GENERATION_ENV] = str(start.generation)
        self.steps.reset(start.generation)
        endpoint = store_endpoint(os.environ)
        if endpoint is not None:  # else torch's refused client backs off for up to a second
            wait_until_listening(endpoint)
        error: Optional[BaseException] = None
        self.connections_before = tcp_connections()
        # What is alive now outlives the generation (imports; what survived the unwind's full
        # collection): frozen, that collection skips it (torch + torch._dynamo: 280k objects,
        # 0.13 s a walk here). Only the generation's own objects can become its garbage.
        gc.freeze()
        self.interrupter.script_started()
        try:
            self._run_script()
        except SystemExit as exc:
            if exc.code not in (None, 0):
                error = exc
        except BaseException as exc:
            error = exc
        finally:
            self.interrupter.script_ended()
        aborted = self.aborted_generation >= self.generation
        if error is None and not aborted:
            gc.collect()  # the script's cycles (its DDP Reducers among them), then its groups
            self.groups.release()
            return self._report(pb.OutcomeKind.OUTCOME_FINISHED)
        detail = None if error is None else failure_detail(error)
        interrupted = isinstance(error, GenerationAborted)
        error = None  # drop the frames that hold the dead generation's tensors
        # Reported before the clean-up below, which runs while the next generation forms (the
        # spare's set-up, the other survivors' unwinds): its full collection walks what the
        # script imported in generation 0 (megatron-core, transformers, inductor: 0.4-0.8 s on
        # 2 busy cores), and this process's re-entry waits for it anyway.
        if aborted or interrupted:
            verdict = self._report(pb.OutcomeKind.OUTCOME_UNWOUND)
        else:
            verdict = self._report(pb.OutcomeKind.OUTCOME_RAISED, detail)
        if verdict == pb.Verdict.VERDICT_EXIT_FAILED and detail is not None:
            sys.stderr.write(detail.traceback)
            write_error_file(detail)
        # While torch.distributed still knows the groups the libraries hold (megatron destroys
        # its gloo groups itself); their references dropped, the collection frees them too.
        self._reset_libraries()
        destroy_process_groups()
        self.groups.release()
        return verdict

    def _reset_libraries(self) -> None:
        for failure in reset_libraries(sys.modules):
            print(f"train-launch: library reset failed: {failure}", file=sys.stderr, flush=True)

    def _run_script(self) -> None:
        sys.argv = [self.target.name, *self.target.args]
        if self.target.module:
            runpy.run_module(self.target.name, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(self.target.name, run_name="__main__")


def main() -> None:
    address = os.environ.pop(ENV_SUPERVISOR)
    token = os.environ.pop(ENV_TOKEN, None)
    rank = int(os.environ.pop(ENV_RANK))
    die_with_parent(int(os.environ.pop(ENV_PARENT_PID)))
    if os.environ.pop(ENV_OWN_TUNABLES, None):  # ours, not the user's: torchrun sets none
        os.environ.pop(GLIBC_TUNABLES_ENV, None)
    os.environ[SCRIPT_ADDRESS_ENV] = address
    if token:
        os.environ[SCRIPT_TOKEN_ENV] = token
    target = parse_target(sys.argv[1:])
    if not target.module:
        sys.path.insert(0, os.path.dirname(os.path.abspath(target.name)))
    if rank < 0:  # a warm spare pays the torch import now, not when it takes a rank
        with contextlib.suppress(ImportError):
            import torch.distributed  # noqa: F401
    for problem in preimport([n for n in os.environ.pop(PREIMPORT_ENV, "").split(",") if n]):
        print(f"train-launch: --preimport {problem}", file=sys.stderr, flush=True)
    manifest = os.environ.pop(MANIFEST_ENV, "")
    time_forward = bool(os.environ.pop(ENV_TIME_FORWARD, ""))
    code = Worker(address, token, rank, target, manifest, time_forward).run()
    if code == 0:
        # A clean finish ends as the script would alone: exit handlers (trackers' and loggers'
        # flushes, logging.shutdown) run. Those registered by an aborted generation's run are
        # among them, as they cannot be told from a library's (registered once, at import):
        # they run once here, at the end, when under torchrun that generation's process would
        # have been killed without running any.
        atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: the script's threads may still be live


if __name__ == "__main__":
    main()
