"""When is a rank hung, and which one is it: pure rules over step heartbeats and process evidence.

The optimizer hook (P1) gives every rank's step count and step time without a
code change. A rank is overdue when it has not finished a step for longer than
a threshold derived from its recent step times (a multiple of their median,
never under a floor), or, before its first step, than a startup allowance.
In synchronous training one hung rank stalls all the others in their next
collective, so every rank soon looks overdue: the culprit is the one whose
process evidence differs — stopped (SIGSTOP, a debugger), burning CPU while
the rest sleep, or a stack unlike the waiting majority's (py-spy dumps).

supervisor/detect/hang_watch.py applies these rules each tick.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class HangSettings:
    floor_s: float = 10.0  # never flag sooner, however fast steps are
    factor: float = 5.0  # times the median of recent step times
    startup_s: float = 300.0  # before a rank's first step: imports, data loading, compilation


@dataclass(frozen=True)
class RankProgress:
    rank: int
    started_at: float  # when this generation started for the rank
    last_step_at: Optional[float]  # None before the first step
    recent_step_s: tuple[float, ...] = ()  # the last few step times


def threshold_s(progress: RankProgress, settings: HangSettings) -> float:
    """How long this rank may go without finishing a step."""
    if progress.last_step_at is None or not progress.recent_step_s:
        return settings.startup_s
    typical = statistics.median(progress.recent_step_s)  # one slow step does not move it
    return max(settings.floor_s, settings.factor * typical)


def overdue(ranks: Sequence[RankProgress], now: float, settings: HangSettings) -> list[int]:
    """The ranks that have not stepped within their threshold."""
    late = []
    for p in ranks:
        since = p.last_step_at if p.last_step_at is not None else p.started_at
        if now - since > threshold_s(p, settings):
            late.append(p.rank)
    return sorted(late)


@dataclass(frozen=True)
class ProcessEvidence:
    state: str = ""  # psutil status: "running", "sleeping", "stopped", "disk-sleep", ...
    cpu_advancing: Optional[bool] = None  # CPU time grew since the last look
    stack: str = ""  # innermost frames of the main thread (py-spy), "" when unknown


@dataclass(frozen=True)
class Culprit:
    rank: int
    why: str


@dataclass(frozen=True)
class HangFinding:
    """What a look at the overdue ranks found (supervisor/detect/hang_watch.py), for the job's
    rules to apply (JobState.hang_found): a suspicion, or the culprit to kill."""

    message: str
    culprit: Optional[Culprit] = None  # None: no single rank stands out yet
    pid: int = 0  # the culprit's process, as the watch saw it


def culprit(evidence: Mapping[int, ProcessEvidence]) -> Optional[Culprit]:
    """The one rank whose process differs from the stalled rest, or None when none stands out."""
    stopped = [r for r, e in evidence.items() if e.state == "stopped"]
    if len(stopped) == 1:
        return Culprit(stopped[0], "its process is stopped (SIGSTOP or a debugger)")
    known = {r: e.cpu_advancing for r, e in evidence.items() if e.cpu_advancing is not None}
    busy = [r for r, advancing in known.items() if advancing]
    if len(known) > 2 and len(busy) == 1:
        return Culprit(busy[0], "it alone uses CPU while the others wait")
    stacks = {r: e.stack for r, e in evidence.items() if e.stack}
    if len(stacks) > 2:
        counts: dict[str, list[int]] = {}
        for rank, stack in stacks.items():
            counts.setdefault(stack, []).append(rank)
        majority = max(counts.values(), key=len)
        odd = [ranks for ranks in counts.values() if ranks is not majority]
        if len(majority) > len(stacks) // 2 and len(odd) == 1 and len(odd[0]) == 1:
            [rank] = odd[0]
            waiting = stacks[majority[0]].splitlines()[0] if stacks[majority[0]] else "?"
            return Culprit(
                rank,
                f"its stack ({stacks[rank].splitlines()[0]}) differs from the "
                f"{len(majority)} ranks waiting in {waiting}",
            )
    return None


def stuck_reentry(late: Sequence[RankProgress], reentered: Collection[int]) -> Optional[Culprit]:
    """No process stands out, and no late rank stepped in this generation: a survivor that
    re-entered is the likeliest cause (process-wide state no reset undid, a group it waits in
    that its peers never join). Its rank gets a fresh process, which job.py counts as a failed
    re-entry: no restart spent, fresh processes from then on."""
    if any(p.last_step_at is not None for p in late):
        return None
    candidates = sorted(p.rank for p in late if p.rank in reentered)
    if not candidates:
        return None
    return Culprit(candidates[0], "it re-entered and never reached its first step")


def describe_stacks(stacks: Mapping[int, str]) -> str:
    """Ranks grouped by stack, largest group first, one "; "-separated part a group:
    "3 ranks (0, 1, 3) in f (a.py) < g (b.py); rank 2 in h (c.py)"."""
    groups: dict[str, list[int]] = {}
    for rank, stack in sorted(stacks.items()):
        groups.setdefault(stack, []).append(rank)
    parts = []
    for stack, ranks in sorted(groups.items(), key=lambda group: (-len(group[1]), group[1][0])):
        who = f"rank {ranks[0]}" if len(ranks) == 1 else f"{len(ranks)} ranks {tuple(ranks)}"
        where = "in " + " < ".join(stack.splitlines()) if stack else "with no stack"
        parts.append(f"{who} {where}")
    return "; ".join(parts)
