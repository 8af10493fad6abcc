"""A plain torchrun-style DDP training script, used by the tests and benchmarks.

It knows nothing about train-launch: it reads torchrun's environment,
checkpoints to disk every --ckpt-every steps and resumes from the newest
checkpoint, like most training scripts do. It appends what happened to
EVENTS_DIR/rank_<RANK>.jsonl so that tests can tell which process ran which
rank in which generation and when every step completed.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import hashlib
import json
import os
import signal
import time
import weakref
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ckpt-dir", default="")
    p.add_argument("--ckpt-every", type=int, default=10)
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--events", default="")
    p.add_argument("--raise-at-step", type=int, default=-1)
    p.add_argument("--raise-rank", type=int, default=1)
    p.add_argument("--hang-rank", type=int, default=-1, help="this rank sleeps, uninterruptibly")
    p.add_argument("--hang-at-step", type=int, default=-1)
    p.add_argument("--hang-once", action="store_true", help="hang in the first generation only")
    p.add_argument("--kill-self-rank", type=int, default=-1, help="SIGKILLs itself, first run only")
    p.add_argument("--kill-self-at-step", type=int, default=-1)
    p.add_argument("--slow-rank", type=int, default=-1, help="a straggler: its data comes late")
    p.add_argument("--slow-from-step", type=int, default=0)
    p.add_argument("--slow-extra-s", type=float, default=0.0, help="the straggler's extra per step")
    p.add_argument("--snapshot", action="store_true", help="save every step with the worker API")
    p.add_argument("--trace-state", action="store_true", help="log a hash of the state per step")
    p.add_argument("--late-store-s", type=float, default=0.0, help="rank 0 opens its store late")
    p.add_argument("--cyclic-garbage", action="store_true", help="hold a tensor in a ref cycle")
    p.add_argument(
        "--garbage-cycles",
        type=int,
        default=0,
        help="with --cyclic-garbage, rank 0's first run also holds this many small ref cycles "
        "(a collection that walks them takes long)",
    )
    p.add_argument("--import-marker", action="store_true", help="import import_marker.py")
    p.add_argument("--dump-env", default="", help="write each rank's environment here and exit")
    return p.parse_args()


class EventLog:
    def __init__(self, directory: str, rank: int) -> None:
        self.path = os.path.join(directory, f"rank_{rank}.jsonl") if directory else ""
        if directory:
            os.makedirs(directory, exist_ok=True)
        self.rank = rank
        self.generation = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    def write(self, event: str, **fields: Any) -> None:
        if not self.path:
            return
        record = {
            "event": event,
            "rank": self.rank,
            "pid": os.getpid(),
            "gen": self.generation,
            "t": time.time(),
            **fields,
        }
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


class Cycle:
    def __init__(self, payload: torch.Tensor) -> None:
        self.payload, self.me = payload, self
        self.others: list[list[object]] = []  # more cycles, for a collection that takes long

    def hold_cycles(self, count: int) -> None:
        for _ in range(count):
            small: list[object] = []
            small.append(small)
            self.others.append(small)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A CPU tensor's bytes, without numpy (the CPU wheel of torch does not bring it)."""
    tensor = tensor.detach().contiguous()
    return ctypes.string_at(tensor.data_ptr(), tensor.numel() * tensor.element_size())


def state_sha256(model: nn.Module, optim: torch.optim.Optimizer) -> str:
    """Parameters and optimizer state, bitwise."""
    digest = hashlib.sha256()
    for tensor in [*model.parameters(), *(v for s in optim.state.values() for v in s.values())]:
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def newest_checkpoint(ckpt_dir: str) -> str:
    paths = glob.glob(os.path.join(ckpt_dir, "step_*.pt"))
    return max(paths, key=lambda p: int(p.rsplit("_", 1)[1][:-3])) if paths else ""


def save_checkpoint(
    ckpt_dir: str, step: int, model: nn.Module, optim: torch.optim.Optimizer
) -> None:
    tmp = os.path.join(ckpt_dir, f".step_{step}.tmp")
    torch.save({"step": step, "model": model.state_dict(), "optim": optim.state_dict()}, tmp)
    os.replace(tmp, os.path.join(ckpt_dir, f"step_{step}.pt"))
    for old in sorted(
        glob.glob(os.path.join(ckpt_dir, "step_*.pt")), key=lambda p: int(p.rsplit("_", 1)[1][:-3])
    )[:-2]:
        os.remove(old)


def main() -> None:
    args = parse()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if args.dump_env:
        os.makedirs(args.dump_env, exist_ok=True)
        with open(os.path.join(args.dump_env, f"rank_{rank}.json"), "w") as handle:
            json.dump(dict(os.environ), handle)
        return
    log = EventLog(args.events, rank)
    log.write("start")
    if args.import_marker:  # the script's own module, imported at run time
        import import_marker  # noqa: F401
    if args.ckpt_dir:
        os.makedirs(args.ckpt_dir, exist_ok=True)
    if rank == 0 and args.late_store_s:
        time.sleep(args.late_store_s)  # the slow rank 0 under test, not a wait for anything
        log.write("store_opening")
    dist.init_process_group("gloo")
    log.write("pg_ready")
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(args.layers):
        layers += [nn.Linear(args.hidden, args.hidden), nn.Tanh()]
    model = DistributedDataParallel(nn.Sequential(*layers))
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    log.write("model_ready")  # where a recovery's time goes (bench/recovery.py)
    if args.cyclic_garbage:  # only the cyclic collector frees it once the run is over
        cycle = Cycle(torch.zeros(1 << 20))
        weakref.finalize(cycle, log.write, "cycle_freed")
        if rank == 0 and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
            cycle.hold_cycles(args.garbage_cycles)
    step, state, snapshots = 0, None, None
    if args.snapshot:  # the worker API: memory first (and the import below)
        from launcher.worker.snapshot import Snapshots

        snapshots = Snapshots()
        step, state = snapshots.load()
    path = newest_checkpoint(args.ckpt_dir) if args.ckpt_dir and state is None else ""
    if path:  # then the script's own checkpoint on disk
        state = torch.load(path, map_location="cpu")
        step = state["step"]
    if state is not None:
        model.module.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
    else:
        step = 0
    trace = {"state": state_sha256(model, optim)} if args.trace_state else {}
    log.write("resumed", from_step=step, **trace)
    while step < args.steps:
        if rank == args.raise_rank and step == args.raise_at_step:
            raise ValueError(f"bad batch at step {step}")
        first_run = log.generation == 0
        if first_run and rank == args.kill_self_rank and step == args.kill_self_at_step:
            print(f"rank {rank} (pid {os.getpid()}): SIGKILL to myself at step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        hangs = first_run or not args.hang_once
        if hangs and rank == args.hang_rank and step == args.hang_at_step:
            log.write("hanging", step=step)
            time.sleep(3600)  # a C-level sleep: the unwind cannot interrupt it
        if rank == args.slow_rank and step >= args.slow_from_step:
            if step == args.slow_from_step:
                log.write("slow", step=step)
            time.sleep(args.slow_extra_s)
        gen = torch.Generator().manual_seed(step * world + rank)
        batch = torch.randn(args.batch, args.hidden, generator=gen)
        loss = model(batch).pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        step += 1
        # Logged before the save: a step the supervisor can commit (and persist on a SIGTERM that
        # arrives a moment later) has always been traced.
        trace = {"state": state_sha256(model, optim)} if args.trace_state else {}
        log.write("step", step=step, loss=loss.item(), **trace)
        if snapshots is not None:
            snapshots.save(step, {"model": model.module.state_dict(), "optim": optim.state_dict()})
        if args.ckpt_dir and rank == 0 and step % args.ckpt_every == 0:
            save_checkpoint(args.ckpt_dir, step, model.module, optim)
            log.write("checkpoint", step=step)
        if args.step_sleep:
            time.sleep(args.step_sleep)
    dist.barrier()
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    log.write("done", step=step, params_sha256=hashlib.sha256(tensor_bytes(params)).hexdigest())
    if rank == 0:
        print(f"done: {step} steps in generation {log.generation} (pid {os.getpid()})", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
