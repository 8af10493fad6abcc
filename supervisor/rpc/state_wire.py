"""What the job's rules hold, to and from the wire (pure): the launcher's WorkerSpec in, a
worker's raised error in, failure records and job events out (status, WatchEvents, reports
to the leader)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from supervisor.rules.failure_evidence import FailureDetail, FailureRecord
from supervisor.rules.job import JobEvent, Reattached
from supervisor.rules.job_health import PodSample
from supervisor.rules.spec import WorkerSpec
from supervisor.rules.vocabulary import ReentryMode, WorkerState
from train_supervisor.v1 import supervisor_pb2 as pb


def spec_from_wire(spec: pb.WorkerSpec) -> WorkerSpec:
    return WorkerSpec(
        run_id=spec.run_id,
        role=spec.role,
        nnodes=spec.nnodes,
        node_rank=spec.node_rank,
        nproc_per_node=spec.nproc_per_node,
        max_restarts=spec.max_restarts,
        master_addr=spec.master_addr,
        bootstrapped=spec.bootstrapped,
        warm_spares=spec.warm_spares,
        error_file_dir=spec.error_file_dir,
        base_env=dict(spec.base_env),
        snapshot_dir=spec.snapshot_dir,
        reentry=ReentryMode(int(spec.reentry)),
    )


def reattached_from_wire(request: pb.AttachWorkerRequest) -> Reattached:
    """A worker's AttachWorker with `reattach` set; a state this version does not know (a
    newer worker's) reads as unknown, which the rules take for a worker that waits."""
    state = int(request.state)
    known = state in WorkerState.__members__.values()
    return Reattached(
        pid=request.pid,
        rank=request.rank,
        spare=request.spare,
        generation=request.generation,
        state=WorkerState(state) if known else WorkerState.WORKER_STATE_UNKNOWN,
        step=request.step,
        master_addr=request.master_addr,
        master_port=request.master_port,
        restart_count=request.restart_count,
    )


def _same_fields(source: object, plain: type) -> dict[str, Any]:
    """`source`'s values of the plain dataclass's fields: the proto message and the plain value
    name them alike (tests/unit/test_state_wire.py round-trips every one)."""
    return {f.name: getattr(source, f.name) for f in fields(plain)}


def detail_from_wire(detail: pb.FailureDetail) -> FailureDetail:
    return FailureDetail(**_same_fields(detail, FailureDetail))


def detail_to_wire(detail: FailureDetail) -> pb.FailureDetail:
    return pb.FailureDetail(**_same_fields(detail, FailureDetail))


def record_to_wire(record: FailureRecord) -> pb.FailureRecord:
    values = _same_fields(record, FailureRecord) | {"detail": detail_to_wire(record.detail)}
    return pb.FailureRecord(**values)


def record_from_wire(record: pb.FailureRecord) -> FailureRecord:
    values = _same_fields(record, FailureRecord) | {"detail": detail_from_wire(record.detail)}
    return FailureRecord(**values)


def event_to_wire(event: JobEvent) -> pb.JobEvent:
    return pb.JobEvent(**_same_fields(event, JobEvent))


def sample_from_wire(sample: pb.PodSample) -> PodSample:
    return PodSample(**_same_fields(sample, PodSample) | {"metrics": dict(sample.metrics)})


def sample_to_wire(sample: PodSample) -> pb.PodSample:
    return pb.PodSample(**_same_fields(sample, PodSample))
