"""In-memory snapshots from inside the frameworks' own checkpoint calls (docs/frameworks.md).

One module per framework, each importing its framework itself, so that `launcher` needs none:
- `launcher.worker.integrations.dcp`: a `torch.distributed.checkpoint` StorageWriter/StorageReader
pair;
- `launcher.worker.integrations.lightning`: a Lightning `Callback`;
- `launcher.worker.integrations.hf`: a Hugging Face `TrainerCallback`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Optional

from launcher.launch.processes import SCRIPT_ADDRESS_ENV
from launcher.worker.snapshot import Snapshots


def supervised_snapshots(who: str, env: Optional[Mapping[str, str]] = None) -> Optional[Snapshots]:
    """This run's Snapshots under train-launch; None (said once, on stderr) anywhere else, so that
    a script with an integration in it still runs under torchrun or alone, without snapshots."""
    env = os.environ if env is None else env
    if SCRIPT_ADDRESS_ENV not in env:
        print(f"[train-supervisor] {who}: not under train-launch, no in-memory snapshots",
              file=sys.stderr, flush=True)  # fmt: skip
        return None
    return Snapshots(env)
