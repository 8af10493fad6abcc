"""Which step a job restores, and from where: pure rules, no I/O.

Every pod claims copies of its ranks' snapshots in three places: its own
shared memory (the ranks' arenas, or the sidecar's staged copy), another
pod's memory (the peer replica) and the durable directory. The job restores
the newest step at most the committed one for which EVERY pod has some copy:
one step for all ranks, never two. Each pod then loads its copy in the
order shm -> peer -> durable; a copy that fails its checksum there is passed
over for the next source of the same step, and a pod left with none reports
the step unusable, so that the next choice leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from train_supervisor.steps import NO_STEP

SHM, PEER, DURABLE = "shm", "peer", "durable"
SOURCE_ORDER = (SHM, PEER, DURABLE)


@dataclass(frozen=True)
class NodeCopies:
    """What one pod holds, each step for ALL of its ranks."""

    shm: frozenset[int] = frozenset()
    replicas: Mapping[int, frozenset[int]] = field(default_factory=dict)  # node -> its steps
    persisted: frozenset[int] = frozenset()


@dataclass(frozen=True)
class RestoreChoice:
    step: int  # NO_STEP: start fresh
    sources: Mapping[int, str] = field(default_factory=dict)  # node -> where its copy is first
    passed_over: tuple[int, ...] = ()  # steps some pod had a copy of, newest first

    def why(self) -> str:
        if self.step == NO_STEP and not self.passed_over:
            return "no snapshot saved yet: the script starts from its beginning"
        if self.step == NO_STEP:  # copies exist, but no step is whole: worth a look
            held = ", ".join(str(s) for s in self.passed_over[:5])
            return (
                f"no step has a usable copy for every pod (held in part: {held}): "
                "the script starts from its beginning"
            )
        by_source: dict[str, list[int]] = {}
        for node, source in sorted(self.sources.items()):
            by_source.setdefault(source, []).append(node)
        where = "; ".join(f"{s}: nodes {_ranges(n)}" for s, n in by_source.items())
        return f"step {self.step} ({where})"


def sources(node: int, step: int, copies: Mapping[int, NodeCopies]) -> list[str]:
    """Where `node`'s copy of `step` is, in restore order (peer: any other pod's replica)."""
    own = copies.get(node, NodeCopies())
    found = []
    if step in own.shm:
        found.append(SHM)
    if any(step in c.replicas.get(node, ()) for n, c in copies.items() if n != node):
        found.append(PEER)
    if step in own.persisted:
        found.append(DURABLE)
    return found


def choose_restore(
    nodes: Iterable[int],
    copies: Mapping[int, NodeCopies],
    newest: int,
    unusable: Mapping[int, frozenset[int]] | None = None,
) -> RestoreChoice:
    """The newest step <= `newest` every node has a copy of; `unusable`: node -> steps
    whose every copy failed there (left out)."""
    nodes = sorted(nodes)
    bad = unusable or {}
    steps: set[int] = set()
    for c in copies.values():
        steps |= c.shm | c.persisted
        for held in c.replicas.values():
            steps |= held
    candidates = sorted((s for s in steps if 0 <= s <= newest), reverse=True)
    for step in candidates:
        if any(step in bad.get(n, frozenset()) for n in nodes):
            continue
        found = {n: sources(n, step, copies) for n in nodes}
        if all(found.values()):
            return RestoreChoice(step, {n: where[0] for n, where in found.items()})
    return RestoreChoice(NO_STEP, passed_over=tuple(candidates))


def _ranges(nodes: list[int]) -> str:
    return ",".join(str(n) for n in nodes)
