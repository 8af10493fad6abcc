"""Accelerator health: a small probe interface, and its NVIDIA implementation over NVML (pynvml).

Another accelerator (an Ascend NPU, say) is one more class with `name`, `read()`
and `close()` added to `default_probes()`; the rest of the supervisor only sees
`ProbeReport`s. The NVML calls stay in `NvmlProbe`; decoding, the classifier's
view and the pod metrics are pure functions over reports, testable without a GPU.

NVML indexes the devices visible in the container (Kubernetes' device plugin
mounts only the pod's own GPUs), which is the order of LOCAL_RANK there.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from supervisor.rules.classify import GpuHealth

UNSUPPORTED = -1  # a counter NVML does not report on this device

# NVML clock event ("throttle") reason bits, as in nvml.h; unknown bits decode as "unknown_0x...".
THROTTLE_REASON_BITS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal"),
    (0x40, "hw_thermal"),
    (0x80, "hw_power_brake"),
    (0x100, "display_clock"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)
# Reasons that slow a busy device down for a fault or its environment, not by policy or idleness.
SLOWDOWN_REASONS = frozenset({"hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake"})

# nvmlReturn_t codes (a stable C ABI), kept here so the decisions need no pynvml.
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
# The device stopped answering: it fell off the bus, or needs a reset before it answers again.
LOST_DEVICE_ERRORS = frozenset({15, 16, 28})  # GPU_IS_LOST, RESET_REQUIRED, GPU_NOT_FOUND


@dataclass(frozen=True)
class DeviceHealth:
    index: int
    name: str = ""
    ecc_uncorrectable: int = UNSUPPORTED  # volatile: since the last driver reload or reset
    ecc_corrected: int = UNSUPPORTED  # volatile
    retired_pages: int = UNSUPPORTED  # both causes (single-bit repeats, double-bit)
    retirement_pending: bool = False
    remapped_rows_pending: bool = False  # Ampere+ row remapping: a reset applies it
    remapped_rows_failed: bool = False  # a remap failed: the device must be replaced
    temperature_c: float = UNSUPPORTED
    throttle_reasons: tuple[str, ...] = ()
    utilization_percent: float = UNSUPPORTED
    memory_used_bytes: int = UNSUPPORTED
    memory_total_bytes: int = UNSUPPORTED
    lost: bool = False
    error: str = ""  # the last NVML error met on this device, for the report


@dataclass(frozen=True)
class ProbeReport:
    accelerator: str
    present: bool
    reason: str = ""  # why no device is reported
    devices: tuple[DeviceHealth, ...] = ()


class AcceleratorProbe(Protocol):
    name: str

    def read(self) -> ProbeReport: ...

    def close(self) -> None: ...


def decode_throttle_reasons(mask: int) -> tuple[str, ...]:
    names = [name for bit, name in THROTTLE_REASON_BITS if mask & bit]
    known = sum(bit for bit, _ in THROTTLE_REASON_BITS)
    if mask & ~known:
        names.append(f"unknown_{mask & ~known:#x}")
    return tuple(names)


def init_failure_reason(code: Optional[int], message: str) -> str:
    if code == NVML_ERROR_LIBRARY_NOT_FOUND:
        return "NVML library not found (libnvidia-ml.so.1)"
    if code == NVML_ERROR_DRIVER_NOT_LOADED:
        return "NVIDIA driver not loaded"
    return f"NVML init failed: {message}"


def health_for_classify(report: ProbeReport, device_index: int) -> GpuHealth:
    """The classifier's view of one rank's device; absent when the probe has no such device."""
    if not report.present:
        return GpuHealth()
    for device in report.devices:
        if device.index == device_index:
            return GpuHealth(
                present=True, ecc_uncorrectable=max(0, device.ecc_uncorrectable), lost=device.lost
            )
    return GpuHealth()


def device_health(probes: Sequence[AcceleratorProbe], device_index: int) -> GpuHealth:
    """What the first probe that has this device says of it (absent: no probe has it)."""
    for probe in probes:
        health = health_for_classify(probe.read(), device_index)
        if health.present:
            return health
    return GpuHealth()


def probe_metrics(reports: Sequence[ProbeReport]) -> dict[str, float]:
    """Pod-level accelerator metrics for the cross-pod anomaly scores; a metric no device reports
    is left out rather than guessed."""
    devices = [d for r in reports if r.present for d in r.devices if not d.lost]
    metrics: dict[str, float] = {}
    utilization = [d.utilization_percent for d in devices if d.utilization_percent >= 0]
    if utilization:
        metrics["gpu_util_percent"] = sum(utilization) / len(utilization)
    temperatures = [d.temperature_c for d in devices if d.temperature_c >= 0]
    if temperatures:
        metrics["gpu_temp_c"] = max(temperatures)
    for key, values in (
        ("gpu_mem_used_bytes", [d.memory_used_bytes for d in devices]),
        ("gpu_ecc_corrected", [d.ecc_corrected for d in devices]),
        ("gpu_ecc_uncorrectable", [d.ecc_uncorrectable for d in devices]),
    ):
        known = [v for v in values if v >= 0]
        if known:
            metrics[key] = float(sum(known))
    if devices:
        slowed = [d for d in devices if SLOWDOWN_REASONS.intersection(d.throttle_reasons)]
        metrics["gpu_slowdown_devices"] = float(len(slowed))
    return metrics


def report_to_dict(report: ProbeReport) -> dict[str, Any]:
    """JSON-ready form, for `train-supervisor probe`."""
    return {
        "accelerator": report.accelerator,
        "present": report.present,
        "reason": report.reason,
        "devices": [
            {**vars(d), "throttle_reasons": list(d.throttle_reasons)} for d in report.devices
        ],
    }


class _DeviceLost(Exception):
    pass


class NvmlProbe:
    """NVIDIA devices through NVML. Initialises once, on the first read; `read()` never raises."""

    name: str = "nvidia"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml: Any = None  # the pynvml module once NVML is initialised
        self._absent_reason = ""  # why NVML could not be initialised; kept, not retried

    def read(self) -> ProbeReport:
        with self._lock:
            try:
                return self._read_locked()
            except Exception as error:  # a probe must not take the supervisor down
                return ProbeReport(self.name, present=False, reason=f"NVML read failed: {error}")

    def close(self) -> None:
        with self._lock:
            nvml, self._nvml, self._absent_reason = self._nvml, None, ""
            if nvml is not None:
                with contextlib.suppress(Exception):  # a lost device fails it; nothing to do
                    nvml.nvmlShutdown()

    def _read_locked(self) -> ProbeReport:
        if self._nvml is None and not self._absent_reason:
            self._absent_reason = self._initialise()
        if self._absent_reason:
            return ProbeReport(self.name, present=False, reason=self._absent_reason)
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as error:
            return ProbeReport(
                self.name, present=False, reason=f"NVML device count failed: {error}"
            )
        if count == 0:
            return ProbeReport(self.name, present=False, reason="no NVIDIA device")
        devices = tuple(read_device(nvml, index) for index in range(count))
        return ProbeReport(self.name, present=True, devices=devices)

    def _initialise(self) -> str:
        try:
            import pynvml
        except ImportError:
            return "pynvml not installed"
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            return init_failure_reason(getattr(error, "value", None), str(error))
        self._nvml = pynvml
        return ""


class _DeviceFields:
    """One device's NVML calls: a field the device does not support gets its default (and a
    real error is noted); a device that stopped answering raises `_DeviceLost`."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml = nvml
        self.handle = handle
        self.errors: list[str] = []

    def get(self, default: object, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(self.handle, *args)
        except self._nvml.NVMLError as error:
            code = getattr(error, "value", None)
            if code in LOST_DEVICE_ERRORS:
                raise _DeviceLost(str(error)) from error
            if code != NVML_ERROR_NOT_SUPPORTED:  # unsupported is expected, not news
                self.errors.append(str(error))
            return default
        except Exception as error:  # an older pynvml without this call, a ctypes failure
            self.errors.append(f"{type(error).__name__}: {error}")
            return default


def read_device(nvml: Any, index: int) -> DeviceHealth:
    try:
        fields = _DeviceFields(nvml, nvml.nvmlDeviceGetHandleByIndex(index))
        name = fields.get("", nvml.nvmlDeviceGetName)
        ecc_volatile = 0  # NVML_VOLATILE_ECC; error types: 1 uncorrected, 0 corrected
        ecc_uncorrected = fields.get(UNSUPPORTED, nvml.nvmlDeviceGetTotalEccErrors, 1, ecc_volatile)
        ecc_corrected = fields.get(UNSUPPORTED, nvml.nvmlDeviceGetTotalEccErrors, 0, ecc_volatile)
        # Causes: 0 multiple single-bit errors, 1 a double-bit error.
        pages = [fields.get(None, nvml.nvmlDeviceGetRetiredPages, cause) for cause in (0, 1)]
        pending = fields.get(0, nvml.nvmlDeviceGetRetiredPagesPendingStatus)
        # Remapped rows: corrected, uncorrected, pending, failed.
        remap = fields.get((0, 0, 0, 0), nvml.nvmlDeviceGetRemappedRows)
        temperature = fields.get(UNSUPPORTED, _newest(nvml, _TEMPERATURE_CALLS), 0)  # 0: the die
        reasons = fields.get(0, _newest(nvml, _CLOCK_REASON_CALLS))
        utilization = fields.get(None, nvml.nvmlDeviceGetUtilizationRates)
        memory = fields.get(None, nvml.nvmlDeviceGetMemoryInfo)
    except (_DeviceLost, nvml.NVMLError) as error:
        lost = isinstance(error, _DeviceLost) or getattr(error, "value", None) in LOST_DEVICE_ERRORS
        return DeviceHealth(index=index, lost=lost, error=str(error))
    return DeviceHealth(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        ecc_uncorrectable=int(ecc_uncorrected),
        ecc_corrected=int(ecc_corrected),
        retired_pages=UNSUPPORTED if None in pages else sum(len(p) for p in pages),
        retirement_pending=pending == 1,  # NVML_FEATURE_ENABLED
        remapped_rows_pending=bool(remap[2]),
        remapped_rows_failed=bool(remap[3]),
        temperature_c=float(temperature),
        throttle_reasons=decode_throttle_reasons(int(reasons)),
        utilization_percent=UNSUPPORTED if utilization is None else float(utilization.gpu),
        memory_used_bytes=UNSUPPORTED if memory is None else int(memory.used),
        memory_total_bytes=UNSUPPORTED if memory is None else int(memory.total),
        error="; ".join(fields.errors),
    )


# Calls NVML renamed, newest first: a driver older than the binding lacks the new name.
_TEMPERATURE_CALLS = ("nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature")
_CLOCK_REASON_CALLS = (
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
)


def _newest(nvml: Any, names: tuple[str, ...]) -> Callable[..., Any]:
    def call(handle: Any, *args: Any) -> Any:
        for name in names[:-1]:
            newer = getattr(nvml, name, None)
            if newer is not None:
                try:
                    return newer(handle, *args)
                except nvml.NVMLError as error:
                    if getattr(error, "value", None) != NVML_ERROR_FUNCTION_NOT_FOUND:
                        raise
        return getattr(nvml, names[-1])(handle, *args)

    return call


def default_probes() -> list[AcceleratorProbe]:
    """The probes the sidecar runs; another accelerator's probe is added here."""
    return [NvmlProbe()]
