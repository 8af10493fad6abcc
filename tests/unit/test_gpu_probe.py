"""The accelerator probe: NVML absent for real, the pure decoding and metrics, a second probe kind,
and real figures where a GPU exists."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import types
from typing import Any, Callable

import pytest

from supervisor.detect.gpu_probe import (
    AcceleratorProbe,
    DeviceHealth,
    NvmlProbe,
    ProbeReport,
    decode_throttle_reasons,
    default_probes,
    health_for_classify,
    init_failure_reason,
    probe_metrics,
    read_device,
    report_to_dict,
)
from supervisor.rules.classify import GpuHealth


def _nvml_loadable() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


HAS_NVML = _nvml_loadable()


@pytest.mark.skipif(HAS_NVML, reason="this host has NVML: the absent path cannot be seen")
def test_without_nvml_the_probe_says_why_and_keeps_saying_it() -> None:
    probe = NvmlProbe()
    first, second = probe.read(), probe.read()
    probe.close()
    after_close = probe.read()
    for report in (first, second, after_close):
        assert report == ProbeReport(
            "nvidia", present=False, reason="NVML library not found (libnvidia-ml.so.1)"
        )
    assert probe_metrics([first]) == {}
    assert health_for_classify(first, 0) == GpuHealth()


def test_without_pynvml_the_probe_imports_and_says_so() -> None:
    script = (
        "import sys, json; sys.modules['pynvml'] = None\n"  # `import pynvml` now fails
        "from supervisor.detect.gpu_probe import NvmlProbe, report_to_dict\n"
        "p = NvmlProbe(); print(json.dumps([report_to_dict(p.read()), report_to_dict(p.read())]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    reports = json.loads(done.stdout)
    assert [r["reason"] for r in reports] == ["pynvml not installed"] * 2
    assert not any(r["present"] for r in reports)


THROTTLE_TABLE = [
    (0x0, ()),
    (0x1, ("gpu_idle",)),
    (0x8, ("hw_slowdown",)),
    (0x20 | 0x40, ("sw_thermal", "hw_thermal")),
    (0x4 | 0x80, ("sw_power_cap", "hw_power_brake")),
    (0x8 | 0x1000, ("hw_slowdown", "unknown_0x1000")),
]


@pytest.mark.parametrize(("mask", "names"), THROTTLE_TABLE)
def test_throttle_reason_bits_decode_to_names(mask: int, names: tuple[str, ...]) -> None:
    assert decode_throttle_reasons(mask) == names


def test_init_failures_name_the_cause() -> None:
    assert "libnvidia-ml.so.1" in init_failure_reason(12, "NVML Shared Library Not Found")
    assert init_failure_reason(9, "Driver Not Loaded") == "NVIDIA driver not loaded"
    assert init_failure_reason(999, "Unknown Error") == "NVML init failed: Unknown Error"


HEALTHY = DeviceHealth(
    index=0, name="H100", ecc_uncorrectable=0, ecc_corrected=2, temperature_c=60.0,
    utilization_percent=90.0, memory_used_bytes=10, memory_total_bytes=80,
)  # fmt: skip
ECC = DeviceHealth(
    index=1, ecc_uncorrectable=3, ecc_corrected=5, temperature_c=71.0,
    utilization_percent=50.0, memory_used_bytes=30, throttle_reasons=("hw_thermal",),
)  # fmt: skip
LOST = DeviceHealth(index=2, lost=True, error="GPU is lost")
UNSUPPORTED = DeviceHealth(index=3)  # every field -1: NotSupported everywhere
POD = ProbeReport("nvidia", present=True, devices=(HEALTHY, ECC, LOST, UNSUPPORTED))


@pytest.mark.parametrize(
    ("report", "index", "health"),
    [
        (POD, 0, GpuHealth(present=True, ecc_uncorrectable=0, lost=False)),
        (POD, 1, GpuHealth(present=True, ecc_uncorrectable=3, lost=False)),
        (POD, 2, GpuHealth(present=True, ecc_uncorrectable=0, lost=True)),
        (POD, 3, GpuHealth(present=True, ecc_uncorrectable=0, lost=False)),  # -1 is not an error
        (POD, 7, GpuHealth()),  # no such device: this rank has no GPU to blame
        (ProbeReport("nvidia", present=False, reason="no NVIDIA device"), 0, GpuHealth()),
    ],
)
def test_classifier_view_of_one_device(report: ProbeReport, index: int, health: GpuHealth) -> None:
    assert health_for_classify(report, index) == health


def test_pod_metrics_skip_lost_and_unsupported_devices() -> None:
    assert probe_metrics([POD]) == {
        "gpu_util_percent": 70.0,
        "gpu_temp_c": 71.0,
        "gpu_mem_used_bytes": 40.0,
        "gpu_ecc_corrected": 7.0,
        "gpu_ecc_uncorrectable": 3.0,
        "gpu_slowdown_devices": 1.0,
    }
    only_unsupported = ProbeReport("nvidia", present=True, devices=(UNSUPPORTED,))
    assert probe_metrics([only_unsupported]) == {"gpu_slowdown_devices": 0.0}


def test_report_to_dict_is_json_ready() -> None:
    data = json.loads(json.dumps(report_to_dict(POD)))
    assert data["present"] is True
    assert [d["index"] for d in data["devices"]] == [0, 1, 2, 3]
    assert data["devices"][1]["throttle_reasons"] == ["hw_thermal"]
    assert data["devices"][2]["lost"] is True


class FixedNpuProbe:
    """A second accelerator kind, as an Ascend probe would be: only the interface is shared."""

    name = "ascend"

    def __init__(self, devices: tuple[DeviceHealth, ...]) -> None:
        self.devices = devices
        self.closed = False

    def read(self) -> ProbeReport:
        return ProbeReport(self.name, present=bool(self.devices), devices=self.devices)

    def close(self) -> None:
        self.closed = True


def test_probes_of_two_kinds_compose() -> None:
    npu = DeviceHealth(index=0, name="910B", temperature_c=80.0, utilization_percent=10.0,
                       memory_used_bytes=5, ecc_corrected=0, ecc_uncorrectable=0)  # fmt: skip
    probes: list[AcceleratorProbe] = [*default_probes(), FixedNpuProbe((npu,))]
    reports = [p.read() for p in probes]
    metrics = probe_metrics(reports)
    if not reports[0].present:  # no GPU here: the NPU's figures alone
        assert metrics["gpu_temp_c"] == 80.0
        assert metrics["gpu_util_percent"] == 10.0
        assert metrics["gpu_mem_used_bytes"] == 5.0
    assert metrics["gpu_temp_c"] >= 80.0
    for probe in probes:
        probe.close()
    assert isinstance(probes[1], FixedNpuProbe) and probes[1].closed


def _binding(failing: dict[str, int]) -> Any:
    """A pynvml-shaped binding whose named calls fail with the given NVML codes (the real error
    classes of pynvml): what a lost device or an old board answers, which no host here can."""
    import pynvml

    def call(name: str, value: Callable[..., Any]) -> Callable[..., Any]:
        def answer(*args: Any) -> Any:
            if name in failing:
                raise pynvml.NVMLError(failing[name])
            return value(*args)

        return answer

    answers: dict[str, Callable[..., Any]] = {
        "nvmlDeviceGetHandleByIndex": lambda i: f"handle{i}",
        "nvmlDeviceGetName": lambda h: b"NVIDIA H100",
        "nvmlDeviceGetTotalEccErrors": lambda h, kind, counter: 4 if kind == 1 else 9,
        "nvmlDeviceGetRetiredPages": lambda h, cause: [0x1000] * (cause + 1),
        "nvmlDeviceGetRetiredPagesPendingStatus": lambda h: 1,
        "nvmlDeviceGetRemappedRows": lambda h: (0, 1, 0, 1),
        "nvmlDeviceGetTemperatureV": lambda h, sensor: 65,
        "nvmlDeviceGetTemperature": lambda h, sensor: 55,
        "nvmlDeviceGetCurrentClocksEventReasons": lambda h: 0x28,
        "nvmlDeviceGetUtilizationRates": lambda h: types.SimpleNamespace(gpu=77),
        "nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(used=3, total=8),
    }
    calls = {name: call(name, value) for name, value in answers.items()}
    return types.SimpleNamespace(NVMLError=pynvml.NVMLError, **calls)


def test_read_device_maps_nvml_answers_and_errors() -> None:
    full = read_device(_binding({}), 0)
    assert full == DeviceHealth(
        index=0, name="NVIDIA H100", ecc_uncorrectable=4, ecc_corrected=9, retired_pages=3,
        retirement_pending=True, remapped_rows_pending=False, remapped_rows_failed=True,
        temperature_c=65.0, throttle_reasons=("hw_slowdown", "sw_thermal"),
        utilization_percent=77.0, memory_used_bytes=3, memory_total_bytes=8,
    )  # fmt: skip
    not_supported = 3
    old_board = read_device(
        _binding({"nvmlDeviceGetTotalEccErrors": not_supported, "nvmlDeviceGetRemappedRows": 3}), 0
    )
    assert (old_board.ecc_uncorrectable, old_board.ecc_corrected) == (-1, -1)
    assert not old_board.remapped_rows_failed and old_board.error == ""
    function_not_found = 13  # a driver older than the binding: the old name answers instead
    old_driver = read_device(_binding({"nvmlDeviceGetTemperatureV": function_not_found}), 0)
    assert old_driver.temperature_c == 55.0 and old_driver.error == ""
    timeout = 10  # a real error on one field: that field only, and the error is kept
    slow = read_device(_binding({"nvmlDeviceGetUtilizationRates": timeout}), 0)
    assert slow.utilization_percent == -1.0 and slow.temperature_c == 65.0
    assert not slow.lost and "Timeout" in slow.error
    gpu_is_lost = 15
    lost = read_device(_binding({"nvmlDeviceGetTemperatureV": gpu_is_lost}), 0)
    assert lost.lost and "lost" in lost.error.lower()
    no_handle = read_device(_binding({"nvmlDeviceGetHandleByIndex": 16}), 1)
    assert no_handle.lost and no_handle.index == 1


@pytest.mark.skipif(not HAS_NVML, reason="no NVIDIA GPU (libnvidia-ml.so.1) on this host")
def test_real_gpu_figures() -> None:
    probe = NvmlProbe()
    try:
        report = probe.read()
    finally:
        probe.close()
    assert report.present, report.reason
    assert report.devices
    for device in report.devices:
        assert not device.lost, device.error
        assert device.name
        assert device.temperature_c > 0
        assert device.memory_total_bytes > 0
        assert device.ecc_uncorrectable >= -1
    metrics = probe_metrics([report])
    assert metrics["gpu_temp_c"] > 0
    assert health_for_classify(report, 0).present
    print(json.dumps(report_to_dict(report)))


def test_the_probe_command_reports_what_this_host_has() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "probe"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    [nvidia] = json.loads(done.stdout)
    assert nvidia["accelerator"] == "nvidia"
    assert nvidia["present"] is HAS_NVML
    if not HAS_NVML:
        assert "NVML library not found" in nvidia["reason"] and nvidia["devices"] == []
