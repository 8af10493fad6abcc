"""supervisor/detect/stacks.py: py-spy dumps reduced to groupable stacks, and py-spy run for
real."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.detect.stacks import PySpy, StackRounds, find_py_spy, main_thread_stack
from supervisor.rules.hang import ProcessEvidence, culprit, describe_stacks

DUMPS = Path(__file__).parent / "pyspy_dumps"  # captured from real ranks on this machine
DDP_WAIT = "_engine_run_backward (graph.py)\nbackward (__init__.py)\nTensor.backward (_tensor.py)"
TOY_SLEEP = "main (toy_ddp.py)\n<module> (toy_ddp.py)\n_run_code (<frozen runpy>)"

# py-spy before 0.3.10 named threads by pthread id, and --native adds C frames.
OLD_FORMAT = """Process 4242: python train.py
Python v3.9.7 (/usr/bin/python3.9)

Thread 0x7F0A2B3C4700 (idle): "loader"
    _worker_loop (torch/utils/data/_utils/worker.py:308)
Thread 0x7F0A3D5E6740 (active+gil): "MainThread"
    0x7f0a2b3c4d5e (libc.so.6)
    wait (threading.py:316)
    get (queue.py:180)
"""

# Captured: `python -c` with threading never imported (an unnamed thread) and a
# command line over several lines, one of them shaped like a frame.
UNNAMED_THREAD = """Process 6082: /work/main/.venv/bin/python3 -c import time
def wait_here():
    time.sleep (60)
wait_here()
Python v3.11.7 (/root/.pyenv/versions/3.11.7/bin/python3.11)

Thread 6082 (idle)
    wait_here (<string>:3)
    <module> (<string>:5)
"""


@pytest.mark.parametrize(
    ("dump", "stack"),
    [
        pytest.param((DUMPS / "ddp_backward_wait.txt").read_text(), DDP_WAIT, id="DDP backward"),
        pytest.param((DUMPS / "toy_ddp_sleep.txt").read_text(), TOY_SLEEP, id="time.sleep"),
        pytest.param(
            (DUMPS / "gloo_allreduce_wait.txt").read_text(),
            "all_reduce (distributed_c10d.py)\n"
            "_exception_logger.<locals>.wrapper (c10d_logger.py)\n<module> (ar.py)",
            id="gloo all_reduce",
        ),
        pytest.param((DUMPS / "module_sleep.txt").read_text(), "<module> (ar.py)", id="short"),
        pytest.param(UNNAMED_THREAD, "wait_here (<string>)\n<module> (<string>)", id="unnamed"),
        pytest.param(OLD_FORMAT, "wait (threading.py)\nget (queue.py)", id="pthread ids"),
        pytest.param("", "", id="empty"),
        pytest.param("Error: Failed to find python version\n", "", id="error text"),
        pytest.param('Process 7: x\n\nThread 7 (idle): "MainThread"\n', "", id="no frames"),
    ],
)
def test_main_thread_stack(dump: str, stack: str) -> None:
    assert main_thread_stack(dump) == stack


def test_the_main_thread_is_the_one_whose_id_is_the_pid() -> None:
    renamed = 'Process 9: x\nThread 10 (idle): "MainThread"\n    a (a.py:1)\n'
    renamed += 'Thread 9 (idle): "trainer"\n    b (b.py:2)\n'
    assert main_thread_stack(renamed) == "b (b.py)"


def test_ranks_waiting_on_other_lines_group_together() -> None:
    one = main_thread_stack((DUMPS / "ddp_backward_wait.txt").read_text())
    moved = (DUMPS / "ddp_backward_wait.txt").read_text().replace("graph.py:979", "graph.py:7")
    assert main_thread_stack(moved.replace("1828", "1840")) == one


def test_dumps_of_a_hung_job_name_the_sleeping_rank() -> None:
    wait = main_thread_stack((DUMPS / "ddp_backward_wait.txt").read_text())
    sleep = main_thread_stack((DUMPS / "toy_ddp_sleep.txt").read_text())
    stacks = {0: wait, 1: wait, 2: sleep, 3: wait}
    found = culprit({r: ProcessEvidence("sleeping", False, s) for r, s in stacks.items()})
    assert found is not None and found.rank == 2
    assert "its stack (main (toy_ddp.py))" in found.why
    assert "3 ranks waiting in _engine_run_backward (graph.py)" in found.why
    assert describe_stacks(stacks) == (
        "3 ranks (0, 1, 3) in _engine_run_backward (graph.py) < backward (__init__.py) "
        "< Tensor.backward (_tensor.py); rank 2 in main (toy_ddp.py) < <module> (toy_ddp.py) "
        "< _run_code (<frozen runpy>)"
    )


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    code = "import time\ndef wait_here():\n    time.sleep(60)\nprint(flush=True)\nwait_here()\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"\n"  # in its wait from here
    yield proc
    proc.kill()
    proc.wait()


needs_py_spy = pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed")


@needs_py_spy
def test_a_real_dump_of_a_sleeping_process(sleeper: subprocess.Popen[bytes]) -> None:
    dump = PySpy().dump(sleeper.pid)
    assert main_thread_stack(dump) == "wait_here (<string>)\n<module> (<string>)"


@needs_py_spy
def test_a_gone_process_gives_nothing_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    spy = PySpy()
    with caplog.at_level(logging.WARNING, logger="train_supervisor"):
        assert spy.dump(gone.pid) == "" and spy.dump(gone.pid) == ""
    assert len(caplog.records) == 1 and f"pid {gone.pid} failed" in caplog.text
    assert spy.unusable is None, "another process may still be dumped"


def test_a_missing_py_spy_leaves_state_and_cpu(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="train_supervisor"):
        spy = PySpy(executable="/nonexistent/py-spy")
        assert spy.dump(os.getpid()) == "" and spy.dump(os.getpid()) == ""
    assert spy.unusable is not None and "cannot run" in spy.unusable
    assert len(caplog.records) == 1 and "process state and CPU only" in caplog.text


@needs_py_spy
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_no_ptrace_permission_is_said_once(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    # The real py-spy, run as nobody: the sidecar without SYS_PTRACE.
    as_nobody = tmp_path / "py-spy-as-nobody"
    as_nobody.write_text(
        f'#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups {find_py_spy()} "$@"\n'
    )
    as_nobody.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="train_supervisor"):
        spy = PySpy(executable=str(as_nobody))
        assert spy.dump(sleeper.pid) == "" and spy.dump(sleeper.pid) == ""
    assert spy.unusable is not None and "SYS_PTRACE" in spy.unusable
    assert len(caplog.records) == 1, caplog.text


@needs_py_spy
def test_rounds_run_beside_the_caller(sleeper: subprocess.Popen[bytes]) -> None:
    rounds = StackRounds(PySpy())
    key = (0, ((3, sleeper.pid),))
    assert rounds.started_at(key) is None
    rounds.start(key, now=100.0)
    assert rounds.started_at(key) == 100.0
    assert rounds.finished((1, ((3, sleeper.pid),))) is None, "another generation's key"
    deadline = time.monotonic() + 10
    while (stacks := rounds.finished(key)) is None:
        assert time.monotonic() < deadline, "no stacks within 10 s"
        time.sleep(0.01)
    assert stacks == {3: "wait_here (<string>)\n<module> (<string>)"}
