"""Lightning: the Trainer's own checkpoint, every N steps, into the supervisor's memory.

    from launcher.worker.integrations.lightning import SupervisorSnapshots

    trainer = Trainer(..., callbacks=[SupervisorSnapshots()])   # every_n_steps=1

Every N optimizer steps the callback takes the checkpoint Lightning would write
(`dump_checkpoint`: model, optimizers, LR schedulers, loops, callbacks, precision state) and
saves it with `Snapshots.save`; the copy overlaps the next step. When `fit` starts again after
a failure (a survivor re-entering, or a new process), it loads the job's committed step and
hands it to Lightning's own restore path, as if `fit(ckpt_path=...)` had named it: model,
datamodule and callbacks at `on_fit_start`, then Lightning restores loops, optimizers and
schedulers itself. A committed snapshot wins over `ckpt_path`. Outside train-launch it does
nothing. See docs/frameworks.md.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from launcher.worker.integrations import supervised_snapshots
from launcher.worker.snapshot import Snapshots
from train_supervisor.steps import NO_STEP


class SupervisorSnapshots(Callback):
    """Snapshots of the Trainer's checkpoint every `every_n_steps` optimizer steps."""

    def __init__(self, every_n_steps: int = 1) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, not {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.snapshots: Optional[Snapshots] = None
        self.restored_step = NO_STEP
        self._last_saved = NO_STEP

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.snapshots is None:
            self.snapshots = supervised_snapshots("Lightning SupervisorSnapshots")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.snapshots is None:
            return
        step, checkpoint = self.snapshots.load()
        if checkpoint is None:
            return
        # Lightning's restore path for a checkpoint it loaded itself: the module, datamodule and
        # callbacks here; loops, optimizers and schedulers right after on_fit_start.
        connector = trainer._checkpoint_connector
        connector._loaded_checkpoint = checkpoint
        connector.restore_model()
        connector.restore_datamodule()
        connector.restore_callbacks()
        self.restored_step = self._last_saved = step
        print(f"[train-supervisor] rank {trainer.global_rank}: Lightning resumes from snapshot "
              f"step {step}", file=sys.stderr, flush=True)  # fmt: skip

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step  # optimizer steps: the same on every rank
        if self.snapshots is None or step == self._last_saved or step % self.every_n_steps:
            return
        self._last_saved = step
        self.snapshots.save(step, trainer._checkpoint_connector.dump_checkpoint(weights_only=False))
