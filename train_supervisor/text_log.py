"""The text log lines of train-launch and train-supervisor: a UTC timestamp first.

    2026-11-23T18:07:33.123Z [train-launch] WARNING rank 1 failed ...

Shared by the launcher (inside training images) and the sidecar, so it lives here, with no
dependency beyond the standard library. SUPERVISOR_LOG_FORMAT=json replaces these lines with
supervisor/outputs/logs.py's JSON objects, which carry the same time.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone


def iso_utc(time_unix: float) -> str:
    """2026-11-23T18:00:01.123Z"""
    moment = datetime.fromtimestamp(time_unix, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """`<UTC time> [<program>] <LEVEL> <message>` (and a traceback on the lines after)."""

    def __init__(self, program: str) -> None:
        super().__init__(f"[{program}] %(levelname)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_utc(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return f"{self.formatTime(record)} {super().formatMessage(record)}"


def log_text_to_stderr(program: str) -> None:
    """The root logger writes INFO and up to stderr as TextFormatter lines (once per process,
    like logging.basicConfig: a root logger with handlers is left as it is)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(TextFormatter(program))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
