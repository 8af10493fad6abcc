"""`torch.distributed.checkpoint` into the supervisor's memory: a StorageWriter/StorageReader pair.

    from launcher.worker.snapshot import Snapshots
    from launcher.worker.integrations.dcp import SnapshotReader, SnapshotWriter

    snapshots = Snapshots()                              # once per run of the script
    reader = SnapshotReader(snapshots)
    if reader.step >= 0:                                 # the job's committed step, -1: none
        dcp.load(state, storage_reader=reader)
    ...
    dcp.save(state, storage_writer=SnapshotWriter(snapshots, step))

Each rank keeps what it needs to load itself again with the same sharding: every item of its
own local save plan (DCP writes a replicated tensor on one rank only; here each rank keeps its
copy), with a rank-local DCP Metadata rebuilt from them at load. Only plain values and tensors
go into the snapshot (bytes items as uint8 tensors), so the supervisor's persisted copy stays a
`torch.load(weights_only=True)` file. Restore order (own memory, a peer's, the durable copy) is
the supervisor's, as for `Snapshots.load`. See docs/frameworks.md.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from launcher.worker.snapshot import Snapshots
from train_supervisor.steps import NO_STEP

ITEMS_KEY = "dcp_items"  # the snapshot's only key: a list of item records
_TRAILING_STEP = re.compile(r"(\d+)/*$")

Record = dict[str, Any]  # plain values only: persisted copies load with weights_only=True


def describe(item: WriteItem) -> Record:
    """The plain record of one write item (without its data)."""
    offset = None if item.index.offset is None else list(item.index.offset)
    if item.type == WriteItemType.BYTE_IO or item.tensor_data is None:
        return {"fqn": item.index.fqn, "offset": offset, "bytes": True}
    tensor = item.tensor_data
    return {
        "fqn": item.index.fqn,
        "offset": offset,
        "bytes": False,
        "dtype": str(tensor.properties.dtype).removeprefix("torch."),
        "size": list(tensor.size),
        "chunk_offsets": list(tensor.chunk.offsets),
        "chunk_sizes": list(tensor.chunk.sizes),
    }


def metadata_of(records: Sequence[Record]) -> Metadata:
    """A DCP Metadata for one rank's records; storage_data maps each index to its position."""
    state: dict[str, Union[TensorStorageMetadata, BytesStorageMetadata]] = {}
    storage: dict[MetadataIndex, int] = {}
    for position, record in enumerate(records):
        fqn = record["fqn"]
        offset = None if record["offset"] is None else torch.Size(record["offset"])
        storage[MetadataIndex(fqn, offset)] = position
        if record["bytes"]:
            state[fqn] = BytesStorageMetadata()
            continue
        chunk = ChunkStorageMetadata(
            torch.Size(record["chunk_offsets"]), torch.Size(record["chunk_sizes"])
        )
        known = state.get(fqn)
        if isinstance(known, TensorStorageMetadata):
            known.chunks.append(chunk)
        else:
            properties = TensorProperties(dtype=getattr(torch, record["dtype"]))
            state[fqn] = TensorStorageMetadata(properties, torch.Size(record["size"]), [chunk])
    return Metadata(state_dict_metadata=state, storage_data=storage)


def step_from_checkpoint_id(checkpoint_id: Union[str, os.PathLike[str]]) -> int:
    """The step a checkpoint id names by its trailing number (`ckpt/step_120` -> 120)."""
    match = _TRAILING_STEP.search(os.fspath(checkpoint_id))
    if match is None:
        raise ValueError(
            f"checkpoint_id {os.fspath(checkpoint_id)!r} names no step (no trailing number): "
            "pass SnapshotWriter(snapshots, step)"
        )
    return int(match.group(1))


def stored_tensor(data: Union[torch.Tensor, io.BytesIO]) -> torch.Tensor:
    if isinstance(data, io.BytesIO):
        raw = bytearray(data.getvalue())
        if not raw:
            return torch.zeros(0, dtype=torch.uint8)
        return torch.frombuffer(raw, dtype=torch.uint8)
    return data


def _done(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


class SnapshotWriter(StorageWriter):
    """`dcp.save(state, storage_writer=SnapshotWriter(snapshots, step))`: a snapshot of `step`.

    Without `step`, the trailing number of `dcp.save`'s checkpoint_id names it. Every rank must
    save the same steps (as with `Snapshots.save`)."""

    def __init__(self, snapshots: Snapshots, step: Optional[int] = None) -> None:
        super().__init__()
        self.snapshots = snapshots
        self.given_step = step
        self.step = step  # this save's: the given one, else the checkpoint_id's
        self._local_items: list[WriteItem] = []

    def reset(self, checkpoint_id: Union[str, os.PathLike[str], None] = None) -> None:
        self._local_items = []
        self.step = self.given_step
        if checkpoint_id is not None and self.step is None:
            self.step = step_from_checkpoint_id(checkpoint_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        pass

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        # Before deduplication: the items this rank needs to load itself again.
        self._local_items = list(plan.items)
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return plans

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        if self.step is None:
            raise ValueError("SnapshotWriter needs a step: SnapshotWriter(snapshots, step)")
        records = []
        for item in self._local_items or plan.items:
            data = stored_tensor(planner.resolve_data(item))
            records.append({**describe(item), "data": data})
        self.snapshots.save(self.step, {ITEMS_KEY: records})
        results = [
            WriteResult(index=item.index, size_in_bytes=_size(item), storage_data=position)
            for position, item in enumerate(plan.items)
        ]
        return _done(results)

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        pass  # each rank's records are its own metadata: nothing global to write

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Union[str, os.PathLike[str]]) -> bool:
        return False  # never chosen by itself: pass it as storage_writer

    def storage_meta(self) -> Optional[StorageMeta]:
        return StorageMeta(checkpoint_id=f"snapshot-step-{self.step}")


class SnapshotReader(StorageReader):
    """`dcp.load(state, storage_reader=SnapshotReader(snapshots))`: the job's committed step.

    `step` is that step (-1: nothing committed; `dcp.load` then fails as on a missing
    checkpoint). The first use asks the supervisor (`Snapshots.load`), once."""

    def __init__(self, snapshots: Snapshots) -> None:
        super().__init__()
        self.snapshots = snapshots
        self._loaded: Optional[tuple[int, list[Record]]] = None

    @property
    def step(self) -> int:
        return self._restored()[0]

    def _restored(self) -> tuple[int, list[Record]]:
        if self._loaded is None:
            step, state = self.snapshots.load()
            records = state.get(ITEMS_KEY) if isinstance(state, dict) else None
            if step != NO_STEP and not isinstance(records, list):
                raise ValueError(
                    f"snapshot of step {step} was not saved by SnapshotWriter "
                    f"(no {ITEMS_KEY!r} list)"
                )
            self._loaded = (step, records or [])
        return self._loaded

    def reset(self, checkpoint_id: Union[str, os.PathLike[str], None] = None) -> None:
        pass

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        step, records = self._restored()
        if step == NO_STEP:
            raise FileNotFoundError("no committed snapshot to load (SnapshotReader.step is -1)")
        return metadata_of(records)

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        pass

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        _, records = self._restored()
        positions = metadata_of(records).storage_data
        for request in plan.items:
            stored: torch.Tensor = records[positions[request.storage_index]]["data"]
            if request.type == LoadItemType.BYTE_IO:
                planner.load_bytes(request, io.BytesIO(bytes(stored.tolist())))  # small values
                continue
            source = stored
            for dim, (start, length) in enumerate(zip(request.storage_offsets, request.lengths)):
                source = source.narrow(dim, start, length)
            target = planner.resolve_tensor(request).detach()
            target.copy_(source)
            planner.commit_tensor(request, target)
        return _done(None)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Union[str, os.PathLike[str]]) -> bool:
        return False


def _size(item: WriteItem) -> int:
    size = item.tensor_storage_size()
    if size is not None:
        return size
    return item.bytes_io_data.nbytes if item.bytes_io_data is not None else 0
