"""The GPU snapshot check, in one run for a GPU machine: the GPU tests, then the stall figures.

1. pytest tests/unit/test_snapshot_gpu.py (CUDA tensors through pinned arena memory on a side
   stream; the optimizer's update ordered after the copy on the device).
2. For a --size-gb state of nn.Linear params + Adam state on the device: the device-to-host
   floor (one copy of every state tensor into page-locked host memory), torch.save of the state
   to local disk, and a loop saving every step vs not (step time with the device synchronized at
   each step's end; blocked = the host's time in save() + the pre-step hook).

The worker API runs against a recording SnapshotService on loopback (tests/unit/
snapshot_service.py) that commits every step: the stall is the worker API's, not the sidecar's.
`--device cpu` runs the same code on the CPU (to check the script where there is no GPU).
Never run on a GPU yet: no session of this project has had one. Results: --out (.json, .md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "unit")]

from snapshot_service import rank0_env, serve_snapshots  # noqa: E402
from snapshot_stall_worker import Trainer  # noqa: E402

from launcher.worker.snapshot import Snapshots  # noqa: E402

GB = 1e9


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size-gb", type=float, default=1.0, help="params + Adam state, GB")
    p.add_argument("--hidden", type=int, default=4096)
    # A step longer than the device-to-host copy of the state, as in real training.
    p.add_argument("--batch", type=int, default=16384, help="rows per forward+backward")
    p.add_argument("--steps", type=int, default=30, help="timed steps with, and without, saves")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_snapshot"))
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Any, *args: Any) -> float:
    sync(device)
    began = time.perf_counter()
    fn(*args)
    sync(device)
    return time.perf_counter() - began


def floor_s(trainer: Trainer, device: torch.device, repeats: int) -> float:
    """One copy of every state tensor into preallocated host memory (page-locked on a GPU)."""
    sources = [t for t in tree_leaves(trainer.state()) if isinstance(t, torch.Tensor)]
    pin = device.type == "cuda"
    targets = [torch.empty(t.shape, dtype=t.dtype, pin_memory=pin) for t in sources]

    def copy_all() -> None:
        for target, source in zip(targets, sources):
            target.copy_(source, non_blocking=pin)

    copy_all()  # every page touched once
    return median(timed(device, copy_all) for _ in range(repeats))


def torch_save_s(trainer: Trainer, device: torch.device, repeats: int) -> float:
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "state.pt"
        return median(timed(device, torch.save, trainer.state(), path) for _ in range(3))


def steady(trainer: Trainer, snapshots: Snapshots, device: torch.device, steps: int) -> Any:
    """Alternating blocks of plain steps and steps that save, so drift hits both alike."""
    plain, saving, blocked = [], [], []
    step, block = 1, 6
    for _ in range(max(1, steps // block)):
        for i in range(block + 1):  # each block's first step is its warm-up
            elapsed = timed(device, trainer.step)
            if i:
                plain.append(elapsed)
        for i in range(block + 1):
            sync(device)
            began = time.perf_counter()
            trainer.step()
            save_began = time.perf_counter()
            snapshots.save(step, trainer.state())
            save_s = time.perf_counter() - save_began
            sync(device)
            step += 1
            if i:
                saving.append(time.perf_counter() - began)
                blocked.append(save_s + snapshots.last_blocking_s)
        snapshots.flush()
    return {
        "plain_step_s": median(plain),
        "saving_step_s": median(saving),
        "blocked_s": median(blocked),
        "slowdown": median(saving) / median(plain) - 1,
        "committed": snapshots.committed,
        "last_step": step - 1,
    }


def measure(args: argparse.Namespace, device: torch.device, work: Path) -> dict[str, Any]:
    trainer = Trainer(args.size_gb, args.hidden, args.batch, args.device)
    for _ in range(2):  # Adam's state exists after the first step
        trainer.step()
    state_bytes = sum(t.nbytes for t in tree_leaves(trainer.state()) if torch.is_tensor(t))
    with serve_snapshots() as (address, _):
        snapshots = Snapshots(rank0_env(address, work))
        run = steady(trainer, snapshots, device, args.steps)
        pinned = len(snapshots._device_copier._pinned)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "layers": trainer.layers,
        "state_bytes": state_bytes,
        "floor_s": floor_s(trainer, device, args.repeats),
        "torch_save_s": torch_save_s(trainer, device, args.repeats),
        "pinned_slots": pinned,
        **run,
    }


def markdown(r: dict[str, Any], tests: str) -> str:
    gb = r["state_bytes"] / GB
    ms = 1000
    return "\n".join(
        [
            f"GPU snapshot check on {r['device']} (torch {r['torch']}): {gb:.2f} GB of state "
            f"({r['layers']} nn.Linear layers + Adam), measured {time.strftime('%Y-%m-%d')}.",
            "",
            "| measurement | value |",
            "|---|---|",
            f"| GPU tests (tests/unit/test_snapshot_gpu.py) | {tests} |",
            f"| device-to-host floor: every state tensor into page-locked memory | "
            f"{r['floor_s'] * ms:.1f} ms ({gb / r['floor_s']:.1f} GB/s) |",
            f"| torch.save to local disk | {r['torch_save_s'] * ms:.1f} ms |",
            f"| training blocked per save (save() + pre-step hook, host) | "
            f"{r['blocked_s'] * ms:.2f} ms |",
            f"| step saving every step vs not (device synchronized per step) | "
            f"{r['saving_step_s'] * ms:.1f} ms vs {r['plain_step_s'] * ms:.1f} ms: "
            f"**{r['slowdown']:+.1%}** |",
            f"| arena slots page-locked | {r['pinned_slots']} |",
            f"| committed after the run | step {r['committed']} of {r['last_step']} |",
            "",
            "Reproduce: `python bench/gpu_snapshot_check.py`.",
        ]
    )


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    tests = "skipped (--skip-tests)"
    if not args.skip_tests:
        test_file = ROOT / "tests" / "unit" / "test_snapshot_gpu.py"
        pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)]
        done = subprocess.run(pytest, cwd=ROOT, capture_output=True, text=True)
        print(done.stdout[-4000:], done.stderr[-2000:], flush=True)
        tests = (done.stdout.strip().splitlines() or ["no output"])[-1]
    with tempfile.TemporaryDirectory(prefix="ts-gpu-", dir="/dev/shm") as work:
        result = measure(args, device, Path(work))
    result["tests"] = tests
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, tests)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
