"""Wait for the generation's TCPStore to listen before the script connects to it.

Rank 0 hosts the store of `init_process_group("...", init_method="env://")` on
MASTER_ADDR:MASTER_PORT (a fresh port every generation). A torch TCPStore client
that is refused because rank 0 has not opened it yet backs off for up to about
a second before it retries. After a failure every rank (re-)enters the script
at the same moment, so that backoff was most of the process group's set-up in
a recovery (0.57 s of it on 2 cores). Connecting here first, every few
milliseconds, lets the script's own connect succeed at once.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import Optional

# A script that never opens a process group must not wait long for one.
STORE_WAIT_S = 3.0
POLL_S = 0.005


def store_endpoint(env: Mapping[str, str]) -> Optional[tuple[str, int]]:
    """Where this rank's script will look for the store; None where it hosts it or needs none."""
    try:
        rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
        port = int(env.get("MASTER_PORT", "0"))
    except ValueError:
        return None  # torch reports a bad variable to the script itself
    host = env.get("MASTER_ADDR", "")
    if rank == 0 or world <= 1 or not host or not 0 < port < 2**16:
        return None
    return host, port


def wait_until_listening(endpoint: tuple[str, int], timeout_s: float = STORE_WAIT_S) -> bool:
    """True once `endpoint` accepts a connection; False after `timeout_s` without one."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            socket.create_connection(endpoint, timeout=max(POLL_S, left)).close()
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(POLL_S)
