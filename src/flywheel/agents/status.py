"""Build the ``GPUNode`` status from devices, samples and findings; report it only on change.

The Kubernetes I/O sits behind ``StatusSink`` so the health loop and the reporter's rate limiting
are tested without a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from flywheel.agents.health.findings import Finding, Scope
from flywheel.agents.nvml.backend import GPUDevice, GPUSample
from flywheel.api.v1alpha1 import (
    Condition,
    DiagnosticsResult,
    GPUInfo,
    GPUNodeStatus,
    reasons,
    set_condition,
)
from flywheel.api.v1alpha1 import conditions as api_conditions

GPUS_HEALTHY = "GPUsHealthy"
NETWORK_HEALTHY = "NetworkHealthy"
ENGINES_HEALTHY = "EnginesHealthy"
NODE_CONDITION_SCOPES = {
    GPUS_HEALTHY: (Scope.GPU, Scope.NODE),
    NETWORK_HEALTHY: (Scope.NETWORK,),
    ENGINES_HEALTHY: (Scope.ENGINE,),
}
MAX_MESSAGE = 2000


def _summary(findings: list[Finding]) -> str:
    text = "; ".join(f"{f.subject}: {f.message}" for f in sorted(findings, key=lambda f: f.key))
    return text[:MAX_MESSAGE]


def _condition_for(
    previous: list[Condition], type_: str, findings: list[Finding], at: datetime
) -> list[Condition]:
    bad = [f for f in findings if f.unhealthy]
    warn = [f for f in findings if not f.unhealthy]
    if bad:
        worst = sorted(bad, key=lambda f: f.key)[0]
        return set_condition(previous, type_, "False", worst.reason, _summary(bad), at=at)
    if warn:
        first = sorted(warn, key=lambda f: f.key)[0]
        return set_condition(previous, type_, "True", first.reason, "warnings: " + _summary(warn), at=at)
    return set_condition(previous, type_, "True", reasons.AS_EXPECTED, "", at=at)


def nvlink_domains(devices: list[GPUDevice]) -> dict[str, str]:
    """GPU UUID -> NVLink domain name (connected components of the peer graph; lone GPUs get none)."""
    by_uuid = {d.uuid: d for d in devices}
    domains: dict[str, str] = {}
    for dev in sorted(devices, key=lambda d: d.index):
        if dev.uuid in domains or not dev.nvlink_peers:
            continue
        name = f"nvlink-{dev.index}"
        stack = [dev.uuid]
        while stack:
            uuid = stack.pop()
            if uuid in domains or uuid not in by_uuid:
                continue
            domains[uuid] = name
            stack.extend(by_uuid[uuid].nvlink_peers)
    return domains


def build_status(
    previous: GPUNodeStatus | None,
    devices: list[GPUDevice],
    samples: dict[str, GPUSample],
    findings: list[Finding],
    agent_version: str,
    nvml_ready: bool = True,
    nvml_message: str = "",
    at: datetime | None = None,
    quarantined_gpus: int = 0,
    diagnostics: DiagnosticsResult | None = None,
) -> GPUNodeStatus:
    """The node's status now; condition transition times carry over from ``previous``."""
    at = at or datetime.now(UTC).replace(microsecond=0)
    prev = previous or GPUNodeStatus()
    prev_gpus = {g.uuid: g for g in prev.gpus}
    gpus: list[GPUInfo] = []
    domains = nvlink_domains(devices)
    for dev in devices:
        mine = [f for f in findings if f.subject == dev.uuid]
        old = prev_gpus.get(dev.uuid)
        conds = _condition_for(old.conditions if old else [], reasons.HEALTHY, mine, at)
        sample = samples.get(dev.uuid)
        clocks = list(dev.supported_sm_clocks_mhz)
        gpus.append(
            GPUInfo(
                uuid=dev.uuid,
                index=dev.index,
                product=dev.product,
                memory_mib=dev.memory_total_mib,
                pci_bus_id=dev.pci_bus_id or None,
                sm_clock_min_mhz=clocks[0] if clocks else None,
                sm_clock_max_mhz=clocks[-1] if clocks else None,
                supported_sm_clocks_mhz=clocks,
                nvlink_peers=list(dev.nvlink_peers),
                nvlink_domain=domains.get(dev.uuid),
                healthy=not any(f.unhealthy for f in mine),
                conditions=conds,
                sm_clock_mhz=sample.sm_clock_mhz if sample else None,
                power_watts=round(sample.power_watts) if sample and sample.power_watts is not None else None,
                temperature_celsius=sample.temperature_celsius if sample else None,
            )
        )
    conditions = list(prev.conditions)
    conditions = set_condition(
        conditions,
        reasons.READY,
        "True" if nvml_ready else "False",
        reasons.AS_EXPECTED if nvml_ready else "NVMLUnavailable",
        nvml_message or f"agent reporting {len(devices)} GPUs",
        at=at,
    )
    for type_, scopes in NODE_CONDITION_SCOPES.items():
        conditions = _condition_for(conditions, type_, [f for f in findings if f.scope in scopes], at)
    return GPUNodeStatus(
        conditions=conditions,
        gpus=gpus,
        gpu_count=len(gpus),
        healthy_gpus=sum(g.healthy for g in gpus),
        quarantined_gpus=quarantined_gpus,
        power_watts=round(sum(s.power_watts or 0.0 for s in samples.values())),
        heartbeat_time=at,
        agent_version=agent_version,
        diagnostics=diagnostics,
    )


def significant(status: GPUNodeStatus) -> tuple[Any, ...]:
    """What counts as a change: conditions and health, not telemetry or the heartbeat."""

    def conds(cs: list[Condition]) -> tuple[tuple[str, str, str], ...]:
        # Messages carry live numbers (temperatures, counts); they refresh with the heartbeat.
        return tuple(sorted((c.type, c.status, c.reason) for c in cs))

    return (
        conds(status.conditions),
        tuple((g.uuid, g.healthy, conds(g.conditions), tuple(g.nvlink_peers)) for g in status.gpus),
        status.gpu_count,
        status.healthy_gpus,
        status.quarantined_gpus,
        (status.diagnostics.id, status.diagnostics.passed) if status.diagnostics else None,
    )


class StatusSink(Protocol):
    """Thin Kubernetes I/O: patch ``GPUNode`` status and post Events. Returns False on failure."""

    def patch_status(self, node: str, status: dict[str, Any]) -> bool: ...

    def emit_event(self, node: str, type_: str, reason: str, message: str) -> bool: ...


@dataclass
class ReporterStats:
    patches: int = 0
    suppressed_unchanged: int = 0
    deferred_rate_limited: int = 0
    failures: int = 0
    events: int = 0
    last_success: float | None = None
    sent: list[GPUNodeStatus] = field(default_factory=list)


class StatusReporter:
    """Patches status only when it changed (or a heartbeat is due), at most once per ``min_interval_s``."""

    def __init__(
        self,
        sink: StatusSink,
        node: str,
        min_interval_s: float = 1.0,
        heartbeat_interval_s: float = 30.0,
        max_events_per_round: int = 20,
        clock: Callable[[], float] = time.monotonic,
        keep_sent: int = 0,
    ) -> None:
        self.sink = sink
        self.node = node
        self.min_interval_s = min_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_events_per_round = max_events_per_round
        self.clock = clock
        self.keep_sent = keep_sent
        self.stats = ReporterStats()
        self._last_key: tuple[Any, ...] | None = None
        self._last_sent: float | None = None
        self._known: dict[str, Finding] = {}

    def offer(self, status: GPUNodeStatus) -> bool:
        """Patch if needed; a change inside the rate limit waits for a later ``offer``."""
        now = self.clock()
        key = significant(status)
        changed = key != self._last_key
        heartbeat_due = self._last_sent is None or now - self._last_sent >= self.heartbeat_interval_s
        if not changed and not heartbeat_due:
            self.stats.suppressed_unchanged += 1
            return False
        if self._last_sent is not None and now - self._last_sent < self.min_interval_s:
            self.stats.deferred_rate_limited += 1
            return False
        if not self.sink.patch_status(self.node, status.wire()):
            self.stats.failures += 1
            return False
        self._last_key = key
        self._last_sent = now
        self.stats.patches += 1
        self.stats.last_success = now
        if self.keep_sent:
            self.stats.sent = [*self.stats.sent, status][-self.keep_sent :]
        return True

    def findings(self, findings: list[Finding]) -> None:
        """Post an Event for each finding that appeared (Warning) or cleared (Normal)."""
        current = {f.key: f for f in findings}
        appeared = [f for k, f in current.items() if k not in self._known]
        cleared = [f for k, f in self._known.items() if k not in current]
        budget = self.max_events_per_round
        posted = set()
        for f in sorted(appeared, key=lambda f: (not f.unhealthy, f.key))[:budget]:
            text = f"{f.subject}: {f.message} (action: {f.action.value})"
            if self.sink.emit_event(self.node, "Warning", f.reason, text[:1024]):
                self.stats.events += 1
                posted.add(f.key)
        budget -= len(posted)
        for f in sorted(cleared, key=lambda f: f.key)[: max(budget, 0)]:
            if self.sink.emit_event(self.node, "Normal", f"{f.reason}Cleared", f"{f.subject}: cleared"):
                self.stats.events += 1
                posted.add(f.key)
        # Unposted changes are retried next round: keep the old view for them.
        known = {k: f for k, f in self._known.items() if k in current or k not in posted}
        known.update({k: f for k, f in current.items() if k in posted or k in self._known})
        self._known = known


def condition_status(status: GPUNodeStatus, type_: str) -> str | None:
    return api_conditions.condition_status(status.conditions, type_)
