"""The worker bench/snapshot_stall.py launches under train-launch: measures, writes one JSON.

Snapshots() needs a train-launch worker's environment, so every figure is taken here, in one
process, on one model: nn.Linear layers whose params + Adam exp_avg/exp_avg_sq make --size-gb.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from statistics import median
from typing import Any

import torch
from torch import nn

from launcher.snapshot import Snapshots

GB = 1e9
ALIGN = 64  # the arena's per-tensor alignment, so the floor copies the same layout


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compute-ratio", type=float, default=2.0, help="forward+backward / floor")
    p.add_argument("--save-dir", default=tempfile.gettempdir(), help="torch.save goes here")
    p.add_argument("--result", required=True)
    return p.parse_args()


class Trainer:
    def __init__(self, size_gb: float, hidden: int) -> None:
        per_layer = hidden * hidden + hidden  # params; Adam adds two more of each
        self.layers = max(1, round(size_gb * GB / (3 * 4 * per_layer)))
        torch.manual_seed(0)
        self.model = nn.Sequential(*(nn.Linear(hidden, hidden) for _ in range(self.layers)))
        self.optim = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.hidden = hidden
        self.set_batch(16)

    def set_batch(self, batch: int) -> None:
        self.batch = batch
        self.x = torch.randn(batch, self.hidden)

    def forward_backward(self) -> None:
        self.optim.zero_grad(set_to_none=False)
        self.model(self.x).square().mean().backward()

    def step(self) -> None:
        self.forward_backward()
        self.optim.step()

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optim": self.optim.state_dict()}


def tensors_of(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value.detach()
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_of(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors_of(v)


def timed(fn: Any, *args: Any) -> float:
    began = time.perf_counter()
    fn(*args)
    return time.perf_counter() - began


def copy_all(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    for target, source in zip(targets, sources):
        target.copy_(source)


def shm_floor(sources: list[torch.Tensor], repeats: int) -> list[float]:
    """copy_ into preallocated, page-populated /dev/shm memory: what the arena copy does."""
    offsets, end = [], 0
    for t in sources:
        offsets.append(end)
        end += -(-t.nbytes // ALIGN) * ALIGN
    path = Path("/dev/shm") / f"ts-bench-floor-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, end)
        mm = mmap.mmap(fd, end)
        mm.madvise(getattr(mmap, "MADV_POPULATE_WRITE", 23), 0, end)
        flat = torch.frombuffer(mm, dtype=torch.uint8)
        targets = [
            flat[o : o + t.nbytes].view(t.dtype).view(t.shape) for t, o in zip(sources, offsets)
        ]
        copy_all(targets, sources)  # untimed: caches and TLB warm, as in steady state
        times = [timed(copy_all, targets, sources) for _ in range(repeats)]
        del targets, flat
        mm.close()
        return times
    finally:
        os.close(fd)
        path.unlink()


def ram_floor(sources: list[torch.Tensor], repeats: int) -> list[float]:
    """The same copy into plain preallocated (anonymous) CPU tensors."""
    targets = [torch.empty_like(t) for t in sources]
    copy_all(targets, sources)
    return [timed(copy_all, targets, sources) for _ in range(repeats)]


def memory_status() -> dict[str, int]:
    """VmRSS and its split (anonymous, file, shared memory) in bytes, from /proc."""
    wanted = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            out[key] = int(value.split()[0]) * 1024
    return out


def blocked_no_overlap(trainer: Trainer, snapshots: Snapshots, step: int) -> dict[str, float]:
    """(a) save() and then at once optimizer.step(): nothing hides the copy."""
    trainer.forward_backward()
    snapshots.flush()  # the writer is idle: no earlier copy or checksum competes
    state = trainer.state()  # outside the timing: only what save() itself costs
    save_s = timed(snapshots.save, step, state)
    trainer.optim.step()  # the pre-step hook waits for the copy
    wait_s = snapshots.last_blocking_s
    return {"save_s": save_s, "hook_wait_s": wait_s, "blocked_s": save_s + wait_s}


def blocked_overlap(trainer: Trainer, snapshots: Snapshots, step: int) -> dict[str, float]:
    """(b) save(), then the next forward+backward while the copy runs, then the step."""
    snapshots.flush()
    state = trainer.state()
    save_s = timed(snapshots.save, step, state)
    compute_s = timed(trainer.forward_backward)
    trainer.optim.step()
    wait_s = snapshots.last_blocking_s
    return {"save_s": save_s, "compute_s": compute_s, "hook_wait_s": wait_s,
            "blocked_s": save_s + wait_s}  # fmt: skip


def writer_busy(trainer: Trainer, snapshots: Snapshots, step: int) -> dict[str, float]:
    """The writer thread's whole work for one save, alone: copy, CRC-32, header, report."""
    snapshots.flush()
    state = trainer.state()
    began = time.perf_counter()
    snapshots.save(step, state)
    snapshots.flush()
    cycle_s = time.perf_counter() - began
    slot = snapshots.arena.find(step)
    assert slot is not None, f"step {step} is not in the arena after flush()"
    _, _, payload = snapshots.arena.read(slot, verify=False)
    crc_s = timed(zlib.crc32, payload)  # what finish_write computes over the payload
    del payload
    return {"cycle_s": cycle_s, "crc_s": crc_s, "blocked_s": cycle_s}


def median_of(rows: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: median(r[k] for r in rows) for k in rows[0]}
    out["all_blocked_s"] = [round(r["blocked_s"], 4) for r in rows]
    return out


def steady(trainer: Trainer, snapshots: Snapshots, args: argparse.Namespace, step: int) -> Any:
    """Median step time without saves, then saving every step (as tests/workloads/toy_ddp.py)."""
    snapshots.flush()
    for _ in range(args.warmup):
        trainer.step()
    plain = [timed(trainer.step) for _ in range(args.steps)]
    saving, blocked = [], []
    for i in range(args.warmup + args.steps):
        began = time.perf_counter()
        trainer.step()
        save_s = timed(snapshots.save, step, trainer.state())
        step += 1
        if i >= args.warmup:
            saving.append(time.perf_counter() - began)
            blocked.append(save_s + snapshots.last_blocking_s)
    snapshots.flush()
    return step, {
        "threads": torch.get_num_threads(),
        "plain_step_s": median(plain),
        "saving_step_s": median(saving),
        "saving_blocked_s": median(blocked),
        "slowdown": median(saving) / median(plain) - 1,
        "committed_after_flush": snapshots.committed == step - 1,
    }


def torch_save(trainer: Trainer, directory: Path, repeats: int) -> dict[str, Any]:
    """torch.save as training scripts call it: to a local file, no fsync."""
    path = directory / f"ts-bench-{os.getpid()}.pt"
    times = []
    for _ in range(repeats):
        path.unlink(missing_ok=True)
        times.append(timed(torch.save, trainer.state(), path))
    size = path.stat().st_size
    path.unlink()
    return {"median_s": median(times), "all_s": times, "file_bytes": size}


def main() -> None:
    args = parse()
    trainer = Trainer(args.size_gb, args.hidden)
    for _ in range(2):  # Adam's state exists after the first step
        trainer.step()
    sources = list(tensors_of(trainer.state()))
    floor_shm = shm_floor(sources, args.repeats)  # unmapped after: leaves RSS as it was
    # Forward+backward at least compute_ratio x the floor, so that (b) can hide the copy.
    per_sample = timed(trainer.forward_backward) / trainer.batch
    trainer.set_batch(math.ceil(args.compute_ratio * median(floor_shm) / per_sample))
    compute_s = median(timed(trainer.forward_backward) for _ in range(3))
    before = memory_status()

    snapshots = Snapshots()
    restored, _ = snapshots.load()
    assert restored == -1, f"a fresh job restored step {restored}"
    step = 1
    for _ in range(3):  # the hook learns the optimizer; both slots are allocated
        trainer.step()
        snapshots.save(step, trainer.state())
        step += 1
    snapshots.flush()
    known = snapshots._optimized  # the worker API's own record (read only)
    cloned = [t for t in tensors_of(trainer.state()) if t.data_ptr() not in known]

    rows: dict[str, list[dict[str, float]]] = {"no_overlap": [], "overlap": [], "writer": []}
    for _ in range(args.repeats):
        rows["no_overlap"].append(blocked_no_overlap(trainer, snapshots, step))
        rows["overlap"].append(blocked_overlap(trainer, snapshots, step + 1))
        rows["writer"].append(writer_busy(trainer, snapshots, step + 2))
        step += 3
    # All cores to training (torch's default for one rank), then one core left to the writer.
    cores = torch.get_num_threads()
    steady_runs = []
    for threads in sorted({cores, max(1, cores - 1)}, reverse=True):
        torch.set_num_threads(threads)
        step, run = steady(trainer, snapshots, args, step)
        steady_runs.append(run)
    torch.set_num_threads(cores)
    after = memory_status()
    files = list(snapshots.arena.directory.iterdir())
    result = {
        "torch": torch.__version__,
        "threads": cores,
        "layers": trainer.layers,
        "hidden": args.hidden,
        "batch": trainer.batch,
        "compute_s": compute_s,
        "state_bytes": sum(t.nbytes for t in sources),
        "state_tensors": len(sources),
        "cloned_in_save": {"tensors": len(cloned), "bytes": sum(t.nbytes for t in cloned)},
        "manifest_bytes": max(info.manifest_len for info in snapshots.arena.slots()),
        "floor": {"shm_s": floor_shm, "ram_s": ram_floor(sources, args.repeats)},
        **{name: median_of(r) for name, r in rows.items()},
        "steady": steady_runs,
        "arena": {
            "files": len(files),
            "bytes": sum(f.stat().st_size for f in files),
            "allocated_bytes": sum(f.stat().st_blocks * 512 for f in files),
        },
        "memory_before": before,
        "memory_after": after,
        "torch_save": torch_save(trainer, Path(args.save_dir), max(3, args.repeats // 2)),
    }
    for key in ("shm", "ram"):
        result["floor"][f"{key}_median_s"] = median(result["floor"][f"{key}_s"])
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
