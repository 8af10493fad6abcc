"""Which TCP connections an aborted generation severs (real sockets on loopback, real processes)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from launcher.worker.unwind import _connections_to_sever, tcp_connections

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sockets() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def listener(stack: ExitStack) -> socket.socket:
    return stack.enter_context(socket.create_server(("127.0.0.1", 0)))


def connect(stack: ExitStack, server: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(client, accepted) of a new connection to `server`."""
    client = stack.enter_context(socket.create_connection(server.getsockname()))
    accepted, _ = server.accept()
    stack.enter_context(accepted)
    return client, accepted


def test_new_and_store_connections_are_severed_the_supervisor_and_older_ones_kept(
    sockets: ExitStack,
) -> None:
    supervisor, store, peer = listener(sockets), listener(sockets), listener(sockets)
    to_supervisor, _ = connect(sockets, supervisor)
    to_store, _ = connect(sockets, store)
    older, older_accepted = connect(sockets, peer)
    before = tcp_connections()
    newer, newer_accepted = connect(sockets, peer)  # opened by the generation: a gloo pair
    severed = set(
        _connections_to_sever(store.getsockname()[1], before, supervisor.getsockname()[1])
    )
    assert {newer.fileno(), newer_accepted.fileno(), to_store.fileno()} <= severed
    assert not severed & {to_supervisor.fileno(), older.fileno(), older_accepted.fileno()}


SIBLING = """
import socket, sys
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
sys.stdin.read()
"""

WORKER = """
import json, socket, sys
from launcher.worker.unwind import _connections_to_sever, tcp_connections
sibling = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
parent = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
before = tcp_connections()  # both connections are older than the generation
fds = _connections_to_sever(0, before, 0)
print(json.dumps({"sibling": sibling.fileno() in fds, "parent": parent.fileno() in fds}))
"""


def test_an_older_connection_to_a_sibling_worker_is_severed_one_to_another_process_kept(
    sockets: ExitStack,
) -> None:
    """The far end's owner is looked up only for connections older than the generation."""
    not_a_sibling = listener(sockets)  # owned by the test process: the workers' parent
    sibling = subprocess.Popen(
        [sys.executable, "-c", SIBLING], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert sibling.stdout is not None
        sibling_port = sibling.stdout.readline().strip()
        worker = subprocess.run(
            [sys.executable, "-c", WORKER, sibling_port, str(not_a_sibling.getsockname()[1])],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        sibling.kill()
        sibling.wait()
    assert worker.returncode == 0, worker.stderr
    assert json.loads(worker.stdout) == {"sibling": True, "parent": False}
