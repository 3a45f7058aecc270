"""GPU clock actuation: lock the SM clock the instance controller chose, within supported clocks.

Clocks return to the driver defaults on shutdown (SIGTERM) and when the operator has not been heard
from for ``contact_timeout_s``; in dry-run mode the actuator records what it would do and touches
nothing.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flywheel.agents.nvml.backend import GPUDevice, NvmlBackend, NvmlError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClockChange:
    index: int
    requested_mhz: int | None  # None: reset to defaults
    applied_mhz: int | None
    dry_run: bool
    error: NvmlError | None = None


def nearest_supported(supported: tuple[int, ...], target_mhz: int) -> int:
    """The lowest supported clock ≥ target (so a latency-safe choice stays safe), clamped to the range."""
    if not supported:
        return target_mhz
    i = bisect.bisect_left(supported, target_mhz)
    return supported[min(i, len(supported) - 1)]


class ClockActuator:
    def __init__(
        self,
        backend: NvmlBackend,
        devices: list[GPUDevice],
        dry_run: bool = False,
        contact_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.devices = {d.index: d for d in devices}
        self.by_uuid = {d.uuid: d.index for d in devices}
        self.dry_run = dry_run
        self.contact_timeout_s = contact_timeout_s
        self.clock = clock
        self.locked: dict[int, int] = {}  # index -> MHz we locked it to
        self.history: list[ClockChange] = []
        self._last_contact = clock()
        self._lost_contact = False
        self._lock = threading.Lock()

    def apply(self, index: int, target_mhz: int) -> ClockChange:
        """Lock GPU ``index`` at the supported clock nearest ``target_mhz`` (from any caller)."""
        with self._lock:
            dev = self.devices.get(index)
            if dev is None:
                return self._record(ClockChange(index, target_mhz, None, self.dry_run, None))
            mhz = nearest_supported(tuple(sorted(dev.supported_sm_clocks_mhz)), target_mhz)
            if self._lost_contact:
                log.info("GPU %d: clock %d MHz ignored, no operator contact", index, mhz)
                return ClockChange(index, target_mhz, None, self.dry_run)
            if self.locked.get(index) == mhz:
                return ClockChange(index, target_mhz, mhz, self.dry_run)
            error = None
            if not self.dry_run:
                res = self.backend.set_locked_clocks(index, mhz, mhz)
                error = res if isinstance(res, NvmlError) else None
            if error is None:
                self.locked[index] = mhz
            return self._record(ClockChange(index, target_mhz, None if error else mhz, self.dry_run, error))

    def apply_by_uuid(self, uuid: str, target_mhz: int) -> ClockChange | None:
        index = self.by_uuid.get(uuid)
        return None if index is None else self.apply(index, target_mhz)

    def reset_all(self, reason: str = "shutdown") -> list[ClockChange]:
        """Return every GPU we locked to the driver's default clocks."""
        with self._lock:
            changes = []
            for index in sorted(self.locked):
                error = None
                if not self.dry_run:
                    res = self.backend.reset_locked_clocks(index)
                    error = res if isinstance(res, NvmlError) else None
                changes.append(self._record(ClockChange(index, None, None, self.dry_run, error)))
            log.info("clocks reset to defaults on %d GPUs (%s)", len(changes), reason)
            self.locked.clear()
            return changes

    def reset_on_start(self) -> list[ClockChange]:
        """Reset every GPU once at start: a previous agent killed with SIGKILL may have left locks."""
        with self._lock:
            changes = []
            for index in sorted(self.devices):
                error = None
                if not self.dry_run:
                    res = self.backend.reset_locked_clocks(index)
                    error = res if isinstance(res, NvmlError) else None
                changes.append(self._record(ClockChange(index, None, None, self.dry_run, error)))
            self.locked.clear()
            return changes

    def operator_contact(self) -> None:
        """The operator (or the API server on its behalf) was heard from."""
        with self._lock:
            self._last_contact = self.clock()
            self._lost_contact = False

    def check_contact(self) -> bool:
        """Reset clocks once when contact is lost; returns True while in contact."""
        if self.clock() - self._last_contact < self.contact_timeout_s:
            return True
        if not self._lost_contact:
            self.reset_all(reason="lost contact with the operator")
            with self._lock:
                self._lost_contact = True
        return False

    def _record(self, change: ClockChange) -> ClockChange:
        self.history.append(change)
        del self.history[:-1000]
        return change
