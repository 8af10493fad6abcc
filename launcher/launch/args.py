"""torchrun's command line (and PET_* environment), parsed into a LaunchConfig.

Pure: no process is started here. Every bad input becomes one UsageError line.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Optional

from train_supervisor.arena import snapshot_directory

# The default of --supervisor-address (the pod's sidecar, on loopback).
SUPERVISOR_ADDRESS_ENV = "SUPERVISOR_ADDRESS"
DEFAULT_SUPERVISOR_ADDRESS = "127.0.0.1:29400"
SPARE_IMPORTS = ("workers", "torch")
# DDP's and FSDP's construction imports it (with sympy: ~800 modules); before the freeze, a
# recovery's collection skips them (launcher/worker/warm_imports.py).
DEFAULT_PREIMPORT = "torch._dynamo"
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
REENTRY_MODES = ("auto", "always", "never")  # supervisor/rules/job.py: re-entry and its fallback


class UsageError(Exception):
    """A bad flag or value; the message is the whole explanation."""


# torchrun flags we know but do not implement yet: refused by name, never ignored.
UNSUPPORTED_TORCHRUN_FLAGS = (
    "--rdzv-backend",
    "--rdzv_backend",
    "--rdzv-endpoint",
    "--rdzv_endpoint",
    "--rdzv-conf",
    "--rdzv_conf",
    "--start-method",
    "--start_method",
    "--logs-specs",
    "--logs_specs",
    "--local-addr",
    "--local_addr",
    "--event-log-handler",
    "--event_log_handler",
    "--run-path",
    "--run_path",
    "--max-nodes",
    "--numa-binding",
    "--numa_binding",
    "--signals-to-handle",
    "--signals_to_handle",
    "--duplicate-stdout-filters",
    "--duplicate-stderr-filters",
    "--virtual-local-rank",
    "--virtual_local_rank",
)


@dataclass(frozen=True)
class LaunchConfig:
    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int
    max_restarts: int
    monitor_interval: float
    standalone: bool
    run_id: str
    role: str
    log_dir: Optional[str]
    redirects: dict[int, int]  # local rank -> 0 none, 1 stdout, 2 stderr, 3 both
    tee: dict[int, int]
    local_ranks_filter: Optional[frozenset[int]]
    module: bool
    no_python: bool
    script: str
    script_args: tuple[str, ...]
    warm_spares: int
    unwind_timeout: float
    failure_settle: float
    crash_loop_threshold: int
    term_timeout: float
    supervisor_port: int
    supervisor_address: str
    supervisor_wait: float
    supervisor_grace: float = 300.0  # a lost sidecar may take this long to come back
    base_env: dict[str, str] = field(default_factory=dict)
    snapshot_dir: str = ""  # the pod's shared memory for the job's snapshots
    spare_imports: str = "workers"  # launcher/worker/warm_imports.py
    preimport: tuple[str, ...] = (DEFAULT_PREIMPORT,)
    reuse_freed_memory: bool = True  # launcher/launch/processes.py: REUSE_FREED_TUNABLES
    reentry: str = "auto"  # one of REENTRY_MODES
    time_forward: bool = False  # launcher/worker/heartbeat.py: global module forward hooks


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _env_default(env: Mapping[str, str], dest: str, default: Optional[str]) -> Optional[str]:
    return env.get(_pet_name(dest), default)


def _pet_name(dest: str) -> str:
    return f"PET_{dest.upper()}"


class _StoreGiven(argparse._StoreAction):
    """Stores the value and notes that the flag was given: a bad value taken from PET_*
    instead is then named by its variable, not by a flag the user never typed."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: Optional[str] = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        namespace.given = namespace.given | {self.dest}


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = _Parser(prog="train-launch", description="torchrun drop-in: restart only the failed rank.")

    def opt(
        flags: Sequence[str], dest: str, default: Optional[str], help: str, **kw: object
    ) -> None:
        p.add_argument(
            *flags,
            dest=dest,
            default=_env_default(env, dest, default),
            help=help,
            action=_StoreGiven,
            **kw,  # type: ignore[arg-type]
        )

    def flag(flags: Sequence[str], dest: str, help: str) -> None:
        p.add_argument(
            *flags,
            dest=dest,
            action="store_true",
            help=help,
            default=_env_default(env, dest, None) not in (None, "", "0", "false", "False"),
        )

    p.set_defaults(given=frozenset())
    opt(["--nnodes"], "nnodes", "1", "number of nodes (fixed; MIN:MAX is refused)")
    opt(
        ["--nproc-per-node", "--nproc_per_node"],
        "nproc_per_node",
        "1",
        "workers per node: an integer, cpu, gpu or auto",
    )
    opt(["--node-rank", "--node_rank"], "node_rank", "0", "rank of this node")
    opt(["--master-addr", "--master_addr"], "master_addr", "127.0.0.1", "address of rank 0's host")
    opt(
        ["--master-port", "--master_port"],
        "master_port",
        "29500",
        "accepted for compatibility; each generation gets a fresh port",
    )
    opt(["--max-restarts", "--max_restarts"], "max_restarts", "0", "job-wide restart budget")
    opt(
        ["--monitor-interval", "--monitor_interval"],
        "monitor_interval",
        "0.1",
        "seconds between supervisor deadline checks",
    )
    flag(["--standalone"], "standalone", "single node with an embedded supervisor")
    opt(
        ["--rdzv-id", "--rdzv_id", "--run-id", "--run_id"],
        "rdzv_id",
        None,
        "job id (unset: a random UUID with --standalone, else none)",
    )
    opt(["--role"], "role", "default", "worker role name")
    opt(["--log-dir", "--log_dir"], "log_dir", None, "directory for worker logs")
    opt(["-r", "--redirects"], "redirects", "0", "redirect worker std streams to files")
    opt(["-t", "--tee"], "tee", "0", "tee worker std streams to files and the console")
    opt(
        ["--local-ranks-filter", "--local_ranks_filter"],
        "local_ranks_filter",
        "",
        "only show these local ranks' output on the console",
    )
    flag(["-m", "--module"], "module", "run the target as a module (python -m)")
    flag(["--no-python", "--no_python"], "no_python", "run the target as an executable")
    opt(
        ["--warm-spares", "--warm_spares"],
        "warm_spares",
        "1",
        "idle interpreters with torch imported, ready to take a failed rank",
    )
    opt(
        ["--spare-imports"],
        "spare_imports",
        "workers",
        "what a warm spare imports while idle: 'workers' (every module local rank 0 has "
        "loaded) or 'torch' (torch.distributed only)",
    )
    opt(
        ["--preimport"],
        "preimport",
        DEFAULT_PREIMPORT,
        "modules every worker imports before the script first runs, comma-separated ('none': "
        "nothing); imported then, they are out of the collection that ends a failed generation",
    )
    opt(
        ["--reuse-freed-memory"],
        "reuse_freed_memory",
        "on",
        "on: Python workers' glibc malloc keeps freed blocks of up to 32 MiB for reuse "
        "(GLIBC_TUNABLES, unless already set), so a re-entered script reuses what its "
        "previous run freed instead of unmapping it and faulting it in again; off: glibc's "
        "defaults",
    )
    opt(
        ["--reentry"],
        "reentry",
        "auto",
        "what a surviving rank does when a generation is aborted: auto re-enters the script "
        "in place, and after the first re-entry that fails (an error before its first step, "
        "an unwind that fails or times out) gives survivors fresh processes, at no cost to "
        "--max-restarts; always re-enters and never falls back; never always starts fresh "
        "processes (torchrun's way). With several nodes, node 0's setting rules",
    )
    opt(
        ["--time-forward"],
        "time_forward",
        "off",
        "on: time each rank's data loading + forward per step with global nn.Module forward "
        "hooks, for the straggler rule (compute_s); they run on every module call (nn.Module's "
        "slow path) and torch.compile warns about them. off: no straggler findings, the other "
        "anomaly rules and hang detection unchanged",
    )
    opt(
        ["--unwind-timeout"],
        "unwind_timeout",
        "10",
        "seconds a surviving rank has to unwind before it is killed and respawned",
    )
    opt(
        ["--failure-settle"],
        "failure_settle",
        "1.0",
        "seconds a rank's exception waits for news of a peer's death",
    )
    opt(
        ["--crash-loop-threshold"],
        "crash_loop_threshold",
        "3",
        "same-error failures without progress that stop the job",
    )
    opt(["--term-timeout"], "term_timeout", "30", "grace seconds for workers after SIGTERM")
    opt(
        ["--supervisor-port"],
        "supervisor_port",
        "0",  # 29400 is torchrun's c10d default too: a fixed default collides
        "loopback port of the embedded supervisor's gRPC API (0: any free port)",
    )
    opt(
        ["--supervisor-address"],
        "supervisor_address",
        env.get(SUPERVISOR_ADDRESS_ENV, DEFAULT_SUPERVISOR_ADDRESS),
        "host:port of the pod's train-supervisor sidecar (without --standalone)",
    )
    opt(
        ["--supervisor-wait"],
        "supervisor_wait",
        "60",
        "seconds to wait for the sidecar supervisor to answer",
    )
    opt(
        ["--supervisor-grace"],
        "supervisor_grace",
        "300",
        "seconds the workers train on without their sidecar (it restarts) before train-launch "
        "stops with exit code 5",
    )
    for unsupported in UNSUPPORTED_TORCHRUN_FLAGS:
        p.add_argument(
            unsupported,
            dest=f"unsupported_{unsupported}",
            nargs="?",
            const="",
            default=None,
            help=argparse.SUPPRESS,
        )
    p.add_argument("training_script", help="script, module or executable to run")
    p.add_argument(
        "training_script_args", nargs=argparse.REMAINDER, help="arguments for the training script"
    )
    return p


def _int(name: str, value: str, minimum: int, maximum: Optional[int] = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise UsageError(f"{name} must be <= {maximum}, got {number}")
    return number


MAX_PORT = 65535


def _float(name: str, value: str, minimum: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise UsageError(f"{name} must be a finite number, got {value!r}")
    if number < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {number}")
    return number


def _one_of(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _address(name: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{name} must be HOST:PORT, got {value!r}")
    return value


def resolve_nproc(
    value: str, cpu_count: int, gpu_count: int, name: str = "--nproc-per-node"
) -> int:
    """torchrun's --nproc-per-node forms: an integer, cpu, gpu or auto."""
    if value == "cpu":
        return cpu_count
    if value == "gpu":
        if gpu_count < 1:
            raise UsageError(f"{name} gpu: no CUDA device is visible")
        return gpu_count
    if value == "auto":
        return gpu_count if gpu_count > 0 else cpu_count
    return _int(name, value, 1)


def parse_std_map(name: str, value: str, nproc: int) -> dict[int, int]:
    """torchrun's Std spec: '3' for every local rank, or '0:1,1:2' per local rank."""
    try:
        if ":" not in value:
            std = int(value)
            mapping = dict.fromkeys(range(nproc), std)
        else:
            mapping = {}
            for item in value.split(","):
                rank, std_text = item.split(":")
                mapping[int(rank)] = int(std_text)
    except ValueError:
        raise UsageError(f"{name} must be 0-3 or LOCAL_RANK:0-3,..., got {value!r}") from None
    if any(std not in (0, 1, 2, 3) for std in mapping.values()):
        raise UsageError(f"{name} values must be 0 (none), 1 (stdout), 2 (stderr) or 3 (both)")
    return mapping


def _module_names(flag: str, text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if names == ("none",):
        return ()
    for name in names:
        if not MODULE_NAME.fullmatch(name):
            raise UsageError(f"{flag}: {name!r} is not a module name (comma-separated, or none)")
    return names


def _check_target(script: str, module: bool, no_python: bool) -> None:
    if module and no_python:
        raise UsageError("--module and --no-python cannot be used together")
    if module:
        return
    if not os.path.exists(script):
        raise UsageError(f"training script not found: {script}")
    if no_python:
        return
    if os.path.isdir(script) or script.endswith(".py"):
        return
    with open(script, "rb") as handle:
        head = handle.readline(200)
    if not (head.startswith(b"#!") and b"python" in head):
        raise UsageError(
            f"{script} is not a Python script; pass --no-python to run it as an executable"
        )


def parse_args(
    argv: Sequence[str], env: Mapping[str, str], cpu_count: int, gpu_count: int = 0
) -> LaunchConfig:
    ns = build_parser(env).parse_args(list(argv))

    def named(flag: str) -> str:
        """The flag, or the PET_* variable its value came from."""
        dest = flag.lstrip("-").replace("-", "_")
        from_env = dest not in ns.given and _pet_name(dest) in env
        return _pet_name(dest) if from_env else flag

    for unsupported in UNSUPPORTED_TORCHRUN_FLAGS:
        if getattr(ns, f"unsupported_{unsupported}") is not None:
            raise UsageError(f"{unsupported} is a torchrun flag train-launch does not support yet")
        pet_name = "PET_" + unsupported.lstrip("-").replace("-", "_").upper()
        if env.get(pet_name):
            raise UsageError(
                f"{pet_name} is set, but {unsupported} is a torchrun flag train-launch "
                "does not support yet"
            )
    if ":" in ns.nnodes:
        raise UsageError(f"--nnodes {ns.nnodes}: elastic MIN:MAX node counts are not supported")
    nnodes = _int(named("--nnodes"), ns.nnodes, 1)
    nproc = resolve_nproc(ns.nproc_per_node, cpu_count, gpu_count, named("--nproc-per-node"))
    node_rank = _int(named("--node-rank"), ns.node_rank, 0)
    if node_rank >= nnodes:
        raise UsageError(f"--node-rank {node_rank} must be < --nnodes {nnodes}")
    if nnodes > 1 and ns.standalone:
        raise UsageError("--standalone runs one node; --nnodes > 1 needs the sidecar supervisors")
    _check_target(ns.training_script, ns.module, ns.no_python)
    filter_text = ns.local_ranks_filter.strip()
    try:
        ranks_filter = frozenset(int(r) for r in filter_text.split(",")) if filter_text else None
    except ValueError:
        raise UsageError(
            f"--local-ranks-filter must be comma-separated integers, got {filter_text!r}"
        ) from None
    if (ns.redirects != "0" or ns.tee != "0") and not ns.log_dir:
        raise UsageError("--redirects and --tee need --log-dir")
    _one_of(named("--spare-imports"), ns.spare_imports, SPARE_IMPORTS)
    preimport = _module_names(named("--preimport"), ns.preimport)
    _one_of(named("--reuse-freed-memory"), ns.reuse_freed_memory, ("on", "off"))
    _one_of(named("--reentry"), ns.reentry, REENTRY_MODES)
    _one_of(named("--time-forward"), ns.time_forward, ("on", "off"))
    base_env = {} if "OMP_NUM_THREADS" in env or nproc == 1 else {"OMP_NUM_THREADS": "1"}
    run_id = ns.rdzv_id or (str(uuid.uuid4()) if ns.standalone else "none")
    return LaunchConfig(
        nnodes=nnodes,
        nproc_per_node=nproc,
        node_rank=node_rank,
        master_addr="localhost" if ns.standalone else ns.master_addr,  # as torchrun
        master_port=_int(named("--master-port"), ns.master_port, 0, MAX_PORT),
        max_restarts=_int(named("--max-restarts"), ns.max_restarts, 0),
        monitor_interval=_float(named("--monitor-interval"), ns.monitor_interval, 0.001),
        standalone=bool(ns.standalone),
        run_id=run_id,
        role=ns.role,
        log_dir=ns.log_dir,
        redirects=parse_std_map(named("--redirects"), ns.redirects, nproc),
        tee=parse_std_map(named("--tee"), ns.tee, nproc),
        local_ranks_filter=ranks_filter,
        module=bool(ns.module),
        no_python=bool(ns.no_python),
        script=ns.training_script,
        script_args=tuple(ns.training_script_args),
        warm_spares=0 if ns.no_python else _int(named("--warm-spares"), ns.warm_spares, 0),
        unwind_timeout=_float(named("--unwind-timeout"), ns.unwind_timeout, 0.1),
        failure_settle=_float(named("--failure-settle"), ns.failure_settle, 0.0),
        crash_loop_threshold=_int(named("--crash-loop-threshold"), ns.crash_loop_threshold, 1),
        term_timeout=_float(named("--term-timeout"), ns.term_timeout, 0.0),
        supervisor_port=_int(named("--supervisor-port"), ns.supervisor_port, 0, MAX_PORT),
        supervisor_address=_address(named("--supervisor-address"), ns.supervisor_address),
        supervisor_wait=_float(named("--supervisor-wait"), ns.supervisor_wait, 0.0),
        supervisor_grace=_float(named("--supervisor-grace"), ns.supervisor_grace, 0.0),
        base_env=base_env,
        snapshot_dir=str(snapshot_directory(run_id, env)),
        spare_imports=ns.spare_imports,
        preimport=preimport,
        reuse_freed_memory=ns.reuse_freed_memory == "on",
        reentry=ns.reentry,
        time_forward=ns.time_forward == "on",
    )
