"""A snapshot's bytes: the manifest (torch.save's data.pkl plus a tensor table) and the
payload (every tensor, ALIGN-aligned), as launcher/worker/snapshot.py writes them into a slot.

A slot's manifest is train_supervisor/torch_format.py's: the tensor table and the data.pkl
torch.save would write, so the supervisor can persist the slot as a torch.save file.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from train_supervisor.arena import CorruptSnapshot, RankArena, SlotInfo
from train_supervisor.torch_format import TensorEntry, decode_manifest, encode_manifest

ALIGN = 64


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


def _copy_now(target: torch.Tensor, source: torch.Tensor) -> None:
    target.copy_(source)


def fill(
    payload: memoryview,
    entries: list[TensorEntry],
    tensors: list[torch.Tensor],
    wanted: Callable[[], bool] = lambda: True,
    copy: Callable[[torch.Tensor, torch.Tensor], None] = _copy_now,
) -> bool:
    """Copy the tensors into the payload and zero the padding: equal states, equal bytes.

    `wanted` is asked before each tensor; once it says no the copy stops (False: incomplete).
    `copy(target, source)` may only queue a copy (a CUDA source): the caller waits for it.
    """
    flat = _flat(payload)
    ends = [entry.offset for entry in entries[1:]] + [len(payload)]
    for entry, end, source in zip(entries, ends, tensors):
        if not wanted():
            return False
        stop = entry.offset + entry.nbytes
        target = flat[entry.offset : stop].view(getattr(torch, entry.dtype))
        copy(target.view(entry.shape), source)
        if stop < end:
            flat[stop:end].zero_()
    return True


def decode_state(manifest: bytes, payload: memoryview) -> Any:
    """The state a manifest and payload hold, every tensor a copy (bitwise exact)."""
    entries, data_pkl = decode_manifest(manifest)
    return _DataUnpickler(data_pkl, _flat(payload), entries).load()


def plan(state: Any) -> tuple[list[torch.Tensor], list[TensorEntry], int, bytes]:
    """The state's tensors, their places in the payload, the payload's size and the manifest."""
    tensors: list[torch.Tensor] = []
    skeleton = _flatten(state, tensors)
    entries, payload_len = _layout(tensors)
    return tensors, entries, payload_len, encode_manifest(entries, _data_pkl(skeleton))


def write_state(arena: RankArena, slot: int, step: int, generation: int, state: Any) -> SlotInfo:
    """Snapshot `state` into `slot` at once (tools, tests); `Snapshots.save` overlaps the copy."""
    tensors, entries, payload_len, manifest = plan(state)
    view = arena.begin_write(slot, step, generation, manifest, payload_len)
    try:
        fill(view, entries, tensors)
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
