"""DDP + torch.compile, saving with torch.save every few steps and resuming from the newest."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from run_record import open_log, record_at_exit, step_loss
from torch import nn
from torch.nn.parallel import DistributedDataParallel

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
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt = Path(args.out) / "ckpt.pt"
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])
        start = state["step"]
    ddp_model = torch.compile(DistributedDataParallel(model))
    log.info("start rank %d resume %s", RANK, start)
    for step in range(start + 1, args.steps + 1):
        inputs, targets = batch(step)
        loss = nn.functional.mse_loss(ddp_model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step_loss(log, result, step, loss.item())
        if step % args.ckpt_every == 0 and RANK == 0:
            state = {"model": model.state_dict(), "optim": optimizer.state_dict(), "step": step}
            torch.save(state, f"{ckpt}.tmp")
            os.replace(f"{ckpt}.tmp", ckpt)  # a kill mid-save leaves the previous one whole
        if step % args.ckpt_every == 0:
            dist.barrier()
    log.info("finished step %s loss %s", result.get("step"), result.get("loss"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
