"""The official `kubernetes` client, imported only when SUPERVISOR_KUBE_* asks for it.

The sidecar runs without the `kube` extra; switched on without it, it stops with
one line saying how to get it. Configured as in-cluster config would be (host,
bearer token file re-read before each request since tokens rotate, CA bundle),
with no retries: a request that fails is counted and dropped, never repeated
at the API server's expense.
"""

from __future__ import annotations

import contextlib
import importlib
from types import ModuleType
from typing import Any

from supervisor.outputs.kube.settings import EVENTS_ENV, ApiAccess
from supervisor.settings.env_values import ConfigError

KUBE_EXTRA_HINT = "pip install 'train-supervisor[kube]' (the official kubernetes client)"


class KubeClientMissing(ConfigError):
    """SUPERVISOR_KUBE_* is on but the kubernetes package cannot be imported."""


def kubernetes_client() -> ModuleType:
    """`kubernetes.client`, or KubeClientMissing naming what to install."""
    try:
        return importlib.import_module("kubernetes.client")
    except ImportError as err:
        raise KubeClientMissing(
            f"{EVENTS_ENV} (or another SUPERVISOR_KUBE_* switch) is on, but the kubernetes "
            f"package cannot be imported ({err}); {KUBE_EXTRA_HINT}"
        ) from None


def _read_token(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def core_v1(access: ApiAccess) -> Any:
    """A CoreV1Api for `access`; ConfigError without the package (KubeClientMissing) or
    when the token file cannot be read (a pod without a service account token)."""
    client = kubernetes_client()
    config = client.Configuration()
    config.host = access.host
    config.api_key_prefix["authorization"] = "Bearer"
    try:
        config.api_key["authorization"] = _read_token(access.token_file)
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or "not UTF-8 text"
        raise ConfigError(
            f"SUPERVISOR_KUBE_TOKEN_FILE={access.token_file!r}: cannot read the token ({reason})"
        ) from None

    def refresh(configuration: Any) -> None:
        # Unreadable now: keep the last one; the request says whether it still works.
        with contextlib.suppress(OSError, UnicodeDecodeError):
            configuration.api_key["authorization"] = _read_token(access.token_file)

    config.refresh_api_key_hook = refresh
    if access.host.startswith("https://") and access.ca_file:
        config.ssl_ca_cert = access.ca_file
    config.retries = False  # urllib3: no retries of ours on top of the API's answer
    return client.CoreV1Api(client.ApiClient(config))
