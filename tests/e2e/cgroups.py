"""A memory cgroup with a limit of our own, for real kernel OOM kills (root; cgroup v2 or v1).

Shared by tests/e2e/test_oom_and_hardware.py and bench/detection.py:

    with memory_cgroup(512 << 20) as group:
        job = RunningJob(group.command(argv))  # argv and its children run inside it
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jobs import wait_until

CGROUP = Path("/sys/fs/cgroup")


class NoMemoryCgroup(RuntimeError):
    """No memory cgroup can be made here (not root, or no writable hierarchy)."""


@dataclass(frozen=True)
class MemoryCgroup:
    path: Path
    procs: Path  # write a pid here to move the process in
    oom_kills: Path  # memory.events (v2) or memory.oom_control (v1)

    def kills(self) -> int:
        for line in self.oom_kills.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise AssertionError(f"no oom_kill line in {self.oom_kills}")

    def command(self, argv: list[str]) -> list[str]:
        """`argv` started inside this cgroup (a shell moves itself in, then execs)."""
        return ["sh", "-c", f'echo $$ > {self.procs} && exec "$@"', "sh", *argv]


def _make_v2(base: Path, name: str, limit_bytes: int) -> MemoryCgroup:
    if "memory" not in (base / "cgroup.controllers").read_text().split():
        raise OSError(f"no memory controller in {base}")
    if "memory" not in (base / "cgroup.subtree_control").read_text().split():
        (base / "cgroup.subtree_control").write_text("+memory")
    path = base / name
    path.mkdir()
    (path / "memory.max").write_text(str(limit_bytes))
    if (path / "memory.swap.max").exists():
        (path / "memory.swap.max").write_text("0")
    return MemoryCgroup(path, path / "cgroup.procs", path / "memory.events")


def _make_v1(base: Path, name: str, limit_bytes: int) -> MemoryCgroup:
    path = base / name
    path.mkdir()
    (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
    if (path / "memory.memsw.limit_in_bytes").exists():  # swap accounting: no swap either
        (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
    return MemoryCgroup(path, path / "cgroup.procs", path / "memory.oom_control")


def _remove(cgroup: MemoryCgroup) -> None:
    """Kill what is left inside, then remove the cgroup (it must be empty first)."""

    def emptied() -> bool:
        pids = [int(p) for p in cgroup.procs.read_text().split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not pids

    wait_until(emptied, 10, f"{cgroup.path} to empty")

    def removed() -> bool:
        try:
            cgroup.path.rmdir()
        except OSError:
            return False
        return True

    wait_until(removed, 10, f"{cgroup.path} to be removed")


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[MemoryCgroup]:
    """A fresh memory cgroup limited to `limit_bytes`: v2 where the memory controller is on
    the unified hierarchy, else v1. Raises NoMemoryCgroup when none can be made."""
    if os.geteuid() != 0:
        raise NoMemoryCgroup("creating a memory cgroup needs root")
    name = f"train-supervisor-oom-{os.getpid()}-{time.monotonic_ns()}"
    attempts = [(_make_v2, CGROUP), (_make_v2, CGROUP / "unified"), (_make_v1, CGROUP / "memory")]
    problems: list[str] = []
    for make, base in attempts:
        try:
            cgroup = make(base, name, limit_bytes)
        except OSError as err:
            problems.append(f"{base}: {err}")
            with contextlib.suppress(OSError):
                (base / name).rmdir()
            continue
        try:
            yield cgroup
        finally:
            _remove(cgroup)
        return
    raise NoMemoryCgroup(f"no writable memory cgroup: {'; '.join(problems)}")
