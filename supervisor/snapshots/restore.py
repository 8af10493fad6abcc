"""Which step a job restores, and from where: pure rules, no I/O.

Every pod claims copies of its ranks' snapshots in its stores
(supervisor/snapshots/store.py), named here: its own shared memory (the
ranks' arenas, or the sidecar's staged copy), another pod's memory (the peer
replica), the durable directory, and any further store. The job restores the
newest step at most the committed one for which EVERY pod has some copy: one
step for all ranks, never two. Each pod then loads its copy from its stores
in the restore order (shm -> peer -> durable -> further ones); a copy that
fails its checksum there is passed over for the next store with the same
step, and a pod left with none reports the step unusable, so that the next
choice leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from train_supervisor.steps import NO_STEP

# The stores' names (their `name`), as events, status and the pods' reports say them.
SHM, PEER, DURABLE = "shm", "peer", "durable"
SOURCE_ORDER = (SHM, PEER, DURABLE)  # the stores a report has fields of their own for


@dataclass(frozen=True)
class NodeCopies:
    """What one pod holds, each step for ALL of its ranks: the wire's PodCopies (the three
    built-in stores, and any further one by its name)."""

    shm: frozenset[int] = frozenset()
    replicas: Mapping[int, frozenset[int]] = field(default_factory=dict)  # node -> its steps
    persisted: frozenset[int] = frozenset()
    stored: Mapping[str, frozenset[int]] = field(default_factory=dict)  # store name -> steps
    # The newest committed step the pod heard of: a replacement leader's restore bound.
    committed: int = NO_STEP

    @classmethod
    def of(
        cls, listed: Mapping[str, frozenset[int]], replicas: Mapping[int, frozenset[int]]
    ) -> NodeCopies:
        """A pod's report from its stores' listings by name (see `listing`, the way back),
        and the other pods' replicas it keeps."""
        further = {
            name: steps for name, steps in listed.items() if name not in SOURCE_ORDER and steps
        }
        return cls(
            shm=listed.get(SHM, frozenset()),
            replicas=replicas,
            persisted=listed.get(DURABLE, frozenset()),
            stored=further,
        )

    def named(self) -> frozenset[int]:
        """Every step the report names, in any store, for any pod."""
        return self.shm.union(self.persisted, *self.replicas.values(), *self.stored.values())


def listing(node: int, store: str, copies: Mapping[int, NodeCopies]) -> frozenset[int]:
    """`node`'s steps in the store named `store`, from every pod's report: the one place a
    report's fields map to store names (NodeCopies.of, the way there). A peer copy is listed
    by the pod that keeps it."""
    own = copies.get(node, NodeCopies())
    if store == PEER:
        kept = (c.replicas.get(node, frozenset()) for n, c in copies.items() if n != node)
        return frozenset().union(*kept)
    if store in SOURCE_ORDER:
        return own.shm if store == SHM else own.persisted
    return own.stored.get(store, frozenset())


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


def sources(
    node: int, step: int, copies: Mapping[int, NodeCopies], order: Sequence[str] = SOURCE_ORDER
) -> list[str]:
    """The stores of `order` that hold `node`'s copy of `step`, in that order."""
    return [store for store in order if step in listing(node, store, copies)]


def choose_restore(
    nodes: Iterable[int],
    copies: Mapping[int, NodeCopies],
    newest: int,
    unusable: Mapping[int, frozenset[int]] | None = None,
    order: Sequence[str] | None = None,
) -> RestoreChoice:
    """The newest step <= `newest` every node has a copy of in one of the stores of `order`
    (None: shm, peer, durable, then any further store a pod reports, by name); `unusable`:
    node -> steps whose every copy failed there (left out)."""
    if order is None:
        further = {name for c in copies.values() for name in c.stored}
        order = (*SOURCE_ORDER, *sorted(further - set(SOURCE_ORDER)))
    nodes = sorted(nodes)
    bad = unusable or {}
    steps: set[int] = set()
    for c in copies.values():
        steps |= c.named()
    candidates = sorted((s for s in steps if 0 <= s <= newest), reverse=True)
    for step in candidates:
        if any(step in bad.get(n, frozenset()) for n in nodes):
            continue
        found = {n: sources(n, step, copies, order) for n in nodes}
        if all(found.values()):
            return RestoreChoice(step, {n: where[0] for n, where in found.items()})
    return RestoreChoice(NO_STEP, passed_over=tuple(candidates))


def _ranges(nodes: list[int]) -> str:
    return ",".join(str(n) for n in nodes)
