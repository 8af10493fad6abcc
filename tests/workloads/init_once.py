"""Process-wide state that refuses a second initialization, as megatron-core's
parallel_state does ("data parallel group is already initialized"): a module the
script imports, so it outlives a re-entry in place."""

from __future__ import annotations

_INITIALIZED = {"done": False}


def initialize() -> None:
    assert not _INITIALIZED["done"], "data parallel group is already initialized"
    _INITIALIZED["done"] = True
