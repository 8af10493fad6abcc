"""The snapshot step hook learns where an optimizer's tensors live, FSDP2's DTensors included:
`Snapshots.save` copies those after `save` returns and clones everything else inside it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.distributed.fsdp import fully_shard

from launcher.worker.snapshot import optimizer_data_ptrs
from supervisor.workers.ports import free_port


@pytest.fixture
def one_rank_group() -> Iterator[None]:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)  # fmt: skip
    yield
    dist.destroy_process_group()


def stepped(model: nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return optimizer


def test_a_plain_models_parameters_and_adam_state_are_known() -> None:
    model = nn.Linear(4, 4)
    optimizer = stepped(model)
    known = optimizer_data_ptrs(optimizer)
    state = [v for s in optimizer.state.values() for k, v in s.items() if k != "step"]
    assert {t.data_ptr() for t in [*model.parameters(), *state]} <= known


def test_an_fsdp2_models_state_dict_tensors_are_known_by_their_local_shards(
    one_rank_group: None,
) -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    fully_shard(model)
    optimizer = stepped(model)
    model_state, optim_state = get_state_dict(model, optimizer)
    shards = [model_state["0.weight"], model_state["0.bias"]]
    shards += [optim_state["state"]["0.weight"][k] for k in ("exp_avg", "exp_avg_sq")]
    known = optimizer_data_ptrs(optimizer)
    assert all(type(t).__name__ == "DTensor" for t in shards)
    assert {t.to_local().data_ptr() for t in shards} <= known
    assert 0 not in known  # a DTensor's own data_ptr() is 0: never a place to learn
