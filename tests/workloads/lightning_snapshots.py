"""A Lightning Trainer (ddp, CPU) with snapshots through launcher.worker.integrations.lightning.

The script the Lightning docs teach, plus `SupervisorSnapshots()` in `callbacks`; `StepTracer`
only records steps for the test (tests/workloads/step_trace.py).
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning.pytorch as pl
import torch
from step_trace import StepTrace, add_arguments, training_state_sha256
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from launcher.worker.integrations.lightning import SupervisorSnapshots


class TinyRegression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        features, target = batch
        return nn.functional.mse_loss(self.net(features), target)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class StepTracer(pl.Callback):
    def __init__(self, trace: StepTrace) -> None:
        self.trace = trace

    def state(self, trainer: pl.Trainer, module: pl.LightningModule) -> str:
        return training_state_sha256(module, trainer.optimizers[0])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.trace.write("resumed", from_step=trainer.global_step,
                         state=self.state(trainer, pl_module))  # fmt: skip

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:  # fmt: skip
        self.trace.step(trainer.global_step, self.state(trainer, pl_module))


def main() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args()
    trace = StepTrace(args)
    pl.seed_everything(0, verbose=False)
    data = TensorDataset(torch.randn(512, 16), torch.randn(512, 1))
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=args.steps,
        callbacks=[SupervisorSnapshots(), StepTracer(trace)],
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(TinyRegression(), DataLoader(data, batch_size=4))
    trace.write("done", step=trainer.global_step)


if __name__ == "__main__":
    main()
