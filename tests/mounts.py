"""A small tmpfs to fill up or make read-only: real ENOSPC and EROFS, for unit and e2e tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(where: Path, options: str = "size=256k") -> Iterator[Path]:
    """Mount a tmpfs at `where` (created) for the block; skip the test where that cannot be."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True, text=True,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where: Path, options: str) -> None:
    """e.g. "ro", "rw", "size=64m" (tmpfs takes a new size while mounted)."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)
