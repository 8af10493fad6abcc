"""FSDP2 (`fully_shard`) with torch.distributed.checkpoint, resuming from the newest checkpoint.

As PyTorch's FSDP2 and DCP tutorials teach: get_state_dict/set_state_dict
around dcp.save/dcp.load. CPU and gloo.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from run_record import open_log, record_at_exit, step_loss
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--ckpt-every", type=int, default=10)
args = parser.parse_args()
RANK = int(os.environ["RANK"])
log = open_log(args.out, RANK)
result: dict[str, Any] = {}
record_at_exit(args.out, RANK, result)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's data for a step, the same whenever the step is (re)run."""
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(step * 1000 + RANK))
    return x, x.sum(dim=1, keepdim=True).sin()


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1)
    )
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt_dir = Path(args.out) / "ckpt"
    # A checkpoint is complete once dcp.save wrote its .metadata (the coordinator writes it last).
    saved = sorted(
        (p for p in ckpt_dir.glob("step_*") if (p / ".metadata").exists()),
        key=lambda p: int(p.name.split("_")[1]),
    )
    start = 0
    if saved:
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=saved[-1])
        set_state_dict(
            model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        start = int(saved[-1].name.split("_")[1])
    log.info("start rank %d resume %s", RANK, start)
    for step in range(start + 1, args.steps + 1):
        inputs, targets = batch(step)
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step_loss(log, result, step, loss.item())
        if step % args.ckpt_every == 0:
            model_state, optim_state = get_state_dict(model, optimizer)
            dcp.save(
                {"model": model_state, "optim": optim_state},
                checkpoint_id=ckpt_dir / f"step_{step}",
            )
    log.info("finished step %s loss %s", result.get("step"), result.get("loss"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
