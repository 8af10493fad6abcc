"""Every field of every call, checked against the job before it may touch state.

Pure: a request and what the job knows in, a `Refusal` (or None) out. The
servicers call these first and abort with the refusal's code, so a bad call
changes nothing. INVALID_ARGUMENT: the value can never be right (a negative
pid, an unknown enum, an oversized string); FAILED_PRECONDITION: it is not
right for this job now (a rank of another pod, a future generation, a pid that
is not the one holding the rank, a rank whose process is alive and attached).

What the OS tells about processes comes in as `Processes` (supervisor/detect/process_table.py
reads /proc); None from it means the OS cannot tell (another PID namespace),
and the check is skipped rather than refuse a legitimate worker.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, Protocol

import grpc

from supervisor.rules.job import JobState
from supervisor.rules.spec import WorkerSpec
from supervisor.snapshots.restore import SOURCE_ORDER
from train_supervisor.v1 import supervisor_pb2 as pb

Code = grpc.StatusCode

MAX_PID = 1 << 22  # Linux's pid_max ceiling
MAX_STEP = 1 << 53  # steps, generations and byte counts: far past any real run, exact as float
MAX_SECONDS = 1e7  # a step time, a blocking wait: 115 days
MAX_NAME = 4096  # run ids, roles, addresses, paths, exception types, signatures
MAX_TEXT = 1 << 20  # an exception's message or traceback, an output tail
MAX_ENTRIES = 4096  # environment entries, history entries, metrics
MAX_NODES = 1 << 16
MAX_NPROC = 1024
MAX_SIGNAL = 128
MAX_HELD = 2  # an arena holds two complete steps
MAX_INCARNATION = (1 << 63) - 1  # a follower picks 62 random bits (supervisor/rpc/follower.py)
RESTORE_SOURCES = frozenset({"", "shm", "peer", "durable", "none"})


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    reason: str


class Processes(Protocol):
    def alive(self, pid: int) -> Optional[bool]:
        """Whether `pid` runs; None: the OS cannot tell."""

    def descends_from(self, pid: int, ancestor: int) -> Optional[bool]:
        """Whether `pid` is a child (or grandchild...) of `ancestor`; None: cannot tell."""


class NoProcesses:
    """The OS tells nothing (no launcher known in this PID namespace)."""

    def alive(self, pid: int) -> Optional[bool]:
        return None

    def descends_from(self, pid: int, ancestor: int) -> Optional[bool]:
        return None


def _invalid(reason: str) -> Refusal:
    return Refusal(Code.INVALID_ARGUMENT, reason)


def _precondition(reason: str) -> Refusal:
    return Refusal(Code.FAILED_PRECONDITION, reason)


def shown(text: str, limit: int = 40) -> str:
    """A caller's string in a message: quoted and cut (a log line stays one short line)."""
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def first(*checks: Optional[Refusal]) -> Optional[Refusal]:
    return next((c for c in checks if c is not None), None)


# ------------------------------------------------------------------ values


def in_range(name: str, value: int, low: int, high: int) -> Optional[Refusal]:
    if low <= value <= high:
        return None
    return _invalid(f"{name} {value} is not in {low}..{high}")


def seconds(name: str, value: float) -> Optional[Refusal]:
    if math.isfinite(value) and 0.0 <= value <= MAX_SECONDS:
        return None
    return _invalid(f"{name} {value!r} is not a duration in 0..{MAX_SECONDS:g}s")


def text(name: str, value: str, limit: int = MAX_NAME) -> Optional[Refusal]:
    if len(value) <= limit:
        return None
    return _invalid(f"{name} has {len(value)} characters (at most {limit})")


def store_name(name: str, value: str) -> Optional[Refusal]:
    """A further store's name: not empty, not one of the stores with fields of their own."""
    if value in SOURCE_ORDER or not value:
        return _invalid(f"{name} {shown(value)} is not a further store's name")
    return text(name, value)


def pid_value(name: str, pid: int) -> Optional[Refusal]:
    return in_range(name, pid, 1, MAX_PID)


def steps(name: str, values: Collection[int], limit: int, low: int = 0) -> Optional[Refusal]:
    if len(values) > limit:
        return _invalid(f"{name} has {len(values)} entries (at most {limit})")
    return first(*(in_range(f"{name} entry", v, low, MAX_STEP) for v in values))


def string_map(name: str, values: Mapping[str, str], limit: int = MAX_TEXT) -> Optional[Refusal]:
    if len(values) > MAX_ENTRIES:
        return _invalid(f"{name} has {len(values)} entries (at most {MAX_ENTRIES})")
    for key, value in values.items():
        if bad := first(text(f"{name} key", key), text(f"{name}[{shown(key)}]", value, limit)):
            return bad
    return None


def detail(failure: pb.FailureDetail) -> Optional[Refusal]:
    return first(
        text("failure.exception_type", failure.exception_type),
        text("failure.message", failure.message, MAX_TEXT),
        text("failure.traceback", failure.traceback, MAX_TEXT),
        text("failure.signature", failure.signature),
    )


# ------------------------------------------------------------------ job facts


def generation(job: JobState, value: int) -> Optional[Refusal]:
    """A generation this job has had: never negative, never ahead of the job."""
    if value < 0:
        return _invalid(f"generation {value} is negative")
    if value > job.generation:
        return _precondition(f"generation {value} is ahead of the job's ({job.generation})")
    return None


def local_rank_of(job: JobState, rank: int) -> Optional[Refusal]:
    if rank in job.ranks:
        return None
    low, high = min(job.ranks, default=0), max(job.ranks, default=-1)
    return _precondition(f"rank {rank} is not one of this pod's ranks ({low}..{high})")


def launched_here(pid: int, launcher_pid: Optional[int], processes: Processes) -> Optional[Refusal]:
    """Where the OS tells: `pid` is a process of this pod's launcher."""
    if launcher_pid is None or processes.descends_from(pid, launcher_pid) is not False:
        return None
    if processes.alive(launcher_pid) is False:
        return None  # that launcher is gone: until the next attaches, nothing to vouch with
    return _precondition(f"pid {pid} is not a process of this pod's launcher ({launcher_pid})")


def holder(job: JobState, pid: int, rank: int) -> Optional[Refusal]:
    """`pid` holds `rank` here (worker calls after the attach)."""
    if (bad := first(pid_value("pid", pid), local_rank_of(job, rank))) is not None:
        return bad
    slot = job.slot_of(pid)
    if slot is None:
        return _precondition(f"pid {pid} holds no rank of this pod")
    if slot.rank != rank:
        return _precondition(f"pid {pid} holds rank {slot.rank}, not rank {rank}")
    return None


# ------------------------------------------------------------------ LauncherService


def attach_launcher(request: pb.AttachLauncherRequest) -> Optional[Refusal]:
    spec = request.spec
    if not request.HasField("spec"):
        return _invalid("no spec")
    return first(
        pid_value("launcher_pid", request.launcher_pid),
        text("pid_namespace", request.pid_namespace),
        text("spec.run_id", spec.run_id),
        text("spec.role", spec.role),
        in_range("spec.nnodes", spec.nnodes, 1, MAX_NODES),
        in_range("spec.node_rank", spec.node_rank, 0, max(spec.nnodes - 1, 0)),
        in_range("spec.nproc_per_node", spec.nproc_per_node, 1, MAX_NPROC),
        in_range("spec.max_restarts", spec.max_restarts, 0, 1 << 30),
        in_range("spec.warm_spares", spec.warm_spares, 0, MAX_NPROC),
        text("spec.master_addr", spec.master_addr),
        text("spec.error_file_dir", spec.error_file_dir),
        text("spec.snapshot_dir", spec.snapshot_dir),
        string_map("spec.base_env", spec.base_env),
    )


def process_started(
    job: JobState,
    request: pb.ProcessStarted,
    launcher_pid: Optional[int],
    processes: Processes,
) -> Optional[Refusal]:
    pid = request.pid
    if (bad := pid_value("pid", pid)) is not None:
        return bad
    if request.spare:
        return first(
            in_range("a spare's rank", request.rank, -1, -1),
            _other_rank(job, pid, None),
            launched_here(pid, launcher_pid, processes),
        )
    if (bad := local_rank_of(job, request.rank)) is not None:
        return bad
    slot = job.ranks[request.rank]
    if not slot.spawning and slot.pid != pid:
        return _precondition(f"rank {request.rank} was not being spawned (held by pid {slot.pid})")
    return first(_other_rank(job, pid, request.rank), launched_here(pid, launcher_pid, processes))


def process_exit(
    request: pb.ProcessExit, launcher_pid: Optional[int], processes: Processes
) -> Optional[Refusal]:
    bad = first(
        pid_value("pid", request.pid),
        in_range("exit_code", request.exit_code, -255, 255),
        in_range("signal", request.signal, 0, MAX_SIGNAL),
        in_range("oom_kills", request.oom_kills, 0, 1 << 30),
        text("output_tail", request.output_tail, MAX_TEXT),
    )
    if bad is not None:
        return bad
    if launcher_pid is not None and processes.alive(request.pid):
        return _precondition(f"pid {request.pid} is still running")
    return None


def _other_rank(job: JobState, pid: int, rank: Optional[int]) -> Optional[Refusal]:
    slot = job.slot_of(pid)
    if slot is None or slot.rank == rank:
        return None
    return _precondition(f"pid {pid} already holds rank {slot.rank}")


# ------------------------------------------------------------------ WorkerService


def attach_worker(
    job: JobState,
    request: pb.AttachWorkerRequest,
    attached: Collection[int],
    launcher_pid: Optional[int],
    processes: Processes,
) -> Optional[Refusal]:
    """No attach takes over a rank whose process is alive and attached, or claims a pid twice."""
    pid, rank = request.pid, request.rank
    if (bad := pid_value("pid", pid)) is not None:
        return bad
    if request.spare:
        if (bad := in_range("a spare's rank", rank, -1, -1)) is not None:
            return bad
    elif (bad := local_rank_of(job, rank)) is not None:
        return bad
    if pid in attached:
        return _precondition(f"pid {pid} is attached already")
    if (bad := _other_rank(job, pid, None if request.spare else rank)) is not None:
        return bad
    if (bad := launched_here(pid, launcher_pid, processes)) is not None:
        return bad
    if request.spare:
        return None
    slot = job.ranks[rank]
    if slot.spawning and slot.pid and slot.pid != pid:
        return _precondition(f"rank {rank} was spawned as pid {slot.pid}, not pid {pid}")
    held = slot.pid and slot.pid != pid and not slot.spawning
    if held and (slot.pid in attached or processes.alive(slot.pid) is not False):
        return _precondition(f"rank {rank} is held by pid {slot.pid}, which is alive")
    return None


def heartbeat(job: JobState, request: pb.HeartbeatRequest) -> Optional[Refusal]:
    return first(
        holder(job, request.pid, request.rank),
        generation(job, request.generation),
        in_range("step", request.step, 0, MAX_STEP),
        seconds("step_time_s", request.step_time_s),
        seconds("compute_s", request.compute_s),
    )


OUTCOMES = (
    pb.OutcomeKind.OUTCOME_FINISHED,
    pb.OutcomeKind.OUTCOME_RAISED,
    pb.OutcomeKind.OUTCOME_UNWOUND,
)


def outcome(job: JobState, request: pb.WorkerOutcome) -> Optional[Refusal]:
    bad_kind = None
    if request.kind not in OUTCOMES:
        bad_kind = _invalid(f"outcome kind {request.kind} is not one of {list(OUTCOMES)}")
    return first(
        holder(job, request.pid, request.rank),
        generation(job, request.generation),
        bad_kind,
        in_range("step", request.step, 0, MAX_STEP),
        detail(request.failure) if request.HasField("failure") else None,
    )


# ------------------------------------------------------------------ SnapshotService


def snapshot_saved(job: JobState, request: pb.SnapshotSaved) -> Optional[Refusal]:
    return first(
        holder(job, request.pid, request.rank),
        generation(job, request.generation),
        in_range("step", request.step, 0, MAX_STEP),
        steps("held", request.held, MAX_HELD),
        in_range("bytes", request.bytes, 0, MAX_STEP),
        seconds("blocking_s", request.blocking_s),
    )


def restore_request(job: JobState, request: pb.RestoreRequest) -> Optional[Refusal]:
    return first(holder(job, request.pid, request.rank), generation(job, request.generation))


def restore_report(job: JobState, request: pb.RestoreReport) -> Optional[Refusal]:
    bad_source = None
    if request.source not in RESTORE_SOURCES:
        bad_source = _invalid(
            f"source {shown(request.source)} is not one of {sorted(RESTORE_SOURCES)}"
        )
    return first(
        holder(job, request.pid, request.rank),
        generation(job, request.generation),
        in_range("step", request.step, -1, MAX_STEP),
        bad_source,
        text("problem", request.problem, MAX_TEXT),
        seconds("seconds", request.seconds),
    )


# ------------------------------------------------------------------ StatusService


def watch_events(request: pb.WatchEventsRequest) -> Optional[Refusal]:
    return in_range("after", request.after, 0, MAX_STEP)


# ------------------------------------------------------------------ PeerService (the leader)


@dataclass(frozen=True)
class Membership:
    """What the leader knows of the pods, for checking their calls."""

    run_id: str
    nnodes: int
    nproc: int
    incarnations: Mapping[int, int]  # node -> the incarnation that joined
    streaming: Collection[int]  # nodes whose Join stream is open


def _node(members: Membership, node: int) -> Optional[Refusal]:
    return in_range("node_rank", node, 1, members.nnodes - 1)


def _policy_failure(name: str, failure: pb.PolicyFailure) -> Optional[Refusal]:
    return first(
        in_range(f"{name}.generation", failure.generation, 0, MAX_STEP),
        in_range(f"{name}.rank", failure.rank, -1, MAX_NODES * MAX_NPROC),
        in_range(f"{name}.step", failure.step, -1, MAX_STEP),
        text(f"{name}.signature", failure.signature),
        text(f"{name}.failure_class", failure.failure_class),
        text(f"{name}.action", failure.action),
        text(f"{name}.reason", failure.reason),
    )


def _history(name: str, history: Iterable[pb.PolicyFailure]) -> Optional[Refusal]:
    entries = list(history)
    if len(entries) > MAX_ENTRIES:
        return _invalid(f"{name} has {len(entries)} entries (at most {MAX_ENTRIES})")
    return first(*(_policy_failure(f"{name} entry", f) for f in entries))


def join(members: Membership, request: pb.JoinRequest) -> Optional[Refusal]:
    """Checked before the join replaces anything: a refused join leaves the live pod alone."""
    node = request.node_rank
    if request.run_id != members.run_id:
        return _precondition(f"run id {shown(request.run_id)} is not this job's")
    view = request.view
    bad = first(
        _node(members, node),
        in_range("nproc", request.nproc, members.nproc, members.nproc),
        in_range("incarnation", request.incarnation, 0, MAX_INCARNATION),
        in_range("view.generation", view.generation, 0, MAX_STEP),
        in_range("view.restart_count", view.restart_count, 0, 1 << 30),
        _history("view.history", view.history),
        *_pod_ranks(members, node, request.ranks),
    )
    if bad is not None:
        return bad
    joined = members.incarnations.get(node)
    if node in members.streaming and joined is not None and joined != request.incarnation:
        # A restarted follower's old stream ends with its process; until then, the pod is live.
        return _precondition(f"node {node} is joined (incarnation {joined}) and its stream is open")
    return None


def _pod_ranks(
    members: Membership, node: int, ranks: Sequence[pb.RankStatus]
) -> list[Optional[Refusal]]:
    """A pod's ranks as it shows them to the leader: at most nproc, each one of its own."""
    first_rank = node * members.nproc
    checks: list[Optional[Refusal]] = []
    if len(ranks) > members.nproc:
        checks.append(_invalid(f"{len(ranks)} ranks reported; a pod has {members.nproc}"))
    for rank in ranks:
        checks.append(
            in_range("ranks entry", rank.rank, first_rank, first_rank + members.nproc - 1)
        )
        checks.append(text("ranks entry restored_from", rank.restored_from))
    return checks


def pod_report(members: Membership, report: pb.PodReport) -> Optional[Refusal]:
    node = report.node_rank
    if (bad := _node(members, node)) is not None:
        return bad
    joined = members.incarnations.get(node)
    if joined is not None and report.incarnation != joined:
        return _precondition(f"node {node}'s joined incarnation is not {report.incarnation}")
    kind = report.WhichOneof("report")
    checks = _pod_ranks(members, node, report.ranks)
    if kind in ("ready", "finished"):
        checks.append(generation_of(members, kind, getattr(report, kind)))
    elif kind == "failure":
        checks.append(_policy_failure("failure", report.failure))
        checks.append(generation_of(members, "failure.generation", report.failure.generation))
    elif kind == "snapshots":
        checks.append(generation_of(members, "snapshots.generation", report.snapshots.generation))
        checks.append(steps("snapshots.held", report.snapshots.held, MAX_HELD))
    elif kind == "offloaded":
        done = report.offloaded
        checks += [
            in_range("offloaded.step", done.step, 0, MAX_STEP),
            text("offloaded.replica_error", done.replica_error, MAX_TEXT),
            text("offloaded.persist_error", done.persist_error, MAX_TEXT),
        ]
    elif kind == "restore_failed":
        failed = report.restore_failed
        checks += [
            generation_of(members, "restore_failed.generation", failed.generation),
            in_range("restore_failed.step", failed.step, -1, MAX_STEP),
            text("restore_failed.problem", failed.problem, MAX_TEXT),
        ]
    copies = report.copies
    checks += [
        steps("copies.shm", copies.shm, MAX_ENTRIES),
        steps("copies.persisted", copies.persisted, MAX_ENTRIES),
        in_range("copies.committed", copies.committed, -1, MAX_STEP),
        _count("copies.replicas", len(copies.replicas), MAX_NODES),
        *(
            in_range("copies.replicas node_rank", r.node_rank, 0, members.nnodes - 1)
            for r in copies.replicas
        ),
        *(steps("copies.replicas steps", r.steps, MAX_ENTRIES) for r in copies.replicas),
        _count("copies.stored", len(copies.stored), MAX_ENTRIES),
        *(store_name("copies.stored name", s.name) for s in copies.stored),
        *(steps("copies.stored steps", s.steps, MAX_ENTRIES) for s in copies.stored),
        _count("sample.metrics", len(report.sample.metrics), MAX_ENTRIES),
        *(_finite(f"sample.metrics[{shown(k)}]", v) for k, v in report.sample.metrics.items()),
        text("last_failure.reason", report.last_failure.reason),
    ]
    return first(*checks)


def generation_of(members: Membership, name: str, value: int) -> Optional[Refusal]:
    # Not bounded by the leader's own generation: a new leader learns it from the pods.
    return in_range(name, value, 0, MAX_STEP)


def _count(name: str, count: int, limit: int) -> Optional[Refusal]:
    return None if count <= limit else _invalid(f"{name} has {count} entries (at most {limit})")


def _finite(name: str, value: float) -> Optional[Refusal]:
    return None if math.isfinite(value) else _invalid(f"{name} is {value!r}")


# ------------------------------------------------------------------ ReplicaService


def replica_header(spec: WorkerSpec, header: pb.ReplicaHeader) -> Optional[Refusal]:
    """A pushed copy belongs to another pod of this job, and to one of that pod's ranks."""
    others = [n for n in range(spec.nnodes) if n != spec.node_rank]
    if header.node_rank not in others:
        return _precondition(f"node_rank {header.node_rank} is not another pod of this job")
    first_rank = header.node_rank * spec.nproc_per_node
    return first(
        in_range("rank", header.rank, first_rank, first_rank + spec.nproc_per_node - 1),
        in_range("generation", header.generation, 0, MAX_STEP),
        in_range("step", header.step, 0, MAX_STEP),
    )
