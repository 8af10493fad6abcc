"""What the Offloader (supervisor/offload.py) hands back, and its small rules on slots."""

from __future__ import annotations

from dataclasses import dataclass, field

from train_supervisor.arena import CorruptSnapshot, RankArena, SlotState

SLOWEST_LINK_BYTES_PER_S = 50e6


@dataclass(frozen=True)
class RoundResult:
    step: int
    stage_error: str = ""
    replica_error: str = ""
    persist_error: str = ""
    persist_reason: str = ""  # with persist_error: an errno name (ENOSPC, EIO, ...) or "other"
    bytes: int = 0
    stage_s: float = 0.0
    replica_s: float = 0.0
    persist_s: float = 0.0
    pinned_s: float = 0.0  # the longest a rank's slot stayed pinned: its writer's longest wait


@dataclass
class Materialized:
    """How a restore of one step went on this pod."""

    step: int
    sources: dict[int, str] = field(default_factory=dict)  # rank -> where it came from
    problems: list[str] = field(default_factory=list)  # sources passed over, and why

    @property
    def complete(self) -> bool:
        return all(self.sources.values())


def complete_steps(arena: RankArena) -> set[int]:
    """Steps whose slot header says COMPLETE (no checksum)."""
    return {s.step for s in arena.slots() if s.state is SlotState.COMPLETE}


def transfer_deadline_s(size: int, rate_bytes_per_s: float) -> float:
    """How long one copy may take before the peer counts as hung: twice its time at the cap
    (or at a slow 50 MB/s without one), plus a minute."""
    return 60.0 + 2 * size / (rate_bytes_per_s or SLOWEST_LINK_BYTES_PER_S)


def free_slot(arena: RankArena, keep: int) -> int:
    """A slot to write, never the one holding `keep` complete."""
    slots = arena.slots()
    for info in slots:
        if not (info.state is SlotState.COMPLETE and info.step == keep):
            return info.slot
    raise RuntimeError(f"{arena.directory}: both slots hold step {keep}")


def pin_step(arena: RankArena, step: int) -> int:
    """The slot holding `step`, pinned against the rank's writer (CorruptSnapshot: none)."""
    where = f"rank {arena.rank}: step {step}"
    slot = arena.find(step)
    if slot is None:
        raise CorruptSnapshot(f"{where} is not in {arena.directory}")
    if not arena.pin(slot):
        raise CorruptSnapshot(f"{where} is being overwritten by a newer save")
    if arena.find(step) != slot:  # rewritten between the look and the pin
        arena.unpin(slot)
        raise CorruptSnapshot(f"{where} was overwritten by a newer save")
    return slot


class RoundStopped(Exception):
    """The generation a round was started in ended while it ran."""

    @classmethod
    def of(cls, generation: int) -> RoundStopped:
        return cls(f"generation {generation} ended: round stopped")
