"""Where a pod keeps its jobs' arenas (train_supervisor/arena.py): the directory, the ranks
with slot files in it, and its removal when the job ends."""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

_SLOT_FILE = re.compile(r"rank-(\d+)\.slot[01]")


def ranks_in(directory: Path) -> list[int]:
    """The ranks that have slot files in `directory` (none when it does not exist)."""
    found = (_SLOT_FILE.fullmatch(p.name) for p in directory.glob("rank-*.slot*"))
    return sorted({int(m.group(1)) for m in found if m})


SNAPSHOT_DIR_ENV = "TRAIN_SUPERVISOR_SNAPSHOT_DIR"


def snapshot_directory(run_id: str, env: Mapping[str, str]) -> Path:
    """The pod's directory for a job's arenas: shared by its sidecar, launcher and workers."""
    if env.get(SNAPSHOT_DIR_ENV):
        return Path(env[SNAPSHOT_DIR_ENV])
    return Path("/dev/shm/train-supervisor") / run_id


def remove_arena(directory: Path) -> None:
    """Delete a job's arena directory (on job end). Processes still mapping it keep their pages
    until they unmap; tmpfs frees them then."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(directory)
