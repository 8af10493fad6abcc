"""What a pod's ranks copied into their arenas but had not reported yet (I/O: reads arenas).

Before a live rank's death is handled, or before a pod applies the leader's Open of the next
generation, each running rank's arena is read: a step it holds and never reported still
counts, so the commit is not a step short (supervisor/snapshots/commit.py:held_in_arena).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from supervisor.rules.job import JobState
from supervisor.rules.vocabulary import WorkerState
from supervisor.snapshots.commit import RankSnapshots, held_in_arena
from train_supervisor.arena import RankArena, SlotState

log = logging.getLogger(__name__)
# (rank, step, held, bytes, blocking_s): records a rank's saved step in the job and applies
# what follows (supervisor/rpc/service.py:Supervisor.record_saved); ValueError: it breaks
# the protocol.
RecordSaved = Callable[[int, int, list[int], int, float], None]


def harvest_arenas(job: JobState, record: RecordSaved, pid: Optional[int] = None) -> None:
    """Before a live rank's death is handled (`pid`), or before this pod applies the leader's
    Open of the next generation (None: a death elsewhere): count what each running rank of the
    pod holds and has not reported yet (held_in_arena), so the commit is not a step short."""
    dead = None if pid is None else job.slot_of(pid)
    if (pid is not None and dead is None) or not job.spec.snapshot_dir:
        return
    directory = Path(job.spec.snapshot_dir)
    if not directory.is_dir():
        return  # no arenas: the script does not use the worker API
    running = [
        slot
        for slot in job.ranks.values()
        if slot.state == WorkerState.WORKER_STATE_HEALTHY and slot.generation == job.generation
    ]
    if dead is not None and dead not in running:
        return  # not a death in the running generation (an unwinding rank, a spare)
    found = f"rank {dead.rank} died" if dead is not None else "the leader opened the next one"
    tracker = job.snapshots
    for slot in running:
        with RankArena(directory, slot.rank) as arena:
            headers = arena.slots()
        complete = [(i.step, i.generation) for i in headers if i.state is SlotState.COMPLETE]
        held = held_in_arena(complete, tracker.committed, job.generation)
        known = tracker.ranks.get(slot.rank, RankSnapshots())
        if not held or max(held) <= known.saved_step:
            continue  # it reported everything it holds
        steps = sorted(held)
        try:
            record(slot.rank, steps[-1], steps, known.bytes, known.blocking_s)
        except ValueError as err:
            log.warning("rank %d's arena when %s: %s", slot.rank, found, err)
        else:
            job.record("snapshot_harvested", f"rank {slot.rank} holds steps {steps} ({found})")
