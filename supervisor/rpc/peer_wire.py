"""The leader's values (supervisor/rules/leader.py) to and from the wire (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

from supervisor.rules.classify import Action
from supervisor.rules.leader import (
    CommitStep,
    EndJob,
    Message,
    OpenGeneration,
    PodView,
    StartGeneration,
)
from supervisor.rules.restart_policy import Failure
from supervisor.snapshots.restore import NodeCopies
from supervisor.snapshots.rounds import OffloadRound
from train_supervisor.v1 import supervisor_pb2 as pb


def failure_to_wire(failure: Failure) -> pb.PolicyFailure:
    return pb.PolicyFailure(
        generation=failure.generation,
        rank=failure.rank,
        signature=failure.signature,
        step=failure.step,
        failure_class=failure.failure_class,
        action=failure.action.name if failure.action is not None else "",
        reason=failure.reason,
        time_unix=failure.time_s,
        reentry_failed=failure.reentry_failed,
    )


def failure_from_wire(failure: pb.PolicyFailure) -> Failure:
    """An action this version does not know (a newer pod's) reads as none: the policy decides."""
    return Failure(
        failure.generation,
        failure.rank,
        failure.signature,
        failure.step,
        failure_class=failure.failure_class,
        action=Action.__members__.get(failure.action),
        reason=failure.reason,
        time_s=failure.time_unix,
        reentry_failed=failure.reentry_failed,
    )


def _history(history: Iterable[pb.PolicyFailure]) -> tuple[Failure, ...]:
    return tuple(failure_from_wire(f) for f in history)


def message_to_wire(message: Message) -> pb.LeaderMessage:
    if isinstance(message, OpenGeneration):
        return pb.LeaderMessage(
            open=pb.OpenGenerationMsg(
                generation=message.generation,
                restart_count=message.restart_count,
                reason=message.reason,
                history=[failure_to_wire(f) for f in message.history],
                fresh_processes=message.fresh_processes,
            )
        )
    if isinstance(message, StartGeneration):
        return pb.LeaderMessage(
            start=pb.StartGenerationMsg(
                generation=message.generation,
                restart_count=message.restart_count,
                master_addr=message.master_addr,
                master_port=message.master_port,
                world_size=message.world_size,
                nnodes=message.nnodes,
                history=[failure_to_wire(f) for f in message.history],
                restore_step=message.restore_step,
                restore_reason=message.restore_reason,
            )
        )
    if isinstance(message, CommitStep):
        commit = pb.CommitMsg(
            generation=message.generation,
            step=message.step,
            replicated_step=message.replicated,
            persisted_step=message.persisted,
            drop_persisted=message.drop_persisted,
            pod_away=message.pod_away,
            newest_saved=message.newest_saved,
        )
        if message.offload is not None:
            o = message.offload
            commit.offload.CopyFrom(
                pb.OffloadRoundMsg(step=o.step, replicate=o.replicate, persist=o.persist)
            )
        return pb.LeaderMessage(commit=commit)
    return pb.LeaderMessage(end=pb.EndJobMsg(exit_code=message.exit_code, report=message.report))


def message_from_wire(message: pb.LeaderMessage) -> Message:
    kind = message.WhichOneof("message")
    if kind == "open":
        o = message.open
        history = _history(o.history)
        return OpenGeneration(o.generation, o.restart_count, o.reason, history, o.fresh_processes)
    if kind == "start":
        s = message.start
        return StartGeneration(
            s.generation,
            s.restart_count,
            s.master_addr,
            s.master_port,
            s.world_size,
            s.nnodes,
            _history(s.history),
            s.restore_step,
            s.restore_reason,
        )
    if kind == "commit":
        c = message.commit
        offload = None
        if c.HasField("offload"):
            offload = OffloadRound(c.offload.step, c.offload.replicate, c.offload.persist)
        return CommitStep(
            c.generation,
            c.step,
            offload,
            c.replicated_step,
            c.persisted_step,
            tuple(c.drop_persisted),
            c.pod_away,
            c.newest_saved,
        )
    if kind == "end":
        return EndJob(message.end.exit_code, message.end.report)
    raise ValueError("empty LeaderMessage")


def view_to_wire(view: PodView) -> pb.PodView:
    return pb.PodView(
        generation=view.generation,
        restart_count=view.restart_count,
        history=[failure_to_wire(f) for f in view.history],
        finished=view.finished,
        fresh_processes=view.fresh_processes,
    )


def view_from_wire(request: pb.JoinRequest) -> Optional[PodView]:
    if not request.has_view:
        return None
    v = request.view
    history = _history(v.history)
    return PodView(
        v.generation, v.restart_count, history, v.finished, v.fresh_processes, request.running
    )


def copies_to_wire(copies: NodeCopies) -> pb.PodCopies:
    return pb.PodCopies(
        shm=sorted(copies.shm),
        replicas=[
            pb.PodCopies.Replica(node_rank=n, steps=sorted(s))
            for n, s in sorted(copies.replicas.items())
        ],
        persisted=sorted(copies.persisted),
        stored=[
            pb.PodCopies.Stored(name=name, steps=sorted(steps))
            for name, steps in sorted(copies.stored.items())
        ],
        committed=copies.committed,
    )


def copies_from_wire(copies: pb.PodCopies) -> NodeCopies:
    return NodeCopies(
        shm=frozenset(copies.shm),
        replicas={r.node_rank: frozenset(r.steps) for r in copies.replicas},
        persisted=frozenset(copies.persisted),
        stored={s.name: frozenset(s.steps) for s in copies.stored if s.steps},
        committed=copies.committed,
    )
