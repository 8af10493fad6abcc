"""Which pod stands out from its peers: pure cross-pod anomaly scoring over sampling windows.

Every window each pod's supervisor sends the leader a sample (metric name -> value). In
synchronous training all pods do the same work, so a pod is judged against the others, never
against a fixed limit:

1. Per metric, a robust z-score over the pods (median and MAD: a minority of bad pods cannot drag
   the reference toward themselves). Only metrics that a rule names and that at least `min_pods`
   pods report are scored.
2. A deviation counts only past the z threshold AND the rule's absolute and relative floors: idle
   metrics have MAD ~ 0, where z alone would flag a few bytes.
3. Corroboration: a deviating pod is anomalous in the window when it is in the minority cluster of
   the pods' vectors of this window's deviating metrics (minority_cluster: separated by a clear
   gap) or its |z| exceeds twice the threshold, so a long-tailed noisy metric does not report.
4. Persistence: a finding stands once a pod is anomalous for `windows` consecutive windows; one
   normal window (or a window without the pod) ends the run and clears the finding.

No I/O and no clock: callers pass `now`. The leader converts Finding to the wire message.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

STRAGGLER = "straggler"  # slower own work per step: compute_s above the median
OUTLIER = "outlier"  # any other metric
Z_CAP = 1e6  # |z| never exceeds this, so scores stay finite on the wire
_MAD_TO_SIGMA = 0.6745  # MAD of normal data is 0.6745 sigma (Iglewicz and Hoaglin)
_MEAN_AD_TO_SIGMA = 1.2533  # sqrt(pi / 2): mean absolute deviation -> sigma for normal data
_GIB = 1024.0**3
_MB = 1e6


@dataclass(frozen=True)
class MetricRule:
    name: str
    kind: str  # STRAGGLER or OUTLIER
    higher_is_worse: bool  # True: only values above the median count; False: both directions
    min_abs: float  # smallest |value - median| that counts, in the metric's unit
    min_rel: float  # smallest |value - median| / |median|; a median of 0 lets any difference pass


# Floors sized so that idle noise, rank 0's extra logging and the leader's gRPC traffic never
# count: a rate must differ by 50 MB/s and 2x (net: 75 %, both ways), memory by GiBs.
DEFAULT_RULES: tuple[MetricRule, ...] = (
    MetricRule("compute_s", STRAGGLER, True, 0.01, 0.3),
    MetricRule("cpu_percent", OUTLIER, False, 25.0, 0.5),
    MetricRule("rss_bytes", OUTLIER, True, 2 * _GIB, 1.0),
    MetricRule("disk_read_bps", OUTLIER, True, 50 * _MB, 1.0),
    MetricRule("disk_write_bps", OUTLIER, True, 50 * _MB, 1.0),
    MetricRule("net_rx_bps", OUTLIER, False, 50 * _MB, 0.75),
    MetricRule("net_tx_bps", OUTLIER, False, 50 * _MB, 0.75),
    MetricRule("gpu_util_percent", OUTLIER, False, 25.0, 0.3),
    MetricRule("gpu_temp_c", OUTLIER, True, 15.0, 0.2),
    MetricRule("gpu_mem_used_bytes", OUTLIER, False, 4 * _GIB, 0.5),
    MetricRule("gpu_ecc_corrected", OUTLIER, True, 100.0, 1.0),
)


@dataclass(frozen=True)
class AnomalySettings:
    z_threshold: float = 3.5  # |robust z| beyond this stands out
    windows: int = 3  # consecutive anomalous windows before a finding
    min_pods: int = 3  # fewer pods (or pods reporting a metric): nothing is scored
    replace_slowdown: float = 0.0  # 0: never ask to replace a straggler
    replace_after_s: float = 600.0  # how long a straggler must stay that slow first

    def __post_init__(self) -> None:
        if self.z_threshold <= 0 or self.windows < 1 or self.min_pods < 3:
            raise ValueError(f"need z_threshold > 0, windows >= 1, min_pods >= 3: {self}")
        if self.replace_slowdown < 0 or self.replace_after_s < 0:
            raise ValueError(f"replace_slowdown and replace_after_s must be >= 0: {self}")


DEFAULT_SETTINGS = AnomalySettings()


@dataclass(frozen=True)
class Deviation:
    metric: str
    value: float  # the pod's value
    median: float  # the median over the pods
    z: float  # robust z-score, finite


def _clamp(z: float) -> float:
    return max(-Z_CAP, min(Z_CAP, z))


def robust_z(values: Mapping[int, float]) -> dict[int, float]:
    """Modified z-scores 0.6745 * (x - median) / MAD, one per key.

    MAD == 0 (more than half the values equal the median): the scale falls back to the mean
    absolute deviation * 1.2533, which is > 0 whenever any value differs; a lone outlier among n
    otherwise equal values then gets |z| = 0.798 * n (so it passes 3.5 from 5 values on). Both
    zero: every value equals the median and every z is 0. Results are clamped to +-Z_CAP.
    """
    if not values:
        return {}
    median = statistics.median(values.values())
    offsets = {key: value - median for key, value in values.items()}
    mad = statistics.median(abs(d) for d in offsets.values())
    if mad > 0:
        scale = mad / _MAD_TO_SIGMA
    else:
        mean_ad = statistics.fmean(abs(d) for d in offsets.values())
        if mean_ad == 0:
            return dict.fromkeys(values, 0.0)
        scale = mean_ad * _MEAN_AD_TO_SIGMA
    return {key: _clamp(d / scale) for key, d in offsets.items()}


def _columns(
    samples: Mapping[int, Mapping[str, float]],
    rules: Sequence[MetricRule],
    settings: AnomalySettings,
) -> list[tuple[MetricRule, dict[int, float]]]:
    """Per rule, pod -> finite value; only rules whose metric at least min_pods pods report."""
    columns = []
    for rule in rules:
        column = {
            pod: float(metrics[rule.name])
            for pod, metrics in samples.items()
            if rule.name in metrics and math.isfinite(metrics[rule.name])
        }
        if len(column) >= settings.min_pods:
            columns.append((rule, column))
    return columns


def _stands_out(rule: MetricRule, value: float, median: float, z: float, threshold: float) -> bool:
    offset = value - median
    if (rule.higher_is_worse and offset <= 0) or abs(z) <= threshold or abs(offset) < rule.min_abs:
        return False
    return median == 0 or abs(offset) / abs(median) >= rule.min_rel


def window_deviations(
    samples: Mapping[int, Mapping[str, float]],
    rules: Sequence[MetricRule] = DEFAULT_RULES,
    settings: AnomalySettings = DEFAULT_SETTINGS,
) -> dict[int, tuple[Deviation, ...]]:
    """Pods (node rank) that stand out on at least one metric this window, with those metrics.

    Pods without a deviation are absent. NaN/inf values are treated as not reported.
    """
    found: dict[int, list[Deviation]] = {}
    for rule, column in _columns(samples, rules, settings):
        median = statistics.median(column.values())
        for pod, z in robust_z(column).items():
            if _stands_out(rule, column[pod], median, z, settings.z_threshold):
                found.setdefault(pod, []).append(Deviation(rule.name, column[pod], median, z))
    return {pod: tuple(found[pod]) for pod in sorted(found)}


def minority_cluster(
    vectors: Mapping[int, Sequence[float]], separation: float = 3.0, min_gap: float = 3.5
) -> frozenset[int]:
    """The pods outside the main cluster of the pods' metric vectors, when clearly separated.

    Each coordinate is replaced by its robust z over the pods, so units do not matter. Single
    linkage, cut at gaps: build the minimum spanning tree (Prim from the lowest pod, so the result
    is deterministic) and cut every edge at least `min_gap` long (z units) and at least
    `separation` times the median edge (the usual spacing between neighbouring pods). The largest
    part is the main cluster when it holds more than half the pods; the minority is the rest.
    Otherwise, or with fewer than 3 pods, the result is empty.
    """
    pods = sorted(vectors)
    if len(pods) < 3:
        return frozenset()
    width = len(vectors[pods[0]])
    if any(len(vectors[p]) != width for p in pods):
        raise ValueError("metric vectors must all have the same length")
    scaled: dict[int, list[float]] = {p: [] for p in pods}
    for i in range(width):
        for pod, z in robust_z({p: float(vectors[p][i]) for p in pods}).items():
            scaled[pod].append(z)
    edges = _spanning_tree(pods, scaled)
    limit = max(min_gap, separation * statistics.median(length for length, _, _ in edges))
    parent = {p: p for p in pods}  # union-find over the edges that are not gaps

    def root(pod: int) -> int:
        while parent[pod] != pod:
            pod = parent[pod]
        return pod

    for length, a, b in edges:
        if length < limit:
            parent[root(a)] = root(b)
    parts: dict[int, set[int]] = {}
    for pod in pods:
        parts.setdefault(root(pod), set()).add(pod)
    main = max(parts.values(), key=len)
    return frozenset(set(pods) - main) if 2 * len(main) > len(pods) else frozenset()


def _spanning_tree(
    pods: list[int], points: Mapping[int, list[float]]
) -> list[tuple[float, int, int]]:
    """Prim's minimum spanning tree: (length, a, b) per edge."""
    best = {p: (math.dist(points[pods[0]], points[p]), pods[0]) for p in pods[1:]}
    edges = []
    while best:
        nearest = min(best, key=lambda p: (best[p][0], p))
        length, parent = best.pop(nearest)
        edges.append((length, nearest, parent))
        for p, (old, _) in best.items():
            d = math.dist(points[nearest], points[p])
            if d < old:
                best[p] = (d, nearest)
    return edges


def anomalous_pods(
    samples: Mapping[int, Mapping[str, float]],
    rules: Sequence[MetricRule] = DEFAULT_RULES,
    settings: AnomalySettings = DEFAULT_SETTINGS,
) -> dict[int, tuple[Deviation, ...]]:
    """window_deviations, kept only where corroborated: the pod is in the minority cluster or one
    of its |z| exceeds 2 * threshold.

    The clustering sees the metrics on which some pod deviates this window (a pod that does not
    report one sits at its median): the quiet metrics would only add noise to every distance.
    """
    deviations = window_deviations(samples, rules, settings)
    deviating = {d.metric for devs in deviations.values() for d in devs}
    columns = [c for rule, c in _columns(samples, rules, settings) if rule.name in deviating]
    medians = [statistics.median(column.values()) for column in columns]
    vectors = {pod: [c.get(pod, m) for c, m in zip(columns, medians)] for pod in samples}
    minority = minority_cluster(vectors, min_gap=settings.z_threshold)
    strong = 2 * settings.z_threshold
    return {
        pod: devs
        for pod, devs in deviations.items()
        if pod in minority or max(abs(d.z) for d in devs) > strong
    }


@dataclass(frozen=True)
class Finding:
    kind: str  # STRAGGLER when a straggler rule (compute_s) deviates, else OUTLIER
    node_rank: int
    since: float  # `now` of the first window of the run
    windows: int  # consecutive anomalous windows so far
    score: float  # largest |z| among the deviations
    deviations: tuple[Deviation, ...]  # this window's; a straggler's straggler metric first
    slowdown: float  # compute_s / median compute_s for stragglers (0 when the median is 0), else 0

    def summary(self) -> str:
        """One line, e.g. 'pod 2 straggler for 3 windows: compute_s = 0.412 vs median 0.198
        (z 9.1, 2.08x)'; a straggler's first deviation is its straggler metric."""
        parts = []
        for i, d in enumerate(self.deviations):
            ratio = f", {self.slowdown:.2f}x" if i == 0 and self.kind == STRAGGLER else ""
            parts.append(
                f"{d.metric} = {d.value:.3g} vs median {d.median:.3g} (z {d.z:.1f}{ratio})"
            )
        return f"pod {self.node_rank} {self.kind} for {self.windows} windows: " + "; ".join(parts)


@dataclass(frozen=True)
class FindingChanges:
    standing: tuple[Finding, ...]  # every finding that holds after this window, by node rank
    appeared: tuple[Finding, ...]  # standing now but not after the previous window: one event each
    cleared: tuple[Finding, ...]  # standing before, not now (normal again or lost): last version


@dataclass
class _Run:
    since: float
    windows: int = 0
    slow_since: Optional[float] = None  # first window of the run at >= replace_slowdown
    finding: Optional[Finding] = None


@dataclass
class AnomalyTracker:
    """Consecutive anomalous windows per pod; only pods in a run are kept."""

    settings: AnomalySettings = DEFAULT_SETTINGS
    rules: tuple[MetricRule, ...] = DEFAULT_RULES
    _runs: dict[int, _Run] = field(default_factory=dict, init=False, repr=False)

    def update(self, samples: Mapping[int, Mapping[str, float]], now: float) -> FindingChanges:
        """Feed one window. A pod normal in it, or absent from it, ends its run."""
        kinds = {rule.name: rule.kind for rule in self.rules}
        before = {pod: run.finding for pod, run in self._runs.items() if run.finding is not None}
        runs: dict[int, _Run] = {}
        for pod, devs in anomalous_pods(samples, self.rules, self.settings).items():
            run = self._runs.get(pod) or _Run(since=now)
            run.windows += 1
            slow = [d for d in devs if kinds[d.metric] == STRAGGLER]
            slowdown = slow[0].value / slow[0].median if slow and slow[0].median > 0 else 0.0
            over = bool(slow) and 0 < self.settings.replace_slowdown <= slowdown
            run.slow_since = (now if run.slow_since is None else run.slow_since) if over else None
            if run.windows >= self.settings.windows:
                ordered = (*slow, *(d for d in devs if d not in slow))
                score = max(abs(d.z) for d in devs)
                kind = STRAGGLER if slow else OUTLIER
                run.finding = Finding(kind, pod, run.since, run.windows, score, ordered, slowdown)
            runs[pod] = run
        self._runs = runs
        standing = tuple(f for f in (runs[p].finding for p in sorted(runs)) if f is not None)
        return FindingChanges(
            standing=standing,
            appeared=tuple(f for f in standing if f.node_rank not in before),
            cleared=tuple(before[p] for p in sorted(before) if runs.get(p) is None),
        )

    def observe(self, samples: Mapping[int, Mapping[str, float]], now: float) -> list[Finding]:
        """Feed one window; the findings standing now (use update() to see what changed)."""
        return list(self.update(samples, now).standing)

    def to_replace(self, now: float) -> list[int]:
        """Standing stragglers at >= replace_slowdown for at least replace_after_s (0: never)."""
        if self.settings.replace_slowdown <= 0:
            return []
        return [
            pod
            for pod, run in sorted(self._runs.items())
            if run.finding is not None
            and run.slow_since is not None
            and now - run.slow_since >= self.settings.replace_after_s
        ]
