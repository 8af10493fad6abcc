"""Python stacks of worker processes with py-spy, for naming the hung rank (adapter + pure parser).

`py-spy dump --nonblocking` reads a process's memory without pausing it (about
20 ms for a training rank). It needs ptrace rights over the worker: root, or
the SYS_PTRACE capability, and, in a sidecar, a pod with shareProcessNamespace.
Without them every dump comes back empty and hang detection goes on with
process state and CPU time alone (supervisor/rules/hang.py).

The tick runs on the event loop, so dumps are taken by StackRounds in a
thread of their own and picked up on a later tick.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sysconfig
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Optional, Protocol

log = logging.getLogger("train_supervisor")

DUMP_TIMEOUT_S = 3.0
FRAMES = 3  # innermost frames kept: enough to tell the waits apart, few enough to group
THREAD_LINE = re.compile(r'^Thread (\S+) \([^)]*\)(?:: "(.*)")?\s*$')  # unnamed: no threading
PROCESS_LINE = re.compile(r"^Process (\d+):")
FRAME_LINE = re.compile(r"^\s+(.+?) \((.+)\)\s*$")
LINE_NUMBER = re.compile(r":\d+$")


def main_thread_stack(dump: str, frames: int = FRAMES) -> str:
    """The main thread's innermost frames, one "function (file)" a line, innermost first.

    Line numbers, directories and addresses are dropped so that ranks waiting
    in the same place give the same text. "" when the dump shows no frame.
    """
    pid = ""
    threads: list[tuple[str, str, list[str]]] = []  # (thread id, name, frames)
    for line in dump.splitlines():
        process = PROCESS_LINE.match(line)
        thread = THREAD_LINE.match(line)
        frame = FRAME_LINE.match(line)
        if process:
            pid = process.group(1)
        elif thread:
            threads.append((thread.group(1), thread.group(2) or "", []))
        elif frame and threads:
            threads[-1][2].append(_frame(frame.group(1), frame.group(2)))
    if not threads:
        return ""
    # The main thread's id is the process id (py-spy >= 0.3.10); older ones show a pthread id.
    main = next((t for t in threads if t[0] == pid), None)
    main = main or next((t for t in threads if t[1] == "MainThread"), threads[0])
    return "\n".join([f for f in main[2] if f][:frames])


def _frame(function: str, where: str) -> str:
    """func (dir/file.py:12) -> func (file.py); "" for a bare native address."""
    if function.startswith("0x"):
        return ""
    return f"{function} ({os.path.basename(LINE_NUMBER.sub('', where))})"


def find_py_spy() -> Optional[str]:
    """py-spy next to this interpreter (a virtualenv's bin/), else on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


class PySpy:
    """Runs `py-spy dump`; never raises. Each kind of failure is logged once."""

    def __init__(self, executable: Optional[str] = None, timeout_s: float = DUMP_TIMEOUT_S):
        self.executable = executable if executable is not None else find_py_spy()
        self.timeout_s = timeout_s
        self.unusable: Optional[str] = None  # why no dump can ever work here
        self._logged: set[str] = set()
        if self.executable is None:
            self._give_up("py-spy is not installed")

    def dump(self, pid: int) -> str:
        """The process's stacks as py-spy prints them, or "" on any failure."""
        if self.unusable is not None or self.executable is None:
            return ""
        argv = [self.executable, "dump", "--pid", str(pid), "--nonblocking"]
        env = {**os.environ, "RUST_BACKTRACE": "0"}  # one error line, not a Rust backtrace
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=self.timeout_s, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            self._once("timeout", f"py-spy dump of pid {pid} took over {self.timeout_s:.0f}s")
            return ""
        except OSError as err:
            self._give_up(f"py-spy cannot run ({err})")
            return ""
        if done.returncode == 0:
            return done.stdout
        first = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[0]
        if "permission denied" in first.lower() or "not permitted" in first.lower():
            self._give_up(f"py-spy may not read the workers ({first.strip()}): run as root or "
                          "add the SYS_PTRACE capability")  # fmt: skip
        else:
            self._once("error", f"py-spy dump of pid {pid} failed: {first.strip()}")
        return ""

    def _give_up(self, why: str) -> None:
        self.unusable = why
        self._once("unusable", f"{why}; hang detection goes on with process state and CPU only")

    def _once(self, kind: str, message: str) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("%s", message)


# What a round is for: the generation and the (rank, pid) pairs dumped.
RoundKey = tuple[int, tuple[tuple[int, int], ...]]


class Dumper(Protocol):
    unusable: Optional[str]

    def dump(self, pid: int) -> str: ...


class StackRounds:
    """One round of dumps at a time, in a thread; the caller polls for the result."""

    def __init__(self, dumper: Dumper) -> None:
        self.dumper = dumper
        self._key: Optional[RoundKey] = None
        self._started_at = 0.0
        self._result: Optional[Future[dict[int, str]]] = None

    def start(self, key: RoundKey, now: float) -> None:
        """Dump every (rank, pid) of `key` unless a round is still running."""
        if self._result is not None and not self._result.done():
            return
        self._key, self._started_at = key, now
        result: Future[dict[int, str]] = Future()
        self._result = result
        pids = dict(key[1])

        def run() -> None:
            try:
                stacks = {rank: main_thread_stack(self.dumper.dump(p)) for rank, p in pids.items()}
                result.set_result(stacks)
            except Exception as err:  # dump() never raises; this keeps the round from hanging
                result.set_exception(err)

        threading.Thread(target=run, name="stack-dumps", daemon=True).start()

    @property
    def usable(self) -> bool:
        return self.dumper.unusable is None

    def finished(self, key: RoundKey) -> Optional[Mapping[int, str]]:
        """rank -> stack of the newest finished round for `key`, or None."""
        if self._key != key or self._result is None or not self._result.done():
            return None
        if self._result.exception() is not None:
            return {}
        return self._result.result()

    def started_at(self, key: RoundKey) -> Optional[float]:
        """When the newest round for `key` started (None: none was)."""
        return self._started_at if self._key == key else None
