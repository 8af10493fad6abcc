"""The wait for rank 0's TCPStore: which ranks wait, and for what (real sockets on loopback)."""

from __future__ import annotations

import socket
import threading

import pytest

from launcher.worker.store_wait import store_endpoint, wait_until_listening
from supervisor.workers.ports import free_port

GENERATION = {"RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_a_rank_other_than_0_waits_for_the_store_of_rank_0() -> None:
    assert store_endpoint(GENERATION) == ("127.0.0.1", 29500)


@pytest.mark.parametrize(
    "change",
    [
        {"RANK": "0"},  # it hosts the store
        {"WORLD_SIZE": "1"},  # no process group to set up
        {"MASTER_ADDR": ""},
        {"MASTER_PORT": "0"},
        {"MASTER_PORT": "70000"},
        {"MASTER_PORT": "http"},  # torch names the bad variable to the script
    ],
)
def test_no_wait_without_a_store_to_wait_for(change: dict[str, str]) -> None:
    assert store_endpoint({**GENERATION, **change}) is None


def test_the_wait_ends_when_the_store_starts_listening() -> None:
    port = free_port("127.0.0.1")
    answers: list[bool] = []
    waiter = threading.Thread(
        target=lambda: answers.append(wait_until_listening(("127.0.0.1", port), 60))
    )
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not answers, "nothing listens yet: still waiting"
    with socket.create_server(("127.0.0.1", port)):
        waiter.join(30)
        assert answers == [True]


def test_the_wait_gives_up_when_no_store_ever_listens() -> None:
    assert wait_until_listening(("127.0.0.1", free_port("127.0.0.1")), timeout_s=0.1) is False
