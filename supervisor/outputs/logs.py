"""The supervisor's JSON log lines (SUPERVISOR_LOG_FORMAT=json, supervisor/settings/outputs.py).

One object per line: time, level, logger, message, and for job events
kind/seq/node_rank, for log pipelines that index fields instead of parsing
text. `use_log_format` sets the root handlers' formatter, which is global by
nature (Python's logging is).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from train_supervisor.text_log import iso_utc

# A job event's fields, passed as `extra=` by Supervisor._log_new_events.
EVENT_FIELDS = ("kind", "seq", "node_rank")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def use_log_format(name: str) -> None:
    """json: every root handler writes JsonFormatter lines; text: leave them as they are."""
    if name == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
