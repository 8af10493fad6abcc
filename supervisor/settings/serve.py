"""`train-supervisor serve`'s configuration: SUPERVISOR_* variables, parsed and checked once.

Pure: reads only the mappings it is given and the files they name (token, TLS),
so every rule is unit-testable. Command-line flags arrive as `overrides`, keyed
by the variable they replace, and win over the environment.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

from supervisor.outputs.kube.settings import KUBE_VARIABLES, KubeConfig, parse_kube
from supervisor.settings.detection import DETECT_VARIABLES, DetectConfig, parse_detect
from supervisor.settings.env_values import (
    DIGITS,
    ConfigError,
    Source,
    bad_value,
    integer,
    seconds,
)
from supervisor.settings.outputs import OutputsConfig, parse_outputs
from supervisor.settings.snapshots import OFFLOAD_VARIABLES, OffloadConfig, parse_offload
from supervisor.settings.variables import (
    DEFAULT_PORT,
    FOREIGN_VARIABLES,
    JOB_INDEX_ENV,
    MIN_TOKEN_LENGTH,
    PREFIX,
    VARIABLES,
)

_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


@dataclass(frozen=True)
class TlsConfig:
    """PEM bytes, read at parse time so that a missing file fails before serving."""

    cert_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    # Trust root for clients (peers, `status`) verifying a supervisor's
    # certificate. The server asks for no client certificate: the token
    # authenticates callers.
    ca: Optional[bytes] = field(repr=False, default=None)


@dataclass(frozen=True)
class SidecarConfig:
    """The supervisor process's one typed configuration: `serve` parses it from SUPERVISOR_*
    (parse_config), `train-launch --standalone` builds it from its flags (supervisor/app.py)."""

    nnodes: int = 1
    node_rank: int = 0
    peer_address_template: Optional[str] = None
    peers: tuple[str, ...] = ()
    port: int = DEFAULT_PORT
    bind: str = "0.0.0.0"
    token: Optional[str] = field(default=None, repr=False)
    tls: Optional[TlsConfig] = None
    heartbeat_timeout_s: float = 10.0
    unwind_timeout_s: float = 10.0
    failure_settle_s: float = 1.0
    crash_loop_threshold: int = 3
    tick_s: float = 0.1  # how often the job's timers are looked at (--monitor-interval)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)  # /metrics, log format
    metrics_bind: Optional[str] = None  # the host /metrics binds; None: `bind`'s
    termination_log: Optional[str] = None  # None: Kubernetes' default path, where mounted
    kube: KubeConfig = field(
        default_factory=KubeConfig
    )  # Events, node condition: supervisor/outputs/kube/

    @property
    def bind_address(self) -> str:
        return join_host_port(self.bind, self.port)

    @property
    def local_address(self) -> str:
        """Where a process in this pod reaches this supervisor."""
        host = self.bind
        if host == "0.0.0.0":
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return join_host_port(host, self.port)

    @property
    def loopback_plaintext(self) -> bool:
        """TLS on the pod's IP: this pod's own processes use plaintext on loopback."""
        return self.tls is not None and not is_loopback_host(self.bind)

    def peer_address(self, index: int) -> str:
        """host:port of pod `index`'s supervisor (this pod's own when there are no peers)."""
        if not 0 <= index < self.nnodes:
            raise ValueError(f"pod index {index} out of range 0..{self.nnodes - 1}")
        if self.peers:
            return self.peers[index]
        if self.peer_address_template is not None:
            return self.peer_address_template.format(index=index)
        return self.local_address


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(value: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ValueError with the reason."""
    host, sep, port = value.rpartition(":")
    if not sep:
        raise ValueError("must be host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)  # ValueError when it is not one
    elif not _HOST.fullmatch(host):
        raise ValueError(f"bad host {host!r}")
    if not DIGITS.fullmatch(port) or not 0 < int(port) < 65536:
        raise ValueError(f"bad port {port!r}")
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token_file(path: str) -> str:
    """The token in a file (a Kubernetes Secret mount): surrounding whitespace dropped."""
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """SUPERVISOR_* names that no setting reads (typos, most likely)."""
    known = {v.name for v in (*VARIABLES, *OFFLOAD_VARIABLES, *DETECT_VARIABLES, *KUBE_VARIABLES)}
    known |= FOREIGN_VARIABLES
    return sorted(n for n in env if n.startswith(PREFIX) and n not in known)


def _node_rank(src: Source, nnodes: int) -> int:
    found = src.get("SUPERVISOR_NODE_RANK")
    if found is None and src.env.get(JOB_INDEX_ENV):
        found = (JOB_INDEX_ENV, src.env[JOB_INDEX_ENV])
    if found is None:
        if nnodes > 1:
            raise ConfigError(
                f"SUPERVISOR_NODE_RANK: not set (nor {JOB_INDEX_ENV}); "
                "required when SUPERVISOR_NNODES > 1"
            )
        return 0
    label, value = found
    if not DIGITS.fullmatch(value.strip()):
        raise bad_value(label, value, "must be a non-negative integer")
    if int(value) >= nnodes:
        raise bad_value(label, value, f"must be < SUPERVISOR_NNODES ({nnodes})")
    return int(value)


def _template(src: Source, nnodes: int) -> Optional[str]:
    found = src.get("SUPERVISOR_PEER_ADDRESS_TEMPLATE")
    if found is None:
        return None
    label, value = found
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as err:
        raise bad_value(label, value, f"unparsable template ({err})") from None
    if "index" not in fields:
        raise bad_value(label, value, "must contain {index}")
    if fields != {"index"}:
        raise bad_value(label, value, "only {index} may be substituted")
    # The first and last pods' addresses stand for all: only the index varies.
    for index in {0, nnodes - 1}:
        try:
            address = value.format(index=index)
        except (ValueError, IndexError, KeyError) as err:
            raise bad_value(label, value, f"unparsable template ({err})") from None
        try:
            split_host_port(address)
        except ValueError as err:
            raise bad_value(label, value, f"{address!r} is not host:port ({err})") from None
    return value


def _peers(src: Source, nnodes: int) -> tuple[str, ...]:
    found = src.get("SUPERVISOR_PEERS")
    if found is None:
        return ()
    label, value = found
    peers = tuple(p.strip() for p in value.split(","))
    for peer in peers:
        try:
            split_host_port(peer)
        except ValueError as err:
            raise bad_value(label, value, f"entry {peer!r} is not host:port ({err})") from None
    if len(peers) != nnodes:
        raise bad_value(label, value, f"has {len(peers)} entries, SUPERVISOR_NNODES is {nnodes}")
    return peers


def _bind(src: Source) -> str:
    found = src.get("SUPERVISOR_BIND")
    if found is None:
        return "0.0.0.0"
    label, value = found
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.fullmatch(host):
            raise bad_value(label, value, "must be an IP address or a host name") from None
    return host


def _token(src: Source) -> Optional[str]:
    direct, in_file = src.get("SUPERVISOR_TOKEN"), src.get("SUPERVISOR_TOKEN_FILE")
    if direct is not None and in_file is not None:
        raise ConfigError("SUPERVISOR_TOKEN and SUPERVISOR_TOKEN_FILE are both set; set one")
    if in_file is not None:
        label, path = in_file
        try:
            token = read_token_file(path)
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or "not UTF-8 text"
            raise bad_value(label, path, f"cannot read the token ({reason})") from None
        where = f"{label}={path!r}: the token in the file"
    elif direct is not None:
        label, token = direct
        where = label
    else:
        return None
    # The token's value never appears in a message: only its length.
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"{where} is too short ({len(token)} characters, at least {MIN_TOKEN_LENGTH})"
        )
    if not all("!" <= c <= "~" for c in token):
        raise ConfigError(f"{where} may hold only printable ASCII without spaces")
    return token


def _pem(src: Source, name: str) -> Optional[tuple[str, str, bytes]]:
    """(label, path, contents) of a PEM file variable, or None when unset."""
    found = src.get(name)
    if found is None:
        return None
    label, path = found
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise bad_value(label, path, f"cannot read ({err.strerror})") from None
    if b"-----BEGIN " not in data:
        raise bad_value(label, path, "is not a PEM file")
    return label, path, data


def _no_password() -> bytes:
    return b""  # an encrypted key fails here instead of prompting on a terminal


def _tls(src: Source) -> Optional[TlsConfig]:
    cert, key = _pem(src, "SUPERVISOR_TLS_CERT"), _pem(src, "SUPERVISOR_TLS_KEY")
    ca = _pem(src, "SUPERVISOR_TLS_CA")
    if cert is None and key is None:
        if ca is not None:
            raise ConfigError("SUPERVISOR_TLS_CA: set, but SUPERVISOR_TLS_CERT/_KEY are not")
        return None
    if cert is None or key is None:
        missing = "SUPERVISOR_TLS_CERT" if cert is None else "SUPERVISOR_TLS_KEY"
        raise ConfigError(f"{missing}: not set; SUPERVISOR_TLS_CERT and _KEY go together")
    # gRPC would only say "cannot bind" (plus C-core log lines); Python's ssl says why.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert[1], key[1], _no_password)
    except ssl.SSLError as err:
        if err.reason == "KEY_VALUES_MISMATCH":
            raise bad_value(key[0], key[1], f"is not the key of {cert[0]}={cert[1]!r}") from None
        problem = f"not a usable certificate and unencrypted key ({err.reason or 'bad PEM data'})"
        raise bad_value(cert[0], cert[1], f"with {key[0]}={key[1]!r}: {problem}") from None
    if ca is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca[1])
        except ssl.SSLError as err:
            raise bad_value(
                ca[0], ca[1], f"not a usable CA ({err.reason or 'bad PEM data'})"
            ) from None
    return TlsConfig(cert_chain=cert[2], private_key=key[2], ca=None if ca is None else ca[2])


def parse_config(
    env: Mapping[str, str], overrides: Optional[Mapping[str, str]] = None
) -> SidecarConfig:
    """The sidecar's settings from `env`; `overrides` (variable name -> flag value) win."""
    src = Source(env, overrides or {}, {v.name: v.flag for v in VARIABLES})
    nnodes = integer(src, "SUPERVISOR_NNODES", 1, 1, 100_000)
    node_rank = _node_rank(src, nnodes)
    template, peers = _template(src, nnodes), _peers(src, nnodes)
    if template is not None and peers:
        raise ConfigError(
            "SUPERVISOR_PEER_ADDRESS_TEMPLATE and SUPERVISOR_PEERS are both set; set one"
        )
    if nnodes > 1 and template is None and not peers:
        raise ConfigError(
            f"SUPERVISOR_PEER_ADDRESS_TEMPLATE: not set (nor SUPERVISOR_PEERS); "
            f"required when SUPERVISOR_NNODES > 1 (it is {nnodes})"
        )
    port = integer(src, "SUPERVISOR_PORT", DEFAULT_PORT, 0, 65535)
    bind = _bind(src)
    token, tls = _token(src), _tls(src)
    if tls is not None and bind in ("0.0.0.0", "::"):
        raise ConfigError(
            f"SUPERVISOR_BIND={bind!r}: with TLS, bind this pod's IP (downward API status.podIP): "
            "train-launch and the workers reach the supervisor in plaintext on 127.0.0.1 at the "
            "same port, which never leaves the pod"
        )
    if token is None and (nnodes > 1 or not is_loopback_host(bind)):
        raise ConfigError(
            "SUPERVISOR_TOKEN: not set (nor SUPERVISOR_TOKEN_FILE); required unless "
            f"SUPERVISOR_NNODES=1 and SUPERVISOR_BIND is loopback (it is {bind!r})"
        )
    return SidecarConfig(
        nnodes=nnodes,
        node_rank=node_rank,
        peer_address_template=template,
        peers=peers,
        port=port,
        bind=bind,
        token=token,
        tls=tls,
        heartbeat_timeout_s=seconds(src, "SUPERVISOR_HEARTBEAT_TIMEOUT_S", 10.0, False),
        unwind_timeout_s=seconds(src, "SUPERVISOR_UNWIND_TIMEOUT_S", 10.0, False),
        failure_settle_s=seconds(src, "SUPERVISOR_FAILURE_SETTLE_S", 1.0, True),
        crash_loop_threshold=integer(src, "SUPERVISOR_CRASH_LOOP_THRESHOLD", 3, 1, 1_000_000),
        offload=parse_offload(env, overrides),
        detect=parse_detect(env, overrides),
        outputs=parse_outputs(src),
        termination_log=(src.get("SUPERVISOR_TERMINATION_LOG") or ("", None))[1],
        kube=parse_kube(env),
    )
