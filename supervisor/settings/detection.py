"""Detection settings: SUPERVISOR_HANG_*, the pod metrics window, anomaly scoring, and the
windows of the repeated-fault rules (crash loop, suspect hardware) (pure).

Read by `train-supervisor serve` and by `train-launch --standalone`, whose
embedded supervisor detects the same way. Environment only, no flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

from supervisor.rules.anomaly import AnomalySettings
from supervisor.rules.classify import POD_FAULT_WINDOW_S, POD_FAULTS_TO_REPLACE, PodFaultRule
from supervisor.rules.hang import HangSettings
from supervisor.rules.restart_policy import DEFAULT_CRASH_LOOP_WINDOW_S
from supervisor.settings.env_values import (
    Source,
    Variable,
    bad_value,
    boolean,
    integer,
    number,
    seconds,
)

_HANG = HangSettings()
_ANOMALY = AnomalySettings()
SAMPLE_S = 5.0

# Environment only, no flags.
DETECT_VARIABLES = (
    Variable(
        "SUPERVISOR_HANG_FLOOR_S", "", "no rank is hung sooner, seconds", f"{_HANG.floor_s:g}"
    ),
    Variable(
        "SUPERVISOR_HANG_FACTOR",
        "",
        "a rank is hung after max(floor, this many median step times) without a step",
        f"{_HANG.factor:g}",
    ),
    Variable(
        "SUPERVISOR_HANG_STARTUP_S",
        "",
        "allowance before a rank's first step, seconds",
        f"{_HANG.startup_s:g}",
    ),
    Variable(
        "SUPERVISOR_HANG_STACKS",
        "",
        "1: when process state and CPU name no hung rank, compare the ranks' py-spy stacks",
        "1",
    ),
    Variable(
        "SUPERVISOR_SAMPLE_S",
        "",
        "pod metrics window, seconds: each pod samples its workers this often",
        f"{SAMPLE_S:g}",
    ),
    Variable(
        "SUPERVISOR_ANOMALY_Z",
        "",
        "robust z-score beyond which a pod stands out",
        f"{_ANOMALY.z_threshold:g}",
    ),
    Variable(
        "SUPERVISOR_ANOMALY_WINDOWS",
        "",
        "consecutive windows a pod must stand out in to be reported",
        f"{_ANOMALY.windows}",
    ),
    Variable(
        "SUPERVISOR_STRAGGLER_REPLACE_SLOWDOWN",
        "",
        "ask a straggler pod this many times slower than the median to leave, exit 4 (0: never)",
        "0",
    ),
    Variable(
        "SUPERVISOR_STRAGGLER_REPLACE_AFTER_S",
        "",
        "... once it has been that slow for this long, seconds",
        f"{_ANOMALY.replace_after_s:g}",
    ),
    Variable(
        "SUPERVISOR_CRASH_LOOP_WINDOW_S",
        "",
        "a crash loop is one rank failing with one error without job-wide progress "
        "SUPERVISOR_CRASH_LOOP_THRESHOLD times within this many seconds",
        f"{DEFAULT_CRASH_LOOP_WINDOW_S:g}",
    ),
    Variable(
        "SUPERVISOR_POD_FAULT_LIMIT",
        "",
        "this many faults nothing explains (a kill from outside, a bare exit code) on one pod "
        "within SUPERVISOR_POD_FAULT_WINDOW_S: suspect hardware, the pod exits 4 to be "
        "replaced (0: never)",
        f"{POD_FAULTS_TO_REPLACE}",
    ),
    Variable(
        "SUPERVISOR_POD_FAULT_WINDOW_S",
        "",
        "... the window of SUPERVISOR_POD_FAULT_LIMIT, seconds",
        f"{POD_FAULT_WINDOW_S:g}",
    ),
)


@dataclass(frozen=True)
class DetectConfig:
    hang: HangSettings = field(default_factory=HangSettings)
    hang_stacks: bool = True  # py-spy dumps when process state and CPU name no culprit
    sample_s: float = SAMPLE_S  # the pod metrics window (supervisor/detect/pod_health.py)
    anomaly: AnomalySettings = field(default_factory=AnomalySettings)
    crash_loop_window_s: float = DEFAULT_CRASH_LOOP_WINDOW_S
    pod_faults: PodFaultRule = field(default_factory=PodFaultRule)


def parse_detect(
    env: Mapping[str, str], overrides: Optional[Mapping[str, str]] = None
) -> DetectConfig:
    src = Source(env, overrides or {}, {})
    factor = number(src, "SUPERVISOR_HANG_FACTOR", _HANG.factor, "step times", False)
    found = src.get("SUPERVISOR_HANG_FACTOR")
    if found is not None and factor < 1:  # under one step time, ranks are hung mid-step
        raise bad_value(*found, "must be a number >= 1 (of median step times)")
    hang = HangSettings(
        floor_s=seconds(src, "SUPERVISOR_HANG_FLOOR_S", _HANG.floor_s, False),
        factor=factor,
        startup_s=seconds(src, "SUPERVISOR_HANG_STARTUP_S", _HANG.startup_s, False),
    )
    slowdown = number(src, "SUPERVISOR_STRAGGLER_REPLACE_SLOWDOWN", 0.0, "times", True)
    found = src.get("SUPERVISOR_STRAGGLER_REPLACE_SLOWDOWN")
    if found is not None and 0 < slowdown <= 1:  # 1x is every pod
        raise bad_value(*found, "must be 0 (never) or a slowdown > 1")
    anomaly = AnomalySettings(
        z_threshold=number(src, "SUPERVISOR_ANOMALY_Z", _ANOMALY.z_threshold, "z", False),
        windows=integer(src, "SUPERVISOR_ANOMALY_WINDOWS", _ANOMALY.windows, 1, 1000),
        replace_slowdown=slowdown,
        replace_after_s=seconds(
            src, "SUPERVISOR_STRAGGLER_REPLACE_AFTER_S", _ANOMALY.replace_after_s, True
        ),
    )
    return DetectConfig(
        hang=hang,
        hang_stacks=boolean(src, "SUPERVISOR_HANG_STACKS", True),
        sample_s=seconds(src, "SUPERVISOR_SAMPLE_S", SAMPLE_S, False),
        anomaly=anomaly,
        crash_loop_window_s=seconds(
            src, "SUPERVISOR_CRASH_LOOP_WINDOW_S", DEFAULT_CRASH_LOOP_WINDOW_S, False
        ),
        pod_faults=PodFaultRule(
            limit=integer(src, "SUPERVISOR_POD_FAULT_LIMIT", POD_FAULTS_TO_REPLACE, 0, 1_000_000),
            window_s=seconds(src, "SUPERVISOR_POD_FAULT_WINDOW_S", POD_FAULT_WINDOW_S, False),
        ),
    )
