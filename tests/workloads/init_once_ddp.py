"""DDP over gloo whose setup calls a library that can be initialized once per process
(tests/workloads/init_once.py), after init_process_group as megatron-core's is: a
survivor's re-entry in place fails before its first step. Events as toy_ddp.py's."""

from __future__ import annotations

import argparse
import json
import os
import time

import init_once
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--step-sleep", type=float, default=0.05)
    p.add_argument("--events", required=True)
    args = p.parse_args()
    rank = int(os.environ["RANK"])
    generation = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    os.makedirs(args.events, exist_ok=True)

    def write(event: str, **fields: int) -> None:
        record = {"event": event, "rank": rank, "pid": os.getpid(), "gen": generation}
        with open(os.path.join(args.events, f"rank_{rank}.jsonl"), "a") as handle:
            handle.write(json.dumps({**record, "t": time.time(), **fields}) + "\n")

    write("start")
    dist.init_process_group("gloo")
    init_once.initialize()
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Linear(8, 1))
    optim = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(1, args.steps + 1):
        loss = model(torch.randn(4, 8)).pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        write("step", step=step)
        time.sleep(args.step_sleep)
    write("done", step=args.steps)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
