"""The leader's pod comparison: samples in, one event per finding, one replace request per pod."""

from __future__ import annotations

from supervisor.detect.pod_health import slowest_rank_median
from supervisor.rpc.status_view import health_status
from supervisor.rules.anomaly import AnomalySettings, AnomalyTracker
from supervisor.rules.job_health import JobHealth, PodSample
from train_supervisor.v1 import supervisor_pb2 as pb

WINDOW = 5.0


def health(**settings: float) -> JobHealth:
    return JobHealth(AnomalyTracker(AnomalySettings(**settings)), sample_s=WINDOW)  # type: ignore[arg-type]


def feed(job: JobHealth, now: float, compute: dict[int, float]) -> None:
    for node, value in compute.items():
        metrics = {"compute_s": value, "step_time_s": 0.5}
        job.add(node, PodSample(node_rank=node, time_unix=1e9 + now, metrics=metrics), now)


def run_windows(job: JobHealth, windows: int, compute: dict[int, float], start: float = 0.0):  # type: ignore[no-untyped-def]
    news = []
    for i in range(windows):
        now = start + i * WINDOW
        feed(job, now, compute)
        news.append(job.tick(now))
    return news


def test_a_slow_pod_is_one_event_when_it_appears_and_one_when_it_clears() -> None:
    job = health()
    slow = {0: 0.20, 1: 0.21, 2: 0.41, 3: 0.20}
    news = run_windows(job, 5, slow)
    events = [e for n in news for e in n.events]
    assert [kind for kind, _ in events] == ["finding"]  # after the third window, once
    assert events[0][1].startswith("pod 2 straggler for 3 windows: compute_s = 0.41")
    assert [kind for kind, _ in news[2].events] == ["finding"]
    status = pb.JobStatus()
    health_status(job, status)
    [finding] = status.findings
    assert (finding.kind, finding.node_rank, finding.windows) == ("straggler", 2, 5)
    assert abs(finding.slowdown - 0.41 / 0.205) < 0.05
    assert finding.values["compute_s"] == 0.41 and finding.since_unix == 1e9
    assert [s.node_rank for s in status.samples] == [0, 1, 2, 3]
    news = run_windows(job, 2, {0: 0.2, 1: 0.21, 2: 0.2, 3: 0.2}, start=5 * WINDOW)
    assert [e for n in news for e in n.events] == [
        ("finding_cleared", "pod 2 no longer stands out (straggler)")
    ]


def test_scoring_waits_a_window_and_ignores_a_repeated_sample() -> None:
    job = health(windows=1)
    feed(job, 0.0, {0: 0.2, 1: 0.21, 2: 0.6})
    assert [k for k, _ in job.tick(0.0).events] == ["finding"]
    feed(job, 1.0, {0: 0.2, 1: 0.2, 2: 0.2})
    assert job.tick(1.0).events == []  # within the window: not scored again yet
    # The same sample again (heartbeats repeat the newest) keeps its receipt time.
    sample = job.samples[2]
    job.add(2, sample, 7.0)
    assert job.received[2] == 1.0


def test_a_pod_whose_samples_stopped_is_left_out_and_a_rejoined_pod_starts_over() -> None:
    job = health(windows=1)
    feed(job, 0.0, {0: 0.2, 1: 0.21, 2: 0.2, 3: 0.8})
    assert [k for k, _ in job.tick(0.0).events] == ["finding"]
    # Pod 3 goes silent: two windows later its old sample is too stale to score.
    feed(job, 11.0, {0: 0.2, 1: 0.21, 2: 0.2})
    assert job.tick(11.0).events == [("finding_cleared", "pod 3 no longer stands out (straggler)")]
    job.drop(3)
    assert 3 not in job.samples and 3 not in job.findings


def test_a_straggler_past_the_policy_is_asked_to_leave_once() -> None:
    job = health(windows=2, replace_slowdown=1.5, replace_after_s=10.0)
    news = run_windows(job, 8, {0: 0.2, 1: 0.21, 2: 0.2, 3: 0.5})
    asked = [r for n in news for r in n.replace]
    assert [(r.node_rank, r.reason.split(":")[0]) for r in asked] == [
        (3, "straggler past the replace policy")
    ]
    kinds = [k for n in news for k, _ in n.events]
    assert kinds == ["finding", "replace_pod"]
    # Its rule, its numbers, the settings that move it.
    assert asked[0].reason.endswith(
        "the rule: 1.5x the median for 10s "
        "(SUPERVISOR_STRAGGLER_REPLACE_SLOWDOWN, SUPERVISOR_STRAGGLER_REPLACE_AFTER_S)"
    )


def test_default_policy_never_asks_a_straggler_to_leave() -> None:
    news = run_windows(health(), 200, {0: 0.2, 1: 0.2, 2: 0.2, 3: 0.9})
    assert not any(n.replace for n in news)


def test_a_pods_value_is_its_slowest_ranks_median() -> None:
    assert slowest_rank_median({}) is None
    assert slowest_rank_median({0: [], 1: []}) is None
    # One odd step (a checkpoint) does not count; the slow rank decides.
    assert slowest_rank_median({0: [0.1, 0.1, 3.0], 1: [0.3, 0.3, 0.2]}) == 0.3
