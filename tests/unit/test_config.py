"""supervisor/settings/serve.py: every SUPERVISOR_* rule, and flags over environment."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from supervisor.settings.serve import (
    ConfigError,
    SidecarConfig,
    parse_config,
    split_host_port,
    unknown_variables,
)
from supervisor.settings.variables import VARIABLES

TOKEN = "0123456789abcdef-token"


def parse(**env: str) -> SidecarConfig:
    return parse_config(env)


def error(**env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(env)
    message = str(caught.value)
    assert "\n" not in message
    return message


def multi(**env: str) -> dict[str, str]:
    """A valid two-pod environment, with `env` on top."""
    base = {
        "SUPERVISOR_NNODES": "2",
        "SUPERVISOR_NODE_RANK": "1",
        "SUPERVISOR_PEER_ADDRESS_TEMPLATE": "job-{index}.job-svc:29400",
        "SUPERVISOR_TOKEN": TOKEN,
    }
    return {**base, **env}


# ------------------------------------------------------------------ defaults
def test_defaults_on_loopback_need_no_token() -> None:
    config = parse(SUPERVISOR_BIND="127.0.0.1")
    assert config == SidecarConfig(bind="127.0.0.1")
    assert (config.nnodes, config.node_rank, config.port) == (1, 0, 29400)
    assert (config.heartbeat_timeout_s, config.unwind_timeout_s) == (10.0, 10.0)
    assert (config.failure_settle_s, config.crash_loop_threshold) == (1.0, 3)
    assert config.token is None and config.tls is None
    assert config.bind_address == "127.0.0.1:29400"
    assert config.peer_address(0) == "127.0.0.1:29400"


def test_the_termination_log_defaults_to_kubernetes_path_and_a_flag_overrides_it() -> None:
    assert parse(SUPERVISOR_BIND="127.0.0.1").termination_log is None  # /dev/termination-log
    env = {"SUPERVISOR_BIND": "127.0.0.1", "SUPERVISOR_TERMINATION_LOG": "/run/why"}
    assert parse_config(env).termination_log == "/run/why"
    overridden = parse_config(env, {"SUPERVISOR_TERMINATION_LOG": "/tmp/why"})
    assert overridden.termination_log == "/tmp/why"
    assert unknown_variables(env) == []


@pytest.mark.parametrize("bind", ["localhost", "::1", "[::1]", "127.0.0.2"])
def test_every_loopback_bind_may_go_without_token(bind: str) -> None:
    assert parse(SUPERVISOR_BIND=bind).token is None


def test_default_bind_is_all_interfaces_and_needs_a_token() -> None:
    message = error()
    assert message.startswith("SUPERVISOR_TOKEN: not set") and "'0.0.0.0'" in message
    assert parse(SUPERVISOR_TOKEN=TOKEN).bind == "0.0.0.0"


def test_several_pods_need_a_token_even_on_loopback() -> None:
    env = multi(SUPERVISOR_BIND="127.0.0.1")
    del env["SUPERVISOR_TOKEN"]
    assert error(**env).startswith("SUPERVISOR_TOKEN: not set")


def test_empty_variables_count_as_unset() -> None:
    assert parse(SUPERVISOR_BIND="127.0.0.1", SUPERVISOR_PORT="", SUPERVISOR_TOKEN="").port == 29400


def test_ipv6_bind_address_is_bracketed() -> None:
    config = parse(SUPERVISOR_BIND="::", SUPERVISOR_TOKEN=TOKEN, SUPERVISOR_PORT="5000")
    assert config.bind_address == "[::]:5000" and config.local_address == "[::1]:5000"


# --------------------------------------------------------------- pods, peers
def test_two_pods_with_a_template() -> None:
    config = parse(**multi())
    assert (config.nnodes, config.node_rank) == (2, 1)
    assert config.peer_address(0) == "job-0.job-svc:29400"
    assert config.peer_address(1) == "job-1.job-svc:29400"
    with pytest.raises(ValueError):
        config.peer_address(2)


def test_template_may_format_the_index() -> None:
    config = parse(**multi(SUPERVISOR_PEER_ADDRESS_TEMPLATE="pod-{index:03d}:7"))
    assert config.peer_address(1) == "pod-001:7"


def test_explicit_peer_list() -> None:
    env = multi(SUPERVISOR_PEERS="10.0.0.1:29400, [fd00::2]:29401")
    del env["SUPERVISOR_PEER_ADDRESS_TEMPLATE"]
    config = parse(**env)
    assert config.peers == ("10.0.0.1:29400", "[fd00::2]:29401")
    assert config.peer_address(1) == "[fd00::2]:29401"


@pytest.mark.parametrize(
    ("name", "value", "limits"),
    [
        *[("SUPERVISOR_NNODES", v, "1..100000") for v in ("0", "-1", "two", "1.5", "2_0")],
        *[("SUPERVISOR_PORT", v, "0..65535") for v in ("-1", "65536", "http", "80.5")],
        *[("SUPERVISOR_CRASH_LOOP_THRESHOLD", v, "1..1000000") for v in ("0", "x", "-3")],
    ],
)
def test_bad_integers(name: str, value: str, limits: str) -> None:
    message = error(**multi(**{name: value}))
    assert message == f"{name}={value!r}: must be an integer in {limits}"


def test_node_rank_must_be_a_number_below_nnodes() -> None:
    message = error(**multi(SUPERVISOR_NODE_RANK="2"))
    assert message == "SUPERVISOR_NODE_RANK='2': must be < SUPERVISOR_NNODES (2)"
    assert error(**multi(SUPERVISOR_NODE_RANK="x")).startswith("SUPERVISOR_NODE_RANK='x'")


def test_node_rank_falls_back_to_the_job_completion_index() -> None:
    env = multi(JOB_COMPLETION_INDEX="1")
    del env["SUPERVISOR_NODE_RANK"]
    assert parse(**env).node_rank == 1
    env["JOB_COMPLETION_INDEX"] = "5"
    assert error(**env).startswith("JOB_COMPLETION_INDEX='5': must be <")


def test_explicit_node_rank_wins_over_the_job_completion_index() -> None:
    assert parse(**multi(SUPERVISOR_NODE_RANK="0", JOB_COMPLETION_INDEX="1")).node_rank == 0


def test_several_pods_need_a_node_rank() -> None:
    env = multi()
    del env["SUPERVISOR_NODE_RANK"]
    assert error(**env).startswith("SUPERVISOR_NODE_RANK: not set (nor JOB_COMPLETION_INDEX)")


def test_several_pods_need_peers() -> None:
    env = multi()
    del env["SUPERVISOR_PEER_ADDRESS_TEMPLATE"]
    assert error(**env).startswith("SUPERVISOR_PEER_ADDRESS_TEMPLATE: not set (nor SUPERVISOR_")


def test_template_and_list_exclude_each_other() -> None:
    message = error(**multi(SUPERVISOR_PEERS="a:1,b:2"))
    assert "SUPERVISOR_PEER_ADDRESS_TEMPLATE and SUPERVISOR_PEERS are both set" in message


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("job-{index.job-svc:29400", "unparsable template"),
        ("job-{index}}.svc:1{", "unparsable template"),
        ("job.job-svc:29400", "must contain {index}"),
        ("job-{}.job-svc:29400", "must contain {index}"),
        ("{host}-{index}:29400", "only {index} may be substituted"),
        ("job-{index}.job-svc", "'job-0.job-svc' is not host:port"),
        ("job-{index}.job-svc:http", "is not host:port"),
        ("job-{index}.job-svc:70000", "is not host:port"),
        ("job {index}:29400", "is not host:port"),
        ("job-{index:s}:1", "unparsable template"),
    ],
)
def test_bad_templates(template: str, problem: str) -> None:
    message = error(**multi(SUPERVISOR_PEER_ADDRESS_TEMPLATE=template))
    assert message.startswith(f"SUPERVISOR_PEER_ADDRESS_TEMPLATE={template!r}: ")
    assert problem in message


@pytest.mark.parametrize(
    ("peers", "problem"),
    [
        ("a:1", "has 1 entries, SUPERVISOR_NNODES is 2"),
        ("a:1,b:2,c:3", "has 3 entries"),
        ("a:1,,b:2", "entry '' is not host:port"),
        ("a:1,b", "entry 'b' is not host:port"),
        ("a:1,[nope]:2", "entry '[nope]:2' is not host:port"),
    ],
)
def test_bad_peer_lists(peers: str, problem: str) -> None:
    env = multi(SUPERVISOR_PEERS=peers)
    del env["SUPERVISOR_PEER_ADDRESS_TEMPLATE"]
    message = error(**env)
    assert message.startswith(f"SUPERVISOR_PEERS={peers!r}: ") and problem in message


def test_split_host_port() -> None:
    assert split_host_port("job-0.svc:29400") == ("job-0.svc", 29400)
    assert split_host_port("[::1]:1") == ("::1", 1)
    for bad in ("nohost", ":1", "host:0", "host:", "-host:1", "a b:1"):
        with pytest.raises(ValueError):
            split_host_port(bad)


# ---------------------------------------------------------------- port, bind
def test_port_zero_means_any_free_port() -> None:
    assert parse(SUPERVISOR_BIND="127.0.0.1", SUPERVISOR_PORT="0").port == 0


@pytest.mark.parametrize("value", ["not a host", "host:1", "[::1", "-x"])
def test_bad_bind(value: str) -> None:
    message = error(SUPERVISOR_BIND=value, SUPERVISOR_TOKEN=TOKEN)
    assert message.startswith(f"SUPERVISOR_BIND={value!r}: must be an IP address or a host name")


# --------------------------------------------------------------------- token
@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("secret-but-15ch", "is too short (15 characters, at least 16)"),
        ("secret with spaces in it", "may hold only printable ASCII without spaces"),
        ("secret-\u00e9-not-ascii-at-all", "may hold only printable ASCII without spaces"),
    ],
)
def test_bad_token_is_refused_without_showing_it(token: str, problem: str) -> None:
    message = error(SUPERVISOR_TOKEN=token)
    assert message == f"SUPERVISOR_TOKEN {problem}"


def test_token_is_not_in_the_repr() -> None:
    assert TOKEN not in repr(parse(SUPERVISOR_TOKEN=TOKEN))


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")  # secrets mounted from files often end in a newline
    assert parse(SUPERVISOR_TOKEN_FILE=str(path)).token == TOKEN


def test_short_token_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("tiny")
    message = error(SUPERVISOR_TOKEN_FILE=str(path))
    assert message.startswith(f"SUPERVISOR_TOKEN_FILE={str(path)!r}: the token in the file is")
    assert "tiny" not in message


def test_missing_token_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope")
    message = error(SUPERVISOR_TOKEN_FILE=path)
    assert message.endswith("cannot read the token (No such file or directory)")
    assert message.startswith(f"SUPERVISOR_TOKEN_FILE={path!r}: ")


def test_token_and_token_file_exclude_each_other(tmp_path: Path) -> None:
    message = error(SUPERVISOR_TOKEN=TOKEN, SUPERVISOR_TOKEN_FILE=str(tmp_path))
    assert "SUPERVISOR_TOKEN and SUPERVISOR_TOKEN_FILE are both set" in message


# ----------------------------------------------------------------------- TLS
def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, str]:
    """A self-signed certificate, its key, and itself as the CA; bound to a pod IP."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = self_signed(tmp_path, "server")
    return {
        "SUPERVISOR_TLS_CERT": str(cert),
        "SUPERVISOR_TLS_KEY": str(key),
        "SUPERVISOR_TLS_CA": str(cert),
        "SUPERVISOR_BIND": "10.1.2.3",
    }


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_tls_on_a_wildcard_address_is_refused(pem_files: dict[str, str], bind: str) -> None:
    """The pod's own processes could not connect: they speak plaintext on loopback."""
    message = error(SUPERVISOR_TOKEN=TOKEN, **{**pem_files, "SUPERVISOR_BIND": bind})
    assert message.startswith(f"SUPERVISOR_BIND={bind!r}: with TLS, bind this pod's IP")


def test_tls_on_the_pod_ip_adds_plaintext_on_loopback(pem_files: dict[str, str]) -> None:
    assert parse(SUPERVISOR_TOKEN=TOKEN, **pem_files).loopback_plaintext
    on_loopback = {**pem_files, "SUPERVISOR_BIND": "127.0.0.1"}
    assert not parse(SUPERVISOR_TOKEN=TOKEN, **on_loopback).loopback_plaintext  # TLS only
    assert not parse(SUPERVISOR_TOKEN=TOKEN, SUPERVISOR_BIND="10.1.2.3").loopback_plaintext


def test_tls_files_are_read_once(pem_files: dict[str, str]) -> None:
    config = parse(SUPERVISOR_TOKEN=TOKEN, **pem_files)
    assert config.tls is not None
    cert = Path(pem_files["SUPERVISOR_TLS_CERT"]).read_bytes()
    assert config.tls.cert_chain == config.tls.ca == cert
    assert config.tls.private_key == Path(pem_files["SUPERVISOR_TLS_KEY"]).read_bytes()
    assert "BEGIN" not in repr(config)
    del pem_files["SUPERVISOR_TLS_CA"]  # optional
    tls = parse(SUPERVISOR_TOKEN=TOKEN, **pem_files).tls
    assert tls is not None and tls.ca is None


@pytest.mark.parametrize("missing", ["SUPERVISOR_TLS_CERT", "SUPERVISOR_TLS_KEY"])
def test_tls_cert_and_key_go_together(pem_files: dict[str, str], missing: str) -> None:
    del pem_files[missing]
    assert error(SUPERVISOR_TOKEN=TOKEN, **pem_files).startswith(f"{missing}: not set")


def test_tls_ca_alone_is_refused(pem_files: dict[str, str]) -> None:
    files = {"SUPERVISOR_TLS_CA": pem_files["SUPERVISOR_TLS_CA"]}
    assert error(SUPERVISOR_TOKEN=TOKEN, **files).startswith("SUPERVISOR_TLS_CA: set, but")


@pytest.mark.parametrize("name", ["SUPERVISOR_TLS_CERT", "SUPERVISOR_TLS_KEY", "SUPERVISOR_TLS_CA"])
def test_missing_tls_file(tmp_path: Path, pem_files: dict[str, str], name: str) -> None:
    pem_files[name] = str(tmp_path / "gone.pem")
    message = error(SUPERVISOR_TOKEN=TOKEN, **pem_files)
    assert message == f"{name}={pem_files[name]!r}: cannot read (No such file or directory)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_tls_file(pem_files: dict[str, str]) -> None:
    os.chmod(pem_files["SUPERVISOR_TLS_KEY"], 0)
    message = error(SUPERVISOR_TOKEN=TOKEN, **pem_files)
    assert message.endswith("cannot read (Permission denied)")


def test_tls_file_that_is_not_pem(pem_files: dict[str, str]) -> None:
    Path(pem_files["SUPERVISOR_TLS_CERT"]).write_bytes(b"\x00binary")
    assert error(SUPERVISOR_TOKEN=TOKEN, **pem_files).endswith("is not a PEM file")


def test_tls_key_of_another_certificate(tmp_path: Path, pem_files: dict[str, str]) -> None:
    _, other_key = self_signed(tmp_path, "other")
    pem_files["SUPERVISOR_TLS_KEY"] = str(other_key)
    message = error(SUPERVISOR_TOKEN=TOKEN, **pem_files)
    assert message.startswith(f"SUPERVISOR_TLS_KEY={str(other_key)!r}: is not the key of")


@pytest.mark.parametrize("name", ["SUPERVISOR_TLS_CERT", "SUPERVISOR_TLS_CA"])
def test_tls_file_with_broken_pem(pem_files: dict[str, str], name: str) -> None:
    broken = Path(pem_files["SUPERVISOR_TLS_KEY"]).parent / "broken.pem"
    broken.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    pem_files[name] = str(broken)
    message = error(SUPERVISOR_TOKEN=TOKEN, **pem_files)
    assert message.startswith(f"{name}={str(broken)!r}: ") and "not a usable" in message


# ------------------------------------------------------------------ timeouts
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SUPERVISOR_HEARTBEAT_TIMEOUT_S", "0"),
        ("SUPERVISOR_HEARTBEAT_TIMEOUT_S", "-1"),
        ("SUPERVISOR_UNWIND_TIMEOUT_S", "soon"),
        ("SUPERVISOR_UNWIND_TIMEOUT_S", "inf"),
        ("SUPERVISOR_FAILURE_SETTLE_S", "nan"),
        ("SUPERVISOR_FAILURE_SETTLE_S", "-0.5"),
    ],
)
def test_bad_timeouts(name: str, value: str) -> None:
    message = error(SUPERVISOR_BIND="127.0.0.1", **{name: value})
    assert message.startswith(f"{name}={value!r}: must be a number of seconds")


def test_timeouts() -> None:
    config = parse(
        SUPERVISOR_BIND="127.0.0.1",
        SUPERVISOR_HEARTBEAT_TIMEOUT_S="2.5",
        SUPERVISOR_UNWIND_TIMEOUT_S="30",
        SUPERVISOR_FAILURE_SETTLE_S="0",
        SUPERVISOR_CRASH_LOOP_THRESHOLD="5",
    )
    assert (config.heartbeat_timeout_s, config.unwind_timeout_s) == (2.5, 30.0)
    assert (config.failure_settle_s, config.crash_loop_threshold) == (0.0, 5)


# --------------------------------------------------------- flags, unknown names
def test_flags_override_the_environment_and_are_named_in_errors() -> None:
    env = {"SUPERVISOR_BIND": "127.0.0.1", "SUPERVISOR_PORT": "1234"}
    assert parse_config(env, {"SUPERVISOR_PORT": "4321"}).port == 4321
    with pytest.raises(ConfigError, match=r"^--port='nope': must be an integer"):
        parse_config(env, {"SUPERVISOR_PORT": "nope"})


def test_every_variable_but_the_token_has_a_flag_and_messages_stay_short() -> None:
    without = {v.name for v in VARIABLES if not v.flag}
    assert without == {"SUPERVISOR_TOKEN"}
    assert all(v.name.startswith("SUPERVISOR_") for v in VARIABLES)
    long_value = error(SUPERVISOR_BIND="127.0.0.1", SUPERVISOR_PORT="9" * 500)
    assert len(long_value) < 200  # values are shortened in messages


def test_unknown_variables_are_reported_but_not_foreign_ones() -> None:
    env = {
        "SUPERVISOR_NNODE": "2",  # typo
        "SUPERVISOR_PORT": "1",
        "SUPERVISOR_ENABLED": "1",  # supervisord's
        "SUPERVISOR_ADDRESS": "x",  # train-launch's
        "PATH": "/bin",
    }
    assert unknown_variables(env) == ["SUPERVISOR_NNODE"]
