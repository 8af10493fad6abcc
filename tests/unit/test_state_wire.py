"""What the rules hold crosses the wire and comes back unchanged (supervisor/rpc/state_wire.py):
every field of the plain value, set to something other than its default, survives."""

from __future__ import annotations

from supervisor.rpc.state_wire import (
    detail_from_wire,
    detail_to_wire,
    event_to_wire,
    record_from_wire,
    record_to_wire,
    sample_from_wire,
    sample_to_wire,
)
from supervisor.rules.failure_evidence import FailureDetail, FailureRecord
from supervisor.rules.job import JobEvent
from supervisor.rules.job_health import PodSample
from train_supervisor.v1 import supervisor_pb2 as pb

DETAIL = FailureDetail("ValueError", "bad", "Traceback ...", "ValueError: bad @ x.py:3")


def test_a_failure_record_and_its_detail_round_trip() -> None:
    record = FailureRecord(
        generation=2, rank=3, pid=4, exit_code=1, signal=9, detail=DETAIL, step=5,
        action="restart", time_unix=6.5, failure_class="transient", reason="killed",
        job_step=7,
    )  # fmt: skip
    sent = pb.FailureRecord.FromString(record_to_wire(record).SerializeToString())
    assert record_from_wire(sent) == record
    assert detail_from_wire(detail_to_wire(DETAIL)) == DETAIL


def test_an_event_and_a_sample_reach_the_wire_field_for_field() -> None:
    event = JobEvent(time_unix=1.5, kind="failure", message="rank 1 died", seq=3, node_rank=1)
    wire = event_to_wire(event)
    assert (wire.time_unix, wire.kind, wire.message, wire.seq, wire.node_rank) == (
        1.5, "failure", "rank 1 died", 3, 1,
    )  # fmt: skip
    sample = PodSample(node_rank=1, time_unix=2.5, window_s=5.0, metrics={"net_tx_bps": 4.0})
    sent = pb.PodSample.FromString(sample_to_wire(sample).SerializeToString())
    assert sample_from_wire(sent) == sample
