"""The sidecar's own variables and flags (`train-supervisor serve`): names, help, defaults.

Its SUPERVISOR_* settings are the union of these and the offload, detection and
outputs variables; docs/configuration.md is generated from them (tools/gen_config_doc.py).
"""

from __future__ import annotations

from supervisor.settings.env_values import Variable
from supervisor.settings.outputs import OUTPUTS_VARIABLES

PREFIX = "SUPERVISOR_"
DEFAULT_PORT = 29400
MIN_TOKEN_LENGTH = 16
# Kubernetes sets this in the pods of an Indexed Job.
JOB_INDEX_ENV = "JOB_COMPLETION_INDEX"


VARIABLES = (
    Variable("SUPERVISOR_NNODES", "--nnodes", "number of pods in the job", "1"),
    Variable(
        "SUPERVISOR_NODE_RANK",
        "--node-rank",
        f"this pod's index; node 0's supervisor is the leader (unset: ${JOB_INDEX_ENV}, "
        "which an Indexed Job sets; else 0, allowed for one pod only)",
    ),
    Variable(
        "SUPERVISOR_PEER_ADDRESS_TEMPLATE",
        "--peer-address-template",
        "host:port of pod {index}'s supervisor, e.g. job-{index}.job-svc:29400; "
        "required when there is more than one pod (or SUPERVISOR_PEERS)",
    ),
    Variable("SUPERVISOR_PEERS", "--peers", "every pod's supervisor as a comma list of host:port"),
    Variable("SUPERVISOR_PORT", "--port", "gRPC port (0: any free)", str(DEFAULT_PORT)),
    Variable(
        "SUPERVISOR_BIND", "--bind", "address to listen on (with TLS: the pod's IP)", "0.0.0.0"
    ),
    # No --token flag: a token on the command line shows in `ps`.
    Variable(
        "SUPERVISOR_TOKEN",
        "",
        f"job token, at least {MIN_TOKEN_LENGTH} printable ASCII characters; required unless "
        "SUPERVISOR_NNODES=1 and SUPERVISOR_BIND is loopback",
    ),
    Variable(
        "SUPERVISOR_TOKEN_FILE",
        "--token-file",
        "file holding the job token (a Secret mount), instead of SUPERVISOR_TOKEN",
    ),
    Variable("SUPERVISOR_TLS_CERT", "--tls-cert", "PEM server certificate (chain)"),
    Variable("SUPERVISOR_TLS_KEY", "--tls-key", "PEM private key of --tls-cert, unencrypted"),
    Variable("SUPERVISOR_TLS_CA", "--tls-ca", "PEM CA that clients use to verify supervisors"),
    Variable(
        "SUPERVISOR_HEARTBEAT_TIMEOUT_S",
        "--heartbeat-timeout",
        "seconds: a pod silent this long is lost",
        "10",
    ),
    Variable(
        "SUPERVISOR_UNWIND_TIMEOUT_S",
        "--unwind-timeout",
        "seconds a surviving rank has to unwind before it is killed and respawned",
        "10",
    ),
    Variable(
        "SUPERVISOR_FAILURE_SETTLE_S",
        "--failure-settle",
        "seconds a rank's exception waits for news of a peer's death",
        "1.0",
    ),
    Variable(
        "SUPERVISOR_CRASH_LOOP_THRESHOLD",
        "--crash-loop-threshold",
        "one rank failing with one error without job-wide progress this many times within "
        "SUPERVISOR_CRASH_LOOP_WINDOW_S: the job is given up",
        "3",
    ),
    *OUTPUTS_VARIABLES,
    Variable(
        "SUPERVISOR_TERMINATION_LOG",
        "--termination-log",
        "file for why the job ended with 3 or 4, written when the sidecar stops "
        "(unset: /dev/termination-log, only where the kubelet mounted it)",
    ),
)
# SUPERVISOR_* names that are someone else's: train-launch's, and what
# supervisord sets in its children's environment.
FOREIGN_VARIABLES = frozenset(
    {
        "SUPERVISOR_ADDRESS",
        "SUPERVISOR_ENABLED",
        "SUPERVISOR_SERVER_URL",
        "SUPERVISOR_PROCESS_NAME",
        "SUPERVISOR_GROUP_NAME",
    }
)
