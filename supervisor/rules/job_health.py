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
from train_supervisor.v1 import supervisor_pb2 as pb


@dataclass(frozen=True)
class HealthNews:
    events: list[tuple[str, str]]  # (kind, message) for the job's event log
    replace: list[pb.ReplacePodMsg]


def finding_to_wire(finding: Finding, since_unix: float) -> pb.Finding:
    return pb.Finding(
        kind=finding.kind,
        node_rank=finding.node_rank,
        since_unix=since_unix,
        windows=finding.windows,
        score=finding.score,
        summary=finding.summary(),
        values={d.metric: d.value for d in finding.deviations},
        medians={d.metric: d.median for d in finding.deviations},
        slowdown=finding.slowdown,
    )


@dataclass
class JobHealth:
    tracker: AnomalyTracker
    sample_s: float = 5.0
    samples: dict[int, pb.PodSample] = field(default_factory=dict)  # node -> newest
    received: dict[int, float] = field(default_factory=dict)  # node -> when it came
    findings: dict[int, Finding] = field(default_factory=dict)  # node -> standing finding
    asked_to_leave: set[int] = field(default_factory=set)
    _scored_at: Optional[float] = None
    _offset_unix: float = 0.0  # time.time() - monotonic, for the findings' wall times

    def add(self, node: int, sample: pb.PodSample, now: float) -> None:
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
            replace.append(pb.ReplacePodMsg(node_rank=node, reason=reason))
        return HealthNews(events, replace)

    def to_status(self, status: pb.JobStatus) -> None:
        del status.findings[:], status.samples[:]
        for finding in sorted(self.findings.values(), key=lambda f: f.node_rank):
            status.findings.append(finding_to_wire(finding, finding.since + self._offset_unix))
        status.samples.extend(self.samples[n] for n in sorted(self.samples))
