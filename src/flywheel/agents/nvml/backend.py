"""The NVML backend interface and its typed results.

Every call returns ``Ok(value)`` or an ``NvmlError``: a failing GPU is data the health checks act on,
never an exception that stops the agent.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from enum import IntFlag, StrEnum
from typing import Generic, TypeAlias, TypeVar

T = TypeVar("T")


class NvmlErrorKind(StrEnum):
    UNINITIALIZED = "Uninitialized"
    INVALID_ARGUMENT = "InvalidArgument"
    NOT_SUPPORTED = "NotSupported"
    NO_PERMISSION = "NoPermission"
    NOT_FOUND = "NotFound"
    DRIVER_NOT_LOADED = "DriverNotLoaded"
    TIMEOUT = "Timeout"
    LIBRARY_NOT_FOUND = "LibraryNotFound"
    FUNCTION_NOT_FOUND = "FunctionNotFound"
    GPU_IS_LOST = "GPUIsLost"
    RESET_REQUIRED = "ResetRequired"
    IN_USE = "InUse"
    NO_DATA = "NoData"
    UNKNOWN = "Unknown"


# NVML return codes (nvmlReturn_t) -> kind; codes not listed map to UNKNOWN.
NVML_RETURN_CODES: dict[int, NvmlErrorKind] = {
    1: NvmlErrorKind.UNINITIALIZED,
    2: NvmlErrorKind.INVALID_ARGUMENT,
    3: NvmlErrorKind.NOT_SUPPORTED,
    4: NvmlErrorKind.NO_PERMISSION,
    6: NvmlErrorKind.NOT_FOUND,
    9: NvmlErrorKind.DRIVER_NOT_LOADED,
    10: NvmlErrorKind.TIMEOUT,
    12: NvmlErrorKind.LIBRARY_NOT_FOUND,
    13: NvmlErrorKind.FUNCTION_NOT_FOUND,
    15: NvmlErrorKind.GPU_IS_LOST,
    16: NvmlErrorKind.RESET_REQUIRED,
    19: NvmlErrorKind.IN_USE,
    21: NvmlErrorKind.NO_DATA,
    24: NvmlErrorKind.NOT_SUPPORTED,  # FREQ_NOT_SUPPORTED
    28: NvmlErrorKind.GPU_IS_LOST,  # GPU_NOT_FOUND: the device vanished from the bus
}


@dataclass(frozen=True)
class NvmlError:
    kind: NvmlErrorKind
    call: str
    message: str = ""
    code: int | None = None

    @property
    def gpu_lost(self) -> bool:
        return self.kind in (NvmlErrorKind.GPU_IS_LOST, NvmlErrorKind.RESET_REQUIRED)


@dataclass(frozen=True)
class Ok(Generic[T]):
    value: T


Result: TypeAlias = Ok[T] | NvmlError


class ThrottleReason(IntFlag):
    """``nvmlClocksEventReason*`` bits."""

    GPU_IDLE = 0x1
    APPLICATIONS_CLOCKS_SETTING = 0x2
    SW_POWER_CAP = 0x4
    HW_SLOWDOWN = 0x8
    SYNC_BOOST = 0x10
    SW_THERMAL_SLOWDOWN = 0x20
    HW_THERMAL_SLOWDOWN = 0x40
    HW_POWER_BRAKE_SLOWDOWN = 0x80
    DISPLAY_CLOCK_SETTING = 0x100


THERMAL_THROTTLE = ThrottleReason.SW_THERMAL_SLOWDOWN | ThrottleReason.HW_THERMAL_SLOWDOWN
POWER_THROTTLE = ThrottleReason.HW_POWER_BRAKE_SLOWDOWN | ThrottleReason.HW_SLOWDOWN


@dataclass(frozen=True)
class GPUDevice:
    """Static facts about one GPU."""

    index: int
    uuid: str
    pci_bus_id: str
    product: str
    memory_total_mib: int
    supported_memory_clocks_mhz: tuple[int, ...] = ()
    supported_sm_clocks_mhz: tuple[int, ...] = ()  # at the highest memory clock, ascending
    default_sm_clock_mhz: int | None = None
    nvlink_peers: tuple[str, ...] = ()  # UUIDs of GPUs this one reaches over NVLink


@dataclass(frozen=True)
class GPUSample:
    """One poll of a GPU's telemetry and error counters; ``None`` where the GPU does not support it."""

    index: int
    uuid: str
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None
    power_watts: float | None = None
    energy_millijoules: int | None = None  # total since the driver loaded
    gpu_utilization_pct: int | None = None
    memory_utilization_pct: int | None = None
    memory_used_mib: int | None = None
    temperature_celsius: int | None = None
    clock_event_reasons: int | None = None  # ThrottleReason bits
    ecc_sbe_volatile: int | None = None
    ecc_dbe_volatile: int | None = None
    ecc_dbe_aggregate: int | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    pcie_replays: int | None = None
    nvlink_errors: dict[str, int] = field(default_factory=dict)  # counter name -> total over links
    recovery_action: int | None = None  # nvmlGpuRecoveryAction_t
    unsupported: tuple[str, ...] = ()  # fields the GPU or driver does not expose

    @property
    def nvlink_error_total(self) -> int:
        return sum(self.nvlink_errors.values())


class EventKind(StrEnum):
    XID = "XID"
    ECC_DOUBLE_BIT = "ECCDoubleBit"
    GPU_UNAVAILABLE = "GPUUnavailable"
    RECOVERY_ACTION = "RecoveryAction"
    ROW_REMAP_FAILURE = "RowRemapFailure"


@dataclass(frozen=True)
class GPUEvent:
    kind: EventKind
    uuid: str | None  # None when NVML could not say which GPU
    data: int = 0  # the XID for XID events, the recovery action for RECOVERY_ACTION


class NvmlBackend(abc.ABC):
    """What the agent needs from NVML. Implementations never raise for an NVML failure."""

    @abc.abstractmethod
    def init(self) -> Result[None]: ...

    @abc.abstractmethod
    def shutdown(self) -> None: ...

    @abc.abstractmethod
    def driver_version(self) -> Result[str]: ...

    @abc.abstractmethod
    def devices(self) -> Result[list[GPUDevice]]: ...

    @abc.abstractmethod
    def sample(self, index: int) -> Result[GPUSample]:
        """Poll one GPU; a lost GPU answers ``NvmlError(kind=GPU_IS_LOST)``."""

    @abc.abstractmethod
    def wait_event(self, timeout_ms: int) -> Result[GPUEvent | None]:
        """Block up to ``timeout_ms`` for the next critical event; ``Ok(None)`` on timeout."""

    @abc.abstractmethod
    def set_locked_clocks(self, index: int, min_mhz: int, max_mhz: int) -> Result[None]: ...

    @abc.abstractmethod
    def reset_locked_clocks(self, index: int) -> Result[None]: ...
