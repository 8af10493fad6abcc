"""The pod sampler on real processes (CPU burners, sleepers, a writer, exited pids), and the pure
rate arithmetic as a table."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Callable

import psutil
import pytest

from supervisor.detect.gpu_probe import DeviceHealth, ProbeReport
from supervisor.detect.pod_metrics import CounterSnapshot, PodSampler, counter_rates, window_rates

Spawn = Callable[..., "subprocess.Popen[str]"]
WINDOW_S = 1.5  # the measured interval; sleeping through it is the measurement, not a race
BURN = (
    "import time; print('ready', flush=True)\n"
    "end = time.monotonic() + 60\n"
    "while time.monotonic() < end: pass"
)
SLEEP = "import time; print('ready', flush=True); time.sleep(60)"
# A parent that only sleeps while its child burns: the child's CPU is the rank's.
SLEEPING_PARENT_OF_BURNER = (
    "import subprocess, sys, time\n"
    f"subprocess.Popen([sys.executable, '-c', {BURN!r}])\n"
    "time.sleep(60)"
)
WRITE_20MB = (
    "import os, sys; print('ready', flush=True); sys.stdin.readline()\n"
    "with open(sys.argv[1], 'wb') as f:\n"
    "    f.write(os.urandom(20 << 20)); f.flush(); os.fsync(f.fileno())\n"
    "print('written', flush=True); sys.stdin.readline()"
)


def _wait_line(stream: IO[str] | None, expected: str, timeout_s: float = 20.0) -> None:
    assert stream is not None
    ready, _, _ = select.select([stream], [], [], timeout_s)
    assert ready, f"no {expected!r} from the child within {timeout_s}s"
    assert stream.readline().strip() == expected


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    started: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip
        started.append(child)
        _wait_line(child.stdout, "ready")  # interpreter start-up is done: not in the window
        return child

    yield start
    for child in started:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()


def _window(samplers: list[tuple[PodSampler, list[int]]]) -> list[dict[str, float]]:
    for sampler, pids in samplers:
        first = sampler.sample(pids, time.monotonic())
        assert set(first) == {"rss_bytes"}  # levels only: no rate without two samples
    time.sleep(WINDOW_S)
    return [sampler.sample(pids, time.monotonic()) for sampler, pids in samplers]


def test_a_burner_uses_far_more_cpu_than_a_sleeper(spawn: Spawn) -> None:
    burner, sleeper = spawn(BURN), spawn(SLEEP)
    burning, sleeping = _window([(PodSampler(), [burner.pid]), (PodSampler(), [sleeper.pid])])
    assert burning["cpu_percent"] > 40, burning  # ~100 on an idle core; 2 shared cores here
    assert sleeping["cpu_percent"] < 10, sleeping
    assert burning["rss_bytes"] > 1 << 20 and sleeping["rss_bytes"] > 1 << 20
    assert {"net_rx_bps", "net_tx_bps"} <= set(burning)


def test_children_count_for_their_rank_and_ranks_are_averaged(spawn: Spawn) -> None:
    parent, sleeper = spawn(SLEEPING_PARENT_OF_BURNER), spawn(SLEEP)  # "ready": the grandchild
    one_rank, two_ranks = _window(
        [(PodSampler(), [parent.pid]), (PodSampler(), [parent.pid, sleeper.pid])]
    )
    assert one_rank["cpu_percent"] > 40, one_rank
    # The same burner over two ranks: the per-rank average is about half.
    assert two_ranks["cpu_percent"] < one_rank["cpu_percent"] * 0.75, (one_rank, two_ranks)


def test_exited_and_vanishing_processes_are_skipped(spawn: Spawn) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=20)
    sleeper, victim = spawn(SLEEP), spawn(SLEEP)
    sampler = PodSampler()
    assert sampler.sample([gone.pid], time.monotonic()) == {}  # nothing measured: no level
    sampler.sample([sleeper.pid, victim.pid, gone.pid], time.monotonic())
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    time.sleep(0.5)  # a window long enough for a rate in percent to mean something
    after = sampler.sample([sleeper.pid, victim.pid, gone.pid], time.monotonic())
    assert after["cpu_percent"] < 10  # the sleeper's rate only
    assert after["rss_bytes"] == pytest.approx(
        psutil.Process(sleeper.pid).memory_info().rss, rel=0.5
    )


def test_disk_writes_show_up_as_a_write_rate(spawn: Spawn, tmp_path: Path) -> None:
    try:
        psutil.Process().io_counters()
    except (AttributeError, psutil.AccessDenied, NotImplementedError) as error:
        pytest.skip(f"no per-process I/O counters here: {error!r}")
    writer = spawn(WRITE_20MB, str(tmp_path / "20mb.bin"))
    sampler = PodSampler()
    started = time.monotonic()
    sampler.sample([writer.pid], started)
    assert writer.stdin is not None
    writer.stdin.write("go\n")
    writer.stdin.flush()
    _wait_line(writer.stdout, "written")
    ended = time.monotonic()
    metrics = sampler.sample([writer.pid], ended)
    written = metrics["disk_write_bps"] * (ended - started)
    assert written >= 0.9 * (20 << 20), metrics
    assert metrics["disk_read_bps"] >= 0


def test_probe_levels_come_with_the_first_sample() -> None:
    class OneGpu:
        name = "fixed"

        def read(self) -> ProbeReport:
            gpu = DeviceHealth(index=0, temperature_c=55.0, utilization_percent=99.0)
            return ProbeReport(self.name, present=True, devices=(gpu,))

        def close(self) -> None:
            pass

    metrics = PodSampler([OneGpu()]).sample([os.getpid()], time.monotonic())
    assert metrics["gpu_temp_c"] == 55.0 and metrics["gpu_util_percent"] == 99.0
    assert "cpu_percent" not in metrics


def test_own_cost_tracks_the_sampling_process() -> None:
    sampler = PodSampler()
    sampler.own_cost()
    end = time.monotonic() + 0.5
    while time.monotonic() < end:  # burn in this very process
        pass
    busy, rss = sampler.own_cost()
    assert busy > 20, busy
    assert rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.2)


RATE_TABLE = [
    # (name, before, after, dt, rates)
    ("steady", {"a": 10.0}, {"a": 30.0}, 2.0, {"a": 10.0}),
    ("unchanged", {"a": 5.0}, {"a": 5.0}, 1.0, {"a": 0.0}),
    ("reset counter has no rate", {"a": 50.0, "b": 1.0}, {"a": 3.0, "b": 3.0}, 1.0, {"b": 2.0}),
    ("only in one sample", {"a": 1.0}, {"b": 4.0}, 1.0, {}),
    ("no time passed", {"a": 1.0}, {"a": 4.0}, 0.0, {}),
    ("clock went back", {"a": 1.0}, {"a": 4.0}, -1.0, {}),
]


@pytest.mark.parametrize(("name", "before", "after", "dt", "rates"), RATE_TABLE)
def test_counter_rates(
    name: str, before: dict[str, float], after: dict[str, float], dt: float, rates: dict[str, float]
) -> None:
    assert counter_rates(before, after, dt) == rates


def _snap(at: float, network: dict[str, float], **processes: dict[str, float]) -> CounterSnapshot:
    return CounterSnapshot(at, {(int(k[1:]), 0.0): v for k, v in processes.items()}, network)


WINDOW_TABLE = [
    (
        "two ranks: cpu averaged, io summed",
        _snap(0.0, {}, p1={"cpu_seconds": 1.0, "write_bytes": 0.0}, p2={"cpu_seconds": 1.0}),
        _snap(2.0, {}, p1={"cpu_seconds": 3.0, "write_bytes": 400.0}, p2={"cpu_seconds": 1.0}),
        {"cpu_percent": 50.0, "disk_write_bps": 200.0},
    ),
    (
        "a rank that started or ended in the window is left out",
        _snap(0.0, {}, p1={"cpu_seconds": 0.0}, p2={"cpu_seconds": 9.0}),
        _snap(1.0, {}, p1={"cpu_seconds": 0.5}, p3={"cpu_seconds": 7.0}),
        {"cpu_percent": 50.0},
    ),
    (
        "network only",
        _snap(0.0, {"rx_bytes": 0.0, "tx_bytes": 10.0}),
        _snap(4.0, {"rx_bytes": 400.0, "tx_bytes": 10.0}),
        {"net_rx_bps": 100.0, "net_tx_bps": 0.0},
    ),
    ("no time passed", _snap(1.0, {}, p1={"cpu_seconds": 0.0}), _snap(1.0, {}, p1={}), {}),
]


@pytest.mark.parametrize(("name", "before", "after", "metrics"), WINDOW_TABLE)
def test_window_rates(
    name: str, before: CounterSnapshot, after: CounterSnapshot, metrics: dict[str, float]
) -> None:
    assert window_rates(before, after) == metrics
