"""Lightning Trainer, DDP on CPU, resuming from ModelCheckpoint's last.ckpt, as its docs teach."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from run_record import open_log, record_at_exit, step_loss
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--ckpt-every", type=int, default=10)
args = parser.parse_args()
RANK = int(os.environ.get("RANK", "0"))
WORLD = int(os.environ.get("WORLD_SIZE", "1"))
BATCH = 16
log = open_log(args.out, RANK)
result: dict[str, Any] = {}
record_at_exit(args.out, RANK, result)


class Regressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class LogSteps(Callback):
    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step_loss(log, result, trainer.global_step, outputs["loss"].item())


def main() -> None:
    L.seed_everything(0)
    # One epoch is --ckpt-every steps: the checkpoint at each epoch's end resumes exactly.
    generator = torch.Generator().manual_seed(1)
    samples = args.ckpt_every * BATCH * WORLD
    x = torch.randn(samples, 64, generator=generator)
    data = TensorDataset(x, x.sum(dim=1, keepdim=True).sin())
    loader = DataLoader(data, batch_size=BATCH, shuffle=True)
    ckpt_dir = Path(args.out) / "ckpt"
    trainer = L.Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy="ddp",
        max_epochs=args.steps // args.ckpt_every,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True), LogSteps()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    last = ckpt_dir / "last.ckpt"
    log.info("start rank %d resume %s", RANK, last.exists())
    trainer.fit(Regressor(), loader, ckpt_path=last if last.exists() else None)
    log.info("finished step %s loss %s", result.get("step"), result.get("loss"))


if __name__ == "__main__":
    main()
