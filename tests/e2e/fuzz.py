"""A hostile client: mutated messages for every RPC of every service in the proto.

The RPCs come from the proto's descriptors, so a new RPC is fuzzed without a
change here. Each call picks a token (the job's, a wrong one, none), a body (a
message with hostile field values, its bytes cut short, random bytes, nothing)
and, for streams, drops them early. Paced and bounded in count and time: the
fuzzer shares two cores with the job it attacks. Loopback addresses only.

A caller that presents the token and exactly a live rank's own pid *and* rank
is that rank as far as any server can tell over TCP; the mutations never build
that pair (they give a live rank's pid with another rank instead).
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from train_supervisor.credentials import bearer
from train_supervisor.v1 import supervisor_pb2 as pb

INT32 = (-(1 << 31), (1 << 31) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)
UINT32 = (0, (1 << 32) - 1)
RANGES = {
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_UINT32: UINT32,
    FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1),
}
DROPPED = grpc.StatusCode.CANCELLED  # a stream we dropped ourselves
TOO_BIG = grpc.StatusCode.RESOURCE_EXHAUSTED
# The client's own view of a client stream the server already answered: grpc.aio reports a
# write that raced the server's status as "Internal error from Core" (grpc/grpc#36066).
TRANSPORT_WORDS = ("Internal error from Core", "RST_STREAM", "Stream removed", "Socket closed")
BODIES = ("message", "message", "message", "truncated", "garbage", "empty")
TOKENS = ("good", "good", "wrong", "none")


def every_rpc() -> list[MethodDescriptor]:
    return [m for service in pb.DESCRIPTOR.services_by_name.values() for m in service.methods]


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


@dataclass
class JobFacts:
    """What a hostile caller with the token could learn from status: used to aim the values."""

    run_id: str
    world_size: int
    pids_by_rank: dict[int, int]  # the live ranks' pids
    other_pids: Sequence[int] = ()  # spares, launchers, sidecars


class Mutator:
    def __init__(self, facts: JobFacts, seed: int) -> None:
        self.facts = facts
        self.rng = random.Random(seed)

    def integer(self, kind: int, name: str) -> int:
        low, high = RANGES.get(kind, INT64)
        facts, rng = self.facts, self.rng
        live = list(facts.pids_by_rank.values()) + list(facts.other_pids)
        choices: list[int] = [0, -1, 1, -2, 2, low, high, rng.randint(low, high)]
        if "pid" in name:
            choices += live * 2 + [rng.randint(2, 1 << 22)]
        if "rank" in name or "node" in name:
            choices += [facts.world_size, facts.world_size + 7, -5, *range(facts.world_size)]
        if name in ("generation", "step", "after", "incarnation"):
            choices += [0, 1, 99, 1 << 40]
        value = rng.choice(choices)
        return min(max(value, low), high)

    def text(self, name: str) -> str:
        rng = self.rng
        choices = [
            "",
            "x" * rng.choice((300, 5_000, 70_000)),
            "".join(chr(rng.randint(32, 0x2FF)) for _ in range(rng.randint(1, 40))),
            self.facts.run_id,
            "shm",
            "../../../etc/passwd",
            "\x00\n\r%s%n",
        ]
        return rng.choice(choices)

    def number(self) -> float:
        rng = self.rng
        return rng.choice([0.0, -1.0, 1e308, -1e308, math.nan, math.inf, -math.inf, rng.random()])

    def scalar(self, fd: FieldDescriptor) -> Any:
        if fd.type == FieldDescriptor.TYPE_BOOL:
            return self.rng.random() < 0.5
        if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return self.number()
        if fd.type == FieldDescriptor.TYPE_STRING:
            return self.text(fd.name)
        if fd.type == FieldDescriptor.TYPE_BYTES:
            return self.rng.randbytes(self.rng.choice((0, 7, 300, 5_000)))
        if fd.type == FieldDescriptor.TYPE_ENUM:
            assert fd.enum_type is not None
            top = max(v.number for v in fd.enum_type.values)
            return self.rng.choice([*range(top + 1), top + 1, -1, 1 << 20])
        return self.integer(fd.type, fd.name)

    def message(self, descriptor: Descriptor, depth: int = 0) -> Message:
        msg = message_factory.GetMessageClass(descriptor)()
        for fd in descriptor.fields:
            if self.rng.random() < 0.35:
                continue  # left unset
            self._fill(msg, fd, depth)
        return msg

    def _fill(self, msg: Message, fd: FieldDescriptor, depth: int) -> None:
        rng = self.rng
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            entries = getattr(msg, fd.name)
            value_fd = fd.message_type.fields_by_name["value"]
            for _ in range(rng.choice((0, 1, 3, 50))):
                entries[self.text("key")[:300]] = self.scalar(value_fd)
            return
        if fd.is_repeated:
            items = getattr(msg, fd.name)
            for _ in range(rng.choice((0, 1, 2, 3, 200))):
                if fd.message_type is not None:
                    if depth < 3:
                        items.add().CopyFrom(self.message(fd.message_type, depth + 1))
                else:
                    items.append(self.scalar(fd))
            return
        if fd.message_type is not None:
            if depth < 3:
                getattr(msg, fd.name).CopyFrom(self.message(fd.message_type, depth + 1))
            return
        setattr(msg, fd.name, self.scalar(fd))

    def never_impersonate(self, msg: Any) -> None:
        """A live rank's pid goes with another rank, never its own (see the module's note)."""
        fields = msg.DESCRIPTOR.fields_by_name
        if "pid" not in fields or "rank" not in fields:
            return
        pid, rank = msg.pid, msg.rank
        if self.facts.pids_by_rank.get(rank) == pid:
            msg.rank = (rank + 1) % self.facts.world_size

    def body(self, method: MethodDescriptor) -> tuple[str, bytes]:
        kind = self.rng.choice(BODIES)
        if kind == "empty":
            return kind, b""
        if kind == "garbage":
            return kind, self.rng.randbytes(self.rng.choice((1, 5, 64, 3_000)))
        msg = self.message(method.input_type)
        self.never_impersonate(msg)
        data = msg.SerializeToString()
        if kind == "truncated" and len(data) > 1:
            return kind, data[: self.rng.randrange(1, len(data))]
        return kind, data


@dataclass
class Tally:
    sent: int = 0
    by_code: collections.Counter[str] = field(default_factory=collections.Counter)
    by_rpc: collections.Counter[str] = field(default_factory=collections.Counter)
    by_token: collections.Counter[str] = field(default_factory=collections.Counter)
    # Calls without the job token answered other than UNAUTHENTICATED (loopback status aside;
    # UNIMPLEMENTED: the method is not served there; CANCELLED: dropped by us before an answer).
    unauthenticated_ok: int = 0
    odd: collections.Counter[str] = field(default_factory=collections.Counter)  # to look into
    # A server failure: UNKNOWN, or INTERNAL that is not the transport resetting a client
    # stream the server had already answered (a race of the client's writes with the answer).
    server_errors: int = 0
    transport_resets: int = 0
    elapsed_s: float = 0.0


async def _requests(bodies: Sequence[bytes]) -> AsyncIterator[bytes]:
    for body in bodies:
        yield body


async def one_call(
    channel: grpc.aio.Channel, method: MethodDescriptor, bodies: Sequence[bytes], metadata: Any,
    drop_after: Optional[int],
) -> tuple[grpc.StatusCode, str]:  # fmt: skip
    """Send raw `bodies`; a response stream is dropped after `drop_after` messages."""
    path = path_of(method)
    timeout = 3.0
    maker: Any
    try:
        if method.client_streaming:
            maker = channel.stream_stream if method.server_streaming else channel.stream_unary
            call: Any = maker(path)(_requests(bodies), metadata=metadata, timeout=timeout)
        else:
            maker = channel.unary_stream if method.server_streaming else channel.unary_unary
            call = maker(path)(bodies[0], metadata=metadata, timeout=timeout)
        if not method.server_streaming:
            await call
            return grpc.StatusCode.OK, ""
        if drop_after == 0:  # opened and dropped at once
            call.cancel()
            return DROPPED, ""
        received = 0
        async for _ in call:
            received += 1
            if drop_after is not None and received >= drop_after:
                call.cancel()
                return DROPPED, ""
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    except asyncio.CancelledError:
        return DROPPED, ""


async def fuzz(
    addresses: Sequence[str],
    token: str,
    facts: JobFacts,
    *,
    count: int,
    time_limit_s: float,
    rate: float,
    in_flight: int = 16,
    seed: int = 7,
    keep_going: Optional[Any] = None,
) -> Tally:
    """`count` calls at `rate` a second, spread over every RPC and every address.

    Stops early at `time_limit_s`, or when `keep_going()` turns false (the job ended).
    """
    mutator = Mutator(facts, seed)
    rng = mutator.rng
    rpcs = every_rpc()
    tally = Tally()
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    limit = asyncio.Semaphore(in_flight)
    tasks: set[asyncio.Task[None]] = set()
    began = time.monotonic()

    async def send(index: int) -> None:
        method = rpcs[index % len(rpcs)]
        token_kind = rng.choice(TOKENS)
        metadata = {
            "good": (("authorization", bearer(token)),),
            "wrong": (("authorization", bearer(token[::-1] + "x")),),
            "none": (),
        }[token_kind]
        streams = method.client_streaming
        bodies = [mutator.body(method)[1] for _ in range(rng.randint(1, 3) if streams else 1)]
        drop_after = rng.choice((0, 1, None)) if method.server_streaming else None
        channel = channels[index // len(rpcs) % len(channels)]
        try:
            code, details = await one_call(channel, method, bodies, metadata, drop_after)
        finally:
            limit.release()
        tally.by_code[code.name] += 1
        tally.by_rpc[path_of(method)] += 1
        tally.by_token[token_kind] += 1
        open_to_loopback = method.containing_service.name == "StatusService"
        needs_token = not open_to_loopback or token_kind == "wrong"
        # RESOURCE_EXHAUSTED: gRPC's own refusal of a message over the size limit, before any
        # interceptor runs.
        refused = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED, TOO_BIG)
        reset = code == grpc.StatusCode.INTERNAL and method.client_streaming
        reset = reset and any(word in details for word in TRANSPORT_WORDS)
        odd = f"{path_of(method)} {token_kind} token: {code.name} {details[:80]}"
        if reset:
            tally.transport_resets += 1
            tally.odd[odd] += 1
        elif code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            tally.server_errors += 1
            tally.odd[odd] += 1
        elif token_kind != "good" and needs_token and code not in (*refused, DROPPED):
            tally.unauthenticated_ok += 1
            tally.odd[odd] += 1

    try:
        for index in range(count):
            due = began + index / rate
            now = time.monotonic()
            if now - began > time_limit_s or (keep_going is not None and not keep_going()):
                break
            if due > now:
                await asyncio.sleep(due - now)
            await limit.acquire()
            task = asyncio.get_running_loop().create_task(send(index))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            tally.sent += 1
        if tasks:
            await asyncio.wait(tasks, timeout=15)
    finally:
        for channel in channels:
            await channel.close(None)
    tally.elapsed_s = time.monotonic() - began
    return tally


# ------------------------------------------------------------------ the gate: a job under fire

FAULT_MARKS = (
    "failure:", "spare_promoted", "respawn", "unwind_timeout", "gave_up", "replace_pod",
    "spare_lost", "hang_suspected", "stream lost", "no longer counts this pod", "Traceback",
)  # fmt: skip


@dataclass
class GateResult:
    tally: Tally
    reference_exit: int
    exits: list[int]
    state_changes: list[str]  # what moved in the job (goal: none)
    mismatched_states: int  # (rank, step) states unlike the untouched run's
    compared_states: int
    sidecar_log_bytes: list[int]
    launcher_log_bytes: list[int]
    logs: str


def _states(records: list[dict[str, Any]]) -> dict[tuple[int, int], str]:
    return {(e["rank"], e["step"]): e["state"] for e in records if e["event"] == "step"}


class StateWatch:
    """Polls the leader's job-wide status; notes every change a fuzzed call could have made."""

    def __init__(self, address: str, token: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.metadata = (("authorization", bearer(token)),)
        self.first: Optional[pb.JobStatus] = None
        self.changes: dict[str, None] = {}  # ordered, deduplicated

    async def status(self) -> pb.JobStatus:
        from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

        stub = pb_grpc.StatusServiceStub(self.channel)
        status: pb.JobStatus = await stub.GetStatus(
            pb.GetStatusRequest(), metadata=self.metadata, timeout=10
        )
        return status

    async def running(self, world: int, limit_s: float) -> pb.JobStatus:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                status = await self.status()
            except grpc.aio.AioRpcError:
                status = None
            healthy = pb.WorkerState.WORKER_STATE_HEALTHY
            ranks = [] if status is None else list(status.ranks)
            steady = all(r.state == healthy and r.step > 0 for r in ranks)
            if status is not None and len(ranks) == world and steady:
                self.first = status
                return status
            await asyncio.sleep(0.5)
        raise AssertionError(
            f"the job was not running on {world} ranks within {limit_s}s: {status}"
        )

    async def check(self) -> None:
        assert self.first is not None
        try:
            now = await self.status()
        except grpc.aio.AioRpcError as err:
            self.changes[f"status unavailable: {err.code().name}"] = None
            return
        if now.generation != self.first.generation or now.restart_count:
            self.changes[f"generation {now.generation}, restarts {now.restart_count}"] = None
        pids = {r.rank: r.pid for r in self.first.ranks}
        for rank in now.ranks:
            if (
                rank.pid != pids.get(rank.rank)
                and rank.state != pb.WorkerState.WORKER_STATE_STOPPED
            ):
                self.changes[f"rank {rank.rank}: pid {pids.get(rank.rank)} -> {rank.pid}"] = None
        if now.last_failure.time_unix:
            self.changes[f"failure recorded: rank {now.last_failure.rank}"] = None

    async def close(self) -> None:
        await self.channel.close(None)


def run_gate(
    work: Path, shm: Path, *, count: int, rate: float, steps: int, step_sleep_s: float,
    time_limit_s: float,
) -> GateResult:  # fmt: skip
    """An untouched run, then the same job on two pods under `count` hostile calls."""
    from jobs import job_env, read_events, train_launch
    from pods import TOKEN, Pods

    script = ["--steps", str(steps), "--snapshot", "--trace-state"]
    reference = train_launch(
        ["--standalone", "--nproc-per-node", "4", "--max-restarts", "0"],
        [*script, "--events", str(work / "reference")],
        env=job_env(TRAIN_SUPERVISOR_SNAPSHOT_DIR=str(shm / "reference")),
    )
    reference_exit = reference.wait(300)
    expected = _states(read_events(work / "reference"))
    events = work / "fuzzed"
    pods = Pods(nnodes=2, launcher_env={"TRAIN_SUPERVISOR_SNAPSHOT_DIR": str(shm / "pods")})
    try:
        pods.start_launchers([*script, "--events", str(events), "--step-sleep", str(step_sleep_s)])
        addresses = [f"127.0.0.1:{port}" for port in pods.ports]

        def job_runs() -> bool:
            return all(launcher.proc.poll() is None for launcher in pods.launchers)

        async def attack() -> tuple[Tally, list[str]]:
            watch = StateWatch(addresses[0], TOKEN)
            try:
                first = await watch.running(4, 180)
                facts = JobFacts(
                    run_id=first.run_id,
                    world_size=first.world_size,
                    pids_by_rank={r.rank: r.pid for r in first.ranks},
                    other_pids=[
                        *first.spare_pids,
                        *(job.proc.pid for job in (*pods.launchers, *pods.sidecars)),
                    ],
                )
                fuzzing = asyncio.get_running_loop().create_task(
                    fuzz(
                        addresses,
                        TOKEN,
                        facts,
                        count=count,
                        time_limit_s=time_limit_s,
                        rate=rate,
                        keep_going=job_runs,
                    )
                )
                while not fuzzing.done():
                    await watch.check()
                    await asyncio.wait({fuzzing}, timeout=1.0)
                await watch.check()
                return fuzzing.result(), list(watch.changes)
            finally:
                await watch.close()

        tally, changes = asyncio.run(attack())
        exits = [launcher.wait(300) for launcher in pods.launchers]
    finally:
        pods.stop()
    records = read_events(events)
    got = _states(records)
    mismatched = sum(1 for key, state in got.items() if expected.get(key) != state)
    mismatched += len(set(expected) - set(got))  # steps the fuzzed run never reached
    restarts = sorted({e["gen"] for e in records if e["event"] == "start" and e["gen"]})
    changes += [f"generation {g} started" for g in restarts]
    logs = pods.logs()
    sidecar_logs = [job.stderr for job in pods.sidecars]
    changes += [
        f"sidecar log: {mark!r}" for mark in FAULT_MARKS if any(mark in s for s in sidecar_logs)
    ]
    return GateResult(
        tally=tally,
        reference_exit=reference_exit,
        exits=exits,
        state_changes=changes,
        mismatched_states=mismatched,
        compared_states=len(expected),
        sidecar_log_bytes=[len(s.encode()) for s in sidecar_logs],
        launcher_log_bytes=[len(job.stderr.encode()) for job in pods.launchers],
        logs=logs,
    )
