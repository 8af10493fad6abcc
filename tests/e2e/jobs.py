"""Run real train-launch / torchrun jobs and read what their workers recorded."""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import psutil

from supervisor.detect.stacks import PySpy

REPO = Path(__file__).resolve().parents[2]
TOY_DDP = REPO / "tests" / "workloads" / "toy_ddp.py"
ADDRESS_LINE = re.compile(r"supervisor on (\S+?);")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition; fail naming it when it does not come true in time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def job_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


class RunningJob:
    """A launcher process (train-launch or torchrun) whose stderr is collected as it comes."""

    def __init__(self, argv: list[str], env: Optional[dict[str, str]] = None) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env or job_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=5000)
        self.stdout_lines: collections.deque[str] = collections.deque(maxlen=5000)
        self.address: Optional[str] = None
        self.address_seen = threading.Event()
        self._readers = [
            threading.Thread(
                target=self._read, args=(self.proc.stderr, self.stderr_lines), daemon=True
            ),
            threading.Thread(
                target=self._read, args=(self.proc.stdout, self.stdout_lines), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, sink: collections.deque[str]) -> None:
        for line in stream:
            sink.append(line)
            match = ADDRESS_LINE.search(line)
            if match and self.address is None:
                self.address = match.group(1)
                self.address_seen.set()
        stream.close()

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """wait_until, failing at once with the log if the job ends first."""

        def done_or_dead() -> bool:
            if predicate():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"job exited {self.proc.returncode} before {what}:\n{self.stderr}"
                )
            return False

        wait_until(done_or_dead, timeout, what)

    def supervisor_address(self, timeout: float = 60) -> str:
        if not self.address_seen.wait(timeout) or self.address is None:
            raise AssertionError(f"no supervisor address in the launcher log:\n{self.stderr}")
        return self.address

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stacks = self.stacks()
            self.kill_tree()
            raise AssertionError(
                f"job did not end within {timeout}s; stderr:\n{self.stderr}\n"
                f"stdout:\n{self.stdout}\nstacks:\n{stacks}"
            ) from None
        for reader in self._readers:
            reader.join(10)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    @property
    def stdout(self) -> str:
        return "".join(self.stdout_lines)

    def stacks(self) -> str:
        """py-spy dumps of the job's processes: where a job that did not end is stuck."""
        dumper = PySpy(timeout_s=20)
        pids = [self.proc.pid, *(child.pid for child in self.children())]
        return "\n".join(f"--- pid {pid}\n{dumper.dump(pid)}" for pid in pids)

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill_tree(self) -> None:
        for child in self.children():
            child.kill()
        self.proc.kill()


def train_launch(
    args: list[str],
    script_args: list[str],
    env: Optional[dict[str, str]] = None,
    script: Path = TOY_DDP,
    prefix: Sequence[str] = (),
) -> RunningJob:
    """`train-launch ARGS SCRIPT SCRIPT_ARGS`; `prefix` runs it under another command."""
    argv = [sys.executable, "-m", "launcher.launch.main", "--supervisor-port", "0", *args]
    return RunningJob([*prefix, *argv, str(script), *script_args], env)


def torchrun(
    args: list[str], script_args: list[str], env: Optional[dict[str, str]] = None
) -> RunningJob:
    argv = [sys.executable, "-m", "torch.distributed.run", *args, str(TOY_DDP), *script_args]
    return RunningJob(argv, env)


def read_events(events_dir: Path) -> list[dict[str, Any]]:
    records = []
    for path in glob.glob(str(events_dir / "rank_*.jsonl")):
        with open(path) as handle:
            # A rank killed mid-write may leave a partial last line.
            for line in handle:
                if line.endswith("\n"):
                    records.append(json.loads(line))
    return sorted(records, key=lambda r: r["t"])


def pids_by_rank(events: list[dict[str, Any]], generation: int) -> dict[int, int]:
    return {e["rank"]: e["pid"] for e in events if e["event"] == "start" and e["gen"] == generation}


def max_step(events: list[dict[str, Any]], rank: int) -> int:
    return max((e["step"] for e in events if e["event"] == "step" and e["rank"] == rank), default=0)
