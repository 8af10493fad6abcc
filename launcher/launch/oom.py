"""Kernel OOM kills of a worker, read from its memory cgroup.

A kernel OOM kill is a SIGKILL like any other; the memory cgroup's oom_kill
count is what tells it apart (supervisor/rules/classify.py). The count lives in
`memory.events` under cgroup v2 and in `memory.oom_control` under v1; both
have an `oom_kill N` line. The launcher reads it when it spawns a worker and
again when it reaps it: the increase goes in ProcessExit.oom_kills.

Workers share a cgroup (the container's), so each kill is attributed once,
and a worker takes at most one (it dies once): the first SIGKILLed worker to
exit after a kill takes it (the OOM killer sends SIGKILL, its victim dies at
once); a worker that exited by itself takes none. Parsing and attribution
are pure; OomCounters does the reading.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Optional

CGROUP_ROOT = "/sys/fs/cgroup"
V1_FILE = "memory.oom_control"
V2_FILE = "memory.events"


def counter_files(proc_cgroup: str, root: str = CGROUP_ROOT) -> list[str]:
    """Where the oom_kill count of the cgroup in `proc_cgroup` (/proc/<pid>/cgroup) may be,
    best first.

    v1 ("N:memory:/path", the memory controller maybe co-mounted with others):
    `<root>/memory/<path>/memory.oom_control`. v2 ("0::/path"):
    `<root>/<path>/memory.events`, or under `<root>/unified` on a hybrid host.
    A memory controller on v1 wins: a controller lives in one hierarchy only.
    Each path is followed by its mount's root: a container without a cgroup
    namespace sees the host's path in /proc but has its own cgroup mounted there.
    """
    v1: list[str] = []
    v2: list[str] = []
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        relative = path.strip("/")
        if hierarchy == "0" and controllers == "":
            for mount in (root, os.path.join(root, "unified")):
                v2 += [os.path.join(mount, relative, V2_FILE), os.path.join(mount, V2_FILE)]
        elif "memory" in controllers.split(","):
            mount = os.path.join(root, "memory")
            v1 += [os.path.join(mount, relative, V1_FILE), os.path.join(mount, V1_FILE)]
    return list(dict.fromkeys(v1 + v2))  # in order, each once (path "/" repeats the root)


def oom_kill_count(text: str) -> Optional[int]:
    """The `oom_kill N` line of memory.events (v2) or memory.oom_control (v1); None if absent."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def claim(start: int, now: int, claimed: int, signum: int) -> tuple[int, int]:
    """OOM kills (0 or 1) to attribute to a worker that exited with `signum`, and the new
    `claimed`.

    `start`: the count when the worker was spawned; `now`: at its exit;
    `claimed`: the count up to which earlier exits (of the same cgroup) took
    the kills. Only a SIGKILL can be an OOM kill; kills before the spawn are
    someone else's.
    """
    taken = max(start, claimed)
    if signum != signal.SIGKILL or now <= taken:
        return 0, claimed
    return 1, taken + 1


@dataclass(frozen=True)
class OomBaseline:
    path: str  # the counter file of the worker's memory cgroup
    count: int  # its oom_kill count when the worker was spawned


class OomCounters:
    """One launcher's view of its workers' memory cgroups. Thread-safe: exits are reaped
    on waiter threads. Never raises: no readable cgroup means no evidence (0 kills)."""

    def __init__(self, root: str = CGROUP_ROOT, proc: str = "/proc") -> None:
        self.root = root
        self.proc = proc
        self._claimed: dict[str, int] = {}  # per counter file
        self._lock = threading.Lock()

    def baseline(self, who: str, inherited: Optional[OomBaseline] = None) -> Optional[OomBaseline]:
        """The count of `who`'s memory cgroup ("self", or a pid).

        `inherited`: the launcher's own, read before the spawn. A child starts
        in its parent's cgroup, so when `who` is still there the earlier count
        is kept: an OOM kill between the spawn and this read still counts.
        """
        text = _read(os.path.join(self.proc, who, "cgroup"))
        if text is None:
            return None
        for path in counter_files(text, self.root):
            if inherited is not None and path == inherited.path:
                return inherited
            count = _read_count(path)
            if count is not None:
                return OomBaseline(path, count)
        return None

    def kills(self, baseline: Optional[OomBaseline], signum: int) -> int:
        """OOM kills to attribute to the worker spawned at `baseline`, which just exited."""
        if baseline is None:
            return 0
        now = _read_count(baseline.path)
        if now is None:
            return 0
        with self._lock:
            claimed = self._claimed.get(baseline.path, 0)
            kills, self._claimed[baseline.path] = claim(baseline.count, now, claimed, signum)
        return kills


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def _read_count(path: str) -> Optional[int]:
    text = _read(path)
    return None if text is None else oom_kill_count(text)
