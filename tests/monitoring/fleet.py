"""Every Flywheel metrics endpoint, in process, with live series and injected faults: two node agents
(``node-b``'s heartbeat stops), the operator (breaker open, an incident), a router and a simulated
engine. ``tick()`` moves the counters as a running fleet would (one virtual second per tick)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest, start_http_server

from flywheel.agents.exporter import Exporter
from flywheel.agents.health.findings import Finding, Scope
from flywheel.agents.nvml.simulated import SimulatedNvml
from flywheel.api.v1alpha1 import SignalType
from flywheel.engines.router import Router
from flywheel.engines.simulated.engine import SimulatedEngine
from flywheel.engines.simulated.server import SimulatedEngineServer
from flywheel.engines.simulated.timing import PerfModelTiming
from flywheel.operator.faults import FaultMetrics
from flywheel.operator.metrics import OperatorMetrics


@dataclass
class VirtualTime:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


class Agent:
    def __init__(self, hostname: str, time: VirtualTime) -> None:
        self.registry = CollectorRegistry()
        self.sim = SimulatedNvml(gpus=2, node_name=hostname, clock=time)
        self.sim.init()
        self.exporter = Exporter(self.registry, hostname)
        self.devices = self.sim.devices().value  # type: ignore[union-attr]
        self.exporter.register(self.devices)
        self.sim.set_utilization(0, 0.8)
        self.sim.set_utilization(1, 0.8)

    def round(self, findings: list[Finding], locked: dict[str, int]) -> None:
        for index in range(len(self.devices)):
            self.exporter.observe(self.sim.sample(index).value)  # type: ignore[arg-type]
        self.exporter.health(findings, locked)
        self.exporter.loop_seconds.labels(self.exporter.hostname).observe(0.01)


@dataclass
class Fleet:
    time: VirtualTime = field(default_factory=VirtualTime)

    def __post_init__(self) -> None:
        self.agents = [Agent("node-a", self.time), Agent("node-b", self.time)]
        a = self.agents[0]
        gpu0 = a.devices[0].uuid
        # node-a: GPU 0 failed (XID 79, double-bit ECC) and its locked clock is not applied.
        self.findings = [Finding("xid", Scope.GPU, gpu0, SignalType.XID, "XID79", "", True)]
        self.locked = {gpu0: 1200}
        for agent in self.agents:
            agent.round(self.findings if agent is a else [], self.locked if agent is a else {})
        self.operator = OperatorMetrics()
        self.faults = FaultMetrics(self.operator.registry)
        self.faults.breaker_open.set(1)
        self.operator.record_fleet("team-a/llama", 5000.0, 1.2e6)
        self.operator.instances.labels("true").set(2)
        self.operator.reconciles.labels("ModelDeployment").inc()
        self.operator.decisions.labels("ModelInstance", "create").inc()
        self.faults.mttd.labels("XID").observe(3.0)
        self.faults.isolation.labels("XID").observe(1.0)
        self.faults.mttr.labels("XID").observe(30.0)
        self.faults.incidents.labels("XID").inc()
        self.router_registry = CollectorRegistry()
        self.router = Router("llama", self.router_registry)
        timing = PerfModelTiming.named("llama3-70b", "H100-80GB-SXM", 8)
        self.engine = SimulatedEngineServer(SimulatedEngine(timing, lambda: 1980.0), "llama")
        self.tick()

    def tick(self) -> None:
        """One virtual second: node-a's agent runs a round, node-b's is stuck; traffic misses its SLO."""
        self.time.now += 1.0
        a = self.agents[0]
        a.sim.inject_ecc_dbe(0)
        a.exporter.xid(a.devices[0].uuid, 79)
        a.round(self.findings, self.locked)
        m = self.router.metrics
        m.arrivals.labels("short").inc(10)
        m.requests.labels("short", "llama-short", "ok").inc(10)
        m.input_tokens.labels("short").inc(1000)
        m.output_tokens.labels("short").inc(200)
        m.in_flight.labels("llama-short").set(3)
        m.first_byte.labels("short").observe(0.4)
        m.ttft.labels("short").observe(0.4)
        m.waiting.labels("llama-short").set(1)
        m.demoted.labels("llama-short").inc()
        m.retries.labels("status").inc()
        m.slo_checked.labels("short", "ttft").inc(10)
        m.slo_met.labels("short", "ttft").inc(5)
        self.faults.incidents.labels("XID").inc()
        self.faults.mttd.labels("XID").observe(2.0)

    def endpoints(self) -> dict[str, CollectorRegistry]:
        return {
            "agent-node-a": self.agents[0].registry,
            "agent-node-b": self.agents[1].registry,
            "operator": self.operator.registry,
            "router": self.router_registry,
            "engine": self.engine.registry,
        }

    def exposition(self, endpoint: str) -> str:
        return generate_latest(self.endpoints()[endpoint]).decode()

    @contextmanager
    def serving(self) -> Iterator[dict[str, int]]:
        """Each endpoint on a 127.0.0.1 ephemeral port: {endpoint: port}."""
        servers = {
            name: start_http_server(0, "127.0.0.1", registry) for name, registry in self.endpoints().items()
        }
        try:
            yield {name: server.server_port for name, (server, _) in servers.items()}
        finally:
            for server, thread in servers.values():
                server.shutdown()
                server.server_close()
                thread.join(timeout=10)
