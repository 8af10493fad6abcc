"""The worker API for in-memory snapshots: save every step, restore in about a second.

    from launcher.snapshot import Snapshots

    snapshots = Snapshots()
    step, state = snapshots.load()       # (-1, None): nothing committed, start fresh
    ...
    snapshots.save(step, {"model": model.state_dict(), "optim": optim.state_dict(), ...})

`state` is a nested dict/list/tuple of tensors and plain Python values. `save`
returns at once: tensors the optimizer will change are copied into this rank's
shared-memory arena (train_supervisor/arena.py) while the next forward and
backward run, and a global optimizer pre-step hook waits for that copy before
parameters change; every other tensor (buffers, RNG states) is cloned inside
`save`. Every rank must save the same steps: a step is committed (and ever
restored) only once every rank of the job holds it.

A slot's layout is launcher/snapshot_payload.py's: a torch.save-compatible manifest
and the tensors' bytes, so the supervisor can persist the slot as a torch.save file.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import grpc
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from launcher.processes import SCRIPT_ADDRESS_ENV, SCRIPT_GENERATION_ENV, SCRIPT_TOKEN_ENV
from launcher.snapshot_payload import fill, plan, read_state, write_state
from supervisor.commit import NONE
from train_supervisor.arena import CorruptSnapshot, RankArena, SlotState, snapshot_directory
from train_supervisor.credentials import client_channel
from train_supervisor.torch_format import TensorEntry
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

__all__ = ["Snapshots", "read_state", "write_state"]
RESTORE_WAIT_S = 1800.0  # a peer's or the durable copy of a large state at a capped rate


@dataclass
class _Pending:
    step: int
    generation: int
    manifest: bytes
    tensors: list[torch.Tensor]
    entries: list[TensorEntry]
    payload_len: int
    sync_s: float
    copied: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class _Flush:
    done: threading.Event


class _Writer:
    """The writer thread and what a write needs; it never holds the Snapshots.

    So a script that goes away (a generation unwound in place) drops its
    Snapshots at once, even mid-copy, and closing it stops the copy: the next
    run of the script must not find a write of the dead generation still going
    on in the slot it is about to write itself.
    """

    def __init__(self, rank: int, arena: RankArena, stub: pb_grpc.SnapshotServiceStub) -> None:
        self.rank, self.arena, self.stub = rank, arena, stub
        self.committed = NONE
        self.committed_slot: Optional[int] = None
        self.written: dict[int, int] = {}  # slot -> step written by this process
        self.last_blocking_s = 0.0
        self.work: queue.Queue[Union[_Pending, _Flush, None]] = queue.Queue()
        self.cancelled = threading.Event()
        # Held while this writer touches the arena; reentrant for a close from the writer itself.
        self.in_arena = threading.RLock()
        self.thread = threading.Thread(target=self._run, name="snapshot-writer", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Abandon the pending copy (its slot stays WRITING: never restored) and stop.

        Returns once this writer no longer touches the arena; a report to the
        supervisor still in flight is left to finish.
        """
        self.cancelled.set()
        self.work.put(None)
        with self.in_arena:
            pass

    def _run(self) -> None:
        while (item := self.work.get()) is not None:
            if isinstance(item, _Flush):
                item.done.set()
                continue
            try:
                self._write(item)
            except (grpc.RpcError, OSError) as err:
                print(f"[train-supervisor] rank {self.rank}: snapshot of step {item.step} "
                      f"failed: {err}", file=sys.stderr, flush=True)  # fmt: skip
            finally:
                item.copied.set()  # also where the write was abandoned before it began

    def _write(self, pending: _Pending) -> None:
        with self.in_arena:
            if self.cancelled.is_set():
                return
            slot = 1 - self.committed_slot if self.committed_slot is not None else 0
            view = self.arena.begin_write(
                slot, pending.step, pending.generation, pending.manifest, pending.payload_len
            )
            try:
                complete = fill(view, pending.entries, pending.tensors, self.cancelled.is_set)
            finally:
                del view
                pending.tensors.clear()
                pending.copied.set()  # the optimizer may change parameters from here on
            if not complete:
                return
            info = self.arena.finish_write(slot)
            self.written[slot] = pending.step
            headers = self.arena.slots()  # read once: both slots' states and steps
        held = {s for i, s in self.written.items() if headers[i].state == SlotState.COMPLETE
                and headers[i].step == s}  # fmt: skip
        if self.committed >= 0:
            held.add(self.committed)
        reply = self.stub.ReportSaved(
            pb.SnapshotSaved(
                pid=os.getpid(), rank=self.rank, generation=pending.generation,
                step=pending.step, held=sorted(held), bytes=info.manifest_len + info.payload_len,
                blocking_s=pending.sync_s + self.last_blocking_s,
            ),
            timeout=120,
        )  # fmt: skip
        if reply.committed_step > self.committed:
            self.committed = reply.committed_step
            self.committed_slot = self.arena.find(reply.committed_step)


class Snapshots:
    """One rank's snapshots. Create one per run of the script (it is cheap)."""

    def __init__(self, env: Optional[dict[str, str]] = None) -> None:
        env = dict(os.environ) if env is None else env
        self.rank = int(env["RANK"])
        self.generation = int(env.get(SCRIPT_GENERATION_ENV, "0"))
        self.channel = client_channel(env[SCRIPT_ADDRESS_ENV], env.get(SCRIPT_TOKEN_ENV) or None)
        self.stub = pb_grpc.SnapshotServiceStub(self.channel)
        self.arena = RankArena(snapshot_directory(env["TORCHELASTIC_RUN_ID"], env), self.rank)
        self._writer = _Writer(self.rank, self.arena, self.stub)
        self._optimized: set[int] = set()  # data_ptrs of optimizer params and state
        self._pending: Optional[_Pending] = None
        hook = register_optimizer_step_pre_hook(_PreStepHook(self))
        self._closer = weakref.finalize(self, _close, self._writer, hook)

    @property
    def committed(self) -> int:
        """The newest step the job committed that this rank knows of (-1: none)."""
        return self._writer.committed

    @property
    def last_blocking_s(self) -> float:
        """How long the last optimizer step waited for a save's copy."""
        return self._writer.last_blocking_s

    # ------------------------------------------------------------------ load
    def load(self) -> tuple[int, Optional[dict[str, Any]]]:
        """The job's committed step and this rank's state at it; (-1, None) for none."""
        began = time.perf_counter()
        request = pb.RestoreRequest(pid=os.getpid(), rank=self.rank, generation=self.generation)
        # The answer waits for the copy from a peer or the durable directory, if needed.
        point = self.stub.GetRestorePoint(request, timeout=RESTORE_WAIT_S)
        step, problem, state = point.step, "", None
        if step >= 0:
            slot = self.arena.find(step)
            if slot is None:
                problem = f"step {step} is not in this pod's shared memory"
            else:
                try:
                    # The supervisor verified every rank's copy before answering.
                    state = read_state(self.arena, slot, verify=False)
                    self._writer.committed, self._writer.committed_slot = step, slot
                except CorruptSnapshot as err:
                    problem = str(err)
        source = point.source or "shm" if state is not None else "none"
        self.stub.ReportRestore(
            pb.RestoreReport(
                pid=os.getpid(), rank=self.rank, generation=self.generation,
                step=step if state is not None else NONE, source=source, problem=problem,
                seconds=time.perf_counter() - began,
            ),
            timeout=30,
        )  # fmt: skip
        return (step, state) if state is not None else (NONE, None)

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: Any) -> None:
        """Snapshot `state` as of `step`; returns before the copy is done."""
        if step <= self.committed:
            return  # already held (e.g. the step just restored)
        began = time.perf_counter()
        self.wait_for_copy()
        tensors, entries, payload_len, manifest = plan(state)
        # Only what the optimizer changes may be copied later; anything else
        # (buffers a forward pass updates, RNG states) is cloned now.
        tensors = [t if t.data_ptr() in self._optimized else t.clone() for t in tensors]
        pending = _Pending(
            step, self.generation, manifest, tensors, entries, payload_len,
            time.perf_counter() - began,
        )  # fmt: skip
        self._pending = pending
        self._writer.work.put(pending)

    def wait_for_copy(self) -> float:
        """Block until the last save's tensors are copied; returns the wait."""
        pending = self._pending
        if pending is None or pending.copied.is_set():
            return 0.0
        began = time.perf_counter()
        pending.copied.wait()
        return time.perf_counter() - began

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every save so far is written and reported (tests, shutdown)."""
        done = threading.Event()
        self._writer.work.put(_Flush(done))
        done.wait(timeout)

    def close(self) -> None:
        """Stop: a copy still going on is abandoned (never restored). Done for you when this
        object goes away, as when a failure unwinds the script."""
        self._closer()

    def learn_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            self._optimized.update(p.data_ptr() for p in group["params"])
        for per_param in optimizer.state.values():
            for value in per_param.values():
                if isinstance(value, torch.Tensor):
                    self._optimized.add(value.data_ptr())


class _PreStepHook:
    """Parameters must not change while the last save still copies them."""

    def __init__(self, snapshots: Snapshots) -> None:
        self.snapshots = weakref.ref(snapshots)

    def __call__(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        snapshots = self.snapshots()
        if snapshots is None:
            return
        snapshots.learn_optimizer(optimizer)
        snapshots._writer.last_blocking_s = snapshots.wait_for_copy()


def _close(writer: _Writer, hook: Any) -> None:
    hook.remove()
    writer.close()
