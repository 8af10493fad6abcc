"""A bare Accelerate loop, as accelerate's docs teach.

Accelerator(cpu=True), prepare, save_state every few steps, load_state and
skip_first_batches on start. A checkpoint counts once every rank wrote its part (a marker
after a barrier): a rank killed while saving leaves a partial directory, under torchrun too.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from run_record import open_log, record_at_exit, step_loss
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--ckpt-every", type=int, default=10)
args = parser.parse_args()
COMPLETE = "complete"  # written in a checkpoint directory once every rank saved into it
RANK = int(os.environ.get("RANK", "0"))
log = open_log(args.out, RANK)
result: dict[str, Any] = {}
record_at_exit(args.out, RANK, result)


def main() -> None:
    accelerator = Accelerator(cpu=True)
    set_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(
        args.steps * 16 * accelerator.num_processes, 64, generator=torch.Generator().manual_seed(1)
    )
    loader = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True).sin()), batch_size=16)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    ckpt_dir = Path(args.out) / "ckpt"
    whole = [p for p in ckpt_dir.glob("step_*") if (p / COMPLETE).exists()]
    saved = sorted(whole, key=lambda p: int(p.name.split("_")[1]))
    start = 0
    if saved:
        accelerator.load_state(str(saved[-1]))
        start = int(saved[-1].name.split("_")[1])
    log.info("start rank %d resume %s", RANK, start)
    # The loader has exactly --steps batches: skip those the checkpoint already trained on.
    remaining = accelerator.skip_first_batches(loader, start)
    for step, (inputs, targets) in enumerate(remaining, start + 1):
        loss = nn.functional.mse_loss(model(inputs), targets)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        step_loss(log, result, step, loss.item())
        if step % args.ckpt_every == 0:
            target = ckpt_dir / f"step_{step}"
            accelerator.save_state(str(target))
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                (target / COMPLETE).touch()
    accelerator.wait_for_everyone()
    log.info("finished step %s loss %s", result.get("step"), result.get("loss"))
    accelerator.end_training()


if __name__ == "__main__":
    main()
