"""The code that runs inside the user's training process imports nothing of the sidecar.

launcher/worker/ is loaded into every training process; the sidecar's package (`supervisor`) is
another program's. A fresh interpreter imports every worker module and must not find `supervisor`
in sys.modules afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def worker_modules() -> list[str]:
    root = REPO / "launcher" / "worker"
    return sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for path in root.rglob("*.py")
    )


def test_every_worker_module_is_found() -> None:
    modules = worker_modules()
    assert "launcher.worker.bootstrap" in modules
    assert "launcher.worker.snapshot" in modules
    assert "launcher.worker.integrations.dcp" in modules


def test_worker_code_imports_nothing_of_the_sidecar() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {worker_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m.partition('.')[0] == 'supervisor')\n"
        "print(' '.join(leaked))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"worker code imported the sidecar: {done.stdout}"
