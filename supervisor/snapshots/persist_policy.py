"""When to persist a committed step to durable storage, and which persisted steps to drop."""

from __future__ import annotations

from collections.abc import Iterable

from train_supervisor.steps import NO_STEP


def persist_due(
    committed_step: int,
    last_persisted_step: int,
    last_persisted_at_s: float,
    now_s: float,
    every_steps: int,
    every_s: float,
) -> bool:
    """Whether to persist `committed_step` now.

    Triggers: `every_steps` steps since the last persisted step, or `every_s` seconds since
    it was written (0 turns a trigger off). Only a step newer than the last persisted one is
    ever due; the first committed step is due as soon as any trigger is on.
    """
    if every_steps < 0 or every_s < 0:
        raise ValueError(f"every_steps and every_s must be >= 0, not {every_steps}, {every_s}")
    if (every_steps == 0 and every_s == 0) or committed_step <= max(last_persisted_step, NO_STEP):
        return False
    if last_persisted_step == NO_STEP:
        return True
    by_steps = every_steps > 0 and committed_step - last_persisted_step >= every_steps
    by_time = every_s > 0 and now_s - last_persisted_at_s >= every_s
    return by_steps or by_time


def steps_to_prune(steps: Iterable[int], keep: int, incomplete: Iterable[int] = ()) -> list[int]:
    """All but the newest `keep` of the complete `steps`, and every `incomplete` step older
    than the newest complete one, ascending. keep >= 1: never delete every copy. An
    incomplete step never counts towards `keep` (it would push a complete one out), and
    one newer than every complete step stays: it may be a part still being finished."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, not {keep}")
    complete = sorted(set(steps))
    newest = complete[-1] if complete else NO_STEP
    broken = {step for step in incomplete if step < newest} - set(complete)
    return sorted({*complete[:-keep], *broken})
