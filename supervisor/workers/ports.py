"""Free TCP ports for MASTER_PORT (a fresh one every generation)."""

from __future__ import annotations

import socket


def free_port(host: str = "") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
