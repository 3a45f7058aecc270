"""``promtool check metrics`` (the real one) finds nothing on any Flywheel metrics endpoint: node
agent, operator (with its fault metrics), router and simulated engine, each with live series."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from tooling import run, tool

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

# vLLM's own metric names contain ':' (``vllm:num_requests_running``); the simulated engine keeps
# them so adapters parse it like the real engine. That one lint finding is expected there only.
VLLM_COLON = "metric names should not contain ':'"


def promtool_findings(exposition: str) -> list[str]:
    result = run([tool("promtool"), "check", "metrics"], stdin=exposition)
    findings = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if result.returncode != 0 and not findings:
        findings = [f"promtool exited {result.returncode}"]
    return findings


def agent_exposition() -> str:
    sim = SimulatedNvml(gpus=2, node_name="node-a")
    sim.init()
    registry = CollectorRegistry()
    exporter = Exporter(registry, "node-a")
    devices = sim.devices().value  # type: ignore[union-attr]
    exporter.register(devices)
    sim.inject_pcie_replays(0, 3)
    for index in range(2):
        exporter.observe(sim.sample(index).value)  # type: ignore[arg-type]
    exporter.xid(devices[0].uuid, 79)
    exporter.health([Finding("k", Scope.GPU, devices[0].uuid, SignalType.XID, "XID79", "", True)], {})
    exporter.loop_seconds.labels("node-a").observe(0.01)
    return generate_latest(registry).decode()


def operator_exposition() -> str:
    metrics = OperatorMetrics()
    faults = FaultMetrics(metrics.registry)
    metrics.record_fleet("ns/llama", 5000.0, 1.2e6)
    metrics.reconciles.labels("ModelDeployment").inc()
    metrics.errors.labels("ModelDeployment").inc()
    metrics.decisions.labels("ModelInstance", "create").inc()
    metrics.instances.labels("true").set(2)
    faults.mttd.labels("XID").observe(3.0)
    faults.isolation.labels("XID").observe(1.0)
    faults.mttr.labels("XID").observe(30.0)
    faults.incidents.labels("XID").inc()
    return metrics.render().decode()


def router_exposition() -> str:
    registry = CollectorRegistry()
    router = Router("llama", registry)
    router.m_requests.labels("short", "llama-short", "ok").inc()
    router.m_input_tokens.labels("short").inc(100)
    router.m_output_tokens.labels("short").inc(20)
    router.m_retries.inc()
    router.m_in_flight.labels("llama-short").set(1)
    router.m_latency.labels("short").observe(0.2)
    router.m_waiting.labels("llama-short").set(0)
    router.m_demoted.labels("llama-short").inc()
    return generate_latest(registry).decode()


def engine_exposition() -> str:
    timing = PerfModelTiming.named("llama3-70b", "H100-80GB-SXM", 8)
    server = SimulatedEngineServer(SimulatedEngine(timing, lambda: 1980.0), "llama")
    return generate_latest(server.registry).decode()


@pytest.mark.parametrize(
    ("endpoint", "allowed"),
    [
        (agent_exposition, ()),
        (operator_exposition, ()),
        (router_exposition, ()),
        (engine_exposition, (VLLM_COLON,)),
    ],
    ids=["agent", "operator", "router", "engine"],
)
def test_promtool_check_metrics_is_clean(endpoint: object, allowed: tuple[str, ...]) -> None:
    exposition = endpoint()  # type: ignore[operator]
    assert "# TYPE" in exposition and "\n" in exposition
    findings = [f for f in promtool_findings(exposition) if not any(a in f for a in allowed)]
    assert findings == []


def test_engine_colon_allowance_covers_only_vllm_names() -> None:
    flagged = promtool_findings(engine_exposition())
    assert flagged and all(f.startswith("vllm:") and VLLM_COLON in f for f in flagged)


def test_agent_driver_counters_are_counters_in_base_units() -> None:
    text = agent_exposition()
    for name in (
        "flywheel_gpu_energy_consumption_joules_total",
        "flywheel_gpu_ecc_sbe_volatile_total",
        "flywheel_gpu_ecc_dbe_aggregate_total",
        "flywheel_gpu_pcie_replays_total",
        "flywheel_gpu_nvlink_errors_total",
    ):
        assert f"# TYPE {name} counter" in text, name
    assert "millijoules" not in text


def test_promtool_check_can_fail() -> None:
    registry = CollectorRegistry()
    Gauge("bad_energy_millijoules_total", "A gauge named like a counter.", registry=registry)
    findings = promtool_findings(generate_latest(registry).decode())
    assert any("_total" in f for f in findings) and any("base unit" in f for f in findings)
