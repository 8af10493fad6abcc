"""Aggregation and rate of Kubernetes Events, the way client-go's EventRecorder does it (pure).

client-go's EventCorrelator (k8s.io/client-go/tools/record) keys an event by
its involved object, reason, message, type and source: the first one is
created (count 1), a repeat patches the same Event's count and lastTimestamp
instead of making a new one. A token bucket per source+object (burst 25, one
more per 5 minutes by default) bounds what one pod can send; past it events
are dropped, as client-go's spam filter does. No I/O, no clock: callers pass
`now` (wall seconds, which end up in the Event's timestamps).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Union

from supervisor.outputs.kube.notes import EventNote
from supervisor.rules.token_bucket import TokenBucket

MAX_KEYS = 4096  # client-go's LRU size: keys past it are forgotten (a repeat is created anew)


@dataclass(frozen=True)
class CreateEvent:
    name: str  # <pod>.<hex of first_time in ns>, as client-go names them
    note: EventNote
    first_time: float


@dataclass(frozen=True)
class PatchEvent:
    """A repeat: the existing Event gets `count` and `last_time` (created anew if it is gone)."""

    name: str
    note: EventNote
    count: int
    first_time: float
    last_time: float


@dataclass(frozen=True)
class Dropped:
    note: EventNote
    why: str = "rate_limited"


Send = Union[CreateEvent, PatchEvent]
Verdict = Union[CreateEvent, PatchEvent, Dropped]


@dataclass
class _Seen:
    name: str
    count: int
    first_time: float


@dataclass
class EventCorrelator:
    """One pod's Events: which to create, which to patch with a count, which to drop."""

    pod_name: str
    bucket: TokenBucket
    seen: collections.OrderedDict[EventNote, _Seen] = field(default_factory=collections.OrderedDict)

    def observe(self, note: EventNote, now: float) -> Verdict:
        if not self.bucket.admit(now)[0]:
            return Dropped(note)
        known = self.seen.get(note)
        if known is None:
            known = _Seen(self._name(now), 0, now)
            self.seen[note] = known
            if len(self.seen) > MAX_KEYS:
                self.seen.popitem(last=False)
        self.seen.move_to_end(note)
        known.count += 1
        if known.count == 1:
            return CreateEvent(known.name, note, now)
        return PatchEvent(known.name, note, known.count, known.first_time, now)

    def _name(self, now: float) -> str:
        stamp = int(now * 1e9)
        names = {s.name for s in self.seen.values()}
        while f"{self.pod_name}.{stamp:x}" in names:  # two in one nanosecond: next one
            stamp += 1
        return f"{self.pod_name}.{stamp:x}"
