"""The environment a worker sees: exactly what torchrun's local agent sets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from supervisor.rules.spec import WorkerSpec


@dataclass(frozen=True)
class GenerationLayout:
    generation: int
    world_size: int
    group_world_size: int  # number of nodes
    master_addr: str
    master_port: int


def error_file_path(error_file_dir: str, generation: int, rank: int) -> str:
    return os.path.join(error_file_dir, f"gen_{generation}", f"rank_{rank}", "error.json")


def torchrun_env(
    *,
    layout: GenerationLayout,
    rank: int,
    local_rank: int,
    local_world_size: int,
    group_rank: int,
    role: str,
    run_id: str,
    max_restarts: int,
    error_file_dir: str,
    base_env: Mapping[str, str],
) -> dict[str, str]:
    """torchrun's worker variables for one rank in one generation.

    ROLE_* equal the global values because a job has one role, as in torchrun.
    Workers host their own TCPStore on the fresh MASTER_PORT of each
    generation, so TORCHELASTIC_USE_AGENT_STORE is False: no stale store.
    """
    env = dict(base_env)
    env.update(
        {
            "LOCAL_RANK": str(local_rank),
            "RANK": str(rank),
            "GROUP_RANK": str(group_rank),
            "ROLE_RANK": str(rank),
            "ROLE_NAME": role,
            "LOCAL_WORLD_SIZE": str(local_world_size),
            "WORLD_SIZE": str(layout.world_size),
            "GROUP_WORLD_SIZE": str(layout.group_world_size),
            "ROLE_WORLD_SIZE": str(layout.world_size),
            "MASTER_ADDR": layout.master_addr,
            "MASTER_PORT": str(layout.master_port),
            "TORCHELASTIC_RESTART_COUNT": str(layout.generation),
            "TORCHELASTIC_MAX_RESTARTS": str(max_restarts),
            "TORCHELASTIC_RUN_ID": run_id,
            "TORCHELASTIC_USE_AGENT_STORE": "False",
            "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT",  # torchrun's default
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": base_env.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
            "TORCHELASTIC_ERROR_FILE": error_file_path(error_file_dir, layout.generation, rank),
        }
    )
    return env


def spec_env(
    spec: WorkerSpec,
    rank: int,
    local_rank: int,
    generation: int,
    master_addr: str,
    master_port: int,
) -> dict[str, str]:
    """torchrun_env for one rank of the job a WorkerSpec describes."""
    layout = GenerationLayout(
        generation=generation,
        world_size=spec.nnodes * spec.nproc_per_node,
        group_world_size=spec.nnodes,
        master_addr=master_addr,
        master_port=master_port,
    )
    return torchrun_env(
        layout=layout,
        rank=rank,
        local_rank=local_rank,
        local_world_size=spec.nproc_per_node,
        group_rank=spec.node_rank,
        role=spec.role,
        run_id=spec.run_id,
        max_restarts=spec.max_restarts,
        error_file_dir=spec.error_file_dir,
        base_env=spec.base_env,
    )
