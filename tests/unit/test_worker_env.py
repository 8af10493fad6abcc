"""supervisor/workers/worker_env.py: the environment a worker sees is torchrun's."""

from __future__ import annotations

import os
from collections.abc import Mapping

from supervisor.workers.worker_env import GenerationLayout, error_file_path, torchrun_env

# What torch.distributed.elastic's local agent sets for every worker.
TORCHRUN_VARIABLES = {
    "LOCAL_RANK",
    "RANK",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_NAME",
    "LOCAL_WORLD_SIZE",
    "WORLD_SIZE",
    "GROUP_WORLD_SIZE",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_SIGNALS_TO_HANDLE",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    "TORCHELASTIC_ERROR_FILE",
}


def make_env(
    *,
    generation: int = 2,
    rank: int = 5,
    local_rank: int = 1,
    group_rank: int = 1,
    base_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    layout = GenerationLayout(
        generation=generation,
        world_size=8,
        group_world_size=2,
        master_addr="10.0.0.7",
        master_port=41234,
    )
    return torchrun_env(
        layout=layout,
        rank=rank,
        local_rank=local_rank,
        local_world_size=4,
        group_rank=group_rank,
        role="trainer",
        run_id="job-42",
        max_restarts=7,
        error_file_dir="/errors",
        base_env={} if base_env is None else base_env,
    )


def test_every_torchrun_variable_has_its_value() -> None:
    env = make_env()
    assert env.keys() >= TORCHRUN_VARIABLES
    assert {k: env[k] for k in TORCHRUN_VARIABLES} == {
        "LOCAL_RANK": "1",
        "RANK": "5",
        "GROUP_RANK": "1",
        "ROLE_RANK": "5",
        "ROLE_NAME": "trainer",
        "LOCAL_WORLD_SIZE": "4",
        "WORLD_SIZE": "8",
        "GROUP_WORLD_SIZE": "2",
        "ROLE_WORLD_SIZE": "8",
        "MASTER_ADDR": "10.0.0.7",
        "MASTER_PORT": "41234",
        "TORCHELASTIC_RESTART_COUNT": "2",
        "TORCHELASTIC_MAX_RESTARTS": "7",
        "TORCHELASTIC_RUN_ID": "job-42",
        "TORCHELASTIC_USE_AGENT_STORE": "False",
        "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "TORCHELASTIC_ERROR_FILE": os.path.join("/errors", "gen_2", "rank_5", "error.json"),
    }


def test_nothing_but_torchrun_variables_without_a_base_env() -> None:
    assert set(make_env()) == TORCHRUN_VARIABLES


def test_every_value_is_a_string() -> None:
    # The env travels in a protobuf map<string, string> and into os.environ.
    assert all(isinstance(v, str) for v in make_env(base_env={"A": "b"}).values())


def test_base_env_is_kept_and_not_mutated() -> None:
    base = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin", "MY_FLAG": "x"}
    env = make_env(base_env=base)
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["PATH"] == "/usr/bin"
    assert env["MY_FLAG"] == "x"
    assert base == {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin", "MY_FLAG": "x"}
    assert "RANK" not in base


def test_torchrun_variables_override_stale_ones_in_the_base_env() -> None:
    # A launcher started from inside another torchrun job must not leak its RANK.
    env = make_env(base_env={"RANK": "99", "MASTER_PORT": "1", "TORCHELASTIC_RESTART_COUNT": "9"})
    assert env["RANK"] == "5"
    assert env["MASTER_PORT"] == "41234"
    assert env["TORCHELASTIC_RESTART_COUNT"] == "2"


def test_nccl_async_error_handling_setting_of_the_user_is_kept() -> None:
    env = make_env(base_env={"TORCH_NCCL_ASYNC_ERROR_HANDLING": "0"})
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "0"


def test_restart_count_is_the_generation() -> None:
    for generation in (0, 1, 13):
        assert make_env(generation=generation)["TORCHELASTIC_RESTART_COUNT"] == str(generation)


def test_error_file_is_per_generation_and_rank() -> None:
    assert error_file_path("/d", 3, 5) == os.path.join("/d", "gen_3", "rank_5", "error.json")
    paths = {
        make_env(generation=g, rank=r, local_rank=r % 4)["TORCHELASTIC_ERROR_FILE"]
        for g in (0, 1)
        for r in (4, 5)
    }
    assert len(paths) == 4  # no two ranks or generations share an error file
    assert all(p.startswith("/errors" + os.sep) for p in paths)


def test_rank_and_local_rank_are_independent() -> None:
    env = make_env(rank=6, local_rank=2, group_rank=1)
    assert (env["RANK"], env["ROLE_RANK"], env["LOCAL_RANK"], env["GROUP_RANK"]) == (
        "6",
        "6",
        "2",
        "1",
    )
