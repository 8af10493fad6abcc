"""What every framework script records for the matrix, the way users record it.

Called from each script's own body, so a script re-entered in place adds its
handler and its exit hook again, exactly as a plain script would: a logging
handler left over from an earlier run shows as a duplicated line, and an exit
hook that never runs leaves no record.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from pathlib import Path
from typing import Any


def open_log(out: str, rank: int) -> logging.Logger:
    """A per-rank log file behind the `train` logger, added at import like most scripts do."""
    path = Path(out) / "logs" / f"rank{rank}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(created).6f pid=%(process)d %(message)s"))
    log = logging.getLogger("train")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    return log


def record_at_exit(out: str, rank: int, result: dict[str, Any]) -> None:
    """At interpreter exit, append this process's final step and loss (a tracker's flush)."""
    path = Path(out) / "atexit" / f"rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        with open(path, "a") as handle:
            handle.write(json.dumps({"pid": os.getpid(), **result}) + "\n")

    atexit.register(write)


def step_loss(log: logging.Logger, result: dict[str, Any], step: int, loss: float) -> None:
    """One optimizer step done: logged, and kept for the exit record (repr: every bit)."""
    result.update(step=step, loss=repr(float(loss)))
    log.info("step %d loss %r", step, float(loss))
