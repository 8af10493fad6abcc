"""What the OS tells about the pod's processes (/proc), for supervisor/rpc/call_checks.py.

Only trusted when the launcher runs in this supervisor's PID namespace (it
says which one it is in when it attaches): elsewhere a pid names another
process, and every answer is None ("cannot tell").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

PROC = Path("/proc")
MAX_DEPTH = 64  # parent links followed before giving up (a loop cannot happen; a deep tree can)


def pid_namespace() -> str:
    """This process's PID namespace ("pid:[4026531836]"); "" where /proc does not say."""
    try:
        return os.readlink(PROC / "self" / "ns" / "pid")
    except OSError:
        return ""


def _parent(pid: int) -> Optional[int]:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 and fields[0] != "Z" else None


class ProcessTable:
    """/proc of this PID namespace."""

    def alive(self, pid: int) -> Optional[bool]:
        return _parent(pid) is not None

    def descends_from(self, pid: int, ancestor: int) -> Optional[bool]:
        current: Optional[int] = pid
        for _ in range(MAX_DEPTH):
            current = _parent(current) if current is not None else None
            if current is None or current == 0:
                return False
            if current == ancestor:
                return True
        return None


def launcher_in_view(launcher_pid: int, namespace: str) -> bool:
    """The launcher told us its namespace, it is ours, and its pid runs: /proc answers hold."""
    return bool(namespace) and namespace == pid_namespace() and _parent(launcher_pid) is not None
