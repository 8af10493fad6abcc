"""The environment train-launch reads and sets besides its flags and torchrun's variables.

Each name is defined where it is used; this module says what each one means, for
docs/configuration.md (tools/gen_config_doc.py). train-launch's flags and their
PET_* forms are documented from its parser (launcher/launch/args.py), the SUPERVISOR_*
settings an embedded supervisor reads from supervisor/*_config.py.
"""

from __future__ import annotations

from launcher.launch.args import DEFAULT_SUPERVISOR_ADDRESS, SUPERVISOR_ADDRESS_ENV
from launcher.launch.main import TERMINATION_LOG_ENV
from launcher.launch.processes import (
    ENV_OWN_TUNABLES,
    ENV_PARENT_PID,
    ENV_RANK,
    ENV_SUPERVISOR,
    ENV_TIME_FORWARD,
    ENV_TOKEN,
    GLIBC_TUNABLES_ENV,
    REUSE_FREED_TUNABLES,
    SCRIPT_ADDRESS_ENV,
    SCRIPT_ENDED_GENERATION_ENV,
    SCRIPT_GENERATION_ENV,
    SCRIPT_TOKEN_ENV,
)
from launcher.worker.warm_imports import MANIFEST_ENV, PREIMPORT_ENV
from supervisor.settings.env_values import Variable
from train_supervisor.arena import SNAPSHOT_DIR_ENV
from train_supervisor.credentials import TOKEN_ENV
from train_supervisor.termination import DEFAULT_PATH

# Read by train-launch.
LAUNCHER_VARIABLES = (
    Variable(
        SUPERVISOR_ADDRESS_ENV,
        "--supervisor-address",
        "host:port of the pod's train-supervisor sidecar (without --standalone)",
        DEFAULT_SUPERVISOR_ADDRESS,
    ),
    Variable(
        TOKEN_ENV,
        "",
        "the job token sent to the sidecar (without --standalone); the training script "
        "does not see it",
    ),
    Variable(
        TERMINATION_LOG_ENV,
        "",
        "file for the report when the job ends with 3 or 4 "
        f"(unset: {DEFAULT_PATH}, only where the kubelet mounted it)",
    ),
    Variable(
        SNAPSHOT_DIR_ENV,
        "",
        "directory of the job's snapshot arenas, in memory shared by the sidecar and the "
        "trainer container (unset: /dev/shm/train-supervisor/<run id>)",
    ),
    Variable(
        GLIBC_TUNABLES_ENV,
        "",
        "passed on to the workers untouched when set; unset: train-launch gives its Python "
        f"workers {REUSE_FREED_TUNABLES} (--reuse-freed-memory on) and takes it out of the "
        "script's environment again, as torchrun sets none",
    ),
    Variable(
        "OMP_NUM_THREADS",
        "",
        "passed on to the workers when set; unset: 1 when a pod runs more than one worker "
        "(as torchrun)",
    ),
)

# Set by train-launch in the training script's environment, next to torchrun's.
SCRIPT_VARIABLES = (
    Variable(
        SCRIPT_ADDRESS_ENV,
        "",
        "this pod's supervisor, for the worker API (launcher/worker/snapshot.py)",
    ),
    Variable(SCRIPT_TOKEN_ENV, "", "the job token, for the worker API (set when there is one)"),
    Variable(
        SCRIPT_GENERATION_ENV,
        "",
        "the generation the script runs in (as TORCHELASTIC_RESTART_COUNT)",
    ),
    Variable(
        SCRIPT_ENDED_GENERATION_ENV,
        "",
        "the newest generation this process left by an abort or an error; the worker API "
        "drops a snapshot of it still queued",
    ),
)

# Between train-launch and its worker bootstrap: removed before the script runs.
BOOTSTRAP_VARIABLES = (
    Variable(ENV_SUPERVISOR, "", "the supervisor's address"),
    Variable(ENV_RANK, "", "the rank the process was spawned for (-1: a warm spare)"),
    Variable(ENV_PARENT_PID, "", "train-launch's PID: the worker dies with it"),
    Variable(ENV_TOKEN, "", "the job token"),
    Variable(MANIFEST_ENV, "", "the file where local rank 0 lists its modules for the spares"),
    Variable(PREIMPORT_ENV, "", "--preimport's modules, comma-separated"),
    Variable(ENV_TIME_FORWARD, "", "set: --time-forward on (global forward timing hooks)"),
    Variable(
        ENV_OWN_TUNABLES, "", "set: GLIBC_TUNABLES is train-launch's, to be taken out as well"
    ),
)
