"""The pods of k8s/indexed-job.yaml under podman: play them, fault them, ask them.

Does with podman what the Job controller and the kubelet do in a cluster: one Pod per index
(pod_convert.py), each on its own IP of one podman network, a fresh tmpfs as its /dev/shm, the
sidecar restarted when it is killed, a removed pod created again for the same index.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from images import REPO, SIDECAR_IMAGE, TRAINER_IMAGE, podman
from pod_convert import ConvertedPod, LocalSite, job_of, pod_for_index

MANIFEST = REPO / "k8s" / "indexed-job.yaml"
NETWORK = "train-supervisor-pods"
SUBNET = "10.89.77"  # .0/24; pod i gets .10+i
POD_UID = 10001  # the pod template's runAsUser and fsGroup, and the sidecar image's user
SHM_SIZE = "1g"


class PodmanJob:
    """The Job's pods on this host. `notes` holds every substitution, printed as applied."""

    def __init__(
        self,
        workdir: Path,
        script: Sequence[str],
        nproc_per_node: int = 2,
        sidecar_env: dict[str, str] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.workdir = workdir
        self.log = log
        documents = list(yaml.safe_load_all(MANIFEST.read_text()))
        self.job = job_of(documents)
        self.nnodes = int(self.job["spec"]["completions"])
        self.name = str(self.job["metadata"]["name"])
        self.addresses = [f"{SUBNET}.{10 + i}" for i in range(self.nnodes)]
        self.shm_dirs = [workdir / f"shm-{i}" for i in range(self.nnodes)]
        self.checkpoints = workdir / "checkpoints"
        self.events = workdir / "events"
        self.site = LocalSite(
            sidecar_image=SIDECAR_IMAGE,
            trainer_image=TRAINER_IMAGE,
            token=secrets.token_hex(16),
            pod_addresses=self.addresses,
            shm_dirs=[str(d) for d in self.shm_dirs],
            checkpoints_dir=str(self.checkpoints),
            nproc_per_node=nproc_per_node,
            script=["/workspace/train.py", *script, "--events", "/events"],
            events_dir=str(self.events),
            sidecar_env=sidecar_env or {},
        )
        self.pods: dict[int, ConvertedPod] = {}

    def pod_name(self, index: int) -> str:
        return f"{self.name}-{index}"

    def container(self, index: int, name: str) -> str:
        return f"{self.pod_name(index)}-{name}"  # kube play's <pod>-<container>

    def start(self) -> None:
        if podman("network", "exists", NETWORK, check=False).returncode != 0:
            podman("network", "create", "--subnet", f"{SUBNET}.0/24", NETWORK)
        for index in range(self.nnodes):
            self.remove(index)  # what an earlier, interrupted run left
        for directory in (self.checkpoints, self.events):
            directory.mkdir(parents=True, exist_ok=True)
            _chown(directory)
        for index in range(self.nnodes):
            self.play(index)

    def play(self, index: int) -> None:
        """Create pod `index` with a fresh /dev/shm (emptyDir lives and dies with its pod)."""
        self._fresh_shm(index)
        pod = pod_for_index(self.job, index, self.site)
        self.pods[index] = pod
        for note in pod.notes:
            self.log(f"[{pod.name}] {note}")
        path = self.workdir / f"{pod.name}.yaml"
        path.write_text(yaml.safe_dump(pod.manifest, sort_keys=False))
        podman("kube", "play", "--network", NETWORK, "--ip", self.addresses[index], str(path))

    def remove(self, index: int) -> None:
        """The pod gone at once, its processes SIGKILLed (a lost node), its /dev/shm with it."""
        name = self.pod_name(index)
        if podman("pod", "exists", name, check=False).returncode == 0:
            podman("pod", "kill", name, check=False)
            podman("pod", "rm", "--force", name)
        shm = self.shm_dirs[index]
        if shm.is_mount():
            subprocess.run(["umount", str(shm)], check=True)

    def _fresh_shm(self, index: int) -> None:
        shm = self.shm_dirs[index]
        if shm.is_mount():
            subprocess.run(["umount", str(shm)], check=True)
        shm.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={SHM_SIZE},mode=1777", "tmpfs", str(shm)],
            check=True,
        )  # fmt: skip

    def stop(self) -> None:
        for index in range(self.nnodes):
            self.remove(index)

    def status(self, index: int, timeout: float = 60) -> dict[str, Any]:
        """`train-supervisor status --json` inside pod `index`'s sidecar (loopback, no token)."""
        done = podman(
            "exec", self.container(index, "supervisor"), "train-supervisor", "status", "--json",
            check=False, timeout=timeout,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"status on pod {index}: exit {done.returncode}: {done.stderr}")
        shown: dict[str, Any] = json.loads(done.stdout)
        return shown

    def try_status(self, index: int) -> dict[str, Any]:
        try:
            return self.status(index, timeout=30)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError):
            return {}

    def wait_trainer(self, index: int, timeout: float) -> int:
        """The trainer container's exit code."""
        done = podman("wait", self.container(index, "trainer"), timeout=timeout)
        return int(done.stdout.strip().splitlines()[-1])

    def kill_rank(self, index: int, pid: int) -> None:
        """SIGKILL a worker from inside its pod (the pid as the pod's namespace numbers it)."""
        # The shell's kill: the image has no procps.
        podman("exec", self.container(index, "trainer"), "sh", "-c", f"kill -KILL {int(pid)}")

    def kill_sidecar(self, index: int) -> None:
        podman("kill", "--signal", "KILL", self.container(index, "supervisor"))
        podman("wait", self.container(index, "supervisor"), timeout=60)

    def restart_sidecar(self, index: int) -> None:
        """What the kubelet does for a native sidecar that exited: start it again in place."""
        podman("start", self.container(index, "supervisor"))

    def logs(self, index: int, container: str) -> str:
        done = podman("logs", self.container(index, container), check=False)
        return done.stdout + done.stderr

    def all_logs(self) -> str:
        return "\n".join(
            f"--- {self.container(i, c)} ---\n{self.logs(i, c)[-6000:]}"
            for i in range(self.nnodes)
            for c in ("supervisor", "trainer")
        )

    def read_events(self) -> list[dict[str, Any]]:
        """toy_ddp.py's per-rank event lines (one JSON object each)."""
        records = []
        for path in sorted(self.events.glob("rank_*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    records.append(json.loads(line))
        return records

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.all_logs()}")
            time.sleep(0.5)


def _chown(path: Path) -> None:
    os.chown(path, POD_UID, POD_UID)
