"""The Kubernetes termination message: why a container ended, in `kubectl describe pod`.

Written when the job is given up (GAVE_UP) or the pod must be replaced
(REPLACE_POD): the exit code is what a Job's podFailurePolicy acts on, this
paragraph is what a person reads next to it. The kubelet mounts the file at
the container's terminationMessagePath (default /dev/termination-log) and
keeps at most 4 KiB of it. Outside Kubernetes the default path does not
exist, and nothing is created there; a path set explicitly is created.
Never raises: a message that cannot be written changes no exit code.
"""

from __future__ import annotations

import logging
from typing import Optional

from train_supervisor import exit_codes

DEFAULT_PATH = "/dev/termination-log"
MAX_BYTES = 4096  # what the kubelet keeps
ENDINGS = frozenset({exit_codes.GAVE_UP, exit_codes.REPLACE_POD})


def termination_message(report: str) -> str:
    """One paragraph: the report's lines up to the traceback, joined, cut to MAX_BYTES."""
    lines: list[str] = []
    for line in report.splitlines():
        if line.startswith("Traceback"):
            break  # the traceback stays in the logs: the paragraph says what and where
        if line.strip():
            lines.append(" ".join(line.split()))
    data = "; ".join(lines).encode()
    return data[:MAX_BYTES].decode(errors="ignore")


def write_termination_message(message: str, path: Optional[str]) -> Optional[str]:
    """Write `message` to `path` (None: the default path, only if it exists); the path
    written, or None."""
    target = path or DEFAULT_PATH
    try:
        # "r+" never creates: the default path is written only where the kubelet mounted it.
        with open(target, "w" if path else "r+") as handle:
            handle.truncate()
            handle.write(message)
    except OSError:
        return None
    return target


def record_ending(
    exit_code: int, report: str, path: Optional[str], log: logging.Logger
) -> Optional[str]:
    """For an ending Kubernetes should hear about, write the message and log where."""
    if exit_code not in ENDINGS or not report:
        return None
    message = termination_message(report)
    written = write_termination_message(message, path)
    if written is not None:
        log.warning("termination message written to %s: %s", written, message)
    return written
