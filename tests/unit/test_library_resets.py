"""Each library reset step against the real library, in real processes (gloo on CPU).

A process sets up the library's distributed state, leaves the generation as the bootstrap's
unwind does and sets it up again (tests/workloads/library_reentry.py): with the reset the
second generation initializes; without it, it fails with the library's own error.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.worker.library_resets import LIBRARY_RESETS, reset_libraries

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = REPO / "tests" / "workloads" / "library_reentry.py"

# (library, ranks): each library's distributed set-up, twice in one process
LIBRARIES = [("accelerate", 2), ("megatron", 1), ("deepspeed", 1)]
# (reset step left out, library, ranks, the library's error on its second set-up)
WITHOUT_ONE_STEP = [
    ("accelerate.state", "accelerate", 2, "Default process group has not been initialized"),
    ("megatron.core.parallel_state", "megatron", 1, "data parallel group is already initialized"),
    (
        "megatron.core.num_microbatches_calculator",
        "megatron",
        1,
        "num microbatches calculator is already initialized",
    ),
    ("deepspeed.utils.groups", "deepspeed", 1, "is not registered"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_generations(library: str, ranks: int, mode: str) -> list[tuple[int, str]]:
    ports = [str(free_port()), str(free_port())]
    procs = []
    for rank in range(ranks):
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(ranks),
            LOCAL_WORLD_SIZE=str(ranks),
            MASTER_ADDR="127.0.0.1",
            DS_ACCELERATOR="cpu",  # DeepSpeed's CPU accelerator (JIT-builds its shm op once)
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKLOAD), library, mode, *ports],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=200)
        results.append((proc.returncode, out))
    return results


def assert_second_generation_ok(results: list[tuple[int, str]]) -> None:
    for code, out in results:
        assert code == 0 and "generation 1 ok" in out, out[-3000:]
        assert "reset failed" not in out, out[-3000:]


@pytest.mark.timeout(420)
@pytest.mark.parametrize(("library", "ranks"), LIBRARIES)
def test_the_resets_let_the_library_set_up_again(library: str, ranks: int) -> None:
    assert_second_generation_ok(run_generations(library, ranks, "reset"))


@pytest.mark.timeout(420)
@pytest.mark.parametrize(("step", "library", "ranks", "error"), WITHOUT_ONE_STEP)
def test_without_one_step_the_second_set_up_fails(
    step: str, library: str, ranks: int, error: str
) -> None:
    for code, out in run_generations(library, ranks, f"skip:{step}"):
        assert code == 1 and "generation 1 failed" in out and error in out, out[-3000:]


def test_every_step_is_shown_needed() -> None:
    assert sorted(s.module for s in LIBRARY_RESETS) == sorted(c[0] for c in WITHOUT_ONE_STEP)


@pytest.mark.timeout(420)
def test_deepspeed_groups_reset_for_versions_without_its_release_function() -> None:
    assert_second_generation_ok(run_generations("deepspeed", 1, "deepspeed-globals"))


def test_resets_never_import_a_library() -> None:
    before = set(sys.modules)
    assert reset_libraries({}) == []
    reset_libraries(sys.modules)
    assert not {step.module for step in LIBRARY_RESETS} & (set(sys.modules) - before)


def test_a_failing_step_is_reported_and_the_others_still_run() -> None:
    import types

    from launcher.worker.library_resets import LibraryReset

    ran = []
    broken = types.ModuleType("broken")
    fine = types.ModuleType("fine")
    steps = (
        LibraryReset("broken", lambda m: m.no_such_function()),
        LibraryReset("fine", lambda m: ran.append(m.__name__)),
    )
    failures = reset_libraries({"broken": broken, "fine": fine}, steps)
    assert ran == ["fine"]
    assert len(failures) == 1 and failures[0].startswith("broken: AttributeError")
