"""Pods on loopback: per pod a `train-supervisor serve` sidecar and a `train-launch` trainer.

Shared by the multi-pod end-to-end tests and bench/recovery_multi_pod.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from jobs import REPO, TOY_DDP, RunningJob, job_env
from netns import Host

from supervisor.workers.ports import free_port

TOKEN = "multi-pod-test-token-0123456789"


class Pods:
    """N pods: each a `train-supervisor serve` sidecar and a `train-launch` trainer."""

    def __init__(
        self,
        nnodes: int,
        nproc: int = 2,
        warm_spares: int = 1,
        hosts: Sequence[Host] = (),
        heartbeat_timeout_s: float = 5.0,
        tls: Optional[tuple[Path, Path]] = None,
        launcher_env: Optional[dict[str, str]] = None,
        sidecar_env: Optional[dict[str, str]] = None,
        snapshot_root: Optional[Path] = None,
    ) -> None:
        """With `hosts` (one per pod), pod i runs in hosts[i]'s network namespace.

        With `tls` (a certificate, its own CA, and its key), supervisors talk TLS
        to each other; each pod's launcher and workers use plaintext on loopback.
        With `snapshot_root`, pod i keeps its snapshots in snapshot_root/pod-<i> (its
        own shared memory, as each pod has on its own node).
        """
        self.tls = tls
        self.launcher_env = launcher_env or {}
        self.sidecar_env = sidecar_env or {}
        self.snapshot_root = snapshot_root
        self.nproc = nproc
        self.warm_spares = warm_spares
        self.hosts = hosts
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.ports = [free_port() for _ in range(nnodes)]
        addresses = [h.address for h in hosts] or ["127.0.0.1"] * nnodes
        self.peers = ",".join(f"{a}:{p}" for a, p in zip(addresses, self.ports))
        self.sidecars = [self.start_sidecar(i) for i in range(nnodes)]
        self.launchers: list[RunningJob] = []
        self.script = TOY_DDP

    def start_sidecar(self, node: int) -> RunningJob:
        env = job_env(
            SUPERVISOR_NNODES=str(len(self.ports)),
            SUPERVISOR_NODE_RANK=str(node),
            SUPERVISOR_PEERS=self.peers,
            SUPERVISOR_PORT=str(self.ports[node]),
            SUPERVISOR_BIND=self.bind(node),
            SUPERVISOR_TOKEN=TOKEN,
            SUPERVISOR_HEARTBEAT_TIMEOUT_S=str(self.heartbeat_timeout_s),
            **self.sidecar_env,
        )
        if self.tls is not None:
            cert, key = self.tls
            env.update(SUPERVISOR_TLS_CERT=str(cert), SUPERVISOR_TLS_KEY=str(key))
            env["SUPERVISOR_TLS_CA"] = str(cert)
        return RunningJob(
            self.command(node, [sys.executable, "-m", "supervisor.cli", "serve"]), env
        )

    def bind(self, node: int) -> str:
        if not self.hosts:
            return "127.0.0.1"
        # TLS wants the pod's own IP: it adds plaintext on loopback for the pod's processes.
        return self.hosts[node].address if self.tls else "0.0.0.0"

    def command(self, node: int, argv: list[str]) -> list[str]:
        """`argv` as run on pod `node` (inside its namespace, if it has one)."""
        return self.hosts[node].command(argv) if self.hosts else argv

    def start_launchers(self, script_args: list[str], script: Path = TOY_DDP) -> None:
        self.script_args, self.script = script_args, script
        self.launchers = [self.start_launcher(node) for node in range(len(self.ports))]

    def start_launcher(self, node: int) -> RunningJob:
        argv = [
            sys.executable, "-m", "launcher.launch.main", "--nnodes", str(len(self.ports)),
            "--node-rank", str(node), "--nproc-per-node", str(self.nproc), "--max-restarts", "3",
            "--warm-spares", str(self.warm_spares),
            "--supervisor-address", f"127.0.0.1:{self.ports[node]}",
            str(self.script), *self.script_args,
        ]  # fmt: skip
        env = job_env(SUPERVISOR_TOKEN=TOKEN, **self.launcher_env)
        if self.snapshot_root is not None:
            env["TRAIN_SUPERVISOR_SNAPSHOT_DIR"] = str(self.snapshot_dir(node))
        if self.hosts:  # gloo finds its interface by hostname otherwise: the host's, not the pod's
            env["GLOO_SOCKET_IFNAME"] = self.hosts[node].interface
        return RunningJob(self.command(node, argv), env)

    def status(self, node: int) -> dict[str, Any]:
        """`train-supervisor status --json` on pod `node` (in its namespace, if any)."""
        argv = [sys.executable, "-m", "supervisor.cli", "status", "--json",
                "--address", f"127.0.0.1:{self.ports[node]}"]  # fmt: skip
        done = subprocess.run(
            self.command(node, argv), cwd=REPO, env=job_env(SUPERVISOR_TOKEN=TOKEN),
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        status: dict[str, Any] = json.loads(done.stdout)
        return status

    def snapshot_dir(self, node: int) -> Path:
        assert self.snapshot_root is not None, "Pods(snapshot_root=...) gives each pod its own"
        return self.snapshot_root / f"pod-{node}"

    def replace_pod(self, node: int, wipe_memory: bool = False) -> None:
        """SIGKILL the pod's sidecar, launcher and workers; start new ones (same index).

        wipe_memory: the new pod is on another node: its snapshot directory starts empty.
        """
        self.launchers[node].kill_tree()
        self.sidecars[node].kill_tree()
        self.launchers[node].wait(30)
        self.sidecars[node].wait(30)
        if wipe_memory:
            shutil.rmtree(self.snapshot_dir(node))
        self.sidecars[node] = self.start_sidecar(node)
        self.launchers[node] = self.start_launcher(node)

    def logs(self) -> str:
        return "\n".join(j.stderr for j in (*self.sidecars, *self.launchers))

    def stop(self) -> None:
        for job in (*self.launchers, *self.sidecars):
            job.kill_tree()
