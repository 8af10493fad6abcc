"""gloo steps on 2 ranks; rank 1 of generation 1 fails before it joins the process group.

Its bootstrap starts the script once rank 0's store listens, so rank 0 is inside
`init_process_group` (waiting for rank 1) when generation 1 is aborted: a generation that fails
while it forms. Every rank logs "<time> pid=<pid> gen=<generation> step <n>" to rank<r>.log.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

STEPS = 30
out = Path(sys.argv[1])
rank, generation = int(os.environ["RANK"]), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
if generation == 1 and rank == 1:
    sys.exit(3)
dist.init_process_group("gloo")
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(1, STEPS + 1):
    model(torch.ones(2, 4)).sum().backward()
    for param in model.parameters():
        dist.all_reduce(param.grad)
    optimizer.step()
    optimizer.zero_grad()
    with open(out / f"rank{rank}.log", "a") as log:
        log.write(f"{time.time()} pid={os.getpid()} gen={generation} step {step}\n")
    time.sleep(0.1)
dist.destroy_process_group()
