"""Prometheus metrics of one operator process (own registry, so two operators can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reconciles = Counter(
            "flywheel_operator_reconciles", "Reconcile rounds run.", ["kind"], registry=self.registry
        )
        self.errors = Counter(
            "flywheel_operator_reconcile_errors",
            "Reconcile rounds that failed.",
            ["kind"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "flywheel_operator_decisions",
            "Decisions applied (create/update/delete of children, controller decisions, quarantine).",
            ["kind", "action"],
            registry=self.registry,
        )
        self.conflicts = Counter(
            "flywheel_operator_conflicts", "Writes retried after a 409 Conflict.", registry=self.registry
        )
        self.fleet_power = Gauge(
            "flywheel_fleet_power_watts",
            "Power of all ModelInstances, from their status.",
            registry=self.registry,
        )
        self.fleet_energy = Gauge(
            "flywheel_fleet_energy_joules", "Energy of all ModelInstances so far.", registry=self.registry
        )
        self.instances = Gauge(
            "flywheel_fleet_instances", "ModelInstances by readiness.", ["ready"], registry=self.registry
        )
        self._power: dict[str, tuple[float, float]] = {}

    def record_fleet(self, deployment: str, power_watts: float, energy_joules: float) -> None:
        self._power[deployment] = (power_watts, energy_joules)
        self._refresh()

    def forget(self, deployment: str) -> None:
        self._power.pop(deployment, None)
        self._refresh()

    def _refresh(self) -> None:
        self.fleet_power.set(sum(p for p, _ in self._power.values()))
        self.fleet_energy.set(sum(e for _, e in self._power.values()))

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
