"""Zero-code progress heartbeats: a global optimizer step hook feeds a reporter thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

# Coalesce: one heartbeat RPC per interval at most, whatever the step rate.
MIN_INTERVAL_S = 0.05

SendHeartbeat = Callable[[int, int, float], None]  # generation, step, step time


class StepCounter:
    """Counts optimizer steps of the current generation; the hook must stay cheap."""

    def __init__(self, send: SendHeartbeat) -> None:
        self._send = send
        self._cond = threading.Condition()
        self._generation = -1
        self._step = 0
        self._step_time = 0.0
        self._last_step_at = 0.0
        self._sent = (-1, -1)
        threading.Thread(target=self._report_forever, name="heartbeat", daemon=True).start()

    def reset(self, generation: int) -> None:
        with self._cond:
            self._generation, self._step, self._step_time = generation, 0, 0.0
            self._last_step_at = time.monotonic()
            self._cond.notify()

    def on_step(self, *_: Any) -> None:
        now = time.monotonic()
        with self._cond:
            self._step += 1
            self._step_time = now - self._last_step_at
            self._last_step_at = now
            self._cond.notify()

    def step(self) -> int:
        with self._cond:
            return self._step

    def _report_forever(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: (self._generation, self._step) != self._sent)
                current = (self._generation, self._step)
                step_time = self._step_time
            try:
                self._send(current[0], current[1], step_time)
                self._sent = current
            except Exception:  # the supervisor may be gone for a moment; try the next step
                self._sent = current
            time.sleep(MIN_INTERVAL_S)


def install_optimizer_hook(counter: StepCounter) -> bool:
    """Register the global post-step hook; False when torch is not importable."""
    try:
        from torch.optim.optimizer import register_optimizer_step_post_hook
    except ImportError:
        return False
    register_optimizer_step_post_hook(counter.on_step)
    return True
