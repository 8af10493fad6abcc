"""One pod's metrics, one sample per window, for the leader's cross-pod scoring (I/O adapter).

Each window the pod's supervisor measures its workers (supervisor/detect/pod_metrics.py:
CPU, memory, disk and network I/O, accelerator figures) and adds what the step
heartbeats said: the step period and each rank's own work per step. The sample
goes to the leader with the pod's heartbeats (supervisor/rpc/peers.py), which
compares pods (supervisor/rules/job_health.py, supervisor/rules/anomaly.py).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from supervisor.detect.pod_metrics import PodSampler
from train_supervisor.v1 import supervisor_pb2 as pb


def slowest_rank_median(per_rank: Mapping[int, Sequence[float]]) -> Optional[float]:
    """The pod's value of a per-step time: the slowest local rank's median over the window.

    The median keeps one odd step (a checkpoint, a GC pause) from counting; the
    slowest rank is what the rest of the job waits for.
    """
    medians = [statistics.median(times) for times in per_rank.values() if times]
    return max(medians) if medians else None


@dataclass
class PodHealth:
    node_rank: int
    sampler: PodSampler
    sample_s: float = 5.0
    latest: Optional[pb.PodSample] = None
    _compute: dict[int, list[float]] = field(default_factory=dict)  # rank -> this window's
    _step: dict[int, list[float]] = field(default_factory=dict)
    _window_start: Optional[float] = None

    def on_heartbeat(self, rank: int, step_time_s: float, compute_s: float) -> None:
        if step_time_s > 0:
            self._step.setdefault(rank, []).append(step_time_s)
        if compute_s > 0:
            self._compute.setdefault(rank, []).append(compute_s)

    def tick(self, pids: Sequence[int], now: float) -> Optional[pb.PodSample]:
        """A new sample of the ranks' processes `pids` when a window is over (None otherwise);
        `now` is monotonic."""
        if self._window_start is None:
            self._window_start = now
            self.sampler.sample(pids, now)  # the counters rates are measured from
            return None
        window = now - self._window_start
        if window < self.sample_s:
            return None
        metrics = self.sampler.sample(pids, now)
        compute = slowest_rank_median(self._compute)
        step = slowest_rank_median(self._step)
        if compute is not None:
            metrics["compute_s"] = compute
        if step is not None:
            metrics["step_time_s"] = step
        self._compute, self._step, self._window_start = {}, {}, now
        self.latest = pb.PodSample(
            node_rank=self.node_rank, time_unix=time.time(), window_s=window, metrics=metrics
        )
        return self.latest
