"""A Hugging Face Trainer (tiny GPT-2 from a config, CPU, DDP) with snapshots through
launcher.worker.integrations.hf: the script the transformers docs teach, plus
`SupervisorSnapshotCallback()` in `callbacks`. `StepTracer` only records steps for the test.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from step_trace import StepTrace, add_arguments, training_state_sha256
from torch.utils.data import Dataset
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from launcher.worker.integrations.hf import SupervisorSnapshotCallback


class RandomTokens(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, count: int, length: int, vocab: int) -> None:
        self.tokens = torch.randint(
            vocab, (count, length), generator=torch.Generator().manual_seed(0)
        )

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


class StepTracer(TrainerCallback):  # type: ignore[misc]
    def __init__(self, trace: StepTrace) -> None:
        self.trace = trace

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:  # fmt: skip
        hashed = training_state_sha256(kwargs["model"], kwargs["optimizer"])
        self.trace.write("resumed", from_step=state.global_step, state=hashed)

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:  # fmt: skip
        hashed = training_state_sha256(kwargs["model"], kwargs["optimizer"])
        self.trace.step(state.global_step, hashed)


def main() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args()
    trace = StepTrace(args)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    training = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=4,
        learning_rate=1e-3, lr_scheduler_type="linear", save_strategy="no", report_to=[],
        use_cpu=True, seed=0, disable_tqdm=True, logging_strategy="no",
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=training, train_dataset=RandomTokens(256, 16, 64),
        callbacks=[SupervisorSnapshotCallback(), StepTracer(trace)],
    )  # fmt: skip
    trainer.train()
    trace.write("done", step=trainer.state.global_step)


if __name__ == "__main__":
    main()
