"""Getting a surviving worker out of its generation: interrupt, abort, clean up."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import socket
import sys
import threading
from typing import Any, Optional

import psutil


class GenerationAborted(BaseException):
    """Raised in the main thread when the supervisor aborts the current generation.

    A BaseException so that a script's `except Exception` does not swallow it.
    """


class MainThreadInterrupter:
    """Injects GenerationAborted into the main thread while the script runs, never after."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = False
        self._thread_id = threading.main_thread().ident or 0

    def script_started(self) -> None:
        with self._lock:
            self._running = True

    def script_ended(self) -> None:
        with self._lock:
            self._running = False
            # Clear an exception set just before the script returned.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), None)

    def interrupt(self) -> bool:
        with self._lock:
            if not self._running:
                return False
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._thread_id), ctypes.py_object(GenerationAborted)
            )
            return True


def abort_communicators() -> None:
    """Unblock collectives stuck on a dead peer (NCCL needs an explicit abort).

    gloo raises by itself when a peer's socket closes, so it is left alone here:
    destroying it from another thread while the main thread is inside it is unsafe.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    try:
        if dist.get_backend() == "nccl":
            abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
            if abort is not None:
                abort()
    except Exception:  # best effort: the unwind grace period is the backstop
        pass


class ProcessGroupKeeper:
    """Holds the generation's process groups so that ours is their last reference.

    A DDP Reducer freed last would destroy a gloo group with the GIL held, and that destructor
    joins the group's threads, one of which may need the GIL to free its last work item's
    Python state: the rank then hangs for good (seen here at the end of a script; collecting a
    dead generation takes the same path). Freed through the Python object instead, the group's
    destructor releases the GIL first. Captured from a step hook: the script may destroy its
    groups (dropping them from torch's registry) before it ends."""

    def __init__(self) -> None:
        self._groups: dict[int, Any] = {}  # id -> a ProcessGroup of this generation
        self._registered = 0  # the registry's size at the last look

    def on_step(self, *_: Any) -> None:
        dist = sys.modules.get("torch.distributed")
        if dist is None or not dist.is_available():
            return
        # torch's registry of live groups (private: without it nothing is held, nothing breaks);
        # looked at on every step, so only its size unless it changed.
        registry = getattr(getattr(dist.distributed_c10d, "_world", None), "pg_map", None)
        if registry is not None and len(registry) != self._registered:
            self._registered = len(registry)
            for group in list(registry):
                self._groups.setdefault(id(group), group)

    def release(self) -> None:
        """After the generation's other objects are freed (its Reducers first)."""
        self._groups.clear()
        self._registered = 0


def process_group_initialized() -> bool:
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def destroy_process_groups() -> Optional[str]:
    """Tear down torch.distributed after an unwind so the script can init again."""
    dist = sys.modules.get("torch.distributed")
    error: Optional[str] = None
    if dist is not None and process_group_initialized():
        try:
            dist.destroy_process_group()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
    if dist is not None and dist.is_available() and not dist.is_initialized():
        forget_cut_off_init(dist.distributed_c10d)
    # The dead generation's model, DDP reducer and communicator sockets are only
    # freed once unreachable: peers blocked on us see our sockets close.
    gc.collect()
    return error


def forget_cut_off_init(c10d: Any) -> None:
    """Undo what an `init_process_group` cut off by the abort had already counted.

    torch names the default group by a counter that it advances before the rendezvous and
    that only `destroy_process_group()` resets. A survivor aborted while its init waited for
    its peers (a generation that failed while forming) keeps the count at 1 with no group to
    destroy, so its next init names the group "1": its store keys (default_pg/1/...) never
    meet a fresh peer's (default_pg/0/...), and every rank waits in the backend's
    construction until the store timeout (30 min)."""
    world = getattr(c10d, "_world", None)  # private: without it there is nothing to undo
    if world is not None and not world.pg_map:
        world.group_count = 0


Endpoint = tuple[str, int]
Connection = tuple[Endpoint, Endpoint]  # (local, remote)


def tcp_connections() -> set[Connection]:
    """This process's established TCP connections, as (local, remote) endpoints."""
    found = set()
    with contextlib.suppress(psutil.Error):
        for conn in psutil.Process().net_connections(kind="tcp"):
            if conn.raddr:
                found.add(((conn.laddr.ip, conn.laddr.port), (conn.raddr.ip, conn.raddr.port)))
    return found


def _connections_to_sever(store_port: int, before: set[Connection], keep_port: int) -> list[int]:
    """fds of the generation's TCP connections: gloo pairs and TCPStore clients.

    Every connection opened since the generation started (`before`), wherever
    its peer lives (other pods' ranks included), plus any to the store or to a
    sibling worker. The connection to the supervisor (`keep_port`) is spared:
    it outlives generations.
    """
    me = psutil.Process()
    fds, older = [], []
    for conn in me.net_connections(kind="tcp"):
        if not conn.raddr or conn.fd < 0 or conn.raddr.port == keep_port:
            continue
        endpoints = ((conn.laddr.ip, conn.laddr.port), (conn.raddr.ip, conn.raddr.port))
        if endpoints not in before or conn.raddr.port == store_port:
            fds.append(conn.fd)
        else:
            older.append((conn.fd, endpoints[1]))
    # Only a connection older than the generation needs its far end's owner, and finding
    # owners reads every process's fds (~60 ms on a busy node, while a rank waits for this).
    if older:
        siblings = _sibling_endpoints(me)
        fds += [fd for fd, remote in older if remote in siblings]
    return fds


def _sibling_endpoints(me: psutil.Process) -> set[Endpoint]:
    """Local endpoints of TCP sockets owned by the other workers of this launcher."""
    parent = me.ppid()
    sibling: dict[int, bool] = {me.pid: False}
    found = set()
    for conn in psutil.net_connections(kind="tcp"):
        if not conn.laddr or not conn.pid:
            continue
        if conn.pid not in sibling:
            try:
                sibling[conn.pid] = psutil.Process(conn.pid).ppid() == parent
            except psutil.Error:
                sibling[conn.pid] = False
        if sibling[conn.pid]:
            found.add((conn.laddr.ip, conn.laddr.port))
    return found


def sever_generation_connections(before: set[Connection], keep_port: int) -> int:
    """Shut down the dead generation's sockets so blocked collectives fail at once.

    gloo has no working abort for a pending collective: a peer that died or
    stopped participating leaves it blocked until its timeout (30 min). A
    shutdown() makes the blocked recv return, and the collective raises.
    """
    try:
        store_port = int(os.environ.get("MASTER_PORT", "0"))
        fds = _connections_to_sever(store_port, before, keep_port)
    except (psutil.Error, ValueError):
        return 0
    for fd in fds:
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()  # closes our dup only; the owner's fd is now a dead socket
    return len(fds)
