"""`pip install .` as the Dockerfile runs it, in a fresh virtualenv: a working train-supervisor
without torch.

The source tree is what the Dockerfile's COPY lines name, copied into an empty directory, and
the install command is the Dockerfile's own `RUN pip install ...` line: a file the install needs
but the image leaves out, or an option the install cannot honour, fails here. pip uses this
machine's configured package index, as `.ci/run` does.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobs import REPO, RunningJob

TOKEN = "install-test-token-0123456789abcdef"
SERVING = re.compile(r"serving on \S+:(\d+)")


def dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def copied_paths() -> list[str]:
    """The sources of every COPY instruction (the last word is the destination)."""
    paths = []
    for line in dockerfile_lines():
        if line.startswith("COPY "):
            words = shlex.split(line)[1:]
            assert not any(w.startswith("--") for w in words), f"not handled here: {line}"
            paths += words[:-1]
    return paths


def pip_install_arguments() -> list[str]:
    """The arguments of the Dockerfile's `RUN pip install ...`, up to its first `&&`."""
    for line in dockerfile_lines():
        if line.startswith("RUN pip install "):
            return shlex.split(line.removeprefix("RUN pip install ").split("&&")[0])
    raise AssertionError("the Dockerfile has no `RUN pip install` line")


def clean_env() -> dict[str, str]:
    """This machine's environment (pip's configuration included) without what would make the
    new virtualenv see this checkout or configure the supervisor."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "JOB_COMPLETION_INDEX")
        and not name.startswith("SUPERVISOR_")
    }


def run(argv: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pip_install_from_the_source_tree_gives_a_working_sidecar_without_torch(
    tmp_path: Path,
) -> None:
    source, venv = tmp_path / "src", tmp_path / "venv"
    source.mkdir()
    for name in copied_paths():
        target = REPO / name
        if target.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            shutil.copytree(target, source / name, ignore=ignore)
        else:
            shutil.copy2(target, source / name)
    created = run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    assert created.returncode == 0, created.stderr
    bin_dir = venv / "bin"
    installed = run([str(bin_dir / "pip"), "install", *pip_install_arguments()], source, 240)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    python = str(bin_dir / "python")
    no_torch = run([python, "-c", "import torch"], tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    kube = run([python, "-c", "import kubernetes.client"], tmp_path)  # the kube extra: Events
    assert kube.returncode == 0, kube.stderr
    where = run([python, "-c", "import supervisor, launcher; print(supervisor.__file__)"], tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), "imported from the checkout"

    helped = run([str(bin_dir / "train-supervisor"), "--help"], tmp_path)
    assert helped.returncode == 0 and "serve" in helped.stdout, helped.stderr
    probed = run([str(bin_dir / "train-supervisor"), "probe"], tmp_path)
    assert probed.returncode == 0, probed.stderr
    reports = json.loads(probed.stdout)
    assert reports and all(isinstance(r["present"], bool) for r in reports)
    if not Path("/dev/nvidia0").exists():
        assert [r["present"] for r in reports] == [False] * len(reports)

    env = {**clean_env(), "SUPERVISOR_BIND": "127.0.0.1", "SUPERVISOR_TOKEN": TOKEN}
    serve = RunningJob([str(bin_dir / "train-supervisor"), "serve", "--port", "0"], env)
    try:
        serve.wait_for(lambda: SERVING.search(serve.stderr) is not None, 30, "serving on")
        match = SERVING.search(serve.stderr)
        assert match is not None
        address = f"127.0.0.1:{match.group(1)}"
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        status = run(
            [str(bin_dir / "train-supervisor"), "status", "--address", address, "--json"], tmp_path
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["state"] == "JOB_STATE_STARTING"
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.wait(20) == 0, serve.stderr
    finally:
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.wait(10)
    assert "SIGTERM: stopping" in serve.stderr
