"""The leader's view of every pod's health: samples in, findings and replace requests out.

Pods send a sample per window (supervisor/detect/pod_health.py) with their heartbeats;
every window the leader scores the fresh ones against each other
(supervisor/rules/anomaly.py). A finding that appears or clears is one event; a
straggler past the replace policy is asked, once, to leave. No I/O: the hub
(supervisor/rpc/peers.py) carries the results. `now` is monotonic seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from supervisor.rules.anomaly import AnomalyTracker, Finding


@dataclass(frozen=True)
class PodSample:
    """What a pod's supervisor measured over its last sampling window
    (supervisor/detect/pod_metrics.py)."""

    node_rank: int = 0
    time_unix: float = 0.0
    window_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)  # name -> value


@dataclass(frozen=True)
class AskToLeave:
    """A pod the leader wants replaced, and why."""

    node_rank: int
    reason: str


@dataclass(frozen=True)
class HealthNews:
    events: list[tuple[str, str]]  # (kind, message) for the job's event log
    replace: list[AskToLeave]


@dataclass
class JobHealth:
    tracker: AnomalyTracker
    sample_s: float = 5.0
    samples: dict[int, PodSample] = field(default_factory=dict)  # node -> newest
    received: dict[int, float] = field(default_factory=dict)  # node -> when it came
    findings: dict[int, Finding] = field(default_factory=dict)  # node -> standing finding
    asked_to_leave: set[int] = field(default_factory=set)
    _scored_at: Optional[float] = None
    _offset_unix: float = 0.0  # time.time() - monotonic, for the findings' wall times

    def add(self, node: int, sample: PodSample, now: float) -> None:
        known = self.samples.get(node)
        if known is not None and known.time_unix == sample.time_unix:
            return  # the same window again: heartbeats carry the newest sample each time
        self.samples[node], self.received[node] = sample, now
        self._offset_unix = sample.time_unix - now if sample.time_unix else self._offset_unix

    def drop(self, node: int) -> None:
        """A lost pod: its replacement starts a new series."""
        for table in (self.samples, self.received, self.findings):
            table.pop(node, None)
        self.asked_to_leave.discard(node)

    def tick(self, now: float) -> HealthNews:
        if self._scored_at is not None and now - self._scored_at < self.sample_s:
            return HealthNews([], [])
        self._scored_at = now
        fresh = {
            node: dict(sample.metrics)
            for node, sample in self.samples.items()
            if now - self.received[node] <= 2 * self.sample_s
        }
        changes = self.tracker.update(fresh, now)
        standing = {f.node_rank: f for f in changes.standing}
        events = [("finding", f.summary()) for f in changes.appeared]
        events += [
            ("finding_cleared", f"pod {f.node_rank} no longer stands out ({f.kind})")
            for f in changes.cleared
        ]
        self.findings = standing
        replace = []
        for node in self.tracker.to_replace(now):
            if node in self.asked_to_leave or node not in standing:
                continue
            self.asked_to_leave.add(node)
            rule = self.tracker.settings
            reason = (
                f"straggler past the replace policy: {standing[node].summary()}; the rule: "
                f"{rule.replace_slowdown:g}x the median for {rule.replace_after_s:g}s "
                "(SUPERVISOR_STRAGGLER_REPLACE_SLOWDOWN, SUPERVISOR_STRAGGLER_REPLACE_AFTER_S)"
            )
            events.append(("replace_pod", f"asking pod {node} to leave: {reason}"))
            replace.append(AskToLeave(node, reason))
        return HealthNews(events, replace)

    def since_unix(self, finding: Finding) -> float:
        """When `finding`'s run of windows began, in wall-clock seconds."""
        return finding.since + self._offset_unix
