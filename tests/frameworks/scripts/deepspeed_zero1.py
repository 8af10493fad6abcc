"""DeepSpeed ZeRO-1 on its CPU accelerator (DS_ACCELERATOR=cpu) over gloo.

As DeepSpeed's docs teach: deepspeed.init_distributed, deepspeed.initialize
with a config dict, engine.backward/engine.step, engine.save_checkpoint every
few steps and engine.load_checkpoint on start. DeepSpeed's `latest` file is
written by rank 0 without waiting for the other ranks' parts, so a rank killed
while it saves leaves `latest` naming a partial checkpoint (under any launcher):
the script loads the newest tag every rank finished instead.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Optional

import deepspeed
import torch
from run_record import open_log, record_at_exit, step_loss
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--ckpt-every", type=int, default=10)
args = parser.parse_args()
RANK = int(os.environ["RANK"])
log = open_log(args.out, RANK)
result: dict[str, Any] = {}
record_at_exit(args.out, RANK, result)
CONFIG = {
    "train_micro_batch_size_per_gpu": 16,
    "gradient_accumulation_steps": 1,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
    "zero_optimization": {"stage": 1},
    "steps_per_print": 10**9,
}


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's data for a step, the same whenever the step is (re)run."""
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(step * 1000 + RANK))
    return x, x.sum(dim=1, keepdim=True).sin()


def newest_complete(ckpt_dir: Path, world: int) -> Optional[str]:
    """The newest step_N tag with the model states and every rank's optimizer partition."""
    parts = ["mp_rank_00_model_states.pt"]
    parts += [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)]
    done = [tag for tag in ckpt_dir.glob("step_*") if all((tag / p).exists() for p in parts)]
    return max(done, key=lambda t: int(t.name.split("_")[1])).name if done else None


def main() -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=CONFIG
    )
    ckpt_dir = Path(args.out) / "ckpt"
    start = 0
    tag = newest_complete(ckpt_dir, int(os.environ["WORLD_SIZE"]))
    if tag is not None:
        _, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
        start = client_state["step"]
    log.info("start rank %d resume %s", RANK, start)
    for step in range(start + 1, args.steps + 1):
        inputs, targets = batch(step)
        loss = nn.functional.mse_loss(engine(inputs), targets)
        engine.backward(loss)
        engine.step()
        step_loss(log, result, step, loss.item())
        if step % args.ckpt_every == 0:
            engine.save_checkpoint(str(ckpt_dir), tag=f"step_{step}", client_state={"step": step})
    log.info("finished step %s loss %s", result.get("step"), result.get("loss"))


if __name__ == "__main__":
    main()
