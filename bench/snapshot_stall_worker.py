"""The worker bench/snapshot_stall.py launches under train-launch: measures, writes one JSON.

Snapshots() needs a train-launch worker's environment, so every figure is taken here, in one
process, on one model: nn.Linear layers whose params + Adam exp_avg/exp_avg_sq make --size-gb.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import tempfile
import time
from itertools import accumulate
from pathlib import Path
from statistics import median
from typing import Any

import crc32c
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from launcher.worker.snapshot import Snapshots

GB = 1e9
ALIGN = 64  # the arena's per-tensor alignment, so the floor copies the same layout
BLOCK = 6  # steady-state steps per block; blocks with and without saves alternate


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=128, help="rows per forward+backward")
    p.add_argument("--save-dir", default=tempfile.gettempdir(), help="torch.save goes here")
    p.add_argument("--result", required=True)
    return p.parse_args()


class Trainer:
    def __init__(self, size_gb: float, hidden: int, batch: int, device: str = "cpu") -> None:
        per_layer = hidden * hidden + hidden  # params; Adam adds two more of each
        self.layers = max(1, round(size_gb * GB / (3 * 4 * per_layer)))
        torch.manual_seed(0)
        linears = (nn.Linear(hidden, hidden) for _ in range(self.layers))
        self.model = nn.Sequential(*linears).to(device)
        self.optim = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.batch = batch
        self.x = torch.randn(batch, hidden, device=device)

    def forward_backward(self) -> None:
        self.optim.zero_grad(set_to_none=False)
        self.model(self.x).square().mean().backward()

    def step(self) -> None:
        self.forward_backward()
        self.optim.step()

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optim": self.optim.state_dict()}


def tensors_of(state: Any) -> list[torch.Tensor]:
    return [t.detach() for t in tree_leaves(state) if isinstance(t, torch.Tensor)]


def timed(fn: Any, *args: Any) -> float:
    began = time.perf_counter()
    fn(*args)
    return time.perf_counter() - began


def copy_s(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> float:
    began = time.perf_counter()
    for target, source in zip(targets, sources):
        target.copy_(source)
    return time.perf_counter() - began


def shm_targets(sources: list[torch.Tensor]) -> list[torch.Tensor]:
    """Preallocated, page-populated /dev/shm memory laid out as the arena lays out a payload.

    The file is unlinked at once: its pages live as long as the mapping (this process).
    """
    offsets = [0, *accumulate(-(-t.nbytes // ALIGN) * ALIGN for t in sources)]
    path = Path("/dev/shm") / f"ts-bench-floor-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        path.unlink()
        os.posix_fallocate(fd, 0, offsets[-1])
        mm = mmap.mmap(fd, offsets[-1])
    finally:
        os.close(fd)
    mm.madvise(getattr(mmap, "MADV_POPULATE_WRITE", 23), 0, offsets[-1])
    flat = torch.frombuffer(mm, dtype=torch.uint8)  # holds the mapping open
    return [flat[o : o + t.nbytes].view(t.dtype).view(t.shape) for t, o in zip(sources, offsets)]


def memory_status() -> dict[str, int]:
    """VmRSS and its split (anonymous, file, shared memory) in bytes, from /proc."""
    rows = (line.split() for line in Path("/proc/self/status").read_text().splitlines())
    wanted = ("VmRSS:", "RssAnon:", "RssFile:", "RssShmem:")
    return {row[0][:-1]: int(row[1]) * 1024 for row in rows if row and row[0] in wanted}


def blocked(trainer: Trainer, snapshots: Snapshots, step: int, overlap: bool) -> dict[str, float]:
    """Training blocked by one save: time inside save() + the pre-step hook's wait.

    (a) overlap=False: save() and at once optimizer.step(), nothing hides the copy.
    (b) overlap=True: the next forward+backward runs while the writer thread copies.
    """
    if not overlap:
        trainer.forward_backward()
    snapshots.flush()  # the writer is idle: no earlier copy or checksum competes
    state = trainer.state()  # outside the timing: only what save() itself costs
    save_s = timed(snapshots.save, step, state)
    compute_s = timed(trainer.forward_backward) if overlap else 0.0
    trainer.optim.step()  # the pre-step hook waits for the copy
    wait_s = snapshots.last_blocking_s
    return {"save_s": save_s, "compute_s": compute_s, "hook_wait_s": wait_s,
            "blocked_s": save_s + wait_s}  # fmt: skip


def writer_busy(trainer: Trainer, snapshots: Snapshots, step: int) -> dict[str, float]:
    """The writer thread's whole work for one save, alone: copy, CRC-32C, header, report."""
    snapshots.flush()
    state = trainer.state()
    began = time.perf_counter()
    snapshots.save(step, state)
    snapshots.flush()
    cycle_s = time.perf_counter() - began
    slot = snapshots.arena.find(step)
    assert slot is not None, f"step {step} is not in the arena after flush()"
    _, _, payload = snapshots.arena.read(slot, verify=False)
    crc_s = timed(crc32c.crc32c, payload)  # what finish_write computes over the payload
    del payload
    return {"cycle_s": cycle_s, "crc_s": crc_s, "blocked_s": cycle_s}


def median_of(rows: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: median(r[k] for r in rows) for k in rows[0]}
    out["all_blocked_s"] = [round(r["blocked_s"], 4) for r in rows]
    return out


def steady(trainer: Trainer, snapshots: Snapshots, steps: int, step: int) -> Any:
    """Step times without saves and saving every step (as tests/workloads/toy_ddp.py does),
    in alternating blocks so that drift in the machine's load hits both alike."""
    plain, saving, stalls = [], [], []
    for _ in range(max(1, steps // BLOCK)):
        for i in range(BLOCK + 1):  # each block's first step is its warmup
            elapsed = timed(trainer.step)
            if i:
                plain.append(elapsed)
        for i in range(BLOCK + 1):  # the first waits for no earlier copy: not counted
            began = time.perf_counter()
            trainer.step()
            save_s = timed(snapshots.save, step, trainer.state())
            step += 1
            if i:
                saving.append(time.perf_counter() - began)
                stalls.append(save_s + snapshots.last_blocking_s)
        snapshots.flush()  # the last save's writer work stays out of the next plain block
    return step, {
        "threads": torch.get_num_threads(),
        "plain_step_s": median(plain),
        "saving_step_s": median(saving),
        "saving_blocked_s": median(stalls),
        "slowdown": median(saving) / median(plain) - 1,
        "committed_after_flush": snapshots.committed == step - 1,
    }


def torch_save(trainer: Trainer, directory: Path, repeats: int) -> dict[str, Any]:
    """torch.save as training scripts call it: to a local file, no fsync.

    The first save, untimed, pays for the file's first page-cache pages (2-6x a later one
    here); a training loop saving again and again pays what the later ones do.
    """
    path = directory / f"ts-bench-{os.getpid()}.pt"
    torch.save(trainer.state(), path)
    times = []
    for _ in range(repeats):
        path.unlink(missing_ok=True)
        times.append(timed(torch.save, trainer.state(), path))
    with open(path, "rb+") as handle:  # context only: what durability would add
        fsync_s = timed(os.fsync, handle.fileno())
    size = path.stat().st_size
    path.unlink()
    return {"median_s": median(times), "all_s": times, "file_bytes": size, "fsync_s": fsync_s}


def main() -> None:
    args = parse()
    trainer = Trainer(args.size_gb, args.hidden, args.batch)
    for _ in range(2):  # Adam's state exists after the first step
        trainer.step()
    sources = tensors_of(trainer.state())
    floors = {"shm": shm_targets(sources), "ram": [torch.empty_like(t) for t in sources]}
    for targets in floors.values():
        copy_s(targets, sources)  # untimed: every destination page touched once
    # --batch: matmuls, not memory, bound the step, as in real training; the report says how
    # forward+backward compares with the copy that (b) hides behind it.
    compute_s = median(timed(trainer.forward_backward) for _ in range(3))
    before = memory_status()  # the floors' memory is in both: the difference is ours

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

    floor_s: dict[str, list[float]] = {"shm": [], "ram": []}
    rows: dict[str, list[dict[str, float]]] = {"no_overlap": [], "overlap": [], "writer": []}
    for _ in range(args.repeats):  # interleaved: the floor and ours see the same machine
        snapshots.flush()
        for name, targets in floors.items():
            floor_s[name].append(copy_s(targets, sources))
        rows["no_overlap"].append(blocked(trainer, snapshots, step, overlap=False))
        rows["overlap"].append(blocked(trainer, snapshots, step + 1, overlap=True))
        rows["writer"].append(writer_busy(trainer, snapshots, step + 2))
        step += 3
    # All cores to training (torch's default for one rank), then one core left to the writer.
    cores = torch.get_num_threads()
    steady_runs = []
    for threads in sorted({cores, max(1, cores - 1)}, reverse=True):
        torch.set_num_threads(threads)
        step, run = steady(trainer, snapshots, args.steps, step)
        steady_runs.append(run)
    torch.set_num_threads(cores)
    after = memory_status()
    files = [f.stat() for f in snapshots.arena.directory.glob("rank-*.slot*")]
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
        "floor": {
            **{f"{name}_s": times for name, times in floor_s.items()},
            **{f"{name}_median_s": median(times) for name, times in floor_s.items()},
        },
        **{name: median_of(r) for name, r in rows.items()},
        "steady": steady_runs,
        "arena": {"files": len(files), "bytes": sum(f.st_size for f in files)},
        "memory_before": before,
        "memory_after": after,
        "torch_save": torch_save(trainer, Path(args.save_dir), args.repeats),
    }
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
