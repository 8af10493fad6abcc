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

A slot's manifest is train_supervisor/torch_format.py's: the tensor table and the data.pkl
torch.save would write, so the supervisor can persist the slot as a torch.save file.
"""

from __future__ import annotations

import io
import os
import pickle
import queue
import sys
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import grpc
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from launcher.processes import SCRIPT_ADDRESS_ENV, SCRIPT_GENERATION_ENV, SCRIPT_TOKEN_ENV
from supervisor.commit import NONE
from train_supervisor.arena import (
    CorruptSnapshot,
    RankArena,
    SlotInfo,
    SlotState,
    snapshot_directory,
)
from train_supervisor.credentials import client_channel
from train_supervisor.torch_format import TensorEntry, decode_manifest, encode_manifest
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

ALIGN = 64
RESTORE_WAIT_S = 1800.0  # a peer's or the durable copy of a large state at a capped rate


class _Storage:
    """Stands in for tensor i's storage: pickled as torch.save's persistent id for it."""

    __slots__ = ("pid",)

    def __init__(self, pid: tuple[Any, ...]) -> None:
        self.pid = pid


class _Tensor:
    """Stands in for a tensor: pickles as torch.save pickles a contiguous CPU tensor."""

    __slots__ = ("args", "rebuild")

    def __init__(self, rebuild: Callable[..., torch.Tensor], args: tuple[Any, ...]) -> None:
        self.rebuild, self.args = rebuild, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.rebuild, self.args


def _stand_in(index: int, tensor: torch.Tensor) -> _Tensor:
    shape = tuple(tensor.shape)
    strides, step = [], 1
    for extent in reversed(shape):  # contiguous strides as torch computes them
        strides.append(step)
        step *= max(extent, 1)
    stride = tuple(reversed(strides))
    hooks: OrderedDict[Any, Any] = OrderedDict()  # torch.save's "no backward hooks"
    # As torch.save: a legacy typed storage where the dtype has one, else untyped bytes (v3).
    legacy = torch.storage._dtype_to_storage_type_map().get(tensor.dtype)
    if legacy is not None:
        pid = ("storage", getattr(torch, legacy), str(index), "cpu", tensor.numel())
        args: tuple[Any, ...] = (_Storage(pid), 0, shape, stride, False, hooks)
        return _Tensor(torch._utils._rebuild_tensor_v2, args)
    nbytes = tensor.numel() * tensor.element_size()
    pid = ("storage", torch.UntypedStorage, str(index), "cpu", nbytes)
    args = (_Storage(pid), 0, shape, stride, False, hooks, tensor.dtype)
    return _Tensor(torch._utils._rebuild_tensor_v3, args)


class _DataPickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if type(obj) is _Storage else None


class _DataUnpickler(pickle.Unpickler):
    """Reads data.pkl with each storage cloned out of the payload: no view outlives the read."""

    def __init__(self, data_pkl: bytes, flat: torch.Tensor, entries: list[TensorEntry]) -> None:
        super().__init__(io.BytesIO(data_pkl))
        self.flat, self.entries = flat, entries

    def persistent_load(self, pid: Any) -> Any:
        kind, storage_type, key, _, _ = pid
        entry = self.entries[int(key)]
        if kind != "storage" or entry.offset + entry.nbytes > len(self.flat):
            raise pickle.UnpicklingError(f"bad storage {pid!r} for tensor entry {entry}")
        raw = self.flat[entry.offset : entry.offset + entry.nbytes].clone()
        untyped = storage_type is torch.UntypedStorage
        dtype = torch.uint8 if untyped else getattr(torch, entry.dtype)
        storage = raw.untyped_storage()
        return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)  # type: ignore[no-untyped-call]


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


def _map_leaves(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """`value` with `leaf` applied to everything that is not a dict, list or tuple."""
    if isinstance(value, dict):
        mapped = type(value)((k, _map_leaves(v, leaf)) for k, v in value.items())
        if type(value) is not dict and getattr(value, "__dict__", None):
            mapped.__dict__.update(value.__dict__)  # e.g. a state_dict()'s _metadata
        return mapped
    if type(value) in (list, tuple):
        return type(value)(_map_leaves(v, leaf) for v in value)
    return leaf(value)


def _flatten(value: Any, tensors: list[torch.Tensor]) -> Any:
    """`value` with every tensor appended to `tensors` and replaced by a stand-in."""

    def to_stand_in(leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        tensors.append(leaf.detach())
        return _stand_in(len(tensors) - 1, leaf)

    return _map_leaves(value, to_stand_in)


def _data_pkl(skeleton: Any) -> bytes:
    out = io.BytesIO()
    _DataPickler(out, protocol=2).dump(skeleton)  # protocol 2: what torch.save writes
    return out.getvalue()


def _layout(tensors: list[torch.Tensor]) -> tuple[list[TensorEntry], int]:
    """Where each tensor goes in the payload (ALIGN-aligned), and the payload's size."""
    entries, end = [], 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        dtype = str(tensor.dtype).removeprefix("torch.")
        entries.append(TensorEntry(dtype, tuple(tensor.shape), end, nbytes))
        end += -(-nbytes // ALIGN) * ALIGN
    return entries, end


def _flat(payload: memoryview) -> torch.Tensor:
    with warnings.catch_warnings():  # a read-only view: the caller only reads (and clones)
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(payload, dtype=torch.uint8) if len(payload) else torch.empty(0)


def _fill(payload: memoryview, entries: list[TensorEntry], tensors: list[torch.Tensor]) -> None:
    """Copy the tensors into the payload and zero the padding: equal states, equal bytes."""
    flat = _flat(payload)
    ends = [entry.offset for entry in entries[1:]] + [len(payload)]
    for entry, end, source in zip(entries, ends, tensors):
        stop = entry.offset + entry.nbytes
        target = flat[entry.offset : stop].view(getattr(torch, entry.dtype))
        target.view(entry.shape).copy_(source)
        if stop < end:
            flat[stop:end].zero_()


def decode_state(manifest: bytes, payload: memoryview) -> Any:
    """The state a manifest and payload hold, every tensor a copy (bitwise exact)."""
    entries, data_pkl = decode_manifest(manifest)
    return _DataUnpickler(data_pkl, _flat(payload), entries).load()


def write_state(arena: RankArena, slot: int, step: int, generation: int, state: Any) -> SlotInfo:
    """Snapshot `state` into `slot` at once (tools, tests); `Snapshots.save` overlaps the copy."""
    tensors: list[torch.Tensor] = []
    skeleton = _flatten(state, tensors)
    entries, payload_len = _layout(tensors)
    manifest = encode_manifest(entries, _data_pkl(skeleton))
    view = arena.begin_write(slot, step, generation, manifest, payload_len)
    try:
        _fill(view, entries, tensors)
    finally:
        del view
    return arena.finish_write(slot)


def read_state(arena: RankArena, slot: int, verify: bool = True) -> Any:
    """The state in a COMPLETE slot; CorruptSnapshot if it cannot be read (or verified)."""
    _, manifest, payload = arena.read(slot, verify)
    try:
        return decode_state(manifest, payload)
    except (ValueError, pickle.UnpicklingError, RuntimeError) as err:
        raise CorruptSnapshot(f"{arena.path(slot)}: cannot decode the snapshot: {err}") from err
    finally:
        del payload  # no view into the arena outlives the read


class Snapshots:
    """One rank's snapshots. Create one per run of the script (it is cheap)."""

    def __init__(self, env: Optional[dict[str, str]] = None) -> None:
        env = dict(os.environ) if env is None else env
        self.rank = int(env["RANK"])
        self.generation = int(env.get(SCRIPT_GENERATION_ENV, "0"))
        self.channel = client_channel(env[SCRIPT_ADDRESS_ENV], env.get(SCRIPT_TOKEN_ENV) or None)
        self.stub = pb_grpc.SnapshotServiceStub(self.channel)
        self.arena = RankArena(snapshot_directory(env["TORCHELASTIC_RUN_ID"], env), self.rank)
        self.committed = NONE
        self.committed_slot: Optional[int] = None
        self.written: dict[int, int] = {}  # slot -> step written by this process
        self.last_blocking_s = 0.0
        self._optimized: set[int] = set()  # data_ptrs of optimizer params and state
        self._pending: Optional[_Pending] = None
        self._queue: queue.Queue[Union[_Pending, _Flush, None]] = queue.Queue()
        # The thread holds the object only while it writes: a script that
        # re-enters in place makes a new Snapshots, and the old one goes away.
        writer = threading.Thread(target=_write_forever, args=(weakref.ref(self), self._queue))
        writer.daemon = True
        writer.start()
        hook = register_optimizer_step_pre_hook(_PreStepHook(self))
        weakref.finalize(self, _stop, self._queue, hook)

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
        tensors: list[torch.Tensor] = []
        skeleton = _flatten(state, tensors)
        # Only what the optimizer changes may be copied later; anything else
        # (buffers a forward pass updates, RNG states) is cloned now.
        tensors = [t if t.data_ptr() in self._optimized else t.clone() for t in tensors]
        entries, payload_len = _layout(tensors)
        manifest = encode_manifest(entries, _data_pkl(skeleton))
        pending = _Pending(
            step, self.generation, manifest, tensors, entries, payload_len,
            time.perf_counter() - began,
        )  # fmt: skip
        self._pending = pending
        self._queue.put(pending)

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
        self._queue.put(_Flush(done))
        done.wait(timeout)

    def learn_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            self._optimized.update(p.data_ptr() for p in group["params"])
        for per_param in optimizer.state.values():
            for value in per_param.values():
                if isinstance(value, torch.Tensor):
                    self._optimized.add(value.data_ptr())

    # ---------------------------------------------------- the writer thread
    def _write(self, pending: _Pending) -> None:
        slot = 1 - self.committed_slot if self.committed_slot is not None else 0
        view = self.arena.begin_write(
            slot, pending.step, pending.generation, pending.manifest, pending.payload_len
        )
        try:
            _fill(view, pending.entries, pending.tensors)
        finally:
            del view
            pending.tensors.clear()
            pending.copied.set()  # the optimizer may change parameters from here on
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


@dataclass(frozen=True)
class _Flush:
    done: threading.Event


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


def _write_forever(
    owner: weakref.ref[Snapshots], work: queue.Queue[Union[_Pending, _Flush, None]]
) -> None:
    while True:
        item = work.get()
        snapshots = owner()
        if item is None or snapshots is None:
            return
        if isinstance(item, _Flush):
            item.done.set()
            continue
        try:
            snapshots._write(item)
        except (grpc.RpcError, OSError) as err:
            item.copied.set()
            print(f"[train-supervisor] rank {snapshots.rank}: snapshot of step {item.step} "
                  f"failed: {err}", file=sys.stderr, flush=True)  # fmt: skip
        del snapshots


def _stop(work: queue.Queue[Union[_Pending, _Flush, None]], hook: Any) -> None:
    work.put(None)
    hook.remove()
