"""What the detection benchmark counts: supervisor events -> detections -> per-class scores (pure).

A detection is (class, culprit, time) read from the supervisors' job events:
"hang" names a hung rank, "failure" carries the class the evidence gave
("looks like out_of_memory (...)"), "finding" names a pod that stands out, and
the leader's "node N lost" decision a lost peer. Each run injects at most one
fault (class, culprit, time); scoring per class:

- true positive: the first detection of the injected class naming the
  injected culprit, at or after the injection (latency = detection - injection);
- false positive: any other detection of that class (wrong culprit, or a run
  that did not inject it, clean runs included);
- false negative: an injected fault with no such detection.
Culprit accuracy: of the injected runs where the class was detected, the share
naming the right rank/pod first.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

CLASSES = ("hung", "straggler", "out_of_memory", "user_bug", "transient", "lost_peer")

_HUNG = re.compile(r"rank (\d+) \(pid \d+\) is hung")
_FAILURE = re.compile(r"^rank (\d+) pid \d+ .* looks like (\w+) \(")
_FINDING = re.compile(r"^pod (\d+) (straggler|outlier) ")
_LOST = re.compile(r"^node (\d+) lost: ")


@dataclass(frozen=True)
class Detection:
    kind: str
    culprit: int
    time_unix: float
    message: str


@dataclass(frozen=True)
class Injected:
    kind: str
    culprit: int
    time_unix: float


@dataclass
class Run:
    scenario: str
    injected: Optional[Injected]
    detections: list[Detection]
    notes: dict[str, Any] = field(default_factory=dict)


def detection_of(kind: str, message: str, time_unix: float) -> Optional[Detection]:
    """The detection an event stands for, if any."""
    found = None
    if kind == "hang":
        match = _HUNG.search(message)
        found = ("hung", int(match.group(1))) if match else None
    elif kind == "failure":
        match = _FAILURE.search(message)
        found = (match.group(2), int(match.group(1))) if match else None
    elif kind == "finding":
        match = _FINDING.search(message)
        found = (match.group(2), int(match.group(1))) if match else None
    elif kind == "leader_decision":
        match = _LOST.search(message)
        found = ("lost_peer", int(match.group(1))) if match else None
    if found is None:
        return None
    return Detection(found[0], found[1], time_unix, message)


def detections_from(events: Iterable[tuple[float, str, str]]) -> list[Detection]:
    """(time, kind, message) events -> detections, first of each (class, culprit) only.

    A hang is also reported as the killed rank's failure ("looks like hung"): one detection.
    """
    seen: set[tuple[str, int]] = set()
    found = []
    for time_unix, kind, message in sorted(events):
        detection = detection_of(kind, message, time_unix)
        if detection is None or (detection.kind, detection.culprit) in seen:
            continue
        seen.add((detection.kind, detection.culprit))
        found.append(detection)
    return found


@dataclass
class ClassScore:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    right_culprit_first: int = 0
    detected_runs: int = 0
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def ratio(a: int, b: int) -> Optional[float]:
            return a / b if b else None

        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": ratio(self.tp, self.tp + self.fp),
            "recall": ratio(self.tp, self.tp + self.fn),
            "culprit_accuracy": ratio(self.right_culprit_first, self.detected_runs),
            "latency_median_s": statistics.median(self.latencies) if self.latencies else None,
            "latency_max_s": max(self.latencies) if self.latencies else None,
        }


def score(runs: Sequence[Run], classes: Sequence[str] = CLASSES) -> dict[str, ClassScore]:
    scores = {kind: ClassScore() for kind in classes}
    for run in runs:
        for kind, tally in scores.items():
            found = [d for d in run.detections if d.kind == kind]
            injected = run.injected if run.injected and run.injected.kind == kind else None
            if injected is None:
                tally.fp += len(found)
                continue
            hits = [
                d for d in found
                if d.culprit == injected.culprit and d.time_unix >= injected.time_unix
            ]  # fmt: skip
            if found:
                tally.detected_runs += 1
                tally.right_culprit_first += found[0].culprit == injected.culprit
            if hits:
                tally.tp += 1
                tally.latencies.append(hits[0].time_unix - injected.time_unix)
                tally.fp += len(found) - 1
            else:
                tally.fn += 1
                tally.fp += len(found)
    return scores
