"""Runs one pod's offload rounds and restores off the event loop, and keeps their outcome.

The Offloader (supervisor/snapshots/offload.py) does the copying on one worker thread;
this adapter decides nothing itself: a single-pod job's rounds come from its
OffloadRounds (supervisor/snapshots/rounds.py), a larger job's from the leader.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import grpc

from supervisor.rpc.peer_wire import copies_to_wire
from supervisor.rules.job import JobState
from supervisor.settings.snapshots import OffloadConfig
from supervisor.snapshots.offload import Materialized, Offloader, RoundResult
from supervisor.snapshots.restore import NodeCopies, RestoreChoice, choose_restore
from supervisor.snapshots.rounds import OffloadRound, OffloadRounds
from supervisor.snapshots.store import PersistentStore, SnapshotStore
from train_supervisor.credentials import client_channel
from train_supervisor.steps import NO_STEP
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

log = logging.getLogger("train_supervisor")


@dataclass(frozen=True)
class ReplicaTarget:
    """The next pod's supervisor, which keeps this pod's replica."""

    address: str
    token: Optional[str]
    tls_ca: Optional[bytes] = None


class OffloadDriver:
    def __init__(
        self,
        job: JobState,
        config: OffloadConfig,
        target: Optional[ReplicaTarget],
        on_change: Callable[[], None],
        to_leader: Callable[[pb.PodReport], None] = lambda report: None,
        replicate_to: Sequence[SnapshotStore] = (),
        persist_to: Sequence[PersistentStore] = (),
    ) -> None:
        """replicate_to, persist_to: stores beyond the peer and the durable directory."""
        spec = job.spec
        self.job = job
        self.on_change = on_change  # wakes waiters, logs new events
        self.to_leader = to_leader  # a job of several pods: the leader runs the rounds
        first = spec.node_rank * spec.nproc_per_node
        self._channel: Optional[grpc.Channel] = None
        self.target = target if config.replicate else None
        self.offloader = Offloader(
            spec.run_id,
            spec.node_rank,
            range(first, first + spec.nproc_per_node),
            Path(spec.snapshot_dir),
            config,
            holder=self._holder if self.target is not None else None,
            replicate_to=replicate_to,
            persist_to=persist_to,
        )
        self.rounds = OffloadRounds(
            replicate=bool(self.offloader.replicate_to),
            persist=bool(self.offloader.persist_to),
            every_steps=config.persist_every_steps,
            every_s=config.persist_every_s,
        )
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="offload")
        self.persist_failures: collections.Counter[str] = collections.Counter()  # by reason
        self._tasks: set[asyncio.Task[None]] = set()
        self._generation = job.generation
        self._preparing: Optional[asyncio.Task[object]] = None  # held: a task must be referenced

    def _holder(self) -> pb_grpc.ReplicaServiceStub:
        assert self.target is not None
        if self._channel is None:
            t = self.target
            self._channel = client_channel(t.address, t.token, tls_ca=t.tls_ca)
        return pb_grpc.ReplicaServiceStub(self._channel)

    async def _in_thread(self, call: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    # -------------------------------------------------------------- rounds
    def committed(self, step: int) -> None:
        """Single pod: a step was committed; start a round if one is due."""
        rnd = self.rounds.next_round(step, time.monotonic())
        if rnd is not None:
            asyncio.get_running_loop().create_task(self._local_round(rnd))

    async def _local_round(self, rnd: OffloadRound) -> None:
        result = await self.run_round(rnd)
        self.rounds.finished(rnd.step, result.replica_error, result.persist_error, time.monotonic())
        if rnd.persist and not result.persist_error:  # one pod: its part is the whole step
            await self._prune_persisted()
        self.on_change()
        self.committed(self.job.snapshots.committed)  # the next step may be due already

    def leader_round(self, commit: pb.CommitMsg) -> None:
        """Several pods: the leader's commit news, maybe with a round to run now."""
        self.rounds.replicated = commit.replicated_step
        advanced = commit.persisted_step > self.rounds.persisted
        self.rounds.persisted = commit.persisted_step
        # On the offload thread, in order with the rounds: drop what no pod can restore,
        # then prune only once a newer step is complete on every pod.
        if commit.drop_persisted:
            self._soon(self._drop_persisted(list(commit.drop_persisted)))
        if advanced:
            self._soon(self._prune_persisted())
        if commit.HasField("offload"):
            o = commit.offload
            self._soon(self._pod_round(OffloadRound(o.step, o.replicate, o.persist)))

    def _soon(self, work: Coroutine[object, object, None]) -> None:
        """Run `work` as a task, held until it ends (the loop keeps only weak references).
        Tasks start in the order made, so their offload-thread jobs queue in that order."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drop_persisted(self, steps: list[int]) -> None:
        dropped = await self._in_thread(self.offloader.drop_persisted, steps)
        if dropped:
            self.job.record(
                "persist_dropped", f"steps {dropped}: not every pod could persist its part"
            )
            self.on_change()

    async def _prune_persisted(self) -> None:
        try:
            await self._in_thread(self.offloader.prune_persisted)
        except OSError as err:  # e.g. EIO on the durable directory: the next prune retries
            self._persist_failed(f"prune: {err}", errno.errorcode.get(err.errno or 0, "other"))
            self.on_change()

    async def _pod_round(self, rnd: OffloadRound) -> None:
        result = await self.run_round(rnd)
        self.rounds.note_errors(rnd, result.replica_error, result.persist_error)  # for status
        done = pb.OffloadDone(
            step=rnd.step, replica_error=result.replica_error, persist_error=result.persist_error
        )
        self.to_leader(pb.PodReport(offloaded=done, copies=copies_to_wire(await self.copies())))

    async def run_round(self, rnd: OffloadRound) -> RoundResult:
        generation = self.job.generation
        # The last round every pod finished stays whole in the staged copies.
        self.offloader.kept = self.rounds.replicated
        result = await self._in_thread(self.offloader.run_round, rnd, generation)
        assert isinstance(result, RoundResult)
        if result.replica_error:
            self.job.record("replica_error", result.replica_error)
        if result.persist_error:
            self._persist_failed(result.persist_error, result.persist_reason)
        if rnd.persist and not result.persist_error:
            self.job.record(
                "persisted",
                f"step {rnd.step}: {result.bytes / 1e6:.1f} MB in {result.persist_s:.2f}s",
            )
        self.on_change()
        return result

    def _persist_failed(self, error: str, reason: str) -> None:
        """A job event (logged as a WARNING), counted by reason for status and metrics."""
        self.persist_failures[reason or "other"] += 1
        self.job.record("persist_error", error)

    # ------------------------------------------------------------- restore
    def generation_seen(self) -> None:
        """Every generation after the one this driver began in follows a failure: checksum
        this pod's copies of the committed step while the ranks unwind, rather than once they
        ask for it (the restore skips a copy verified since, unchanged)."""
        if self.job.generation <= self._generation:
            return
        self._generation = self.job.generation
        self.offloader.open_generation = self.job.generation  # a round in flight stops
        if self.job.snapshots.committed != NO_STEP:
            verify = self._in_thread(self.offloader.verify_own, self.job.snapshots.committed)
            self._preparing = asyncio.get_running_loop().create_task(verify)

    async def copies(self) -> NodeCopies:
        found = await self._in_thread(self.offloader.copies)
        assert isinstance(found, NodeCopies)
        return found

    async def restore_here(self) -> Materialized:
        """Single pod: choose the step (committed, or the newest persisted) and place it."""
        unusable: set[int] = set()
        node = self.job.spec.node_rank
        while True:
            copies = await self.copies()
            newest = max([self.job.snapshots.committed, *copies.persisted])
            order = [store.name for store in self.offloader.restore_order]
            choice = choose_restore(
                [node], {node: copies}, newest, {node: frozenset(unusable)}, order
            )
            self.job.record("snapshot_restore_choice", choice.why())
            if choice.step == NO_STEP:
                await self._start_from(NO_STEP)
                return Materialized(NO_STEP)
            done = await self.place(choice)
            if done.complete:
                return done
            unusable.add(choice.step)

    async def place(self, choice: RestoreChoice) -> Materialized:
        """Every local rank's copy of `choice.step` into its arena, from the first store of
        the restore order that has it (shm -> peer -> durable)."""
        done = await self._in_thread(self.offloader.materialize, choice.step)
        assert isinstance(done, Materialized)
        for problem in done.problems:
            self.job.record("snapshot_problem", problem)
        if done.complete:
            where = ", ".join(f"rank {r}: {s}" for r, s in sorted(done.sources.items()))
            self.job.record("snapshot_restore", f"step {choice.step} in place ({where})")
            await self._start_from(choice.step)
        else:
            self.job.record(
                "snapshot_fallback", f"step {choice.step} has no usable copy for every rank"
            )
            self.rounds.restart_from(NO_STEP)
        self.on_change()
        return done

    async def _start_from(self, step: int) -> None:
        """The ranks redo every step past `step` with new contents: drop the old copies of
        them, one pod or several alike (else a later restore could take one for a new step)."""
        dropped = await self._in_thread(self.offloader.discard_after, step)
        if dropped:
            self.job.record("snapshot_void", f"past step {step}: {dropped}")
        self.rounds.restart_from(step)

    async def restore_leaders_step(self, step: int, generation: int) -> Materialized:
        """Several pods: put the leader's choice in place, or tell it that it failed here."""
        if step == NO_STEP:
            await self._start_from(NO_STEP)
            return Materialized(NO_STEP)
        done = await self.place(RestoreChoice(step))
        if not done.complete:
            problem = "; ".join(done.problems) or "no copy"
            failed = pb.RestoreFailed(generation=generation, step=step, problem=problem)
            self.to_leader(pb.PodReport(restore_failed=failed))
        return done

    def copies_now(self) -> NodeCopies:
        """On the event loop: header reads only (a few pages per rank)."""
        return self.offloader.copies()

    # ------------------------------------------------------------ shutdown
    async def flush(self) -> None:
        """Persist the newest committed step before exit (SIGTERM), if not persisted yet."""
        step = self.job.snapshots.committed
        if not self.offloader.persist_to or step == NO_STEP or step <= self.rounds.persisted:
            return
        began = time.perf_counter()
        error = await self._in_thread(self.offloader.persist_committed, step, self.job.generation)
        assert isinstance(error, str)
        if error:
            self._persist_failed(f"flush at shutdown: {error}", _reason_in(error))
        else:
            self.rounds.persisted = step
            self.job.record(
                "persisted",
                f"step {step} flushed at shutdown in {time.perf_counter() - began:.2f}s",
            )
            if self.job.spec.nnodes <= 1:  # one pod: its part is the whole step (as a round's)
                await self._prune_persisted()
        self.on_change()

    def status(self, status: pb.JobStatus) -> None:
        status.replicated_step = self.rounds.replicated
        status.persisted_step = self.rounds.persisted
        status.offload_errors.extend(f"{k}: {v}" for k, v in sorted(self.rounds.errors.items()))
        status.persist_failures.update(self.persist_failures)
        for rank in status.ranks:
            rank.replicated_step = self.rounds.replicated
            rank.persisted_step = self.rounds.persisted

    def close(self) -> None:
        self._executor.submit(self.offloader.close)  # on its thread, after what is queued
        self._executor.shutdown(wait=False, cancel_futures=False)
        if self._channel is not None:
            self._channel.close()


def _reason_in(error: str) -> str:
    """The errno name a DurableError's text ends its reason with, e.g. "... (ENOSPC)"."""
    name = error.rpartition("(")[2].rstrip(")")
    return name if name in errno.errorcode.values() else "other"
