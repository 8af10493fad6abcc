"""The worker API for in-memory snapshots: save every step, restore in about a second.

    from launcher.worker.snapshot import Snapshots

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

A run that a failure unwound may leave a copy in flight or queued; once the process has left
its generation (the bootstrap says so before it reports the unwind, so before the supervisor may
restore into this arena) that copy is dropped, checked under the slot lock and between two
tensors: it never lands over a restored step or overlaps the next run's write. A script that
ends normally keeps its last save.
Payload encoding: launcher/worker/snapshot_payload.py.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from launcher.launch.processes import (
    SCRIPT_ADDRESS_ENV,
    SCRIPT_ENDED_GENERATION_ENV,
    SCRIPT_GENERATION_ENV,
    SCRIPT_TOKEN_ENV,
)
from launcher.worker.snapshot_cuda import DeviceCopier, DeviceSync, cuda_devices
from launcher.worker.snapshot_payload import fill, plan, read_state
from train_supervisor.arena import (
    CorruptSnapshot,
    RankArena,
    SlotInfo,
    SlotState,
    snapshot_directory,
)
from train_supervisor.credentials import client_channel
from train_supervisor.rpc_errors import describe_rpc_error
from train_supervisor.steps import NO_STEP
from train_supervisor.torch_format import TensorEntry
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

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
    device: Optional[DeviceSync] = None  # CUDA tensors: copies on side streams
    copied: threading.Event = field(default_factory=threading.Event)


class Snapshots:
    """One rank's snapshots. Create one per run of the script (it is cheap)."""

    def __init__(self, env: Optional[Mapping[str, str]] = None) -> None:
        # Read live: the launcher's bootstrap sets the generation when a run re-enters in place.
        env = os.environ if env is None else env
        self._env = env
        self.rank = int(env["RANK"])
        self.generation = int(env.get(SCRIPT_GENERATION_ENV, "0"))
        self.channel = client_channel(env[SCRIPT_ADDRESS_ENV], env.get(SCRIPT_TOKEN_ENV) or None)
        self.stub = pb_grpc.SnapshotServiceStub(self.channel)
        self.arena = RankArena(snapshot_directory(env["TORCHELASTIC_RUN_ID"], env), self.rank)
        self.committed = NO_STEP
        self.committed_slot: Optional[int] = None
        self.written: dict[int, int] = {}  # slot -> step written by this process
        self.last_blocking_s = 0.0
        self.failing = False  # the last save's report failed (its supervisor is away)
        self._optimized: set[int] = set()  # data_ptrs of optimizer params and state
        self._pending: Optional[_Pending] = None
        self._queue: queue.Queue[_WriterWork] = queue.Queue()
        # The thread holds the object only while a save of it is queued or written: a script
        # that re-enters in place makes a new Snapshots, and the old one goes away once its
        # last save is written (or dropped), so a script's last save is never lost.
        writer = threading.Thread(target=_write_forever, args=(self._queue,))
        writer.daemon = True
        writer.start()
        self._device_copier = DeviceCopier()
        hook = register_optimizer_step_pre_hook(_PreStepHook(self))
        weakref.finalize(self, _stop, self._queue, hook, self._device_copier)

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
                    self.committed, self.committed_slot = step, slot
                except CorruptSnapshot as err:
                    problem = str(err)
        source = point.source or "shm" if state is not None else "none"
        self.stub.ReportRestore(
            pb.RestoreReport(
                pid=os.getpid(), rank=self.rank, generation=self.generation,
                step=step if state is not None else NO_STEP, source=source, problem=problem,
                seconds=time.perf_counter() - began,
            ),
            timeout=30,
        )  # fmt: skip
        return (step, state) if state is not None else (NO_STEP, None)

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: Any) -> None:
        """Snapshot `state` as of `step`; returns before the copy is done."""
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**63:
            raise ValueError(f"snapshot step must be an int in [0, 2**63), not {step!r}")
        if step <= self.committed:
            return  # already held (e.g. the step just restored)
        began = time.perf_counter()
        self.wait_for_copy()
        tensors, entries, payload_len, manifest = plan(state)
        # Only what the optimizer changes may be copied later; anything else
        # (buffers a forward pass updates, RNG states) is cloned now.
        tensors = [t if t.data_ptr() in self._optimized else t.clone() for t in tensors]
        devices = cuda_devices(tensors)
        device = DeviceSync.after_current_work(devices) if devices else None
        pending = _Pending(
            step, self.generation, manifest, tensors, entries, payload_len,
            time.perf_counter() - began, device,
        )  # fmt: skip
        self._pending = pending
        self._queue.put((self, pending))

    def wait_for_copy(self) -> float:
        """Block until the last save's tensors are copied (CUDA: until their copies are
        queued, and the current streams wait for them on the device); returns the wait."""
        pending = self._pending
        if pending is None:
            return 0.0
        began = time.perf_counter()
        pending.copied.wait()
        if pending.device is not None:
            pending.device.order_training_after_copies()
        return time.perf_counter() - began

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every save so far is written and reported (tests, shutdown)."""
        done = threading.Event()
        self._queue.put(_Flush(done))
        done.wait(timeout)

    def learn_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimized.update(optimizer_data_ptrs(optimizer))

    # ---------------------------------------------------- the writer thread
    def _write(self, pending: _Pending) -> None:
        slot = 1 - self.committed_slot if self.committed_slot is not None else 0
        with self.arena.exclusive(slot):  # a previous run's copy may still be in this slot
            info = self._copy(slot, pending)
        if info is None:
            print(
                f"[train-supervisor] rank {self.rank}: snapshot of step {pending.step} dropped: "
                f"generation {pending.generation} is over",
                file=sys.stderr,
                flush=True,
            )
            return
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

    def _copy(self, slot: int, pending: _Pending) -> Optional[SlotInfo]:
        """Copy `pending` into `slot`; None if its generation ended first (slot left WRITING)."""

        def wanted() -> bool:
            return not self._superseded(pending.generation)

        device, copier = pending.device, self._device_copier

        def copy(target: torch.Tensor, source: torch.Tensor) -> None:
            if device is not None and source.is_cuda:
                copier.copy(device, target, source)
            else:
                target.copy_(source)

        done = False
        try:
            if wanted():
                view = self.arena.begin_write(
                    slot, pending.step, pending.generation, pending.manifest, pending.payload_len
                )
                try:
                    if device is not None:
                        copier.pin(slot, view)
                    done = fill(view, pending.entries, pending.tensors, wanted, copy)
                finally:
                    del view
        finally:
            if device is not None:
                copier.issued(device)  # a partial copy too: what was queued still reads
            pending.copied.set()  # the optimizer may change parameters from here on
            if device is not None:
                device.wait_for_copies()
            pending.tensors.clear()
        return self.arena.finish_write(slot) if done else None

    def _superseded(self, generation: int) -> bool:
        """This process left `generation` (or runs a newer one): a save of it is never needed,
        and a restore may already have written this rank's arena."""
        ended = int(self._env.get(SCRIPT_ENDED_GENERATION_ENV, "-1"))
        return ended >= generation or int(self._env.get(SCRIPT_GENERATION_ENV, "0")) > generation


def optimizer_data_ptrs(optimizer: torch.optim.Optimizer) -> set[int]:
    """Where the tensors an optimizer step changes live: parameters and per-parameter state.
    A DTensor (FSDP2) is its local shard: what a state dict of it hands to `save`."""
    tensors = [p for group in optimizer.param_groups for p in group["params"]]
    for per_param in optimizer.state.values():
        tensors += [v for v in per_param.values() if isinstance(v, torch.Tensor)]
    return {_local(t).data_ptr() for t in tensors}


def _local(tensor: torch.Tensor) -> torch.Tensor:
    to_local = getattr(tensor, "to_local", None)  # DTensor, without importing it
    return to_local() if callable(to_local) else tensor


@dataclass(frozen=True)
class _Flush:
    done: threading.Event


# A save (with its Snapshots), a flush, or None: stop.
_WriterWork = Union[tuple["Snapshots", _Pending], _Flush, None]


class _PreStepHook:
    """Parameters must not change while the last save still copies them."""

    def __init__(self, snapshots: Snapshots) -> None:
        self.snapshots = weakref.ref(snapshots)

    def __call__(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        snapshots = self.snapshots()
        if snapshots is None:
            return
        snapshots.learn_optimizer(optimizer)
        snapshots.last_blocking_s = snapshots.wait_for_copy()


def _write_forever(work: queue.Queue[_WriterWork]) -> None:
    while True:
        item = work.get()
        if item is None:
            return
        if isinstance(item, _Flush):
            item.done.set()
            continue
        snapshots, pending = item
        del item
        try:
            snapshots._write(pending)
            if snapshots.failing:
                snapshots.failing = False
                print(f"[train-supervisor] rank {snapshots.rank}: snapshot of step "
                      f"{pending.step} reported", file=sys.stderr, flush=True)  # fmt: skip
        except Exception as err:  # any: a writer thread that died would leave training waiting
            pending.copied.set()
            # Its supervisor may be restarting: the next save's report goes on from there.
            # Said once per run of failures, not once per step.
            if not snapshots.failing:
                print(f"[train-supervisor] rank {snapshots.rank}: snapshot of step "
                      f"{pending.step} failed: {describe_rpc_error(err)}; training goes on",
                      file=sys.stderr, flush=True)  # fmt: skip
            snapshots.failing = True
        del snapshots, pending


def _stop(work: queue.Queue[_WriterWork], hook: Any, copier: DeviceCopier) -> None:
    work.put(None)
    hook.remove()
    copier.close()  # before the arena's mappings go: no registered range outlives its pages
