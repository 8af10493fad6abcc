"""Hugging Face Trainer on a tiny GPT-2 built from a config, resuming from its last checkpoint-N.

As transformers' docs teach: TrainingArguments with save_steps, and
`trainer.train(resume_from_checkpoint=...)` when output_dir holds a checkpoint.
No hub download: the model comes from a GPT2Config. A checkpoint counts once every rank wrote
its part (a marker after a barrier): a rank killed while saving leaves a partial checkpoint-N
(its rng_state_<rank>.pth missing or empty), which `get_last_checkpoint` would still pick,
under torchrun too.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Optional

import torch
from run_record import open_log, record_at_exit, step_loss
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--ckpt-every", type=int, default=10)
args = parser.parse_args()
COMPLETE = "complete"  # written in a checkpoint-N directory once every rank saved into it
RANK = int(os.environ.get("RANK", "0"))
log = open_log(args.out, RANK)
result: dict[str, Any] = {}
record_at_exit(args.out, RANK, result)
SEQ = 32


class TokenData(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, size: int) -> None:
        self.ids = torch.randint(0, 128, (size, SEQ), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


class LogSteps(TrainerCallback):
    def on_step_end(self, training_args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        log.info("step %d", state.global_step)


class MarkComplete(TrainerCallback):
    def on_save(self, training_args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        torch.distributed.barrier()  # every rank's part is on disk
        if state.is_world_process_zero:
            (Path(training_args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE).touch()


def last_complete_checkpoint(output_dir: str) -> Optional[str]:
    whole = [p for p in Path(output_dir).glob("checkpoint-*") if (p / COMPLETE).exists()]
    return str(max(whole, key=lambda p: int(p.name.split("-")[1]))) if whole else None


def main() -> None:
    set_seed(0)
    config = GPT2Config(vocab_size=128, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    output_dir = os.path.join(args.out, "ckpt")
    training_args = TrainingArguments(
        output_dir=output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=args.ckpt_every,
        logging_steps=args.steps,
        use_cpu=True,
        report_to=[],
        seed=0,
        disable_tqdm=True,
    )
    data = TokenData(args.steps * 8 * training_args.world_size)
    callbacks = [LogSteps(), MarkComplete()]
    trainer = Trainer(model=model, args=training_args, train_dataset=data, callbacks=callbacks)
    last = last_complete_checkpoint(output_dir)
    log.info("start rank %d resume %s", RANK, last)
    trainer.train(resume_from_checkpoint=last)
    # The Trainer logs its loss rounded to 4 places: the final model's loss on a fixed batch
    # gives every bit to compare.
    model.eval()
    with torch.no_grad():
        loss = model(input_ids=data.ids[:8], labels=data.ids[:8]).loss
    step_loss(log, result, trainer.state.global_step, loss.item())
    log.info("finished step %s loss %s", result.get("step"), result.get("loss"))


if __name__ == "__main__":
    main()
