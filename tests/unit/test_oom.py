"""launcher/launch/oom.py: finding and reading a worker's memory cgroup OOM kill count."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from launcher.launch.oom import OomBaseline, OomCounters, claim, counter_files, oom_kill_count

KILL = int(signal.SIGKILL)
R = "/sys/fs/cgroup"

# /proc/<pid>/cgroup as each kind of host shows it.
V2 = "0::/kubepods/pod1/ctr1\n"
V1 = "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n"
HYBRID = "9:name=systemd:/\n4:memory:/process_api/c31\n0::/\n"  # this machine
COMOUNTED = "5:cpu,memory:/job\n"


@pytest.mark.parametrize(
    ("proc_cgroup", "expected"),
    [
        (
            V2,
            [
                f"{R}/kubepods/pod1/ctr1/memory.events",
                f"{R}/memory.events",
                f"{R}/unified/kubepods/pod1/ctr1/memory.events",
                f"{R}/unified/memory.events",
            ],
        ),
        ("0::/\n", [f"{R}/memory.events", f"{R}/unified/memory.events"]),
        (V1, [f"{R}/memory/docker/abc/memory.oom_control", f"{R}/memory/memory.oom_control"]),
        (
            HYBRID,
            [
                f"{R}/memory/process_api/c31/memory.oom_control",
                f"{R}/memory/memory.oom_control",
                f"{R}/memory.events",
                f"{R}/unified/memory.events",
            ],
        ),
        (COMOUNTED, [f"{R}/memory/job/memory.oom_control", f"{R}/memory/memory.oom_control"]),
        ("12:pids:/x\n1:name=systemd:/x\n", []),  # v1 without a memory controller
        ("", []),
        ("garbage\n\n", []),
    ],
    ids=["v2", "v2 namespace root", "v1", "hybrid", "v1 co-mounted", "no memory", "empty", "bad"],
)
def test_counter_files(proc_cgroup: str, expected: list[str]) -> None:
    assert counter_files(proc_cgroup, R) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n", 2),  # v2 memory.events
        ("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n", 1),  # v1 memory.oom_control
        ("oom_kill_disable 0\nunder_oom 0\n", None),  # old v1 kernels: no count
        ("oom_group_kill 4\n", None),
        ("oom_kill many\n", None),
        ("", None),
    ],
    ids=["v2", "v1", "v1 without count", "only group kills", "not a number", "empty"],
)
def test_oom_kill_count(text: str, expected: int | None) -> None:
    assert oom_kill_count(text) == expected


@pytest.mark.parametrize(
    ("start", "now", "claimed", "signum", "expected"),
    [
        (0, 1, 0, KILL, (1, 1)),  # the victim
        (0, 0, 0, KILL, (0, 0)),  # a kill from outside
        (5, 7, 0, KILL, (1, 6)),  # two kills while it ran: it died once, one is another's
        (5, 7, 6, KILL, (1, 7)),  # ... the other victim's
        (0, 1, 1, KILL, (0, 1)),  # an earlier exit took that kill
        (0, 2, 1, KILL, (1, 2)),  # ... but not the newer one
        (3, 4, 1, KILL, (1, 4)),  # kills before its spawn are not its own
        (3, 3, 1, KILL, (0, 1)),
        (0, 1, 0, int(signal.SIGTERM), (0, 0)),  # not a SIGKILL: never an OOM kill
        (0, 1, 0, 0, (0, 0)),  # exited by itself
    ],
)
def test_claim(start: int, now: int, claimed: int, signum: int, expected: tuple[int, int]) -> None:
    assert claim(start, now, claimed, signum) == expected


# -------------------------------------------------------- reading real files
def fake_host(tmp_path: Path, proc_cgroup: str, counters: dict[str, str]) -> OomCounters:
    """A /proc and a cgroup root in `tmp_path`: "self" and pid 77 share `proc_cgroup`."""
    for who in ("self", "77"):
        (tmp_path / "proc" / who).mkdir(parents=True)
        (tmp_path / "proc" / who / "cgroup").write_text(proc_cgroup)
    root = tmp_path / "cgroup"
    for relative, text in counters.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return OomCounters(root=str(root), proc=str(tmp_path / "proc"))


def set_count(tmp_path: Path, relative: str, count: int) -> None:
    (tmp_path / "cgroup" / relative).write_text(f"oom_kill_disable 0\noom_kill {count}\n")


def test_a_v1_worker_killed_by_the_oom_killer(tmp_path: Path) -> None:
    counter = "memory/job/memory.oom_control"
    oom = fake_host(tmp_path, "4:memory:/job\n", {counter: "oom_kill 3\n"})
    inherited = oom.baseline("self")
    assert inherited == OomBaseline(str(tmp_path / "cgroup" / counter), 3)
    worker, bystander, third = (oom.baseline("77", inherited) for _ in range(3))
    set_count(tmp_path, counter, 5)  # two victims in one OOM episode
    assert oom.kills(worker, KILL) == 1
    assert oom.kills(bystander, KILL) == 1
    assert oom.kills(third, KILL) == 0  # each kill is attributed once


def test_a_kill_between_spawn_and_first_read_still_counts(tmp_path: Path) -> None:
    counter = "memory.events"
    oom = fake_host(tmp_path, "0::/\n", {counter: "oom_kill 0\n"})
    inherited = oom.baseline("self")
    set_count(tmp_path, counter, 1)  # the child died before the launcher read its cgroup
    worker = oom.baseline("77", inherited)
    assert worker == inherited
    assert oom.kills(worker, KILL) == 1


def test_a_container_without_cgroup_namespace_reads_its_mount_root(tmp_path: Path) -> None:
    oom = fake_host(
        tmp_path, "4:memory:/docker/abc\n", {"memory/memory.oom_control": "oom_kill 0\n"}
    )
    baseline = oom.baseline("77")
    assert baseline is not None and baseline.path.endswith("cgroup/memory/memory.oom_control")


@pytest.mark.parametrize(
    ("proc_cgroup", "counters"),
    [
        ("4:memory:/job\n", {}),  # no counter files
        ("4:memory:/job\n", {"memory/job/memory.oom_control": "under_oom 0\n"}),  # no count
        ("1:cpu:/job\n", {"cpu/job/memory.oom_control": "oom_kill 1\n"}),  # no memory cgroup
    ],
)
def test_no_evidence_is_no_baseline_and_no_kills(
    tmp_path: Path, proc_cgroup: str, counters: dict[str, str]
) -> None:
    oom = fake_host(tmp_path, proc_cgroup, counters)
    assert oom.baseline("77") is None
    assert oom.kills(None, KILL) == 0


def test_a_process_gone_from_proc_has_no_baseline(tmp_path: Path) -> None:
    oom = fake_host(tmp_path, "0::/\n", {"memory.events": "oom_kill 0\n"})
    assert oom.baseline("12345") is None


def test_a_counter_file_gone_at_exit_counts_nothing(tmp_path: Path) -> None:
    oom = fake_host(tmp_path, "0::/\n", {"memory.events": "oom_kill 0\n"})
    baseline = oom.baseline("77")
    (tmp_path / "cgroup" / "memory.events").unlink()
    assert oom.kills(baseline, KILL) == 0


def test_this_hosts_own_cgroup_reads_when_there_is_one() -> None:
    baseline = OomCounters().baseline("self")
    if baseline is None:
        pytest.skip("no readable memory cgroup oom_kill count on this host")
    assert baseline.count >= 0 and Path(baseline.path).name in (
        "memory.events",
        "memory.oom_control",
    )
