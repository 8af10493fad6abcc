"""Three pods, one rank each; pod 2's rank gets its data late (2x its own work per step).

The leader compares the pods' samples (supervisor/rules/anomaly.py) and reports pod 2
as a straggler with the metric that drove it; past the replace policy it asks
pod 2 to leave, and pod 2's launcher exits with the replace-this-pod code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from jobs import read_events, wait_until
from pods import Pods

from train_supervisor import exit_codes

pytestmark = pytest.mark.slow

SLOW_NODE = 2
DETECT = {
    "SUPERVISOR_SAMPLE_S": "2",  # short windows keep the test short; the benchmark uses 5 s
    "SUPERVISOR_STRAGGLER_REPLACE_SLOWDOWN": "1.5",
    "SUPERVISOR_STRAGGLER_REPLACE_AFTER_S": "4",
}


TIME_FORWARD = {"PET_TIME_FORWARD": "on"}


def findings(pods: Pods) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = pods.status(0).get("findings", [])
    return found


def test_a_slow_pod_is_reported_as_straggler_then_asked_to_leave(tmp_path: Path) -> None:
    events = tmp_path / "events"
    # Forward timing (compute_s) is opt-in: without it there is no straggler rule.
    pods = Pods(nnodes=3, nproc=1, warm_spares=0, sidecar_env=DETECT, launcher_env=TIME_FORWARD)
    try:
        pods.start_launchers(
            ["--steps", "100000", "--step-sleep", "0.1", "--events", str(events),
             "--slow-rank", str(SLOW_NODE), "--slow-from-step", "40", "--slow-extra-s", "0.15"]
        )  # fmt: skip
        wait_until(
            lambda: any(e["event"] == "slow" for e in read_events(events)), 120, "the slowdown"
        )
        onset = next(e["t"] for e in read_events(events) if e["event"] == "slow")
        assert findings(pods) == [], "a finding before any pod was slow"
        wait_until(lambda: bool(findings(pods)), 60, "a straggler finding")
        latency = time.time() - onset
        [finding] = findings(pods)
        assert finding["kind"] == "straggler" and finding.get("nodeRank") == SLOW_NODE, finding
        assert finding["slowdown"] >= 1.5, finding
        assert "compute_s" in finding["values"], finding
        print(f"straggler reported {latency:.1f}s after the slowdown began")
        assert latency <= 60
        # Past the policy (1.5x for 4 s) pod 2 is asked to leave: Kubernetes replaces it.
        assert pods.launchers[SLOW_NODE].wait(60) == exit_codes.REPLACE_POD, pods.logs()
        messages = [e["message"] for e in pods.status(0)["recentEvents"]]
        assert any(m.startswith(f"asking pod {SLOW_NODE} to leave") for m in messages), messages
        for node in (0, 1):
            assert pods.launchers[node].proc.poll() is None, "only pod 2 leaves"
    finally:
        pods.stop()
