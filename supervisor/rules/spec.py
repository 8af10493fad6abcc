"""What train-launch was asked to run, as torchrun's WorkerSpec: the job's rules read it,
supervisor/rpc/spec_wire.py makes it from the launcher's AttachLauncher."""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisor.rules.vocabulary import ReentryMode


@dataclass
class WorkerSpec:
    run_id: str = ""
    role: str = ""
    nnodes: int = 0
    node_rank: int = 0
    nproc_per_node: int = 0
    max_restarts: int = 0
    master_addr: str = ""
    # False for --no-python: workers cannot re-enter in place, so a failure
    # restarts every local process (torchrun's behaviour).
    bootstrapped: bool = False
    warm_spares: int = 0
    error_file_dir: str = ""
    base_env: dict[str, str] = field(default_factory=dict)  # every worker gets these
    snapshot_dir: str = ""  # the pod's shared-memory directory of the ranks' arenas
    reentry: ReentryMode = ReentryMode.REENTRY_AUTO  # train-launch --reentry
