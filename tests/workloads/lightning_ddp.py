"""A Lightning Trainer (strategy "ddp") script written the way Lightning's docs teach.

Nothing in it knows train-launch: the Trainer sees torchrun's environment, checkpoints
with ModelCheckpoint and resumes from the last one (`ckpt_path="last"`). A callback
appends what happened to EVENTS_DIR/rank_<RANK>.jsonl (tests/e2e/jobs.py reads it):
"start" per run of the script, "step" per optimizer step with Lightning's global step,
"done" at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Regression(L.LightningModule):
    def __init__(self, step_sleep: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
        self.step_sleep = step_sleep

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.step_sleep:
            time.sleep(self.step_sleep)  # a step that takes time, as real ones do
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Events(Callback):
    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.rank = int(os.environ["RANK"])
        self.path = os.path.join(directory, f"rank_{self.rank}.jsonl")
        self.generation = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    def write(self, event: str, **fields: Any) -> None:
        record = {
            "event": event,
            "rank": self.rank,
            "pid": os.getpid(),
            "gen": self.generation,
            "t": time.time(),
            **fields,
        }
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.write("start", step=trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.write("step", step=trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.write("done", step=trainer.global_step)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=90)
    p.add_argument("--ckpt-dir", required=True)
    p.add_argument("--events", required=True)
    p.add_argument("--step-sleep", type=float, default=0.0)
    args = p.parse_args()
    L.seed_everything(0)
    data = TensorDataset(torch.randn(4096, 16), torch.randn(4096, 1))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=int(os.environ["LOCAL_WORLD_SIZE"]),
        strategy="ddp",
        max_steps=args.steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            ModelCheckpoint(dirpath=args.ckpt_dir, every_n_train_steps=5, save_last=True),
            Events(args.events),
        ],
    )
    loader = DataLoader(data, batch_size=8, shuffle=True)
    trainer.fit(Regression(args.step_sleep), loader, ckpt_path="last")


if __name__ == "__main__":
    main()
