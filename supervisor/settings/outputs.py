"""What the supervisor puts out besides gRPC: SUPERVISOR_METRICS_PORT, SUPERVISOR_LOG_FORMAT (pure).

Read by `train-supervisor serve` (where --metrics-port/--log-format override
them) and by `train-launch --standalone`, whose embedded supervisor serves
/metrics and logs the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from supervisor.settings.env_values import Source, Variable, bad_value, integer

METRICS_PORT_ENV = "SUPERVISOR_METRICS_PORT"
LOG_FORMAT_ENV = "SUPERVISOR_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
# In supervisor/settings/serve.py's VARIABLES too: the flags are `serve`'s.
OUTPUTS_VARIABLES = (
    Variable(
        METRICS_PORT_ENV,
        "--metrics-port",
        "serve Prometheus /metrics on this port (0: off), at SUPERVISOR_BIND's address "
        "(train-launch --standalone: every interface)",
        "0",
    ),
    Variable(LOG_FORMAT_ENV, "--log-format", "text, or json: one JSON object per log line", "text"),
)


@dataclass(frozen=True)
class OutputsConfig:
    metrics_port: int = 0  # 0: no /metrics (many supervisors may share a host)
    log_format: str = "text"


def _log_format(src: Source) -> str:
    found = src.get(LOG_FORMAT_ENV)
    if found is None:
        return "text"
    label, value = found
    if value.strip().lower() not in LOG_FORMATS:
        raise bad_value(label, value, "must be text or json")
    return value.strip().lower()


def parse_outputs(src: Source) -> OutputsConfig:
    return OutputsConfig(
        metrics_port=integer(src, METRICS_PORT_ENV, 0, 0, 65535),
        log_format=_log_format(src),
    )


def outputs_from_env(env: Mapping[str, str]) -> OutputsConfig:
    """For train-launch --standalone: the environment only, no flags."""
    return parse_outputs(Source(env, {}, {}))
