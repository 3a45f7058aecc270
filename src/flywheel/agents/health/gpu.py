"""GPU checks: NVML events (latched) and polled counters (level), with the XID policy from controllers."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from flywheel.agents.health.findings import Finding, Scope
from flywheel.agents.nvml.backend import (
    POWER_THROTTLE,
    THERMAL_THROTTLE,
    EventKind,
    GPUEvent,
    GPUSample,
    NvmlError,
    Result,
)
from flywheel.api.v1alpha1 import Action, SignalType
from flywheel.controllers.fault.xid import recovery_action, xid_rule

NODE_SUBJECT = "node"


@dataclass(frozen=True)
class GpuThresholds:
    temperature_celsius: int = 90
    pcie_replays_per_window: int = 100
    nvlink_errors_per_window: int = 10
    window_s: float = 60.0
    event_hold_s: float = 300.0  # non-fatal event findings stay visible this long


def _gpu_finding(uuid: str | None, kind: str, **kw: object) -> Finding:
    subject = uuid or NODE_SUBJECT
    scope = Scope.GPU if uuid else Scope.NODE
    return Finding(key=f"gpu/{subject}/{kind}", scope=scope, subject=subject, **kw)  # type: ignore[arg-type]


def event_finding(event: GPUEvent) -> Finding:
    """The finding an NVML event raises."""
    if event.kind is EventKind.XID:
        rule = xid_rule(event.data)
        return _gpu_finding(
            event.uuid,
            f"xid/{event.data}",
            signal=SignalType.XID,
            reason=f"XID{event.data}",
            message=f"XID {event.data} ({rule.name}): {rule.cause}",
            unhealthy=rule.gpu_unhealthy,
            action=rule.action,
            xid=event.data,
        )
    if event.kind is EventKind.ECC_DOUBLE_BIT:
        return _gpu_finding(
            event.uuid,
            "ecc-dbe",
            signal=SignalType.ECC_DOUBLE_BIT,
            reason="ECCDoubleBit",
            message="double-bit ECC error event",
            unhealthy=True,
            action=Action.RESET_GPU,
        )
    if event.kind is EventKind.GPU_UNAVAILABLE:
        return _gpu_finding(
            event.uuid,
            "lost",
            signal=SignalType.GPU_LOST,
            reason="GPULost",
            message="GPU unavailable event",
            unhealthy=True,
            action=xid_rule(79).action,
        )
    if event.kind is EventKind.ROW_REMAP_FAILURE:
        return _gpu_finding(
            event.uuid,
            "remap-failure",
            signal=SignalType.ROW_REMAP,
            reason="RowRemapFailure",
            message="row remapping failure event",
            unhealthy=True,
            action=xid_rule(64).action,
        )
    action = recovery_action(event.data)
    return _gpu_finding(
        event.uuid,
        "recovery-action",
        signal=SignalType.XID,
        reason=f"RecoveryAction{action.value}",
        message=f"driver requests recovery action {event.data} ({action.value})",
        unhealthy=action is not Action.NONE,
        action=action,
        xid=154,
    )


@dataclass
class _Latched:
    finding: Finding
    expires: float | None  # None: until cleared


class GpuCheck:
    """Keeps event findings (thread-safe, fed by the event thread) and derives counter findings."""

    def __init__(self, thresholds: GpuThresholds | None = None) -> None:
        self.t = thresholds or GpuThresholds()
        self._lock = threading.Lock()
        self._latched: dict[str, _Latched] = {}
        self._pcie: dict[str, deque[tuple[float, int]]] = {}
        self._nvlink: dict[str, deque[tuple[float, int]]] = {}

    def on_event(self, event: GPUEvent, now: float) -> Finding:
        finding = event_finding(event)
        expires = None if finding.unhealthy else now + self.t.event_hold_s
        with self._lock:
            self._latched[finding.key] = _Latched(finding, expires)
        return finding

    def clear(self, uuid: str) -> None:
        """Forget latched findings of a GPU (after it was reset and passed diagnostics)."""
        with self._lock:
            self._latched = {k: v for k, v in self._latched.items() if v.finding.subject != uuid}

    def latched(self, now: float) -> list[Finding]:
        with self._lock:
            self._latched = {k: v for k, v in self._latched.items() if v.expires is None or v.expires > now}
            return [v.finding for v in self._latched.values()]

    def _window_increase(
        self, store: dict[str, deque[tuple[float, int]]], uuid: str, now: float, value: int | None
    ) -> int:
        if value is None:
            return 0
        hist = store.setdefault(uuid, deque())
        hist.append((now, value))
        while len(hist) > 1 and now - hist[0][0] > self.t.window_s:
            hist.popleft()
        return value - hist[0][1]

    def check(self, uuid: str, result: Result[GPUSample], now: float) -> list[Finding]:
        if isinstance(result, NvmlError):
            if result.gpu_lost:
                return [
                    _gpu_finding(
                        uuid,
                        "lost",
                        signal=SignalType.GPU_LOST,
                        reason="GPULost",
                        message=f"{result.call}: {result.kind.value}",
                        unhealthy=True,
                        action=xid_rule(79).action,
                    )
                ]
            return []
        s = result.value
        out: list[Finding] = []
        if s.ecc_dbe_volatile:
            out.append(
                _gpu_finding(
                    uuid,
                    "ecc-dbe",
                    signal=SignalType.ECC_DOUBLE_BIT,
                    reason="ECCDoubleBit",
                    message=f"{s.ecc_dbe_volatile} volatile double-bit ECC errors",
                    unhealthy=True,
                    action=Action.RESET_GPU,
                )
            )
        if s.remap_failure:
            out.append(
                _gpu_finding(
                    uuid,
                    "remap-failure",
                    signal=SignalType.ROW_REMAP,
                    reason="RowRemapFailure",
                    message="row remapping failed: the GPU has run out of spare rows",
                    unhealthy=True,
                    action=xid_rule(64).action,
                )
            )
        elif s.remap_pending:
            out.append(
                _gpu_finding(
                    uuid,
                    "remap-pending",
                    signal=SignalType.ROW_REMAP,
                    reason="RowRemapPending",
                    message="row remap pending: drain and reset the GPU to apply it",
                    unhealthy=False,
                    action=Action.RESET_GPU,
                )
            )
        reasons = s.clock_event_reasons or 0
        hot = s.temperature_celsius is not None and s.temperature_celsius >= self.t.temperature_celsius
        if reasons & THERMAL_THROTTLE or hot:
            out.append(
                _gpu_finding(
                    uuid,
                    "thermal",
                    signal=SignalType.THERMAL,
                    reason="ThermalThrottle",
                    message=f"thermal slowdown at {s.temperature_celsius} C (clock reasons {reasons:#x})",
                    unhealthy=False,
                    action=Action.RUN_DIAGNOSTICS,
                )
            )
        if reasons & POWER_THROTTLE:
            out.append(
                _gpu_finding(
                    uuid,
                    "power-brake",
                    signal=SignalType.POWER_THROTTLE,
                    reason="PowerBrake",
                    message=f"hardware slowdown / power brake (clock reasons {reasons:#x})",
                    unhealthy=False,
                    action=Action.RUN_DIAGNOSTICS,
                )
            )
        replays = self._window_increase(self._pcie, uuid, now, s.pcie_replays)
        if replays >= self.t.pcie_replays_per_window:
            out.append(
                _gpu_finding(
                    uuid,
                    "pcie-replays",
                    signal=SignalType.PCIE,
                    reason="PCIeReplays",
                    message=f"{replays} PCIe replays in {self.t.window_s:.0f}s",
                    unhealthy=False,
                    action=Action.RUN_DIAGNOSTICS,
                )
            )
        nvlink_total = s.nvlink_error_total if s.nvlink_errors else None
        nvlink = self._window_increase(self._nvlink, uuid, now, nvlink_total)
        if nvlink >= self.t.nvlink_errors_per_window:
            out.append(
                _gpu_finding(
                    uuid,
                    "nvlink-errors",
                    signal=SignalType.NVLINK,
                    reason="NVLinkErrors",
                    message=f"{nvlink} NVLink errors in {self.t.window_s:.0f}s ({s.nvlink_errors})",
                    unhealthy=False,
                    action=Action.RUN_DIAGNOSTICS,
                )
            )
        if s.recovery_action:
            action = recovery_action(s.recovery_action)
            out.append(
                _gpu_finding(
                    uuid,
                    "recovery-action",
                    signal=SignalType.XID,
                    reason=f"RecoveryAction{action.value}",
                    message=f"driver requests recovery action {s.recovery_action} ({action.value})",
                    unhealthy=action is not Action.NONE,
                    action=action,
                    xid=154,
                )
            )
        return out
