"""Prometheus metrics of fault handling, on the operator's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from flywheel.api.v1alpha1 import Incident
from flywheel.controllers.fault import FaultSignal

_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class FaultMetrics:
    """MTTD/MTTR histograms and incident counters, on the operator's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.mttd = Histogram(
            "flywheel_fault_mttd_seconds",
            "Fault detection time: agent observation (or injection) to the operator's decision.",
            ["signal"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.isolation = Histogram(
            "flywheel_fault_isolation_seconds",
            "Decision to isolation applied (quarantine written, instances evicted).",
            ["signal"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.mttr = Histogram(
            "flywheel_fault_mttr_seconds",
            "Fault to restored serving capacity.",
            ["signal"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.incidents = Counter(
            "flywheel_fault_incidents", "Incidents recorded.", ["signal"], registry=registry
        )
        self.breaker_open = Gauge(
            "flywheel_fault_circuit_breaker_open",
            "1 while the quarantine circuit breaker is open or half-open (alert on it).",
            registry=registry,
        )
        self.breaker_state = Gauge(
            "flywheel_fault_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            registry=registry,
        )
        self.held = Gauge(
            "flywheel_fault_held_faults",
            "Confirmed faults the circuit breaker keeps un-isolated now (traffic stopped; alert on it).",
            registry=registry,
        )
        self.refused = Counter(
            "flywheel_fault_breaker_refusals",
            "Isolations the circuit breaker refused.",
            ["signal"],
            registry=registry,
        )
        self.verifying = Gauge(
            "flywheel_fault_verifying",
            "Transient-capable signals being verified (traffic stopped, not yet quarantined).",
            registry=registry,
        )


def observe_incident(metrics: FaultMetrics, signal: FaultSignal, incident: Incident) -> None:
    label = signal.type.value
    metrics.incidents.labels(label).inc()
    start = signal.injected_at if signal.injected_at is not None else signal.observed_at
    if start is not None:
        metrics.mttd.labels(label).observe(max(0.0, signal.at - start))
    observe_recovery(metrics, signal, incident)


def observe_recovery(metrics: FaultMetrics, signal: FaultSignal, incident: Incident) -> None:
    status = incident.status
    if status is None or status.recovered_at is None:
        return
    start = signal.injected_at if signal.injected_at is not None else signal.observed_at
    origin = start if start is not None else signal.at
    metrics.mttr.labels(signal.type.value).observe(max(0.0, status.recovered_at.timestamp() - origin))
