"""The fuzz gate: a two-pod job under >= 10,000 hostile calls finishes exactly as untouched.

Every RPC of every service in the proto (from the descriptors), with the job's
token, a wrong one and none; hostile field values, cut and random bytes, empty
bodies, streams dropped. The job must end with exit 0, every per-step state hash
equal to an untouched run's, no state change seen in its status or events, every
call without the token refused, and the sidecars' logs under a fixed size.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz import run_gate

pytestmark = pytest.mark.slow

CALLS = 10_200
RATE = 200.0  # calls a second: the sidecars share two cores with the job
SIDECAR_LOG_LIMIT = 256 * 1024  # bytes per sidecar for the whole run


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    directory = Path("/dev/shm") / f"ts-fuzz-{uuid.uuid4().hex[:12]}"
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_hostile_calls_change_nothing(tmp_path: Path, shm_dir: Path) -> None:
    result = run_gate(
        tmp_path, shm_dir, count=CALLS, rate=RATE, steps=100, step_sleep_s=1.0, time_limit_s=150
    )
    tally = result.tally
    summary = f"{tally}\n{result.state_changes}\n{result.logs[-20000:]}"
    assert result.reference_exit == 0
    assert result.exits == [0, 0], summary
    assert tally.sent >= 10_000, summary
    assert set(tally.by_rpc) == {
        f"/{s.full_name}/{m.name}"
        for s in __import__("fuzz").pb.DESCRIPTOR.services_by_name.values()
        for m in s.methods
    }
    assert tally.unauthenticated_ok == 0, summary
    assert tally.server_errors == 0, summary  # never UNKNOWN, never a servicer's failure
    assert result.state_changes == [], summary
    assert result.mismatched_states == 0 and result.compared_states > 0, summary
    assert max(result.sidecar_log_bytes) < SIDECAR_LOG_LIMIT, result.sidecar_log_bytes
