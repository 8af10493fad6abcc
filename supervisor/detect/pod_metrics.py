"""One pod's resource metrics per sampling window: the inputs of the cross-pod anomaly scores.

`PodSampler` is the adapter (psutil, the accelerator probes); the arithmetic from two counter
snapshots to per-second rates is pure (`counter_rates`, `window_rates`).

- cpu_percent: CPU time of each worker process and its descendants (live ones, and those it has
  reaped) over the window, in percent of one core, averaged over the ranks measured both times.
- rss_bytes: resident memory of the same processes, summed (shared pages count once per process).
- disk_read_bps / disk_write_bps: the processes' storage I/O (/proc/<pid>/io), per process, so
  pods sharing one test host still differ; left out where the kernel does not tell (or denies).
- net_rx_bps / net_tx_bps: the network namespace's interfaces (the pod's, in Kubernetes), less
  loopback and traffic-shaping mirrors; RDMA traffic bypasses these counters.
- the accelerator metrics of `supervisor.detect.gpu_probe.probe_metrics`.

A sampler is used by one loop at a time (not thread-safe).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

import psutil

from supervisor.detect.gpu_probe import AcceleratorProbe, probe_metrics

ProcessKey = tuple[int, float]  # pid and start time: a reused pid is another process

# Counter name -> the metric its per-second rate is reported as.
RATE_METRICS: Mapping[str, str] = {
    "read_bytes": "disk_read_bps",
    "write_bytes": "disk_write_bps",
    "rx_bytes": "net_rx_bps",
    "tx_bytes": "net_tx_bps",
}
# Interfaces whose bytes are not the pod's traffic: loopback, and ifb mirrors of shaped traffic.
_NOT_POD_TRAFFIC = ("lo", "ifb")


@dataclass(frozen=True)
class CounterSnapshot:
    at: float  # seconds, any monotonic clock
    processes: Mapping[ProcessKey, Mapping[str, float]]  # cpu_seconds, read_bytes, write_bytes
    network: Mapping[str, float]  # rx_bytes, tx_bytes


def counter_rates(
    before: Mapping[str, float], after: Mapping[str, float], dt: float
) -> dict[str, float]:
    """Per-second increase of each counter both samples hold. A counter that went down (reset or
    wrapped) has no rate this window rather than a made-up one."""
    if dt <= 0:
        return {}
    return {
        name: (after[name] - before[name]) / dt
        for name in after
        if name in before and after[name] >= before[name]
    }


def window_rates(before: CounterSnapshot, after: CounterSnapshot) -> dict[str, float]:
    """The rate metrics between two snapshots; processes in only one of them are left out."""
    dt = after.at - before.at
    totals: dict[str, float] = {}
    ranks_with_cpu = 0
    for key, counters in after.processes.items():
        if key not in before.processes:
            continue
        rates = counter_rates(before.processes[key], counters, dt)
        ranks_with_cpu += "cpu_seconds" in rates
        for name, rate in rates.items():
            totals[name] = totals.get(name, 0.0) + rate
    totals.update(counter_rates(before.network, after.network, dt))
    metrics = {RATE_METRICS[name]: rate for name, rate in totals.items() if name in RATE_METRICS}
    if ranks_with_cpu:
        metrics["cpu_percent"] = 100.0 * totals["cpu_seconds"] / ranks_with_cpu
    return metrics


class PodSampler:
    def __init__(self, probes: Sequence[AcceleratorProbe] = ()) -> None:
        self._probes = tuple(probes)
        self._last: Optional[CounterSnapshot] = None
        self._own = psutil.Process()
        self._own_last = (time.monotonic(), _own_cpu_seconds(self._own))

    def sample(self, pids: Sequence[int], now: float) -> dict[str, float]:
        """This window's metrics; the first call has only the levels (no rates yet). Processes
        that are gone or unreadable are skipped."""
        processes: dict[ProcessKey, Mapping[str, float]] = {}
        rss = 0
        children = _children_by_parent()  # once per sample: a /proc pass costs ~30 µs a process
        for pid in pids:
            measured = _measure_tree(pid, children)
            if measured is not None:
                key, counters, tree_rss = measured
                processes[key] = counters
                rss += tree_rss
        snapshot = CounterSnapshot(now, processes, _network_counters())
        metrics: dict[str, float] = {"rss_bytes": float(rss)} if processes else {}
        if self._last is not None:
            metrics.update(window_rates(self._last, snapshot))
        self._last = snapshot
        metrics.update(probe_metrics([probe.read() for probe in self._probes]))
        return metrics

    def own_cost(self) -> tuple[float, int]:
        """The sampling process's own CPU (percent of one core since the last call, or since
        the sampler was made) and its resident memory in bytes."""
        now, cpu = time.monotonic(), _own_cpu_seconds(self._own)
        last_at, last_cpu = self._own_last
        self._own_last = (now, cpu)
        percent = 100.0 * (cpu - last_cpu) / (now - last_at) if now > last_at else 0.0
        return percent, int(self._own.memory_info().rss)


def _own_cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _measure_tree(
    pid: int, children: Optional[Mapping[int, list[int]]]
) -> Optional[tuple[ProcessKey, dict[str, float], int]]:
    """One worker and its descendants: (key, counters, rss), or None when it is gone."""
    try:
        root = psutil.Process(pid)
        with root.oneshot():
            key = (pid, root.create_time())
            counters, rss = _measure_one(root)
        descendants = _descendants(root, children)
    except psutil.Error:  # gone, a zombie, or not ours to read
        return None
    for child in descendants:
        try:
            with child.oneshot():
                child_counters, child_rss = _measure_one(child)
        except psutil.Error:  # exited meanwhile: its parent's reaped-children times have it
            continue
        rss += child_rss
        for name, value in child_counters.items():
            counters[name] = counters.get(name, 0.0) + value
    return key, counters, rss


def _children_by_parent() -> Optional[dict[int, list[int]]]:
    """Parent pid -> child pids from one pass over /proc (psutil's `children()` makes a pass per
    call); None where there is no /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    children: dict[int, list[int]] = {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat_file:
                stat = stat_file.read()
            # After the command name (which may hold spaces and parentheses): state, then ppid.
            ppid = int(stat[stat.rfind(b")") + 2 :].split(maxsplit=2)[1])
        except (OSError, ValueError, IndexError):  # exited meanwhile
            continue
        children.setdefault(ppid, []).append(int(name))
    return children


def _descendants(
    root: psutil.Process, children: Optional[Mapping[int, list[int]]]
) -> list[psutil.Process]:
    if children is None:
        return root.children(recursive=True)
    found: list[psutil.Process] = []
    seen, waiting = {root.pid}, list(children.get(root.pid, ()))
    while waiting:
        pid = waiting.pop()
        if pid in seen:
            continue
        seen.add(pid)
        waiting.extend(children.get(pid, ()))
        try:
            found.append(psutil.Process(pid))
        except psutil.Error:
            continue
    return found


def _measure_one(process: psutil.Process) -> tuple[dict[str, float], int]:
    times = process.cpu_times()
    # children_*: descendants already reaped, so a rank's exited helpers still count.
    cpu = times.user + times.system + times.children_user + times.children_system
    counters = {"cpu_seconds": float(cpu)}
    try:
        io = process.io_counters()
    except (psutil.AccessDenied, AttributeError, NotImplementedError):
        io = None  # another user's process, or a platform without per-process I/O
    if io is not None:
        counters["read_bytes"] = float(io.read_bytes)
        counters["write_bytes"] = float(io.write_bytes)
    return counters, int(process.memory_info().rss)


def _network_counters() -> dict[str, float]:
    try:
        per_interface = psutil.net_io_counters(pernic=True)
    except (OSError, RuntimeError):
        return {}
    counted = [c for name, c in per_interface.items() if not name.startswith(_NOT_POD_TRAFFIC)]
    if not counted:
        return {}
    return {
        "rx_bytes": float(sum(c.bytes_recv for c in counted)),
        "tx_bytes": float(sum(c.bytes_sent for c in counted)),
    }
