"""Replication and persistence settings: SUPERVISOR_DURABLE_DIR and friends (pure).

Read by `train-supervisor serve` and by `train-launch --standalone`, whose
embedded supervisor persists the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from supervisor.settings.env_values import (
    ConfigError,
    Source,
    Variable,
    bad_value,
    boolean,
    integer,
    number,
    seconds,
)

MB = 1_000_000

# Environment only, no flags.
OFFLOAD_VARIABLES = (
    Variable(
        "SUPERVISOR_DURABLE_DIR",
        "",
        "durable directory (a PVC) for persisted steps, an absolute path (unset: no persistence)",
    ),
    Variable("SUPERVISOR_PERSIST_EVERY_STEPS", "", "persist every K committed steps (0: off)", "0"),
    Variable("SUPERVISOR_PERSIST_EVERY_S", "", "persist every T seconds (0: off)", "300"),
    Variable("SUPERVISOR_PERSIST_KEEP", "", "persisted steps kept; older ones are deleted", "3"),
    Variable("SUPERVISOR_PERSIST_MAX_MBPS", "", "persistence bandwidth cap, MB/s (0: no cap)", "0"),
    Variable(
        "SUPERVISOR_REPLICATE",
        "",
        "1: keep a replica of this pod's committed step in the next pod's memory; 0: none",
        "1",
    ),
    Variable("SUPERVISOR_REPLICA_MAX_MBPS", "", "replication bandwidth cap, MB/s (0: no cap)", "0"),
)


@dataclass(frozen=True)
class OffloadConfig:
    durable_dir: Optional[Path] = None
    persist_every_steps: int = 0
    persist_every_s: float = 300.0
    persist_keep: int = 3
    persist_bytes_per_s: float = 0.0  # 0: no cap
    replicate: bool = True  # only meaningful with more than one pod
    replica_bytes_per_s: float = 0.0


def parse_offload(
    env: Mapping[str, str], overrides: Optional[Mapping[str, str]] = None
) -> OffloadConfig:
    src = Source(env, overrides or {}, {})
    durable = None
    found = src.get("SUPERVISOR_DURABLE_DIR")
    if found is not None:
        label, value = found
        durable = Path(value)
        if not durable.is_absolute():
            raise bad_value(label, value, "must be an absolute path")
    every_steps = integer(src, "SUPERVISOR_PERSIST_EVERY_STEPS", 0, 0, 10**12)
    every_s = seconds(src, "SUPERVISOR_PERSIST_EVERY_S", 300.0, allow_zero=True)
    if durable is not None and every_steps == 0 and every_s == 0:
        raise ConfigError(
            "SUPERVISOR_PERSIST_EVERY_STEPS and SUPERVISOR_PERSIST_EVERY_S are both 0 while "
            "SUPERVISOR_DURABLE_DIR is set: nothing would be persisted; set one of them"
        )
    return OffloadConfig(
        durable_dir=durable,
        persist_every_steps=every_steps,
        persist_every_s=every_s,
        persist_keep=integer(src, "SUPERVISOR_PERSIST_KEEP", 3, 1, 1_000_000),
        persist_bytes_per_s=number(src, "SUPERVISOR_PERSIST_MAX_MBPS", 0, "MB/s", True) * MB,
        replicate=boolean(src, "SUPERVISOR_REPLICATE", True),
        replica_bytes_per_s=number(src, "SUPERVISOR_REPLICA_MAX_MBPS", 0, "MB/s", True) * MB,
    )
