"""The values the multi-pod leader trades in: messages to pods, what pods give back, status.

Plain frozen dataclasses, no protobuf: the leader's rules (supervisor/leader.py)
are tested alone, and the gRPC layer maps these to and from the wire.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional, Union

from supervisor.offload_rounds import OffloadRound
from supervisor.restart_policy import Failure

#: Signature of the Failure recorded when a pod is lost (stream loss, heartbeat
#: timeout, re-join of a live pod, or the leader's own pod replaced). It spends
#: a restart but never makes a crash loop: see policy_history.
POD_LOST = "pod lost"


def policy_history(history: Iterable[Failure]) -> list[Failure]:
    """What the restart policy decides on: every failure, the context kept after a
    generation's first one included (when every rank hits one bug the first to report it
    varies; the crash-loop rule counts a rank's failures once per generation).

    Lost pods appear with the signature "" (nothing known about the error): they
    spend the budget but neither make nor continue a crash loop.
    """
    return [dataclasses.replace(f, signature="") if f.signature == POD_LOST else f for f in history]


def give_up_report(
    reason: str, node: int, failure: Failure, restarts_used: int, max_restarts: int
) -> str:
    """The report of a job the leader gives up: why, where, the failure's class and evidence."""
    lost = failure.signature == POD_LOST
    classified = failure.failure_class
    found = f"  class: {classified} ({failure.reason})\n" if classified else ""
    return (
        f"job given up: {reason}\n"
        f"  rank: {failure.rank}\n"
        f"  node: {node}\n"
        f"  step: {'unknown' if lost else failure.step}\n"
        f"  error: {failure.signature or 'unknown'}\n"
        f"{found}"
        f"  generation: {failure.generation}; restarts used: {restarts_used} of {max_restarts}"
    )


class Phase(enum.Enum):
    # Waiting for every pod to join. A leader cannot tell a fresh job from its
    # own replacement until the pods answer, so both start here: with no view
    # given back the job is new, otherwise it is rebuilt from the views.
    FORMING = "forming"
    OPEN = "open"  # a generation is open: pods unwind, the leader waits for every "ready"
    RUNNING = "running"  # StartGeneration was sent; the generation trains
    ENDED = "ended"  # EndJob was sent; nothing changes any more


@dataclass(frozen=True)
class LeaderTimings:
    # A pod silent for longer than this is lost. Well under the NCCL/gloo
    # timeouts, well over a heartbeat period plus a GC pause.
    heartbeat_timeout_s: float = 10.0
    # A pod whose stream broke while its ranks train (its supervisor restarts) is kept this
    # long for its re-join. A pod that really died is lost at once all the same: its peers'
    # collectives break, which the other pods report (LeaderState.collective_broke).
    rejoin_grace_s: float = 60.0


# ----------------------------------------------------------------- messages
# Every message carries the generation, the restart count and the history so
# that a follower always holds what a replacement leader will need from it.
# Messages are idempotent: a pod applies a generation's Open or Start once and
# ignores repeats (a re-joining pod may get one twice).


@dataclass(frozen=True)
class OpenGeneration:
    """Abort what runs, unwind every local rank, report ready for `generation`."""

    generation: int
    restart_count: int
    reason: str
    history: tuple[Failure, ...] = ()
    # Not empty: survivors get fresh processes from this generation on, and why.
    fresh_processes: str = ""


@dataclass(frozen=True)
class StartGeneration:
    """Every pod is ready: run the script with this generation's environment."""

    generation: int
    restart_count: int
    master_addr: str
    master_port: int  # fresh for each generation: no rank ever meets a stale store
    world_size: int
    nnodes: int
    history: tuple[Failure, ...] = ()
    restore_step: int = -1  # the committed snapshot every rank restores; -1: none
    restore_reason: str = ""  # which pods have it where


@dataclass(frozen=True)
class CommitStep:
    """Every pod holds snapshot `step`: ranks may now overwrite their older slot."""

    generation: int
    step: int
    offload: Optional[OffloadRound] = None  # a round every pod runs now
    replicated: int = -1  # newest step every pod's replica holds
    persisted: int = -1  # newest step every pod persisted
    drop_persisted: tuple[int, ...] = ()  # steps not every pod persisted: parts to delete
    # A pod is away (its supervisor restarts): no commit comes until it is back, so the
    # ranks must not wait for one (they would stall training); cleared by the next CommitStep.
    pod_away: bool = False


@dataclass(frozen=True)
class EndJob:
    """The job is over: exit with this code (train_supervisor.exit_codes)."""

    exit_code: int
    report: str


Message = Union[OpenGeneration, StartGeneration, CommitStep, EndJob]


@dataclass(frozen=True)
class Broadcast:
    target: Optional[int]  # node_rank of one pod, or None: every connected pod
    message: Message


# -------------------------------------------------------- what pods give back
@dataclass(frozen=True)
class PodView:
    """What a follower keeps from the leader's messages, and gives back to a new leader."""

    generation: int
    restart_count: int
    history: tuple[Failure, ...]
    finished: bool = False  # this pod's ranks all finished `generation`
    fresh_processes: str = ""  # as the last Open said
    # Its ranks run `generation` now, unharmed (the pod's supervisor restarted under them).
    running: bool = False


def follow(view: Optional[PodView], message: Message) -> Optional[PodView]:
    """The view a follower holds after `message` (keep it; send it with a re-join).

    An out-of-order message of an older generation changes nothing. The
    follower sets `finished` itself (dataclasses.replace) once its ranks end.
    """
    if isinstance(message, (EndJob, CommitStep)):
        return view
    if view is not None and message.generation < view.generation:
        return view
    same = view is not None and view.generation == message.generation
    # A repeated Start keeps what the pod did since; an Open always starts over.
    finished = same and view is not None and view.finished
    finished = finished and isinstance(message, StartGeneration)
    fresh = view.fresh_processes if view is not None else ""
    if isinstance(message, OpenGeneration):
        fresh = message.fresh_processes or fresh
    return PodView(message.generation, message.restart_count, message.history, finished, fresh)


def mark_finished(view: PodView) -> PodView:
    return dataclasses.replace(view, finished=True)


# -------------------------------------------------------------------- status
@dataclass(frozen=True)
class MemberView:
    node_rank: int
    first_rank: int  # ranks first_rank .. first_rank + nproc - 1, stable across generations
    nproc: int
    ready: bool  # for the open generation
    finished: bool  # the running generation
    heartbeat_age_s: float


@dataclass(frozen=True)
class JobView:
    phase: Phase
    generation: int
    restart_count: int
    max_restarts: int
    history: tuple[Failure, ...]
    leader_address: str
    master_addr: str
    master_port: int  # 0 while no generation runs
    world_size: int
    members: tuple[MemberView, ...]  # by node rank
    missing: tuple[int, ...]  # node ranks not joined (lost, or not there yet)
    end: Optional[EndJob]
