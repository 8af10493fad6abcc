"""supervisor/settings/detection.py: SUPERVISOR_HANG_* values, and one clear line for a bad one."""

from __future__ import annotations

import pytest

from supervisor.rules.anomaly import AnomalySettings
from supervisor.rules.classify import PodFaultRule
from supervisor.rules.hang import HangSettings
from supervisor.settings.detection import DETECT_VARIABLES, DetectConfig, parse_detect
from supervisor.settings.env_values import ConfigError
from supervisor.settings.serve import unknown_variables


def test_defaults() -> None:
    assert parse_detect({}) == DetectConfig(HangSettings(10.0, 5.0, 300.0), hang_stacks=True)


def test_every_variable_is_read() -> None:
    env = {
        "SUPERVISOR_HANG_FLOOR_S": "3",
        "SUPERVISOR_HANG_FACTOR": "2.5",
        "SUPERVISOR_HANG_STARTUP_S": "60",
        "SUPERVISOR_HANG_STACKS": "0",
        "SUPERVISOR_SAMPLE_S": "2",
        "SUPERVISOR_ANOMALY_Z": "5",
        "SUPERVISOR_ANOMALY_WINDOWS": "4",
        "SUPERVISOR_STRAGGLER_REPLACE_SLOWDOWN": "1.5",
        "SUPERVISOR_STRAGGLER_REPLACE_AFTER_S": "120",
        "SUPERVISOR_CRASH_LOOP_WINDOW_S": "900",
        "SUPERVISOR_POD_FAULT_LIMIT": "6",
        "SUPERVISOR_POD_FAULT_WINDOW_S": "1800",
    }
    anomaly = AnomalySettings(
        z_threshold=5.0, windows=4, replace_slowdown=1.5, replace_after_s=120.0
    )
    assert parse_detect(env) == DetectConfig(
        HangSettings(3.0, 2.5, 60.0),
        hang_stacks=False,
        sample_s=2.0,
        anomaly=anomaly,
        crash_loop_window_s=900.0,
        pod_faults=PodFaultRule(limit=6, window_s=1800.0),
    )
    assert {v.name for v in DETECT_VARIABLES} == set(env)


def test_empty_values_count_as_unset() -> None:
    assert parse_detect({"SUPERVISOR_HANG_FLOOR_S": "", "SUPERVISOR_HANG_STACKS": ""}) == (
        DetectConfig()
    )


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("SUPERVISOR_HANG_FLOOR_S", "0", "seconds > 0"),
        ("SUPERVISOR_HANG_FLOOR_S", "ten", "seconds > 0"),
        ("SUPERVISOR_HANG_FLOOR_S", "inf", "seconds > 0"),
        ("SUPERVISOR_HANG_STARTUP_S", "-5", "seconds > 0"),
        ("SUPERVISOR_HANG_FACTOR", "0.5", ">= 1"),
        ("SUPERVISOR_HANG_FACTOR", "nan", "step times > 0"),
        ("SUPERVISOR_HANG_STACKS", "yes", "must be 0 or 1"),
        ("SUPERVISOR_SAMPLE_S", "0", "seconds > 0"),
        ("SUPERVISOR_ANOMALY_Z", "-1", "z > 0"),
        ("SUPERVISOR_ANOMALY_WINDOWS", "0", "1"),
        ("SUPERVISOR_STRAGGLER_REPLACE_SLOWDOWN", "1", "slowdown > 1"),
        ("SUPERVISOR_STRAGGLER_REPLACE_AFTER_S", "-3", "seconds >= 0"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_detect({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}={value!r}: ") and problem in message
    assert "\n" not in message


def test_detection_variables_are_not_reported_as_unknown() -> None:
    env = {v.name: "1" for v in DETECT_VARIABLES}
    assert unknown_variables({**env, "SUPERVISOR_HANG_FLOR_S": "3"}) == ["SUPERVISOR_HANG_FLOR_S"]


def test_the_repeated_fault_rules_default_to_a_rate() -> None:
    """Four unexplained faults within an hour, a crash loop within an hour; 0 turns the
    pod-fault rule off."""
    config = parse_detect({})
    assert (config.pod_faults.limit, config.pod_faults.window_s) == (4, 3600.0)
    assert config.crash_loop_window_s == 3600.0
    assert parse_detect({"SUPERVISOR_POD_FAULT_LIMIT": "0"}).pod_faults.limit == 0


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("SUPERVISOR_POD_FAULT_LIMIT", "-1", "must be an integer in 0..1000000"),
        ("SUPERVISOR_POD_FAULT_LIMIT", "three", "must be an integer in 0..1000000"),
        ("SUPERVISOR_POD_FAULT_WINDOW_S", "0", "must be a number of seconds > 0"),
        ("SUPERVISOR_CRASH_LOOP_WINDOW_S", "inf", "must be a number of seconds > 0"),
    ],
)
def test_a_bad_repeated_fault_setting_is_one_line(name: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_detect({name: value})
    assert str(caught.value) == f"{name}={value!r}: {problem}"
