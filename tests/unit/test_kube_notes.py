"""The pure rules of supervisor/outputs/kube/: which job events Kubernetes hears of, how they read,
how repeats aggregate and how many go out, and the settings."""

from __future__ import annotations

import signal

import pytest

from supervisor.outputs.kube.correlator import (
    CreateEvent,
    Dropped,
    EventCorrelator,
    PatchEvent,
)
from supervisor.outputs.kube.notes import (
    NORMAL,
    WARNING,
    EventNote,
    failure_of,
    node_fault_of,
    notes_for,
)
from supervisor.outputs.kube.settings import parse_kube
from supervisor.rules.failure_evidence import FailureRecord
from supervisor.rules.job import JobEvent, describe_failure
from supervisor.rules.token_bucket import TokenBucket
from supervisor.settings.env_values import ConfigError
from train_supervisor.v1 import supervisor_pb2 as pb

POD_ENV = {"POD_NAME": "job-0-abc", "POD_NAMESPACE": "train", "POD_UID": "uid-1"}


def killed(action: str = "restart", failure_class: str = "transient") -> pb.FailureRecord:
    return FailureRecord(
        generation=0,
        rank=1,
        pid=4242,
        signal=signal.SIGKILL,
        step=17,
        failure_class=failure_class,
        reason="killed from outside",
        action=action,
    )


def failure_event(record: pb.FailureRecord) -> pb.JobEvent:
    return JobEvent(kind="failure", message=describe_failure(record, f"{record.action}: ok"))


def test_a_restarted_rank_is_a_failure_warning_then_a_restart() -> None:
    record = killed()
    notes = notes_for(failure_event(record), record)
    assert [(n.reason, n.type) for n in notes] == [
        ("RankFailed", WARNING),
        ("RankRestarted", NORMAL),
    ]
    failed, restarted = (n.message for n in notes)
    for said in ("rank 1", "pid 4242", "SIGKILL", "step 17", "transient", "action: restart"):
        assert said in failed
    assert "rank 1" in restarted and "step 17" in restarted and "generation 1" in restarted


@pytest.mark.parametrize("action", ["give_up_crash_loop", "replace_pod", "reported to the leader"])
def test_a_failure_without_a_restart_here_is_only_the_failure(action: str) -> None:
    record = killed(action)
    assert [n.reason for n in notes_for(failure_event(record), record)] == ["RankFailed"]


@pytest.mark.parametrize(
    ("kind", "message", "reason", "kind_of"),
    [
        ("hang", "no step for 30s; rank 2 (pid 9) is hung: stopped", "RankHung", WARNING),
        ("finding", "pod 2 straggler for 3 windows: compute_s = 0.4", "StragglerFound", WARNING),
        ("finding", "pod 1 outlier for 3 windows: cpu = 9", "PodOutlierFound", WARNING),
        ("gave_up", "job given up: crash loop", "JobGivenUp", WARNING),
        ("replace_pod", "this pod must be replaced: ECC", "PodReplaceRequested", WARNING),
        ("leader_decision", "node 1 lost: timeout; restart", "RestartDecided", NORMAL),
        ("succeeded", "all 2 ranks finished generation 1", "JobSucceeded", NORMAL),
    ],
)
def test_verdicts_and_findings_keep_their_line(
    kind: str, message: str, reason: str, kind_of: str
) -> None:
    assert notes_for(JobEvent(kind=kind, message=message), None) == [
        EventNote(reason, message, kind_of)
    ]


@pytest.mark.parametrize("kind", ["generation_started", "launcher_attached", "snapshot_restored"])
def test_routine_events_stay_ours(kind: str) -> None:
    assert notes_for(JobEvent(kind=kind, message="x"), None) == []


def test_a_long_line_is_clipped() -> None:
    (note,) = notes_for(JobEvent(kind="hang", message="x" * 5000), None)
    assert len(note.message) == 1024 and note.message.endswith("...")


def test_the_failure_record_is_the_one_the_line_was_written_from() -> None:
    first, second = killed(), killed()
    second.pid, second.rank = 5151, 11  # "rank 1 pid 5151" must not match rank 11
    records = [first, second]
    assert failure_of(failure_event(first), records) is first
    assert failure_of(failure_event(second), records) is second
    assert failure_of(JobEvent(kind="hang", message="rank 1 pid 4242 "), records) is None


def test_only_a_hardware_verdict_that_replaces_the_pod_blames_the_node() -> None:
    hardware = killed("replace_pod", "hardware")
    hardware.reason = "3 uncorrectable ECC errors (probe)"
    fault = node_fault_of(hardware, "node-a", gpu_index=1)
    assert fault is not None and fault.reason == "GpuHardwareFault"
    assert "GPU 1 of node node-a" in fault.message and "uncorrectable ECC" in fault.message
    assert node_fault_of(killed("restart", "hardware"), "node-a", 1) is None
    assert node_fault_of(killed("replace_pod", "transient"), "node-a", 1) is None


def correlator(burst: int = 25, refill_s: float = 300.0) -> EventCorrelator:
    return EventCorrelator("job-0-abc", TokenBucket(rate=1.0 / refill_s, burst=burst))


def test_a_repeat_patches_the_count_of_the_first_event() -> None:
    events, note = correlator(), EventNote("RankFailed", "rank 1 died")
    first = events.observe(note, 100.0)
    assert isinstance(first, CreateEvent) and first.name.startswith("job-0-abc.")
    again = events.observe(note, 160.0)
    assert again == PatchEvent(first.name, note, 2, 100.0, 160.0)
    other = events.observe(EventNote("RankFailed", "rank 2 died"), 160.0)
    assert isinstance(other, CreateEvent) and other.name != first.name


def test_past_the_burst_events_are_dropped_until_the_bucket_refills() -> None:
    events = correlator(burst=3, refill_s=10.0)
    sent = [events.observe(EventNote("RankHung", f"rank {i}"), 0.0) for i in range(5)]
    assert [isinstance(v, Dropped) for v in sent] == [False, False, False, True, True]
    assert isinstance(events.observe(EventNote("RankHung", "late"), 9.9), Dropped)
    assert isinstance(events.observe(EventNote("RankHung", "later"), 10.1), CreateEvent)


def test_kube_is_off_unless_switched_on() -> None:
    assert not parse_kube({}).enabled
    assert not parse_kube({"SUPERVISOR_KUBE_EVENTS": "off", **POD_ENV}).enabled


def test_events_on_take_the_pod_from_the_downward_api_and_the_api_from_the_service() -> None:
    env = {
        "SUPERVISOR_KUBE_EVENTS": "on",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        **POD_ENV,
    }
    config = parse_kube(env)
    assert config.events and config.pod is not None and config.api is not None
    assert (config.pod.name, config.pod.namespace, config.pod.uid) == (
        "job-0-abc",
        "train",
        "uid-1",
    )
    assert config.api.host == "https://10.0.0.1:443"
    assert config.api.token_file.endswith("serviceaccount/token")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SUPERVISOR_KUBE_EVENTS": "yes"}, "SUPERVISOR_KUBE_EVENTS='yes': must be on or off"),
        ({"SUPERVISOR_KUBE_EVENTS": "on"}, "POD_NAME: not set"),
        ({"SUPERVISOR_KUBE_NODE_TAINT": "on", **POD_ENV}, "NODE_NAME: not set"),
        ({"SUPERVISOR_KUBE_EVENTS": "on", **POD_ENV}, "SUPERVISOR_KUBE_API: not set"),
        (
            {"SUPERVISOR_KUBE_EVENTS": "on", "SUPERVISOR_KUBE_API": "api:6443", **POD_ENV},
            "must be an http:// or https:// URL",
        ),
    ],
)
def test_a_bad_kube_setting_is_one_line_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        parse_kube(env)
