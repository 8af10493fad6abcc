"""Zero-code progress heartbeats: a global optimizer step hook feeds a reporter thread.

With --time-forward on, global module forward hooks also time each rank's own
work per step (data loading + forward, until the outermost forward returns): in
synchronous training every rank has the same step period, because the backward's
gradient all-reduce waits for the slowest rank, so only this part tells a
straggler. Off by default: global hooks run on every module call (no fast path
in nn.Module.__call__) and torch.compile warns about them and compiles an extra
frame; without them compute_s is 0, which the supervisor reads as "not timed".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

# Coalesce: one heartbeat RPC per interval at most, whatever the step rate (each
# costs the supervisor ~1 ms of CPU; the hang threshold's floor is 10 s).
MIN_INTERVAL_S = 0.5

SendHeartbeat = Callable[[int, int, float, float], None]  # generation, step, step time, compute


class StepCounter:
    """Counts optimizer steps of the current generation; the hook must stay cheap."""

    def __init__(self, send: SendHeartbeat) -> None:
        self._send = send
        self._cond = threading.Condition()
        self._generation = -1
        self._step = 0
        self._step_time = 0.0
        self._last_step_at = 0.0
        self._forward_depth = 0  # nesting of module forwards: 0 outside any
        self._forward_end = 0.0  # when the outermost forward of this step last returned
        self._compute = 0.0
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
            # The first step of a generation is timed from its start: set-up, not a step.
            first = self._step == 0
            self._step += 1
            self._step_time = 0.0 if first else now - self._last_step_at
            forward_seen = self._forward_end > self._last_step_at and not first
            self._compute = self._forward_end - self._last_step_at if forward_seen else 0.0
            self._last_step_at = now
            self._forward_depth = 0  # a forward that raised never returned: start clean
            self._cond.notify()

    # Called for every module call: no lock (the main thread runs forwards; a
    # torn read by the reporter only skews one heartbeat's compute time).
    def on_forward_start(self, *_: Any) -> None:
        self._forward_depth += 1

    def on_forward_end(self, *_: Any) -> None:
        self._forward_depth -= 1
        if self._forward_depth <= 0:
            self._forward_depth = 0
            self._forward_end = time.monotonic()

    def step(self) -> int:
        with self._cond:
            return self._step

    def _report_forever(self) -> None:
        while True:
            with self._cond:
                # Nothing to report before the first generation starts (reset).
                self._cond.wait_for(
                    lambda: self._generation >= 0 and (self._generation, self._step) != self._sent
                )
                current = (self._generation, self._step)
                step_time, compute = self._step_time, self._compute
            try:
                self._send(current[0], current[1], step_time, compute)
                self._sent = current
            except Exception:  # the supervisor may be gone for a moment; try the next step
                self._sent = current
            time.sleep(MIN_INTERVAL_S)


def install_optimizer_hook(
    counter: StepCounter, *also_on_step: Callable[..., None], time_forward: bool = False
) -> list[Any]:
    """Register the global post-step hooks (the counter's, then `also_on_step`) and, when
    `time_forward`, the global forward timing hooks.

    Returns the hooks' removable handles; none without torch.
    """
    try:
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )
        from torch.optim.optimizer import register_optimizer_step_post_hook
    except ImportError:
        return []
    handles = [register_optimizer_step_post_hook(counter.on_step)]
    handles += [register_optimizer_step_post_hook(hook) for hook in also_on_step]
    if time_forward:
        handles.append(register_module_forward_pre_hook(counter.on_forward_start))
        handles.append(register_module_forward_hook(counter.on_forward_end))
    return handles
