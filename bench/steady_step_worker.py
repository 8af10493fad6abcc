"""One rank of bench/steady_step.py: plain DDP on gloo, no fault, its step times recorded.

`steady_step_worker.py MODEL OUT_JSON --warmup N --warmup-s S [--go-file F] --steps M`: MODEL
is `eager` (12
nn.TransformerEncoderLayer, d_model 128: many small module calls per forward) or `compiled`
(the same model under torch.compile). The warm-up lasts N steps and S seconds at least, and
until F exists when given (the benchmark creates it once the launcher's own processes are
idle). Rank 0 writes the wall time of each measured step (one optimizer step to the next) and
its CPU seconds per measured step (every thread of the process) to OUT_JSON. Nothing in it
knows about train-launch.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

LAYERS = 12
D_MODEL = 128
BATCH, SEQUENCE = 4, 16


def build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        D_MODEL, nhead=4, dim_feedforward=4 * D_MODEL, dropout=0.0, batch_first=True
    )
    model: nn.Module = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
    model = DistributedDataParallel(model)
    return torch.compile(model) if kind == "compiled" else model  # type: ignore[return-value]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", choices=["eager", "compiled"])
    p.add_argument("out")
    p.add_argument("--warmup", type=int, default=30, help="warm-up steps, at least")
    p.add_argument("--warmup-s", type=float, default=0.0, help="warm-up seconds, at least")
    p.add_argument("--go-file", default="", help="warm up until this file exists")
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()
    dist.init_process_group("gloo")
    model = build(args.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(dist.get_rank())
    inputs = torch.randn(BATCH, SEQUENCE, D_MODEL, generator=generator)
    times: list[float] = []
    started = last = time.perf_counter()
    step = 0
    warming = True
    began = cpu_began = 0.0
    while len(times) < args.steps:
        loss = model(inputs).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        now = time.perf_counter()
        step += 1
        if not warming:
            times.append(now - last)
        else:  # every rank leaves the warm-up at the same step: rank 0 decides, each step
            done = step >= args.warmup and now - started >= args.warmup_s
            done = done and (not args.go_file or os.path.exists(args.go_file))
            flag = torch.tensor([1.0 if done and dist.get_rank() == 0 else 0.0])
            dist.broadcast(flag, src=0)
            warming = not bool(flag.item())
            now = time.perf_counter()
            began = time.time()
            cpu_began = time.process_time()
        last = now
    if dist.get_rank() == 0:
        with open(args.out, "w") as handle:
            # CPU seconds per step of the whole rank process (its threads included: ours, gloo's)
            cpu_per_step = (time.process_time() - cpu_began) / len(times)
            record = {"step_s": times, "cpu_step_s": cpu_per_step, "began": began}
            json.dump(record, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
