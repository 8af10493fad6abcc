"""Worker processes of one pod: spawn, watch (exit reported at once), route output, kill."""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import IO, Optional

from launcher.launch.args import LaunchConfig
from launcher.launch.oom import OomBaseline, OomCounters
from launcher.worker.warm_imports import MANIFEST_ENV, PREIMPORT_ENV
from train_supervisor.credentials import TOKEN_ENV

# Variables the bootstrap reads and removes before the user's script runs.
ENV_SUPERVISOR = "TRAIN_LAUNCH_SUPERVISOR"
ENV_RANK = "TRAIN_LAUNCH_RANK"
ENV_PARENT_PID = "TRAIN_LAUNCH_PARENT_PID"
ENV_TOKEN = "TRAIN_LAUNCH_TOKEN"
ENV_TIME_FORWARD = "TRAIN_LAUNCH_TIME_FORWARD"  # --time-forward on
# What the script sees besides torchrun's environment: how the worker API
# (launcher/worker/snapshot.py) reaches this pod's supervisor.
SCRIPT_ADDRESS_ENV = "TRAIN_SUPERVISOR_ADDRESS"
SCRIPT_TOKEN_ENV = "TRAIN_SUPERVISOR_TOKEN"
SCRIPT_GENERATION_ENV = "TRAIN_SUPERVISOR_GENERATION"
# The newest generation whose script this process left by an abort or an error: set before
# the outcome is reported, so before the supervisor can place a restored step in this rank's
# arena. The worker API drops a save of that generation (or older) still queued.
SCRIPT_ENDED_GENERATION_ENV = "TRAIN_SUPERVISOR_ENDED_GENERATION"
# --reuse-freed-memory: glibc serves blocks up to 32 MiB (its largest mmap threshold) from
# the heap and never trims it, so the memory a failed generation's script frees is what the
# re-entered script allocates again, without munmap and page faults (on CPU, what CUDA's
# caching allocator does on a GPU). Read by the dynamic loader at exec, so the bootstrap can
# take it out of the script's environment (ENV_OWN_TUNABLES) without undoing it.
GLIBC_TUNABLES_ENV = "GLIBC_TUNABLES"
REUSE_FREED_TUNABLES = (
    f"glibc.malloc.mmap_threshold={32 * 2**20}:glibc.malloc.trim_threshold={2**40}"
)
ENV_OWN_TUNABLES = "TRAIN_LAUNCH_OWN_GLIBC_TUNABLES"


TAIL_BYTES = 16 * 1024
PUMP_DRAIN_S = 0.2

ExitCallback = Callable[[int, int, int, str, int], None]  # pid, code, signal, tail, OOM kills
StartedCallback = Callable[[int, int, bool], None]  # pid, rank, spare


@dataclass
class WorkerProcess:
    popen: subprocess.Popen[bytes]
    rank: int  # -1 while a spare
    local_rank: int
    tail: collections.deque[bytes] = field(default_factory=lambda: collections.deque(maxlen=64))
    lock: threading.Lock = field(default_factory=threading.Lock)
    pumps: list[threading.Thread] = field(default_factory=list)
    oom: Optional[OomBaseline] = None  # its memory cgroup's OOM kill count at spawn

    def output_tail(self) -> str:
        with self.lock:
            data = b"".join(self.tail)[-TAIL_BYTES:]
        return data.decode("utf-8", "replace")


def worker_command(config: LaunchConfig) -> list[str]:
    if config.no_python:
        return [config.script, *config.script_args]
    target = ["-m", config.script] if config.module else [config.script]
    return [sys.executable, "-u", "-m", "launcher.worker.bootstrap", *target, *config.script_args]


class WorkerProcesses:
    """All processes of this pod. Thread-safe; exits are reported from waiter threads."""

    def __init__(
        self,
        config: LaunchConfig,
        supervisor_address: str,
        token: Optional[str],
        on_started: StartedCallback,
        on_exit: ExitCallback,
        imports_manifest: str = "",
    ) -> None:
        self.config = config
        self.imports_manifest = imports_manifest  # launcher/worker/warm_imports.py
        self.supervisor_address = supervisor_address
        self.token = token
        self.on_started = on_started
        self.on_exit = on_exit
        self.procs: dict[int, WorkerProcess] = {}
        self.lock = threading.Lock()
        self.all_exited = threading.Condition(self.lock)
        self.oom = OomCounters()
        # A worker's PR_SET_PDEATHSIG (bootstrap.die_with_parent) fires when the *thread* that
        # forked it ends, not the process: forked by the command stream's thread, which ends
        # with the job, every worker was SIGKILLed while it still ran its exit hooks. One
        # thread that lives as long as this process forks them all.
        self.to_fork: queue.Queue[tuple[Callable[[], int], Future[int]]] = queue.Queue()
        threading.Thread(target=self._fork_forever, name="worker-forker", daemon=True).start()

    def spawn(self, rank: int, local_rank: int, env_overrides: dict[str, str], spare: bool) -> int:
        done: Future[int] = Future()
        self.to_fork.put((lambda: self._spawn(rank, local_rank, env_overrides, spare), done))
        return done.result()

    def _fork_forever(self) -> None:
        while True:
            start, done = self.to_fork.get()
            try:
                done.set_result(start())
            except BaseException as exc:  # the caller of spawn() sees it
                done.set_exception(exc)

    def _spawn(self, rank: int, local_rank: int, env_overrides: dict[str, str], spare: bool) -> int:
        env = dict(os.environ)
        env.update(self.config.base_env)
        env.update(env_overrides)
        env[ENV_SUPERVISOR] = self.supervisor_address
        env[ENV_RANK] = str(rank)
        env[ENV_PARENT_PID] = str(os.getpid())
        if self.imports_manifest:
            env[MANIFEST_ENV] = self.imports_manifest
        env.pop(ENV_TIME_FORWARD, None)  # ours to set, never inherited
        if not self.config.no_python:  # the bootstrap's, removed before the script runs
            env[PREIMPORT_ENV] = ",".join(self.config.preimport)
            if self.config.time_forward:
                env[ENV_TIME_FORWARD] = "1"
            if self.config.reuse_freed_memory and GLIBC_TUNABLES_ENV not in env:
                env[GLIBC_TUNABLES_ENV] = REUSE_FREED_TUNABLES
                env[ENV_OWN_TUNABLES] = "1"
        # The job token reaches the bootstrap only, never the user's script.
        env.pop(TOKEN_ENV, None)
        env.pop(SCRIPT_ENDED_GENERATION_ENV, None)  # a process's own, never inherited
        if self.token:
            env[ENV_TOKEN] = self.token
        inherited = self.oom.baseline("self")  # the child's cgroup, before it can run
        popen = subprocess.Popen(
            worker_command(self.config),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        proc = WorkerProcess(popen=popen, rank=rank, local_rank=local_rank)
        proc.oom = self.oom.baseline(str(popen.pid), inherited)
        with self.lock:
            self.procs[popen.pid] = proc
        assert popen.stdout is not None and popen.stderr is not None
        for stream, std_index in ((popen.stdout, 1), (popen.stderr, 2)):
            pump = threading.Thread(
                target=self._pump,
                args=(proc, stream, std_index),
                daemon=True,
                name=f"pump-{popen.pid}-{std_index}",
            )
            proc.pumps.append(pump)
            pump.start()
        # Reported before anyone can report its exit: the supervisor must know
        # the pid first, or a worker dying at once would go unnoticed.
        self.on_started(popen.pid, rank, spare)
        waiter = threading.Thread(
            target=self._wait, args=(proc,), daemon=True, name=f"wait-{popen.pid}"
        )
        waiter.start()
        return popen.pid

    def assign(self, pid: int, rank: int, local_rank: int) -> None:
        with self.lock:
            proc = self.procs.get(pid)
            if proc is not None:
                proc.rank, proc.local_rank = rank, local_rank

    def kill(self, pid: int, signum: int) -> None:
        with self.lock:
            proc = self.procs.get(pid)
        if proc is not None and proc.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signum)

    def ranks(self) -> list[tuple[int, int]]:
        """(pid, rank) of every process (rank -1: a spare)."""
        with self.lock:
            return [(pid, proc.rank) for pid, proc in self.procs.items()]

    def rank_of(self, pid: int) -> int:
        with self.lock:
            proc = self.procs.get(pid)
            return proc.rank if proc is not None else -1

    def pids(self) -> list[int]:
        with self.lock:
            return list(self.procs)

    def wait_all(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.procs:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.all_exited.wait(left)
        return True

    def terminate_all(self, grace: float) -> None:
        """SIGTERM everything, SIGKILL what is left after `grace` seconds."""
        for pid in self.pids():
            self.kill(pid, signal.SIGTERM)
        if not self.wait_all(grace):
            for pid in self.pids():
                self.kill(pid, signal.SIGKILL)
            self.wait_all(10.0)

    # ----------------------------------------------------------- internals
    def _wait(self, proc: WorkerProcess) -> None:
        code = proc.popen.wait()
        for pump in (
            proc.pumps
        ):  # the last lines are the evidence; a child holding the pipe must not delay us
            pump.join(timeout=PUMP_DRAIN_S)
        signum, exit_code = (-code, 0) if code < 0 else (0, code)
        try:
            oom_kills = self.oom.kills(proc.oom, signum)
            self.on_exit(proc.popen.pid, exit_code, signum, proc.output_tail(), oom_kills)
        finally:
            with self.lock:
                self.procs.pop(proc.popen.pid, None)
                self.all_exited.notify_all()

    def _sinks(
        self, proc: WorkerProcess, std_index: int
    ) -> tuple[Optional[IO[bytes]], Optional[IO[bytes]]]:
        """(console, file) for this stream, torchrun's --redirects/--tee semantics."""
        console: Optional[IO[bytes]] = sys.stdout.buffer if std_index == 1 else sys.stderr.buffer
        local = proc.local_rank
        redirected = self.config.redirects.get(local, 0) & std_index
        teed = self.config.tee.get(local, 0) & std_index
        filtered = (
            self.config.local_ranks_filter is not None
            and local not in self.config.local_ranks_filter
        )
        if redirected or filtered:
            console = None
        log_file: Optional[IO[bytes]] = None
        if self.config.log_dir and (redirected or teed):
            name = "stdout.log" if std_index == 1 else "stderr.log"
            directory = os.path.join(
                self.config.log_dir, self.config.run_id, f"pid_{proc.popen.pid}"
            )
            os.makedirs(directory, exist_ok=True)
            log_file = open(os.path.join(directory, name), "ab")  # noqa: SIM115 -- closed by _pump
        return console, log_file

    def _pump(self, proc: WorkerProcess, stream: IO[bytes], std_index: int) -> None:
        console, log_file = self._sinks(proc, std_index)
        prefix = b""
        if self.config.tee.get(proc.local_rank, 0) & std_index:
            prefix = f"[{self.config.role}{proc.local_rank}]:".encode()
        try:
            for line in iter(stream.readline, b""):
                with proc.lock:
                    proc.tail.append(line)
                if log_file is not None:
                    log_file.write(line)
                    log_file.flush()
                if console is not None:
                    console.write(prefix + line)
                    console.flush()
        finally:
            if log_file is not None:
                log_file.close()
