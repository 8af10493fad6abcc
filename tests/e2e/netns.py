"""Two network namespaces joined by a veth pair: two "hosts" whose link can be cut.

Needs root and iproute2 (`ip netns`). Each namespace gets its loopback up and
one end of the pair, 10.<n>.0.1/24 and 10.<n>.0.2/24.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def unavailable() -> str:
    """Why namespaces cannot be made here ('' when they can)."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return ""


@dataclass(frozen=True)
class Host:
    namespace: str
    interface: str
    address: str

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def set_link(self, up: bool) -> None:
        """Down: every packet to or from this host is dropped, as a cut cable."""
        _ip("-n", self.namespace, "link", "set", self.interface, "up" if up else "down")


class HostPair:
    def __init__(self, tag: str) -> None:
        subnet = 100 + os.getpid() % 100  # apart from concurrent runs on one machine
        self.hosts = tuple(
            Host(f"ts-{tag}-{os.getpid()}-{i}", f"veth{i}", f"10.{subnet}.0.{i + 1}")
            for i in range(2)
        )
        a, b = self.hosts
        try:
            for host in self.hosts:
                _ip("netns", "add", host.namespace)
                _ip("-n", host.namespace, "link", "set", "lo", "up")
            _ip("link", "add", a.interface, "netns", a.namespace,
                "type", "veth", "peer", "name", b.interface, "netns", b.namespace)  # fmt: skip
            for host in self.hosts:
                _ip(
                    "-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", host.interface
                )
                host.set_link(up=True)
        except subprocess.CalledProcessError as err:
            self.delete()
            raise RuntimeError(f"cannot make namespaces: {err.stderr.strip()}") from None

    def delete(self) -> None:
        for host in self.hosts:  # deleting a namespace deletes its end of the pair, and so both
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True, timeout=30)
