"""WatchEvents: a supervisor's job events in order, and with `follow` the new ones as they come.

Runs on the supervisor's event loop. It sends the kept events with a seq above
`after`, then (following) waits on the supervisor's `changed` condition, which
every state change notifies. The stream ends when the job is over and all its
events were sent, or when the supervisor stops. A follower that comes before
any launcher attached waits for the job.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Optional, Protocol

from supervisor.rpc.state_wire import event_to_wire
from supervisor.rules.job import JobState
from train_supervisor.v1 import supervisor_pb2 as pb


class EventSource(Protocol):
    """What the stream reads of a Supervisor (supervisor/rpc/service.py): read-only here."""

    @property
    def job(self) -> Optional[JobState]: ...

    @property
    def changed(self) -> asyncio.Condition: ...

    @property
    def closing(self) -> bool:
        """The supervisor is stopping: open streams end."""


def _pending(source: EventSource, after: int) -> list[pb.JobEvent]:
    return [] if source.job is None else [event_to_wire(e) for e in source.job.events.since(after)]


def _news(source: EventSource, after: int) -> bool:
    return source.closing or (
        source.job is not None and (source.job.over or source.job.events.recorded > after)
    )


def _finished(source: EventSource) -> bool:
    return source.closing or (source.job is not None and source.job.over)


async def watch_events(source: EventSource, after: int, follow: bool) -> AsyncIterator[pb.JobEvent]:
    while True:
        pending = _pending(source, after)
        for event in pending:
            yield event
            after = event.seq
        if pending:
            continue  # more may have come while the client took these
        if not follow or _finished(source):
            return
        async with source.changed:
            await source.changed.wait_for(functools.partial(_news, source, after))
