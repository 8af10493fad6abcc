"""SUPERVISOR_KUBE_*: whether and how the sidecar talks to the Kubernetes API (pure).

The pod's identity comes from the downward API (POD_NAME, POD_NAMESPACE,
POD_UID, NODE_NAME; k8s/indexed-job.yaml sets them). The API server and the
credentials default to what a pod's service account gets (in-cluster config).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

from supervisor.settings.env_values import (
    ConfigError,
    Source,
    Variable,
    bad_value,
    integer,
    seconds,
)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
EVENTS_ENV = "SUPERVISOR_KUBE_EVENTS"
CONDITION_ENV = "SUPERVISOR_KUBE_NODE_CONDITION"
TAINT_ENV = "SUPERVISOR_KUBE_NODE_TAINT"
# client-go's EventRecorder: 25 at once, then one per 5 minutes per object.
DEFAULT_BURST = 25
DEFAULT_REFILL_S = 300.0

KUBE_VARIABLES = (
    Variable(
        EVENTS_ENV,
        "",
        "on: post a Kubernetes Event on this pod for each rank failure, restart, hang, finding "
        "and verdict (needs the kube extra and POD_NAME, POD_NAMESPACE, POD_UID)",
        "off",
    ),
    Variable(
        CONDITION_ENV,
        "",
        "on: on a hardware verdict, set the condition TrainSupervisorHardwareFault on this "
        "pod's node (needs NODE_NAME and the ClusterRole in k8s/rbac-node.yaml)",
        "off",
    ),
    Variable(
        TAINT_ENV,
        "",
        "on: on a hardware verdict, also taint this pod's node "
        "train-supervisor/hardware-fault:NoSchedule, so the replacement pod lands elsewhere "
        "(needs NODE_NAME and k8s/rbac-node.yaml)",
        "off",
    ),
    Variable(
        "SUPERVISOR_KUBE_API",
        "",
        "the API server's URL (unset: in-cluster, "
        "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)",
    ),
    Variable(
        "SUPERVISOR_KUBE_TOKEN_FILE",
        "",
        "bearer token file, read again before each request (tokens are rotated)",
        f"{SERVICE_ACCOUNT_DIR}/token",
    ),
    Variable(
        "SUPERVISOR_KUBE_CA_FILE",
        "",
        "CA bundle that verifies an https API server",
        f"{SERVICE_ACCOUNT_DIR}/ca.crt",
    ),
    Variable(
        "SUPERVISOR_KUBE_TIMEOUT_S", "", "seconds one API request may take, then it is dropped", "5"
    ),
    Variable(
        "SUPERVISOR_KUBE_QUEUE",
        "",
        "requests waiting for the API at most; more are dropped (and counted)",
        "256",
    ),
    Variable(
        "SUPERVISOR_KUBE_EVENTS_BURST",
        "",
        "Events (new or repeated) sent at once before the rate limit applies (client-go's)",
        str(DEFAULT_BURST),
    ),
    Variable(
        "SUPERVISOR_KUBE_EVENTS_REFILL_S",
        "",
        "then one more Event per this many seconds (client-go's default)",
        f"{DEFAULT_REFILL_S:g}",
    ),
)
# The downward API's, named in k8s/indexed-job.yaml (not SUPERVISOR_*: Kubernetes' values).
POD_VARIABLES = (
    Variable("POD_NAME", "", "metadata.name: the pod the Events are about"),
    Variable("POD_NAMESPACE", "", "metadata.namespace: where the Events are created"),
    Variable("POD_UID", "", "metadata.uid: ties the Events to this pod, not a namesake"),
    Variable("NODE_NAME", "", "spec.nodeName: the node that gets the condition and the taint"),
)


@dataclass(frozen=True)
class PodIdentity:
    name: str
    namespace: str
    uid: str
    node: str = ""  # "" unless the node condition or taint is on


@dataclass(frozen=True)
class ApiAccess:
    """Where the API server is and how to authenticate, as in-cluster config would give."""

    host: str
    token_file: str
    ca_file: str = field(default="")  # "" for http (tests)
    timeout_s: float = 5.0


@dataclass(frozen=True)
class KubeConfig:
    events: bool = False
    node_condition: bool = False
    node_taint: bool = False
    pod: Optional[PodIdentity] = None  # set when anything is on
    api: Optional[ApiAccess] = None
    queue_size: int = 256
    burst: int = DEFAULT_BURST
    refill_s: float = DEFAULT_REFILL_S

    @property
    def enabled(self) -> bool:
        return self.events or self.node_condition or self.node_taint


def _switch(src: Source, name: str) -> bool:
    found = src.get(name)
    if found is None:
        return False
    label, value = found
    word = value.strip().lower()
    if word not in ("on", "off", "1", "0", "true", "false"):
        raise bad_value(label, value, "must be on or off")
    return word in ("on", "1", "true")


def _required(env: Mapping[str, str], name: str, why: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name}: not set; {why} (the downward API gives it)")
    return value


def _api(src: Source, env: Mapping[str, str]) -> ApiAccess:
    timeout_s = seconds(src, "SUPERVISOR_KUBE_TIMEOUT_S", 5.0, False)
    token_file = (src.get("SUPERVISOR_KUBE_TOKEN_FILE") or ("", f"{SERVICE_ACCOUNT_DIR}/token"))[1]
    ca_file = (src.get("SUPERVISOR_KUBE_CA_FILE") or ("", f"{SERVICE_ACCOUNT_DIR}/ca.crt"))[1]
    found = src.get("SUPERVISOR_KUBE_API")
    if found is not None:
        label, host = found
        if not host.startswith(("http://", "https://")):
            raise bad_value(label, host, "must be an http:// or https:// URL")
        return ApiAccess(host.rstrip("/"), token_file, ca_file, timeout_s)
    service_host = env.get("KUBERNETES_SERVICE_HOST", "")
    service_port = env.get("KUBERNETES_SERVICE_PORT", "")
    if not service_host or not service_port:
        raise ConfigError(
            "SUPERVISOR_KUBE_API: not set, and KUBERNETES_SERVICE_HOST/PORT are not either "
            "(not in a pod?); set it to the API server's URL"
        )
    host = f"[{service_host}]" if ":" in service_host else service_host
    return ApiAccess(f"https://{host}:{service_port}", token_file, ca_file, timeout_s)


def parse_kube(env: Mapping[str, str]) -> KubeConfig:
    """The SUPERVISOR_KUBE_* settings; environment only, no flags."""
    src = Source(env, {}, {})
    events, condition = _switch(src, EVENTS_ENV), _switch(src, CONDITION_ENV)
    taint = _switch(src, TAINT_ENV)
    queue_size = integer(src, "SUPERVISOR_KUBE_QUEUE", 256, 1, 1_000_000)
    burst = integer(src, "SUPERVISOR_KUBE_EVENTS_BURST", DEFAULT_BURST, 1, 1_000_000)
    refill_s = seconds(src, "SUPERVISOR_KUBE_EVENTS_REFILL_S", DEFAULT_REFILL_S, False)
    if not (events or condition or taint):
        return KubeConfig(queue_size=queue_size, burst=burst, refill_s=refill_s)
    on = EVENTS_ENV if events else CONDITION_ENV if condition else TAINT_ENV
    pod = PodIdentity(
        name=_required(env, "POD_NAME", f"{on}=on needs it"),
        namespace=_required(env, "POD_NAMESPACE", f"{on}=on needs it"),
        uid=_required(env, "POD_UID", f"{on}=on needs it"),
        node=_required(env, "NODE_NAME", f"{on}=on needs it")
        if condition or taint
        else env.get("NODE_NAME", "").strip(),
    )
    return KubeConfig(
        events=events,
        node_condition=condition,
        node_taint=taint,
        pod=pod,
        api=_api(src, env),
        queue_size=queue_size,
        burst=burst,
        refill_s=refill_s,
    )
