"""launcher/ never needs a training framework: each integration imports its own, and only it."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate")


def loaded_frameworks(*modules: str) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        f"print(','.join(m for m in {list(FRAMEWORKS)!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip
    return set(filter(None, done.stdout.strip().split(",")))


def test_the_launcher_and_the_dcp_integration_load_no_framework() -> None:
    assert loaded_frameworks("launcher.launch.main", "launcher.worker.integrations.dcp") == set()


def test_each_framework_integration_loads_its_own_framework() -> None:
    assert "lightning" in loaded_frameworks("launcher.worker.integrations.lightning")
    assert "transformers" in loaded_frameworks("launcher.worker.integrations.hf")
