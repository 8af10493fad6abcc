"""JSON log lines (logs.py), SUPERVISOR_METRICS_PORT/SUPERVISOR_LOG_FORMAT parsing
(outputs_config.py, config.py) and the `events` command's lines (events_cli.py)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Optional

import pytest

from supervisor.events_cli import event_json, event_line
from supervisor.outputs.logs import JsonFormatter
from supervisor.settings.env_values import ConfigError, Source
from supervisor.settings.outputs import OutputsConfig, outputs_from_env, parse_outputs
from supervisor.settings.serve import parse_config, unknown_variables
from train_supervisor.text_log import TextFormatter, iso_utc
from train_supervisor.v1 import supervisor_pb2 as pb

LOOPBACK = {"SUPERVISOR_BIND": "127.0.0.1"}
T = 1795457253.123456  # 2026-11-23T18:07:33.123Z


def record(message: str, extra: Optional[dict[str, object]] = None) -> logging.LogRecord:
    logger = logging.getLogger("train_supervisor.test")
    made = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None)
    for name, value in (extra or {}).items():
        setattr(made, name, value)
    made.created = T
    return made


# ------------------------------------------------------------------ JSON logs
def test_a_log_line_is_one_json_object_with_time_level_logger_message() -> None:
    line = JsonFormatter().format(record('rank 1 said "bye"\nand left'))
    assert "\n" not in line
    assert json.loads(line) == {
        "time": iso_utc(T),
        "level": "WARNING",
        "logger": "train_supervisor.test",
        "message": 'rank 1 said "bye"\nand left',
    }
    assert iso_utc(T) == "2026-11-23T18:07:33.123Z"


def test_a_job_events_log_line_carries_kind_seq_and_node_rank() -> None:
    line = JsonFormatter().format(
        record("failure: rank 1", {"kind": "failure", "seq": 12, "node_rank": 3})
    )
    entry = json.loads(line)
    assert (entry["kind"], entry["seq"], entry["node_rank"]) == ("failure", 12, 3)


def test_an_exception_is_kept_in_the_same_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        made = record("failed")
        made.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(made))
    assert "RuntimeError: boom" in entry["exception"]


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, OutputsConfig(metrics_port=0, log_format="text")),
        ({"SUPERVISOR_METRICS_PORT": "9400"}, OutputsConfig(metrics_port=9400)),
        ({"SUPERVISOR_METRICS_PORT": ""}, OutputsConfig()),  # Kubernetes' way to unset
        ({"SUPERVISOR_LOG_FORMAT": "JSON "}, OutputsConfig(log_format="json")),
        ({"SUPERVISOR_LOG_FORMAT": "text"}, OutputsConfig(log_format="text")),
    ],
)
def test_outputs_from_the_environment(env: dict[str, str], expected: OutputsConfig) -> None:
    assert outputs_from_env(env) == expected


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"SUPERVISOR_METRICS_PORT": "x"}, "SUPERVISOR_METRICS_PORT='x': must be an integer in"),
        ({"SUPERVISOR_METRICS_PORT": "70000"}, "SUPERVISOR_METRICS_PORT='70000': must be"),
        ({"SUPERVISOR_METRICS_PORT": "-1"}, "SUPERVISOR_METRICS_PORT='-1': must be"),
        ({"SUPERVISOR_LOG_FORMAT": "yaml"}, "SUPERVISOR_LOG_FORMAT='yaml': must be text or json"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        outputs_from_env(env)
    assert str(caught.value).startswith(error) and "\n" not in str(caught.value)


def test_the_flags_override_the_variables_and_are_named_in_errors() -> None:
    flags = {"SUPERVISOR_METRICS_PORT": "--metrics-port", "SUPERVISOR_LOG_FORMAT": "--log-format"}
    src = Source({"SUPERVISOR_METRICS_PORT": "1"}, {"SUPERVISOR_METRICS_PORT": "2"}, flags)
    assert parse_outputs(src).metrics_port == 2
    with pytest.raises(ConfigError, match=r"^--log-format='xml': must be text or json"):
        parse_outputs(Source({}, {"SUPERVISOR_LOG_FORMAT": "xml"}, flags))


def test_the_sidecar_config_reads_them_and_knows_their_names() -> None:
    env = {**LOOPBACK, "SUPERVISOR_METRICS_PORT": "9400", "SUPERVISOR_LOG_FORMAT": "json"}
    config = parse_config(env, {"SUPERVISOR_METRICS_PORT": "9500"})
    assert config.outputs == OutputsConfig(metrics_port=9500, log_format="json")
    assert unknown_variables(env) == []
    with pytest.raises(ConfigError, match=r"^--metrics-port='no':"):
        parse_config(LOOPBACK, {"SUPERVISOR_METRICS_PORT": "no"})


# ------------------------------------------------------------------ events lines
def test_an_event_is_one_line_and_a_report_is_joined_onto_it() -> None:
    event = pb.JobEvent(
        time_unix=T, kind="ended", message="job given up: crash loop\n  rank: 3\n", seq=12
    )
    event.node_rank = 2
    assert event_line(event) == f"{iso_utc(T)} pod 2 #12 ended: job given up: crash loop | rank: 3"


def test_an_event_as_json_keeps_zero_fields_and_the_full_message() -> None:
    event = pb.JobEvent(time_unix=T, kind="failure", message="a\nb", seq=1, node_rank=0)
    assert json.loads(event_json(event)) == {
        "time": iso_utc(T),
        "time_unix": T,
        "node_rank": 0,
        "seq": 1,
        "kind": "failure",
        "message": "a\nb",
    }


# ------------------------------------------------------------------ text logs
def test_a_text_log_line_starts_with_its_utc_time() -> None:
    """Text lines carried no timestamp: a log without a collector's time was unreadable."""
    line = TextFormatter("train-launch").format(record("rank 1 failed"))
    assert line == "2026-11-23T18:07:33.123Z [train-launch] WARNING rank 1 failed"
