"""Each library warm step against the real library, in real processes.

A "rank" process uses the library as a script does and says what the registry finds it
loaded; a fresh "spare" process that imported the same modules applies the warm steps for
those names (or, cold, does not), then runs the script's part: warmed, the library finds
what it needs already loaded and starts no subprocess; cold, it loads it there and then
(tests/workloads/library_warmup.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from launcher.worker.library_warmups import (
    LIBRARY_WARMUPS,
    LibraryWarmup,
    loaded_by_libraries,
    warm_library,
)

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = REPO / "tests" / "workloads" / "library_warmup.py"
DEEPSPEED_OPS = "deepspeed.ops.op_builder.builder"


def run_workload(*args: str) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
        DS_ACCELERATOR="cpu",  # DeepSpeed's CPU accelerator: FusedAdam is a JIT-loaded op
        OMP_NUM_THREADS="1",
    )
    done = subprocess.run(
        [sys.executable, str(WORKLOAD), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_deepspeed_ops_the_rank_loaded_are_loaded_in_the_spare() -> None:
    # The op must be built beforehand (.ci/run builds it), or the rank builds it here.
    rank = run_workload("rank")
    assert [DEEPSPEED_OPS, "fused_adam"] in rank["loaded"], rank
    pairs = [part for pair in rank["loaded"] for part in pair]
    warm = run_workload("spare", "warm", *pairs)
    assert warm["failures"] == [], warm
    assert "fused_adam" in warm["loaded"] and warm["same_op"], warm
    assert warm["subprocesses"] == [], "warmed: the script's FusedAdam runs nothing"
    cold = run_workload("spare", "cold")
    assert cold["loaded"] == [] and not cold["same_op"], cold
    # py-cpuinfo (a Python subprocess per call, twice) and ninja's check: what the warm step
    # took off a promoted spare's path.
    assert any("cpuinfo" in started for started in cold["subprocesses"]), cold


def test_every_library_step_is_tested_against_its_library() -> None:
    assert [step.module for step in LIBRARY_WARMUPS] == [DEEPSPEED_OPS]


def test_observing_never_imports_a_library() -> None:
    before = set(sys.modules)
    loaded_by_libraries(sys.modules)
    assert not {step.module for step in LIBRARY_WARMUPS} & (set(sys.modules) - before)


def test_a_step_that_cannot_tell_names_nothing_and_a_failing_load_says_why() -> None:
    def refuse(module: types.ModuleType, name: str) -> None:
        raise RuntimeError(f"cannot load {name}")

    steps = (
        LibraryWarmup("old_lib", lambda m: m.no_such_cache, refuse),
        LibraryWarmup("new_lib", lambda m: ["op"], refuse),
    )
    modules = {"old_lib": types.ModuleType("old_lib"), "new_lib": types.ModuleType("new_lib")}
    assert loaded_by_libraries(modules, steps) == [("new_lib", "op")]
    failure = warm_library(modules, "new_lib", "op", steps)
    assert failure.startswith("new_lib op: RuntimeError: cannot load op (")
    assert warm_library(modules, "unknown_lib", "op", steps) == "", "no step: nothing to do"
    assert warm_library({}, "new_lib", "op", steps) == "", "not imported: nothing to do"
