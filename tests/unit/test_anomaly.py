"""Cross-pod anomaly scoring on synthetic series: robust z, floors, corroboration, persistence."""

from __future__ import annotations

import math
import random

import pytest

from supervisor.rules.anomaly import (
    OUTLIER,
    STRAGGLER,
    Z_CAP,
    AnomalySettings,
    AnomalyTracker,
    Deviation,
    Finding,
    anomalous_pods,
    minority_cluster,
    robust_z,
    window_deviations,
)

WINDOW_S = 5.0
BUSY = {  # one pod of a healthy training job, per window
    "compute_s": 0.2,
    "step_time_s": 0.25,
    "cpu_percent": 95.0,
    "rss_bytes": 3e9,
    "disk_read_bps": 2e6,
    "disk_write_bps": 20e6,
    "net_rx_bps": 80e6,
    "net_tx_bps": 80e6,
}
Samples = dict[int, dict[str, float]]


def busy_window(
    rng: random.Random, pods: int, scale: dict[int, dict[str, float]] | None = None
) -> Samples:
    """Every metric of every pod with +-10 % uniform noise, times `scale[pod][metric]`."""
    scale = scale or {}
    return {
        pod: {
            name: value * rng.uniform(0.9, 1.1) * scale.get(pod, {}).get(name, 1.0)
            for name, value in BUSY.items()
        }
        for pod in range(pods)
    }


def slow(pod: int, factor: float = 2.0) -> dict[int, dict[str, float]]:
    return {pod: {"compute_s": factor}}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, {}),
        ({0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 100.0}, {0: -1.349, 2: 0.0, 4: 65.4265}),
        ({0: 7.0, 1: 7.0, 2: 7.0}, {0: 0.0, 1: 0.0, 2: 0.0}),  # MAD and mean AD 0: all equal
        # MAD 0: mean absolute deviation (0.8) * 1.2533 is the scale; a lone outlier gets 0.798 n
        ({0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: 5.0}, {0: 0.0, 4: 3.9893}),
        ({0: 1.0, 1: 1.0, 2: 1.0, 3: 5.0}, {3: 3.1915}),  # under 3.5 with 4 pods: documented
        ({0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 4: -2.0}, {4: -3.9893}),  # negative side too
        ({0: 0.0, 1: 1e-300, 2: 2e-300, 3: 1e300}, {3: Z_CAP}),  # overflow is clamped, finite
    ],
)
def test_robust_z(values: dict[int, float], expected: dict[int, float]) -> None:
    z = robust_z(values)
    assert set(z) == set(values)
    for key, want in expected.items():
        assert z[key] == pytest.approx(want, abs=1e-3), key
    assert all(math.isfinite(v) for v in z.values())


@pytest.mark.parametrize("pods", [4, 8, 64])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_one_2x_slow_pod_is_a_straggler_after_exactly_windows(pods: int, seed: int) -> None:
    rng, tracker, culprit = random.Random(seed), AnomalyTracker(), pods // 2
    for i in range(6):
        changes = tracker.update(busy_window(rng, pods, slow(culprit)), now=i * WINDOW_S)
        if i < tracker.settings.windows - 1:
            assert changes.standing == () and changes.appeared == ()
            continue
        (finding,) = changes.standing
        assert (finding.node_rank, finding.kind, finding.since) == (culprit, STRAGGLER, 0.0)
        assert finding.windows == i + 1
        assert 1.6 < finding.slowdown < 2.5
        assert finding.deviations[0].metric == "compute_s" and finding.score > 7
        # One event when it appears, none while it stands.
        assert changes.appeared == ((finding,) if i == tracker.settings.windows - 1 else ())


def test_a_fast_pod_is_not_a_straggler() -> None:
    rng, tracker = random.Random(4), AnomalyTracker()
    for i in range(20):
        samples = busy_window(rng, 8, slow(5, factor=0.5))
        assert 5 not in window_deviations(samples), "faster own work is never a deviation"
        assert tracker.observe(samples, now=i * WINDOW_S) == []


def test_two_of_eight_slow_pods_are_both_found() -> None:
    rng, tracker = random.Random(5), AnomalyTracker()
    findings: list[Finding] = []
    for i in range(3):
        findings = tracker.observe(busy_window(rng, 8, {**slow(1), **slow(6, 1.8)}), i * WINDOW_S)
    assert [(f.node_rank, f.kind) for f in findings] == [(1, STRAGGLER), (6, STRAGGLER)]
    assert findings[0].slowdown > findings[1].slowdown > 1.5


def test_clean_run_with_jitter_and_spikes_gives_no_finding() -> None:
    rng, tracker = random.Random(6), AnomalyTracker()
    spiky_windows = 0
    for i in range(1000):
        samples = busy_window(rng, 8)
        samples[0]["net_rx_bps"] += 2e6  # the leader also serves the other pods' gRPC
        for pod in range(8):
            if rng.random() < 0.02:  # a single-window 50 % spike on one metric of one pod
                samples[pod][rng.choice(sorted(BUSY))] *= 1.5
        spiky_windows += bool(window_deviations(samples))
        assert tracker.observe(samples, now=i * WINDOW_S) == [], f"window {i}"
    assert spiky_windows > 10, "spikes did stand out in single windows: persistence kept it clean"


def test_idle_metrics_near_zero_give_no_finding() -> None:
    rng, tracker = random.Random(7), AnomalyTracker()
    for i in range(300):
        samples: Samples = {
            pod: {
                "compute_s": rng.uniform(0, 1e-4),
                "cpu_percent": rng.uniform(0, 2),
                "rss_bytes": 2e8 + rng.uniform(0, 1e6),
                "disk_read_bps": 0.0,
                "disk_write_bps": rng.choice([0.0, 0.0, 0.0, 4096.0]),
                "net_rx_bps": (5e4 if pod == 0 else 5e3) * rng.uniform(0.9, 1.1),
                "net_tx_bps": (5e4 if pod == 0 else 5e3) * rng.uniform(0.9, 1.1),
                "gpu_util_percent": 0.0,
                "gpu_temp_c": 35 + rng.uniform(-1, 1),
                "gpu_mem_used_bytes": 5e8,
                "gpu_ecc_corrected": 3.0 if pod == 2 else 0.0,
            }
            for pod in range(8)
        }
        assert window_deviations(samples) == {}, "the floors keep tiny differences out"
        assert tracker.observe(samples, now=i * WINDOW_S) == []


def test_fewer_than_min_pods_scores_nothing() -> None:
    rng, tracker = random.Random(8), AnomalyTracker()
    for i in range(10):
        samples = busy_window(rng, 2, slow(1, 10.0))
        assert window_deviations(samples) == {}
        assert tracker.observe(samples, now=i * WINDOW_S) == []
    # A metric that only two of eight pods report (GPU pods) is not scored either.
    samples = busy_window(rng, 8)
    samples[0]["gpu_temp_c"], samples[1]["gpu_temp_c"] = 40.0, 90.0
    assert window_deviations(samples) == {}


def test_a_lost_pod_is_dropped_and_its_finding_clears() -> None:
    rng, tracker = random.Random(9), AnomalyTracker()
    for i in range(3):
        standing = tracker.observe(busy_window(rng, 8, slow(3)), i * WINDOW_S)
    assert [f.node_rank for f in standing] == [3]
    lost = busy_window(rng, 8, slow(3))
    del lost[3]
    changes = tracker.update(lost, now=15.0)
    assert changes.standing == () and [f.node_rank for f in changes.cleared] == [3]
    # Back, still slow: a new run starts from scratch.
    assert tracker.observe(busy_window(rng, 8, slow(3)), now=20.0) == []
    assert tracker.observe(busy_window(rng, 8, slow(3)), now=25.0) == []
    (finding,) = tracker.observe(busy_window(rng, 8, slow(3)), now=30.0)
    assert (finding.since, finding.windows) == (20.0, 3)


def test_a_normal_window_resets_the_run() -> None:
    rng, tracker = random.Random(10), AnomalyTracker()
    pattern = [True, True, False, True, True, True]
    results = [
        tracker.observe(busy_window(rng, 8, slow(4) if is_slow else None), i * WINDOW_S)
        for i, is_slow in enumerate(pattern)
    ]
    assert results[:5] == [[], [], [], [], []]
    (finding,) = results[5]
    assert (finding.node_rank, finding.since, finding.windows) == (4, 15.0, 3)


def test_a_finding_clears_once() -> None:
    rng, tracker = random.Random(11), AnomalyTracker()
    for i in range(4):
        tracker.update(busy_window(rng, 8, slow(2)), i * WINDOW_S)
    changes = tracker.update(busy_window(rng, 8), now=20.0)
    assert changes.standing == () and changes.appeared == ()
    assert [(f.node_rank, f.windows) for f in changes.cleared] == [(2, 4)]
    assert tracker.update(busy_window(rng, 8), now=25.0).cleared == (), (
        "one event, not one a window"
    )


def test_a_10x_disk_writer_is_an_outlier() -> None:
    rng, tracker = random.Random(12), AnomalyTracker()
    findings: list[Finding] = []
    for i in range(3):
        samples = busy_window(rng, 8, {6: {"disk_write_bps": 10.0}})
        vectors = {pod: [metrics["disk_write_bps"]] for pod, metrics in samples.items()}
        assert minority_cluster(vectors) == {6}
        findings = tracker.observe(samples, now=i * WINDOW_S)
    (finding,) = findings
    assert (finding.node_rank, finding.kind, finding.slowdown) == (6, OUTLIER, 0.0)
    assert [d.metric for d in finding.deviations] == ["disk_write_bps"]
    assert finding.deviations[0].value > 5 * finding.deviations[0].median


@pytest.mark.parametrize(
    ("compute_ms", "corroborated"),
    [
        ([90, 95, 100, 105, 110, 115, 120, 190], True),  # a clear gap under pod 7
        ([90, 95, 100, 105, 110, 115, 150, 190], False),  # a long tail: pod 6 bridges the gap
    ],
)
def test_a_moderate_deviation_needs_the_cluster(compute_ms: list[int], corroborated: bool) -> None:
    # Pod 7 against a median of 107.5 ms: past the floors, z 5.6 (under 2 x 3.5 = 7).
    samples = {pod: {"compute_s": ms / 1000} for pod, ms in enumerate(compute_ms)}
    (deviation,) = window_deviations(samples)[7]
    assert deviation.z == pytest.approx(5.56, abs=0.01)
    assert (7 in anomalous_pods(samples)) is corroborated


@pytest.mark.parametrize(
    ("vectors", "minority"),
    [
        ({0: [1.0], 1: [1.1], 2: [0.9], 3: [1.05], 4: [9.0]}, {4}),
        ({0: [1.0, 5], 1: [1.1, 5], 2: [0.9, 5], 3: [9.0, 5], 4: [9.1, 5], 5: [1.0, 5]}, {3, 4}),
        ({0: [1.0], 1: [1.1], 2: [9.0], 3: [9.1]}, set()),  # halves: no minority
        ({p: [float(p)] for p in range(8)}, set()),  # evenly spread: no gap
        ({0: [1.0], 1: [9.0]}, set()),  # too few pods
        ({p: [3.0, 4.0] for p in range(5)}, set()),  # all equal
    ],
)
def test_minority_cluster(vectors: dict[int, list[float]], minority: set[int]) -> None:
    assert minority_cluster(vectors) == minority
    assert minority_cluster(dict(reversed(list(vectors.items())))) == minority, "order-free"


def test_minority_cluster_needs_equal_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        minority_cluster({0: [1.0], 1: [1.0, 2.0], 2: [1.0]})


def run_straggler(
    tracker: AnomalyTracker, factors: list[float], seed: int = 13
) -> list[tuple[float, list[int]]]:
    """Pod 0 at factors[i] x compute_s in window i: (now, to_replace(now)) per window."""
    rng, out = random.Random(seed), []
    for i, factor in enumerate(factors):
        now = i * WINDOW_S
        tracker.observe(busy_window(rng, 8, slow(0, factor)), now)
        out.append((now, tracker.to_replace(now)))
    return out


def test_to_replace_after_replace_after_s_at_replace_slowdown() -> None:
    settings = AnomalySettings(replace_slowdown=1.8, replace_after_s=60.0)
    replaced = run_straggler(AnomalyTracker(settings), [2.5] * 20)
    assert [now for now, pods in replaced if pods] == [now for now, _ in replaced if now >= 60.0]
    assert all(pods in ([], [0]) for _, pods in replaced)
    # A straggler under the slowdown bar is reported, never replaced.
    assert all(pods == [] for _, pods in run_straggler(AnomalyTracker(settings), [1.5] * 40))
    # Dipping under the bar restarts the clock.
    dips = run_straggler(AnomalyTracker(settings), [2.5] * 10 + [1.5] + [2.5] * 14)
    assert [now for now, pods in dips if pods] == [now for now, _ in dips if now >= 55.0 + 60.0]


def test_default_settings_never_replace() -> None:
    assert all(pods == [] for _, pods in run_straggler(AnomalyTracker(), [3.0] * 300))


def test_summary_is_one_line() -> None:
    finding = Finding(
        STRAGGLER, 2, 10.0, 3, 9.1, (Deviation("compute_s", 0.412, 0.198, 9.1),), 2.08
    )
    assert finding.summary() == (
        "pod 2 straggler for 3 windows: compute_s = 0.412 vs median 0.198 (z 9.1, 2.08x)"
    )
    outlier = Finding(
        OUTLIER,
        1,
        0.0,
        4,
        12.0,
        (Deviation("disk_write_bps", 2e8, 2e7, 12.0), Deviation("cpu_percent", 10, 95, -8.0)),
        0.0,
    )
    assert outlier.summary() == (
        "pod 1 outlier for 4 windows: disk_write_bps = 2e+08 vs median 2e+07 (z 12.0);"
        " cpu_percent = 10 vs median 95 (z -8.0)"
    )


def test_non_finite_values_are_not_reported_values() -> None:
    samples = busy_window(random.Random(14), 8)
    samples[3]["compute_s"] = math.nan
    samples[4]["disk_write_bps"] = math.inf
    assert window_deviations(samples) == {}


@pytest.mark.parametrize(
    "bad",
    [
        {"min_pods": 2},
        {"windows": 0},
        {"z_threshold": 0.0},
        {"replace_slowdown": -1.0},
        {"replace_after_s": -5.0},
    ],
)
def test_settings_reject_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AnomalySettings(**bad)  # type: ignore[arg-type]
