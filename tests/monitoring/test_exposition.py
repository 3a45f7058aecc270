"""``promtool check metrics`` (the real one) finds nothing on any Flywheel metrics endpoint: node
agent, operator (with its fault metrics), router and simulated engine, each with live series."""

from __future__ import annotations

import pytest
from fleet import Fleet
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from tooling import run, tool

# vLLM's own metric names contain ':' (``vllm:num_requests_running``); the simulated engine keeps
# them so adapters parse it like the real engine. That one lint finding is expected there only.
VLLM_COLON = "metric names should not contain ':'"
ENDPOINTS = ["agent-node-a", "operator", "router", "engine"]


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet()


def promtool_findings(exposition: str) -> list[str]:
    result = run([tool("promtool"), "check", "metrics"], stdin=exposition)
    findings = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if result.returncode != 0 and not findings:
        findings = [f"promtool exited {result.returncode}"]
    return findings


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_promtool_check_metrics_is_clean(fleet: Fleet, endpoint: str) -> None:
    exposition = fleet.exposition(endpoint)
    assert exposition.count("# TYPE") >= 5
    allowed = (VLLM_COLON,) if endpoint == "engine" else ()
    findings = [f for f in promtool_findings(exposition) if not any(a in f for a in allowed)]
    assert findings == []


def test_engine_colon_allowance_covers_only_vllm_names(fleet: Fleet) -> None:
    flagged = promtool_findings(fleet.exposition("engine"))
    assert flagged and all(f.startswith("vllm:") and VLLM_COLON in f for f in flagged)


def test_agent_driver_counters_are_counters_in_base_units(fleet: Fleet) -> None:
    text = fleet.exposition("agent-node-a")
    for name in (
        "flywheel_gpu_energy_consumption_joules_total",
        "flywheel_gpu_ecc_sbe_volatile_total",
        "flywheel_gpu_ecc_dbe_volatile_total",
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
