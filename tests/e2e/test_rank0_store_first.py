"""Ranks other than 0 enter the script once rank 0's TCPStore listens
(launcher/worker/store_wait.py).

Else torch's TCPStore client, refused, backs off for up to a second: after a
failure every rank re-enters at once, and that backoff was most of the
process group's set-up in a recovery.
"""

from __future__ import annotations

from pathlib import Path

from jobs import read_events, train_launch


def test_a_rank_enters_its_script_only_once_rank_0_opens_the_store(tmp_path: Path) -> None:
    events = tmp_path / "events"
    job = train_launch(
        ["--standalone", "--nproc-per-node", "2"],
        ["--steps", "2", "--events", str(events), "--late-store-s", "1.5"],
    )
    assert job.wait(120) == 0, job.stderr
    records = read_events(events)
    [opening] = [e["t"] for e in records if e["event"] == "store_opening"]
    [entered] = [e["t"] for e in records if e["event"] == "start" and e["rank"] == 1]
    assert entered >= opening, f"rank 1 entered {opening - entered:.2f} s before the store opened"
