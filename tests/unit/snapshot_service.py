"""A SnapshotService on loopback for tests of the worker API (launcher/worker/snapshot.py): it
records each ReportSaved and answers it as a one-rank job would (the step is committed), except
that it can hold the answers of one generation, as the real one holds them until a commit."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import grpc

from launcher.launch.processes import SCRIPT_ADDRESS_ENV, SCRIPT_GENERATION_ENV
from supervisor.workers.ports import free_port
from train_supervisor.arena import SNAPSHOT_DIR_ENV
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc


class CommittingSupervisor(pb_grpc.SnapshotServiceServicer):
    """Commits every reported step; `hold` keeps the answer to one generation's reports."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, int]] = []  # (generation, step)
        self.hold_generation = -1
        self.release = threading.Event()
        self.holding = threading.Event()
        self.reported = threading.Condition()

    def wait_for_report(self, generation: int, step: int) -> bool:
        with self.reported:
            return self.reported.wait_for(lambda: (generation, step) in self.reports, 30)

    def ReportSaved(self, request: pb.SnapshotSaved, context: Any) -> pb.CommitReply:
        with self.reported:
            self.reports.append((request.generation, request.step))
            self.reported.notify_all()
        if request.generation == self.hold_generation:
            self.holding.set()
            self.release.wait(30)
            return pb.CommitReply(committed_step=-1)  # its generation ended meanwhile
        return pb.CommitReply(committed_step=request.step)


@contextmanager
def on_loopback(register: Callable[[grpc.Server], None]) -> Iterator[str]:
    """A gRPC server on 127.0.0.1 with the servicers `register` adds; yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    register(server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    server.start()
    try:
        yield address
    finally:
        server.stop(grace=None)


@contextmanager
def serve_snapshots() -> Iterator[tuple[str, CommittingSupervisor]]:
    servicer = CommittingSupervisor()
    register = partial(pb_grpc.add_SnapshotServiceServicer_to_server, servicer)
    with on_loopback(register) as address:
        try:
            yield address, servicer
        finally:
            servicer.release.set()  # before the server stops: no handler waits on it


def rank0_env(address: str, snapshot_dir: Path) -> dict[str, str]:
    """What the launcher gives rank 0's script in generation 0."""
    return {
        "RANK": "0",
        "TORCHELASTIC_RUN_ID": "writer-test",
        SCRIPT_ADDRESS_ENV: address,
        SCRIPT_GENERATION_ENV: "0",
        SNAPSHOT_DIR_ENV: str(snapshot_dir),
    }
