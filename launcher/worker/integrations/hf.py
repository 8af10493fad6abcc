"""Hugging Face Trainer: model, optimizer, scheduler, RNG and TrainerState into the supervisor's
memory, every N steps (or on the Trainer's own save events), restored when training starts again.

    from launcher.worker.integrations.hf import SupervisorSnapshotCallback

    trainer = Trainer(..., callbacks=[SupervisorSnapshotCallback()])   # every_n_steps=1

At `on_train_begin` (a survivor re-entering, or a new process) the callback loads the job's
committed step and puts it back: model and optimizer/scheduler state, the Python/NumPy/torch
RNG states and the TrainerState's progress (global_step, epoch, log history, best metric), so
the Trainer trains on to max_steps from there. The data loader cannot be moved from a callback:
it starts its epoch over (as with `ignore_data_skip=True`). Outside train-launch it does
nothing. See docs/frameworks.md.
"""

from __future__ import annotations

import random
import sys
from typing import Any, Optional

import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from launcher.worker.integrations import supervised_snapshots
from launcher.worker.snapshot import Snapshots
from train_supervisor.steps import NO_STEP

# TrainerState's progress; the rest (max_steps, batch size, ...) comes from this run's arguments.
RESUMED_FIELDS = (
    "epoch",
    "global_step",
    "num_input_tokens_seen",
    "total_flos",
    "log_history",
    "best_metric",
    "best_global_step",
    "best_model_checkpoint",
)


def rng_state() -> dict[str, Any]:
    """Every RNG the Trainer draws from, as tensors and plain values."""
    kind, keys, position, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.array(keys)), position, has_gauss, gauss),
        "cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), position, has_gauss, gauss))
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SupervisorSnapshotCallback(TrainerCallback):
    """Snapshots every `every_n_steps` optimizer steps; None: on the Trainer's save events."""

    def __init__(self, every_n_steps: Optional[int] = 1) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, not {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.snapshots: Optional[Snapshots] = None
        self.restored_step = NO_STEP

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self.snapshots is None:  # one per run of the script, however often it trains
            self.snapshots = supervised_snapshots("Hugging Face SupervisorSnapshotCallback")
        if self.snapshots is None:
            return
        step, saved = self.snapshots.load()
        if saved is None:
            return
        kwargs["model"].load_state_dict(saved["model"])
        if kwargs.get("optimizer") is not None and "optimizer" in saved:
            kwargs["optimizer"].load_state_dict(saved["optimizer"])
        if kwargs.get("lr_scheduler") is not None and "scheduler" in saved:
            kwargs["lr_scheduler"].load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
        for name, value in saved["trainer_state"].items():
            setattr(state, name, value)
        self.restored_step = step
        print(f"[train-supervisor] rank {args.process_index}: Trainer resumes from snapshot step "
              f"{step}", file=sys.stderr, flush=True)  # fmt: skip

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self.every_n_steps is not None and state.global_step % self.every_n_steps == 0:
            self._save(state, kwargs)

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self.every_n_steps is None:
            self._save(state, kwargs)

    def _save(self, state: TrainerState, components: dict[str, Any]) -> None:
        if self.snapshots is None or state.global_step <= self.restored_step:
            return
        saved: dict[str, Any] = {
            "model": components["model"].state_dict(),
            "rng": rng_state(),
            "trainer_state": {name: getattr(state, name) for name in RESUMED_FIELDS},
        }
        if components.get("optimizer") is not None:
            saved["optimizer"] = components["optimizer"].state_dict()
        if components.get("lr_scheduler") is not None:
            saved["scheduler"] = components["lr_scheduler"].state_dict()
        self.snapshots.save(state.global_step, saved)
