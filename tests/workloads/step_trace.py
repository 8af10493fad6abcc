"""What the framework workloads (tests/workloads/*_snapshots.py) record, for the tests to read.

Each rank appends to EVENTS_DIR/rank_<RANK>.jsonl (the format tests/e2e/jobs.py reads): `start`,
`resumed` (the step training goes on from, and a hash of the state it holds then), `step` (each
completed step with the hash of the state after it) and `done`. A rank of the first generation
given --kill-rank/--kill-at-step SIGKILLs itself once that step is recorded.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import signal
import time
from collections.abc import Iterable
from typing import Any

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--events", default="")
    parser.add_argument("--kill-rank", type=int, default=-1)
    parser.add_argument("--kill-at-step", type=int, default=-1)


def tensors_sha256(tensors: Iterable[torch.Tensor]) -> str:
    """The tensors' bytes in order (DTensors: this rank's shard)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        local = local.detach().contiguous().cpu()
        digest.update(ctypes.string_at(local.data_ptr(), local.numel() * local.element_size()))
    return digest.hexdigest()


def training_state_sha256(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """Parameters and optimizer state, bitwise."""
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return tensors_sha256([*model.parameters(), *state])


class StepTrace:
    def __init__(self, args: argparse.Namespace) -> None:
        self.rank = int(os.environ["RANK"])
        self.generation = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        self.kill_rank, self.kill_at_step = args.kill_rank, args.kill_at_step
        self.path = ""
        if args.events:
            os.makedirs(args.events, exist_ok=True)
            self.path = os.path.join(args.events, f"rank_{self.rank}.jsonl")
        self.write("start")

    def write(self, event: str, **fields: Any) -> None:
        if not self.path:
            return
        record = {"event": event, "rank": self.rank, "pid": os.getpid(), "gen": self.generation,
                  "t": time.time(), **fields}  # fmt: skip
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def step(self, step: int, state: str, **fields: Any) -> None:
        self.write("step", step=step, state=state, **fields)
        if self.generation == 0 and self.rank == self.kill_rank and step == self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
