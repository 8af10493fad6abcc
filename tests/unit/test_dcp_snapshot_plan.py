"""The pure part of launcher/worker/integrations/dcp.py: DCP's own save plan -> plain records -> the
rank-local Metadata DCP's own load planner plans from (no process group, no snapshot)."""

from __future__ import annotations

import io

import pytest
import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.planner import LoadItemType

from launcher.worker.integrations.dcp import (
    describe,
    metadata_of,
    step_from_checkpoint_id,
    stored_tensor,
)


def saved_state() -> dict[str, object]:
    return {
        "model": {"weight": torch.arange(12.0).reshape(3, 4), "bias": torch.ones(3)},
        "optim": {"step": 7, "lr": 0.01},  # plain values: DCP's BYTE_IO items
    }


def records_of(state: dict[str, object]) -> list[dict[str, object]]:
    planner = DefaultSavePlanner()
    planner.set_up_planner(state, is_coordinator=True)
    return [describe(item) for item in planner.create_local_plan().items]


def test_records_hold_plain_values_only() -> None:
    records = records_of(saved_state())
    assert {r["fqn"] for r in records} == {"model.weight", "model.bias", "optim.step", "optim.lr"}
    plain = (str, int, bool, list, type(None))
    assert all(isinstance(v, plain) for r in records for v in r.values()), records
    [weight] = [r for r in records if r["fqn"] == "model.weight"]
    assert weight == {"fqn": "model.weight", "offset": [0, 0], "bytes": False, "dtype": "float32",
                      "size": [3, 4], "chunk_offsets": [0, 0], "chunk_sizes": [3, 4]}  # fmt: skip


def test_dcps_load_planner_finds_every_item_of_the_rank_local_metadata() -> None:
    records = records_of(saved_state())
    metadata = metadata_of(records)
    target = {
        "model": {"weight": torch.zeros(3, 4), "bias": torch.zeros(3)},
        "optim": {"step": 0, "lr": 0.0},
    }
    planner = DefaultLoadPlanner()
    planner.set_up_planner(target, metadata, is_coordinator=True)
    plan = planner.create_local_plan()
    assert len(plan.items) == len(records)
    for request in plan.items:
        record = records[metadata.storage_data[request.storage_index]]
        assert record["fqn"] == request.dest_index.fqn
        assert record["bytes"] == (request.type == LoadItemType.BYTE_IO)
        if not record["bytes"]:
            assert list(request.lengths) == record["chunk_sizes"]


def test_a_sharded_tensors_chunks_keep_their_offsets() -> None:
    records = [
        {"fqn": "w", "offset": [0, 0], "bytes": False, "dtype": "bfloat16", "size": [4, 2],
         "chunk_offsets": [0, 0], "chunk_sizes": [2, 2]},
        {"fqn": "w", "offset": [2, 0], "bytes": False, "dtype": "bfloat16", "size": [4, 2],
         "chunk_offsets": [2, 0], "chunk_sizes": [2, 2]},
    ]  # fmt: skip
    metadata = metadata_of(records)
    tensor = metadata.state_dict_metadata["w"]
    assert tensor.size == torch.Size([4, 2]) and tensor.properties.dtype == torch.bfloat16
    assert [list(c.offsets) for c in tensor.chunks] == [[0, 0], [2, 0]]
    positions = sorted(metadata.storage_data.items(), key=lambda kv: kv[1])
    assert [list(index.offset) for index, _ in positions] == [[0, 0], [2, 0]]


def test_the_step_comes_from_the_checkpoint_ids_trailing_number() -> None:
    assert step_from_checkpoint_id("ckpt/step_120") == 120
    assert step_from_checkpoint_id("runs/7/checkpoint-0042/") == 42
    with pytest.raises(ValueError, match="names no step"):
        step_from_checkpoint_id("ckpt/latest")


def test_bytes_items_round_trip_through_a_uint8_tensor() -> None:
    payload = io.BytesIO(b"\x00\x01optimizer\xff")
    stored = stored_tensor(payload)
    assert stored.dtype == torch.uint8 and bytes(stored.tolist()) == payload.getvalue()
    assert stored_tensor(io.BytesIO(b"")).numel() == 0
