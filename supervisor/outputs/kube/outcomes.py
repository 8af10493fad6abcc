"""What became of an API request, as a metric label (pure)."""

from __future__ import annotations

OK = "ok"
OUTCOMES = (
    OK,
    "forbidden",  # 403: the RBAC of k8s/rbac-*.yaml is missing
    "not_found",  # 404
    "conflict",  # 409
    "throttled",  # 429: API priority and fairness said no
    "server_error",  # 5xx
    "rejected",  # another 4xx (a body the API refused)
    "timeout",  # no answer within SUPERVISOR_KUBE_TIMEOUT_S
    "unreachable",  # no connection (DNS, refused, TLS)
    "error",  # anything else (a bug of ours: logged with its type)
)


def outcome_of_status(status: int) -> str:
    if 200 <= status < 300:
        return OK
    named = {403: "forbidden", 404: "not_found", 409: "conflict", 429: "throttled"}
    if status in named:
        return named[status]
    return "server_error" if status >= 500 else "rejected"
