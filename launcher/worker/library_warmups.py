"""Warm steps for libraries: what the ranks loaded beyond imports, loaded in a warm spare too.

A spare imports what local rank 0 imported (warm_imports.py), but some libraries load more
on first use, outside the import system, and a promoted spare pays for it while every
surviving rank waits at the first collective. DeepSpeed JIT-loads its C++ ops through
torch.utils.cpp_extension even when they are built: for `fused_adam` (its CPU FusedAdam) the
compile flags alone run py-cpuinfo's get_cpu_info() twice, a Python subprocess each, then
ninja checks the build: 2.4 s of a 2.6 s recovery on 2 busy cores.

Each step has two halves. `loaded`, in local rank 0, names what the library has loaded; the
names go into the spares' manifest beside the modules. `load`, in a spare's warm-up thread,
loads one such name the way the library itself would on first use, into the library's own
per-process cache, where the script's call finds it. Both run only when the step's module is
already imported (`loaded` never imports anything); a step that fails is reported and left
to the script, which loads what it needs itself.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class LibraryWarmup:
    module: str  # observed and warmed only when this module is in sys.modules
    loaded: Callable[[ModuleType], Iterable[str]]  # what this process loaded
    load: Callable[[ModuleType, str], None]  # load one of those names in this process


def deepspeed_loaded_ops(builder: ModuleType) -> list[str]:
    """deepspeed.ops.op_builder.builder: the ops this process loaded, by op name
    (OpBuilder._loaded_ops, DeepSpeed's per-process cache that OpBuilder.load looks in)."""
    return sorted(list(builder.OpBuilder._loaded_ops))  # a copy: the script may be loading one


def load_deepspeed_op(builder: ModuleType, name: str) -> None:
    """Load the op `name` with the current accelerator's builder of that name, as DeepSpeed's
    own first use does (`get_accelerator().create_op_builder(...).load()`). Built ops come
    from torch's extension cache; one not built yet is built here, as the script would."""
    accelerator = importlib.import_module("deepspeed.accelerator").get_accelerator()
    builders = importlib.import_module(accelerator.op_builder_dir())
    for candidate in vars(builders).values():
        if (
            isinstance(candidate, type)
            and issubclass(candidate, builder.OpBuilder)
            and getattr(candidate, "NAME", None) == name
        ):
            candidate().load(verbose=False)
            return
    raise LookupError(f"{accelerator.op_builder_dir()} has no op builder named {name!r}")


LIBRARY_WARMUPS: tuple[LibraryWarmup, ...] = (
    LibraryWarmup("deepspeed.ops.op_builder.builder", deepspeed_loaded_ops, load_deepspeed_op),
)


def loaded_by_libraries(
    modules: Mapping[str, object], warmups: Sequence[LibraryWarmup] = LIBRARY_WARMUPS
) -> list[tuple[str, str]]:
    """(module, name) for everything the imported libraries loaded beyond their imports. A
    step that cannot tell (a library version without the attribute) names nothing."""
    found = []
    for step in warmups:
        module = modules.get(step.module)
        if not isinstance(module, ModuleType):
            continue
        try:
            found += [(step.module, name) for name in step.loaded(module)]
        except Exception:  # only the spares' head start is lost
            continue
    return found


def warm_library(
    modules: Mapping[str, object],
    module_name: str,
    name: str,
    warmups: Sequence[LibraryWarmup] = LIBRARY_WARMUPS,
) -> str:
    """Load `name` with the step of `module_name`, if that module is imported here; why it
    failed, or "" (also when there is no such step or module: nothing to do)."""
    module = modules.get(module_name)
    step = next((s for s in warmups if s.module == module_name), None)
    if not isinstance(module, ModuleType) or step is None:
        return ""
    try:
        step.load(module, name)
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        failed = f"{type(exc).__name__}: {exc} ({where.filename}:{where.lineno})"
        return f"{module_name} {name}: {failed}"
    return ""
