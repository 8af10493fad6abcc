"""A bare Accelerate training loop, written as Accelerate's docs teach (no line for us).

Checkpoints with `save_state` every --ckpt-every steps and resumes with `load_state`. Its
own logger gets a file handler at import time (one line per step), and an atexit handler
records that the process ended cleanly. Events go to EVENTS_DIR/rank_<RANK>.jsonl.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import time

import torch
from accelerate import Accelerator
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--ckpt-every", type=int, default=5)
parser.add_argument("--step-sleep", type=float, default=0.05)
parser.add_argument("--out", required=True)
parser.add_argument("--linger-rank", type=int, default=-1, help="waits at its end, gen 0 only")
args = parser.parse_args()

rank = int(os.environ["RANK"])
generation = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
events_path = os.path.join(args.out, "events", f"rank_{rank}.jsonl")
os.makedirs(os.path.dirname(events_path), exist_ok=True)


def record(event: str, **fields: object) -> None:
    with open(events_path, "a") as handle:
        line = {"t": time.time(), "event": event, "rank": rank, "pid": os.getpid()}
        line.update(gen=generation, **fields)
        handle.write(json.dumps(line) + "\n")


logger = logging.getLogger(__name__)
logger.addHandler(logging.FileHandler(os.path.join(args.out, f"rank_{rank}.log")))
logger.setLevel(logging.INFO)
atexit.register(record, "atexit")

accelerator = Accelerator(cpu=True)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
model, optimizer = accelerator.prepare(model, optimizer)

ckpt_dir = os.path.join(args.out, "ckpt")
latest = os.path.join(ckpt_dir, "latest")
start = 0
if os.path.exists(latest):
    with open(latest) as handle:
        start = int(handle.read())
    accelerator.load_state(os.path.join(ckpt_dir, f"step_{start}"))
record("start", from_step=start)

for step in range(start + 1, args.steps + 1):
    generator = torch.Generator().manual_seed(step * 100 + rank)
    inputs = torch.randn(8, 16, generator=generator)
    loss = model(inputs).pow(2).mean()
    optimizer.zero_grad()
    accelerator.backward(loss)
    optimizer.step()
    logger.info("generation %d step %d loss %.6f", generation, step, loss.item())
    record("step", step=step, loss=loss.item())
    if step % args.ckpt_every == 0:
        accelerator.save_state(os.path.join(ckpt_dir, f"step_{step}"))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with open(latest + ".tmp", "w") as handle:
                handle.write(str(step))
            os.replace(latest + ".tmp", latest)
    time.sleep(args.step_sleep)

accelerator.wait_for_everyone()
record("done")
if rank == args.linger_rank and generation == 0:
    record("lingering")
    time.sleep(600)  # the test kills it here, once the other ranks have finished
