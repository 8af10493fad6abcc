"""FSDP2 (`fully_shard`) + torch.distributed.checkpoint, snapshots via
launcher.worker.integrations.dcp.

The script a DCP user writes, with the storage writer/reader of the supervisor's memory in place
of a directory: `dcp.save(state, checkpoint_id=f"step_{step}", storage_writer=writer)` every step
(one writer, the step named by the checkpoint id) and `dcp.load(state, storage_reader=reader)` at
start when the job has a committed step.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from step_trace import StepTrace, add_arguments, training_state_sha256
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.fsdp import fully_shard

from launcher.worker.integrations.dcp import SnapshotReader, SnapshotWriter
from launcher.worker.snapshot import Snapshots


class AppState(Stateful):
    """Model and optimizer as the DCP tutorial wraps them."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        model, optimizer = get_state_dict(self.model, self.optimizer)
        return {"model": model, "optim": optimizer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args()
    trace = StepTrace(args)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 16))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    state = {"app": AppState(model, optimizer)}

    snapshots = Snapshots()
    reader = SnapshotReader(snapshots)
    writer = SnapshotWriter(snapshots)
    step = 0
    if reader.step >= 0:
        dcp.load(state, storage_reader=reader)
        step = reader.step
    trace.write("resumed", from_step=step, state=training_state_sha256(model, optimizer))
    while step < args.steps:
        batch = torch.randn(8, 16, generator=torch.Generator().manual_seed(step * 100 + trace.rank))
        loss = model(batch).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        dcp.save(state, checkpoint_id=f"step_{step}", storage_writer=writer)
        trace.step(step, training_state_sha256(model, optimizer), loss=loss.item())
    dist.barrier()
    trace.write("done", step=step)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
