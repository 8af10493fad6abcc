"""launcher/launch/args.py: torchrun's command line and PET_* environment."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import pytest

from launcher.launch.args import UNSUPPORTED_TORCHRUN_FLAGS, LaunchConfig, UsageError, parse_args
from launcher.launch.main import worker_spec
from train_supervisor.v1 import supervisor_pb2 as pb


@pytest.fixture
def script(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "train.py"
    path.write_text("print('hi')\n")
    return str(path)


def parse(
    argv: Sequence[str], env: Mapping[str, str] | None = None, cpu: int = 8, gpu: int = 0
) -> LaunchConfig:
    return parse_args(list(argv), {} if env is None else env, cpu, gpu)


def usage_error(
    argv: Sequence[str], env: Mapping[str, str] | None = None, cpu: int = 8, gpu: int = 0
) -> str:
    with pytest.raises(UsageError) as info:
        parse(argv, env, cpu, gpu)
    return str(info.value)


# ------------------------------------------------------------------- defaults
def test_defaults_match_torchrun(script: str) -> None:
    config = parse([script])
    assert config.nnodes == 1
    assert config.nproc_per_node == 1
    assert config.node_rank == 0
    assert config.master_addr == "127.0.0.1"
    assert config.master_port == 29500
    assert config.max_restarts == 0
    assert config.role == "default"
    assert config.run_id == "none"
    assert config.script == script
    assert config.script_args == ()
    assert not config.module and not config.no_python and not config.standalone
    assert config.redirects == {0: 0} and config.tee == {0: 0}
    assert config.local_ranks_filter is None


# ------------------------------------------------------------- flag spellings
@pytest.mark.parametrize(
    ("flag", "value", "attribute", "expected"),
    [
        ("nproc-per-node", "3", "nproc_per_node", 3),
        ("max-restarts", "4", "max_restarts", 4),
        ("master-addr", "10.1.2.3", "master_addr", "10.1.2.3"),
        ("master-port", "1234", "master_port", 1234),
        ("monitor-interval", "0.5", "monitor_interval", 0.5),
        ("rdzv-id", "job7", "run_id", "job7"),
        ("run-id", "job8", "run_id", "job8"),
        ("log-dir", "/logs", "log_dir", "/logs"),
        ("local-ranks-filter", "0,2", "local_ranks_filter", frozenset({0, 2})),
        ("warm-spares", "2", "warm_spares", 2),
    ],
)
@pytest.mark.parametrize("style", ["dash", "underscore", "equals"])
def test_torchrun_flags_in_dash_and_underscore_forms(
    script: str, flag: str, value: str, attribute: str, expected: object, style: str
) -> None:
    if style == "underscore":
        argv = [f"--{flag.replace('-', '_')}", value]
    elif style == "equals":
        argv = [f"--{flag}={value}"]
    else:
        argv = [f"--{flag}", value]
    assert getattr(parse([*argv, script]), attribute) == expected


@pytest.mark.parametrize("flag", ["--node-rank", "--node_rank"])
def test_node_rank_spellings(script: str, flag: str) -> None:
    # Only node rank 0 is valid with one node: the flag is read, not ignored.
    assert parse([flag, "0", script]).node_rank == 0
    assert "--node-rank 1" in usage_error([flag, "1", script])


@pytest.mark.parametrize("flag", ["--no-python", "--no_python"])
def test_no_python_spellings(tmp_path: pathlib.Path, flag: str) -> None:
    exe = tmp_path / "run.sh"
    exe.write_text("#!/bin/sh\necho hi\n")
    config = parse([flag, str(exe), "a"])
    assert config.no_python
    assert config.warm_spares == 0  # a spare cannot be handed a rank without the bootstrap
    assert config.script_args == ("a",)


def test_standalone_forces_loopback_and_makes_a_run_id(script: str) -> None:
    config = parse(["--standalone", "--master-addr", "10.9.9.9", script])
    assert config.standalone
    assert config.master_addr in ("localhost", "127.0.0.1")
    assert config.run_id not in ("", "none")
    assert parse(["--standalone", script]).run_id != config.run_id  # one per run
    assert parse(["--standalone", "--rdzv-id", "mine", script]).run_id == "mine"


# -------------------------------------------------------------- nproc-per-node
@pytest.mark.parametrize(
    ("value", "cpu", "gpu", "expected"),
    [
        ("4", 8, 0, 4),
        ("cpu", 6, 2, 6),
        ("gpu", 6, 2, 2),
        ("auto", 6, 2, 2),  # GPUs when there are any
        ("auto", 6, 0, 6),  # CPUs otherwise
    ],
)
def test_nproc_per_node_forms(script: str, value: str, cpu: int, gpu: int, expected: int) -> None:
    config = parse(["--nproc-per-node", value, script], cpu=cpu, gpu=gpu)
    assert config.nproc_per_node == expected
    assert sorted(config.redirects) == list(range(expected))


def test_nproc_per_node_gpu_without_a_gpu_is_a_usage_error(script: str) -> None:
    assert "gpu" in usage_error(["--nproc-per-node", "gpu", script], gpu=0)


@pytest.mark.parametrize("value", ["0", "-2"])
def test_nproc_per_node_below_one_is_a_usage_error(script: str, value: str) -> None:
    assert "--nproc-per-node" in usage_error([f"--nproc-per-node={value}", script])


def test_nproc_per_node_not_a_number_is_a_usage_error(script: str) -> None:
    assert "integer" in usage_error(["--nproc-per-node", "many", script])


# -------------------------------------------------------------------- PET_* env
def test_pet_environment_sets_defaults(script: str) -> None:
    env = {
        "PET_NPROC_PER_NODE": "3",
        "PET_MAX_RESTARTS": "5",
        "PET_MASTER_ADDR": "10.0.0.1",
        "PET_MASTER_PORT": "4242",
        "PET_RDZV_ID": "from-env",
        "PET_ROLE": "trainer",
    }
    config = parse([script], env)
    assert config.nproc_per_node == 3
    assert config.max_restarts == 5
    assert config.master_addr == "10.0.0.1"
    assert config.master_port == 4242
    assert config.run_id == "from-env"
    assert config.role == "trainer"


def test_pet_nproc_per_node_accepts_the_symbolic_forms(script: str) -> None:
    assert parse([script], {"PET_NPROC_PER_NODE": "gpu"}, gpu=4).nproc_per_node == 4


def test_flags_override_pet_environment(script: str) -> None:
    env = {"PET_NPROC_PER_NODE": "3", "PET_MAX_RESTARTS": "5"}
    config = parse(["--nproc_per_node", "2", "--max-restarts", "1", script], env)
    assert config.nproc_per_node == 2
    assert config.max_restarts == 1


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("0", False), ("", False)])
def test_pet_boolean_flags(script: str, value: str, expected: bool) -> None:
    assert parse([script], {"PET_STANDALONE": value}).standalone is expected


def test_bad_pet_value_is_a_usage_error_naming_the_variable(script: str) -> None:
    error = usage_error([script], {"PET_MAX_RESTARTS": "lots"})
    assert error == "PET_MAX_RESTARTS must be an integer, got 'lots'"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PET_SUPERVISOR_PORT", "99999", "PET_SUPERVISOR_PORT must be <= 65535, got 99999"),
        ("PET_MASTER_PORT", "70000", "PET_MASTER_PORT must be <= 65535, got 70000"),
        ("PET_NNODES", "0", "PET_NNODES must be >= 1, got 0"),
        ("PET_NPROC_PER_NODE", "many", "PET_NPROC_PER_NODE must be an integer, got 'many'"),
        ("PET_UNWIND_TIMEOUT", "nan", "PET_UNWIND_TIMEOUT must be a finite number, got 'nan'"),
        ("PET_SPARE_IMPORTS", "all", "PET_SPARE_IMPORTS must be one of"),
    ],
)
def test_pet_values_are_validated_like_the_flags(
    script: str, variable: str, value: str, expected: str
) -> None:
    """PET_SUPERVISOR_PORT=99999 used to pass and wrap to port 34463 when bound."""
    assert usage_error([script], {variable: value}).startswith(expected)


def test_a_bad_flag_value_names_the_flag_even_with_the_variable_set(script: str) -> None:
    env = {"PET_SUPERVISOR_PORT": "99999"}
    error = usage_error(["--supervisor-port", "65536", script], env)
    assert error == "--supervisor-port must be <= 65535, got 65536"


def test_standalone_supervisor_port_defaults_to_any_free_port(script: str) -> None:
    """29400 is torchrun's c10d default too: a fixed default failed to start next to it."""
    assert parse(["--standalone", script]).supervisor_port == 0
    assert parse(["--standalone", "--supervisor-port", "29411", script]).supervisor_port == 29411


# -------------------------------------------------------------- refused input
def test_unknown_flag_is_a_usage_error(script: str) -> None:
    assert "--frobnicate" in usage_error(["--frobnicate", script])


@pytest.mark.parametrize(
    "argv",
    [
        ["--rdzv-backend", "c10d"],
        ["--rdzv_backend=c10d"],
        ["--rdzv-endpoint", "host:29400"],
        ["--start-method", "spawn"],
        ["--max-nodes", "4"],
    ],
)
def test_unsupported_torchrun_flag_is_refused_by_name(script: str, argv: list[str]) -> None:
    name = argv[0].split("=")[0]
    message = usage_error([*argv, script])
    assert name in message
    assert "not support" in message


def test_every_unsupported_flag_is_refused(script: str) -> None:
    for flag in UNSUPPORTED_TORCHRUN_FLAGS:
        assert flag in usage_error([flag, "x", script]), flag


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PET_RDZV_BACKEND", "c10d"),
        ("PET_RDZV_ENDPOINT", "host:29400"),
        ("PET_START_METHOD", "spawn"),
        ("PET_MAX_NODES", "4"),
    ],
)
def test_unsupported_torchrun_flag_in_pet_environment_is_refused_by_name(
    script: str, name: str, value: str
) -> None:
    message = usage_error([script], {name: value})
    assert name in message
    assert "not support" in message


def test_every_unsupported_flag_is_refused_from_the_pet_environment(script: str) -> None:
    for flag in UNSUPPORTED_TORCHRUN_FLAGS:
        name = "PET_" + flag.lstrip("-").replace("-", "_").upper()
        assert name in usage_error([script], {name: "x"}), name


def test_elastic_nnodes_is_refused(script: str) -> None:
    assert "MIN:MAX" in usage_error(["--nnodes", "1:4", script])


def test_multi_node_is_refused_in_standalone_mode(script: str) -> None:
    error = usage_error(["--standalone", "--nnodes", "2", "--node-rank", "1", script])
    assert "--standalone runs one node" in error


def test_multi_node_is_accepted_with_the_sidecar(script: str) -> None:
    config = parse_args(["--nnodes", "2", "--node-rank", "1", script], {}, cpu_count=4)
    assert (config.nnodes, config.node_rank, config.standalone) == (2, 1, False)


def test_missing_script_is_a_usage_error() -> None:
    assert "training_script" in usage_error(["--nproc-per-node", "2"])


def test_script_that_does_not_exist_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "nope.py")
    assert missing in usage_error([missing])


def test_non_python_script_needs_no_python(tmp_path: pathlib.Path) -> None:
    exe = tmp_path / "run.sh"
    exe.write_text("#!/bin/bash\necho hi\n")
    message = usage_error([str(exe)])
    assert "--no-python" in message
    assert str(exe) in message
    assert parse(["--no-python", str(exe)]).script == str(exe)


def test_python_shebang_without_py_suffix_is_a_python_script(tmp_path: pathlib.Path) -> None:
    exe = tmp_path / "train"
    exe.write_text("#!/usr/bin/env python3\nprint('hi')\n")
    assert not parse([str(exe)]).no_python


def test_directory_with_main_is_a_python_target(tmp_path: pathlib.Path) -> None:
    (tmp_path / "__main__.py").write_text("print('hi')\n")
    assert parse([str(tmp_path)]).script == str(tmp_path)


def test_module_needs_no_file() -> None:
    config = parse(["-m", "some.pkg.train", "--epochs", "3"])
    assert config.module
    assert config.script == "some.pkg.train"
    assert config.script_args == ("--epochs", "3")
    assert parse(["--module", "x"]).module


def test_module_and_no_python_are_exclusive() -> None:
    assert "--no-python" in usage_error(["-m", "--no-python", "pkg"])


# ------------------------------------------------------- redirects, tee, filter
@pytest.mark.parametrize("flag", ["-r", "--redirects", "-t", "--tee"])
def test_std_map_for_every_rank(script: str, flag: str) -> None:
    config = parse(["--nproc-per-node", "3", "--log-dir", "/logs", flag, "3", script])
    mapping = config.redirects if flag in ("-r", "--redirects") else config.tee
    assert mapping == {0: 3, 1: 3, 2: 3}


def test_std_map_per_local_rank(script: str) -> None:
    config = parse(["--nproc-per-node", "2", "--log-dir", "/l", "-r", "0:1,1:2", script])
    assert config.redirects == {0: 1, 1: 2}
    assert config.tee == {0: 0, 1: 0}


@pytest.mark.parametrize("value", ["4", "-1", "x", "0:1:2", "a:1", "0:9"])
def test_invalid_std_map_is_a_usage_error(script: str, value: str) -> None:
    assert "--tee" in usage_error(["--log-dir", "/l", "--tee", value, script])


def test_redirects_need_a_log_dir(script: str) -> None:
    assert "--log-dir" in usage_error(["--redirects", "3", script])


def test_invalid_local_ranks_filter_is_a_usage_error(script: str) -> None:
    assert "--local-ranks-filter" in usage_error(["--local-ranks-filter", "0,one", script])


# --------------------------------------------------------------- other values
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--max-restarts", "-1"], "--max-restarts"),
        (["--max-restarts", "two"], "integer"),
        (["--monitor-interval", "fast"], "number"),
        (["--master-port", "port"], "--master-port"),
        (["--warm-spares", "-1"], "--warm-spares"),
        (["--unwind-timeout", "0"], "--unwind-timeout"),
        (["--crash-loop-threshold", "0"], "--crash-loop-threshold"),
        (["--failure-settle", "-1"], "--failure-settle"),
        (["--term-timeout", "soon"], "--term-timeout"),
        (["--nnodes", "0"], "--nnodes"),
    ],
)
def test_invalid_values_are_usage_errors(script: str, argv: list[str], needle: str) -> None:
    assert needle in usage_error([*argv, script])


def test_supervisor_settings_are_parsed(script: str) -> None:
    config = parse(
        [
            "--unwind-timeout",
            "2.5",
            "--failure-settle",
            "0",
            "--crash-loop-threshold",
            "5",
            "--term-timeout",
            "7",
            "--supervisor-port",
            "0",
            script,
        ]
    )
    assert config.unwind_timeout == 2.5
    assert config.failure_settle == 0.0
    assert config.crash_loop_threshold == 5
    assert config.term_timeout == 7.0
    assert config.supervisor_port == 0


# --------------------------------------------------------------- OMP_NUM_THREADS
def test_omp_num_threads_defaults_to_one_with_several_workers(script: str) -> None:
    assert parse(["--nproc-per-node", "2", script]).base_env == {"OMP_NUM_THREADS": "1"}


def test_omp_num_threads_of_the_user_wins(script: str) -> None:
    env = {"OMP_NUM_THREADS": "8"}
    assert "OMP_NUM_THREADS" not in parse(["--nproc-per-node", "2", script], env).base_env


def test_omp_num_threads_untouched_with_one_worker(script: str) -> None:
    assert "OMP_NUM_THREADS" not in parse(["--nproc-per-node", "1", script]).base_env


# ----------------------------------------------------------------- script args
def test_script_args_are_passed_through_even_when_they_look_like_flags(script: str) -> None:
    config = parse(
        [
            "--nproc-per-node",
            "2",
            script,
            "--lr",
            "0.1",
            "--nproc-per-node",
            "7",
            "-m",
            "x",
            "--max-restarts=9",
            "--rdzv-backend",
            "c10d",
            "--unknown",
        ]
    )
    assert config.script_args == (
        "--lr",
        "0.1",
        "--nproc-per-node",
        "7",
        "-m",
        "x",
        "--max-restarts=9",
        "--rdzv-backend",
        "c10d",
        "--unknown",
    )
    # The launcher's own settings come from before the script only.
    assert config.nproc_per_node == 2
    assert config.max_restarts == 0
    assert not config.module


def test_script_help_goes_to_the_script(script: str) -> None:
    assert parse([script, "--help"]).script_args == ("--help",)


def test_relative_script_path_is_kept(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "train.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert parse(["train.py"]).script == "train.py"
    assert os.path.exists(parse(["train.py"]).script)


def test_spare_imports_defaults_to_the_workers_modules_and_refuses_other_words(
    script: str,
) -> None:
    assert parse([script]).spare_imports == "workers"
    assert parse(["--spare-imports", "torch", script]).spare_imports == "torch"
    assert parse([script], {"PET_SPARE_IMPORTS": "torch"}).spare_imports == "torch"
    error = usage_error(["--spare-imports", "all", script])
    assert "--spare-imports" in error and "'all'" in error, error


def test_preimport_defaults_to_torch_dynamo_takes_a_list_or_none_and_refuses_bad_names(
    script: str,
) -> None:
    assert parse([script]).preimport == ("torch._dynamo",)
    assert parse(["--preimport", "transformers, torch._dynamo", script]).preimport == (
        "transformers",
        "torch._dynamo",
    )
    assert parse(["--preimport", "none", script]).preimport == ()
    assert parse(["--preimport", "", script]).preimport == ()
    assert parse([script], {"PET_PREIMPORT": "none"}).preimport == ()
    error = usage_error(["--preimport", "torch._dynamo,my-lib", script])
    assert "--preimport" in error and "'my-lib'" in error, error


def test_reuse_freed_memory_is_on_unless_turned_off_and_refuses_other_values(script: str) -> None:
    assert parse([script]).reuse_freed_memory is True
    assert parse(["--reuse-freed-memory", "off", script]).reuse_freed_memory is False
    assert parse([script], {"PET_REUSE_FREED_MEMORY": "off"}).reuse_freed_memory is False
    error = usage_error(["--reuse-freed-memory", "yes", script])
    assert "--reuse-freed-memory" in error and "'yes'" in error, error


def test_reentry_is_auto_unless_set_and_refuses_other_values(script: str) -> None:
    assert parse([script]).reentry == "auto"
    assert parse(["--reentry", "never", script]).reentry == "never"
    assert parse([script], {"PET_REENTRY": "always"}).reentry == "always"
    assert parse(["--reentry", "auto", script], {"PET_REENTRY": "never"}).reentry == "auto"
    error = usage_error(["--reentry", "sometimes", script])
    assert error == "--reentry must be one of auto, always, never, got 'sometimes'", error
    assert "'no'" in usage_error([script], {"PET_REENTRY": "no"})
    spec = worker_spec(parse(["--reentry", "never", script]), "/tmp/errors")
    assert spec.reentry == pb.ReentryMode.REENTRY_NEVER


def test_time_forward_is_off_unless_turned_on_and_refuses_other_values(script: str) -> None:
    assert parse([script]).time_forward is False
    assert parse(["--time-forward", "on", script]).time_forward is True
    assert parse([script], {"PET_TIME_FORWARD": "on"}).time_forward is True
    with pytest.raises(UsageError, match="--time-forward"):
        parse(["--time-forward", "yes", script])
