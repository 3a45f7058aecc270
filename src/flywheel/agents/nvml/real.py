"""The real NVML backend: the only module in Flywheel that imports ``pynvml`` (nvidia-ml-py).

Every NVML call goes through ``_call``, which turns ``NVMLError`` (and anything else the binding
raises) into a typed ``NvmlError``; a lost GPU is reported, never raised.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pynvml

from flywheel.agents.nvml.backend import (
    NVML_RETURN_CODES,
    EventKind,
    GPUDevice,
    GPUEvent,
    GPUSample,
    NvmlBackend,
    NvmlError,
    NvmlErrorKind,
    Ok,
    Result,
)

T = TypeVar("T")

NVLINK_COUNTERS = {
    "replay": 0,  # NVML_NVLINK_ERROR_DL_REPLAY
    "recovery": 1,  # NVML_NVLINK_ERROR_DL_RECOVERY
    "crc_flit": 2,  # NVML_NVLINK_ERROR_DL_CRC_FLIT
    "crc_data": 3,  # NVML_NVLINK_ERROR_DL_CRC_DATA
}
# Event types the health checks act on (nvmlEventType*).
EVENT_XID = 0x8
EVENT_DOUBLE_BIT_ECC = 0x2
EVENT_DRAM_RETIREMENT_FAILURE = 0x800
EVENT_GPU_UNAVAILABLE = 0x4000
EVENT_GPU_RECOVERY_ACTION = 0x8000
WANTED_EVENTS = (
    EVENT_XID
    | EVENT_DOUBLE_BIT_ECC
    | EVENT_DRAM_RETIREMENT_FAILURE
    | EVENT_GPU_UNAVAILABLE
    | EVENT_GPU_RECOVERY_ACTION
)
FIELD_GPU_RECOVERY_ACTION = 230  # NVML_FI_DEV_GET_GPU_RECOVERY_ACTION
NVLINK_MAX_LINKS = 18  # H100: 18 links; NVML_NVLINK_MAX_LINKS is larger on newer drivers
P2P_CAPS_INDEX_NVLINK = 2
P2P_STATUS_OK = 0


def error_from_exception(exc: BaseException, call: str) -> NvmlError:
    """Map an exception raised by the binding to a typed error."""
    code = getattr(exc, "value", None)
    if isinstance(exc, pynvml.NVMLError) and isinstance(code, int):
        return NvmlError(NVML_RETURN_CODES.get(code, NvmlErrorKind.UNKNOWN), call, str(exc), code)
    return NvmlError(NvmlErrorKind.UNKNOWN, call, f"{type(exc).__name__}: {exc}")


def _call(call: str, fn: Callable[..., T], *args: Any) -> Result[T]:
    try:
        return Ok(fn(*args))
    except Exception as exc:  # any binding failure becomes data
        return error_from_exception(exc, call)


def _address(handle: Any) -> Any:
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return handle


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RealNvml(NvmlBackend):
    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._uuids: list[str] = []
        self._active_links: list[list[int]] = []
        self._event_set: Any = None
        self._lock = threading.Lock()

    def init(self) -> Result[None]:
        res = _call("nvmlInit", pynvml.nvmlInit)
        if isinstance(res, NvmlError):
            return res
        count = _call("nvmlDeviceGetCount", pynvml.nvmlDeviceGetCount)
        if isinstance(count, NvmlError):
            return count
        self._handles, self._uuids = [], []
        for i in range(count.value):
            handle = _call("nvmlDeviceGetHandleByIndex", pynvml.nvmlDeviceGetHandleByIndex, i)
            if isinstance(handle, NvmlError):
                return handle
            uuid = _call("nvmlDeviceGetUUID", pynvml.nvmlDeviceGetUUID, handle.value)
            self._handles.append(handle.value)
            self._uuids.append(_text(uuid.value) if isinstance(uuid, Ok) else f"unknown-{i}")
        self._active_links = [self._links(h) for h in self._handles]
        return self._register_events()

    def shutdown(self) -> None:
        if self._event_set is not None:
            _call("nvmlEventSetFree", pynvml.nvmlEventSetFree, self._event_set)
            self._event_set = None
        _call("nvmlShutdown", pynvml.nvmlShutdown)

    def driver_version(self) -> Result[str]:
        res = _call("nvmlSystemGetDriverVersion", pynvml.nvmlSystemGetDriverVersion)
        return Ok(_text(res.value)) if isinstance(res, Ok) else res

    def devices(self) -> Result[list[GPUDevice]]:
        out = []
        for i, handle in enumerate(self._handles):
            dev = self._device(i, handle)
            if isinstance(dev, NvmlError):
                return dev
            out.append(dev.value)
        return Ok(out)

    def sample(self, index: int) -> Result[GPUSample]:
        if not 0 <= index < len(self._handles):
            return NvmlError(NvmlErrorKind.INVALID_ARGUMENT, "sample", f"no GPU {index}")
        h = self._handles[index]
        unsupported: list[str] = []
        values: dict[str, Any] = {}

        def read(name: str, call: str, fn: Callable[..., Any], *args: Any) -> Any:
            res = _call(call, fn, *args)
            if isinstance(res, NvmlError):
                if res.gpu_lost:
                    raise _Lost(res)
                unsupported.append(name)
                return None
            return res.value

        try:
            values["sm_clock_mhz"] = read(
                "sm_clock_mhz",
                "nvmlDeviceGetClockInfo",
                pynvml.nvmlDeviceGetClockInfo,
                h,
                pynvml.NVML_CLOCK_SM,
            )
            values["memory_clock_mhz"] = read(
                "memory_clock_mhz",
                "nvmlDeviceGetClockInfo",
                pynvml.nvmlDeviceGetClockInfo,
                h,
                pynvml.NVML_CLOCK_MEM,
            )
            power_mw = read("power_watts", "nvmlDeviceGetPowerUsage", pynvml.nvmlDeviceGetPowerUsage, h)
            values["power_watts"] = None if power_mw is None else power_mw / 1000.0
            values["energy_millijoules"] = read(
                "energy_millijoules",
                "nvmlDeviceGetTotalEnergyConsumption",
                pynvml.nvmlDeviceGetTotalEnergyConsumption,
                h,
            )
            util = read(
                "utilization", "nvmlDeviceGetUtilizationRates", pynvml.nvmlDeviceGetUtilizationRates, h
            )
            if util is not None:
                values["gpu_utilization_pct"] = int(util.gpu)
                values["memory_utilization_pct"] = int(util.memory)
            mem = read("memory_used_mib", "nvmlDeviceGetMemoryInfo", pynvml.nvmlDeviceGetMemoryInfo, h)
            values["memory_used_mib"] = None if mem is None else int(mem.used) // (1024 * 1024)
            values["temperature_celsius"] = read(
                "temperature_celsius",
                "nvmlDeviceGetTemperature",
                pynvml.nvmlDeviceGetTemperature,
                h,
                pynvml.NVML_TEMPERATURE_GPU,
            )
            values["clock_event_reasons"] = read(
                "clock_event_reasons",
                "nvmlDeviceGetCurrentClocksEventReasons",
                pynvml.nvmlDeviceGetCurrentClocksEventReasons,
                h,
            )
            values["ecc_sbe_volatile"] = read(
                "ecc_sbe_volatile",
                "nvmlDeviceGetTotalEccErrors",
                pynvml.nvmlDeviceGetTotalEccErrors,
                h,
                pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                pynvml.NVML_VOLATILE_ECC,
            )
            values["ecc_dbe_volatile"] = read(
                "ecc_dbe_volatile",
                "nvmlDeviceGetTotalEccErrors",
                pynvml.nvmlDeviceGetTotalEccErrors,
                h,
                pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                pynvml.NVML_VOLATILE_ECC,
            )
            values["ecc_dbe_aggregate"] = read(
                "ecc_dbe_aggregate",
                "nvmlDeviceGetTotalEccErrors",
                pynvml.nvmlDeviceGetTotalEccErrors,
                h,
                pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                pynvml.NVML_AGGREGATE_ECC,
            )
            rows = read("remapped_rows", "nvmlDeviceGetRemappedRows", pynvml.nvmlDeviceGetRemappedRows, h)
            if rows is not None:
                corr, unc, pending, failure = rows
                values.update(
                    remapped_rows_correctable=int(corr),
                    remapped_rows_uncorrectable=int(unc),
                    remap_pending=bool(pending),
                    remap_failure=bool(failure),
                )
            values["pcie_replays"] = read(
                "pcie_replays", "nvmlDeviceGetPcieReplayCounter", pynvml.nvmlDeviceGetPcieReplayCounter, h
            )
            nvlink: dict[str, int] = {}
            for link in self._active_links[index]:
                for name, counter in NVLINK_COUNTERS.items():
                    count = read(
                        f"nvlink_{name}",
                        "nvmlDeviceGetNvLinkErrorCounter",
                        pynvml.nvmlDeviceGetNvLinkErrorCounter,
                        h,
                        link,
                        counter,
                    )
                    if count is not None:
                        nvlink[name] = nvlink.get(name, 0) + int(count)
            values["nvlink_errors"] = nvlink
            values["recovery_action"] = self._recovery_action(h, unsupported)
        except _Lost as lost:
            return lost.error
        return Ok(
            GPUSample(
                index=index, uuid=self._uuids[index], unsupported=tuple(sorted(set(unsupported))), **values
            )
        )

    def wait_event(self, timeout_ms: int) -> Result[GPUEvent | None]:
        if self._event_set is None:
            return NvmlError(NvmlErrorKind.UNINITIALIZED, "nvmlEventSetWait", "no event set registered")
        res = _call("nvmlEventSetWait", pynvml.nvmlEventSetWait, self._event_set, timeout_ms)
        if isinstance(res, NvmlError):
            return Ok(None) if res.kind is NvmlErrorKind.TIMEOUT else res
        data = res.value
        uuid = self._uuid_of(data.device)
        etype = int(data.eventType)
        if etype & EVENT_XID:
            return Ok(GPUEvent(EventKind.XID, uuid, int(data.eventData)))
        if etype & EVENT_DOUBLE_BIT_ECC:
            return Ok(GPUEvent(EventKind.ECC_DOUBLE_BIT, uuid))
        if etype & EVENT_GPU_UNAVAILABLE:
            return Ok(GPUEvent(EventKind.GPU_UNAVAILABLE, uuid))
        if etype & EVENT_GPU_RECOVERY_ACTION:
            return Ok(GPUEvent(EventKind.RECOVERY_ACTION, uuid, int(data.eventData)))
        if etype & EVENT_DRAM_RETIREMENT_FAILURE:
            return Ok(GPUEvent(EventKind.ROW_REMAP_FAILURE, uuid))
        return Ok(None)

    def set_locked_clocks(self, index: int, min_mhz: int, max_mhz: int) -> Result[None]:
        if not 0 <= index < len(self._handles):
            return NvmlError(
                NvmlErrorKind.INVALID_ARGUMENT, "nvmlDeviceSetGpuLockedClocks", f"no GPU {index}"
            )
        res = _call(
            "nvmlDeviceSetGpuLockedClocks",
            pynvml.nvmlDeviceSetGpuLockedClocks,
            self._handles[index],
            min_mhz,
            max_mhz,
        )
        return Ok(None) if isinstance(res, Ok) else res

    def reset_locked_clocks(self, index: int) -> Result[None]:
        if not 0 <= index < len(self._handles):
            return NvmlError(
                NvmlErrorKind.INVALID_ARGUMENT, "nvmlDeviceResetGpuLockedClocks", f"no GPU {index}"
            )
        res = _call(
            "nvmlDeviceResetGpuLockedClocks", pynvml.nvmlDeviceResetGpuLockedClocks, self._handles[index]
        )
        return Ok(None) if isinstance(res, Ok) else res

    # --- helpers -------------------------------------------------------------------------------

    def _uuid_of(self, handle: Any) -> str | None:
        """UUID of an event's device; a lost GPU cannot answer, so fall back to the cached handles."""
        res = _call("nvmlDeviceGetUUID", pynvml.nvmlDeviceGetUUID, handle)
        if isinstance(res, Ok):
            return _text(res.value)
        target = _address(handle)
        pairs = zip(self._handles, self._uuids, strict=True)
        return next((u for h, u in pairs if _address(h) == target), None)

    def _device(self, index: int, h: Any) -> Result[GPUDevice]:
        name = _call("nvmlDeviceGetName", pynvml.nvmlDeviceGetName, h)
        if isinstance(name, NvmlError) and name.gpu_lost:
            return name
        pci = _call("nvmlDeviceGetPciInfo", pynvml.nvmlDeviceGetPciInfo, h)
        mem = _call("nvmlDeviceGetMemoryInfo", pynvml.nvmlDeviceGetMemoryInfo, h)
        mem_clocks_res = _call(
            "nvmlDeviceGetSupportedMemoryClocks", pynvml.nvmlDeviceGetSupportedMemoryClocks, h
        )
        mem_clocks = sorted(int(c) for c in mem_clocks_res.value) if isinstance(mem_clocks_res, Ok) else []
        sm_clocks: list[int] = []
        if mem_clocks:
            sm_res = _call(
                "nvmlDeviceGetSupportedGraphicsClocks",
                pynvml.nvmlDeviceGetSupportedGraphicsClocks,
                h,
                mem_clocks[-1],
            )
            sm_clocks = sorted(int(c) for c in sm_res.value) if isinstance(sm_res, Ok) else []
        default = _call(
            "nvmlDeviceGetDefaultApplicationsClock",
            pynvml.nvmlDeviceGetDefaultApplicationsClock,
            h,
            pynvml.NVML_CLOCK_SM,
        )
        peers = []
        for j, other in enumerate(self._handles):
            if j == index:
                continue
            p2p = _call(
                "nvmlDeviceGetP2PStatus", pynvml.nvmlDeviceGetP2PStatus, h, other, P2P_CAPS_INDEX_NVLINK
            )
            if isinstance(p2p, Ok) and p2p.value == P2P_STATUS_OK:
                peers.append(self._uuids[j])
        return Ok(
            GPUDevice(
                index=index,
                uuid=self._uuids[index],
                pci_bus_id=_text(pci.value.busId) if isinstance(pci, Ok) else "",
                product=_text(name.value) if isinstance(name, Ok) else "unknown",
                memory_total_mib=int(mem.value.total) // (1024 * 1024) if isinstance(mem, Ok) else 0,
                supported_memory_clocks_mhz=tuple(mem_clocks),
                supported_sm_clocks_mhz=tuple(sm_clocks),
                default_sm_clock_mhz=int(default.value) if isinstance(default, Ok) else None,
                nvlink_peers=tuple(peers),
            )
        )

    def _links(self, h: Any) -> list[int]:
        links = []
        for link in range(NVLINK_MAX_LINKS):
            state = _call("nvmlDeviceGetNvLinkState", pynvml.nvmlDeviceGetNvLinkState, h, link)
            if isinstance(state, NvmlError):
                if state.kind in (NvmlErrorKind.NOT_SUPPORTED, NvmlErrorKind.INVALID_ARGUMENT):
                    break
                continue
            if state.value:
                links.append(link)
        return links

    def _recovery_action(self, h: Any, unsupported: list[str]) -> int | None:
        res = _call(
            "nvmlDeviceGetFieldValues", pynvml.nvmlDeviceGetFieldValues, h, [FIELD_GPU_RECOVERY_ACTION]
        )
        if isinstance(res, NvmlError):
            if res.gpu_lost:
                raise _Lost(res)
            unsupported.append("recovery_action")
            return None
        value = res.value[0]
        if int(value.nvmlReturn) != 0:
            unsupported.append("recovery_action")
            return None
        return int(value.value.uiVal)

    def _register_events(self) -> Result[None]:
        created = _call("nvmlEventSetCreate", pynvml.nvmlEventSetCreate)
        if isinstance(created, NvmlError):
            return created
        self._event_set = created.value
        for h in self._handles:
            supported = _call("nvmlDeviceGetSupportedEventTypes", pynvml.nvmlDeviceGetSupportedEventTypes, h)
            mask = WANTED_EVENTS & (supported.value if isinstance(supported, Ok) else EVENT_XID)
            # A GPU that refuses registration is still polled; its events are simply missed.
            _call("nvmlDeviceRegisterEvents", pynvml.nvmlDeviceRegisterEvents, h, mask, self._event_set)
        return Ok(None)


class _Lost(Exception):
    def __init__(self, error: NvmlError) -> None:
        super().__init__(error.message)
        self.error = error
