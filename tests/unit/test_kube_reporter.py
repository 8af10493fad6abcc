"""supervisor/outputs/kube/reporter.py with the real kubernetes client against a loopback API
server.

The job is a real JobState driven through a rank's SIGKILL (and a GPU's ECC
errors); every request the client makes is checked by tests/kube_api.py
against the client's own models. The API's failures (403, 409, 429, 500, a
hang) are answered for real: the event loop's side never waits on them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from effects import make_spec
from kube_api import HANG, FakeKubeApi

from supervisor.outputs.kube.api import core_v1
from supervisor.outputs.kube.reporter import CONDITION_TYPE, TAINT_KEY, KubeReporter, reporter_for
from supervisor.outputs.kube.settings import ApiAccess, KubeConfig, PodIdentity
from supervisor.rules.classify import GpuHealth
from supervisor.rules.job import JobEvent, JobState
from supervisor.rules.restart_policy import RestartPolicy
from supervisor.settings.env_values import ConfigError
from train_supervisor.v1 import supervisor_pb2 as pb

POD = PodIdentity(name="job-0-abc", namespace="train", uid="uid-0", node="node-a")


@pytest.fixture
def api() -> Iterator[FakeKubeApi]:
    server = FakeKubeApi().start()
    yield server
    server.close()


def reporter(
    api: FakeKubeApi, tmp_path: Path, timeout_s: float = 5.0, queue_size: int = 64, **on: bool
) -> KubeReporter:
    token = tmp_path / "token"
    token.write_text(api.token + "\n")
    config = KubeConfig(
        events=on.get("events", True),
        node_condition=on.get("node_condition", False),
        node_taint=on.get("node_taint", False),
        pod=POD,
        api=ApiAccess(api.url, str(token), "", timeout_s),
        queue_size=queue_size,
    )
    return KubeReporter(config, core_v1(ApiAccess(api.url, str(token), "", timeout_s)))


class Job:
    """A real JobState with two ranks running; `kill` makes rank 1 die as a SIGKILL would."""

    def __init__(self) -> None:
        self.job = JobState(
            spec=make_spec(nproc=2, spares=0),
            policy=RestartPolicy(max_restarts=3),
            allocate_port=itertools.count(30000).__next__,
        )
        self.job.attach_launcher()
        self.pids = itertools.count(100)
        for rank in (0, 1):
            self.job.worker_attached(next(self.pids), rank, spare=False)
        self.seen = 0

    def kill_rank_1(self, gpu: Optional[GpuHealth] = None) -> None:
        pid = self.job.ranks[1].pid
        self.job.process_exited(
            pid, -9, signal.SIGKILL, "", time.monotonic(), gpu=gpu or GpuHealth()
        )
        if self.job.ranks[1].pid == 0 and not self.job.over:
            self.job.worker_attached(next(self.pids), 1, spare=False)

    def news(self) -> list[pb.JobEvent]:
        new = self.job.events.since(self.seen)
        self.seen = self.job.events.recorded
        return new


def feed(job: Job, sink: KubeReporter) -> None:
    for event in job.news():
        sink.job_event(event, job.job)


def test_a_killed_rank_is_an_event_on_the_pod_and_a_repeat_patches_its_count(
    api: FakeKubeApi, tmp_path: Path
) -> None:
    job, sink = Job(), reporter(api, tmp_path)
    job.kill_rank_1()
    feed(job, sink)
    api.wait_for(lambda a: len(a.events) == 2, 20, "RankFailed and RankRestarted")
    by_reason = {e["reason"]: e for e in api.event_list()}
    failed = by_reason["RankFailed"]
    assert failed["type"] == "Warning" and failed["count"] == 1
    assert failed["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": POD.name,
        "namespace": POD.namespace,
        "uid": POD.uid,
    }
    assert "rank 1" in failed["message"] and "SIGKILL" in failed["message"]
    assert by_reason["RankRestarted"]["type"] == "Normal"
    # The same event twice (same pod, reason, message): one Event, count 2, as client-go does.
    sink.job_event(JobEvent(kind="hang", message="rank 1 is hung"), job.job)
    sink.job_event(JobEvent(kind="hang", message="rank 1 is hung"), job.job)
    api.wait_for(
        lambda a: any(e["reason"] == "RankHung" and e["count"] == 2 for e in a.events.values()),
        20,
        "the repeat to patch the count",
    )
    assert [r.method for r in api.requests] == ["POST", "POST", "POST", "PATCH"]
    sink.close(5)  # the thread has counted the last answer once it stopped
    assert sink.counts() == ((("create_event", "ok"), 3), (("patch_event", "ok"), 1))
    assert api.problems == []


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(403, "forbidden"), (409, "conflict"), (429, "throttled"), (500, "server_error")],
)
def test_a_refusing_api_is_counted_and_logged_once(
    api: FakeKubeApi,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    status: int,
    outcome: str,
) -> None:
    api.answer = status
    sink = reporter(api, tmp_path)
    job = Job()
    with caplog.at_level(logging.WARNING, logger="train_supervisor"):
        for i in range(5):
            sink.job_event(JobEvent(kind="hang", message=f"rank {i} is hung"), job.job)
        api.wait_for(lambda a: sum(r.status != 0 for r in a.requests) == 5, 20, "5 answers")
        sink.close(5)
    assert sink.counts() == ((("create_event", outcome), 5),)
    said = [r.getMessage() for r in caplog.records if "Kubernetes API" in r.getMessage()]
    assert len(said) == 1 and outcome in said[0] and str(status) in said[0]


def test_a_hanging_api_never_holds_the_event_loop(api: FakeKubeApi, tmp_path: Path) -> None:
    api.answer = HANG
    sink = reporter(api, tmp_path, timeout_s=1.0, queue_size=8)
    job = Job()
    started = time.monotonic()
    offered = 0
    # The server holds the first request; the queue fills and the rest are dropped,
    # while every call returns at once.
    for i in range(200):
        sink.job_event(JobEvent(kind="hang", message=f"rank {i} is hung"), job.job)
        offered += 1
    spent = time.monotonic() - started
    assert offered == 200 and spent < 0.5, f"200 offers took {spent:.3f}s"
    api.wait_for(lambda a: len(a.requests) >= 1, 20, "the first request to hang")
    drops = dict(sink.drops())
    # 25 pass the rate limit (client-go's burst); one is in flight, 8 wait, the rest drop.
    assert drops["rate_limited"] == 175 and drops["queue_full"] >= 25 - 1 - 8 - 1
    # Each held request is cut at the client's timeout (1 s) and counted; the next goes.
    api.wait_for(lambda a: len(a.requests) >= 3, 20, "two requests cut, a third sent")
    api.release()
    sink.close(10)
    assert dict(sink.counts())[("create_event", "timeout")] >= 2


def test_a_hardware_verdict_marks_and_taints_the_node(api: FakeKubeApi, tmp_path: Path) -> None:
    job = Job()
    sink = reporter(api, tmp_path, events=True, node_condition=True, node_taint=True)
    job.kill_rank_1(GpuHealth(present=True, ecc_uncorrectable=3))
    assert job.job.failures[-1].failure_class == "hardware"
    feed(job, sink)
    sink.close(10)
    conditions = {c["type"]: c for c in api.node["status"]["conditions"]}
    fault = conditions[CONDITION_TYPE]
    assert fault["status"] == "True" and fault["reason"] == "GpuHardwareFault"
    assert "GPU 1 of node node-a" in fault["message"] and "ECC" in fault["message"]
    assert conditions["Ready"]["status"] == "True"  # the merge kept the kubelet's
    taints = api.node["spec"]["taints"]
    assert {"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"} in taints
    assert taints[0]["key"] == "other"  # the node's own taint stays
    reasons = {e["reason"] for e in api.event_list()}
    assert {"RankFailed", "PodReplaceRequested"} <= reasons
    assert api.problems == []


def test_a_changed_node_is_read_again_before_the_taint(api: FakeKubeApi, tmp_path: Path) -> None:
    job = Job()
    sink = reporter(api, tmp_path, events=False, node_taint=True)
    original = api.patch_node
    raced: list[int] = []

    def someone_else_first(body: Any) -> tuple[int, dict[str, Any]]:
        if not raced:  # another controller wrote the node between our read and write
            raced.append(1)
            api.node["metadata"]["resourceVersion"] = "8"
        answer: tuple[int, dict[str, Any]] = original(body)
        return answer

    api.patch_node = someone_else_first  # type: ignore[method-assign]
    job.kill_rank_1(GpuHealth(present=True, lost=True))
    feed(job, sink)
    sink.close(10)
    assert sink.counts() == ((("taint_node", "conflict"), 1), (("taint_node", "ok"), 1))
    assert any(t["key"] == TAINT_KEY for t in api.node["spec"]["taints"])
    assert api.problems == []


def test_no_api_server_at_all_is_counted_as_unreachable(tmp_path: Path) -> None:
    closed = FakeKubeApi().start()
    closed.close()  # its port now refuses connections
    sink = reporter(closed, tmp_path, timeout_s=2.0)
    sink.job_event(JobEvent(kind="hang", message="rank 0 is hung"), Job().job)
    sink.close(10)
    assert sink.counts() == ((("create_event", "unreachable"), 1),)


def test_while_the_api_hangs_the_loop_keeps_its_pace_and_the_queue_takes_events(
    api: FakeKubeApi, tmp_path: Path
) -> None:
    api.answer = HANG
    timeout_s = 30.0  # one held request would stall a caller that waited on it for this long
    sink = reporter(api, tmp_path, timeout_s=timeout_s, queue_size=64)
    job = Job()

    async def training_loop() -> float:
        """A loop that offers an event every 10 ms; returns its worst lateness."""
        worst = 0.0
        for i in range(25):
            before = time.monotonic()
            await asyncio.sleep(0.01)
            worst = max(worst, time.monotonic() - before - 0.01)
            sink.job_event(JobEvent(kind="hang", message=f"rank {i} is hung"), job.job)
        return worst

    worst = asyncio.run(training_loop())
    api.wait_for(lambda a: len(a.requests) == 1, 20, "the first request to be held")
    assert worst < timeout_s / 10, f"the loop was {worst:.2f}s late"
    assert sink.drops() == ()  # all 25 taken: one held by the API, 24 waiting
    assert sink.queue.qsize() == 24
    api.release()
    sink.close(10)
    assert len(api.events) == 0 and len(api.requests) >= 2  # released: answered 504, sent on


def test_an_unreadable_token_is_one_line_naming_its_variable(tmp_path: Path) -> None:
    missing = tmp_path / "no-token"
    config = KubeConfig(events=True, pod=POD, api=ApiAccess("http://127.0.0.1:1", str(missing)))
    with pytest.raises(ConfigError, match=f"SUPERVISOR_KUBE_TOKEN_FILE='{missing}': cannot read"):
        reporter_for(config)
    assert reporter_for(KubeConfig()) is None  # off: no client, no thread
