"""Simulated NVML: N GPUs with the shared power/clock model and a fault-injection API.

Used by the agent's tests, the dev cluster and the simulator's node agents. Power comes from
``flywheel.models.gpu`` so the simulator and the agent agree on watts at a clock.
"""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from flywheel.agents.nvml.backend import (
    THERMAL_THROTTLE,
    EventKind,
    GPUDevice,
    GPUEvent,
    GPUSample,
    NvmlBackend,
    NvmlError,
    NvmlErrorKind,
    Ok,
    Result,
    ThrottleReason,
)
from flywheel.models.gpu import H100_SXM, GPUSku, gpu_power_watts

MEMORY_CLOCK_MHZ = 2619  # H100 SXM HBM3
THROTTLED_CLOCK_FRACTION = 0.5
NVLINK_COUNTERS = ("replay", "recovery", "crc_flit", "crc_data")


@dataclass
class _GPUState:
    utilization: float = 0.0
    locked_mhz: int | None = None
    energy_mj: float = 0.0
    last_update: float = 0.0
    lost: bool = False
    thermal_throttle: bool = False
    thermal_signal_only: bool = False  # the throttle reason is reported, the clock is not cut (false alarm)
    ecc_sbe: int = 0
    ecc_dbe: int = 0
    remapped_correctable: int = 0
    remapped_uncorrectable: int = 0
    remap_pending: bool = False
    remap_failure: bool = False
    pcie_replays: int = 0
    recovery_action: int = 0
    nvlink_errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NVLINK_COUNTERS, 0))


class SimulatedNvml(NvmlBackend):
    """``gpus`` simulated GPUs of one SKU; GPUs in the same ``nvlink_domain_size`` block are NVLink peers."""

    def __init__(
        self,
        gpus: int = 8,
        sku: GPUSku = H100_SXM,
        node_name: str = "sim-node",
        nvlink_domain_size: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sku = sku
        self._clock = clock
        self._lock = threading.Condition()
        self._events: deque[GPUEvent] = deque()
        self._initialised = False
        self._set_clock_calls: list[tuple[int, int | None]] = []
        clocks = tuple(sku.supported_clocks())
        uuids = [f"GPU-{uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f'{node_name}/{i}')}" for i in range(gpus)]
        self._devices = [
            GPUDevice(
                index=i,
                uuid=uuids[i],
                pci_bus_id=f"00000000:{0x18 + 0x10 * i:02X}:00.0",
                product=f"NVIDIA {sku.name}",
                memory_total_mib=sku.memory_gib * 1024,
                supported_memory_clocks_mhz=(MEMORY_CLOCK_MHZ,),
                supported_sm_clocks_mhz=clocks,
                default_sm_clock_mhz=sku.sm_clock_max_mhz,
                nvlink_peers=tuple(
                    uuids[j]
                    for j in range(gpus)
                    if j != i and j // nvlink_domain_size == i // nvlink_domain_size
                ),
            )
            for i in range(gpus)
        ]
        now = clock()
        self._state = [_GPUState(last_update=now) for _ in range(gpus)]

    # --- NvmlBackend ---------------------------------------------------------------------------

    def init(self) -> Result[None]:
        self._initialised = True
        return Ok(None)

    def shutdown(self) -> None:
        with self._lock:
            self._initialised = False
            self._lock.notify_all()

    def driver_version(self) -> Result[str]:
        return Ok("simulated")

    def devices(self) -> Result[list[GPUDevice]]:
        if not self._initialised:
            return NvmlError(NvmlErrorKind.UNINITIALIZED, "nvmlDeviceGetCount")
        return Ok(list(self._devices))

    def sample(self, index: int) -> Result[GPUSample]:
        with self._lock:
            err = self._check(index, "nvmlDeviceGetHandleByIndex")
            if err is not None:
                return err
            st = self._state[index]
            self._integrate(index)
            reasons = ThrottleReason(0)
            if st.thermal_throttle or st.thermal_signal_only:
                reasons |= THERMAL_THROTTLE
            if st.locked_mhz is not None:
                reasons |= ThrottleReason.APPLICATIONS_CLOCKS_SETTING
            if st.utilization == 0.0:
                reasons |= ThrottleReason.GPU_IDLE
            return Ok(
                GPUSample(
                    index=index,
                    uuid=self._devices[index].uuid,
                    sm_clock_mhz=self._sm_clock(index),
                    memory_clock_mhz=MEMORY_CLOCK_MHZ,
                    power_watts=round(self._power(index), 1),
                    energy_millijoules=int(st.energy_mj),
                    gpu_utilization_pct=round(st.utilization * 100),
                    memory_utilization_pct=round(st.utilization * 60),
                    memory_used_mib=int(self._devices[index].memory_total_mib * 0.9 * (st.utilization > 0)),
                    temperature_celsius=92
                    if st.thermal_throttle or st.thermal_signal_only
                    else self._temperature(index),
                    clock_event_reasons=int(reasons),
                    ecc_sbe_volatile=st.ecc_sbe,
                    ecc_dbe_volatile=st.ecc_dbe,
                    ecc_dbe_aggregate=st.ecc_dbe,
                    remapped_rows_correctable=st.remapped_correctable,
                    remapped_rows_uncorrectable=st.remapped_uncorrectable,
                    remap_pending=st.remap_pending,
                    remap_failure=st.remap_failure,
                    pcie_replays=st.pcie_replays,
                    nvlink_errors=dict(st.nvlink_errors),
                    recovery_action=st.recovery_action,
                )
            )

    def wait_event(self, timeout_ms: int) -> Result[GPUEvent | None]:
        with self._lock:
            if not self._initialised:
                return NvmlError(NvmlErrorKind.UNINITIALIZED, "nvmlEventSetWait")
            if not self._events:
                self._lock.wait(timeout_ms / 1000.0)
            if self._events:
                return Ok(self._events.popleft())
            return Ok(None)

    def set_locked_clocks(self, index: int, min_mhz: int, max_mhz: int) -> Result[None]:
        with self._lock:
            err = self._check(index, "nvmlDeviceSetGpuLockedClocks")
            if err is not None:
                return err
            if min_mhz > max_mhz or max_mhz < self.sku.sm_clock_min_mhz:
                return NvmlError(NvmlErrorKind.INVALID_ARGUMENT, "nvmlDeviceSetGpuLockedClocks")
            self._integrate(index)
            self._state[index].locked_mhz = self.sku.clamp_clock(max_mhz)
            self._set_clock_calls.append((index, self._state[index].locked_mhz))
            return Ok(None)

    def reset_locked_clocks(self, index: int) -> Result[None]:
        with self._lock:
            err = self._check(index, "nvmlDeviceResetGpuLockedClocks")
            if err is not None:
                return err
            self._integrate(index)
            self._state[index].locked_mhz = None
            self._set_clock_calls.append((index, None))
            return Ok(None)

    # --- load and inspection -------------------------------------------------------------------

    def set_utilization(self, index: int, utilization: float) -> None:
        with self._lock:
            self._integrate(index)
            self._state[index].utilization = min(max(utilization, 0.0), 1.0)

    def locked_clock(self, index: int) -> int | None:
        return self._state[index].locked_mhz

    @property
    def clock_calls(self) -> list[tuple[int, int | None]]:
        """Every (index, locked MHz or None for reset) applied, in order."""
        return list(self._set_clock_calls)

    # --- fault injection -----------------------------------------------------------------------

    def inject_xid(self, index: int, xid: int) -> None:
        self._emit(GPUEvent(EventKind.XID, self._devices[index].uuid, xid))

    def inject_ecc_dbe(self, index: int) -> None:
        with self._lock:
            self._state[index].ecc_dbe += 1
            self._state[index].remapped_uncorrectable += 1
            self._state[index].remap_pending = True
        self._emit(GPUEvent(EventKind.ECC_DOUBLE_BIT, self._devices[index].uuid))
        self._emit(GPUEvent(EventKind.XID, self._devices[index].uuid, 48))

    def inject_remap_pending(self, index: int) -> None:
        with self._lock:
            self._state[index].remap_pending = True
            self._state[index].remapped_correctable += 1

    def inject_remap_failure(self, index: int) -> None:
        with self._lock:
            self._state[index].remap_failure = True
        self._emit(GPUEvent(EventKind.ROW_REMAP_FAILURE, self._devices[index].uuid))

    def inject_gpu_lost(self, index: int, emit_event: bool = True) -> None:
        """The GPU falls off the bus: every call answers GPU_IS_LOST (XID 79 on real hardware)."""
        with self._lock:
            self._state[index].lost = True
        if emit_event:
            self._emit(GPUEvent(EventKind.GPU_UNAVAILABLE, self._devices[index].uuid))

    def inject_thermal_throttle(self, index: int, on: bool = True, signal_only: bool = False) -> None:
        """The GPU throttles (half its clock); ``signal_only``: a false alarm, only the reason is set."""
        with self._lock:
            self._integrate(index)
            self._state[index].thermal_throttle = on and not signal_only
            self._state[index].thermal_signal_only = on and signal_only

    def inject_nvlink_errors(self, index: int, count: int = 1, counter: str = "replay") -> None:
        with self._lock:
            self._state[index].nvlink_errors[counter] = (
                self._state[index].nvlink_errors.get(counter, 0) + count
            )

    def inject_pcie_replays(self, index: int, count: int = 1) -> None:
        with self._lock:
            self._state[index].pcie_replays += count

    def inject_recovery_action(self, index: int, action: int) -> None:
        with self._lock:
            self._state[index].recovery_action = action
        self._emit(GPUEvent(EventKind.RECOVERY_ACTION, self._devices[index].uuid, action))

    def recover(self, index: int) -> None:
        """A GPU reset: errors gone, volatile counters zeroed, pending remaps applied."""
        with self._lock:
            st = self._state[index]
            self._state[index] = _GPUState(
                utilization=st.utilization,
                energy_mj=st.energy_mj,
                last_update=self._clock(),
                remapped_correctable=st.remapped_correctable,
                remapped_uncorrectable=st.remapped_uncorrectable,
            )

    # --- model ---------------------------------------------------------------------------------

    def _check(self, index: int, call: str) -> NvmlError | None:
        if not self._initialised:
            return NvmlError(NvmlErrorKind.UNINITIALIZED, call, code=1)
        if not 0 <= index < len(self._devices):
            return NvmlError(NvmlErrorKind.INVALID_ARGUMENT, call, f"no GPU {index}", code=2)
        if self._state[index].lost:
            return NvmlError(NvmlErrorKind.GPU_IS_LOST, call, "GPU is lost", code=15)
        return None

    def _emit(self, event: GPUEvent) -> None:
        with self._lock:
            self._events.append(event)
            self._lock.notify_all()

    def _sm_clock(self, index: int) -> int:
        st = self._state[index]
        base = st.locked_mhz if st.locked_mhz is not None else self.sku.sm_clock_max_mhz
        if st.utilization == 0.0 and st.locked_mhz is None:
            base = self.sku.sm_clock_min_mhz
        if st.thermal_throttle:
            base = min(base, int(self.sku.sm_clock_max_mhz * THROTTLED_CLOCK_FRACTION))
        return base

    def _power(self, index: int) -> float:
        return gpu_power_watts(self.sku, self._sm_clock(index), self._state[index].utilization)

    def _temperature(self, index: int) -> int:
        return round(30 + 45 * self._power(index) / self.sku.board_limit_watts)

    def _integrate(self, index: int) -> None:
        st = self._state[index]
        now = self._clock()
        st.energy_mj += self._power(index) * max(now - st.last_update, 0.0) * 1000.0
        st.last_update = now
