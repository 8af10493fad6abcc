"""DeepSpeed ZeRO-1 on its CPU accelerator (DS_ACCELERATOR=cpu) over gloo.

As DeepSpeed's docs teach: deepspeed.init_distributed, deepspeed.initialize
with a config dict, engine.backward/engine.step, engine.save_checkpoint every
few steps and engine.load_checkpoint (its `latest` tag) on start.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

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


def main() -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=CONFIG
    )
    ckpt_dir = Path(args.out) / "ckpt"
    start = 0
    if (ckpt_dir / "latest").exists():
        _, client_state = engine.load_checkpoint(str(ckpt_dir))
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
