"""Reset steps for libraries that keep process-wide distributed state between generations.

A re-entered script initializes its libraries again; some refuse, or reuse the dead
generation's process groups, unless their module-level state is back to import time:
megatron-core asserts "data parallel group is already initialized", DeepSpeed raises "Group
... is not registered", Accelerate's state singletons skip `init_process_group`. Each step
runs only when its module is already imported (never imported here), after the script
ended and before the unwind destroys torch.distributed's groups; each also works on a
destroyed world, as it is run once more just before the next generation starts.

Looked at and left alone, as they do not stop a second initialization: megatron-core's RNG
tracker (model_parallel_cuda_manual_seed resets it) and DeepSpeed's communication backend
(deepspeed.comm's cdb asks torch.distributed whether it is initialized, and initializes again).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class LibraryReset:
    module: str  # applied only when this module is in sys.modules
    reset: Callable[[ModuleType], None]


def reset_accelerate(state: ModuleType) -> None:
    """accelerate.state: PartialState, AcceleratorState and GradientState share class-wide
    dicts; a filled PartialState skips init_process_group, so `prepare` fails."""
    state.AcceleratorState._reset_state(reset_partial_state=True)
    state.GradientState._reset_state()
    state.PartialState._reset_state()


def reset_megatron_parallel_state(parallel_state: ModuleType) -> None:
    """megatron.core.parallel_state: its groups, ranks and global memory buffers."""
    parallel_state.destroy_model_parallel()


def reset_megatron_microbatches(calculator: ModuleType) -> None:
    """megatron.core.num_microbatches_calculator asserts it is initialized once."""
    calculator.destroy_num_microbatches_calculator()


# deepspeed.utils.groups at import, for versions without _release_process_group_references.
DEEPSPEED_GROUP_GLOBALS: tuple[tuple[str, Callable[[], Any]], ...] = (
    ("_EXPERT_PARALLEL_GROUP", dict),
    ("_EXPERT_PARALLEL_GROUP_RANKS", dict),
    ("_EXPERT_DATA_PARALLEL_GROUP", dict),
    ("_EXPERT_DATA_PARALLEL_GROUP_RANKS", dict),
    ("_ALL_TO_ALL_GROUP", dict),
    ("_WORLD_GROUP", lambda: None),
    ("_ZERO_PARAM_INTRA_PARALLEL_GROUP", lambda: None),
    ("_TENSOR_MODEL_PARALLEL_GROUP", lambda: None),
    ("_MODEL_PARALLEL_GROUP", lambda: None),
    ("_DATA_PARALLEL_GROUP", lambda: None),
    ("_MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE", lambda: None),
    ("_MPU_TENSOR_MODEL_PARALLEL_RANK", lambda: None),
    ("expert_tensor_parallel_world_size", lambda: 1),
    ("mesh_device", lambda: None),
    ("mpu", lambda: None),
)


def reset_deepspeed_groups(groups: ModuleType) -> None:
    """deepspeed.utils.groups caches the world group and the parallel groups it made from
    it; after our unwind destroyed them, `deepspeed.initialize` raises 'not registered'."""
    release = getattr(groups, "_release_process_group_references", None)
    if release is not None:  # what DeepSpeed's own destroy_process_group() calls
        release(group=None)
    else:
        reset_deepspeed_group_globals(groups)


def reset_deepspeed_group_globals(groups: ModuleType) -> None:
    """The same for DeepSpeed versions before _release_process_group_references."""
    for name, fresh in DEEPSPEED_GROUP_GLOBALS:
        if hasattr(groups, name):
            setattr(groups, name, fresh())


LIBRARY_RESETS: tuple[LibraryReset, ...] = (
    LibraryReset("accelerate.state", reset_accelerate),
    LibraryReset("megatron.core.parallel_state", reset_megatron_parallel_state),
    LibraryReset("megatron.core.num_microbatches_calculator", reset_megatron_microbatches),
    LibraryReset("deepspeed.utils.groups", reset_deepspeed_groups),
)


def reset_libraries(
    modules: Mapping[str, ModuleType], resets: Sequence[LibraryReset] = LIBRARY_RESETS
) -> list[str]:
    """Apply the steps of the imported libraries; one line per step that failed.

    A failed step does not stop the others: the re-entered script may not use that library,
    and if it does, its error is a re-entry failure the supervisor answers with a fresh
    process."""
    failures = []
    for step in resets:
        module = modules.get(step.module)
        if module is None:
            continue
        try:
            step.reset(module)
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            failures.append(
                f"{step.module}: {type(exc).__name__}: {exc} ({where.filename}:{where.lineno})"
            )
    return failures
