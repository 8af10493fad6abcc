"""Two generations of a library's distributed set-up in one process, as a survivor runs them.

`python library_reentry.py LIBRARY MODE PORT0 PORT1` with RANK and WORLD_SIZE set: generation
0 initializes torch.distributed (gloo) and LIBRARY's distributed state; the process then leaves
it as the bootstrap's unwind does (launcher/worker/bootstrap.py: the library resets, then
destroy_process_groups) and generation 1 initializes both again on a fresh port. MODE: `reset`
(every step), `keep` (none), `skip:MODULE` (every step but that module's) or
`deepspeed-globals` (DeepSpeed's groups reset as for versions without
_release_process_group_references).
Prints "generation 1 ok" or "generation 1 failed: <error>".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from launcher.worker.library_resets import (
    LIBRARY_RESETS,
    LibraryReset,
    reset_deepspeed_group_globals,
    reset_libraries,
)
from launcher.worker.unwind import destroy_process_groups


def init_torch(port: str) -> None:
    os.environ["MASTER_PORT"] = port
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))


def accelerate_generation(port: str) -> None:
    from accelerate import Accelerator

    os.environ["MASTER_PORT"] = port  # Accelerate's PartialState calls init_process_group
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(4, 2))
    loss = model(torch.ones(3, 4)).sum()
    accelerator.backward(loss)  # DDP's all-reduce on the generation's group
    accelerator.wait_for_everyone()


def megatron_generation(port: str) -> None:
    from megatron.core import num_microbatches_calculator, parallel_state

    init_torch(port)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
    num_microbatches_calculator.init_num_microbatches_calculator(0, None, 8, 1, 1)
    group = parallel_state.get_data_parallel_group()
    dist.all_reduce(torch.ones(1), group=group)


def deepspeed_generation(port: str) -> None:
    import deepspeed

    os.environ["MASTER_PORT"] = port
    deepspeed.init_distributed(dist_backend="gloo")
    model = torch.nn.Linear(4, 2)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 0}}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    loss = engine(torch.ones(1, 4)).sum()
    engine.backward(loss)
    engine.step()


GENERATIONS: dict[str, Callable[[str], None]] = {
    "accelerate": accelerate_generation,
    "megatron": megatron_generation,
    "deepspeed": deepspeed_generation,
}


def main() -> None:
    library, mode, port0, port1 = sys.argv[1:5]
    generation = GENERATIONS[library]
    generation(port0)
    print("generation 0 ok", flush=True)
    skipped = mode.removeprefix("skip:") if mode.startswith("skip:") else ""
    steps = [] if mode == "keep" else [s for s in LIBRARY_RESETS if s.module != skipped]
    if mode == "deepspeed-globals":
        steps = [LibraryReset("deepspeed.utils.groups", reset_deepspeed_group_globals)]
    for failure in reset_libraries(sys.modules, steps):
        print(f"reset failed: {failure}", flush=True)
    destroy_process_groups()
    reset_libraries(sys.modules, steps)  # the bootstrap's again, before the next generation
    try:
        generation(port1)
    except Exception as exc:
        print(f"generation 1 failed: {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)
    print("generation 1 ok", flush=True)
    destroy_process_groups()


if __name__ == "__main__":
    main()
