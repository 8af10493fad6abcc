"""The worker's step heartbeats time each rank's own work: data + forward, not the backward."""

from __future__ import annotations

import queue
import time

import pytest

from launcher.worker.heartbeat import StepCounter, install_optimizer_hook

torch = pytest.importorskip("torch")


class SlowForward(torch.nn.Module):  # type: ignore[misc]
    """A forward that takes `forward_s`, with a nested module (depth counting)."""

    def __init__(self, forward_s: float) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(4, 4)
        self.forward_s = forward_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.forward_s)
        return self.inner(x)


def test_compute_time_is_data_plus_forward_and_leaves_the_backward_out() -> None:
    sent: queue.Queue[tuple[int, int, float, float]] = queue.Queue()
    counter = StepCounter(lambda g, s, t, c: sent.put((g, s, t, c)))
    handles = install_optimizer_hook(counter, time_forward=True)
    try:
        model = SlowForward(forward_s=0.05)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        counter.reset(generation=0)
        for _ in range(3):
            time.sleep(0.03)  # "data loading": counts
            loss = model(torch.ones(2, 4)).sum()
            time.sleep(0.2)  # stands for a backward waiting in the all-reduce: does not count
            loss.backward()
            optimizer.step()
        last = sent.get(timeout=5)
        steps_seen = {last[1]: last[2:]}
        while last[1] < 3:
            last = sent.get(timeout=5)
            steps_seen[last[1]] = last[2:]
    finally:
        for handle in handles:
            handle.remove()
    generation, step, step_time, compute = last
    assert (generation, step) == (0, 3)
    assert steps_seen[1] == (0.0, 0.0), "the first step is timed from set-up: not reported"
    assert step_time >= 0.28
    assert 0.08 <= compute < 0.2, compute  # 0.03 data + 0.05 forward, no 0.2 "wait"


def test_a_step_without_any_forward_reports_no_compute_time() -> None:
    sent: queue.Queue[tuple[int, int, float, float]] = queue.Queue()
    counter = StepCounter(lambda g, s, t, c: sent.put((g, s, t, c)))
    handles = install_optimizer_hook(counter, time_forward=True)
    try:
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.SGD([weight], lr=0.1)
        counter.reset(generation=1)
        (weight * 2).sum().backward()
        optimizer.step()
        last = sent.get(timeout=5)
        while last[1] < 1:
            last = sent.get(timeout=5)
    finally:
        for handle in handles:
            handle.remove()
    assert last[1] == 1 and last[3] == 0.0


def test_the_first_heartbeat_is_the_generations_start_sent_at_once() -> None:
    """Nothing is sent before a generation starts, so the start's report is not held back by
    the pause after a send: a rank stopped a few fast steps later must be known to the
    hang detector (it only weighs ranks it has heard from)."""
    sent: queue.Queue[tuple[int, int, float, float]] = queue.Queue()
    counter = StepCounter(lambda g, s, t, c: sent.put((g, s, t, c)))
    counter.reset(generation=0)
    assert sent.get(timeout=5)[:2] == (0, 0)
    assert sent.empty(), "no report of the time before the generation (-1)"
