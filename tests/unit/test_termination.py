"""train_supervisor/termination.py: the Kubernetes termination message of a failed ending."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from train_supervisor import exit_codes
from train_supervisor.termination import (
    DEFAULT_PATH,
    MAX_BYTES,
    record_ending,
    termination_message,
    write_termination_message,
)

REPORT = (
    "job given up: rank 1: out of memory 3 times on this rank (last: the kernel OOM killer)\n"
    "  rank: 1\n  step: 0\n  error: SIGKILL: \n  class: out_of_memory (oom_kill +1)\n"
    "Traceback (most recent call last):\n  File 'train.py', line 3\nMemoryError\n"
)


def test_the_message_is_one_paragraph_without_the_traceback() -> None:
    assert termination_message(REPORT) == (
        "job given up: rank 1: out of memory 3 times on this rank (last: the kernel OOM killer); "
        "rank: 1; step: 0; error: SIGKILL:; class: out_of_memory (oom_kill +1)"
    )


def test_the_message_fits_what_the_kubelet_keeps() -> None:
    message = termination_message("é" * MAX_BYTES)  # two bytes each: cut mid-character
    assert len(message.encode()) <= MAX_BYTES and set(message) == {"é"}


def test_an_explicit_path_is_created(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    assert write_termination_message("why", str(path)) == str(path)
    assert path.read_text() == "why"
    assert write_termination_message("shorter", str(path)) == str(path)
    assert path.read_text() == "shorter"


def test_a_path_that_cannot_be_written_is_skipped(tmp_path: Path) -> None:
    assert write_termination_message("why", str(tmp_path / "no" / "such" / "dir")) is None


def test_the_default_path_is_written_only_where_kubernetes_mounted_it() -> None:
    if Path(DEFAULT_PATH).exists():
        pytest.skip(f"{DEFAULT_PATH} exists here (a Kubernetes container?)")
    assert write_termination_message("why", None) is None
    assert not Path(DEFAULT_PATH).exists()


@pytest.mark.parametrize(
    ("exit_code", "written"),
    [
        (exit_codes.GAVE_UP, True),
        (exit_codes.REPLACE_POD, True),
        (exit_codes.SUCCEEDED, False),
        (exit_codes.USAGE_ERROR, False),
        (exit_codes.TERMINATED, False),
    ],
)
def test_only_a_given_up_job_or_a_replaced_pod_leaves_a_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, exit_code: int, written: bool
) -> None:
    path = tmp_path / "termination-log"
    log = logging.getLogger("test_termination")
    with caplog.at_level(logging.INFO, logger="test_termination"):
        got = record_ending(exit_code, REPORT, str(path), log)
    assert (got == str(path)) is written and path.exists() is written
    assert ("termination message written to" in caplog.text) is written
